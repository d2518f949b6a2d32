//! Clean-up steps through the `books` program: a book's `on_failure` and `always` steps run
//! after a failure and after a first SIGINT (exit 1 and 130), not after a second SIGINT; a
//! success runs `always` but not `on_failure`; a called book's clean-up runs only if it
//! started; the run record shows the clean-up. The example `pause` book (which sets the
//! maintenance flag and removes it on failure) is used as it ships.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).join("books")
}

const FLAG: &str = "ns-9a2f3b5c6d7e8f90-prod.maintenance";

/// A book that writes `root/<file>` with its own name.
fn mark(name: &str, file: &str) -> String {
    format!(
        "- name: {name}\n  command: writefile\n  hosts: cluster.hosts\n  args: {{clobber: true, contents: \"{name}\\n\"}}\n  data: {{destination: \"deployment.values.root + '/{file}'\"}}\n"
    )
}

fn shell(name: &str, line: &str) -> String {
    format!("- name: {name}\n  command: execute_command\n  args: {{command_line: \"{line}\"}}\n")
}

/// A library in `dir`: the example `pause` book, a `child` book with its own clean-up, and
/// jobs around them.
struct Setup {
    _dir: tempfile::TempDir,
    root: PathBuf,
    library: PathBuf,
    scope: PathBuf,
    store: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("srv");
    std::fs::create_dir_all(&root).unwrap();
    let library = dir.path().join("library");
    std::fs::create_dir(&library).unwrap();
    std::fs::copy(
        examples().join("library/pause.yaml"),
        library.join("pause.yaml"),
    )
    .unwrap();
    let write = |name: &str, text: String| std::fs::write(library.join(name), text).unwrap();
    write(
        "child.yaml",
        format!(
            "name: child\nversion: 1.0.0\nsteps:\n{}on_failure:\n{}",
            mark("child work", "child-started"),
            mark("child undo", "child-cleanup")
        ),
    );
    let job = |name: &str, steps: &[String]| {
        format!(
            "name: {name}\nversion: 1.0.0\nsteps:\n{}on_failure:\n{}always:\n{}",
            steps.concat(),
            mark("tell", "on-failure"),
            mark("note", "always")
        )
    };
    let call = |book: &str| format!("- name: {book}\n  book: {book}\n");
    write(
        "fails.yaml",
        job(
            "fails",
            &[call("pause"), call("child"), shell("boom", "exit 3")],
        ),
    );
    write(
        "fails-early.yaml",
        job(
            "fails-early",
            &[call("pause"), shell("boom", "exit 3"), call("child")],
        ),
    );
    write(
        "succeeds.yaml",
        job(
            "succeeds",
            &[call("pause"), call("child"), shell("fine", "true")],
        ),
    );
    write(
        "waits.yaml",
        job("waits", &[call("pause"), shell("wait", "sleep 2")]),
    );
    write(
        "waits-long.yaml",
        job("waits-long", &[call("pause"), shell("wait", "sleep 30")]),
    );
    let text = std::fs::read_to_string(examples().join("scope.json")).unwrap();
    let mut scope: Value = serde_json::from_str(&text).unwrap();
    scope["deployment"]["values"]["root"] = root.to_str().unwrap().into();
    let scope_path = dir.path().join("scope.json");
    std::fs::write(&scope_path, scope.to_string()).unwrap();
    Setup {
        store: dir.path().join("runs.db"),
        root,
        library,
        scope: scope_path,
        _dir: dir,
    }
}

impl Setup {
    fn command(&self, book: &str) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_books"));
        c.arg("run")
            .arg(book)
            .arg("--library")
            .arg(&self.library)
            .arg("--scope")
            .arg(&self.scope)
            .arg("--store")
            .arg(&self.store)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, book: &str) -> Output {
        self.command(book).output().expect("the binary runs")
    }

    fn exists(&self, file: &str) -> bool {
        self.root.join(file).exists()
    }

    /// The run `out` printed: `deploy runs show` of it, and its task records from the store
    /// as `tag command STATE`.
    fn record(&self, out: &str) -> (String, Vec<String>) {
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("run "))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no run id in\n{out}"));
        let shown = Command::new(env!("CARGO_BIN_EXE_deploy"))
            .arg("--store")
            .arg(&self.store)
            .args(["runs", "show", id])
            .output()
            .unwrap();
        assert_eq!(shown.status.code(), Some(0), "{}", text(&shown.stderr));
        let tasks = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let store = deployer_store::SqliteStore::open(&self.store)
                .await
                .unwrap();
            let id: deployer_core::RunId = id.parse().unwrap();
            deployer_core::RunStore::tasks(&store, &id).await.unwrap()
        });
        let tasks = tasks
            .iter()
            .map(|t| {
                format!(
                    "{} {} {:?}",
                    t.tag.as_deref().unwrap_or("-"),
                    t.command,
                    t.state
                )
            })
            .collect();
        (text(&shown.stdout), tasks)
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Starts `book`, waits until its step `step` started, then sends `signals` SIGINTs.
fn interrupted(setup: &Setup, book: &str, step: &str, signals: usize) -> (Output, Duration) {
    let mut child: Child = setup
        .command(book)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    let wanted = format!("step {book}/{step}\n");
    while !seen.ends_with(&wanted) {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "the job ended before {step}:\n{seen}"
        );
        seen.push_str(&line);
    }
    // Let the step's task start.
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    for _ in 0..signals {
        let kill = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    let mut out = child.wait_with_output().unwrap();
    out.stdout = format!("{seen}{rest}").into_bytes();
    (out, started.elapsed())
}

