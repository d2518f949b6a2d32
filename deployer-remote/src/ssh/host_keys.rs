//! The server's host key checked against known_hosts, as [`HostKeyPolicy`] says: [`Client`],
//! the russh client handler of every connection.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use deployer_core::RemoteError;
use russh::client;
use russh::keys::{HashAlg, PublicKeyOrCertificate};

use super::options::HostKeyPolicy;

/// Checks the server key; records why a key was refused.
pub(super) struct Client {
    /// The host name the key is recorded under (the target's `HostName`).
    pub(super) host: String,
    pub(super) port: u16,
    pub(super) known_hosts: PathBuf,
    pub(super) policy: HostKeyPolicy,
    /// Why the key was refused, for the connection's error.
    pub(super) refused: Arc<Mutex<Option<RemoteError>>>,
}

impl Client {
    fn check(&self, key: &russh::keys::PublicKey) -> Result<(), RemoteError> {
        let key_type = key.algorithm().as_str().to_string();
        let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
        match russh::keys::check_known_hosts_path(&self.host, self.port, key, &self.known_hosts) {
            Ok(true) => Ok(()),
            Ok(false) if self.policy == HostKeyPolicy::AcceptNew => {
                russh::keys::known_hosts::learn_known_hosts_path(
                    &self.host,
                    self.port,
                    key,
                    &self.known_hosts,
                )
                .map_err(|e| RemoteError::Other {
                    host: self.host.clone(),
                    message: format!(
                        "cannot record the host key in {}: {e}",
                        self.known_hosts.display()
                    ),
                })?;
                tracing::info!(host = %self.host, %key_type, %fingerprint, "learned new host key");
                Ok(())
            }
            Ok(false) => Err(RemoteError::UnknownHostKey {
                host: self.host.clone(),
                key_type,
                fingerprint,
            }),
            Err(russh::keys::Error::KeyChanged { line }) => Err(RemoteError::HostKeyMismatch {
                host: self.host.clone(),
                key_type,
                fingerprint,
                recorded: format!("{}:{line}", self.known_hosts.display()),
            }),
            Err(e) => Err(RemoteError::Other {
                host: self.host.clone(),
                message: format!("cannot read {}: {e}", self.known_hosts.display()),
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
