//! Process helpers for the unit tests of remote process groups (kill line, orphan watcher).

use std::process::{Child, Command, Stdio};

/// Whether process `pid` runs (exists and is not a zombie).
pub(super) fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(") ").unwrap()..].starts_with(") Z"))
}

/// Starts `command`, which prints pids on its first line of stdout; the child and those pids.
pub(super) fn spawn_reporting_pids(command: &mut Command) -> (Child, Vec<u32>) {
    let mut child = command.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let pids = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    (child, pids)
}
