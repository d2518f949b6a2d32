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
//!
//! `expected.tsv` gives each case's file and the text its error must contain; a case with
//! several problems lists them all, separated by ` && `, and every one must be in the output of
//! a single run. Hostile values (a host name with a newline, a 10,000-byte user name) must be
//! shown escaped and cut: no output holds a raw control character or a line that breaks a
//! quoted value in two, a corpus case prints at most [`MAX_STDERR`] bytes, and no string of a
//! tasklist case that holds a control character or is 1,000 bytes or longer appears in the
//! output as it was.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The file the corpus's local commands create.
const TRACE: &str = "deployer-trace";

/// The most a corpus case may print on stderr: its problems with values cut, not the values.
const MAX_STDERR: usize = 8 * 1024;

fn corpus(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind)
}

/// The cases of `kind`: each file (or directory) with the texts its error must contain.
fn cases(kind: &str) -> Vec<(String, Vec<String>)> {
    std::fs::read_to_string(corpus(kind).join("expected.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (file, expected) = l.split_once('\t').expect("file<TAB>expected");
            let expected = expected.split(" && ").map(str::to_string).collect();
            (file.to_string(), expected)
        })
        .collect()
}

/// The strings of a JSON document, keys included, that must never be printed as they are:
/// those holding a control character (a newline, NUL, BEL, ESC…) and those 1,000 bytes or
/// longer. Empty when the text is not JSON.
fn hostile_strings(text: &str) -> Vec<String> {
    fn walk(value: &serde_json::Value, found: &mut Vec<String>) {
        let hostile = |s: &str| s.len() >= 1000 || s.chars().any(char::is_control);
        match value {
            serde_json::Value::String(s) if hostile(s) => found.push(s.clone()),
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    if hostile(k) {
                        found.push(k.clone());
                    }
                    walk(v, found);
                }
            }
            _ => {}
        }
    }
    let mut found = Vec::new();
    if let Ok(value) = serde_json::from_str(text) {
        walk(&value, &mut found);
    }
    found
}

/// What to assert about one case's output beyond its exit code and the sandbox.
struct Expect<'a> {
    /// Texts stderr must contain.
    texts: &'a [String],
    /// Values stderr must not contain as they are (see [`hostile_strings`]).
    hostile: &'a [String],
    /// The most stderr may hold, in bytes (`None` for generated inputs that are meant to
    /// produce a lot, such as 10,000 problems).
    max_len: Option<usize>,
}

impl<'a> Expect<'a> {
    fn corpus(texts: &'a [String], hostile: &'a [String]) -> Self {
        Expect {
            texts,
            hostile,
            max_len: Some(MAX_STDERR),
        }
    }
}

/// Whether `line` holds an odd number of double quotes that are not escaped: a quoted value
/// broken in two by a raw line break.
fn breaks_a_quoted_value(line: &str) -> bool {
    let mut quotes = 0;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' => quotes += 1,
            _ => {}
        }
    }
    quotes % 2 == 1
}

/// Hostile values are shown escaped and cut: no raw control character but line ends, every
/// line closes the quotes it opens, nothing of `expect.hostile` as it was, and at most
/// `expect.max_len` bytes.
fn assert_shown_escaped(what: &str, stderr: &str, expect: &Expect) {
    if let Some(max) = expect.max_len {
        assert!(
            stderr.len() <= max,
            "{what}: {} bytes on stderr, more than {max}:\n{}",
            stderr.len(),
            stderr.chars().take(2000).collect::<String>()
        );
    }
    for line in stderr.lines() {
        if let Some(c) = line.chars().find(|c| c.is_control()) {
            panic!("{what}: a raw control character {c:?} on stderr: {line:?}");
        }
        assert!(
            !breaks_a_quoted_value(line),
            "{what}: a quoted value is broken across lines (a raw newline?):\n{stderr}"
        );
    }
    for value in expect.hostile {
        assert!(
            !stderr.contains(value.as_str()),
            "{what}: the value {:?} ({} bytes) is on stderr as it is",
            value.chars().take(80).collect::<String>(),
            value.len()
        );
    }
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

fn check(what: &str, out: &Output, expect: &Expect, sandbox: &Sandbox) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: exit code\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    for expected in expect.texts {
        assert!(
            stderr.contains(expected.as_str()),
            "{what}: expected {expected:?} in\n{stderr}"
        );
    }
    assert_shown_escaped(what, &stderr, expect);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Syntax ok"));
    let touched = sandbox.touched();
    assert!(touched.is_empty(), "{what} touched a host: {touched:?}");
}

/// `deploy` with `input` (`--tasklist FILE` or `--config FILE`), as a dry run and for real.
fn deploy_both_ways(sandbox: &Sandbox, input: [&str; 2], expect: &Expect) {
    for extra in [&["--dry-run"][..], &[]] {
        let mut args = input.to_vec();
        args.extend_from_slice(extra);
        let out = sandbox.run(env!("CARGO_BIN_EXE_deploy"), &args);
        check(&args.join(" "), &out, expect, sandbox);
    }
}

