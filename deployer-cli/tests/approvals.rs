//! Approvals of manual steps through the real `books` program and a real SQLite run store:
//! `yes` / `no` at a terminal (anything else asks again), `--yes` for automation, who decided
//! recorded and shown by `deploy runs show`, the four-eyes rule, roles from a catalog, expiry,
//! and a decision from another process letting a waiting job go on.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn examples() -> PathBuf {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")).to_path_buf()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A library with one book, `gate`: write a file, wait at a manual step with `rule` (YAML
/// lines), write another.
fn library(dir: &Path, rule: &str) -> PathBuf {
    let lib = dir.join("library");
    std::fs::create_dir_all(&lib).unwrap();
    let root = dir.join("srv");
    let mut book = format!(
        "name: gate\nversion: 1.0.0\nsteps:\n\
         - name: before\n  command: writefile\n  args: {{destination: {r}/before, contents: \"x\", clobber: true}}\n\
         - name: approve\n  manual: true\n  description: Is it a good time?\n",
        r = root.display()
    );
    for line in rule.lines() {
        book.push_str(&format!("  {line}\n"));
    }
    book.push_str(&format!(
        "- name: after\n  command: writefile\n  args: {{destination: {}/after, contents: \"x\", clobber: true}}\n",
        root.display()
    ));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(lib.join("gate.yaml"), book).unwrap();
    // The scope names the deployment the example catalog knows.
    std::fs::write(
        dir.join("scope.json"),
        r#"{"deployment": {"ref": "shop/prod"}}"#,
    )
    .unwrap();
    lib
}

struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(rule: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        library(dir.path(), rule);
        Setup { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn store(&self) -> String {
        self.path("runs.db")
    }

    /// `books run gate …` arguments (recorded in the SQLite store).
    fn run_args(&self, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "run",
            "gate",
            "--library",
            &self.path("library"),
            "--scope",
            &self.path("scope.json"),
            "--store",
            &self.store(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    fn after_written(&self) -> bool {
        self.dir.path().join("srv/after").exists()
    }

    /// `deploy runs show` of the only run in the store.
    fn runs_show(&self, run: &str) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_deploy"))
            .args([
                "--store",
                &format!("sqlite://{}", self.store()),
                "runs",
                "show",
                run,
            ])
            .env_remove("DEPLOYER_STORE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    }
}

/// `books ARGS` at a pseudo-terminal (`script`), typing `input`; returns the exit status and
/// the screen.
fn books_at_terminal(args: &[String], user: &str, input: &str) -> (Option<i32>, String) {
    let line = std::iter::once(env!("CARGO_BIN_EXE_books").to_string())
        .chain(args.iter().map(|a| format!("'{a}'")))
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env("USER", user)
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux) runs");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    (out.status.code(), text(&out.stdout))
}

fn books(args: &[&str], user: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_books"))
        .args(args)
        .env("USER", user)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn run_id(screen: &str) -> String {
    let at = screen
        .find("(run ")
        .expect("the waiting line names the run")
        + 5;
    screen[at..at + 36].to_string()
}

#[test]
fn at_a_terminal_no_rejects_anything_else_asks_again_and_yes_approves() {
    let s = Setup::new("");
    // The OS user ($USER) is who runs the job and who decides.
    let (code, screen) = books_at_terminal(
        &s.run_args(&[]),
        "alice",
        "maybe\nno\nnot during the sale\n",
    );
    assert_eq!(code, Some(1), "{screen}");
    assert!(
        screen.contains("approve gate/approve as alice? [yes/no]"),
        "{screen}"
    );
    assert!(
        screen.contains("answer yes or no (not \"maybe\")"),
        "{screen}"
    );
    assert_eq!(
        screen
            .matches("approve gate/approve as alice? [yes/no]")
            .count(),
        2,
        "asked again after maybe: {screen}"
    );
    assert!(
        screen.contains("failed: step gate/approve rejected by alice at ")
            && screen.contains(": \"not during the sale\""),
        "{screen}"
    );
    assert!(screen.contains(" error\r\n"), "{screen}");
    assert!(!s.after_written(), "nothing after a rejected step runs");
    let shown = s.runs_show(&run_id(&screen));
    assert!(
        shown.contains("gate/approve  rejected  alice")
            && shown.contains("\"not during the sale\""),
        "{shown}"
    );

    let (code, screen) = books_at_terminal(&s.run_args(&["--as", "dave"]), "alice", "yes\n\n");
    assert_eq!(code, Some(0), "{screen}");
    assert!(
        screen.contains("approve gate/approve as dave? [yes/no]"),
        "{screen}"
    );
    assert!(s.after_written(), "{screen}");
    let shown = s.runs_show(&run_id(&screen));
    assert!(shown.contains("gate/approve  approved  dave"), "{shown}");
    assert!(
        shown.contains("by        alice") || shown.contains("by        dave"),
        "{shown}"
    );
}

#[test]
fn yes_approves_in_advance_and_records_who() {
    let s = Setup::new("");
    let out = books(
        &s.run_args(&["--yes", "--as", "carol", "--comment", "nightly job"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        "root",
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}{}", text(&out.stderr));
    assert!(!stdout.contains("[yes/no]"), "{stdout}");
    let run = stdout
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .expect("the run is named")
        .to_string();
    let shown = s.runs_show(&run);
    assert!(
        shown.contains("gate/approve  approved  carol") && shown.contains("\"nightly job\""),
        "{shown}"
    );
    assert!(
        shown.contains("by        carol"),
        "the starter is recorded: {shown}"
    );
}

#[test]
fn four_eyes_keeps_the_starter_from_approving() {
    let s = Setup::new("four_eyes: true");
    // In advance: refused, the job fails saying why.
    let args = s.run_args(&["--yes", "--as", "alice"]);
    let out = books(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        "alice",
    );
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("alice may not decide step gate/approve: alice started the run, and the step requires a second person (four-eyes)"),
        "{stdout}"
    );
    assert!(!s.after_written());
    // At the terminal the starter is not asked; without a store nobody else could decide, so
    // the run stops.
    let dir = tempfile::tempdir().unwrap();
    library(dir.path(), "four_eyes: true");
    let args: Vec<String> = [
        "run",
        "gate",
        "--library",
        &dir.path().join("library").display().to_string(),
        "--scope",
        &dir.path().join("scope.json").display().to_string(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let (code, screen) = books_at_terminal(&args, "alice", "yes\n");
    assert_eq!(code, Some(1), "{screen}");
    assert!(!screen.contains("[yes/no]"), "{screen}");
    assert!(
        screen.contains("without --store nobody else can decide it: stopping"),
        "{screen}"
    );
}

#[test]
fn an_approval_nobody_gives_expires_and_fails_the_job() {
    let s = Setup::new("expires_after: 0.5");
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_books"))
        .args(s.run_args(&["--as", "alice"]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Nobody answers, and the input stays open.
    let stdin = child.stdin.take().unwrap();
    let out = child.wait_with_output().unwrap();
    drop(stdin);
    let stdout = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(
        stdout.contains("failed: step gate/approve expired at ")
            && stdout.contains("without a decision"),
        "{stdout}"
    );
    assert!(!s.after_written());
    let shown = s.runs_show(&run_id(&stdout));
    assert!(shown.contains("gate/approve  expired"), "{shown}");
}

/// A job waits at its manual step; `books approve` in another process, against the same
/// SQLite file, decides it — after refusing a user whose catalog role is too weak and a
/// rejection attempt of a user not on the list.
#[test]
fn a_decision_from_another_process_lets_the_waiting_job_go_on() {
    let s = Setup::new("approvers: developer");
    let catalog = examples().join("catalog.yaml").display().to_string();
    let mut job: Child = Command::new(env!("CARGO_BIN_EXE_books"))
        .args(s.run_args(&["--as", "bob", "--catalog", &catalog]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdin = job.stdin.take().unwrap();
    let mut out = BufReader::new(job.stdout.take().unwrap());
    let mut screen = String::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !screen.contains("waiting for a decision from another process") {
        assert!(Instant::now() < deadline, "{screen}");
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the job ended early: {screen}");
        }
        screen.push_str(&line);
    }
    // bob (user in shop) may not approve: the terminal says so and does not ask.
    assert!(
        screen.contains("bob may not decide step gate/approve: it needs role developer on shop/prod, and bob holds user"),
        "{screen}"
    );
    assert!(!screen.contains("[yes/no]"), "{screen}");
    let run = run_id(&screen);
    let store = s.store();
    let decide = |verb: &str, who: &str, comment: &str| {
        books(
            &[
                verb,
                &run,
                "gate/approve",
                "--store",
                &store,
                "--as",
                who,
                "--catalog",
                &catalog,
                "--comment",
                comment,
            ],
            "root",
        )
    };
    let pending = books(&["pending", "--store", &store], "root");
    assert!(
        text(&pending.stdout).contains(&format!("{run} gate/approve  needs role developer")),
        "{}",
        text(&pending.stdout)
    );
    let refused = decide("reject", "dave", "no");
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("dave may not decide step gate/approve: it needs role developer on shop/prod, and dave holds user"),
        "{}",
        text(&refused.stderr)
    );
    assert!(!s.after_written(), "the job still waits");
    let approved = decide("approve", "alice", "backup checked");
    assert_eq!(
        approved.status.code(),
        Some(0),
        "{}",
        text(&approved.stderr)
    );
    assert!(
        text(&approved.stdout).contains("step gate/approve approved by alice at "),
        "{}",
        text(&approved.stdout)
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = job.wait().unwrap();
    drop(stdin);
    assert_eq!(status.code(), Some(0), "{screen}{rest}");
    assert!(rest.contains(" done"), "{rest}");
    assert!(s.after_written());
    // Decided once: a second decision is refused, naming the first.
    let again = decide("reject", "alice", "changed my mind");
    assert_eq!(again.status.code(), Some(2));
    assert!(
        text(&again.stderr).contains("already approved by alice"),
        "{}",
        text(&again.stderr)
    );
    let shown = s.runs_show(&run);
    assert!(
        shown.contains("gate/approve  approved  alice") && shown.contains("\"backup checked\""),
        "{shown}"
    );
}
