//! The bad-input corpus (`tests/corpus/`): malformed tasklists, configs and book libraries, each
//! with the text its error must contain. Every case must give exit code 2 and a clear message,
//! never a panic, and touch no host. Large and deeply nested inputs are generated here.
//!
//! "Touches no host" is checked, not assumed: every case runs in a [`Sandbox`] where touching
//! a host leaves a trace — its `~/.ssh/config` sends every host name to a listener that counts
//! connections, and a command run on this machine (the corpus's tasks `touch deployer-trace`)
//! writes a file in the working directory — and runs both as a dry run and as a real run (a
//! dry run never touches a host even for good input, except a generator reading hosts). The
//! corpus's tasks name a remote host (`fe001`) or touch the trace file, its configs name a
//! host with an artifact to deploy there, and its books run `touch deployer-trace`, so each
//! would touch something if it were accepted; the `*_touch_*` tests show the same sandbox sees
//! it when good input does.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The file the corpus's local commands create.
const TRACE: &str = "deployer-trace";

fn corpus(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind)
}

fn cases(kind: &str) -> Vec<(String, String)> {
    std::fs::read_to_string(corpus(kind).join("expected.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (file, expected) = l.split_once('\t').expect("file<TAB>expected");
            (file.to_string(), expected.to_string())
        })
        .collect()
}

/// A working directory and a home where touching a host leaves a trace.
struct Sandbox {
    dir: tempfile::TempDir,
    /// Connections to the listener every host name leads to.
    connections: Arc<AtomicUsize>,
}

impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        // Accepts and drops: a client waits for the server's greeting until then, so a
        // connection is counted before the program that made it can exit.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                seen.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        std::fs::create_dir_all(dir.path().join("home/.ssh")).unwrap();
        std::fs::write(
            dir.path().join("home/.ssh/config"),
            format!("Host *\n  HostName 127.0.0.1\n  Port {port}\n"),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join("work")).unwrap();
        std::fs::write(dir.path().join("scope.json"), "{}").unwrap();
        Sandbox { dir, connections }
    }

    fn work(&self) -> PathBuf {
        self.dir.path().join("work")
    }

    fn scope(&self) -> PathBuf {
        self.dir.path().join("scope.json")
    }

    fn run(&self, bin: &str, args: &[&str]) -> Output {
        Command::new(bin)
            .args(args)
            .env("DEPLOYER_STORE", "sqlite::memory:")
            .env("HOME", self.dir.path().join("home"))
            .current_dir(self.work())
            .output()
            .expect("the binary runs")
    }

    /// What the last runs touched (and forgets it).
    fn touched(&self) -> Vec<String> {
        let mut traces = Vec::new();
        let n = self.connections.swap(0, Ordering::SeqCst);
        if n > 0 {
            traces.push(format!("{n} connection(s) to a host"));
        }
        let trace = self.work().join(TRACE);
        if trace.exists() {
            std::fs::remove_file(&trace).unwrap();
            traces.push("a command ran on this machine".to_string());
        }
        traces
    }
}

fn check(what: &str, out: &Output, expected: &str, sandbox: &Sandbox) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: exit code\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "{what}: expected {expected:?} in\n{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Syntax ok"));
    let touched = sandbox.touched();
    assert!(touched.is_empty(), "{what} touched a host: {touched:?}");
}

/// `deploy` with `input` (`--tasklist FILE` or `--config FILE`), as a dry run and for real.
fn deploy_both_ways(sandbox: &Sandbox, input: [&str; 2], expected: &str) {
    for extra in [&["--dry-run"][..], &[]] {
        let mut args = input.to_vec();
        args.extend_from_slice(extra);
        let out = sandbox.run(env!("CARGO_BIN_EXE_deploy"), &args);
        check(&args.join(" "), &out, expected, sandbox);
    }
}

#[test]
fn malformed_tasklists() {
    let cases = cases("tasklists");
    assert!(cases.len() >= 15);
    let sandbox = Sandbox::new();
    for (file, expected) in cases {
        let path = corpus("tasklists").join(&file);
        deploy_both_ways(&sandbox, ["--tasklist", path.to_str().unwrap()], &expected);
    }
}

#[test]
fn malformed_configs() {
    let cases = cases("configs");
    assert!(cases.len() >= 8);
    let sandbox = Sandbox::new();
    for (file, expected) in cases {
        let path = corpus("configs").join(&file);
        deploy_both_ways(&sandbox, ["--config", path.to_str().unwrap()], &expected);
    }
}

#[test]
fn malformed_book_libraries() {
    let cases = cases("books");
    assert!(cases.len() >= 6);
    let sandbox = Sandbox::new();
    let scope = sandbox.scope();
    for (dir, expected) in cases {
        let path = corpus("books").join(&dir);
        let library = path.to_str().unwrap();
        for args in [
            vec!["check", "--library", library],
            vec![
                "run",
                "deploy",
                "--library",
                library,
                "--scope",
                scope.to_str().unwrap(),
                "--yes",
            ],
        ] {
            let out = sandbox.run(env!("CARGO_BIN_EXE_books"), &args);
            check(
                &format!("{dir}: books {}", args[0]),
                &out,
                &expected,
                &sandbox,
            );
        }
    }
}

