//! The `RemoteHost` contract, as one suite run against every implementation
//! (`tests/local.rs`, `tests/ssh.rs`). Each test gets a fresh host from the caller.

#![allow(dead_code)]

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::{
    ExecOptions, OutputSink, PutOptions, RemoteError, RemoteHost, ShellCommand, Stream,
};

/// Runs `cmd`, expecting it to exit 0, and returns its stdout.
pub async fn ok(host: &dyn RemoteHost, cmd: &str) -> String {
    let out = host.execute(cmd, &ExecOptions::new()).await.unwrap();
    assert!(
        out.success(),
        "`{cmd}` failed on {}: {:?} {}",
        host.name(),
        out.exit_status,
        out.stderr_str()
    );
    out.stdout_str()
}

/// A scratch directory on the host, removed by [`Scratch::cleanup`].
pub struct Scratch {
    pub path: String,
}

impl Scratch {
    pub async fn new(host: &dyn RemoteHost) -> Scratch {
        let path = ok(host, "mktemp -d").await.trim().to_string();
        Scratch { path }
    }
    pub fn join(&self, name: &str) -> String {
        format!("{}/{}", self.path, name)
    }
    pub async fn cleanup(self, host: &dyn RemoteHost) {
        let cmd = ShellCommand::new("rm")
            .arg("-rf")
            .arg(&self.path)
            .build()
            .unwrap();
        let _ = host.execute(&cmd, &ExecOptions::new().sudo(true)).await;
    }
}

/// Whether process `pid` is alive on the host (a zombie counts as gone).
pub async fn alive(host: &dyn RemoteHost, pid: u32) -> bool {
    let cmd = format!(
        "s=$(cat /proc/{pid}/stat 2>/dev/null) || exit 1; case \"$s\" in *\") Z \"*) exit 1;; esac"
    );
    let out = host.execute(&cmd, &ExecOptions::new()).await.unwrap();
    out.success()
}

/// Waits (on the host, bounded to 10 s) until `pid` is gone; returns whether it went.
pub async fn gone_within_10s(host: &dyn RemoteHost, pid: u32) -> bool {
    let cmd = format!(
        "i=0; while [ $i -lt 200 ]; do s=$(cat /proc/{pid}/stat 2>/dev/null) || exit 0; \
         case \"$s\" in *\") Z \"*) exit 0;; esac; i=$((i+1)); sleep 0.05; done; exit 1"
    );
    host.execute(&cmd, &ExecOptions::new())
        .await
        .unwrap()
        .success()
}

pub async fn exit_codes(host: Arc<dyn RemoteHost>) {
    let h = host.as_ref();
    let out = h.execute("true", &ExecOptions::new()).await.unwrap();
    assert_eq!(out.exit_status, Some(0));
    assert!(out.success());
    let out = h.execute("exit 7", &ExecOptions::new()).await.unwrap();
    assert_eq!(out.exit_status, Some(7));
    assert!(!out.success());
    let out = h.execute("false", &ExecOptions::new()).await.unwrap();
    assert_eq!(out.exit_status, Some(1));
    // A line starting with `-` is a command, never options of the shell running it.
    for sudo in [false, true] {
        let out = h
            .execute(
                "--version 2>/dev/null || echo fallback",
                &ExecOptions::new().sudo(sudo),
            )
            .await
            .unwrap();
        assert_eq!(out.stdout_str(), "fallback\n", "sudo {sudo}: {out:?}");
    }
}

