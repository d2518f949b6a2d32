//! Who is asking: [`User`], the [`Authenticator`] trait, and its two implementations
//! ([`UsersFile`], [`ProxyHeader`]).

use std::collections::HashMap;
use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use argon2::password_hash::{CustomizedPasswordHasher, PasswordHasher, PasswordVerifier};
use argon2::{Argon2, Params, PasswordHash};
use async_trait::async_trait;
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

/// The roles a users file or a catalog knows, weakest first: a stronger role holds the weaker
/// ones too (an `admin` may do what a `developer` may).
pub const ROLES: [&str; 3] = ["user", "developer", "admin"];

/// Every role `role` holds: itself and the weaker ones (`developer` → `user, developer`);
/// `None` for a name that is not one of [`ROLES`].
///
/// ```
/// assert_eq!(deployer_web::roles_held("developer").unwrap(), ["user", "developer"]);
/// assert!(deployer_web::roles_held("root").is_none());
/// ```
pub fn roles_held(role: &str) -> Option<Vec<String>> {
    let at = ROLES.iter().position(|r| *r == role)?;
    Some(ROLES[..=at].iter().map(|r| r.to_string()).collect())
}

/// An authenticated person: their name and, where the authenticator knows them, every role
/// they hold (stronger roles include the weaker ones, as [`roles_held`] spells them). Which
/// roles count for a given run is the [`RoleSource`](crate::RoleSource)'s decision.
///
/// ```
/// use deployer_web::User;
/// let alice = User::new("alice").with_roles(["user", "developer"]);
/// assert_eq!(alice.name, "alice");
/// assert!(User::new("bob").roles.is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Their name, as approvals and cancel requests record it.
    pub name: String,
    /// Every role they hold; `None` when the authenticator knows no roles.
    pub roles: Option<Vec<String>>,
}

impl User {
    /// `name`, roles unknown.
    pub fn new(name: impl Into<String>) -> User {
        User {
            name: name.into(),
            roles: None,
        }
    }

    /// Sets the roles held.
    pub fn with_roles<S: Into<String>>(mut self, roles: impl IntoIterator<Item = S>) -> User {
        self.roles = Some(roles.into_iter().map(Into::into).collect());
        self
    }
}

/// What a login form posted. Its `Debug` shows the password as `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Login {
    /// The user name typed.
    pub name: String,
    /// The password typed.
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("name", &self.name)
            .field("password", &"***")
            .finish()
    }
}

/// Decides who a request comes from: a host application's single sign-on, a users file
/// ([`UsersFile`]), a reverse proxy's header ([`ProxyHeader`]).
///
/// It is asked twice: for a request without a live session, with the request's headers and no
/// login (an SSO cookie, a proxy header: a user returned here gets a session), and when the
/// login form is posted, with the headers and the name and password typed. `None` means "not
/// authenticated"; the viewer then shows the login form (HTML) or answers 401 (JSON).
///
/// ```
/// use deployer_web::{Authenticator, Login, User};
/// use axum::http::HeaderMap;
///
/// /// Everybody who sends `X-Api-Key: let-me-in` is `robot`.
/// struct ApiKey;
///
/// #[async_trait::async_trait]
/// impl Authenticator for ApiKey {
///     async fn authenticate(&self, headers: &HeaderMap, _: Option<&Login>) -> Option<User> {
///         let key = headers.get("x-api-key")?.to_str().ok()?;
///         (key == "let-me-in").then(|| User::new("robot"))
///     }
/// }
/// ```
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The user this request comes from, or `None`.
    async fn authenticate(&self, headers: &HeaderMap, login: Option<&Login>) -> Option<User>;
}

