//! Recorded runs through the `deploy` program: list, show, purge, resume — including a
//! controller killed in the middle of a stage over real SSH.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use deployer_remote::testing::TestSshd;

fn deploy_in(store: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_deploy"))
        .arg("--store")
        .arg(store)
        .args(args)
        .output()
        .expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The run id `deploy` prints first on stderr.
fn run_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .unwrap_or_else(|| panic!("no run id in\n{stderr}"))
        .trim()
        .to_string()
}

fn write_tasklist(path: &Path, stages: &[(&str, Vec<String>)]) {
    let stages: Vec<String> = stages
        .iter()
        .map(|(name, tasks)| {
            format!(
                r#"{{"name": "{name}", "concurrency": 1, "tasks": [{}]}}"#,
                tasks.join(",")
            )
        })
        .collect();
    std::fs::write(
        path,
        format!(r#"{{"name": "logged", "stages": [{}]}}"#, stages.join(",")),
    )
    .unwrap();
}

/// A task that appends its name to `log` (so the test can count how often it ran).
fn logged(name: &str, log: &Path, extra: &str) -> String {
    format!(
        r#"{{"command": "execute_command", "tag": "{name}", "command_line": "echo {name} >> {log}{extra}"}}"#,
        log = log.display()
    )
}

fn count(log: &Path, name: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == name)
        .count()
}