#[test]
fn generated_hostile_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let task = r#"{"command": "execute_command", "remote_host": "fe001", "command_line": "true"}"#;
    let deep = write(
        "deep.json",
        format!("{}{}", "[".repeat(200_000), "]".repeat(200_000)).as_bytes(),
    );
    let huge_name = write(
        "huge.json",
        format!(
            r#"{{"name": "{}", "stages": [{{"name": "s", "concurrency": 0, "tasks": [{task}]}}]}}"#,
            "x".repeat(10 * 1024 * 1024)
        )
        .as_bytes(),
    );
    let bad_utf8 = write(
        "utf8.json",
        b"{\"stages\": [{\"name\": \"\xff\xfe\", \"concurrency\": 1, \"tasks\": []}]}",
    );
    let many_errors = write(
        "many.json",
        format!(
            r#"{{"stages": [{{"name": "s", "concurrency": 1, "tasks": [{task}, {}]}}]}}"#,
            vec![r#"{"command": "nope", "remote_host": "fe001"}"#; 10_000].join(",")
        )
        .as_bytes(),
    );
    let deep_yaml = write(
        "deep.yaml",
        format!(
            "platform: release\nx: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        )
        .as_bytes(),
    );
    let sandbox = Sandbox::new();
    for (path, flag, expected) in [
        (&deep, "--tasklist", "recursion limit exceeded"),
        (
            &huge_name,
            "--tasklist",
            "stages[0].concurrency: must be at least 1",
        ),
        (&bad_utf8, "--tasklist", "valid UTF-8"),
        (&many_errors, "--tasklist", "10000 problems found"),
        (&deep_yaml, "--config", "deep.yaml"),
    ] {
        deploy_both_ways(&sandbox, [flag, path.to_str().unwrap()], expected);
    }
}

// The same sandbox sees good input touch hosts: the checks above can fail.

#[test]
fn a_good_tasklist_touches_its_hosts_in_the_sandbox() {
    let sandbox = Sandbox::new();
    let write = |name: &str, task: &str| {
        let p = sandbox.dir.path().join(name);
        let text =
            format!(r#"{{"stages": [{{"name": "s", "concurrency": 1, "tasks": [{task}]}}]}}"#);
        std::fs::write(&p, text).unwrap();
        p
    };
    let remote = write(
        "remote.json",
        r#"{"command": "execute_command", "remote_host": "fe001", "command_line": "true"}"#,
    );
    let local = write(
        "local.json",
        r#"{"command": "execute_command", "command_line": "touch deployer-trace"}"#,
    );
    for (path, trace) in [
        (&remote, "1 connection(s) to a host"),
        (&local, "a command ran on this machine"),
    ] {
        let path = path.to_str().unwrap();
        let dry = sandbox.run(
            env!("CARGO_BIN_EXE_deploy"),
            &["--tasklist", path, "--dry-run"],
        );
        assert_eq!(dry.status.code(), Some(0), "{path}");
        assert!(
            sandbox.touched().is_empty(),
            "a dry run of {path} touched a host"
        );
        let out = sandbox.run(env!("CARGO_BIN_EXE_deploy"), &["--tasklist", path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(2), "{path}: {stderr}");
        assert_eq!(sandbox.touched(), [trace], "{path}: {stderr}");
    }
}

#[test]
fn a_good_config_touches_its_hosts_in_the_sandbox() {
    let sandbox = Sandbox::new();
    let config = sandbox.dir.path().join("deploy.yaml");
    let artifacts =
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join("artifacts");
    std::fs::write(
        &config,
        format!(
            "platform: release\nservice:\n  hello:\n    hosts: [fe001]\ndirectory: {}\ndeploy_to: /tmp/deployer-corpus\n",
            artifacts.display()
        ),
    )
    .unwrap();
    // The dry run contacts no host, even though a real plan reads each host's live version.
    let out = sandbox.run(
        env!("CARGO_BIN_EXE_deploy"),
        &["--config", config.to_str().unwrap(), "--dry-run"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(sandbox.touched().is_empty(), "{stderr}");
    // The real run does, and the sandbox sees it.
    let out = sandbox.run(
        env!("CARGO_BIN_EXE_deploy"),
        &["--config", config.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("fe001"), "{stderr}");
    assert_eq!(sandbox.touched(), ["1 connection(s) to a host"], "{stderr}");
}

#[test]
fn a_good_book_touches_this_machine_in_the_sandbox() {
    let sandbox = Sandbox::new();
    let library = sandbox.dir.path().join("library");
    std::fs::create_dir(&library).unwrap();
    std::fs::write(
        library.join("book.yaml"),
        "name: deploy\nversion: 1.0.0\nsteps:\n- name: trace\n  command: execute_command\n  args: {command_line: 'touch deployer-trace'}\n",
    )
    .unwrap();
    let out = sandbox.run(
        env!("CARGO_BIN_EXE_books"),
        &[
            "run",
            "deploy",
            "--library",
            library.to_str().unwrap(),
            "--scope",
            sandbox.scope().to_str().unwrap(),
            "--yes",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(
        sandbox.touched(),
        ["a command ran on this machine"],
        "{stderr}"
    );
}