/// Why a users file could not be read, written or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UsersFileError {
    /// Reading or writing the file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse into a users file.
    #[error("{origin}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        origin: String,
        /// Where (1-based; 0 when unknown).
        line: usize,
        /// Where (1-based; 0 when unknown).
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A value is wrong: `users.yaml: users[1] (bob): role "root": expected user, developer or admin`.
    #[error("{origin}: {message}")]
    Invalid {
        /// The file.
        origin: String,
        /// Which entry and key, and what was expected.
        message: String,
    },
    /// A password could not be hashed (or a user name or password given is not acceptable).
    #[error("{0}")]
    Hash(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileData {
    #[serde(default)]
    users: Vec<FileUser>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileUser {
    name: String,
    password_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<String>,
}

#[derive(Debug, Clone)]
struct Entry {
    hash: String,
    roles: Option<Vec<String>>,
}

/// A YAML file of users with argon2 password hashes (PHC strings) and, optionally, a role
/// each (`user`, `developer` or `admin`; used where no catalog gives roles):
///
/// ```yaml
/// users:
///   - name: alice
///     password_hash: $argon2id$v=19$m=19456,t=2,p=1$...
///     role: developer
///   - name: bob
///     password_hash: $argon2id$v=19$m=19456,t=2,p=1$...
/// ```
///
/// It authenticates login forms only (it ignores requests without one). A wrong password and
/// an unknown user take the same time: an unknown name is checked against a dummy hash made
/// with the same parameters as the file's first user. The file is read once, by
/// [`load`](Self::load): a host application reloads it by building a new [`Web`](crate::Web).
///
/// ```
/// use deployer_web::UsersFile;
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("users.yaml");
/// UsersFile::add_user(&path, "alice", "correct horse", Some("developer")).unwrap();
/// let users = UsersFile::load(&path).unwrap();
/// let alice = users.verify("alice", "correct horse").unwrap();
/// assert_eq!(alice.roles.unwrap(), ["user", "developer"]);
/// assert!(users.verify("alice", "wrong").is_none());
/// assert!(users.verify("mallory", "correct horse").is_none());
/// ```
#[derive(Clone)]
pub struct UsersFile {
    origin: String,
    users: HashMap<String, Entry>,
    dummy: String,
}

impl fmt::Debug for UsersFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<&String> = self.users.keys().collect();
        names.sort();
        f.debug_struct("UsersFile")
            .field("origin", &self.origin)
            .field("users", &names)
            .finish_non_exhaustive()
    }
}

fn parse_error(origin: &str, e: serde_saphyr::Error) -> UsersFileError {
    let (line, column) = e
        .location()
        .map(|l| (l.line(), l.column()))
        .unwrap_or((0, 0));
    UsersFileError::Parse {
        origin: origin.to_string(),
        line: line as usize,
        column: column as usize,
        message: e.to_string(),
    }
}

fn random_bytes<const N: usize>() -> Result<[u8; N], UsersFileError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| UsersFileError::Hash(format!("no random numbers: {e}")))?;
    Ok(bytes)
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name: must not be empty".to_string());
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) || name.len() > 128 {
        return Err(format!(
            "name \"{}\": expected at most 128 characters, no spaces or control characters",
            name.escape_debug()
        ));
    }
    Ok(())
}

