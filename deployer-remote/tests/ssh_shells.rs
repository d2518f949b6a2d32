//! Commands on reused remote shells (the default): what a user relies on is that reuse is
//! invisible — every command starts clean, output and statuses are exact, a broken or killed
//! shell is replaced, and the server's session limit is never exceeded.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deployer_core::{ExecOptions, PutOptions, RemoteError, RemoteHost};
use deployer_remote::SshHost;
use deployer_remote::testing::TestSshd;

#[path = "common/procs.rs"]
mod procs;
use procs::descendants;

async fn run(host: &SshHost, line: &str) -> String {
    let out = host.execute(line, &ExecOptions::new()).await.unwrap();
    assert!(out.success(), "{line}: {out:?}");
    out.stdout_str().to_string()
}

#[tokio::test]
async fn commands_share_a_shell_and_nothing_leaks_between_them() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host();
    // The same shell (the command's parent) runs one command after another.
    let first = run(&host, "echo $PPID").await;
    let second = run(&host, "echo $PPID").await;
    assert_eq!(first, second, "commands should run on one reused shell");
    // A command's directory, variables, umask, traps and functions end with it.
    run(
        &host,
        "cd /; export LEAK=1; umask 077; f() { echo leaked; }; trap 'echo trapped' EXIT",
    )
    .await;
    let out = run(
        &host,
        "pwd; echo ${LEAK-unset}; umask; command -v f || echo no-f",
    )
    .await;
    let home = run(&host, "echo $HOME").await;
    assert_eq!(
        out,
        format!("{}unset\n0022\nno-f\n", home),
        "state leaked from one command into the next"
    );
    // Exit statuses, stderr, output without a final newline and an empty command.
    let out = host
        .execute(
            "printf 'no newline'; echo oops >&2; exit 7",
            &ExecOptions::new(),
        )
        .await
        .unwrap();
    assert_eq!(out.exit_status, Some(7));
    assert_eq!(out.stdout, b"no newline");
    assert_eq!(out.stderr, b"oops\n");
    let out = host.execute("", &ExecOptions::new()).await.unwrap();
    assert_eq!(out.exit_status, Some(0));
    assert!(out.stdout.is_empty() && out.stderr.is_empty());
    // A line of the command that is exactly what a marker looks like is still just output.
    let out = run(&host, "printf '\\036abcE0\\n'; echo after").await;
    assert_eq!(out, "\u{1e}abcE0\nafter\n");
    // Still the same shell after all that.
    assert_eq!(run(&host, "echo $PPID").await, first);
    assert_eq!(host.connection_count().await, 1);
    assert_eq!(
        sshd.wait_for_log("Accepted publickey", 1, Duration::from_secs(5)),
        1
    );
}

#[tokio::test]
async fn without_reuse_every_command_gets_a_session() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host_with(sshd.options().reuse_shells(false));
    // The command's parent is the connection's sshd itself, no shell in between.
    assert_eq!(run(&host, "ps -o comm= -p $PPID").await.trim(), "sshd");
    let reused = sshd.host();
    assert_eq!(run(&reused, "ps -o comm= -p $PPID").await.trim(), "sh");
}

#[tokio::test]
async fn a_process_left_behind_does_not_hold_the_command() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host();
    // A daemon that keeps the command's stdout and stderr open: on a plain SSH session the
    // command would not end before it does.
    let started = Instant::now();
    let out = host
        .execute("sleep 5 & echo started", &ExecOptions::new())
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), "started\n");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the command waited for the process it left behind: {:?}",
        started.elapsed()
    );
    assert_eq!(run(&host, "echo next").await, "next\n");
}

