//! Commands on a session of their own (stdin data, uploads, long lines, shells not reused) do
//! not outlive their client: sshd sends such a command no signal when the connection ends, so
//! a watcher started beside it kills its process group once the session's sshd is gone. What
//! a user relies on: a dead controller or worker leaves no command of its running on the host
//! (it would otherwise run beside the same entry run again by another worker), and a command
//! that ends leaves nothing behind.
//!
//! The client whose connection ends is this test binary run again as a child process
//! ([`client_process`], selected by `ORPHANS_CLIENT`), SIGKILLed while its command runs: the
//! way a worker dies, with no chance to cancel or kill anything itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use deployer_core::{ExecOptions, PutOptions, RemoteHost};
use deployer_remote::testing::TestSshd;
use deployer_remote::{SshConfig, SshHost, SshOptions};

#[path = "common/procs.rs"]
mod procs;
use procs::descendants;

/// The watcher's `$0`, as `exec.rs` names it.
const WATCHER_NAME: &str = "deployer-orphan-watch";

/// The fields of `/proc/PID/stat` after the command name (state, ppid, pgrp, session…).
fn stat(pid: u32) -> Option<Vec<String>> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(") ")? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether `pid` still runs (a zombie has ended: its parent has not collected it yet).
fn running(pid: u32) -> bool {
    stat(pid).is_some_and(|f| f[0] != "Z")
}

/// The watchers started for the command `pid` (their command line names the watcher and
/// the pid).
fn watchers_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let pid_arg = pid.to_string();
        if args.contains(&WATCHER_NAME.as_bytes()) && args.contains(&pid_arg.as_bytes()) {
            out.push(p);
        }
    }
    out
}

