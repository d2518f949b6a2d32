//! The server's host key checked against known_hosts, as [`HostKeyPolicy`] says: [`Client`],
//! the russh client handler of every connection, and [`KnownHostsFile`], a known_hosts file
//! read and parsed once per connector and shared by all its hosts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use deployer_core::RemoteError;
use hmac::{Hmac, KeyInit, Mac};
use russh::client;
use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns};
use russh::keys::{HashAlg, PublicKey, PublicKeyOrCertificate};

use super::options::HostKeyPolicy;

/// One usable line of a known_hosts file.
struct Line {
    /// 1-based line number in the file.
    number: usize,
    hosts: HostPatterns,
    /// The key, or why it could not be parsed (reported only to a host the line names).
    key: Result<PublicKey, String>,
}

/// A known_hosts file, read on first use; keys learned under accept-new are added to it.
pub(super) struct KnownHostsFile {
    path: PathBuf,
    /// The lines, or why the file could not be read.
    lines: OnceLock<Result<Mutex<Vec<Line>>, String>>,
}

/// The known_hosts files of one connector, by path, each read once.
#[derive(Default)]
pub(super) struct KnownHostsCache {
    files: Mutex<HashMap<PathBuf, Arc<KnownHostsFile>>>,
}

impl KnownHostsCache {
    /// The (lazily read) file at `path`.
    pub(super) fn file(&self, path: &Path) -> Arc<KnownHostsFile> {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_path_buf())
            .or_insert_with(|| {
                Arc::new(KnownHostsFile {
                    path: path.to_path_buf(),
                    lines: OnceLock::new(),
                })
            })
            .clone()
    }
}

/// `host` as known_hosts names it: `host` on port 22, else `[host]:port`.
fn host_port(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// Whether a line's host field names `host_port` (exact names, as russh and this crate always
/// matched, or a hashed name).
fn names(hosts: &HostPatterns, host_port: &str) -> bool {
    match hosts {
        HostPatterns::Patterns(patterns) => patterns.iter().any(|p| p == host_port),
        HostPatterns::HashedName { salt, hash } => Hmac::<sha1::Sha1>::new_from_slice(salt)
            .map(|mac| mac.chain_update(host_port).verify_slice(hash).is_ok())
            .unwrap_or(false),
    }
}

/// Parses known_hosts text. Comment and blank lines are skipped, and so are lines with a
/// marker (`@cert-authority`, `@revoked`), which were never honoured. A line whose key cannot
/// be parsed is kept with the error, reported only to a host it names.
fn parse(text: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.parse::<Entry>() {
            Ok(entry) if entry.marker().is_some() => {}
            Ok(entry) => lines.push(Line {
                number: i + 1,
                hosts: entry.host_patterns().clone(),
                key: Ok(entry.public_key().clone()),
            }),
            Err(e) => {
                let field = line.split_whitespace().next().unwrap_or("");
                if field.starts_with('@') {
                    continue;
                }
                if let Ok(hosts) = field.parse::<HostPatterns>() {
                    lines.push(Line {
                        number: i + 1,
                        hosts,
                        key: Err(format!("line {}: {e}", i + 1)),
                    });
                }
            }
        }
    }
    lines
}

impl KnownHostsFile {
    fn lines(&self) -> Result<&Mutex<Vec<Line>>, String> {
        self.lines
            .get_or_init(|| match std::fs::read_to_string(&self.path) {
                Ok(text) => Ok(Mutex::new(parse(&text))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Mutex::new(Vec::new())),
                Err(e) => Err(e.to_string()),
            })
            .as_ref()
            .map_err(|e| e.clone())
    }

    /// Whether `key` is recorded for `host:port`: `Ok(None)` when no line of its algorithm
    /// names the host, `Ok(Some(()))` when one matches, `Err(line)` when a line of the same
    /// algorithm holds another key (any such line wins, as in russh).
    fn check(&self, host: &str, port: u16, key: &PublicKey) -> Result<Result<bool, usize>, String> {
        let name = host_port(host, port);
        let lines = self.lines()?.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = false;
        for line in lines.iter().filter(|l| names(&l.hosts, &name)) {
            let recorded = line.key.as_ref().map_err(|e| e.clone())?;
            if recorded.algorithm() == key.algorithm() {
                if recorded.key_data() == key.key_data() {
                    found = true;
                } else {
                    return Ok(Err(line.number));
                }
            }
        }
        Ok(Ok(found))
    }

    /// Appends `key` for `host:port` to the file and to what was read of it.
    fn learn(&self, host: &str, port: u16, key: &PublicKey) -> Result<(), String> {
        russh::keys::known_hosts::learn_known_hosts_path(host, port, key, &self.path)
            .map_err(|e| e.to_string())?;
        if let Ok(lines) = self.lines() {
            let mut lines = lines.lock().unwrap_or_else(|p| p.into_inner());
            let number = lines.last().map_or(1, |l| l.number + 1);
            lines.push(Line {
                number,
                hosts: HostPatterns::Patterns(vec![host_port(host, port)]),
                key: Ok(key.clone()),
            });
        }
        Ok(())
    }
}

