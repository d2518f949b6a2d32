//! [`SshHost`]: the [`RemoteHost`](deployer_core::RemoteHost) contract over SSH, on `russh`.
//!
//! One role per module:
//! - [`options`]: [`SshOptions`], [`HostKeyPolicy`], [`PassphraseCallback`]: the settings;
//! - [`target`]: where and as whom to connect, from the options and the ssh config;
//! - [`host_keys`]: the server's key checked against known_hosts;
//! - [`handshake`]: what a connector's hosts share to connect (handshake turns, known_hosts
//!   and keys read once), and connecting with a timeout and retries;
//! - [`auth`]: authentication with the ssh-agent's keys, then key files;
//! - [`connection`]: connections opened, reused and replaced, and their channel budget;
//! - [`channel`]: running one command on one channel: the loop both kinds of channel share;
//! - [`exec`]: a command on a session of its own;
//! - [`shell`]: commands on a long-lived remote shell, one after another;
//! - [`host`]: [`SshHost`] and its `RemoteHost` implementation.

mod auth;
mod channel;
mod connection;
mod exec;
mod handshake;
mod host;
mod host_keys;
mod options;
mod shell;
mod target;
#[cfg(test)]
mod test_procs;

pub(crate) use handshake::Shared;
pub use host::SshHost;
pub use options::{HostEntry, HostKeyPolicy, PassphraseCallback, SshOptions};
pub(crate) use target::Target;
