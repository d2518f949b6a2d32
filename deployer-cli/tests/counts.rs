//! One source of truth for counts: for each way a run can end, the recap's table, its last
//! line, the last JSON event, `deploy runs show` and `deploy runs list` give the same counts —
//! through the real `deploy` program, with a SQLite file as the store.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};

use deployer_core::TaskCounts;

type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A scenario's directory: its tasklist and its store.
struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    fn new() -> Dir {
        Dir {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn store(&self) -> String {
        self.path("runs.db")
    }

    /// `stages`: per stage, its tasks as JSON objects without a host (they run on `local`).
    fn tasklist(&self, stages: &[&[String]]) -> String {
        let stages: Vec<String> = stages
            .iter()
            .enumerate()
            .map(|(i, tasks)| {
                format!(
                    r#"{{"name": "stage{i}", "concurrency": 1, "tasks": [{}]}}"#,
                    tasks.join(", ")
                )
            })
            .collect();
        let path = self.path("tasklist.json");
        std::fs::write(
            &path,
            format!(r#"{{"name": "counts", "stages": [{}]}}"#, stages.join(", ")),
        )
        .unwrap();
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_deploy"));
        c.args([
            "--store",
            &self.store(),
            "--output",
            "json",
            "--color",
            "never",
        ])
        .args(args)
        .current_dir(self.dir.path());
        c
    }

    fn deploy(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Starts `deploy`, returns once a task has started: the child and its stdout, the lines
    /// read so far and the rest.
    fn start(&self, args: &[&str]) -> (Child, Vec<String>, Lines) {
        let mut child = self
            .command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut seen = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        for line in lines.by_ref() {
            let line = line.unwrap();
            let started = line.contains(r#""event":"task_started""#);
            seen.push(line);
            if started {
                break;
            }
        }
        (child, seen, lines)
    }
}

fn sh(line: &str) -> String {
    format!(
        r#"{{"command": "execute_command", "command_line": {}}}"#,
        serde_json::to_string(line).unwrap()
    )
}

fn interrupt(child: &Child) {
    let ok = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
}

/// What one invocation showed: exit status, JSON events, recap.
struct Seen {
    code: Option<i32>,
    events: Vec<serde_json::Value>,
    recap: String,
}

impl Seen {
    fn of(out: Output, mut stdout: Vec<String>) -> Seen {
        stdout.extend(text(&out.stdout).lines().map(str::to_string));
        let events = stdout
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
            .collect();
        Seen {
            code: out.status.code(),
            events,
            recap: text(&out.stderr),
        }
    }

    fn run_id(&self) -> String {
        self.events
            .iter()
            .find_map(|e| e["run_id"].as_str())
            .unwrap_or_else(|| panic!("no run id in the events\n{}", self.recap))
            .to_string()
    }
}

const HEADINGS: [&str; 8] = [
    "OK",
    "EARLIER",
    "FAILED",
    "SKIPPED",
    "CANCELLED",
    "DROPPED",
    "NOT RUN",
    "ROLLED BACK",
];

/// The sums of a table's count columns, by heading: the table starts at the line starting
/// `HOST `, its rows are the lines up to one matching `end`, `skip` cells come before the
/// counts (the host, and in `runs show` its state).
fn table_sums(text: &str, skip: usize, end: impl Fn(&str) -> bool) -> BTreeMap<String, usize> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with("HOST "));
    let Some(header) = lines.next() else {
        return BTreeMap::new();
    };
    let headings: Vec<&str> = header
        .split("  ")
        .map(str::trim)
        .filter(|h| HEADINGS.contains(h))
        .collect();
    let mut sums: BTreeMap<String, usize> = headings.iter().map(|h| (h.to_string(), 0)).collect();
    for line in lines.take_while(|l| !end(l)) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        for (h, cell) in headings.iter().zip(&cells[skip..]) {
            *sums.get_mut(*h).unwrap() += cell
                .parse::<usize>()
                .unwrap_or_else(|_| panic!("{line:?}\n{text}"));
        }
    }
    sums
}

/// What a table of these counts must show: OK and FAILED always, every other non-zero one.
fn expected_sums(counts: &TaskCounts) -> BTreeMap<String, usize> {
    counts
        .categories()
        .iter()
        .zip(HEADINGS)
        .filter(|((_, n, _), h)| *n > 0 || matches!(*h, "OK" | "FAILED"))
        .map(|((_, n, _), h)| (h.to_string(), *n))
        .collect()
}

/// Every place a person or a program reads counts agrees with `expected`.
fn assert_counts_agree(d: &Dir, seen: &Seen, expected: &str, scenario: &str) {
    let recap = &seen.recap;
    // The last JSON event: run_finished with the run's counts.
    let last = seen.events.last().expect("events");
    assert_eq!(last["event"], "run_finished", "{scenario}: {last}");
    let stats: TaskCounts = serde_json::from_value(last["stats"].clone())
        .unwrap_or_else(|e| panic!("{scenario}: stats of {last}: {e}"));
    assert_eq!(stats.to_string(), expected, "{scenario}: last JSON event");

    // The recap's last line, and its table adding up to the same.
    let line = recap
        .lines()
        .find(|l| l.starts_with("run \""))
        .unwrap_or_else(|| panic!("{scenario}: no last line in\n{recap}"));
    assert!(
        line.ends_with(&format!(": {expected}"))
            || (expected == "nothing to do" && line.contains(": nothing to do")),
        "{scenario}: the last line {line:?} says {expected:?}\n{recap}"
    );
    if expected != "nothing to do" {
        assert_eq!(
            table_sums(recap, 1, |l| l.starts_with("run \"")),
            expected_sums(&stats),
            "{scenario}: the table\n{recap}"
        );
    }

    // runs show: its counts line and its per-host rows.
    let id = seen.run_id();
    let out = d.deploy(&["runs", "show", &id]);
    let show = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        show.contains(&format!("\ntasks     {expected}\n")),
        "{scenario}: runs show\n{show}"
    );
    if expected != "nothing to do" {
        assert_eq!(
            table_sums(&show, 2, str::is_empty),
            expected_sums(&stats),
            "{scenario}: runs show's hosts\n{show}"
        );
    }

    // runs list: the run's row ends with the same words.
    let out = d.deploy(&["runs", "list"]);
    let list = text(&out.stdout);
    let row = list
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("{scenario}: {id} not in\n{list}"));
    assert!(
        row.ends_with(&format!("  {expected}")),
        "{scenario}: runs list row {row:?}"
    );
}

