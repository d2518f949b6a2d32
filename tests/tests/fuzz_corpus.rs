//! Replays the committed fuzz corpus on the stable toolchain: every file of
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` goes through the same check the
//! `cargo fuzz` target makes (the checks are `fuzz/src/lib.rs`, compiled here as a module), so
//! CI exercises what fuzzing found without nightly or cargo-fuzz.

#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("reading the corpus").path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// Runs `check` on every input of `target`; fails naming each input that broke it.
fn replay(target: &str, check: fn(&[u8])) {
    let files = inputs(target);
    assert!(
        !files.is_empty(),
        "no corpus for {target}: fuzz/corpus/{target}/ is empty or missing"
    );
    let mut failed = Vec::new();
    for file in &files {
        let data = std::fs::read(file).expect("reading a corpus file");
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            failed.push(file.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} {target} inputs broke the check (see the panics above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn tasklist_corpus() {
    replay("tasklist", checks::tasklist);
}

#[test]
fn config_corpus() {
    replay("config", checks::config);
}

#[test]
fn book_corpus() {
    replay("book", checks::book);
}

#[test]
fn shell_quote_corpus() {
    replay("shell_quote", checks::shell_quote);
}