#[test]
fn a_job_that_fails_after_pause_removes_the_flag_and_exits_1() {
    let s = setup();
    let out = s.run("fails");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(stdout.contains("step fails/boom\n"), "{stdout}");
    assert!(!s.exists(FLAG), "pause's on_failure removed the flag");
    assert!(s.exists("child-cleanup"), "child started: its clean-up ran");
    assert!(s.exists("on-failure") && s.exists("always"));
    // In order: the called books' clean-up (the last started first), then the job's own
    // on_failure, then always.
    let order: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("step "))
        .collect();
    assert_eq!(
        order,
        [
            "fails/pause started",
            "fails/pause/root directory",
            "fails/pause/maintenance flag",
            "fails/child started",
            "fails/child/child work",
            "fails/boom",
            "fails/child/child undo",
            "fails/pause/remove maintenance flag",
            "fails/tell",
            "fails/note",
        ],
        "{stdout}"
    );
    assert!(stdout.contains(" error\nrun "), "{stdout}");

    // The run record shows the clean-up steps, done, after the failure.
    let (shown, tasks) = s.record(&stdout);
    assert!(shown.contains("state     FAILED"), "{shown}");
    assert!(
        shown.contains("stages[7].tasks[0]        local  removefile            SUCCEEDED"),
        "{shown}"
    );
    assert_eq!(
        tasks,
        [
            "fails/pause book_started Succeeded",
            "fails/pause/root directory createdirectory Succeeded",
            "fails/pause/maintenance flag writefile Succeeded",
            "fails/child book_started Succeeded",
            "fails/child/child work writefile Succeeded",
            "fails/boom execute_command Failed",
            "fails/child/child undo writefile Succeeded",
            "fails/pause/remove maintenance flag removefile Succeeded",
            "fails/tell writefile Succeeded",
            "fails/note writefile Succeeded",
        ]
    );
}

#[test]
fn a_called_books_clean_up_runs_only_if_it_started() {
    let s = setup();
    let out = s.run("fails-early");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", text(&out.stderr));
    assert!(!s.exists(FLAG), "pause started: its clean-up ran");
    assert!(!s.exists("child-started"));
    assert!(!s.exists("child-cleanup"), "child never started: {stdout}");
    assert!(!stdout.contains("fails-early/child started"), "{stdout}");
    assert!(
        stdout.contains(
            "step fails-early/child/child undo\n  writefile on local: skipped: its host did not \
             reach \"started:fails-early.child.3\""
        ),
        "{stdout}"
    );
    assert!(s.exists("on-failure") && s.exists("always"));
}

#[test]
fn a_successful_job_runs_always_steps_but_not_on_failure_ones() {
    let s = setup();
    let out = s.run("succeeds");
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(s.exists("always"), "{stdout}");
    assert!(!s.exists("on-failure"), "{stdout}");
    assert!(!s.exists("child-cleanup"), "{stdout}");
    assert!(
        s.exists(FLAG),
        "pause's on_failure did not run: the job succeeded"
    );
    // The on_failure stages are there, their tasks skipped with the reason.
    assert!(
        stdout
            .contains("step succeeds/tell\n  writefile on local: skipped: the run has not failed"),
        "{stdout}"
    );
    assert!(stdout.contains(" done\nrun "), "{stdout}");
}

#[test]
fn one_sigint_lets_the_running_step_finish_then_cleans_up_and_exits_130() {
    let s = setup();
    let (out, _) = interrupted(&s, "waits", "wait", 1);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    assert!(stderr.contains("SIGINT: cancelling"), "{stderr}");
    assert!(
        stdout.contains("step waits/wait\n  execute_command on local: succeeded"),
        "the running step finished: {stdout}"
    );
    assert!(!s.exists(FLAG), "the flag was removed: {stdout}");
    assert!(s.exists("on-failure") && s.exists("always"), "{stdout}");
    assert!(stdout.contains(" cancel\nrun "), "{stdout}");
    let (shown, tasks) = s.record(&stdout);
    assert!(shown.contains("state     CANCELLED"), "{shown}");
    assert!(
        tasks.contains(&"waits/pause/remove maintenance flag removefile Succeeded".to_string()),
        "{tasks:?}"
    );
}

#[test]
fn a_second_sigint_stops_the_step_and_skips_clean_up() {
    let s = setup();
    let (out, after) = interrupted(&s, "waits-long", "wait", 2);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stdout}{stderr}");
    assert!(stderr.contains("SIGINT again: stopping"), "{stderr}");
    assert!(after < Duration::from_secs(20), "sleep 30 was stopped");
    assert!(
        s.exists(FLAG),
        "clean-up skipped: the flag stays ({stdout})"
    );
    assert!(!s.exists("on-failure") && !s.exists("always"), "{stdout}");
    assert!(
        !stdout.contains("step waits-long/pause/remove maintenance flag"),
        "{stdout}"
    );
}

#[test]
fn a_manual_clean_up_step_is_refused_where_it_is_written() {
    let s = setup();
    std::fs::write(
        s.library.join("bad.yaml"),
        "name: bad\nversion: 1.0.0\nsteps: []\nalways:\n- name: ask\n  manual: true\n",
    )
    .unwrap();
    let out = s.run("bad");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("bad.yaml:5:3"), "{stderr}");
    assert!(
        stderr.contains("clean-up step \"ask\" cannot be manual"),
        "{stderr}"
    );
}