#[test]
fn every_report_gives_the_same_counts_however_a_run_ends() {
    struct Case {
        name: &'static str,
        expected: &'static str,
        code: i32,
    }
    let cases = [
        Case {
            name: "success",
            expected: "3 ok",
            code: 0,
        },
        Case {
            name: "failure",
            expected: "1 ok, 1 failed, 2 not run",
            code: 1,
        },
        Case {
            name: "skip",
            expected: "1 ok, 1 skipped",
            code: 0,
        },
        Case {
            name: "cancel once",
            expected: "1 ok, 3 not run",
            code: 130,
        },
        Case {
            name: "cancel twice",
            expected: "1 cancelled, 3 not run",
            code: 130,
        },
        Case {
            name: "resume",
            expected: "2 ok, 1 done earlier",
            code: 0,
        },
        Case {
            name: "nothing to do",
            expected: "nothing to do",
            code: 0,
        },
    ];
    std::thread::scope(|scope| {
        for case in &cases {
            scope.spawn(move || {
                let d = Dir::new();
                let seen = run_case(&d, case.name);
                assert_eq!(
                    seen.code,
                    Some(case.code),
                    "{}: exit status\n{}",
                    case.name,
                    seen.recap
                );
                assert_counts_agree(&d, &seen, case.expected, case.name);
            });
        }
    });
}

