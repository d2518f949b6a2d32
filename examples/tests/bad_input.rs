//! The bad-input corpus (`tests/corpus/`): malformed tasklists, configs and book libraries, each
//! with the text its error must contain. Every case must give exit code 2 and a clear message,
//! never a panic, and touch no host. Large and deeply nested inputs are generated here.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

fn run(bin: &str, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .env("DEPLOYER_STORE", "sqlite::memory:")
        .output()
        .expect("the binary runs")
}

fn check(what: &str, out: &Output, expected: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{what}: exit code\n{stderr}");
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    assert!(
        stderr.contains(expected),
        "{what}: expected {expected:?} in\n{stderr}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Syntax ok"));
}

#[test]
fn malformed_tasklists() {
    let cases = cases("tasklists");
    assert!(cases.len() >= 15);
    for (file, expected) in cases {
        let path = corpus("tasklists").join(&file);
        let out = run(
            env!("CARGO_BIN_EXE_deploy"),
            &["--tasklist", path.to_str().unwrap(), "--dry-run"],
        );
        check(&file, &out, &expected);
    }
}

#[test]
fn malformed_configs() {
    let cases = cases("configs");
    assert!(cases.len() >= 8);
    for (file, expected) in cases {
        let path = corpus("configs").join(&file);
        let out = run(
            env!("CARGO_BIN_EXE_deploy"),
            &["--config", path.to_str().unwrap(), "--dry-run"],
        );
        check(&file, &out, &expected);
    }
}

#[test]
fn malformed_book_libraries() {
    let cases = cases("books");
    assert!(cases.len() >= 6);
    for (dir, expected) in cases {
        let path = corpus("books").join(&dir);
        let out = run(
            env!("CARGO_BIN_EXE_books"),
            &["check", "--library", path.to_str().unwrap()],
        );
        check(&dir, &out, &expected);
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
    let deep = write(
        "deep.json",
        format!("{}{}", "[".repeat(200_000), "]".repeat(200_000)).as_bytes(),
    );
    let huge_name = write(
        "huge.json",
        format!(
            r#"{{"name": "{}", "stages": [{{"name": "s", "concurrency": 0, "tasks": []}}]}}"#,
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
            r#"{{"stages": [{{"name": "s", "concurrency": 1, "tasks": [{}]}}]}}"#,
            vec![r#"{"command": "nope"}"#; 10_000].join(",")
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
        let out = run(
            env!("CARGO_BIN_EXE_deploy"),
            &[flag, path.to_str().unwrap(), "--dry-run"],
        );
        check(&path.display().to_string(), &out, expected);
    }
}