pub async fn stdout_and_stderr_are_separate(host: Arc<dyn RemoteHost>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let l = lines.clone();
    let sink: OutputSink = Arc::new(move |s, line| l.lock().unwrap().push((s, line.to_string())));
    let out = host
        .execute(
            "echo out1; echo err1 >&2; printf 'out2'; printf 'err2' >&2",
            &ExecOptions::new().output(sink),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout, b"out1\nout2");
    assert_eq!(out.stderr, b"err1\nerr2");
    let mut seen = lines.lock().unwrap().clone();
    seen.sort_by_key(|(s, l)| (*s == Stream::Stderr, l.clone()));
    assert_eq!(
        seen,
        [
            (Stream::Stdout, "out1".to_string()),
            (Stream::Stdout, "out2".to_string()),
            (Stream::Stderr, "err1".to_string()),
            (Stream::Stderr, "err2".to_string()),
        ]
    );
    assert!(out.duration > Duration::ZERO);
}

pub async fn large_output(host: Arc<dyn RemoteHost>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let sink: OutputSink = Arc::new(move |s, line| {
        if s == Stream::Stdout {
            assert_eq!(line, "abcdefghi");
            c.fetch_add(1, Ordering::Relaxed);
        }
    });
    let out = host
        .execute(
            "yes abcdefghi | head -c 10485760; echo done >&2",
            &ExecOptions::new().output(sink),
        )
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout.len(), 10 * 1024 * 1024);
    assert_eq!(count.load(Ordering::Relaxed), 1024 * 1024);
    assert_eq!(out.stderr, b"done\n");
}

pub async fn stdin_is_passed(host: Arc<dyn RemoteHost>) {
    let data: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let out = host
        .execute("cat", &ExecOptions::new().stdin(data.clone()))
        .await
        .unwrap();
    assert!(out.success());
    assert_eq!(out.stdout, data);
    // Without stdin the command sees end of input at once.
    let out = host
        .execute("cat; echo end", &ExecOptions::new())
        .await
        .unwrap();
    assert_eq!(out.stdout, b"end\n");
    // A command that ignores its input still finishes.
    let out = host
        .execute("true", &ExecOptions::new().stdin(vec![b'x'; 1 << 20]))
        .await
        .unwrap();
    assert!(out.success());
}

