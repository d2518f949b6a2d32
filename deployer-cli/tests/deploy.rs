//! The `deploy` program, run as a user runs it: every flag, exit codes, messages, files on disk.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn deploy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deploy"))
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A temp dir with a release config deploying the bundled artifact to `<dir>/srv`.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(extra_service: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let artifacts = dir.path().join("artifacts");
        std::fs::create_dir(&artifacts).unwrap();
        std::fs::copy(
            Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
                .join("artifacts/hello-1.0.0.tar.gz"),
            artifacts.join("hello-1.0.0.tar.gz"),
        )
        .unwrap();
        let srv = dir.path().join("srv");
        let config = format!(
            "platform: release\n\
             directory: artifacts\n\
             deploy_to: {srv}\n\
             keep_releases: 1\n\
             hostgroup:\n  here: [local]\n\
             service:\n  hello:\n    hosts: [here]\n    shared_dirs: [log]\n\
             \x20   start: {srv}/hello/current/bin/hello\n\
             \x20   check: test -x {srv}/hello/current/bin/hello\n{extra_service}",
            srv = srv.display()
        );
        std::fs::write(dir.path().join("deploy.yaml"), config).unwrap();
        Setup { dir }
    }

    fn config(&self) -> String {
        self.dir.path().join("deploy.yaml").display().to_string()
    }

    fn srv(&self) -> PathBuf {
        self.dir.path().join("srv/hello")
    }

    /// Builds `hello-<version>.tar.gz` in the artifacts directory.
    fn artifact(&self, version: &str) -> PathBuf {
        let content = self.dir.path().join(format!("build-{version}"));
        std::fs::create_dir_all(content.join("bin")).unwrap();
        std::fs::write(content.join("VERSION"), format!("{version}\n")).unwrap();
        std::fs::write(
            content.join("bin/hello"),
            "#!/bin/sh\necho \"hello $(cat \"$(dirname \"$0\")/../VERSION\")\"\n",
        )
        .unwrap();
        Command::new("chmod")
            .arg("+x")
            .arg(content.join("bin/hello"))
            .status()
            .unwrap();
        let out = self
            .dir
            .path()
            .join(format!("artifacts/hello-{version}.tar.gz"));
        let status = Command::new("tar")
            .arg("-czf")
            .arg(&out)
            .arg("-C")
            .arg(&content)
            .args(["VERSION", "bin"])
            .status()
            .unwrap();
        assert!(status.success());
        out
    }
}

