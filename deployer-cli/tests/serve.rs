//! `deploy serve` and `deploy users add` through the real `deploy` program: what it refuses
//! before serving, the users file it writes, and logging in over HTTP with curl against a real
//! SQLite run store.

#[path = "common/server.rs"]
mod server;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use server::Server;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn deploy(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .arg("--store")
        .arg(format!("sqlite://{}", dir.join("runs.db").display()))
        .args(args)
        .current_dir(dir)
        .env_remove("DEPLOYER_STORE")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    }
    child.wait_with_output().unwrap()
}

fn add_user(dir: &Path, name: &str, role: &str, password: &str) {
    let out = deploy(
        dir,
        &[
            "users",
            "add",
            name,
            "--role",
            role,
            "--users",
            "users.yaml",
        ],
        Some(&format!("{password}\n")),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn serve_refuses_to_listen_beyond_loopback_without_public() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), "bob", "developer", "pw");
    for addr in ["0.0.0.0:0", "[::]:0", "192.0.2.1:8080"] {
        let out = deploy(
            dir.path(),
            &["serve", "--listen", addr, "--users", "users.yaml"],
            None,
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{addr}: {stderr}");
        assert!(
            stderr.contains(&format!("--listen {}", addr))
                && stderr.contains("not a loopback address")
                && stderr.contains("--public"),
            "{stderr}"
        );
    }
    let out = deploy(dir.path(), &["serve", "--listen", "localhost"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--listen \"localhost\": expected IP:PORT"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn serve_without_a_way_to_log_in_says_how_to_add_a_user() {
    let dir = tempfile::tempdir().unwrap();
    let out = deploy(dir.path(), &["serve", "--listen", "127.0.0.1:0"], None);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nobody could log in")
            && stderr.contains("deploy users add NAME")
            && stderr.contains("--proxy-user-header")
            && stderr.contains("--allow-anonymous-read"),
        "{stderr}"
    );
    // A users file that does not parse is named with its line.
    std::fs::write(dir.path().join("users.yaml"), "users: [\n").unwrap();
    let out = deploy(
        dir.path(),
        &["serve", "--listen", "127.0.0.1:0", "--users", "users.yaml"],
        None,
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--users: users.yaml:"), "{stderr}");
}

#[test]
fn users_add_hashes_the_password_from_stdin_and_refuses_an_existing_user() {
    let dir = tempfile::tempdir().unwrap();
    let out = deploy(
        dir.path(),
        &[
            "users",
            "add",
            "bob",
            "--role",
            "developer",
            "--users",
            "users.yaml",
        ],
        Some("correct horse\n"),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("added bob (developer) in users.yaml"),
        "{}",
        text(&out.stdout)
    );
    let file = std::fs::read_to_string(dir.path().join("users.yaml")).unwrap();
    assert!(
        file.contains("bob") && file.contains("$argon2id$"),
        "{file}"
    );
    assert!(!file.contains("correct horse"), "{file}");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("users.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "readable by its owner only: {mode:o}");
    }

    let again = deploy(
        dir.path(),
        &["users", "add", "bob", "--users", "users.yaml"],
        Some("other\n"),
    );
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("user bob exists already (add --replace"),
        "{}",
        text(&again.stderr)
    );
    let replaced = deploy(
        dir.path(),
        &[
            "users",
            "add",
            "bob",
            "--role",
            "user",
            "--users",
            "users.yaml",
            "--replace",
        ],
        Some("other\n"),
    );
    assert_eq!(
        replaced.status.code(),
        Some(0),
        "{}",
        text(&replaced.stderr)
    );
    assert!(text(&replaced.stdout).contains("replaced bob (user)"));

    let empty = deploy(
        dir.path(),
        &["users", "add", "carol", "--users", "users.yaml"],
        Some("\n"),
    );
    assert_eq!(empty.status.code(), Some(2));
    assert!(
        text(&empty.stderr).contains("an empty password"),
        "{}",
        text(&empty.stderr)
    );
    let role = deploy(
        dir.path(),
        &[
            "users",
            "add",
            "carol",
            "--role",
            "boss",
            "--users",
            "users.yaml",
        ],
        Some("pw\n"),
    );
    assert_eq!(role.status.code(), Some(2));
    assert!(
        text(&role.stderr).contains("--role"),
        "{}",
        text(&role.stderr)
    );
    // No password on the command line: there is no flag for it.
    let argv = deploy(
        dir.path(),
        &[
            "users",
            "add",
            "carol",
            "--password",
            "pw",
            "--users",
            "users.yaml",
        ],
        Some("pw\n"),
    );
    assert_eq!(argv.status.code(), Some(2));
}

/// `curl` with a cookie jar: (status, headers, body).
fn curl(jar: &Path, args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args(["-s", "-D", "-", "-b"])
        .arg(jar)
        .arg("-c")
        .arg(jar)
        .args(args)
        .output()
        .expect("curl runs");
    assert!(out.status.success(), "curl {args:?}: {}", text(&out.stderr));
    let all = text(&out.stdout);
    let (head, body) = all.split_once("\r\n\r\n").unwrap_or((&all, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_string(), body.to_string())
}

fn hidden(body: &str, name: &str) -> String {
    let at = body
        .find(&format!("name=\"{name}\" value=\""))
        .unwrap_or_else(|| panic!("no {name} field in\n{body}"))
        + name.len()
        + 15;
    body[at..].split('"').next().unwrap().to_string()
}

#[test]
fn anonymous_requests_are_turned_away_and_a_user_of_the_file_logs_in() {
    let dir = tempfile::tempdir().unwrap();
    add_user(dir.path(), "bob", "developer", "correct horse");
    let server = Server::start(
        &format!("sqlite://{}", dir.path().join("runs.db").display()),
        dir.path(),
        &["--users", "users.yaml"],
    );
    let jar: PathBuf = dir.path().join("jar");

    let (status, head, _) = curl(&jar, &[&format!("{}/", server.url)]);
    assert!(
        status == 303 || status == 401,
        "anonymous HTML: {status}\n{head}"
    );
    let (status, _, _) = curl(
        &jar,
        &[
            "-H",
            "Accept: application/json",
            &format!("{}/", server.url),
        ],
    );
    assert_eq!(status, 401, "anonymous JSON");

    let (status, _, form) = curl(&jar, &[&format!("{}/login", server.url)]);
    assert_eq!(status, 200);
    let token = hidden(&form, "login_token");
    let login = |password: &str| {
        curl(
            &jar,
            &[
                "--data-urlencode",
                "name=bob",
                "--data-urlencode",
                &format!("password={password}"),
                "--data-urlencode",
                &format!("login_token={token}"),
                &format!("{}/login", server.url),
            ],
        )
    };
    let (status, _, body) = login("wrong");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("wrong user name or password"), "{body}");
    let (status, _, form) = curl(&jar, &[&format!("{}/login", server.url)]);
    assert_eq!(status, 200);
    let token = hidden(&form, "login_token");
    let (status, head, _) = curl(
        &jar,
        &[
            "--data-urlencode",
            "name=bob",
            "--data-urlencode",
            "password=correct horse",
            "--data-urlencode",
            &format!("login_token={token}"),
            &format!("{}/login", server.url),
        ],
    );
    assert_eq!(status, 303, "{head}");
    let cookie = head
        .lines()
        .find(|l| {
            l.to_ascii_lowercase()
                .starts_with("set-cookie: deployer_session=")
        })
        .unwrap_or_else(|| panic!("no session cookie\n{head}"));
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(
        !cookie.contains("Secure"),
        "plain HTTP on loopback: {cookie}"
    );
    let (status, _, body) = curl(&jar, &[&format!("{}/", server.url)]);
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("bob"),
        "the page names who is logged in\n{body}"
    );
}

#[test]
fn anonymous_reading_when_the_operator_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(
        &format!("sqlite://{}", dir.path().join("runs.db").display()),
        dir.path(),
        &["--allow-anonymous-read"],
    );
    let (status, _, _) = curl(
        &dir.path().join("jar"),
        &[
            "-H",
            "Accept: application/json",
            &format!("{}/", server.url),
        ],
    );
    assert_eq!(status, 200);
}
