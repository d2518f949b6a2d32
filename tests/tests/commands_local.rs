//! Every standard command against `LocalHost`, in a temporary directory whose name is hostile
//! to shells (spaces, quotes, `$()`, `;`): the commands must treat it as one plain path.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deployer_commands::{HttpBackend, LoadBalancers, ShellBackend};
use deployer_core::{CommandRegistry, RemoteHost};
use deployer_remote::LocalHost;
use deployer_tests::{HttpServer, registry, run, run_with, s};
use serde_json::json;
use tokio::io::AsyncReadExt;

/// A name a shell would split, expand and execute if it were pasted unquoted.
const HOSTILE: &str = "it's a \"dir\" $(touch pwned); `touch pwned` & x";

struct Env {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    host: Arc<dyn RemoteHost>,
}

fn env() -> Env {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join(HOSTILE);
    std::fs::create_dir(&dir).expect("mkdir");
    Env {
        _tmp: tmp,
        dir,
        host: Arc::new(LocalHost::new()),
    }
}

impl Env {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    fn ps(&self, rel: &str) -> String {
        s(&self.p(rel)).to_string()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        // Nothing in the hostile name may ever have run.
        let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("pwned");
        assert!(!here.exists(), "a hostile name was executed");
        assert!(
            !self.dir.join("pwned").exists(),
            "a hostile name was executed"
        );
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

fn sh(script: &str) {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

#[tokio::test]
async fn upload_into_a_directory_and_to_a_path() {
    let e = env();
    let local = e.p("local file.txt");
    std::fs::write(&local, "payload").unwrap();
    std::fs::create_dir(e.p("dest dir")).unwrap();
    // into an existing directory (no trailing slash) keeps the name
    run(
        e.host.clone(),
        json!({"command": "upload", "source": local, "destination": e.ps("dest dir")}),
    )
    .await
    .unwrap();
    assert_eq!(read(&e.p("dest dir/local file.txt")), "payload");
    // to a path, with a mode
    run(e.host.clone(), json!({"command": "upload", "source": local, "destination": e.ps("renamed"), "mode": "0600"}))
        .await
        .unwrap();
    assert_eq!(read(&e.p("renamed")), "payload");
    assert_eq!(mode(&e.p("renamed")), 0o600);
    // a missing local file is an error naming it
    let err = run(
        e.host.clone(),
        json!({"command": "upload", "source": e.ps("nope"), "destination": e.ps("x")}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn unpack_every_known_format() {
    let e = env();
    std::fs::create_dir_all(e.p("src/app")).unwrap();
    std::fs::write(e.p("src/app/hello.txt"), "hello").unwrap();
    let q = |p: PathBuf| format!("'{}'", s(&p).replace('\'', "'\\''"));
    sh(&format!(
        "cd {} && tar -czf ../a.tgz app && tar -cf ../a.tar app && zip -qr ../a.zip app && cp app/hello.txt ../a.war",
        q(e.p("src"))
    ));
    for (archive, out) in [("a.tgz", "t1"), ("a.tar", "t2"), ("a.zip", "t3")] {
        std::fs::create_dir(e.p(out)).unwrap();
        run(
            e.host.clone(),
            json!({"command": "unpack", "source": e.ps(archive), "destination": e.ps(out)}),
        )
        .await
        .unwrap();
        assert_eq!(
            read(&e.p(&format!("{out}/app/hello.txt"))),
            "hello",
            "{archive}"
        );
    }
    std::fs::create_dir(e.p("t4")).unwrap();
    run(
        e.host.clone(),
        json!({"command": "unpack", "source": e.ps("a.war"), "destination": e.ps("t4")}),
    )
    .await
    .unwrap();
    assert_eq!(read(&e.p("t4/a.war")), "hello");
    let err = run(
        e.host.clone(),
        json!({"command": "unpack", "source": e.ps("a.tgz"), "destination": e.ps("missing")}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
}

#[tokio::test]
async fn createdirectory_copy_move_remove() {
    let e = env();
    let d = e.ps("a b/c");
    run(
        e.host.clone(),
        json!({"command": "createdirectory", "source": d, "mode": "0750"}),
    )
    .await
    .unwrap();
    assert!(e.p("a b/c").is_dir());
    assert_eq!(mode(&e.p("a b/c")), 0o750);
    std::fs::write(e.p("a b/c/f"), "1").unwrap();
    // again: idempotent, keeps content
    run(
        e.host.clone(),
        json!({"command": "createdirectory", "source": d}),
    )
    .await
    .unwrap();
    assert!(e.p("a b/c/f").exists());
    // clobber empties it
    run(
        e.host.clone(),
        json!({"command": "createdirectory", "source": d, "clobber": true}),
    )
    .await
    .unwrap();
    assert!(e.p("a b/c").is_dir() && !e.p("a b/c/f").exists());

    std::fs::write(e.p("orig"), "data").unwrap();
    run(
        e.host.clone(),
        json!({"command": "copyfile", "source": e.ps("orig"), "destination": e.ps("copy")}),
    )
    .await
    .unwrap();
    assert_eq!(read(&e.p("copy")), "data");
    let err = run(
        e.host.clone(),
        json!({"command": "copyfile", "source": e.ps("orig"), "destination": e.ps("copy")}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    std::fs::write(e.p("orig"), "new").unwrap();
    run(e.host.clone(), json!({"command": "copyfile", "source": e.ps("orig"), "destination": e.ps("copy"), "remove_if_exists": true})).await.unwrap();
    assert_eq!(read(&e.p("copy")), "new");
    assert!(
        !e.p("copy.deployer-tmp").exists(),
        "the temporary copy was renamed"
    );
    // A copy that fails leaves nothing behind: no destination, no temporary copy.
    let err = run(
        e.host.clone(),
        json!({"command": "copyfile", "source": e.ps("absent"), "destination": e.ps("copy2")}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("cannot copy"), "{err}");
    assert!(!e.p("copy2").exists() && !e.p("copy2.deployer-tmp").exists());

    run(
        e.host.clone(),
        json!({"command": "movefile", "source": e.ps("copy"), "destination": e.ps("orig")}),
    )
    .await
    .unwrap();
    assert!(!e.p("copy").exists());
    assert_eq!(read(&e.p("orig")), "new");

    run(
        e.host.clone(),
        json!({"command": "removefile", "source": e.ps("a b")}),
    )
    .await
    .unwrap();
    assert!(!e.p("a b").exists());
    // removing what is gone is fine
    run(
        e.host.clone(),
        json!({"command": "removefile", "source": e.ps("a b")}),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn writefile_is_atomic_and_respects_clobber() {
    let e = env();
    let dest = e.ps("conf $(x).yml");
    let contents = "key: 'it''s' \"$(reboot)\"\n`id`\n";
    run(
        e.host.clone(),
        json!({"command": "writefile", "destination": dest, "contents": contents, "mode": "0640"}),
    )
    .await
    .unwrap();
    assert_eq!(read(Path::new(&dest)), contents);
    assert_eq!(mode(Path::new(&dest)), 0o640);
    let err = run(
        e.host.clone(),
        json!({"command": "writefile", "destination": dest, "contents": "other"}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");
    run(
        e.host.clone(),
        json!({"command": "writefile", "destination": dest, "contents": "other", "clobber": true}),
    )
    .await
    .unwrap();
    assert_eq!(read(Path::new(&dest)), "other");
    assert_eq!(mode(Path::new(&dest)), 0o644);
    // no temporary file is left behind
    let names: Vec<_> = std::fs::read_dir(&e.dir)
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

#[tokio::test]
async fn symlink_switches_and_needs_an_existing_target() {
    let e = env();
    std::fs::create_dir_all(e.p("releases/1")).unwrap();
    std::fs::create_dir_all(e.p("releases/2")).unwrap();
    let link = e.ps("current");
    run(
        e.host.clone(),
        json!({"command": "symlink", "source": e.ps("releases/1"), "destination": link}),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), e.p("releases/1"));
    // relative target, switched over the existing link
    run(
        e.host.clone(),
        json!({"command": "symlink", "source": "releases/2", "destination": link}),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("releases/2"));
    let again = run(
        e.host.clone(),
        json!({"command": "symlink", "source": "releases/2", "destination": link}),
    )
    .await
    .unwrap();
    assert!(again.skipped.is_some());
    let err = run(
        e.host.clone(),
        json!({"command": "symlink", "source": "releases/3", "destination": link}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(std::fs::read_link(&link).unwrap(), Path::new("releases/2"));
}

fn set_mtime(p: &Path, secs: u64) {
    let f = std::fs::File::open(p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

#[tokio::test]
async fn cleanup_keeps_the_newest_and_the_linked() {
    let e = env();
    for (i, name) in ["web_1", "web_2", "web_3", "web_4", "web_5"]
        .iter()
        .enumerate()
    {
        std::fs::create_dir(e.p(name)).unwrap();
        set_mtime(&e.p(name), 1_000_000 + i as u64 * 100);
    }
    std::fs::create_dir(e.p("other")).unwrap();
    std::os::unix::fs::symlink(e.p("web_1"), e.p("web")).unwrap();
    let out = run(
        e.host.clone(),
        json!({"command": "cleanup", "path": e.dir, "filespec": "web_*", "keepversions": 2}),
    )
    .await
    .unwrap();
    assert_eq!(out.data.unwrap()["removed"], json!(["web_3", "web_2"]));
    let mut left: Vec<String> = std::fs::read_dir(&e.dir)
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["other", "web", "web_1", "web_4", "web_5"]);
}

#[tokio::test]
async fn execute_command_and_migration_script() {
    let e = env();
    let marker = e.ps("ran");
    let line = format!("echo ok > '{}'", marker.replace('\'', "'\\''"));
    run(
        e.host.clone(),
        json!({"command": "execute_command", "command_line": line}),
    )
    .await
    .unwrap();
    assert_eq!(read(Path::new(&marker)), "ok\n");
    let err = run(
        e.host.clone(),
        json!({"command": "execute_command", "command_line": "echo bad >&2; exit 4"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_status(), Some(4));
    assert_eq!(err.stderr(), "bad");

    let skipped = run(
        e.host.clone(),
        json!({"command": "migration_script", "source": "exit 1", "if_exists": e.ps("migrate")}),
    )
    .await
    .unwrap();
    assert!(skipped.skipped.is_some());
    std::fs::write(e.p("migrate"), "").unwrap();
    let err = run(
        e.host.clone(),
        json!({"command": "migration_script", "source": "exit 1", "if_exists": e.ps("migrate")}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.exit_status(), Some(1));
}

/// A shell snippet that succeeds from its `n`-th run on, counting runs in `file`.
fn nth_time(file: &str, n: u32) -> String {
    let f = file.replace('\'', "'\\''");
    format!("c=$(cat '{f}' 2>/dev/null || echo 0); c=$((c+1)); echo $c > '{f}'; [ $c -ge {n} ]")
}

#[tokio::test]
async fn check_service_polls_until_the_wanted_exit_status() {
    let e = env();
    let counter = e.ps("count");
    run(e.host.clone(), json!({"command": "check_service", "check_command": nth_time(&counter, 3), "poll_interval": 0.05, "wait_timeout": 20}))
        .await
        .unwrap();
    assert_eq!(read(Path::new(&counter)), "3\n");
    let err = run(e.host.clone(), json!({"command": "check_service", "check_command": "exit 1", "poll_interval": 0.05, "wait_timeout": 0.2}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("last exit status: 1"), "{err}");
}

#[tokio::test]
async fn services_with_own_lines_wait_for_state_and_kill_when_stuck() {
    let e = env();
    let state = e.ps("state");
    let q = state.replace('\'', "'\\''");
    let status = format!("printf 'svc: %s\\n' \"$(cat '{q}')\"");
    std::fs::write(&state, "down").unwrap();
    // start: the line flips the state, the status line reports it
    run(e.host.clone(), json!({"command": "start_service", "start_command": format!("echo up > '{q}'"), "status_command": status, "poll_interval": 0.05, "wait_timeout": 20}))
        .await
        .unwrap();
    assert_eq!(read(Path::new(&state)), "up\n");
    // a stop that does nothing: the kill command brings it down
    let out = run(e.host.clone(), json!({"command": "stop_service", "stop_command": "true", "status_command": status, "kill_command": format!("echo down > '{q}'"), "poll_interval": 0.05, "wait_timeout": 0.4}))
        .await;
    out.unwrap();
    assert_eq!(read(Path::new(&state)), "down\n");
    // control_service without a way down fails and says so
    std::fs::write(&state, "up").unwrap();
    let err = run(e.host.clone(), json!({"command": "control_service", "control_command": "true", "status_command": status, "want_state": "down", "poll_interval": 0.05, "wait_timeout": 0.2}))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("did not come down"), "{err}");
    // restart: stop line, start line, then the check
    run(e.host.clone(), json!({"command": "restart_service", "stop_command": format!("echo down > '{q}'"), "start_command": format!("echo up > '{q}'"), "status_command": status, "check_command": format!("grep -q up '{q}'"), "poll_interval": 0.05}))
        .await
        .unwrap();
    run(e.host.clone(), json!({"command": "reload_service", "reload_command": "true", "check_command": format!("grep -q up '{q}'")}))
        .await
        .unwrap();
}

#[tokio::test]
async fn init_scripts_managed_by_name() {
    let e = env();
    let dir = e.ps("init.d");
    std::fs::create_dir(&dir).unwrap();
    let script = e.p("init.d/web");
    std::fs::write(
        &script,
        "#!/bin/sh\nd=$(dirname \"$0\")\ncase \"$1\" in\n  start) echo up > \"$d/state\";;\n  stop) echo down > \"$d/state\";;\n  restart) echo up > \"$d/state\"; echo restart >> \"$d/log\";;\n  reload) echo reload >> \"$d/log\";;\n  status) [ \"$(cat \"$d/state\" 2>/dev/null)\" = up ];;\n  *) exit 2;;\nesac\n",
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = e.p("init.d/state");
    let managed = |command: &str| json!({"command": command, "service": "web", "manager": "init", "service_dir": dir, "poll_interval": 0.05, "wait_timeout": 20});
    run(e.host.clone(), managed("start_service")).await.unwrap();
    assert_eq!(read(&state), "up\n");
    run(e.host.clone(), managed("stop_service")).await.unwrap();
    assert_eq!(read(&state), "down\n");
    run(e.host.clone(), managed("restart_service"))
        .await
        .unwrap();
    run(e.host.clone(), managed("reload_service"))
        .await
        .unwrap();
    assert_eq!(read(&state), "up\n");
    assert_eq!(read(&e.p("init.d/log")), "restart\nreload\n");
    let mut stop = managed("control_service");
    stop["action"] = json!("stop");
    run(e.host.clone(), stop).await.unwrap();
    assert_eq!(read(&state), "down\n");
}

#[tokio::test]
async fn http_check_against_a_local_server() {
    let e = env();
    let server = HttpServer::start(vec![
        (503, "starting"),
        (503, "starting"),
        (200, "{\"status\":\"ok\"}"),
    ])
    .await;
    run(e.host.clone(), json!({"command": "http_check", "url": server.url("/health?x=$(id)"), "body_contains": "\"ok\"", "tries": 5, "interval": 0.05}))
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 3);
    assert!(
        server.requests()[0].starts_with("GET /health?x=$(id) HTTP/1.1"),
        "{}",
        server.requests()[0]
    );
    let err = run(
        e.host.clone(),
        json!({"command": "http_check", "url": server.url("/"), "expected_status": 204}),
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("status 200, expected 204"),
        "{err}"
    );
    let err = run(
        e.host.clone(),
        json!({"command": "http_check", "url": server.url("/"), "body_contains": "ready"}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("body does not contain"), "{err}");
}

#[tokio::test]
async fn wait_for_port_sees_open_and_closed_ports() {
    let e = env();
    // 127.0.0.2, which no other test binds, so a freed port stays free.
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let wait = |state: &str, secs: f64| {
        json!({"command": "wait_for_port", "address": "127.0.0.2", "port": port, "state": state,
               "wait_timeout": secs, "poll_interval": 0.05})
    };
    run(e.host.clone(), wait("open", 10.0)).await.unwrap();
    let err = run(e.host.clone(), wait("closed", 0.2)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("port 127.0.0.2:{port} on local was not closed")),
        "{err}"
    );
    drop(listener);
    run(e.host.clone(), wait("closed", 10.0)).await.unwrap();
    let err = run(e.host.clone(), wait("open", 0.2)).await.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("port 127.0.0.2:{port} on local was not open")),
        "{err}"
    );
}

#[tokio::test]
async fn load_balancer_backends_get_their_request_and_the_password_privately() {
    let e = env();
    let server = HttpServer::start(vec![(200, "")]).await;
    let record = e.ps("lb record");
    let mut r: CommandRegistry = registry();
    LoadBalancers::new()
        .backend(
            "cli",
            ShellBackend::new([
                "sh",
                "-c",
                "{ echo \"$*\"; cat; } > \"$0\"",
                &record,
                "{action}",
                "{lb_service}",
                "{lb_hostname}",
            ]),
        )
        .backend(
            "api",
            HttpBackend::new(format!(
                "http://127.0.0.1:{}/members/{{lb_service}}/{{action}}",
                server.addr.port()
            )),
        )
        .register(&mut r);
    run_with(&r, e.host.clone(), json!({"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web 1", "lb_password": "s3cret $(x)"}))
        .await
        .unwrap();
    assert_eq!(read(Path::new(&record)), "disable web 1 lb1\ns3cret $(x)\n");
    // the password may come from the controller's environment instead of the tasklist
    let home = std::env::var("HOME").expect("HOME is set");
    run_with(&r, e.host.clone(), json!({"command": "enable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_password_env": "HOME"}))
        .await
        .unwrap();
    assert_eq!(
        read(Path::new(&record)),
        format!("enable web lb1\n{home}\n")
    );
    run_with(&r, e.host.clone(), json!({"command": "enable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web 1", "lb_username": "ops", "lb_password": "pa\"ss", "lb_backend": "api"}))
        .await
        .unwrap();
    let request = &server.requests()[0];
    assert!(
        request.starts_with("POST /members/web%201/enable HTTP/1.1"),
        "{request}"
    );
    // basic auth of ops:pa"ss
    assert!(
        request.contains("Authorization: Basic b3BzOnBhInNz"),
        "{request}"
    );
    // a refusing load balancer fails the task
    let refusing = HttpServer::start(vec![(403, "no")]).await;
    let mut r2 = registry();
    LoadBalancers::new()
        .backend(
            "api",
            HttpBackend::new(refusing.url("/{lb_service}/{action}")),
        )
        .register(&mut r2);
    let err = run_with(&r2, e.host.clone(), json!({"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_username": "ops", "lb_password": "hunter2"}))
        .await
        .unwrap_err();
    assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
}

#[tokio::test]
async fn send_graphite_writes_one_plaintext_line() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).await.unwrap();
        text
    });
    let host: Arc<dyn RemoteHost> = Arc::new(LocalHost::new());
    run(host.clone(), json!({"command": "send_graphite", "carbon_host": "127.0.0.1", "carbon_port": port, "metric_name": "deploys.web", "metric_value": 2}))
        .await
        .unwrap();
    let line = received.await.unwrap();
    let fields: Vec<&str> = line.trim_end().split(' ').collect();
    assert!(line.ends_with('\n'), "{line:?}");
    assert_eq!(fields[..2], ["deploys.web", "2"]);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ts: u64 = fields[2].parse().unwrap();
    assert!(ts <= now && now - ts < 600, "{line}");
    // nobody listening: skipped by default, an error when asked
    // 127.0.0.3, which no other test binds, so the freed port stays free.
    let closed = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let out = run(host.clone(), json!({"command": "send_graphite", "carbon_host": "127.0.0.3", "carbon_port": port, "metric_name": "x"}))
        .await
        .unwrap();
    assert!(out.skipped.unwrap().contains("cannot connect"));
    run(host, json!({"command": "send_graphite", "carbon_host": "127.0.0.3", "carbon_port": port, "metric_name": "x", "continue_on_fail": false}))
        .await
        .unwrap_err();
}

#[tokio::test]
async fn get_remote_versions_reads_links() {
    let e = env();
    std::fs::create_dir_all(e.p("web/releases/1.2")).unwrap();
    std::os::unix::fs::symlink("releases/1.2", e.p("web/current")).unwrap();
    std::os::unix::fs::symlink("/opt/api_3.4", e.p("api")).unwrap();
    let out = run(
        e.host.clone(),
        json!({"command": "get_remote_versions", "install_location": e.dir}),
    )
    .await
    .unwrap();
    assert_eq!(
        out.data.unwrap(),
        json!({"host": "local", "versions": {"api": "3.4", "web": "1.2"}})
    );
    let direct = deployer_commands::remote_versions(e.host.as_ref(), &e.ps(""))
        .await
        .unwrap();
    assert_eq!(direct.get("web").map(String::as_str), Some("1.2"));
}

#[tokio::test]
async fn a_release_deploy_with_lock_shared_links_rollback_and_pruning() {
    let e = env();
    let root = e.ps("app root");
    let h = e.host.clone();
    let lock =
        |holder: &str| json!({"command": "release_lock", "deploy_to": root, "holder": holder});
    run(h.clone(), lock("alice")).await.unwrap();
    run(h.clone(), lock("alice")).await.unwrap(); // a retry by the holder is fine
    let err = run(h.clone(), lock("bob $(id)")).await.unwrap_err();
    assert!(err.to_string().contains("is locked by alice"), "{err}");

    std::fs::create_dir_all(e.p("app root/shared/config")).unwrap();
    std::fs::write(e.p("app root/shared/config/app.yml"), "shared").unwrap();
    for (i, v) in ["1.0", "1.1", "1.2", "1.3"].iter().enumerate() {
        run(
            h.clone(),
            json!({"command": "release_create", "deploy_to": root, "version": v}),
        )
        .await
        .unwrap();
        let rel = e.p(&format!("app root/releases/{v}"));
        std::fs::create_dir_all(rel.join("config")).unwrap();
        std::fs::write(rel.join("config/app.yml"), "from the package").unwrap();
        run(h.clone(), json!({"command": "release_link_shared", "deploy_to": root, "version": v, "shared_dirs": ["log", "tmp/cache"], "shared_files": ["config/app.yml"]}))
            .await
            .unwrap();
        run(h.clone(), json!({"command": "release_activate", "deploy_to": root, "version": v, "holder": "alice"})).await.unwrap();
        set_mtime(&rel, 2_000_000 + i as u64 * 100);
        assert_eq!(
            std::fs::read_link(e.p("app root/current")).unwrap(),
            Path::new(&format!("releases/{v}"))
        );
    }
    assert_eq!(read(&e.p("app root/current/config/app.yml")), "shared");
    assert!(e.p("app root/shared/tmp/cache").is_dir());
    assert!(e.p("app root/current/log").is_symlink());
    let missing = run(h.clone(), json!({"command": "release_link_shared", "deploy_to": root, "version": "1.3", "shared_files": ["secret.env"]}))
        .await
        .unwrap_err();
    assert!(missing.stderr().contains("shared file"), "{missing:?}");

    // rollback goes to the previous release, then the one before
    let out = run(h.clone(), json!({"command": "rollback", "deploy_to": root}))
        .await
        .unwrap();
    assert_eq!(out.data.unwrap()["version"], "1.2");
    run(h.clone(), json!({"command": "rollback", "deploy_to": root}))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_link(e.p("app root/current")).unwrap(),
        Path::new("releases/1.1")
    );
    let log = read(&e.p("app root/releases.log"));
    let actions: Vec<(&str, &str)> = log
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[1], f[2])
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("activate", "1.0"),
            ("activate", "1.1"),
            ("activate", "1.2"),
            ("activate", "1.3"),
            ("rollback", "1.2"),
            ("rollback", "1.1")
        ]
    );
    // a named rollback
    run(
        h.clone(),
        json!({"command": "rollback", "deploy_to": root, "version": "1.3"}),
    )
    .await
    .unwrap();
    run(
        h.clone(),
        json!({"command": "rollback", "deploy_to": root, "version": "1.1"}),
    )
    .await
    .unwrap();
    let err = run(
        h.clone(),
        json!({"command": "rollback", "deploy_to": root, "version": "9.9"}),
    )
    .await
    .unwrap_err();
    assert!(err.stderr().contains("does not exist"), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "cannot switch {root}/current to release 9.9 on local: release "
        )),
        "{err}"
    );

    // keep 2: 1.3 and 1.2 are newest, 1.1 is live and stays
    run(
        h.clone(),
        json!({"command": "keep_releases", "deploy_to": root, "keep": 2}),
    )
    .await
    .unwrap();
    let mut left: Vec<String> = std::fs::read_dir(e.p("app root/releases"))
        .unwrap()
        .map(|d| d.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["1.1", "1.2", "1.3"]);

    let err = run(
        h.clone(),
        json!({"command": "release_unlock", "deploy_to": root, "holder": "bob"}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("held by alice"), "{err}");
    run(
        h.clone(),
        json!({"command": "release_unlock", "deploy_to": root, "holder": "alice"}),
    )
    .await
    .unwrap();
    run(h.clone(), lock("bob")).await.unwrap();
    run(
        h.clone(),
        json!({"command": "release_unlock", "deploy_to": root, "holder": "carol", "force": true}),
    )
    .await
    .unwrap();
    assert!(!e.p("app root/.deploy.lock").exists());
}