#[test]
fn runs_are_recorded_listed_shown_and_purged() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("state/runs.db");
    let log = dir.path().join("log");
    let tasklist = dir.path().join("t.json");
    write_tasklist(
        &tasklist,
        &[("one", vec![logged("a", &log, ""), logged("b", &log, "")])],
    );
    let out = deploy_in(&store, &["--tasklist", tasklist.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(store.exists(), "the SQLite file is created on first use");
    let id = run_id(&stderr);

    let out = deploy_in(&store, &["runs", "list"]);
    let list = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        list.lines()
            .nth(1)
            .unwrap()
            .starts_with(&format!("{id}  SUCCEEDED")),
        "{list}"
    );
    assert!(list.contains("logged"), "{list}");

    let out = deploy_in(&store, &["runs", "show", &id]);
    let show = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(show.contains("state     SUCCEEDED"), "{show}");
    assert!(
        show.contains(&format!("source    tasklist:{}", tasklist.display())),
        "{show}"
    );
    assert!(
        !show.contains("finished  -"),
        "finish_ts is stamped\n{show}"
    );
    assert!(
        show.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["local", "DONE", "2", "0"]),
        "{show}"
    );
    assert!(show.contains("\ntasks     2 ok\n"), "{show}");
    assert!(show.contains("stages[0].tasks[1]"), "{show}");

    let out = deploy_in(&store, &["runs", "show", "not-a-run"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("\"not-a-run\" is not a run id"));

    // A unique start of an id names the run, as `runs list` shows it.
    let out = deploy_in(&store, &["runs", "show", &id[..8]]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("run       {id}\n")));
    let out = deploy_in(&store, &["runs", "show", "ffffffff"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("no run id starts with \"ffffffff\""));

    let out = deploy_in(&store, &["runs", "purge", "--older-than", "1h"]);
    assert_eq!(text(&out.stdout), "purged 0 runs\n");
    let out = deploy_in(&store, &["runs", "purge", "--older-than", "0s"]);
    assert_eq!(text(&out.stdout), "purged 1 run\n");
    let out = deploy_in(&store, &["runs", "list"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        1,
        "only the header is left"
    );
}

#[test]
fn a_failed_run_resumes_without_repeating_done_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db");
    let log = dir.path().join("log");
    let marker = dir.path().join("second-try");
    let tasklist = dir.path().join("t.json");
    // `flaky` fails the first time and succeeds after.
    let flaky = format!(
        "; test -e {m} || {{ touch {m}; echo not yet >&2; exit 4; }}",
        m = marker.display()
    );
    write_tasklist(
        &tasklist,
        &[
            ("one", vec![logged("a", &log, ""), logged("b", &log, "")]),
            (
                "two",
                vec![logged("flaky", &log, &flaky), logged("c", &log, "")],
            ),
        ],
    );
    let out = deploy_in(&store, &["--tasklist", tasklist.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let id = run_id(&stderr);
    assert!(
        stderr.contains(&format!("resume with: deploy runs resume {id}")),
        "{stderr}"
    );

    let out = deploy_in(&store, &["runs", "resume", &id]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for (name, runs) in [("a", 1), ("b", 1), ("flaky", 2), ("c", 1)] {
        assert_eq!(count(&log, name), runs, "{name}");
    }
    let out = deploy_in(&store, &["runs", "show", &id]);
    let show = text(&out.stdout);
    assert!(show.contains("state     SUCCEEDED"), "{show}");

    let out = deploy_in(&store, &["runs", "resume", &id]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("already succeeded; nothing to resume"));
}

#[test]
fn a_controller_killed_mid_stage_over_ssh_is_resumed_and_nothing_runs_twice_unasked() {
    let sshd = TestSshd::start().expect("sshd starts");
    let dir = tempfile::tempdir().unwrap();
    // The login user must be able to write the log.
    let work = Path::new("/tmp").join(format!(
        "deployer-kill-{}",
        dir.path().file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir_all(&work).unwrap();
    Command::new("chmod")
        .arg("777")
        .arg(&work)
        .status()
        .unwrap();
    let log = work.join("log");
    let store = dir.path().join("runs.db");

    // Connection settings: an ssh config alias and the harness's known_hosts.
    std::fs::write(
        dir.path().join("ssh_config"),
        format!(
            "Host app1\n  HostName {}\n  Port {}\n  User {}\n  IdentityFile {}\n",
            sshd.address(),
            sshd.port(),
            sshd.user(),
            sshd.client_key().display()
        ),
    )
    .unwrap();
    let config = dir.path().join("ssh.yaml");
    std::fs::write(
        &config,
        format!(
            "platform: release\nssh:\n  known_hosts: {}\n  config: {}\n  agent: false\n",
            sshd.known_hosts().display(),
            dir.path().join("ssh_config").display()
        ),
    )
    .unwrap();
    let task = |name: &str, sleep: &str| {
        format!(
            r#"{{"command": "execute_command", "remote_host": "app1", "tag": "{name}", "command_line": "echo {name} >> {log}; sleep {sleep}"}}"#,
            log = log.display()
        )
    };
    let tasklist = dir.path().join("t.json");
    write_tasklist(
        &tasklist,
        &[
            (
                "first",
                vec![
                    task("t0", "0"),
                    task("t1", "0"),
                    task("t2", "2"),
                    task("t3", "0"),
                ],
            ),
            ("second", vec![task("t4", "0")]),
        ],
    );

    // Start the controller and kill it (SIGKILL: no chance to clean up) while t2 runs.
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .arg("--store")
        .arg(&store)
        .args(["--config", config.to_str().unwrap()])
        .args(["--tasklist", tasklist.to_str().unwrap()])
        .args(["--output", "json", "--lease-ttl", "1s"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stdout.take().unwrap()).lines();
    for line in lines {
        let line = line.unwrap();
        if line.contains("\"event\":\"task_output\"") && line.contains("\"tag\":\"t2\"") {
            break;
        }
        if line.contains("\"event\":\"task_started\"") && line.contains("\"tag\":\"t2\"") {
            // Wait until t2 has surely written its line: its echo comes before the sleep.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while count(&log, "t2") == 0 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "t2 never wrote its line"
                );
                std::thread::yield_now();
            }
            break;
        }
    }
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let id = run_id(&text(&out.stderr));
    assert_eq!(
        (count(&log, "t0"), count(&log, "t1"), count(&log, "t2")),
        (1, 1, 1)
    );

    // The record lost nothing: t0 and t1 done, t2 running, the rest pending.
    let out = deploy_in(&store, &["runs", "show", &id]);
    let show = text(&out.stdout);
    assert!(show.contains("state     RUNNING"), "{show}");
    for (task, state) in [
        ("[0]", "SUCCEEDED"),
        ("[1]", "SUCCEEDED"),
        ("[2]", "RUNNING"),
        ("[3]", "PENDING"),
    ] {
        let row = show
            .lines()
            .find(|l| l.starts_with(&format!("stages[0].tasks{task}")))
            .unwrap_or_else(|| panic!("{show}"));
        assert!(row.contains(state), "{row}");
    }

    // t2 may have had an effect and execute_command is not idempotent: resume stops and asks.
    let resume = |extra: &[&str]| {
        let mut args = vec![
            "--config",
            config.to_str().unwrap(),
            "runs",
            "resume",
            &id,
            "--wait",
        ];
        args.extend_from_slice(extra);
        deploy_in(&store, &args)
    };
    let out = resume(&[]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("stages[0].tasks[2] execute_command on app1"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "check them, then run them again with: deploy runs resume {id} --force"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("resume with force"), "{stderr}");
    assert_eq!(count(&log, "t3"), 0, "nothing ran");

    // Forced: t2 runs again (as asked), everything else exactly once.
    // The run keeps its own copy of the tasklist: editing the file changes nothing.
    let edited = std::fs::read_to_string(&tasklist)
        .unwrap()
        .replace("echo t3", "echo edited");
    std::fs::write(&tasklist, edited).unwrap();
    let out = resume(&["--force"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    for (name, n) in [("t0", 1), ("t1", 1), ("t2", 2), ("t3", 1), ("t4", 1)] {
        assert_eq!(
            count(&log, name),
            n,
            "{name}: {}",
            std::fs::read_to_string(&log).unwrap()
        );
    }
    let out = deploy_in(&store, &["runs", "show", &id]);
    let show = text(&out.stdout);
    assert!(show.contains("state     SUCCEEDED"), "{show}");
    // The resume ran three tasks; two were done by the killed attempt.
    assert!(
        show.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["app1", "DONE", "3", "2", "0"]),
        "{show}"
    );
    assert!(
        show.contains("\ntasks     3 ok, 2 done earlier\n"),
        "{show}"
    );
    assert_eq!(count(&log, "edited"), 0);
    let _ = std::fs::remove_dir_all(&work);
}

/// Runs SQL on the SQLite run store, as another version of deploy or a person might.
fn sql(store: &Path, statement: &str, id: &str) {
    use sqlx::Connection;
    let url = format!("sqlite://{}", store.display());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
            let done = sqlx::query(sqlx::AssertSqlSafe(statement.to_string()))
                .bind(id)
                .execute(&mut conn)
                .await
                .unwrap();
            assert_eq!(done.rows_affected(), 1, "{statement}");
            conn.close().await.unwrap();
        });
}

/// Three recorded runs (ids in creation order) of a one-task tasklist with a 5 s timeout.
fn three_runs(dir: &Path, store: &Path) -> Vec<String> {
    let log = dir.join("log");
    let tasklist = dir.join("t.json");
    write_tasklist(
        &tasklist,
        &[(
            "one",
            vec![logged("a", &log, "").replace("{", "{\"timeout\": 5, ")],
        )],
    );
    (0..3)
        .map(|_| {
            let out = deploy_in(store, &["--tasklist", tasklist.to_str().unwrap()]);
            let stderr = text(&out.stderr);
            assert_eq!(out.status.code(), Some(0), "{stderr}");
            run_id(&stderr)
        })
        .collect()
}

/// Reported: one row deploy cannot read made `deploy runs list` fail for every run. Now the
/// others are listed and it is marked; `runs show` of it names the run and the column (exit
/// 1); the others still show; deploying goes on.
#[test]
fn an_unreadable_run_is_listed_marked_and_the_others_still_show() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db");
    let ids = three_runs(dir.path(), &store);
    // A newer version recorded a state this one does not know.
    sql(
        &store,
        "UPDATE runs SET state = 'PAUSED' WHERE id = ?1",
        &ids[1],
    );

    let out = deploy_in(&store, &["runs", "list"]);
    let (list, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(lines[0].starts_with("ID "), "{list}");
    assert!(
        lines[1].starts_with(&format!("{}  SUCCEEDED", ids[2])),
        "{list}"
    );
    assert_eq!(
        lines[2],
        format!(
            "{}  UNREADABLE  column state: unknown RunState \"PAUSED\"",
            ids[1]
        )
    );
    assert!(
        lines[3].starts_with(&format!("{}  SUCCEEDED", ids[0])),
        "{list}"
    );
    assert!(
        stderr.contains("warning: 1 run cannot be read (marked UNREADABLE)"),
        "{stderr}"
    );

    let expected = format!(
        "error: cannot read run {} from the run store: column state: unknown RunState \"PAUSED\"",
        ids[1]
    );
    for args in [&["runs", "show", &ids[1]][..], &["runs", "resume", &ids[1]]] {
        let out = deploy_in(&store, args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(&expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    for id in [&ids[0], &ids[2]] {
        let out = deploy_in(&store, &["runs", "show", id]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        assert!(text(&out.stdout).contains("state     SUCCEEDED"));
    }

    // A task row this version cannot read fails showing that run only, naming the task.
    sql(
        &store,
        "UPDATE run_tasks SET attempts = -1 WHERE run_id = ?1",
        &ids[0],
    );
    let out = deploy_in(&store, &["runs", "show", &ids[0]]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot read run {} from the run store: task stages[0].tasks[0]: column attempts: -1 is out of range",
            ids[0]
        )),
        "{stderr}"
    );
    let out = deploy_in(&store, &["runs", "list"]);
    assert_eq!(
        text(&out.stdout).lines().count(),
        4,
        "{}",
        text(&out.stderr)
    );
    let list = text(&out.stdout);
    let row = list.lines().find(|l| l.starts_with(&ids[0])).unwrap();
    assert!(row.contains("SUCCEEDED"), "{list}");
    assert!(row.ends_with("  ?"), "its counts cannot be read: {list}");
}

/// A run recorded before the limits on timeouts (a version that let `1e-300` through stored
/// `"timeout": 0`) still lists and shows; resuming it is refused, naming the value and the
/// limits, instead of failing every task at once.
#[test]
fn a_run_recorded_with_a_zero_timeout_lists_shows_and_is_refused_resume_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db");
    let ids = three_runs(dir.path(), &store);
    let old = &ids[1];
    sql(
        &store,
        "UPDATE runs SET state = 'FAILED', \
         tasklist = replace(tasklist, '\"timeout\": 5', '\"timeout\": 0') WHERE id = ?1",
        old,
    );

    let out = deploy_in(&store, &["runs", "list"]);
    let list = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(list.contains(&format!("{old}  FAILED")), "{list}");
    assert!(!list.contains("UNREADABLE"), "{list}");
    let out = deploy_in(&store, &["runs", "show", old]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("state     FAILED"));

    let out = deploy_in(&store, &["runs", "resume", old]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("error: run {old} cannot be resumed: its tasklist, recorded by an earlier version, has values outside today's limits")),
        "{stderr}"
    );
    assert!(
        stderr.contains("stages[0].tasks[0].timeout: found 0 (expected a number of seconds from 0.001 (1 ms) to 31536000 (365 days))"),
        "{stderr}"
    );
    assert_eq!(count(&dir.path().join("log"), "a"), 3, "nothing ran");
}

/// Resuming a run another controller holds says how to wait for it.
#[test]
fn resuming_a_run_another_controller_holds_names_it_and_says_wait() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db");
    let ids = three_runs(dir.path(), &store);
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
        + 3_600_000_000;
    sql(
        &store,
        &format!(
            "UPDATE runs SET state = 'FAILED', owner = 'ctl-elsewhere', lease_expires = {expires} \
             WHERE id = ?1"
        ),
        &ids[0],
    );
    let out = deploy_in(&store, &["runs", "resume", &ids[0]]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "error: run {} is being driven by ctl-elsewhere (its lease expires in ",
            ids[0]
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "unless renewed); to wait for it: deploy runs resume {} --wait",
            ids[0]
        )),
        "{stderr}"
    );
}

/// Reported: two `deploy runs list` in a fresh directory, and one failed with "failed to
/// migrate SQLite database … table runs already exists" (3 of 5 tries). 8 at once, 5 times.
#[test]
fn deploys_opening_a_fresh_store_at_once_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..5 {
        let store = dir.path().join(format!("{round}/.deployer/runs.db"));
        let children: Vec<_> = (0..8)
            .map(|_| {
                Command::new(env!("CARGO_BIN_EXE_deploy"))
                    .arg("--store")
                    .arg(&store)
                    .args(["runs", "list"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().unwrap();
            assert_eq!(
                out.status.code(),
                Some(0),
                "round {round}: {}",
                text(&out.stderr)
            );
            assert!(text(&out.stdout).starts_with("ID "));
        }
    }
}

/// Reported: history was kept per working directory (`./.deployer/runs.db`), so it split by
/// `cd`. Without `--store`, every run of a user goes to one store under the XDG state dir.
#[test]
fn history_is_per_user_wherever_deploy_starts() {
    let home = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tasklist = a.path().join("t.json");
    write_tasklist(
        &tasklist,
        &[(
            "only",
            vec![r#"{"command": "execute_command", "command_line": "true"}"#.to_string()],
        )],
    );
    let deploy = |dir: &Path, args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_deploy"))
            .env_remove("DEPLOYER_STORE")
            .env_remove("XDG_STATE_HOME")
            .env("HOME", home.path())
            .current_dir(dir)
            .args(args)
            .output()
            .unwrap()
    };
    let out = deploy(a.path(), &["--tasklist", tasklist.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let id = run_id(&text(&out.stderr));
    let list = deploy(b.path(), &["runs", "list"]);
    assert!(text(&list.stdout).contains(&id), "{}", text(&list.stdout));
    assert!(home.path().join(".local/state/deployer/runs.db").exists());
    assert!(!a.path().join(".deployer").exists() && !b.path().join(".deployer").exists());
}
