//! Sessions in memory, and the random tokens they use.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::auth::User;

/// A logged-in user's session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub user: User,
    pub csrf: String,
    pub expires: Instant,
}

/// The most sessions kept at once: past it, the one closest to its end is dropped (a script
/// behind a proxy header that keeps no cookie opens a session per request).
pub(crate) const MAX_SESSIONS: usize = 10_000;

/// Every live session of one [`Web`](crate::Web), by id.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

/// 256 random bits from the operating system, as hex; `None` when it has none to give.
pub(crate) fn token() -> Option<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).ok()?;
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Compares two tokens in constant time.
pub(crate) fn same_token(a: &str, b: &str) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Sessions {
    /// Opens a session for `user` that ends `ttl` from now; returns its id and the session.
    pub fn create(&self, user: User, ttl: Duration) -> Option<(String, Session)> {
        let id = token()?;
        let session = Session {
            user,
            csrf: token()?,
            expires: Instant::now() + ttl,
        };
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
        {
            map.remove(&oldest);
        }
        map.insert(id.clone(), session.clone());
        Some((id, session))
    }

    /// The live session `id`; an expired one is forgotten.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(id) {
            Some(s) if s.expires > Instant::now() => Some(s.clone()),
            Some(_) => {
                map.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_ends_after_its_ttl_and_tokens_differ() {
        let sessions = Sessions::default();
        let (id, s) = sessions
            .create(User::new("alice"), Duration::from_millis(30))
            .unwrap();
        assert_eq!(id.len(), 64);
        assert_ne!(id, s.csrf);
        assert_eq!(sessions.get(&id).unwrap().user.name, "alice");
        std::thread::sleep(Duration::from_millis(40));
        assert!(sessions.get(&id).is_none());
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "ab"));
    }

    #[test]
    fn sessions_are_capped_dropping_the_one_closest_to_its_end() {
        let sessions = Sessions::default();
        let (first, _) = sessions
            .create(User::new("first"), Duration::from_secs(60))
            .unwrap();
        for _ in 1..MAX_SESSIONS {
            sessions
                .create(User::new("script"), Duration::from_secs(3600))
                .unwrap();
        }
        assert!(sessions.get(&first).is_some());
        let (last, _) = sessions
            .create(User::new("last"), Duration::from_secs(3600))
            .unwrap();
        assert!(sessions.get(&first).is_none());
        assert!(sessions.get(&last).is_some());
    }
}
