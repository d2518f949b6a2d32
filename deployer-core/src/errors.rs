//! Error types of deployer-core.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::validation::ValidationErrors;

/// A boxed error used as the `source` of errors coming from host implementations.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Failure to load or parse a tasklist.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TasklistError {
    /// The file could not be read or written.
    #[error("cannot access tasklist file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The text is not valid JSON.
    #[error("{origin}:{line}:{column}: invalid JSON: {message}")]
    Syntax {
        /// The file name, or `<tasklist>` for text.
        origin: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the parser expected.
        message: String,
    },
    /// The JSON is well-formed but not a valid tasklist; every problem is listed.
    #[error("invalid tasklist: {0}")]
    Invalid(ValidationErrors),
}

impl TasklistError {
    pub(crate) fn with_origin(self, path: &Path) -> Self {
        match self {
            TasklistError::Syntax {
                line,
                column,
                message,
                ..
            } => TasklistError::Syntax {
                origin: path.display().to_string(),
                line,
                column,
                message,
            },
            other => other,
        }
    }

    /// The validation problems, when this is [`TasklistError::Invalid`].
    pub fn validation_errors(&self) -> Option<&ValidationErrors> {
        match self {
            TasklistError::Invalid(e) => Some(e),
            _ => None,
        }
    }
}

/// Failure to load or use a configuration file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Malformed YAML or a value of the wrong type.
    #[error("{origin}:{line}:{column}: {message}")]
    Yaml {
        /// The file name, or `<config>` for text.
        origin: String,
        /// 1-based line (0 when unknown).
        line: u64,
        /// 1-based column (0 when unknown).
        column: u64,
        /// What is wrong, with a snippet of the offending text.
        message: String,
    },
    /// The `platform` key, which picks the generator, is missing.
    #[error("{origin}: missing required key \"platform\" (it picks the generator)")]
    MissingPlatform {
        /// The file name.
        origin: String,
    },
    /// A key the caller requires is absent ([`Config::require`](crate::Config::require)).
    #[error("{origin}: missing required key \"{key}\"")]
    MissingKey {
        /// The file name.
        origin: String,
        /// The key, dotted for nested keys.
        key: String,
    },
    /// A hostgroup name that the config does not define.
    #[error("unknown hostgroup \"{name}\"{}", hint.as_ref().map(|h| format!("; did you mean \"{h}\"?")).unwrap_or_default())]
    UnknownHostgroup {
        /// The name asked for.
        name: String,
        /// The closest defined name.
        hint: Option<String>,
    },
    /// A service name that the config does not define.
    #[error("unknown service \"{name}\"{}", hint.as_ref().map(|h| format!("; did you mean \"{h}\"?")).unwrap_or_default())]
    UnknownService {
        /// The name asked for.
        name: String,
        /// The closest defined name.
        hint: Option<String>,
    },
    /// An inventory (the config's `inventory` key, or one added with
    /// [`Config::with_inventory`](crate::Config::with_inventory)) cannot be loaded.
    #[error(transparent)]
    Inventory(#[from] crate::inventory::InventoryError),
    /// A value has the wrong type for what the caller asked.
    #[error("config key \"{key}\": {message}")]
    Invalid {
        /// The key, dotted for nested keys.
        key: String,
        /// What is wrong.
        message: String,
    },
}

/// Failure of an operation on a [`RemoteHost`](crate::RemoteHost).
///
/// Every variant names the host, so an error is actionable without context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// The connection could not be established.
    #[error("cannot connect to {host}")]
    Connect {
        /// The host.
        host: String,
        /// Why.
        #[source]
        source: BoxError,
    },
    /// The host presented a key different from the one on record: possibly an attack.
    #[error(
        "host key for {host} has changed: server offered {key_type} key {fingerprint}, which does not match the key recorded at {recorded}; refusing to connect (if the host was really reinstalled, remove that line)"
    )]
    HostKeyMismatch {
        /// The host.
        host: String,
        /// The key algorithm offered.
        key_type: String,
        /// The fingerprint offered (SHA256:…).
        fingerprint: String,
        /// Where the key on record is: the known_hosts file and line (`path:line`).
        recorded: String,
    },
    /// The host's key is not on record and the policy does not accept new keys.
    #[error(
        "host key for {host} is not known ({key_type} {fingerprint}) and host-key checking is strict; add it to known_hosts or allow accept-new"
    )]
    UnknownHostKey {
        /// The host.
        host: String,
        /// The key algorithm offered.
        key_type: String,
        /// The fingerprint offered.
        fingerprint: String,
    },
    /// Authentication was refused.
    #[error("authentication as {user} on {host} failed: {detail}")]
    Auth {
        /// The host.
        host: String,
        /// The user.
        user: String,
        /// What was tried.
        detail: String,
    },
    /// An operation did not finish in time; the remote process was stopped.
    #[error("{what} on {host} timed out after {after:?}")]
    Timeout {
        /// The host.
        host: String,
        /// What timed out (connect, a command).
        what: String,
        /// The limit.
        after: Duration,
    },
    /// `sudo` asked for a password; deployments need non-interactive sudo.
    #[error("sudo on {host} requires a password; configure passwordless sudo for this user")]
    SudoPassword {
        /// The host.
        host: String,
    },
    /// The connection broke while an operation was in flight.
    #[error("connection to {host} lost")]
    Disconnected {
        /// The host.
        host: String,
        /// Why, when known.
        #[source]
        source: Option<BoxError>,
    },
    /// A file operation failed.
    #[error("{op} {path} on {host} failed")]
    Io {
        /// The host.
        host: String,
        /// The operation, e.g. `upload to`.
        op: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Anything else, with a message that says what.
    #[error("{host}: {message}")]
    Other {
        /// The host.
        host: String,
        /// What happened.
        message: String,
    },
}