impl UsersFile {
    /// Reads and checks a users file: every entry's name, hash (an argon2 PHC string) and
    /// role; a mistake names the file, the entry and the key (YAML errors: file:line:col).
    pub fn load(path: impl AsRef<Path>) -> Result<UsersFile, UsersFileError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| UsersFileError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        UsersFile::from_yaml_str(&text, &path.display().to_string())
    }

    /// [`load`](Self::load) from text; `origin` names it in errors.
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<UsersFile, UsersFileError> {
        let data: Option<FileData> =
            serde_saphyr::from_str(text).map_err(|e| parse_error(origin, e))?;
        let data = data.unwrap_or_default();
        let invalid = |message: String| UsersFileError::Invalid {
            origin: origin.to_string(),
            message,
        };
        let mut users = HashMap::new();
        let mut first_hash: Option<String> = None;
        for (i, u) in data.users.into_iter().enumerate() {
            let at = format!("users[{i}]");
            check_name(&u.name).map_err(|m| invalid(format!("{at}: {m}")))?;
            let at = format!("users[{i}] ({})", u.name);
            let parsed = PasswordHash::new(&u.password_hash).map_err(|e| {
                invalid(format!(
                    "{at}: password_hash: {e} (expected an argon2 PHC string such as \
                     $argon2id$v=19$m=19456,t=2,p=1$..., made by `deploy users add`)"
                ))
            })?;
            if !parsed.algorithm.as_str().starts_with("argon2") {
                return Err(invalid(format!(
                    "{at}: password_hash: algorithm {} is not argon2 (expected argon2id)",
                    parsed.algorithm
                )));
            }
            Params::try_from(&parsed)
                .map_err(|e| invalid(format!("{at}: password_hash: parameters: {e}")))?;
            let roles = match &u.role {
                None => None,
                Some(r) => Some(roles_held(r).ok_or_else(|| {
                    invalid(format!(
                        "{at}: role \"{}\": expected user, developer or admin",
                        r.escape_debug()
                    ))
                })?),
            };
            if users.contains_key(&u.name) {
                return Err(invalid(format!("{at}: name: listed twice")));
            }
            first_hash.get_or_insert_with(|| u.password_hash.clone());
            users.insert(
                u.name,
                Entry {
                    hash: u.password_hash,
                    roles,
                },
            );
        }
        let dummy = dummy_hash(first_hash.as_deref())?;
        Ok(UsersFile {
            origin: origin.to_string(),
            users,
            dummy,
        })
    }

    /// An argon2id PHC string of `password` with a random salt and argon2's recommended
    /// parameters, for a users file.
    ///
    /// ```
    /// let hash = deployer_web::UsersFile::hash_password("s3cret").unwrap();
    /// assert!(hash.starts_with("$argon2id$"));
    /// ```
    pub fn hash_password(password: &str) -> Result<String, UsersFileError> {
        if password.is_empty() {
            return Err(UsersFileError::Hash(
                "the password must not be empty".to_string(),
            ));
        }
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| UsersFileError::Hash(format!("cannot hash the password: {e}")))
    }

    /// Adds `name` with `password` (hashed) and `role` to the users file at `path`, creating
    /// it (readable by its owner only) when missing; an existing user of that name gets the
    /// new password and role. The file is replaced atomically. Returns whether the user is
    /// new.
    pub fn add_user(
        path: impl AsRef<Path>,
        name: &str,
        password: &str,
        role: Option<&str>,
    ) -> Result<bool, UsersFileError> {
        let path = path.as_ref();
        let origin = path.display().to_string();
        check_name(name).map_err(|m| UsersFileError::Hash(format!("user {m}")))?;
        if let Some(r) = role
            && roles_held(r).is_none()
        {
            return Err(UsersFileError::Hash(format!(
                "role \"{}\": expected user, developer or admin",
                r.escape_debug()
            )));
        }
        let mut data: FileData = match std::fs::read_to_string(path) {
            Ok(text) => {
                // Checks the existing file before changing it.
                UsersFile::from_yaml_str(&text, &origin)?;
                serde_saphyr::from_str::<Option<FileData>>(&text)
                    .map_err(|e| parse_error(&origin, e))?
                    .unwrap_or_default()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileData::default(),
            Err(source) => {
                return Err(UsersFileError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let hash = UsersFile::hash_password(password)?;
        let entry = FileUser {
            name: name.to_string(),
            password_hash: hash,
            role: role.map(str::to_string),
        };
        let new = match data.users.iter_mut().find(|u| u.name == name) {
            Some(u) => {
                *u = entry;
                false
            }
            None => {
                data.users.push(entry);
                true
            }
        };
        let text = serde_saphyr::to_string(&data)
            .map_err(|e| UsersFileError::Hash(format!("cannot write the users file: {e}")))?;
        let io = |source| UsersFileError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // tempfile creates the file readable by its owner only.
        let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        tmp.write_all(text.as_bytes()).map_err(io)?;
        tmp.as_file().sync_all().map_err(io)?;
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(new)
    }

    /// The names of its users, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.users.keys().cloned().collect();
        names.sort();
        names
    }

    /// The user `name` with the roles the file gives (without checking a password): what a
    /// [`RoleSource`](crate::RoleSource) may use.
    pub fn user(&self, name: &str) -> Option<User> {
        self.users.get(name).map(|e| User {
            name: name.to_string(),
            roles: e.roles.clone(),
        })
    }

    /// Checks `password` for `name` (CPU-bound: an argon2 hash; [`Authenticator::authenticate`]
    /// runs it on a blocking thread). An unknown name takes as long as a wrong password.
    pub fn verify(&self, name: &str, password: &str) -> Option<User> {
        let (hash, entry) = match self.users.get(name) {
            Some(e) => (e.hash.as_str(), Some(e)),
            None => (self.dummy.as_str(), None),
        };
        let ok = Argon2::default()
            .verify_password(password.as_bytes(), hash)
            .is_ok();
        let entry = entry?;
        ok.then(|| User {
            name: name.to_string(),
            roles: entry.roles.clone(),
        })
    }
}

/// A hash of a random password with the parameters of `like` (else the defaults), so that
/// checking an unknown user costs what checking a known one does.
fn dummy_hash(like: Option<&str>) -> Result<String, UsersFileError> {
    let password = random_bytes::<16>()?;
    let salt = random_bytes::<16>()?;
    let fail = |e: argon2::password_hash::Error| UsersFileError::Hash(format!("dummy hash: {e}"));
    let hash = match like.map(PasswordHash::new) {
        Some(Ok(parsed)) => {
            let params = Params::try_from(&parsed).map_err(fail)?;
            Argon2::default()
                .hash_password_customized(
                    &password,
                    &salt,
                    Some(parsed.algorithm.as_str()),
                    parsed.version,
                    params,
                )
                .map_err(fail)?
        }
        _ => Argon2::default()
            .hash_password_with_salt(&password, &salt)
            .map_err(fail)?,
    };
    Ok(hash.to_string())
}

#[async_trait]
impl Authenticator for UsersFile {
    async fn authenticate(&self, _headers: &HeaderMap, login: Option<&Login>) -> Option<User> {
        let login = login?.clone();
        let users = self.clone();
        tokio::task::spawn_blocking(move || users.verify(&login.name, &login.password))
            .await
            .ok()
            .flatten()
    }
}

/// Trusts a header that a reverse proxy in front of the viewer sets to the authenticated
/// user's name (`X-Forwarded-User`, `Remote-User`, …). Use it only when every request
/// reaches the viewer through that proxy and the proxy overwrites the header: anybody who can
/// reach the viewer directly can send it. `deploy serve` enables it only on an explicit flag.
///
/// Roles are unknown (`None`) unless [`roles`](Self::roles) names a users file to take them
/// from, or a catalog [`RoleSource`](crate::RoleSource) gives them.
///
/// ```
/// use deployer_web::{Authenticator, ProxyHeader};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let proxy = ProxyHeader::new("x-forwarded-user").unwrap();
/// let mut headers = axum::http::HeaderMap::new();
/// assert!(proxy.authenticate(&headers, None).await.is_none());
/// headers.insert("x-forwarded-user", "alice".parse().unwrap());
/// assert_eq!(proxy.authenticate(&headers, None).await.unwrap().name, "alice");
/// # });
/// ```
#[derive(Debug, Clone)]
pub struct ProxyHeader {
    header: axum::http::HeaderName,
    roles: Option<UsersFile>,
}

impl ProxyHeader {
    /// Trusts header `name`; fails when it is not a valid header name.
    pub fn new(name: &str) -> Result<ProxyHeader, String> {
        let header = axum::http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            format!(
                "\"{}\" is not a valid HTTP header name",
                name.escape_debug()
            )
        })?;
        Ok(ProxyHeader {
            header,
            roles: None,
        })
    }

    /// Takes each user's roles from `users` (their passwords are not used).
    pub fn roles(mut self, users: UsersFile) -> ProxyHeader {
        self.roles = Some(users);
        self
    }

    /// The header trusted.
    pub fn header(&self) -> &str {
        self.header.as_str()
    }
}

#[async_trait]
impl Authenticator for ProxyHeader {
    async fn authenticate(&self, headers: &HeaderMap, _login: Option<&Login>) -> Option<User> {
        let name = headers.get(&self.header)?.to_str().ok()?.trim();
        check_name(name).ok()?;
        Some(match &self.roles {
            Some(users) => users.user(name).unwrap_or_else(|| User::new(name)),
            None => User::new(name),
        })
    }
}
