//! `deploy serve`: the run viewer (`deployer-web`) on its own, over the run store of
//! `--store`; `deploy users add`: a user of its users file.

use std::io::{BufRead, IsTerminal, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deployer_store::StoreUrl;
use deployer_web::{Authenticator, ProxyHeader, UsersFile, Web};

use super::BadInput;

/// `deploy serve` (see its help).
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where to listen: IP:PORT (port 0 picks a free one; the URL printed says which).
    /// Anything but a loopback address needs --public.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Allow listening beyond loopback (0.0.0.0, a LAN address). Put a TLS proxy in front:
    /// cookies are then marked Secure, so logins work over HTTPS only.
    #[arg(long)]
    public: bool,
    /// A users file (YAML, argon2 password hashes and an optional role per user) to log in
    /// with; `deploy users add NAME --users FILE` adds a user.
    #[arg(long, value_name = "FILE")]
    users: Option<PathBuf>,
    /// Trust this request header (e.g. X-Forwarded-User) to name the user, as set by a
    /// reverse proxy that authenticates; only when every request comes through that proxy.
    /// Roles come from --users or --catalog.
    #[arg(long, value_name = "NAME")]
    proxy_user_header: Option<String>,
    /// A catalog file: users' roles on the deployment a run is about decide who may approve
    /// and cancel (instead of the users file's roles).
    #[arg(long, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// How long a login lasts (e.g. 8h, 30m).
    #[arg(long, value_name = "DURATION", default_value = "12h", value_parser = humantime::parse_duration)]
    session_ttl: Duration,
    /// Let anybody read the pages without logging in (never decide or cancel).
    #[arg(long)]
    allow_anonymous_read: bool,
}

/// `deploy users …`.
#[derive(Debug, clap::Subcommand)]
pub enum UsersCmd {
    /// Add a user to a users file of `deploy serve`: the password is read from standard
    /// input (asked twice without echo at a terminal; one line when piped), never from the
    /// command line, and stored as an argon2 hash.
    Add {
        /// The user's name (as shown on pages and recorded with decisions).
        name: String,
        /// What the user may do: user (look), developer (also approve manual steps and
        /// cancel), admin. Without it, roles are unknown (see `deploy serve --help`).
        #[arg(long, value_name = "ROLE", value_parser = ["user", "developer", "admin"])]
        role: Option<String>,
        /// The users file (created when missing, readable by its owner only).
        #[arg(long, value_name = "FILE", default_value = "users.yaml")]
        users: PathBuf,
        /// Replace the password and role of an existing user.
        #[arg(long)]
        replace: bool,
    },
}

fn input(message: impl Into<String>) -> BadInput {
    BadInput::Input(message.into())
}

/// Whether `ip` is this machine's loopback (127.0.0.0/8, ::1, ::ffff:127.x).
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// What `deploy serve` serves with, checked before anything is opened.
struct Plan {
    addr: SocketAddr,
    loopback: bool,
}

fn check(args: &ServeArgs) -> Result<Plan, BadInput> {
    let addr: SocketAddr = args.listen.parse().map_err(|_| {
        input(format!(
            "--listen \"{}\": expected IP:PORT, such as 127.0.0.1:8080 or [::1]:8080",
            args.listen.escape_debug()
        ))
    })?;
    let loopback = is_loopback(addr.ip());
    if !loopback && !args.public {
        return Err(input(format!(
            "--listen {addr}: not a loopback address, so anybody who reaches this machine could \
             reach the viewer; add --public to mean it (and put a TLS proxy in front), or listen \
             on 127.0.0.1"
        )));
    }
    if args.users.is_none() && args.proxy_user_header.is_none() && !args.allow_anonymous_read {
        return Err(input(
            "nobody could log in: give --users FILE (add a user with `deploy users add NAME \
             --role developer --users FILE`, which asks for the password), or \
             --proxy-user-header NAME behind a reverse proxy that authenticates, or \
             --allow-anonymous-read for read-only pages without login",
        ));
    }
    Ok(Plan { addr, loopback })
}