#[test]
fn deploys_the_bundled_artifact_locally_and_skips_it_the_second_time() {
    let s = Setup::new("");
    let out = deploy(&["--config", &s.config(), "-v"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let srv = s.srv();
    assert_eq!(
        std::fs::read_link(srv.join("current")).unwrap(),
        PathBuf::from("releases/1.0.0")
    );
    assert_eq!(
        std::fs::read_to_string(srv.join("current/VERSION")).unwrap(),
        "1.0.0\n"
    );
    assert!(srv.join("shared/log").is_dir());
    assert_eq!(
        std::fs::read_link(srv.join("releases/1.0.0/log")).unwrap(),
        srv.join("shared/log")
    );
    assert!(
        !srv.join("releases/hello-1.0.0.tar.gz").exists(),
        "the upload is removed"
    );
    assert!(!srv.join(".deploy.lock").exists(), "the lock is released");
    assert!(
        stderr.contains("[local] [hello] out: hello 1.0.0"),
        "-v shows output\n{stderr}"
    );
    assert!(stderr.contains("HOST   OK  FAILED  SKIPPED"), "{stderr}");
    assert!(stderr.contains("succeeded in"), "{stderr}");

    let out = deploy(&["--config", &s.config()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("already on 1.0.0; skipping"), "{stderr}");
    assert!(
        stderr.contains("No services require deployment"),
        "{stderr}"
    );
    // A run with nothing to do says so, not "0 ok, 0 failed".
    assert!(
        stderr.contains("run \"Deploy hello-1.0.0\": nothing to do (the plan has no task)"),
        "{stderr}"
    );
    assert!(!stderr.contains("0 ok, 0 failed"), "{stderr}");
    let log = std::fs::read_to_string(srv.join("releases.log")).unwrap();
    assert_eq!(log.lines().count(), 1, "{log}");

    let out = deploy(&["--config", &s.config(), "--redeploy", "-v"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("Executing release_create"),
        "--redeploy deploys again\n{stderr}"
    );
    assert!(stderr.contains("out: hello 1.0.0"), "{stderr}");
}

#[test]
fn a_new_version_is_switched_to_and_old_releases_are_cleaned_up() {
    let s = Setup::new("");
    assert_eq!(deploy(&["--config", &s.config()]).status.code(), Some(0));
    let artifact = s.artifact("1.1.0");
    let out = deploy(&[
        "--config",
        &s.config(),
        "--component",
        artifact.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let srv = s.srv();
    assert_eq!(
        std::fs::read_link(srv.join("current")).unwrap(),
        PathBuf::from("releases/1.1.0")
    );
    assert!(
        !srv.join("releases/1.0.0").exists(),
        "keep_releases: 1 removed the old one"
    );
    // A name found in the artifact directory works too.
    let out = deploy(&[
        "--config",
        &s.config(),
        "--component",
        "hello-1.0.0.tar.gz",
        "--redeploy",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_link(srv.join("current")).unwrap(),
        PathBuf::from("releases/1.0.0")
    );
}

#[test]
fn dry_run_validates_and_touches_nothing() {
    let s = Setup::new("");
    let out = deploy(&["--config", &s.config(), "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "Syntax ok\n");
    assert!(!s.srv().exists(), "a dry run touches no host");
}

#[test]
fn dump_save_and_tasklist_round_trip() {
    let s = Setup::new("");
    let saved = s.dir.path().join("plan.json");
    let out = deploy(&[
        "--config",
        &s.config(),
        "--dump",
        "--save",
        saved.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let dumped = text(&out.stdout);
    assert_eq!(std::fs::read_to_string(&saved).unwrap(), dumped);
    let tasklist = deployer_core::Tasklist::from_json_str(&dumped).unwrap();
    let stages: Vec<&str> = tasklist.stages.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        stages,
        [
            "Lock hosts",
            "Prepare releases",
            "Activate hello 1.0.0",
            "Clean up old releases",
            "Unlock hello"
        ]
    );
    assert!(!s.srv().exists());

    let out = deploy(&["--config", &s.config(), "--dump", "--format", "dot"]);
    let dot = text(&out.stdout);
    assert!(dot.starts_with("digraph tasklist {"), "{dot}");
    assert!(dot.contains("subgraph cluster_1"), "{dot}");
    assert!(dot.contains("release_activate\\nlocal [hello]"), "{dot}");

    let out = deploy(&["--tasklist", saved.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(s.srv().join("current/VERSION").exists());
}

#[test]
fn json_output_is_one_event_per_line() {
    let s = Setup::new("");
    let out = deploy(&["--config", &s.config(), "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let events: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    assert_eq!(events.first().unwrap()["event"], "run_started");
    assert_eq!(events.last().unwrap()["event"], "run_finished");
    assert_eq!(events.last().unwrap()["outcome"], "succeeded");
    assert!(events.iter().any(|e| e["event"] == "task_finished"
        && e["command"] == "release_activate"
        && e["host"] == "local"
        && e["tag"] == "hello"));
}

#[test]
fn parallel_caps_tasks_in_flight() {
    let dir = tempfile::tempdir().unwrap();
    let tasks: Vec<String> = (0..6)
        .map(|i| {
            format!(
                r#"{{"command": "execute_command", "command_line": "sleep 0.2", "tag": "t{i}"}}"#
            )
        })
        .collect();
    let path = dir.path().join("t.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"name": "p", "stages": [{{"name": "s", "concurrency": 6, "tasks": [{}]}}]}}"#,
            tasks.join(",")
        ),
    )
    .unwrap();
    let out = deploy(&[
        "--tasklist",
        path.to_str().unwrap(),
        "--parallel",
        "2",
        "--output",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let (mut now, mut max) = (0, 0);
    for line in text(&out.stdout).lines() {
        let e: serde_json::Value = serde_json::from_str(line).unwrap();
        match e["event"].as_str() {
            Some("task_started") => {
                now += 1;
                max = max.max(now);
            }
            Some("task_finished") => now -= 1,
            _ => {}
        }
    }
    assert_eq!(max, 2);
}

#[test]
fn a_failing_deploy_exits_1_with_the_failure_in_the_summary() {
    let s = Setup::new("");
    let config = std::fs::read_to_string(s.config()).unwrap().replace(
        "    start: ",
        "    start: echo 'cannot bind port 8080' >&2; exit 3 #",
    );
    std::fs::write(s.config(), config).unwrap();
    let out = deploy(&["--config", &s.config()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("failures:"), "{stderr}");
    assert!(
        stderr.contains("execute_command on local [hello]"),
        "{stderr}"
    );
    assert!(stderr.contains("(exit status 3)"), "{stderr}");
    assert!(stderr.contains("stderr: cannot bind port 8080"), "{stderr}");
    // The lock is released all the same (a finally stage), and the recap says so.
    assert!(!s.srv().join(".deploy.lock").exists(), "{stderr}");
    assert!(stderr.contains(" failed in "), "{stderr}");
}

#[test]
fn bad_input_exits_2_with_where_and_what() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let cases: Vec<(Vec<String>, String)> = vec![
        (
            vec!["--config".into(), write("bad.yaml", "platform: release\nservice:\n  web:\n    port: http\n")],
            format!("{}:4:11:", dir.path().join("bad.yaml").display()),
        ),
        (
            vec!["--config".into(), write("unknown.yaml", "platform: relase\n")],
            "unknown platform \"relase\" (known: release); did you mean \"release\"?".into(),
        ),
        (
            vec!["--config".into(), write("noart.yaml", "platform: release\ndeploy_to: /tmp/x\nservice:\n  web:\n    hosts: [local]\n")],
            "nothing to deploy: give --component FILE or --directory DIR".into(),
        ),
        (
            vec!["--config".into(), write("missing.yaml", "platform: release\ndirectory: /nonexistent-dir\nservice: {web: {hosts: [local]}}\n")],
            "cannot read artifact directory /nonexistent-dir".into(),
        ),
        (
            vec!["--tasklist".into(), write("t.json", r#"{"stages": [{"name": "s", "concurrency": 1, "tasks": [{"command": "uplaod", "source": "a", "destination": "b"}]}]}"#)],
            "stages[0].tasks[0].command: unknown command \"uplaod\" (expected a registered command); did you mean \"upload\"?".into(),
        ),
        (
            vec!["--tasklist".into(), write("trunc.json", r#"{"stages": [{"name": "#)],
            "invalid JSON".into(),
        ),
        (
            vec!["--tasklist".into(), dir.path().join("absent.json").display().to_string()],
            "absent.json".into(),
        ),
        (vec!["--parallel".into(), "0".into(), "--tasklist".into(), "x".into()], "--parallel".into()),
    ];
    for (args, expected) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = deploy(&args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&expected),
            "{args:?}: expected {expected:?} in\n{stderr}"
        );
    }
}

#[test]
fn rolling_limits_and_host_filters_shape_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("a")).unwrap();
    std::fs::write(dir.path().join("a/web-2.0.tgz"), b"x").unwrap();
    let config = dir.path().join("c.yaml");
    std::fs::write(
        &config,
        "platform: release\ndirectory: a\ndeploy_to: /srv\nuser: deploy\n\
         hostgroup:\n  east: [fe1, fe2, fe3]\n  west: [fe4, fe5]\n\
         service:\n  web:\n    hosts: [east, west]\n    min_nodes_up: 2\n",
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // --redeploy: no need to ask the hosts which version they run.
    let out = deploy(&["--config", config, "--redeploy", "--dump"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = deployer_core::Tasklist::from_json_str(&text(&out.stdout)).unwrap();
    let activate = &t.stages[2];
    assert!(activate.name.starts_with("Activate"), "{}", activate.name);
    assert_eq!(activate.min_hosts_up, Some(2), "5 hosts, 2 must stay up");
    assert_eq!(activate.concurrency, 5, "min_hosts_up is the limit");
    assert_eq!(activate.concurrency_per_host, Some(1));
    assert_eq!(t.hosts(), ["fe1", "fe2", "fe3", "fe4", "fe5"]);
    assert_eq!(
        t.stages[0].tasks[0].tasks()[0].remote_user.as_deref(),
        Some("deploy")
    );

    let out = deploy(&[
        "--config",
        config,
        "--redeploy",
        "--dump",
        "--hosts",
        "fe2,fe4",
    ]);
    let t = deployer_core::Tasklist::from_json_str(&text(&out.stdout)).unwrap();
    assert_eq!(t.hosts(), ["fe2", "fe4"]);
    assert_eq!(
        (t.stages[2].concurrency, t.stages[2].min_hosts_up),
        (2, None),
        "3 may be down, 2 are deployed: both at once, the other 3 serve"
    );

    let out = deploy(&[
        "--config",
        config,
        "--redeploy",
        "--dump",
        "--hostgroups",
        "west",
    ]);
    let t = deployer_core::Tasklist::from_json_str(&text(&out.stdout)).unwrap();
    assert_eq!(t.hosts(), ["fe4", "fe5"]);

    let out = deploy(&[
        "--config",
        config,
        "--redeploy",
        "--dump",
        "--hostgroups",
        "wset",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("unknown hostgroup \"wset\"; did you mean \"west\"?"));

    let out = deploy(&[
        "--config",
        config,
        "--redeploy",
        "--dump",
        "--set",
        "service.web.min_nodes_up=5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("min_nodes_up is 5 but the service has only 5 hosts"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn graphite_markers_are_sent_at_start_and_end() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let s = Setup::new("");
    let mut config = std::fs::read_to_string(s.config()).unwrap();
    config.push_str(&format!(
        "graphite: {{host: 127.0.0.1, port: {port}, prefix: deploys}}\n"
    ));
    std::fs::write(s.config(), config).unwrap();
    let receiver = std::thread::spawn(move || {
        let mut lines = Vec::new();
        for _ in 0..2 {
            let (conn, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(conn).read_line(&mut line).unwrap();
            lines.push(line);
        }
        lines
    });
    let out = deploy(&["--config", &s.config()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let lines = receiver.join().unwrap();
    assert!(lines[0].starts_with("deploys.hello.start 1 "), "{lines:?}");
    assert!(lines[1].starts_with("deploys.hello.end 1 "), "{lines:?}");
}

#[test]
fn a_terminal_gets_progress_bars() {
    let s = Setup::new("");
    let log = s.dir.path().join("typescript");
    // `script` gives the program a pseudo-terminal, as a person's shell would.
    let status = Command::new("script")
        .arg("-qec")
        .arg(format!(
            "{} --config {}",
            env!("CARGO_BIN_EXE_deploy"),
            s.config()
        ))
        .arg(&log)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
        .env("TERM", "xterm")
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .stdout(std::process::Stdio::null())
        .status();
    let Ok(status) = status else {
        eprintln!("`script` is not available; skipping the terminal check");
        return;
    };
    assert!(status.success());
    let screen = std::fs::read_to_string(&log).unwrap();
    assert!(screen.contains("Prepare releases"), "{screen}");
    assert!(screen.contains("tasks"), "{screen}");
    assert!(screen.contains("HOST   OK  FAILED  SKIPPED"), "{screen}");
    assert!(
        !screen.contains("[INFO    ]"),
        "no log lines on a terminal\n{screen}"
    );
}

#[test]
fn directory_flag_and_debug_logs() {
    let s = Setup::new("");
    let other = s.dir.path().join("elsewhere");
    std::fs::create_dir(&other).unwrap();
    std::fs::rename(
        s.dir.path().join("artifacts/hello-1.0.0.tar.gz"),
        other.join("hello-1.0.0.tar.gz"),
    )
    .unwrap();
    let out = deploy(&[
        "--config",
        &s.config(),
        "--directory",
        other.to_str().unwrap(),
        "-d",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(s.srv().join("current/VERSION").exists());
    assert!(
        stderr.contains("[DEBUG   ]"),
        "-d logs at debug level\n{stderr}"
    );
}

fn run_until_started(
    args: &[&str],
) -> (
    std::process::Child,
    std::io::Lines<BufReader<std::process::ChildStdout>>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().contains("\"event\":\"task_started\"") {
            break;
        }
    }
    (child, lines)
}

fn sleepy_tasklist(dir: &Path, secs: &str) -> String {
    let path = dir.join("sleepy.json");
    let task = format!(r#"{{"command": "execute_command", "command_line": "sleep {secs}"}}"#);
    std::fs::write(
        &path,
        format!(
            r#"{{"name": "sleepy", "stages": [{{"name": "s", "concurrency": 1, "tasks": [{task}, {task}, {task}]}}, {{"name": "later", "concurrency": 1, "tasks": [{task}]}}]}}"#
        ),
    )
    .unwrap();
    path.display().to_string()
}

fn interrupt(child: &std::process::Child) {
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn ctrl_c_lets_the_running_task_finish_and_starts_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let tasklist = sleepy_tasklist(dir.path(), "0.5");
    let (child, lines) = run_until_started(&["--tasklist", &tasklist, "--output", "json"]);
    interrupt(&child);
    let events: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    let finished: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "task_finished")
        .collect();
    assert_eq!(finished.len(), 1, "only the running task ran: {events:?}");
    assert_eq!(finished[0]["outcome"]["status"], "succeeded");
    assert_eq!(
        events
            .iter()
            .filter(|e| e["event"] == "task_not_run")
            .count(),
        3,
        "the two queued tasks and the later stage's"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "stage_skipped" && e["name"] == "later")
    );
    assert_eq!(events.last().unwrap()["outcome"], "cancelled");
    assert!(text(&out.stderr).contains("cancelling: no new tasks start"));
}

#[test]
fn a_second_ctrl_c_stops_running_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let tasklist = sleepy_tasklist(dir.path(), "600");
    let started = std::time::Instant::now();
    let (mut child, lines) = run_until_started(&["--tasklist", &tasklist, "--output", "json"]);
    interrupt(&child);
    // Wait until the first signal was handled, then send the second.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in stderr.by_ref() {
        if line.unwrap().contains("cancelling: no new tasks start") {
            break;
        }
    }
    interrupt(&child);
    let events: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "the sleep was stopped"
    );
    let finished: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["event"] == "task_finished")
        .collect();
    assert_eq!(finished.len(), 1);
    assert_eq!(finished[0]["outcome"]["status"], "cancelled");
    let rest: Vec<String> = stderr.map(|l| l.unwrap()).collect();
    assert!(
        rest.iter().any(|l| l.contains("stopping running tasks")),
        "{rest:?}"
    );
}

/// `--color always` paints the recap's last line; `never` (and NO_COLOR off a terminal) does
/// not. `--help` ends with the exit statuses.
#[test]
fn the_recap_is_coloured_when_asked_and_help_lists_exit_statuses() {
    let s = Setup::new("");
    let out = deploy(&["--config", &s.config(), "--color", "always"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("\u{1b}[1m\u{1b}[32mrun \"Deploy hello-1.0.0\" succeeded"),
        "{stderr}"
    );
    let out = deploy(&["--config", &s.config(), "--color", "never", "--redeploy"]);
    assert!(
        !text(&out.stderr).contains('\u{1b}'),
        "{}",
        text(&out.stderr)
    );
    let help = text(&deploy(&["--help"]).stdout);
    assert!(
        help.contains("Exit status: 0 success (also when there was nothing to do"),
        "{help}"
    );
    for code in [
        "1 a task failed",
        "2 bad input",
        "3 `deploy plan`",
        "4 completed, but hosts",
        "130 cancelled",
    ] {
        assert!(help.contains(code), "{code}: {help}");
    }
}

/// `deploy plan` asks the hosts and changes nothing: what would be deployed (exit 3), then,
/// after the deploy, nothing (exit 0); a held lock is named.
#[test]
fn plan_reads_live_versions_and_says_whether_anything_would_change() {
    let s = Setup::new("");
    let out = deploy(&["--config", &s.config(), "plan"]);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(
        stdout.contains("local  hello         deploy nothing → 1.0.0"),
        "{stdout}"
    );
    assert!(!s.srv().exists(), "a plan changes nothing");

    let out = deploy(&["--config", &s.config()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let out = deploy(&["--config", &s.config(), "plan", "--output", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let hosts: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(hosts[0]["action"], "skip");
    assert_eq!(hosts[0]["live"], "1.0.0");

    std::fs::create_dir_all(s.srv().join(".deploy.lock")).unwrap();
    std::fs::write(s.srv().join(".deploy.lock/holder"), "run 0190 by alice\n").unwrap();
    let out = deploy(&["--config", &s.config(), "plan"]);
    assert!(
        text(&out.stdout).contains("locked by run 0190 by alice"),
        "{}",
        text(&out.stdout)
    );
}

/// On a terminal (a pseudo-terminal from `script`): progress bars per stage, in colour, and a
/// coloured recap; with NO_COLOR the recap is plain.
#[test]
fn a_terminal_gets_progress_bars_and_colour_unless_no_color() {
    let s = Setup::new("");
    let run = |no_color: bool| {
        let line = format!(
            "{} --store sqlite::memory: --config {} --redeploy",
            env!("CARGO_BIN_EXE_deploy"),
            s.config()
        );
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &line, "/dev/null"])
            .env_remove("DEPLOYER_STORE")
            .env("TERM", "xterm")
            .env("COLUMNS", "120");
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        let out = cmd.output().expect("script (util-linux) runs");
        (out.status.code(), text(&out.stdout))
    };
    let (code, screen) = run(false);
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("Prepare releases"), "{screen}");
    assert!(screen.contains("5/5 tasks"), "{screen}");
    assert!(
        screen.contains("\u{1b}[32m"),
        "colour on a terminal: {screen}"
    );
    assert!(
        screen.contains("\u{1b}[1m\u{1b}[32mrun \"Deploy hello-1.0.0\" succeeded"),
        "{screen}"
    );
    let (code, screen) = run(true);
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("run \"Deploy hello-1.0.0\" succeeded"),
        "{screen}"
    );
    assert!(!screen.contains("\u{1b}[32m"), "NO_COLOR: {screen}");
    assert!(!screen.contains("\u{1b}[1m\u{1b}["), "NO_COLOR: {screen}");
}

/// A first Ctrl-C during the activation: the running chain finishes, nothing new starts, and
/// the finally stage still releases the lock (exit 130). Before, a cancelled run always left
/// `.deploy.lock` behind.
#[test]
fn a_cancelled_deploy_releases_its_lock() {
    let s = Setup::new("");
    let gate = s.dir.path().join("gate");
    let config = std::fs::read_to_string(s.config()).unwrap().replace(
        "    start: ",
        &format!(
            "    start: while [ ! -f {} ]; do sleep 0.05; done; ",
            gate.display()
        ),
    );
    std::fs::write(s.config(), config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .args(["--config", &s.config(), "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains(r#""event":"task_started""#)
            && line.contains(r#""command":"execute_command""#)
        {
            break;
        }
    }
    assert!(
        s.srv().join(".deploy.lock").exists(),
        "locked while it runs"
    );
    interrupt(&child);
    // Let the first signal be handled, then let the start command end.
    std::thread::sleep(std::time::Duration::from_millis(300));
    std::fs::write(&gate, "").unwrap();
    let events: Vec<serde_json::Value> = lines
        .map(|l| serde_json::from_str(&l.unwrap()).unwrap())
        .collect();
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        events.iter().any(|e| e["event"] == "task_finished"
            && e["command"] == "release_unlock"
            && e["outcome"]["status"] == "succeeded"),
        "{stderr}"
    );
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "stage_skipped" && e["name"] == "Clean up old releases"),
        "{stderr}"
    );
    assert!(!s.srv().join(".deploy.lock").exists(), "{stderr}");
    assert!(
        stderr.contains("run \"Deploy hello-1.0.0\" cancelled in "),
        "{stderr}"
    );
}

/// `deploy rollback` on a terminal asks first: anything but yes changes nothing (exit 1); yes
/// rolls back. Run through a pseudo-terminal (script), the answer typed on its input.
#[test]
fn rollback_on_a_terminal_asks_before_it_changes_anything() {
    let s = Setup::new("");
    let config = std::fs::read_to_string(s.config())
        .unwrap()
        .replace("keep_releases: 1", "keep_releases: 3");
    std::fs::write(s.config(), config).unwrap();
    assert_eq!(deploy(&["--config", &s.config()]).status.code(), Some(0));
    let artifact = s.artifact("1.1.0");
    let out = deploy(&[
        "--config",
        &s.config(),
        "--component",
        artifact.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let current = || std::fs::read_link(s.srv().join("current")).unwrap();
    assert_eq!(current(), PathBuf::from("releases/1.1.0"));
    let rollback = |answer: &str| {
        let line = format!(
            "{} --store sqlite::memory: --config {} --color never rollback",
            env!("CARGO_BIN_EXE_deploy"),
            s.config()
        );
        let mut child = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .env_remove("DEPLOYER_STORE")
            .env("TERM", "xterm")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("script (util-linux) runs");
        let mut stdin = child.stdin.take().unwrap();
        std::io::Write::write_all(&mut stdin, answer.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        drop(stdin);
        (out.status.code(), text(&out.stdout))
    };
    let (code, screen) = rollback("no\n");
    assert!(
        screen.contains("Roll back hello on 1 host to 1.0.0? [y/N]"),
        "{screen}"
    );
    assert!(screen.contains("nothing rolled back"), "{screen}");
    assert_eq!(code, Some(1), "{screen}");
    assert_eq!(current(), PathBuf::from("releases/1.1.0"), "{screen}");
    let (code, screen) = rollback("y\n");
    assert_eq!(code, Some(0), "{screen}");
    assert_eq!(current(), PathBuf::from("releases/1.0.0"), "{screen}");
    assert!(!s.srv().join(".deploy.lock").exists(), "{screen}");
}