/// A directory the test user on the host (`deployer-test`, not this process's user) may
/// write to.
fn shared_dir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Waits up to `limit` for `path` to hold a pid (a line of digits).
fn wait_for_pid(path: &Path, limit: Duration) -> u32 {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(line) = text.lines().next()
            && let Ok(pid) = line.trim().parse()
        {
            return pid;
        }
        assert!(Instant::now() < deadline, "no pid in {}", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs [`client_process`] as a child: it connects to `sshd` and runs `mode`'s command,
/// which writes its pid (`$$`, the group leader) to `pid_file`.
fn spawn_client(sshd: &TestSshd, mode: &str, pid_file: &Path) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "client_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ORPHANS_CLIENT", mode)
        .env("ORPHANS_ADDRESS", sshd.address())
        .env("ORPHANS_PORT", sshd.port().to_string())
        .env("ORPHANS_USER", sshd.user())
        .env("ORPHANS_KEY", sshd.client_key())
        .env("ORPHANS_KNOWN_HOSTS", sshd.known_hosts())
        .env("ORPHANS_PID_FILE", pid_file)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// The command every client mode runs: its pid to the file, a background `sleep` and a
/// foreground one (neither reads stdin nor writes output, so nothing else would stop them).
fn orphan_line(pid_file: &str) -> String {
    format!("echo $$ > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; sleep 30 & sleep 30")
}

/// Not a test of its own: the client [`spawn_client`] runs (this binary again, with
/// `ORPHANS_CLIENT` set), killed by the test while its command runs. Without the variable it
/// does nothing.
#[test]
fn client_process() {
    let Ok(mode) = std::env::var("ORPHANS_CLIENT") else {
        return;
    };
    let var = |k: &str| std::env::var(k).unwrap();
    let options = SshOptions::new()
        .identity_file(var("ORPHANS_KEY"))
        .default_identities(false)
        .agent(false)
        .known_hosts_file(var("ORPHANS_KNOWN_HOSTS"))
        .ssh_config(SshConfig::new())
        .reuse_shells(mode != "no-reuse");
    let host = SshHost::with_user_port(
        var("ORPHANS_ADDRESS"),
        Some(&var("ORPHANS_USER")),
        Some(var("ORPHANS_PORT").parse().unwrap()),
        options,
    )
    .unwrap();
    let line = orphan_line(&var("ORPHANS_PID_FILE"));
    let exec = match mode.as_str() {
        // As `execute_command` sends `env` secrets: on its stdin.
        "stdin" => ExecOptions::new().stdin(b"SECRET=x\n".to_vec()),
        "no-reuse" => ExecOptions::new(),
        // Under sudo the command runs as root: the watcher kills it through `sudo -n`.
        "sudo" => ExecOptions::new().stdin(b"x".to_vec()).sudo(true),
        other => panic!("unknown client mode {other}"),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let out = rt.block_on(host.execute(&line, &exec));
    panic!("the command should have been killed with its client, not end: {out:?}");
}

/// The client process, killed when a test fails before it does.
struct Client(Child);

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The name of process `pid` (empty when it is gone).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Starts a client in `mode`, SIGKILLs it once its command runs, and checks that the
/// command's whole process tree is gone within 3 s.
fn killed_client_leaves_nothing_running(mode: &str) {
    let sshd = TestSshd::start().unwrap();
    let dir = shared_dir();
    let pid_file: PathBuf = dir.path().join("pid");
    let mut client = Client(spawn_client(&sshd, mode, &pid_file));
    let pid = wait_for_pid(&pid_file, Duration::from_secs(20));
    // sshd makes the command's shell a session leader, so it leads its process group: the
    // group the watcher (and `kill_group`) kill. Under sudo the pid written is that of the
    // `sh` under sudo, in the same group.
    let leader: u32 = stat(pid).unwrap()[2].parse().unwrap();
    if mode != "sudo" {
        assert_eq!(leader, pid, "{mode}: the command leads its group");
    }
    assert_eq!(
        stat(leader).unwrap()[3],
        leader.to_string(),
        "{mode}: a session leader"
    );
    // Both sleeps started (the foreground one after the background one).
    let deadline = Instant::now() + Duration::from_secs(5);
    let tree = loop {
        let tree = descendants(leader);
        if tree.iter().filter(|p| comm(**p) == "sleep").count() >= 2 {
            break tree;
        }
        assert!(
            Instant::now() < deadline,
            "{mode}: the sleeps did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    for pid in &tree {
        assert_eq!(stat(*pid).unwrap()[2], leader.to_string(), "{mode}: {pid}");
    }
    assert_eq!(watchers_of(leader).len(), 1, "{mode}: one watcher");

    client.0.kill().unwrap();
    client.0.wait().unwrap();
    let killed = Instant::now();
    let mut all = tree.clone();
    all.push(leader);
    while all.iter().any(|p| running(*p)) {
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "{mode}: still running {:?} after the client died: {:?}",
            killed.elapsed(),
            all.iter().filter(|p| running(**p)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "{mode}: command tree of {} processes gone {:?} after the client was killed",
        all.len(),
        killed.elapsed()
    );
    // The watcher ended with what it killed.
    let deadline = Instant::now() + Duration::from_secs(3);
    while !watchers_of(leader).is_empty() {
        assert!(Instant::now() < deadline, "{mode}: the watcher outlived it");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_command_with_stdin_data_dies_with_its_client() {
    killed_client_leaves_nothing_running("stdin");
}

#[test]
fn a_command_without_shell_reuse_dies_with_its_client() {
    killed_client_leaves_nothing_running("no-reuse");
}

#[test]
fn a_command_under_sudo_dies_with_its_client() {
    killed_client_leaves_nothing_running("sudo");
}

/// Waits up to 3 s for the watchers of `pid` to be gone.
fn wait_no_watcher(pid: u32, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while !watchers_of(pid).is_empty() {
        assert!(
            Instant::now() < deadline,
            "{what}: a watcher of {pid} is left on the host: {:?}",
            watchers_of(pid)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_end_leave_no_watcher_and_keep_their_output() {
    let sshd = TestSshd::start().unwrap();
    let host = std::sync::Arc::new(sshd.host());
    let dir = shared_dir();

    // A command that runs a while: its watcher is there, then gone once it ended.
    let pid_file = dir.path().join("pid");
    let line = format!(
        "echo $$ > {p}.tmp && mv {p}.tmp {p}; sleep 1.5",
        p = pid_file.display()
    );
    let running = {
        let host = host.clone();
        tokio::spawn(async move {
            host.execute(&line, &ExecOptions::new().stdin(b"x".to_vec()))
                .await
        })
    };
    let pid = tokio::task::spawn_blocking({
        let pid_file = pid_file.clone();
        move || wait_for_pid(&pid_file, Duration::from_secs(20))
    })
    .await
    .unwrap();
    assert_eq!(watchers_of(pid).len(), 1, "a watcher beside the command");
    let out = running.await.unwrap().unwrap();
    assert!(out.success(), "{out:?}");
    wait_no_watcher(pid, "a command that ran 1.5 s");

    // Output, stdin and status exactly as without the watcher; a quick command too.
    let out = host
        .execute(
            "cat; printf 'a\\nb'; echo err >&2; echo $$ >&2; exit 3",
            &ExecOptions::new().stdin(b"in\n".to_vec()),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(3));
    assert_eq!(out.stdout, b"in\na\nb");
    let err = out.stderr_str();
    let (first, pid) = err.split_once('\n').unwrap();
    assert_eq!(first, "err");
    let pid: u32 = pid.trim().parse().unwrap();
    wait_no_watcher(pid, "a quick command");

    // Uploads on a session of their own: a directory (a tar on stdin) and shells off.
    let src = dir.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"data").unwrap();
    let dest = dir.path().join("dest");
    host.put(&src, dest.to_str().unwrap(), &PutOptions::default())
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest.join("f")).unwrap(), b"data");
    let plain = sshd.host_with(sshd.options().reuse_shells(false));
    let out = plain.execute("echo $$", &ExecOptions::new()).await.unwrap();
    let pid: u32 = out.stdout_str().trim().parse().unwrap();
    wait_no_watcher(pid, "a command with shells off");
}