pub async fn env_is_set(host: Arc<dyn RemoteHost>) {
    let value = "it's \"quoted\" $(touch /tmp/pwned) `id` ; \n new line";
    let out = host
        .execute(
            "printf '%s|%s' \"$DEPLOY_A\" \"$DEPLOY_B\"",
            &ExecOptions::new()
                .env("DEPLOY_A", value)
                .env("DEPLOY_B", "2"),
        )
        .await
        .unwrap();
    assert_eq!(out.stdout_str(), format!("{value}|2"));
    let err = host
        .execute("true", &ExecOptions::new().env("BAD NAME", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.host(), host.name());
}

pub async fn hostile_arguments_round_trip(host: Arc<dyn RemoteHost>) {
    let args = [
        "plain",
        "with space",
        "it's",
        "double \" quote",
        "$(touch /tmp/deployer-pwned)",
        "`id`",
        "; rm -rf /tmp/nothing",
        "a\nnew line",
        "tab\there",
        "back\\slash",
        "*",
        "~",
        "-n",
        "",
        "ünïcödé ✓",
        "&& echo injected",
        "'; echo injected; '",
    ];
    let cmd = ShellCommand::new("printf")
        .arg("%s\\0")
        .args(args)
        .build()
        .unwrap();
    let out = host.execute(&cmd, &ExecOptions::new()).await.unwrap();
    assert!(out.success(), "{}", out.stderr_str());
    let got: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
    let want: Vec<&[u8]> = args
        .iter()
        .map(|a| a.as_bytes())
        .chain([&b""[..]])
        .collect();
    assert_eq!(got, want);
    // The same through sudo and with environment variables.
    let out = host
        .execute(&cmd, &ExecOptions::new().sudo(true).env("X", "1"))
        .await
        .unwrap();
    let got: Vec<&[u8]> = out.stdout.split(|&b| b == 0).collect();
    assert_eq!(got, want);
}

pub async fn sudo_runs_as_root(host: Arc<dyn RemoteHost>) {
    let out = host
        .execute("id -u", &ExecOptions::new().sudo(true).env("A", "b c"))
        .await
        .unwrap();
    assert_eq!(out.stdout_str().trim(), "0", "{}", out.stderr_str());
}

pub async fn timeout_kills_the_command(host: Arc<dyn RemoteHost>) {
    let h = host.as_ref();
    let dir = Scratch::new(h).await;
    let pidfile = dir.join("pid");
    let cmd = format!("sleep 1000 & echo $! > {pidfile}; wait");
    let err = h
        .execute(
            &cmd,
            &ExecOptions::new().timeout(Duration::from_millis(1500)),
        )
        .await
        .unwrap_err();
    match &err {
        RemoteError::Timeout {
            host: name, after, ..
        } => {
            assert_eq!(name, h.name());
            assert_eq!(*after, Duration::from_millis(1500));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    let pid: u32 = ok(h, &format!("cat {pidfile}"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(
        gone_within_10s(h, pid).await,
        "the timed-out command's child {pid} still runs"
    );
    // The host is still usable.
    assert_eq!(ok(h, "echo again").await, "again\n");
    dir.cleanup(h).await;
}

pub async fn timeout_kills_a_sudo_command(host: Arc<dyn RemoteHost>) {
    let h = host.as_ref();
    let dir = Scratch::new(h).await;
    let pidfile = dir.join("pid");
    let cmd = format!("sleep 1000 & echo $! > {pidfile}; wait");
    let err = h
        .execute(
            &cmd,
            &ExecOptions::new()
                .sudo(true)
                .timeout(Duration::from_millis(1500)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    let pid: u32 = ok(h, &format!("cat {pidfile}"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(
        gone_within_10s(h, pid).await,
        "the timed-out sudo command's child {pid} still runs"
    );
    dir.cleanup(h).await;
}

pub async fn dropping_the_future_kills_the_command(host: Arc<dyn RemoteHost>) {
    let h = host.as_ref();
    let dir = Scratch::new(h).await;
    let pidfile = dir.join("pid");
    // Write the pid, then block; the test drops the future as soon as the pid is written.
    let cmd = format!("sleep 1000 & echo $! > {pidfile}; echo started; wait");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let tx = Mutex::new(Some(tx));
    let sink: OutputSink = Arc::new(move |_, line| {
        if line == "started"
            && let Some(tx) = tx.lock().unwrap().take()
        {
            let _ = tx.send(());
        }
    });
    let opts = ExecOptions::new().output(sink);
    tokio::select! {
        r = h.execute(&cmd, &opts) => panic!("command finished: {r:?}"),
        r = rx => r.unwrap(),
    }
    let pid: u32 = ok(h, &format!("cat {pidfile}"))
        .await
        .trim()
        .parse()
        .unwrap();
    assert!(
        gone_within_10s(h, pid).await,
        "the dropped command's child {pid} still runs"
    );
    dir.cleanup(h).await;
}

fn write_file(path: &Path, len: usize, seed: u8) {
    let data: Vec<u8> = (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    std::fs::write(path, data).unwrap();
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

async fn sha(host: &dyn RemoteHost, path: &str) -> String {
    let cmd = ShellCommand::new("sha256sum").arg(path).build().unwrap();
    let out = host
        .execute(&cmd, &ExecOptions::new().sudo(true))
        .await
        .unwrap();
    assert!(out.success(), "{cmd}: {}", out.stderr_str());
    out.stdout_str()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

fn local_sha(path: &Path) -> String {
    let out = std::process::Command::new("sha256sum")
        .arg(path)
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

async fn mode(host: &dyn RemoteHost, path: &str) -> String {
    ok(
        host,
        &ShellCommand::new("stat")
            .arg("-c")
            .arg("%a")
            .arg(path)
            .build()
            .unwrap(),
    )
    .await
    .trim()
    .to_string()
}

async fn upload_file(host: Arc<dyn RemoteHost>, len: usize) {
    let h = host.as_ref();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("payload.bin");
    write_file(&src, len, 7);
    set_mode(&src, 0o751);
    let dir = Scratch::new(h).await;
    let dest = dir.join("dest file.bin");
    h.put(&src, &dest, &PutOptions::default()).await.unwrap();
    assert_eq!(sha(h, &dest).await, local_sha(&src));
    assert_eq!(mode(h, &dest).await, "751");
    // Uploading again replaces the file; an explicit mode wins.
    write_file(&src, len / 2, 9);
    h.put(
        &src,
        &dest,
        &PutOptions {
            sudo: false,
            mode: Some(0o600),
        },
    )
    .await
    .unwrap();
    assert_eq!(sha(h, &dest).await, local_sha(&src));
    assert_eq!(mode(h, &dest).await, "600");
    // Only the destination is left: no temporary files.
    assert_eq!(
        ok(h, &format!("ls -A {}", dir.path)).await,
        "dest file.bin\n"
    );
    // And it comes back unchanged.
    let back = local.path().join("back.bin");
    h.get(&dest, &back).await.unwrap();
    assert_eq!(local_sha(&back), local_sha(&src));
    dir.cleanup(h).await;
}

pub async fn upload_file_1mib(host: Arc<dyn RemoteHost>) {
    upload_file(host, 1 << 20).await;
}

pub async fn upload_file_100mib(host: Arc<dyn RemoteHost>) {
    upload_file(host, 100 << 20).await;
}

async fn upload_dir(host: Arc<dyn RemoteHost>, len: usize) {
    let h = host.as_ref();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("tree");
    std::fs::create_dir_all(src.join("sub dir/deeper")).unwrap();
    write_file(&src.join("big.bin"), len, 1);
    write_file(&src.join("sub dir/a.txt"), 10, 2);
    write_file(&src.join("sub dir/deeper/run.sh"), 100, 3);
    write_file(&src.join("empty"), 0, 0);
    set_mode(&src.join("sub dir/deeper/run.sh"), 0o755);
    set_mode(&src.join("sub dir/a.txt"), 0o640);
    let dir = Scratch::new(h).await;
    let dest = dir.join("release");
    // An old tree at the destination is replaced, not merged.
    ok(
        h,
        &format!("mkdir -p {dest}/stale && touch {dest}/stale/file"),
    )
    .await;
    h.put(&src, &dest, &PutOptions::default()).await.unwrap();
    let listing = ok(h, &format!("cd {dest} && find . | sort")).await;
    assert_eq!(
        listing,
        ".\n./big.bin\n./empty\n./sub dir\n./sub dir/a.txt\n./sub dir/deeper\n./sub dir/deeper/run.sh\n"
    );
    assert_eq!(
        sha(h, &format!("{dest}/big.bin")).await,
        local_sha(&src.join("big.bin"))
    );
    assert_eq!(
        mode(h, &format!("{dest}/sub dir/deeper/run.sh")).await,
        "755"
    );
    assert_eq!(mode(h, &format!("{dest}/sub dir/a.txt")).await, "640");
    assert_eq!(ok(h, &format!("ls -A {}", dir.path)).await, "release\n");
    dir.cleanup(h).await;
}

pub async fn upload_dir_1mib(host: Arc<dyn RemoteHost>) {
    upload_dir(host, 1 << 20).await;
}

pub async fn upload_dir_100mib(host: Arc<dyn RemoteHost>) {
    upload_dir(host, 100 << 20).await;
}

pub async fn sudo_upload(host: Arc<dyn RemoteHost>) {
    let h = host.as_ref();
    let local = tempfile::tempdir().unwrap();
    let src = local.path().join("conf");
    write_file(&src, 4096, 5);
    set_mode(&src, 0o640);
    let dir = Scratch::new(h).await;
    // A directory only root can write to.
    let root_dir = dir.join("root-only");
    let mk = format!("mkdir {root_dir} && chown 0:0 {root_dir} && chmod 755 {root_dir}");
    let out = h
        .execute(&mk, &ExecOptions::new().sudo(true))
        .await
        .unwrap();
    assert!(out.success(), "{}", out.stderr_str());
    let dest = format!("{root_dir}/app.conf");
    h.put(
        &src,
        &dest,
        &PutOptions {
            sudo: true,
            mode: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(sha(h, &dest).await, local_sha(&src));
    assert_eq!(mode(h, &dest).await, "640");
    let owner = ok(h, &format!("stat -c %u {dest}")).await;
    assert_eq!(owner.trim(), "0");
    // A directory, too.
    let tree = local.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    write_file(&tree.join("f"), 100, 1);
    let dest_tree = format!("{root_dir}/tree");
    h.put(
        &tree,
        &dest_tree,
        &PutOptions {
            sudo: true,
            mode: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(ok(h, &format!("ls -A {dest_tree}")).await, "f\n");
    assert_eq!(
        ok(h, &format!("ls -A {root_dir}")).await,
        "app.conf\ntree\n"
    );
    dir.cleanup(h).await;
}

pub async fn get_and_file_exists(host: Arc<dyn RemoteHost>) {
    let h = host.as_ref();
    let dir = Scratch::new(h).await;
    let file = dir.join("x");
    assert!(!h.file_exists(&file).await.unwrap());
    assert!(h.file_exists(&dir.path).await.unwrap());
    ok(
        h,
        &format!(
            "printf 'content' > {file} && ln -s {dir}/missing {dir}/dangling",
            dir = dir.path
        ),
    )
    .await;
    assert!(h.file_exists(&file).await.unwrap());
    assert!(h.file_exists(&dir.join("dangling")).await.unwrap());
    assert!(!h.file_exists(&dir.join("x/below-a-file")).await.unwrap());
    let local = tempfile::tempdir().unwrap();
    let target = local.path().join("got");
    h.get(&file, &target).await.unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"content");
    // A missing source is an error naming the host, and leaves nothing behind.
    let err = h
        .get(&dir.join("nope"), &local.path().join("nope"))
        .await
        .unwrap_err();
    assert_eq!(err.host(), h.name());
    assert_eq!(std::fs::read_dir(local.path()).unwrap().count(), 1);
    // Uploading a missing local file fails too.
    let err = h
        .put(
            &local.path().join("missing"),
            &dir.join("y"),
            &PutOptions::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.host(), h.name());
    dir.cleanup(h).await;
}

pub async fn fifty_concurrent_commands(host: Arc<dyn RemoteHost>) {
    let futures = (0..50).map(|i| {
        let host = host.clone();
        async move {
            let out = host
                .execute(&format!("sleep 0.2; echo {i}"), &ExecOptions::new())
                .await
                .unwrap();
            assert!(out.success(), "{}", out.stderr_str());
            out.stdout_str()
        }
    });
    let outputs = futures::future::join_all(futures).await;
    for (i, out) in outputs.iter().enumerate() {
        assert_eq!(out, &format!("{i}\n"));
    }
}

/// Defines one `#[tokio::test]` per contract test, each calling `$make().await` for its host.
#[macro_export]
macro_rules! contract_tests {
    ($make:path) => {
        $crate::contract_tests!(@each $make;
            exit_codes, stdout_and_stderr_are_separate, large_output, stdin_is_passed,
            env_is_set, hostile_arguments_round_trip, sudo_runs_as_root,
            timeout_kills_the_command, timeout_kills_a_sudo_command, dropping_the_future_kills_the_command,
            upload_file_1mib, upload_file_100mib, upload_dir_1mib, upload_dir_100mib,
            sudo_upload, get_and_file_exists, fifty_concurrent_commands);
    };
    (@each $make:path; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                let host = $make().await;
                contract::$name(host).await;
            }
        )*
    };
}