fn load_users(path: &Path) -> Result<UsersFile, BadInput> {
    UsersFile::load(path).map_err(|e| input(format!("--users: {}", deployer_core::error_chain(&e))))
}

/// `deploy serve`: serves until SIGINT or SIGTERM (exit 0).
pub async fn serve_main(store_url: &str, args: &ServeArgs) -> Result<u8, BadInput> {
    let plan = check(args)?;
    let authenticator: Option<Arc<dyn Authenticator>> = match (&args.users, &args.proxy_user_header)
    {
        (users, Some(header)) => {
            let mut proxy =
                ProxyHeader::new(header).map_err(|e| input(format!("--proxy-user-header: {e}")))?;
            if let Some(path) = users {
                proxy = proxy.roles(load_users(path)?);
            }
            Some(Arc::new(proxy))
        }
        (Some(path), None) => Some(Arc::new(load_users(path)?)),
        (None, None) => None,
    };
    let url: StoreUrl = store_url.parse()?;
    let store = url.open().await.map_err(|e| {
        BadInput::Hosts(format!(
            "cannot open the run store {url}: {}",
            deployer_core::error_chain(&e)
        ))
    })?;
    // Plain HTTP: cookies without Secure only where nobody else can listen in (loopback).
    let mut web = Web::new(store)
        .session_ttl(args.session_ttl)
        .secure_cookies(!plan.loopback)
        .allow_anonymous_read(args.allow_anonymous_read);
    if let Some(a) = authenticator {
        web = web.authenticator(a);
    }
    if let Some(path) = &args.catalog {
        let data = deployer_catalog::CatalogData::load(path)
            .map_err(|e| input(format!("--catalog: {e}")))?;
        web = web.roles(Arc::new(deployer_web::CatalogRoles::new(
            deployer_catalog::Catalog::in_memory(data),
        )));
    }
    let listener = tokio::net::TcpListener::bind(plan.addr)
        .await
        .map_err(|e| BadInput::Hosts(format!("--listen {}: cannot listen: {e}", plan.addr)))?;
    let local = listener
        .local_addr()
        .map_err(|e| BadInput::Hosts(format!("--listen {}: {e}", plan.addr)))?;
    println!("serving the runs of {url} on http://{local}/");
    let _ = std::io::stdout().flush();
    let server = axum::serve(listener, web.router());
    let stop = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    };
    // Live pages hold their event streams open, so stopping does not wait for connections.
    tokio::select! {
        served = server => served.map_err(|e| BadInput::Hosts(format!("serving on {local}: {e}")))?,
        _ = stop => eprintln!("stopped"),
    }
    Ok(0)
}

/// Reads the new password: twice without echo at a terminal, else one line of standard input.
fn read_password(name: &str) -> Result<String, BadInput> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password(format!("password for {name}: "))
            .map_err(|e| input(format!("cannot read the password: {e}")))?;
        let again = rpassword::prompt_password("again: ")
            .map_err(|e| input(format!("cannot read the password: {e}")))?;
        if first != again {
            return Err(input("the passwords differ; nothing changed"));
        }
        first
    } else {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .map_err(|e| input(format!("standard input: cannot read the password: {e}")))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.is_empty() {
        return Err(input(
            "standard input: an empty password (type it, or pipe one line holding it)",
        ));
    }
    Ok(password)
}

/// `deploy users add`.
pub fn users_main(cmd: &UsersCmd) -> Result<u8, BadInput> {
    let UsersCmd::Add {
        name,
        role,
        users,
        replace,
    } = cmd;
    if users.exists() && !replace {
        let existing = load_users(users)?;
        if existing.names().iter().any(|n| n == name) {
            return Err(input(format!(
                "{}: user {name} exists already (add --replace to set a new password and role)",
                users.display()
            )));
        }
    }
    let password = read_password(name)?;
    let new = UsersFile::add_user(users, name, &password, role.as_deref())
        .map_err(|e| input(deployer_core::error_chain(&e)))?;
    println!(
        "{} {name}{} in {}",
        if new { "added" } else { "replaced" },
        role.as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default(),
        users.display()
    );
    Ok(0)
}