/// Checks the server key; records why a key was refused.
pub(super) struct Client {
    /// The host name the key is recorded under (the target's `HostName`).
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) known_hosts: Arc<KnownHostsFile>,
    pub(super) policy: HostKeyPolicy,
    /// Why the key was refused, for the connection's error.
    pub(super) refused: Arc<Mutex<Option<RemoteError>>>,
}

impl Client {
    fn check(&self, key: &PublicKey) -> Result<(), RemoteError> {
        let key_type = key.algorithm().as_str().to_string();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        let path = &self.known_hosts.path;
        match self.known_hosts.check(&self.host, self.port, key) {
            Ok(Ok(true)) => Ok(()),
            Ok(Ok(false)) if self.policy == HostKeyPolicy::AcceptNew => {
                self.known_hosts
                    .learn(&self.host, self.port, key)
                    .map_err(|e| RemoteError::Other {
                        host: self.host.clone(),
                        message: format!("cannot record the host key in {}: {e}", path.display()),
                    })?;
                tracing::info!(host = %self.host, %key_type, %fingerprint, "learned new host key");
                Ok(())
            }
            Ok(Ok(false)) => Err(RemoteError::UnknownHostKey {
                host: self.host.clone(),
                key_type,
                fingerprint,
            }),
            Ok(Err(line)) => Err(RemoteError::HostKeyMismatch {
                host: self.host.clone(),
                key_type,
                fingerprint,
                recorded: format!("{}:{line}", path.display()),
            }),
            Err(e) => Err(RemoteError::Other {
                host: self.host.clone(),
                message: format!("cannot read {}: {e}", path.display()),
            }),
        }
    }
}

impl client::Handler for Client {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        if self.policy == HostKeyPolicy::Off {
            return Ok(true);
        }
        match self.check(&key.public_key()) {
            Ok(()) => Ok(true),
            Err(e) => {
                *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                Ok(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA6rWI3G1sz07DnfFlrouTcysQlj2P+jpNSOEWD9OJ3X";

    fn key(line: &str) -> PublicKey {
        line.parse().unwrap()
    }

    fn file(text: &str) -> (tempfile::TempDir, KnownHostsFile) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, text).unwrap();
        let f = KnownHostsFile {
            path,
            lines: OnceLock::new(),
        };
        (dir, f)
    }

    #[test]
    fn plain_ported_and_hashed_names_match_and_a_changed_key_names_its_line() {
        let text = format!(
            "# comment\n\n[localhost]:13265 {KEY_A}\nexample.org,10.0.0.1 {KEY_B} comment\n\
             |1|O33ESRMWPVkMYIwJ1Uw+n877jTo=|nuuC5vEqXlEZ/8BXQR7m619W6Ak= {KEY_A}\n\
             @revoked other {KEY_A}\n"
        );
        let (_dir, f) = file(&text);
        assert_eq!(f.check("localhost", 13265, &key(KEY_A)), Ok(Ok(true)));
        assert_eq!(f.check("localhost", 13265, &key(KEY_B)), Ok(Err(3)));
        assert_eq!(f.check("localhost", 22, &key(KEY_A)), Ok(Ok(false)));
        assert_eq!(f.check("10.0.0.1", 22, &key(KEY_B)), Ok(Ok(true)));
        // The hashed line is russh's own test vector for `example.com`.
        assert_eq!(f.check("example.com", 22, &key(KEY_A)), Ok(Ok(true)));
        assert_eq!(f.check("other", 22, &key(KEY_A)), Ok(Ok(false)));
    }

    #[test]
    fn a_bad_key_is_reported_only_to_the_host_it_names() {
        let (_dir, f) = file(&format!("bad ssh-ed25519 AAAAnotakey\ngood {KEY_A}\n"));
        assert_eq!(f.check("good", 22, &key(KEY_A)), Ok(Ok(true)));
        let err = f.check("bad", 22, &key(KEY_A)).unwrap_err();
        assert!(err.starts_with("line 1: "), "{err}");
    }

    #[test]
    fn the_file_is_read_once_and_learned_keys_are_added() {
        let (dir, f) = file(&format!("a {KEY_A}\n"));
        assert_eq!(f.check("a", 22, &key(KEY_A)), Ok(Ok(true)));
        std::fs::write(dir.path().join("known_hosts"), "").unwrap();
        assert_eq!(
            f.check("a", 22, &key(KEY_A)),
            Ok(Ok(true)),
            "not read again"
        );
        f.learn("b", 2222, &key(KEY_B)).unwrap();
        assert_eq!(f.check("b", 2222, &key(KEY_B)), Ok(Ok(true)));
        let written = std::fs::read_to_string(dir.path().join("known_hosts")).unwrap();
        assert!(
            written.trim_start().starts_with("[b]:2222 ssh-ed25519 "),
            "{written}"
        );
    }
}