impl RemoteError {
    /// The host this error is about.
    pub fn host(&self) -> &str {
        match self {
            RemoteError::Connect { host, .. }
            | RemoteError::HostKeyMismatch { host, .. }
            | RemoteError::UnknownHostKey { host, .. }
            | RemoteError::Auth { host, .. }
            | RemoteError::Timeout { host, .. }
            | RemoteError::SudoPassword { host }
            | RemoteError::Disconnected { host, .. }
            | RemoteError::Io { host, .. }
            | RemoteError::Other { host, .. } => host,
        }
    }
}

/// Failure of a command's `execute`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command ran and did not succeed.
    #[error("{message}")]
    Failed {
        /// What failed, e.g. `tar -xzf … exited with status 2`.
        message: String,
        /// The exit status of the remote process, when one ran.
        exit_status: Option<i32>,
        /// The tail of its standard error.
        stderr: String,
    },
    /// The host could not do what was asked.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The command gave up because its run was cancelled (a first cancel lets work on hosts
    /// finish, but a command that only waits — for a person's decision — stops waiting): the
    /// task counts as cancelled, not failed, when the run was indeed cancelled.
    #[error("{message}")]
    Cancelled {
        /// What it was waiting for.
        message: String,
    },
}

impl CommandError {
    /// A failure with a message and no process details.
    pub fn failed(message: impl Into<String>) -> Self {
        CommandError::Failed {
            message: message.into(),
            exit_status: None,
            stderr: String::new(),
        }
    }

    /// The exit status of the process that failed, if any.
    pub fn exit_status(&self) -> Option<i32> {
        match self {
            CommandError::Failed { exit_status, .. } => *exit_status,
            CommandError::Remote(_) | CommandError::Cancelled { .. } => None,
        }
    }

    /// The stderr of the process that failed, if any.
    pub fn stderr(&self) -> &str {
        match self {
            CommandError::Failed { stderr, .. } => stderr,
            CommandError::Remote(_) | CommandError::Cancelled { .. } => "",
        }
    }
}

impl From<crate::ShellError> for CommandError {
    /// A command line that cannot be quoted (an argument with a NUL byte) fails the task with
    /// the quoting error's message: `ShellCommand::…build()?` in a command's `execute`.
    fn from(e: crate::ShellError) -> CommandError {
        CommandError::failed(e.to_string())
    }
}

/// Failure of a generator.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeneratorError {
    /// No generator is registered for the config's `platform`.
    #[error("unknown platform {} (known: {}){}", crate::shown(platform), known.join(", "), hint.as_ref().map(|h| format!("; did you mean \"{h}\"?")).unwrap_or_default())]
    UnknownPlatform {
        /// The platform asked for.
        platform: String,
        /// Registered platforms.
        known: Vec<String>,
        /// The closest registered platform.
        hint: Option<String>,
    },
    /// The config lacks something the generator needs.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A query against a host failed.
    #[error(transparent)]
    Remote(#[from] RemoteError),
    /// The generator cannot build a plan from this input.
    #[error("{0}")]
    Other(String),
    /// The generator must ask the hosts to plan at all (a rollback reads what each host ran
    /// before), and was given no host access (a dry run).
    #[error("{what} asks the hosts: it needs host access")]
    NeedsHostAccess {
        /// What asks (`a rollback`).
        what: String,
    },
}
