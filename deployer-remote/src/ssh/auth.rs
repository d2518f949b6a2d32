//! Authentication of a new connection: the ssh-agent's keys, then key files (named, from the
//! ssh config, or `~/.ssh/id_*`; encrypted ones through [`SshOptions::passphrase`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use deployer_core::RemoteError;
use russh::client::Handle;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg};
use tokio::sync::OnceCell;

use super::host_keys::Client;
use super::options::SshOptions;
use super::target::Target;
use crate::config::home_dir;

/// A key file loaded, or why not (`encrypted, no passphrase`, `cannot decrypt: …`,
/// `unreadable: …`).
type Loaded = Result<Arc<PrivateKey>, String>;

/// The key files of one connector, each read (and decrypted, asking the passphrase callback
/// once) on first use and shared by every host.
#[derive(Default)]
pub(super) struct KeyCache {
    keys: Mutex<HashMap<PathBuf, Arc<OnceCell<Loaded>>>>,
}

impl KeyCache {
    /// The key in `path`, loaded once.
    async fn get(&self, path: &Path, options: &SshOptions) -> Loaded {
        let cell = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_path_buf())
            .or_default()
            .clone();
        cell.get_or_init(|| async { load(path, options) })
            .await
            .clone()
    }
}

/// Reads (and decrypts) the key in `path`.
fn load(path: &Path, options: &SshOptions) -> Loaded {
    match russh::keys::load_secret_key(path, None) {
        Ok(k) => Ok(Arc::new(k)),
        Err(russh::keys::Error::KeyIsEncrypted) => {
            let Some(pass) = options.passphrase.as_ref().and_then(|cb| cb(path)) else {
                return Err("encrypted, no passphrase".to_string());
            };
            russh::keys::load_secret_key(path, Some(&pass))
                .map(Arc::new)
                .map_err(|e| format!("cannot decrypt: {e}"))
        }
        Err(e) => Err(format!("unreadable: {e}")),
    }
}

/// The RSA signature hash the server prefers, for an RSA key (`None` for other keys).
async fn rsa_hash(
    handle: &Handle<Client>,
    is_rsa: bool,
) -> Result<Option<russh::keys::HashAlg>, russh::Error> {
    if !is_rsa {
        return Ok(None);
    }
    Ok(handle.best_supported_rsa_hash().await?.flatten())
}

/// Authenticates `handle` as the target's user, or says what was tried.
pub(super) async fn authenticate(
    name: &str,
    handle: &mut Handle<Client>,
    target: &Target,
    options: &SshOptions,
    keys: &KeyCache,
) -> Result<(), RemoteError> {
    let user = target.user.as_str();
    let mut tried: Vec<String> = Vec::new();
    let lost = |e: russh::Error| RemoteError::Disconnected {
        host: name.to_string(),
        source: Some(Box::new(e)),
    };
    let agent_socket = options
        .agent_socket
        .clone()
        .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from));
    if let Some(socket) = agent_socket.filter(|_| options.agent) {
        match russh::keys::agent::client::AgentClient::connect_uds(&socket).await {
            Ok(mut agent) => {
                let identities = agent.request_identities().await.unwrap_or_default();
                for identity in identities {
                    let key = identity.public_key().into_owned();
                    let hash = rsa_hash(handle, key.algorithm().is_rsa())
                        .await
                        .map_err(lost)?;
                    match handle
                        .authenticate_publickey_with(user, key, hash, &mut agent)
                        .await
                    {
                        Ok(r) if r.success() => return Ok(()),
                        _ => {}
                    }
                }
                tried.push("ssh-agent".to_string());
            }
            Err(e) => tried.push(format!("ssh-agent (unreachable: {e})")),
        }
    }
    let mut files = target.identity_files.clone();
    if files.is_empty()
        && options.default_identities
        && let Some(home) = home_dir()
    {
        {
            for name in ["id_ed25519", "id_ecdsa", "id_rsa"] {
                let path = home.join(".ssh").join(name);
                if path.exists() {
                    files.push(path);
                }
            }
        }
    }
    for path in files {
        let key = match keys.get(&path, options).await {
            Ok(k) => k,
            Err(why) => {
                tried.push(format!("{} ({why})", path.display()));
                continue;
            }
        };
        let hash = rsa_hash(handle, key.algorithm().is_rsa())
            .await
            .map_err(lost)?;
        let result = handle
            .authenticate_publickey(user, PrivateKeyWithHashAlg::new(key, hash))
            .await
            .map_err(lost)?;
        if result.success() {
            return Ok(());
        }
        tried.push(format!("{} (refused)", path.display()));
    }
    Err(RemoteError::Auth {
        host: name.to_string(),
        user: user.to_string(),
        detail: if tried.is_empty() {
            "no key to try (no agent, no key file)".to_string()
        } else {
            format!("tried {}", tried.join(", "))
        },
    })
}
