//! Unit tests against `FakeHost`: validation of every command, and the command lines built.

use std::sync::Arc;
use std::time::Duration;

use deployer_core::fixture::{FakeHost, FakeReply};
use deployer_core::{
    Command, CommandError, CommandRegistry, ExecContext, Outcome, Task, TaskEntry, Tasklist,
};

use crate::{HttpBackend, LoadBalancers, ShellBackend, register_all};

fn registry() -> CommandRegistry {
    let mut r = CommandRegistry::new();
    register_all(&mut r);
    LoadBalancers::new()
        .backend(
            "cli",
            ShellBackend::new(["lbctl", "--lb", "{lb_hostname}", "{action}", "{lb_service}"]),
        )
        .backend(
            "api",
            HttpBackend::new("https://{lb_hostname}/pools/members/{lb_service}/{action}"),
        )
        .register(&mut r);
    r
}

fn task(json: &str) -> Task {
    let text = format!(r#"{{"stages": [{{"name": "s", "concurrency": 1, "tasks": [{json}]}}]}}"#);
    let tasklist = Tasklist::from_json_str(&text).unwrap_or_else(|e| panic!("{json}: {e}"));
    match &tasklist.stages[0].tasks[0] {
        TaskEntry::Single(t) => t.clone(),
        TaskEntry::Chain(_) => panic!("not a single task"),
    }
}

fn build(json: &str) -> Result<Box<dyn Command>, String> {
    registry()
        .instantiate(&task(json))
        .map_err(|e| e.to_string())
}

fn error(json: &str) -> String {
    match build(json) {
        Ok(c) => panic!("{json} was accepted: {c:?}"),
        Err(e) => e,
    }
}

fn ctx(host: &Arc<FakeHost>, json: &str) -> ExecContext {
    ExecContext::new(host.clone(), task(json), Arc::new(|_, _| {}))
}

async fn run(host: &Arc<FakeHost>, json: &str) -> Result<Outcome, CommandError> {
    let cmd = build(json).unwrap_or_else(|e| panic!("{json}: {e}"));
    cmd.execute(&ctx(host, json)).await
}

fn fake() -> Arc<FakeHost> {
    Arc::new(FakeHost::new("fe001"))
}

/// A path no shell may split or expand.
const HOSTILE: &str = r#"/srv/my app; rm -rf $(id) `x` "q" *"#;
const HOSTILE_Q: &str = r#"'/srv/my app; rm -rf $(id) `x` "q" *'"#;

/// Puts [`HOSTILE`] into task JSON where `HOSTILE` is written.
fn h(json: &str) -> String {
    let encoded = serde_json::to_string(HOSTILE).unwrap();
    json.replace("HOSTILE", &encoded[1..encoded.len() - 1])
}

#[test]
fn every_command_is_registered() {
    let r = registry();
    for name in crate::COMMAND_NAMES {
        assert!(r.contains(name), "{name}");
    }
    assert_eq!(r.names().count(), crate::COMMAND_NAMES.len());
}

/// (task JSON, text the error must contain)
const INVALID: &[(&str, &str)] = &[
    // missing, mistyped, unknown: one of each for every command
    (
        r#"{"command": "upload", "source": "a.tgz"}"#,
        "destination: missing required argument",
    ),
    (
        r#"{"command": "upload", "source": 3, "destination": "/tmp/"}"#,
        "source: invalid type: integer `3`, expected a string",
    ),
    (
        r#"{"command": "upload", "sorce": "a", "source": "a", "destination": "/tmp"}"#,
        "sorce: unknown argument \"sorce\" (expected one of source, destination, mode, sudo); did you mean \"source\"?",
    ),
    (
        r#"{"command": "upload", "source": "a", "destination": "/tmp", "mode": 644}"#,
        "mode: invalid mode 644, expected an octal string",
    ),
    (
        r#"{"command": "upload", "source": "/", "destination": "/tmp"}"#,
        "source: \"/\" does not name a file",
    ),
    (
        r#"{"command": "unpack", "source": "/tmp/a.rar", "destination": "/srv"}"#,
        "source: unknown archive format of \"/tmp/a.rar\" (expected a name ending in .tar.gz, .tgz, .tar, .zip or .war)",
    ),
    (
        r#"{"command": "unpack", "source": "/tmp/a.tgz"}"#,
        "destination: missing required argument",
    ),
    (
        r#"{"command": "unpack", "source": "/tmp/a.tgz", "destination": ["x"]}"#,
        "destination: invalid type: sequence",
    ),
    (
        r#"{"command": "unpack", "source": "/tmp/a.tgz", "destination": "/x", "dest": 1}"#,
        "dest: unknown argument",
    ),
    (
        r#"{"command": "createdirectory"}"#,
        "source: missing required argument",
    ),
    (
        r#"{"command": "createdirectory", "source": "/x", "clobber": "yes"}"#,
        "clobber: invalid type: string \"yes\", expected a boolean",
    ),
    (
        r#"{"command": "createdirectory", "source": "/", "clobber": true}"#,
        "source: refusing to remove \"/\"",
    ),
    (
        r#"{"command": "createdirectory", "source": ""}"#,
        "source: is empty (expected a path)",
    ),
    (
        r#"{"command": "copyfile", "source": "/a"}"#,
        "destination: missing required argument",
    ),
    (
        r#"{"command": "copyfile", "source": "/a", "destination": "/b", "remove_if_exists": 1}"#,
        "remove_if_exists: invalid type: integer `1`, expected a boolean",
    ),
    (
        r#"{"command": "copyfile", "source": "/a", "destination": "/b", "remove_if_exists": true, "continue_if_exists": true}"#,
        "continue_if_exists: cannot be combined with remove_if_exists",
    ),
    (
        r#"{"command": "copyfile", "source": "/a", "destination": "/b", "force": true}"#,
        "force: unknown argument",
    ),
    (
        r#"{"command": "movefile", "destination": "/b"}"#,
        "source: missing required argument",
    ),
    (
        r#"{"command": "movefile", "source": "/a", "destination": "/"}"#,
        "destination: refusing to remove \"/\"",
    ),
    (
        r#"{"command": "movefile", "source": "/a", "destination": "/b", "clober": true}"#,
        "did you mean \"clobber\"?",
    ),
    (
        r#"{"command": "removefile"}"#,
        "source: missing required argument",
    ),
    (
        r#"{"command": "removefile", "source": "//"}"#,
        "source: refusing to remove \"//\" (expected a path below a directory)",
    ),
    (
        r#"{"command": "removefile", "source": ".."}"#,
        "source: refusing to remove",
    ),
    (
        r#"{"command": "removefile", "source": "/a\u0000b"}"#,
        r#"source: "/a\0b" contains a NUL byte"#,
    ),
    (
        r#"{"command": "removefile", "source": "/a", "recursive": true}"#,
        "recursive: unknown argument",
    ),
    (
        r#"{"command": "writefile", "destination": "/a"}"#,
        "contents: missing required argument",
    ),
    (
        r#"{"command": "writefile", "destination": "/a/", "contents": "x"}"#,
        "destination: \"/a/\" names a directory",
    ),
    (
        r#"{"command": "writefile", "destination": "/a", "contents": "x", "mode": "0999"}"#,
        "mode: invalid mode \"0999\"",
    ),
    (
        r#"{"command": "writefile", "destination": "/a", "content": "x"}"#,
        "did you mean \"contents\"?",
    ),
    (
        r#"{"command": "symlink", "source": "/a"}"#,
        "destination: missing required argument",
    ),
    (
        r#"{"command": "symlink", "source": "", "destination": "/b"}"#,
        "source: is empty",
    ),
    (
        r#"{"command": "symlink", "source": "/a", "destination": "/b", "target": "/c"}"#,
        "target: unknown argument",
    ),
    (
        r#"{"command": "cleanup", "path": "/srv"}"#,
        "keepversions: missing required argument",
    ),
    (
        r#"{"command": "cleanup", "path": "/srv", "keepversions": -1}"#,
        "keepversions: invalid value: integer `-1`, expected usize",
    ),
    (
        r#"{"command": "cleanup", "path": "/srv", "keepversions": 2, "filespec": "a/b*"}"#,
        "filespec: invalid pattern \"a/b*\"",
    ),
    (
        r#"{"command": "cleanup", "path": "/", "keepversions": 2}"#,
        "path: refusing to remove \"/\"",
    ),
    (
        r#"{"command": "cleanup", "path": "/srv", "keepversions": 2, "keep": 2}"#,
        "keep: unknown argument",
    ),
    (
        r#"{"command": "execute_command"}"#,
        "command_line: missing required argument",
    ),
    (
        r#"{"command": "execute_command", "command_line": "  "}"#,
        "command_line: is empty (expected a shell command line)",
    ),
    (
        r#"{"command": "execute_command", "command_line": "ls", "sudo": "no"}"#,
        "sudo: invalid type",
    ),
    (
        r#"{"command": "execute_command", "command_lin": "ls"}"#,
        "did you mean \"command_line\"?",
    ),
    (
        r#"{"command": "migration_script"}"#,
        "source: missing required argument",
    ),
    (
        r#"{"command": "migration_script", "source": "x", "if_exists": 1}"#,
        "if_exists: invalid type",
    ),
    (
        r#"{"command": "migration_script", "source": "x", "if_exist": "/a"}"#,
        "did you mean \"if_exists\"?",
    ),
    (
        r#"{"command": "check_service"}"#,
        "check_command: missing required argument",
    ),
    (
        r#"{"command": "check_service", "check_command": "true", "want_state": "up"}"#,
        "want_state: invalid type: string \"up\", expected i32",
    ),
    (
        r#"{"command": "check_service", "check_command": "true", "wait_timeout": -5}"#,
        "wait_timeout: invalid duration -5",
    ),
    (
        r#"{"command": "check_service", "check_command": "true", "wait": 5}"#,
        "wait: unknown argument",
    ),
    (
        r#"{"command": "control_service"}"#,
        "control_command: missing required argument (expected \"control_command\" (or \"service\" with \"manager\"))",
    ),
    (
        r#"{"command": "control_service", "service": "web", "manager": "systemd"}"#,
        "action: missing required argument",
    ),
    (
        r#"{"command": "control_service", "service": "web", "manager": "upstart", "action": "start"}"#,
        "manager: unknown variant `upstart`, expected one of `systemd`, `init`, `daemontools`",
    ),
    (
        r#"{"command": "control_service", "control_command": "x", "want_state": "sideways"}"#,
        "want_state: unknown variant `sideways`, expected `up` or `down`",
    ),
    (
        r#"{"command": "control_service", "control_command": "x", "action": "start"}"#,
        "action: only applies with \"service\" and \"manager\"",
    ),
    (
        r#"{"command": "start_service"}"#,
        "start_command: missing required argument",
    ),
    (
        r#"{"command": "start_service", "service": "web"}"#,
        "manager: missing: \"service\" needs a service manager",
    ),
    (
        r#"{"command": "start_service", "manager": "init"}"#,
        "service: missing: \"manager\" needs a service name",
    ),
    (
        r#"{"command": "start_service", "service": "web; reboot", "manager": "init"}"#,
        "service: invalid service name \"web; reboot\"",
    ),
    (
        r#"{"command": "start_service", "service": "web", "manager": "init", "start_command": "x"}"#,
        "start_command: cannot be combined with \"service\"/\"manager\"",
    ),
    (
        r#"{"command": "start_service", "start_command": "x", "stop_command": "y"}"#,
        "stop_command: unknown argument",
    ),
    (
        r#"{"command": "stop_service", "stop_command": 5}"#,
        "stop_command: invalid type: integer `5`, expected a string",
    ),
    (
        r#"{"command": "stop_service", "stop_comand": "x"}"#,
        "did you mean \"stop_command\"?",
    ),
    (
        r#"{"command": "restart_service"}"#,
        "stop_command: missing required argument (expected \"stop_command\" and \"start_command\" (or \"service\" with \"manager\"))",
    ),
    (
        r#"{"command": "restart_service", "service": "web", "manager": "systemd", "poll_interval": "1"}"#,
        "poll_interval: invalid type: string \"1\"",
    ),
    (
        r#"{"command": "restart_service", "start_command": "x"}"#,
        "stop_command: missing required argument (expected \"stop_command\" and \"start_command\" together",
    ),
    (
        r#"{"command": "reload_service"}"#,
        "reload_command: missing required argument",
    ),
    (
        r#"{"command": "reload_service", "reload_command": "x", "kill_command": ""}"#,
        "kill_command: is empty",
    ),
    (
        r#"{"command": "http_check"}"#,
        "url: missing required argument",
    ),
    (
        r#"{"command": "http_check", "url": "ftp://x"}"#,
        "url: invalid URL \"ftp://x\" (expected an http:// or https:// URL without spaces)",
    ),
    (
        r#"{"command": "http_check", "url": "http://x", "expected_status": 99}"#,
        "expected_status: invalid status 99",
    ),
    (
        r#"{"command": "http_check", "url": "http://x", "tries": 0}"#,
        "tries: is 0 (expected at least 1)",
    ),
    (
        r#"{"command": "http_check", "url": "http://x", "status": 200}"#,
        "status: unknown argument",
    ),
    (
        r#"{"command": "wait_for_port"}"#,
        "port: missing required argument",
    ),
    (
        r#"{"command": "wait_for_port", "port": 70000}"#,
        "port: invalid value: integer `70000`, expected u16",
    ),
    (
        r#"{"command": "wait_for_port", "port": 80, "address": "a b"}"#,
        "address: invalid address \"a b\"",
    ),
    (
        r#"{"command": "wait_for_port", "port": 80, "state": "ajar"}"#,
        "state: unknown variant `ajar`",
    ),
    (
        r#"{"command": "wait_for_port", "port": 80, "host": "x"}"#,
        "host: unknown argument",
    ),
    (
        r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1"}"#,
        "lb_service: missing required argument",
    ),
    (
        r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_backend": "f5"}"#,
        "lb_backend: unknown load-balancer backend \"f5\" (expected one of api, cli)",
    ),
    (
        r#"{"command": "enable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_timeout": "x"}"#,
        "lb_timeout: invalid type",
    ),
    (
        r#"{"command": "enable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_pasword": "x"}"#,
        "did you mean \"lb_password\"?",
    ),
    (
        r#"{"command": "send_graphite", "carbon_host": "g"}"#,
        "metric_name: missing required argument",
    ),
    (
        r#"{"command": "send_graphite", "carbon_host": "g", "metric_name": "a b"}"#,
        "metric_name: invalid metric name \"a b\"",
    ),
    (
        r#"{"command": "send_graphite", "carbon_host": "g", "metric_name": "a", "metric_value": "lots"}"#,
        "metric_value: invalid metric value \"lots\" (expected a number)",
    ),
    (
        r#"{"command": "send_graphite", "carbon_host": "g", "metric_name": "a", "carbon_port": "2003"}"#,
        "carbon_port: invalid type",
    ),
    (
        r#"{"command": "send_graphite", "carbon_host": "g", "metric_name": "a", "port": 1}"#,
        "port: unknown argument",
    ),
    (
        r#"{"command": "get_remote_versions"}"#,
        "install_location: missing required argument",
    ),
    (
        r#"{"command": "get_remote_versions", "install_location": "/srv", "services": ["ok", "a/b"]}"#,
        "services[1]: invalid service name \"a/b\"",
    ),
    (
        r#"{"command": "get_remote_versions", "install_location": "/srv", "services": "web"}"#,
        "services: invalid type: string \"web\", expected a sequence",
    ),
    (
        r#"{"command": "getremoteversions", "install_location": "/srv", "properties_defs": []}"#,
        "properties_defs: unknown argument",
    ),
    (
        r#"{"command": "release_lock", "deploy_to": "/srv/web"}"#,
        "holder: missing required argument",
    ),
    (
        r#"{"command": "release_lock", "deploy_to": "srv/web", "holder": "me"}"#,
        "deploy_to: invalid deploy directory \"srv/web\" (expected an absolute path below /",
    ),
    (
        r#"{"command": "release_lock", "deploy_to": "/srv/web", "holder": "a\nb"}"#,
        "holder: invalid holder",
    ),
    (
        r#"{"command": "release_lock", "deploy_to": "/srv/web", "holder": "me", "force": true}"#,
        "force: only applies to release_unlock",
    ),
    (
        r#"{"command": "release_unlock", "deploy_to": "/", "holder": "me"}"#,
        "deploy_to: invalid deploy directory \"/\"",
    ),
    (
        r#"{"command": "release_unlock", "deploy_to": "/srv/web", "holder": "me", "force": "yes"}"#,
        "force: invalid type",
    ),
    (
        r#"{"command": "release_create", "deploy_to": "/srv/web"}"#,
        "version: missing required argument",
    ),
    (
        r#"{"command": "release_create", "deploy_to": "/srv/web", "version": "../etc"}"#,
        "version: invalid version \"../etc\"",
    ),
    (
        r#"{"command": "release_create", "deploy_to": "/srv/web", "version": 1.2}"#,
        "version: invalid type: floating point `1.2`, expected a string",
    ),
    (
        r#"{"command": "release_create", "deploy_to": "/srv/web", "version": "1", "shared": []}"#,
        "shared: unknown argument",
    ),
    (
        r#"{"command": "release_link_shared", "deploy_to": "/srv/web", "version": "1", "shared_dirs": ["../x"]}"#,
        "shared_dirs[0]: invalid relative path \"../x\"",
    ),
    (
        r#"{"command": "release_link_shared", "deploy_to": "/srv/web", "version": "1", "shared_files": ["ok", "/etc/passwd"]}"#,
        "shared_files[1]: invalid relative path \"/etc/passwd\"",
    ),
    (
        r#"{"command": "release_link_shared", "deploy_to": "/srv/web", "version": "1", "shared_dirs": "log"}"#,
        "shared_dirs: invalid type",
    ),
    (
        r#"{"command": "release_activate", "deploy_to": "/srv/web"}"#,
        "version: missing required argument",
    ),
    (
        r#"{"command": "release_activate", "deploy_to": "/srv/web", "version": ".."}"#,
        "version: invalid version \"..\"",
    ),
    (
        r#"{"command": "release_activate", "deploy_to": "/srv/web", "version": "1", "to": "x"}"#,
        "to: unknown argument",
    ),
    (
        r#"{"command": "rollback"}"#,
        "deploy_to: missing required argument",
    ),
    (
        r#"{"command": "rollback", "deploy_to": "/srv/web", "version": "a b"}"#,
        "version: invalid version \"a b\"",
    ),
    (
        r#"{"command": "rollback", "deploy_to": "/srv/web", "steps": 2}"#,
        "steps: unknown argument",
    ),
    (
        r#"{"command": "keep_releases", "deploy_to": "/srv/web"}"#,
        "keep: missing required argument",
    ),
    (
        r#"{"command": "keep_releases", "deploy_to": "/srv/web", "keep": 0}"#,
        "keep: is 0 (expected at least 1",
    ),
    (
        r#"{"command": "keep_releases", "deploy_to": "/srv/web", "keep": "5"}"#,
        "keep: invalid type",
    ),
];

#[test]
fn invalid_arguments_are_reported_with_their_path() {
    let mut failures = Vec::new();
    for (json, want) in INVALID {
        match build(json) {
            Ok(_) => failures.push(format!("{json}: accepted")),
            Err(e) if !e.contains(want) => {
                failures.push(format!("{json}:\n   got {e}\n  want {want}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_command_has_invalid_cases() {
    for name in crate::COMMAND_NAMES {
        let needle = format!("\"command\": \"{name}\"");
        let n = INVALID.iter().filter(|(j, _)| j.contains(&needle)).count();
        assert!(n >= 1, "{name} has no validation test");
    }
}

#[test]
fn several_problems_are_reported_together() {
    let e = error(
        r#"{"command": "release_link_shared", "deploy_to": "rel", "version": "a/b", "shared_dirs": ["/x"]}"#,
    );
    assert!(e.starts_with("3 problems found"), "{e}");
}

#[test]
fn load_balancer_commands_need_a_configured_backend() {
    let mut r = CommandRegistry::new();
    register_all(&mut r);
    let t =
        task(r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web"}"#);
    let e = r.instantiate(&t).unwrap_err().to_string();
    assert!(
        e.contains("lb_backend: no load-balancer backend is configured"),
        "{e}"
    );
}

#[test]
fn passwords_never_show_in_debug_or_errors() {
    let c = build(r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_password": "hunter2"}"#).unwrap();
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("hunter2") && debug.contains("Secret(***)"),
        "{debug}"
    );
    let e = error(
        r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_password": "hunter2\u0000"}"#,
    );
    assert!(
        !e.contains("hunter2") && e.contains("lb_password: contains a NUL byte"),
        "{e}"
    );
    let e = error(
        r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_password": 12345678}"#,
    );
    assert!(!e.contains("12345678"), "{e}");
}

// ---- command lines ----

#[tokio::test]
async fn file_commands_quote_hostile_paths() {
    // The destination check of unpack fails on this host.
    let host = Arc::new(FakeHost::new("fe001").reply("exit 97; shift", FakeReply::fail(97, "")));
    run(
        &host,
        &h(r#"{"command": "createdirectory", "source": "HOSTILE", "mode": "0750"}"#),
    )
    .await
    .unwrap();
    run(
        &host,
        &h(r#"{"command": "createdirectory", "source": "HOSTILE", "clobber": true}"#),
    )
    .await
    .unwrap();
    run(
        &host,
        &h(r#"{"command": "removefile", "source": "HOSTILE"}"#),
    )
    .await
    .unwrap();
    let e = run(
        &host,
        &h(r#"{"command": "unpack", "source": "HOSTILE.tgz", "destination": "HOSTILE"}"#),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("unpack destination"), "{e}");
    assert!(e.to_string().contains("does not exist on fe001"), "{e}");
    let q = HOSTILE_Q;
    let qt = format!("{}.tgz'", &q[..q.len() - 1]);
    let guard = deployer_core::quote(crate::files::UNPACK_GUARD)
        .unwrap()
        .into_owned();
    assert_eq!(
        host.commands(),
        [
            format!("mkdir -p -- {q} && chmod 0750 -- {q}"),
            format!("rm -rf -- {q} && mkdir -p -- {q}"),
            format!("rm -rf -- {q}"),
            format!("sh -c {guard} unpack {q} tar -xzf {qt} -C {q}"),
        ]
    );
    // unpack checks its destination in the same session as the unpacking.
    let host = Arc::new(FakeHost::new("fe001").with_file(format!("{HOSTILE}/x"), "x"));
    run(
        &host,
        &h(r#"{"command": "unpack", "source": "HOSTILE.tgz", "destination": "HOSTILE"}"#),
    )
    .await
    .unwrap();
    run(
        &host,
        &h(r#"{"command": "unpack", "source": "HOSTILE.tar", "destination": "HOSTILE"}"#),
    )
    .await
    .unwrap();
    // unzip expands wildcards in the archive name itself: a zip name with one is refused.
    let e = error(&h(
        r#"{"command": "unpack", "source": "HOSTILE.zip", "destination": "HOSTILE"}"#,
    ));
    assert!(
        e.contains("source:") && e.contains("which unzip would expand"),
        "{e}"
    );
    let no_glob = HOSTILE.trim_end_matches(" *");
    let zip = serde_json::json!({"command": "unpack", "source": format!("{no_glob}.ZIP"), "destination": HOSTILE});
    run(&host, &zip.to_string()).await.unwrap();
    run(
        &host,
        &h(r#"{"command": "unpack", "source": "HOSTILE.war", "destination": "HOSTILE"}"#),
    )
    .await
    .unwrap();
    let qx = |ext: &str| format!("{}.{ext}'", &q[..q.len() - 1]);
    let g = format!("sh -c {guard} unpack {q}");
    assert_eq!(
        host.commands(),
        [
            format!("{g} tar -xzf {qt} -C {q}"),
            format!("{g} tar -xf {} -C {q}", qx("tar")),
            format!("{g} unzip -o -q '{no_glob}.ZIP' -d {q}"),
            format!("{g} cp -- {} {q}", qx("war")),
        ]
    );
}

#[tokio::test]
async fn copy_and_move_respect_existing_destinations() {
    let host = Arc::new(FakeHost::new("fe001").with_file("/dst b", "old"));
    let e = run(
        &host,
        r#"{"command": "copyfile", "source": "/src a", "destination": "/dst b"}"#,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("the destination already exists"),
        "{e}"
    );
    run(&host, r#"{"command": "copyfile", "source": "/src a", "destination": "/dst b", "remove_if_exists": true}"#).await.unwrap();
    run(&host, r#"{"command": "copyfile", "source": "/src a", "destination": "/dst b", "continue_if_exists": true}"#).await.unwrap();
    let e = run(
        &host,
        r#"{"command": "movefile", "source": "/src a", "destination": "/dst b", "clobber": false}"#,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("clobber is false"), "{e}");
    run(
        &host,
        r#"{"command": "movefile", "source": "/src a", "destination": "/dst b"}"#,
    )
    .await
    .unwrap();
    let same = run(
        &host,
        r#"{"command": "movefile", "source": "/a", "destination": "/a"}"#,
    )
    .await
    .unwrap();
    assert!(same.skipped.is_some());
    let copy = format!(
        "sh -c {} copyfile '/src a' '/dst b' '/dst b.deployer-tmp'",
        deployer_core::quote(crate::files::COPY_SCRIPT).unwrap()
    );
    assert_eq!(
        host.commands(),
        [
            "rm -rf -- '/dst b'",
            copy.as_str(),
            "cp -Rp -- '/src a' '/dst b'",
            "rm -rf -- '/dst b'",
            "mv -- '/src a' '/dst b'",
        ]
    );
}

#[tokio::test]
async fn writefile_writes_through_a_temporary_file_with_content_on_stdin() {
    let host = fake();
    run(&host, &h(r#"{"command": "writefile", "destination": "HOSTILE", "contents": "$(reboot)", "mode": "600"}"#)).await.unwrap();
    let tmp = format!("{}.deployer-tmp'", &HOSTILE_Q[..HOSTILE_Q.len() - 1]);
    assert_eq!(
        host.commands(),
        [format!(
            r#"sh -c 'umask 077; if cat > "$1" && chmod "$2" -- "$1" && mv -f -- "$1" "$3"; then exit 0; fi; rm -f -- "$1"; exit 1' writefile {tmp} 0600 {HOSTILE_Q}"#
        )]
    );
    let host = Arc::new(FakeHost::new("fe001").with_file("/etc/x", "old"));
    let e = run(
        &host,
        r#"{"command": "writefile", "destination": "/etc/x", "contents": "new"}"#,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("/etc/x already exists on fe001 (set clobber"),
        "{e}"
    );
    assert!(host.commands().is_empty());
}

#[tokio::test]
async fn symlink_switches_atomically_and_only_when_needed() {
    // The one-session script reports an unchanged link on stdout.
    let host = Arc::new(FakeHost::new("fe001").reply(
        "symlink",
        FakeReply::ok().stdout("deployer: link unchanged\n"),
    ));
    let done = run(
        &host,
        r#"{"command": "symlink", "source": "/srv/releases/1 2", "destination": "/srv/current"}"#,
    )
    .await
    .unwrap();
    assert!(done.skipped.is_some());
    let host = fake();
    run(
        &host,
        r#"{"command": "symlink", "source": "releases/1 2", "destination": "/srv/cur rent/"}"#,
    )
    .await
    .unwrap();
    let script = deployer_core::quote(crate::files::SWITCH_SCRIPT)
        .unwrap()
        .into_owned();
    assert_eq!(
        host.commands(),
        [format!(
            "sh -c {script} symlink 'releases/1 2' '/srv/releases/1 2' '/srv/cur rent' '/srv/cur rent.deployer-tmp'"
        )]
    );
    let host = Arc::new(FakeHost::new("fe001").reply("symlink", FakeReply::fail(97, "")));
    let e = run(
        &host,
        r#"{"command": "symlink", "source": "/nowhere", "destination": "/srv/current"}"#,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("link target /nowhere does not exist on fe001"),
        "{e}"
    );
}

#[tokio::test]
async fn cleanup_keeps_the_newest_and_what_current_points_to() {
    let listing = "100.0\td\tweb_1\t\x00400.0\td\tweb_4\t\x00300.0\td\tweb_3\t\x00200.0\td\tweb_2\t\x00500.0\tl\tweb\t/srv/web_1\x00450.0\tf\tother\t\x00";
    let host = Arc::new(FakeHost::new("fe001").reply("find", FakeReply::ok().stdout(listing)));
    let out = run(
        &host,
        r#"{"command": "cleanup", "path": "/srv", "filespec": "web_*", "keepversions": 2}"#,
    )
    .await
    .unwrap();
    assert_eq!(out.data.unwrap()["removed"], serde_json::json!(["web_2"]));
    assert_eq!(
        host.commands(),
        [
            r#"find /srv -mindepth 1 -maxdepth 1 -printf "%T@\\t%y\\t%f\\t%l\\0""#,
            "rm -rf -- /srv/web_2",
        ]
    );
    // exclude, and nothing to do
    let host = Arc::new(FakeHost::new("fe001").reply("find", FakeReply::ok().stdout(listing)));
    let out = run(&host, r#"{"command": "cleanup", "path": "/srv", "filespec": "web_*", "keepversions": 0, "exclude": "web_[23]"}"#).await.unwrap();
    assert_eq!(out.data.unwrap()["removed"], serde_json::json!(["web_4"]));
}

/// Programs that take no `--` before a path (`find`, `unzip`, `svc`, `svstat`) or read a
/// `host:` prefix as a remote archive (`tar -f`) get a relative path as `./path`.
#[tokio::test]
async fn relative_operands_cannot_be_read_as_options() {
    let host = fake();
    let _ = run(
        &host,
        r#"{"command": "cleanup", "path": "-delete", "keepversions": 1}"#,
    )
    .await;
    let host2 = Arc::new(FakeHost::new("fe001").with_file("-d/x", "x"));
    for source in ["-l.zip", "-oProxyCommand=x:a.tgz"] {
        let json = serde_json::json!({"command": "unpack", "source": source, "destination": "-d"});
        run(&host2, &json.to_string()).await.unwrap();
    }
    let host3 = Arc::new(FakeHost::new("fe001").reply("svstat", FakeReply::ok().stdout("x: up\n")));
    run(&host3, r#"{"command": "start_service", "service": "web", "manager": "daemontools", "service_dir": "-x"}"#).await.unwrap();
    let guard = deployer_core::quote(crate::files::UNPACK_GUARD)
        .unwrap()
        .into_owned();
    assert_eq!(
        host.commands()[0],
        r#"find ./-delete -mindepth 1 -maxdepth 1 -printf "%T@\\t%y\\t%f\\t%l\\0""#
    );
    assert_eq!(
        host2.commands(),
        [
            format!("sh -c {guard} unpack -d unzip -o -q ./-l.zip -d -d"),
            format!("sh -c {guard} unpack -d tar -xzf './-oProxyCommand=x:a.tgz' -C -d"),
        ]
    );
    assert_eq!(host3.commands(), ["svc -u ./-x/web", "svstat ./-x/web"]);
}

#[tokio::test]
async fn execute_command_and_migration_script() {
    let host = fake().clone();
    run(
        &host,
        r#"{"command": "execute_command", "command_line": "echo hi | wc -c"}"#,
    )
    .await
    .unwrap();
    let out = run(&host, r#"{"command": "migration_script", "source": "/srv/migrate --all", "if_exists": "/srv/migrate"}"#).await.unwrap();
    assert_eq!(out.skipped.as_deref(), Some("/srv/migrate does not exist"));
    let host2 = Arc::new(
        FakeHost::new("db")
            .with_file("/srv/migrate", "#!/bin/sh")
            .reply("migrate", FakeReply::fail(2, "boom")),
    );
    let e = run(&host2, r#"{"command": "migration_script", "source": "/srv/migrate --all", "if_exists": "/srv/migrate"}"#).await.unwrap_err();
    assert_eq!(e.exit_status(), Some(2));
    assert_eq!(e.stderr(), "boom");
    assert_eq!(host.commands(), ["echo hi | wc -c"]);
}

#[tokio::test(start_paused = true)]
async fn check_service_gives_up_after_its_wait() {
    let host = Arc::new(FakeHost::new("fe001").reply("status", FakeReply::fail(3, "")));
    let started = tokio::time::Instant::now();
    let e = run(&host, r#"{"command": "check_service", "check_command": "status web", "wait_timeout": 10, "poll_interval": 2}"#).await.unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(10));
    assert!(
        e.to_string()
            .contains("did not exit with 0 within 10s (last exit status: 3)"),
        "{e}"
    );
    assert_eq!(host.commands().len(), 6); // at 0, 2, 4, 6, 8 and 10 s
    let ok = Arc::new(FakeHost::new("fe001").reply("status", FakeReply::fail(3, "")));
    run(
        &ok,
        r#"{"command": "check_service", "check_command": "status web", "want_state": 3}"#,
    )
    .await
    .unwrap();
    assert_eq!(ok.commands().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn managed_services_use_their_managers_commands() {
    let host = fake();
    run(
        &host,
        r#"{"command": "start_service", "service": "web", "manager": "systemd"}"#,
    )
    .await
    .unwrap();
    run(
        &host,
        r#"{"command": "reload_service", "service": "web", "manager": "init"}"#,
    )
    .await
    .unwrap();
    run(
        &host,
        r#"{"command": "restart_service", "service": "web", "manager": "init"}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        host.commands(),
        [
            "systemctl start web",
            "systemctl is-active --quiet web",
            "/etc/init.d/web reload",
            "/etc/init.d/web restart",
            "/etc/init.d/web status",
        ]
    );
    let host = Arc::new(FakeHost::new("fe001").reply(
        "svstat",
        FakeReply::ok().stdout("/srv/svc dir/web: down 3 seconds\n"),
    ));
    run(&host, r#"{"command": "stop_service", "service": "web", "manager": "daemontools", "service_dir": "/srv/svc dir"}"#).await.unwrap();
    assert_eq!(
        host.commands(),
        ["svc -d '/srv/svc dir/web'", "svstat '/srv/svc dir/web'"]
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_times_out_runs_the_kill_command() {
    let host = Arc::new(FakeHost::new("fe001").reply(
        "svstat",
        FakeReply::ok().stdout("/etc/service/web: up (pid 1) 9 seconds\n"),
    ));
    let e = run(&host, r#"{"command": "stop_service", "service": "web", "manager": "daemontools", "kill_command": "svc -k /etc/service/web", "wait_timeout": 4, "poll_interval": 1}"#).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("still not down after the kill command"),
        "{e}"
    );
    let cmds = host.commands();
    assert_eq!(cmds[0], "svc -d /etc/service/web");
    // 2 s for the first wait (probes at 0, 1, 2), the kill, 2 s for the second.
    assert_eq!(cmds[4], "svc -k /etc/service/web");
    assert_eq!(cmds.len(), 8, "{cmds:?}");
    // Without a kill command the error says which state was not reached.
    let e = run(&host, r#"{"command": "control_service", "control_command": "svc -d /x", "status_command": "svstat /x", "want_state": "down", "wait_timeout": 1}"#).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("did not come down within 1s after `svc -d /x`"),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn restart_with_own_lines_waits_for_down_then_up_then_checks() {
    let host = Arc::new(
        FakeHost::new("fe001")
            .reply("state-after-stop", FakeReply::ok().stdout("x: down\n"))
            .reply("health", FakeReply::ok()),
    );
    // No status_command: the lines run in order, then check_command is polled.
    run(&host, r#"{"command": "restart_service", "stop_command": "stop it", "start_command": "start it", "check_command": "health", "sudo": true}"#).await.unwrap();
    assert_eq!(host.commands(), ["stop it", "start it", "health"]);
}

#[tokio::test]
async fn http_check_builds_a_curl_line_and_judges_the_answer() {
    let host = Arc::new(
        FakeHost::new("fe001").reply("curl", FakeReply::ok().stdout("{\"status\":\"ok\"}\n200")),
    );
    run(&host, r#"{"command": "http_check", "url": "http://localhost:8080/health?a=1&b=$(id)", "body_contains": "\"ok\"", "request_timeout": 2.5}"#).await.unwrap();
    assert_eq!(
        host.commands(),
        [
            r#"curl -sS --globoff --max-time 2.5 -w "\\n%{http_code}" 'http://localhost:8080/health?a=1&b=$(id)'"#,
        ]
    );
    let e = run(
        &host,
        r#"{"command": "http_check", "url": "http://localhost/", "expected_status": 204}"#,
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("status 200, expected 204"), "{e}");
    let e = run(
        &host,
        r#"{"command": "http_check", "url": "http://localhost/", "body_contains": "ready"}"#,
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().contains("body does not contain \"ready\""),
        "{e}"
    );
}

#[tokio::test]
async fn wait_for_port_probes_with_bash() {
    let host = fake();
    run(&host, r#"{"command": "wait_for_port", "port": 8080}"#)
        .await
        .unwrap();
    assert_eq!(
        host.commands(),
        [
            r#"timeout 5 bash -c 'exec 3<>"/dev/tcp/$1/$2"' wait_for_port 127.0.0.1 8080 2>/dev/null"#,
        ]
    );
}

#[tokio::test]
async fn load_balancer_backends_keep_the_password_off_the_command_line() {
    let host = fake();
    run(&host, r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web 1; reboot", "lb_password": "hunter2"}"#).await.unwrap();
    run(&host, r#"{"command": "enable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web 1", "lb_username": "ops", "lb_password": "hunter2", "lb_backend": "api", "lb_timeout": 20}"#).await.unwrap();
    assert_eq!(
        host.commands(),
        [
            "lbctl --lb lb1 disable 'web 1; reboot'",
            "curl -sS --fail -X POST --max-time 20 --config - -o /dev/null 'https://lb1/pools/members/web%201/enable'",
        ]
    );
    let failing = Arc::new(FakeHost::new("local").reply("lbctl", FakeReply::fail(1, "denied")));
    let e = run(&failing, r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_password": "hunter2"}"#).await.unwrap_err();
    assert!(!format!("{e} {e:?}").contains("hunter2"));
}

#[tokio::test]
async fn a_missing_password_variable_fails_the_task_without_running_anything() {
    let host = fake();
    let e = run(&host, r#"{"command": "disable_loadbalancer", "lb_hostname": "lb1", "lb_service": "web", "lb_password_env": "DEPLOYER_TEST_SURELY_UNSET_VARIABLE"}"#).await.unwrap_err();
    assert!(
        e.to_string().contains(
            "environment variable DEPLOYER_TEST_SURELY_UNSET_VARIABLE (lb_password_env) is not set"
        ),
        "{e}"
    );
    assert!(host.commands().is_empty());
}

#[test]
fn curl_config_escapes_credentials() {
    assert_eq!(
        crate::lb::curl_user_config_for_tests("o\"ps", "a\\b\nc"),
        "user = \"o\\\"ps:a\\\\b\\nc\"\n"
    );
}

#[tokio::test]
async fn get_remote_versions_reads_both_layouts() {
    let listing = "/srv/web/current\t/srv/web/releases/1.2\n/srv/api\t/opt/api_3.4\n/srv/junk\t/opt/nounderscore\n";
    let host = Arc::new(
        FakeHost::new("fe001").reply("get_remote_versions", FakeReply::ok().stdout(listing)),
    );
    let out = run(
        &host,
        r#"{"command": "get_remote_versions", "install_location": "/srv/"}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        out.data.unwrap(),
        serde_json::json!({"host": "fe001", "versions": {"api": "3.4", "web": "1.2"}})
    );
    assert_eq!(
        host.commands(),
        [
            r#"sh -c 'for l in "$1"/* "$1"/*/current; do if [ -L "$l" ]; then printf '"'%s\\t%s\\n' \""'$l" "$(readlink -- "$l")"; fi; done; exit 0' get_remote_versions /srv"#,
        ]
    );
    let out = run(
        &host,
        r#"{"command": "getremoteversions", "install_location": "/srv", "services": ["web"]}"#,
    )
    .await
    .unwrap();
    assert_eq!(
        out.data.unwrap()["versions"],
        serde_json::json!({"web": "1.2"})
    );
}

#[tokio::test]
async fn release_commands_build_quoted_lines() {
    let host = fake();
    run(
        &host,
        r#"{"command": "release_lock", "deploy_to": "/srv/my app", "holder": "alice $(id)"}"#,
    )
    .await
    .unwrap();
    run(
        &host,
        r#"{"command": "release_create", "deploy_to": "/srv/my app/", "version": "1.2;x"}"#,
    )
    .await
    .unwrap();
    run(&host, r#"{"command": "release_link_shared", "deploy_to": "/srv/my app", "version": "1.2", "shared_dirs": ["log"], "shared_files": ["config/app 1.yml"]}"#).await.unwrap();
    let cmds = host.commands();
    assert!(
        cmds[0].starts_with("sh -c ") && cmds[0].contains("mkdir -p -- \"$1\""),
        "{}",
        cmds[0]
    );
    assert!(
        cmds[0].ends_with(
            "' release_lock '/srv/my app' '/srv/my app/.deploy.lock' 'alice $(id)' '' ''"
        ),
        "{}",
        cmds[0]
    );
    assert_eq!(
        cmds[1],
        "mkdir -p -- '/srv/my app/releases/1.2;x' '/srv/my app/shared'"
    );
    assert!(cmds[2].ends_with("' release_link_shared '/srv/my app/shared' '/srv/my app/releases/1.2' d:log 'f:config/app 1.yml'"), "{}", cmds[2]);
}

#[tokio::test]
async fn a_held_lock_names_its_holder() {
    let host = Arc::new(FakeHost::new("fe001").reply(
        "release_lock",
        FakeReply {
            exit_status: 3,
            stdout: "now=1000\nmtime=990\nuser=bob\ncontroller=ci-7\ntaken=995\nholder=0190f5c2-7b1a-7cc3-9a51-2f3e0c1d2b4a\n".into(),
            ..FakeReply::default()
        },
    ));
    let e = run(
        &host,
        r#"{"command": "release_lock", "deploy_to": "/srv/web", "holder": "alice"}"#,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "/srv/web on fe001 is locked by run 0190f5c2-7b1a-7cc3-9a51-2f3e0c1d2b4a (user bob, \
         controller ci-7, taken 5s ago): another run holds it (if that run is over, free the \
         lock with `deploy lock release`, or remove /srv/web/.deploy.lock)"
    );
}

#[test]
fn idempotent_commands_say_so() {
    let yes = [
        r#"{"command": "upload", "source": "a", "destination": "/b"}"#,
        r#"{"command": "removefile", "source": "/b"}"#,
        r#"{"command": "symlink", "source": "/a", "destination": "/b"}"#,
        r#"{"command": "check_service", "check_command": "true"}"#,
        r#"{"command": "release_activate", "deploy_to": "/srv", "version": "1"}"#,
        r#"{"command": "rollback", "deploy_to": "/srv", "version": "1"}"#,
    ];
    let no = [
        r#"{"command": "execute_command", "command_line": "x"}"#,
        r#"{"command": "movefile", "source": "/a", "destination": "/b"}"#,
        r#"{"command": "rollback", "deploy_to": "/srv"}"#,
    ];
    for j in yes {
        assert!(build(j).unwrap().idempotent(), "{j}");
    }
    for j in no {
        assert!(!build(j).unwrap().idempotent(), "{j}");
    }
}
