//! Implementations of [`deployer_core::RemoteHost`]: this machine ([`LocalHost`]) and hosts
//! reached over SSH ([`SshHost`], on `russh`), and the [`Connector`](deployer_core::Connector)s
//! that hand them out to the executor.
//!
//! # Overview
//!
//! * [`LocalHost`] runs commands with `sh -c` as child processes, each in its own process
//!   group that a timeout or a dropped future kills. [`LocalConnector`] serves only it.
//! * [`SshHost`] keeps one SSH connection per host, opened on the first call and reused; each
//!   command gets its own channel, up to [`SshOptions::max_channels`] at once per connection
//!   (more connections open, up to [`SshOptions::max_connections`], when those are busy; beyond
//!   that calls wait). A timed-out or cancelled command's process group is killed on the host.
//!   Authentication uses the ssh-agent, then key files (named, from the ssh config, or
//!   `~/.ssh/id_*`; encrypted ones through [`SshOptions::passphrase`]). Host keys are checked
//!   against known_hosts, strictly unless [`HostKeyPolicy`] says otherwise.
//! * [`SshConfig`] reads the subset of `~/.ssh/config` that matters here: `Host` patterns,
//!   `HostName`, `Port`, `User`, `IdentityFile`, `ProxyJump` (one jump host per hop, through a
//!   `direct-tcpip` channel of the jump host's connection).
//! * [`SshConnector`] is the connector for real runs: `local` is a [`LocalHost`], every other
//!   host an [`SshHost`], one per `(host, user, port)`, the same `Arc` on every request. Its
//!   hosts share a budget of handshakes in flight ([`SshOptions::max_handshakes`]; the connect
//!   timeout counts from a handshake's turn, failed handshakes are retried per
//!   [`SshOptions::connect_attempts`]) and read known_hosts and key files once; at plan time
//!   it checks `ulimit -n` against the hosts' connections
//!   ([`Connector::check_capacity`](deployer_core::Connector::check_capacity)).
//! * With the `test-fixture` feature, [`testing::TestSshd`](crate::testing) starts a throwaway
//!   OpenSSH server on loopback for tests of this and downstream crates.
//!
//! # Features and what this crate does not know
//!
//! `ssh` (default) builds [`SshHost`], [`SshConnector`], [`SshOptions`] and [`SshConfig`] on
//! russh and ring; without it the crate is [`LocalHost`] and [`LocalConnector`] only.
//! `test-fixture` adds `testing::TestSshd`. It knows no concrete command: commands build their
//! lines with `deployer-core`'s quoting and hand them to a host.
//!
//! Shell quoting lives in `deployer-core` ([`deployer_core::ShellCommand`],
//! [`deployer_core::quote`]); hosts add only what they need around a command line (environment
//! exports, `sudo -n`), quoted the same way.
//!
//! # Example
//!
//! ```
//! use deployer_core::{Connector, ExecOptions, HostSpec, ShellCommand};
//! use deployer_remote::{SshConfig, SshConnector, SshOptions};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! // Remote hosts would go over SSH; `local` runs here.
//! let connector = SshConnector::new(SshOptions::new().ssh_config(SshConfig::new())).unwrap();
//! let host = connector.host(&HostSpec::local()).await.unwrap();
//! let cmd = ShellCommand::new("printf").arg("%s").arg("it's $(not) run").build().unwrap();
//! let out = host
//!     .execute(&cmd, &ExecOptions::new().env("GREETING", "hi"))
//!     .await
//!     .unwrap();
//! assert_eq!(out.stdout_str(), "it's $(not) run");
//! # });
//! ```
//!
//! # Performance (measured)
//!
//! Loopback on a 2-core CI-class machine that was shared with other builds while measuring
//! (load average 2–12, so single runs vary by up to 2×); OpenSSH 9.2 server and client
//! (Debian 12), russh 0.65 with `ring`, login user `deployer-test` with default dotfiles.
//! Figures are the range over six runs of
//! `cargo run --release -p deployer-remote --features test-fixture --example measure`
//! (`examples/measure.rs`: starts a `TestSshd`, times each line with `Instant`; uploads are the
//! best of 3 within a run; plain `ssh` runs with `BatchMode`, `IdentitiesOnly` and GSSAPI off):
//!
//! | what | time |
//! |---|---|
//! | `SshHost`: open the connection (TCP, key exchange, auth) | 25–57 ms |
//! | `SshHost`: 100 sequential `true` on that one connection | 0.39–1.0 s (4–10 ms each) |
//! | plain `ssh host true` × 100, a new connection each | 23.7–31.2 s (~250 ms each) |
//! | plain `ssh -S` × 100 over one `ControlMaster` connection | 1.1–2.9 s |
//! | `SshHost::put` of a 100 MiB file (exec channel: `cat` into a temp file, size-checked, renamed) | 0.44–0.49 s |
//! | `scp` of the same file (SFTP protocol) | 0.53–1.11 s |
//! | plain `ssh host 'cat > file' < file` | 0.57–1.07 s |
//!
//! Uploads use an exec channel (`cat`, or `tar -x` for a directory) rather than SFTP. A one-off
//! comparison on the same `TestSshd` (not kept, to keep `russh-sftp` out of the build): 100 MiB
//! through `russh-sftp` 3.0 (`SftpSession::create`, then `write_all` in 256 KiB pieces) took
//! 0.49–1.33 s, `SshHost::put` 0.43–0.57 s in the same runs. The exec route also needs no SFTP
//! subsystem and works through `sudo` without a staging copy. (Handing russh 256 KiB owned
//! buffers instead of `Channel::data(reader)`, which writes 8 KiB at a time, took `put` from
//! 0.55–0.89 s to the figure above.)
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod common;
#[cfg(feature = "ssh")]
mod config;
#[cfg(feature = "ssh")]
mod from_config;
mod local;
#[cfg(feature = "ssh")]
mod pool;
#[cfg(feature = "ssh")]
mod ssh;
#[cfg(feature = "test-fixture")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-fixture")))]
pub mod testing;

pub use common::{LINE_MAX, OUTPUT_KEPT};
#[cfg(feature = "ssh")]
#[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
pub use config::{HostConfig, SshConfig, SshConfigError};
pub use local::{LocalConnector, LocalHost};
#[cfg(feature = "ssh")]
#[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
pub use pool::SshConnector;
#[cfg(feature = "ssh")]
#[cfg_attr(docsrs, doc(cfg(feature = "ssh")))]
pub use ssh::{HostEntry, HostKeyPolicy, PassphraseCallback, SshHost, SshOptions};
