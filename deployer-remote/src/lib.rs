//! Implementations of [`deployer_core::RemoteHost`]: [`LocalHost`] (this machine) and a
//! [`Connector`](deployer_core::Connector) that hands them out.
//!
//! # Example
//!
//! ```
//! use deployer_core::{Connector, ExecOptions, HostSpec};
//! use deployer_remote::LocalConnector;
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let host = LocalConnector::new().host(&HostSpec::local()).await.unwrap();
//! let out = host.execute("echo $GREETING", &ExecOptions::new().env("GREETING", "hi")).await.unwrap();
//! assert_eq!(out.stdout_str(), "hi\n");
//! # });
//! ```
#![deny(missing_docs)]

mod common;
mod config;
mod local;
mod pool;
mod ssh;
#[cfg(feature = "test-fixture")]
pub mod testing;

pub use config::{HostConfig, SshConfig, SshConfigError};
pub use local::{LocalConnector, LocalHost};
pub use pool::SshConnector;
pub use ssh::{HostKeyPolicy, PassphraseCallback, SshHost, SshOptions};