fn run_case(d: &Dir, name: &str) -> Seen {
    let sleepy = |secs: &str| -> Vec<String> { vec![sh(&format!("sleep {secs}")); 3] };
    match name {
        "success" => {
            let t = d.tasklist(&[&[sh("true"), sh("true")], &[sh("true")]]);
            Seen::of(d.deploy(&["--tasklist", &t]), Vec::new())
        }
        "failure" => {
            let t = d.tasklist(&[&[sh("true"), sh("exit 7"), sh("true")], &[sh("true")]]);
            Seen::of(d.deploy(&["--tasklist", &t]), Vec::new())
        }
        "skip" => {
            let f = d.path("same");
            std::fs::write(&f, "x").unwrap();
            let copy =
                format!(r#"{{"command": "copyfile", "source": {f:?}, "destination": {f:?}}}"#);
            let t = d.tasklist(&[&[sh("true"), copy]]);
            Seen::of(d.deploy(&["--tasklist", &t]), Vec::new())
        }
        "cancel once" => {
            let t = d.tasklist(&[&sleepy("0.5"), &[sh("true")]]);
            let (child, mut seen, rest) = d.start(&["--tasklist", &t]);
            interrupt(&child);
            seen.extend(rest.map(Result::unwrap));
            Seen::of(child.wait_with_output().unwrap(), seen)
        }
        "cancel twice" => {
            let t = d.tasklist(&[&sleepy("600"), &[sh("true")]]);
            let (mut child, mut seen, rest) = d.start(&["--tasklist", &t]);
            interrupt(&child);
            let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
            let mut recap = String::new();
            for line in stderr.by_ref() {
                let line = line.unwrap();
                let handled = line.contains("cancelling: no new tasks start");
                recap.push_str(&line);
                recap.push('\n');
                if handled {
                    break;
                }
            }
            interrupt(&child);
            seen.extend(rest.map(Result::unwrap));
            for line in stderr {
                recap.push_str(&line.unwrap());
                recap.push('\n');
            }
            let mut seen = Seen::of(child.wait_with_output().unwrap(), seen);
            seen.recap = recap;
            seen
        }
        "resume" => {
            let flag = d.path("flag");
            let t = d.tasklist(&[&[sh("true"), sh(&format!("test -f {flag}"))], &[sh("true")]]);
            let first = Seen::of(d.deploy(&["--tasklist", &t]), Vec::new());
            assert_eq!(first.code, Some(1), "{}", first.recap);
            std::fs::write(&flag, "").unwrap();
            Seen::of(d.deploy(&["runs", "resume", &first.run_id()]), Vec::new())
        }
        "nothing to do" => {
            let t = d.tasklist(&[]);
            Seen::of(d.deploy(&["--tasklist", &t]), Vec::new())
        }
        other => unreachable!("{other}"),
    }
}

#[test]
fn a_failed_stage_bar_says_what_became_of_its_tasks() {
    // Through a pseudo-terminal (script): the bar of the failed stage ends with its counts,
    // not "4/4 tasks … failed" as if all had run.
    let d = Dir::new();
    let t = d.tasklist(&[&[sh("true"), sh("exit 7"), sh("true"), sh("true")]]);
    let log = d.path("screen");
    let cmd = format!(
        "{} --store {} --tasklist {} --color never",
        env!("CARGO_BIN_EXE_deploy"),
        d.store(),
        t
    );
    let status = Command::new("script")
        .args(["-qec", &cmd])
        .arg(&log)
        .env("TERM", "xterm")
        .env("COLUMNS", "160")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    let Ok(status) = status else {
        eprintln!("no `script` on this machine: skipped");
        return;
    };
    assert_eq!(status.code(), Some(1));
    let screen = std::fs::read_to_string(&log).unwrap();
    assert!(
        screen.contains("stage stage0 failed: 1 ok, 1 failed, 2 not run"),
        "{screen}"
    );
}