#[test]
fn malformed_tasklists() {
    let cases = cases("tasklists");
    assert!(cases.len() >= 60);
    let sandbox = Sandbox::new();
    for (file, expected) in cases {
        let path = corpus("tasklists").join(&file);
        let hostile = hostile_strings(&std::fs::read_to_string(&path).unwrap_or_default());
        deploy_both_ways(
            &sandbox,
            ["--tasklist", path.to_str().unwrap()],
            &Expect::corpus(&expected, &hostile),
        );
    }
}

#[test]
fn malformed_configs() {
    let cases = cases("configs");
    assert!(cases.len() >= 25);
    let sandbox = Sandbox::new();
    for (file, expected) in cases {
        let path = corpus("configs").join(&file);
        deploy_both_ways(
            &sandbox,
            ["--config", path.to_str().unwrap()],
            &Expect::corpus(&expected, &[]),
        );
    }
}

#[test]
fn malformed_book_libraries() {
    let cases = cases("books");
    assert!(cases.len() >= 20);
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
                &Expect::corpus(&expected, &[]),
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
    // Each prints a few lines, except the 10,000 problems, one line each.
    for (path, flag, expected, max_len) in [
        (
            &deep,
            "--tasklist",
            "recursion limit exceeded",
            Some(MAX_STDERR),
        ),
        (
            &huge_name,
            "--tasklist",
            "stages[0].concurrency: must be at least 1",
            Some(MAX_STDERR),
        ),
        (&bad_utf8, "--tasklist", "valid UTF-8", Some(MAX_STDERR)),
        (&many_errors, "--tasklist", "10000 problems found", None),
        (&deep_yaml, "--config", "deep.yaml", Some(MAX_STDERR)),
    ] {
        let texts = [expected.to_string()];
        let expect = Expect {
            texts: &texts,
            hostile: &[],
            max_len,
        };
        deploy_both_ways(&sandbox, [flag, path.to_str().unwrap()], &expect);
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
        // Three: the sandbox's listener hangs up at once, which is retried (SshOptions's
        // default of 3 connect attempts).
        (&remote, "3 connection(s) to a host"),
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
    // The default 3 connect attempts, each cut at once by the sandbox's listener.
    assert_eq!(sandbox.touched(), ["3 connection(s) to a host"], "{stderr}");
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

// Bugs found while extending the corpus (2026-12-07), one test each, all fixed: each failed
// before its fix.

/// Writes `files` (name, text) in a new directory of the sandbox and returns their paths.
fn write_inputs(sandbox: &Sandbox, dir: &str, files: &[(&str, String)]) -> Vec<PathBuf> {
    let dir = sandbox.dir.path().join(dir);
    std::fs::create_dir_all(&dir).unwrap();
    files
        .iter()
        .map(|(name, text)| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect()
}

#[test]
fn bug_unknown_names_are_printed_as_they_are() {
    let sandbox = Sandbox::new();
    let stage = |tasks: &str| {
        format!(r#"{{"stages": [{{"name": "s", "concurrency": 1, "tasks": [{tasks}]}}]}}"#)
    };
    let cases = [
        (
            stage(
                r#"{"command": "removefile", "remote_host": "fe001", "source": "/x", "sou\nrce": 1}"#,
            ),
            r#"unknown argument "sou\nrce""#,
        ),
        (
            stage(r#"{"command": "execute\ncommand", "remote_host": "fe001"}"#),
            r#"unknown command "execute\ncommand""#,
        ),
        (
            r#"{"stages": [{"name": "s", "concurrency": 1, "conc\nurrency": 2, "tasks": []}]}"#
                .to_string(),
            r#"unknown stage key "conc\nurrency""#,
        ),
        (
            r#"{"stages": [], "sta\rges": 1}"#.to_string(),
            r#"unknown tasklist key "sta\rges""#,
        ),
        // A backtick ends the name where serde's message is read back: today this prints
        // `….so: unknown argument "so" (expected one of rm -rf, , expected ,  or , )`.
        (
            stage(
                r#"{"command": "removefile", "remote_host": "fe001", "source": "/x", "so`urce, expected `rm -rf`": 1}"#,
            ),
            r#"unknown argument "so`urce, expected `rm -rf`""#,
        ),
        (
            stage(&format!(
                r#"{{"command": "{}", "remote_host": "fe001"}}"#,
                "a".repeat(10_000)
            )),
            "(10000 bytes)",
        ),
    ];
    for (i, (text, expected)) in cases.into_iter().enumerate() {
        let hostile = hostile_strings(&text);
        let path = write_inputs(&sandbox, "tasklists", &[(&format!("{i}.json"), text)]);
        let texts = [expected.to_string()];
        deploy_both_ways(
            &sandbox,
            ["--tasklist", path[0].to_str().unwrap()],
            &Expect::corpus(&texts, &hostile),
        );
    }
    let config = write_inputs(
        &sandbox,
        "configs",
        &[("platform.yaml", "platform: \"rel\\nase\"\n".to_string())],
    );
    let texts = [r#"unknown platform "rel\nase""#.to_string()];
    deploy_both_ways(
        &sandbox,
        ["--config", config[0].to_str().unwrap()],
        &Expect::corpus(&texts, &["rel\nase".to_string()]),
    );
}

#[test]
fn bug_config_hosts_are_contacted_before_they_are_checked() {
    let sandbox = Sandbox::new();
    let artifacts =
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join("artifacts");
    let config = write_inputs(
        &sandbox,
        "configs",
        &[(
            "hosts.yaml",
            format!(
                "platform: release\nservice:\n  hello:\n    hosts: [\"-oProxyCommand=touch deployer-trace\", \"fe\\n001\"]\ndirectory: {}\ndeploy_to: /tmp/deployer-corpus\n",
                artifacts.display()
            ),
        )],
    );
    let texts = [
        r#""-oProxyCommand=touch deployer-trace" starts with '-'"#.to_string(),
        r#""fe\n001" contains a newline"#.to_string(),
    ];
    deploy_both_ways(
        &sandbox,
        ["--config", config[0].to_str().unwrap()],
        &Expect::corpus(&texts, &["fe\n001".to_string()]),
    );
}

#[test]
fn bug_books_print_values_as_they_are() {
    let sandbox = Sandbox::new();
    let step =
        "- name: s\n  command: execute_command\n  args: {command_line: 'touch deployer-trace'}\n";
    for (i, (book, expected, hostile)) in [
        (
            format!("name: deploy\nversion: \"1.0.0\\nrm -rf\"\nsteps:\n{step}"),
            r#"version: "1.0.0\nrm -rf" is not a semantic version"#,
            "1.0.0\nrm -rf".to_string(),
        ),
        (
            format!("name: deploy\nversion: 1.0.0\nsteps:\n{step}- name: t\n  book: pause\n  version: \"^1\\n2\"\n"),
            r#"steps[1].version: "^1\n2" is not a version requirement"#,
            "^1\n2".to_string(),
        ),
        (
            "name: deploy\nversion: 1.0.0\nsteps:\n- name: s\n  command: \"execute\\ncommand\"\n"
                .to_string(),
            r#"unknown command "execute\ncommand""#,
            "execute\ncommand".to_string(),
        ),
        (
            format!(
                "name: deploy\nversion: \"1.0.{}\"\nsteps:\n{step}",
                "1".repeat(10_000)
            ),
            "is not a semantic version",
            format!("1.0.{}", "1".repeat(10_000)),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let files = write_inputs(&sandbox, &format!("library{i}"), &[("book.yaml", book)]);
        let library = files[0].parent().unwrap().to_str().unwrap();
        let out = sandbox.run(
            env!("CARGO_BIN_EXE_books"),
            &["check", "--library", library],
        );
        let texts = [expected.to_string()];
        check(
            &format!("library{i}: books check"),
            &out,
            &Expect::corpus(&texts, &[hostile]),
            &sandbox,
        );
    }
}

#[test]
fn bug_books_run_exits_1_for_a_step_that_does_not_validate() {
    let sandbox = Sandbox::new();
    for (i, (step, expected)) in [
        (
            "  command: createdirectory\n  args: {source: \"/tmp/a\\nb\"}\n",
            r#"stages[0].tasks[0].source: "/tmp/a\nb" contains a newline"#,
        ),
        (
            "  command: execute_command\n  args: {command_line: 'touch deployer-trace'}\n  hosts: '[\"-oProxyCommand=touch deployer-trace\"]'\n",
            r#"stages[0].tasks[0].remote_host: "-oProxyCommand=touch deployer-trace" starts with '-'"#,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let files = write_inputs(
            &sandbox,
            &format!("library{i}"),
            &[(
                "book.yaml",
                format!("name: deploy\nversion: 1.0.0\nsteps:\n- name: s\n{step}"),
            )],
        );
        let library = files[0].parent().unwrap().to_str().unwrap();
        let scope = sandbox.scope();
        let out = sandbox.run(
            env!("CARGO_BIN_EXE_books"),
            &[
                "run",
                "deploy",
                "--library",
                library,
                "--scope",
                scope.to_str().unwrap(),
                "--yes",
            ],
        );
        let texts = [expected.to_string()];
        check(
            &format!("library{i}: books run"),
            &out,
            &Expect::corpus(&texts, &[]),
            &sandbox,
        );
    }
}