#[tokio::test]
async fn a_shell_killed_while_idle_is_replaced_and_one_killed_mid_command_is_an_error() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host();
    let agent = run(&host, "echo $PPID").await;
    // Kill the idle shell shortly after this command returned.
    run(
        &host,
        "(sleep 0.3; kill -9 $PPID) </dev/null >/dev/null 2>&1 &",
    )
    .await;
    let gone = |pid: &str| !std::path::Path::new(&format!("/proc/{}", pid.trim())).exists();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !gone(&agent) {
        assert!(Instant::now() < deadline, "the shell was not killed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The next command notices and starts a new shell: no error for the user.
    let replaced = run(&host, "echo $PPID").await;
    assert_ne!(replaced, agent);
    // A shell killed while its command runs: the command fails, naming the host and what
    // happened; the connection stays and the next command works.
    let err = host
        .execute("kill -9 $PPID; sleep 5", &ExecOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Other { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(sshd.address()), "{text}");
    assert!(text.contains("remote shell"), "{text}");
    assert_eq!(run(&host, "echo ok").await, "ok\n");
    assert_eq!(host.connection_count().await, 1);
}

#[tokio::test]
async fn idle_shells_give_way_to_uploads_within_the_session_limit() {
    // MaxSessions 6 on the server, 4 channels per connection on the client (2 kept for
    // kills), 1 connection: 4 idle shells must be closed to let 4 uploads have sessions.
    let sshd = TestSshd::builder()
        // Appended lines come after the defaults, where only a Match block overrides them.
        .config_line("Match all")
        .config_line("  MaxSessions 6")
        .start()
        .unwrap();
    let host = Arc::new(sshd.host_with(sshd.options().max_channels(4).max_connections(1)));
    let runs = (0..4).map(|_| {
        let host = host.clone();
        async move { run(&host, "sleep 0.2; echo $PPID").await }
    });
    let shells = futures::future::join_all(runs).await;
    let distinct: std::collections::HashSet<_> = shells.iter().collect();
    assert_eq!(distinct.len(), 4, "four commands at once need four shells");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("f");
    std::fs::write(&local, b"payload").unwrap();
    let remote_dir = run(&host, "mktemp -d").await.trim().to_string();
    let puts = (0..4).map(|i| {
        let host = host.clone();
        let local = local.clone();
        let remote = format!("{remote_dir}/f{i}");
        async move { host.put(&local, &remote, &PutOptions::default()).await }
    });
    for r in futures::future::join_all(puts).await {
        r.unwrap();
    }
    // Commands and uploads mixed.
    let mixed = (0..8).map(|i| {
        let host = host.clone();
        let local = local.clone();
        let remote = format!("{remote_dir}/g{i}");
        async move {
            if i % 2 == 0 {
                host.put(&local, &remote, &PutOptions::default()).await
            } else {
                host.execute("sleep 0.1", &ExecOptions::new())
                    .await
                    .map(|_| ())
            }
        }
    });
    for r in futures::future::join_all(mixed).await {
        r.unwrap();
    }
    let listing = run(&host, &format!("cat {remote_dir}/f0 {remote_dir}/g6")).await;
    assert_eq!(listing, "payloadpayload");
    assert_eq!(host.connection_count().await, 1);
    assert!(
        !sshd.logs().contains("no more sessions"),
        "the server's session limit was hit:\n{}",
        sshd.logs()
    );
}

#[tokio::test]
async fn a_timed_out_command_is_killed_and_the_next_one_runs_on_a_fresh_shell() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host();
    let before = run(&host, "echo $PPID").await;
    let marker = format!("deployer-shell-timeout-{}", std::process::id());
    let err = host
        .execute(
            &format!("sh -c 'sleep 30' {marker} & echo $! > /tmp/{marker}.pid; wait"),
            &ExecOptions::new().timeout(Duration::from_millis(500)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    let pid = run(
        &host,
        &format!("cat /tmp/{marker}.pid; rm -f /tmp/{marker}.pid"),
    )
    .await
    .trim()
    .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            Instant::now() < deadline,
            "the timed-out command's child {pid} is still running"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = run(&host, "echo $PPID").await;
    assert_ne!(before, after, "a cancelled command's shell is not reused");
}

#[tokio::test]
async fn uploads_go_through_the_shell_byte_for_byte() {
    // sshd logs every session channel it opens at DEBUG1.
    let sshd = TestSshd::builder()
        .config_line("Match all")
        .config_line("  LogLevel DEBUG1")
        .start()
        .unwrap();
    let host = sshd.host();
    let shell = run(&host, "echo $PPID").await;
    // 3 MiB of every byte value, with what looks like the shell's markers in it.
    let mut data: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i * 7 % 256) as u8).collect();
    data.extend_from_slice(b"\n\x1eE0\n\x1e");
    let dir = tempfile::tempdir().unwrap();
    let local = dir.path().join("blob");
    std::fs::write(&local, &data).unwrap();
    let remote_dir = run(&host, "mktemp -d").await.trim().to_string();
    let remote = format!("{remote_dir}/blob");
    let opts = PutOptions {
        mode: Some(0o640),
        ..PutOptions::default()
    };
    host.put(&local, &remote, &opts).await.unwrap();
    assert_eq!(std::fs::read(&remote).unwrap(), data);
    assert_eq!(
        run(&host, &format!("stat -c %a {remote}")).await.trim(),
        "640"
    );
    // The upload and the commands around it ran on the same shell.
    assert_eq!(run(&host, "echo $PPID").await, shell);
    // An empty file too.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    host.put(
        &empty,
        &format!("{remote_dir}/empty"),
        &PutOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(std::fs::read(format!("{remote_dir}/empty")).unwrap(), b"");
    assert_eq!(run(&host, "echo $PPID").await, shell);
    // An upload that fails on the host (its directory is not writable): a clear error, the
    // destination untouched, and the next command runs (on a new shell: the failed upload's
    // unread bytes make the old one unusable).
    run(
        &host,
        &format!("mkdir {remote_dir}/ro && chmod 555 {remote_dir}/ro"),
    )
    .await;
    let err = host
        .put(
            &local,
            &format!("{remote_dir}/ro/blob"),
            &PutOptions::default(),
        )
        .await
        .unwrap_err();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(text.contains(&format!("{remote_dir}/ro/blob")), "{text}");
    assert!(text.contains("Permission denied"), "{text}");
    assert!(!std::path::Path::new(&format!("{remote_dir}/ro/blob")).exists());
    // Everything so far, three uploads included, took one session.
    let sessions = || sshd.logs().matches("ctype session").count();
    assert_eq!(sessions(), 1, "{}", sshd.logs());
    assert_eq!(run(&host, "echo ok").await, "ok\n");
    assert_ne!(run(&host, "echo $PPID").await, shell);
    assert_eq!(sessions(), 2);
}

fn signal(sig: &str, pids: &[u32]) {
    let mut cmd = std::process::Command::new("kill");
    cmd.arg(format!("-{sig}"));
    for p in pids {
        cmd.arg(p.to_string());
    }
    let _ = cmd.status();
}

#[tokio::test]
async fn a_frozen_connection_is_dropped_after_the_keepalives_set() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host_with(sshd.options().keepalive(Duration::from_millis(300), 2));
    assert_eq!(run(&host, "echo hi").await, "hi\n");
    // Freeze the processes serving this connection (not the listener): the TCP connection
    // stays open and nothing answers, as with a frozen host.
    let listener: u32 = std::fs::read_to_string(sshd.dir().join("sshd.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let frozen = descendants(listener);
    assert!(!frozen.is_empty());
    signal("STOP", &frozen);
    let started = Instant::now();
    let result = tokio::time::timeout(
        Duration::from_secs(20),
        host.execute("echo again", &ExecOptions::new()),
    )
    .await;
    signal("CONT", &frozen);
    signal("KILL", &frozen);
    let err = result
        .expect("no answer should end in an error, not a hang")
        .unwrap_err();
    assert!(matches!(err, RemoteError::Disconnected { .. }), "{err:?}");
    assert!(err.to_string().contains(sshd.address()), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "noticed after {:?}",
        started.elapsed()
    );
    // The next command connects again.
    assert_eq!(run(&host, "echo back").await, "back\n");
}
