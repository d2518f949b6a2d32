//! Measures `SshHost` against plain OpenSSH on loopback (the figures in the crate docs).
//!
//! ```text
//! cargo run --release -p deployer-remote --features test-fixture --example measure
//! ```
//!
//! Starts a `TestSshd` (run as root, it logs in as the ordinary `deployer-test` user, whose
//! default dotfiles cost nothing), then times:
//! 1. 100 sequential `true` through one `SshHost` connection (connected before timing);
//! 2. the same with plain `ssh`: a new connection per command, and multiplexed over one
//!    `ControlMaster` connection;
//! 3. a 100 MiB upload: `SshHost::put`, `scp` (SFTP protocol) and `ssh 'cat > file'`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use deployer_core::{ExecOptions, PutOptions, RemoteHost};
use deployer_remote::testing::TestSshd;

fn ssh_base(sshd: &TestSshd) -> Vec<String> {
    vec![
        "-i".into(),
        sshd.client_key().display().to_string(),
        "-o".into(),
        format!("UserKnownHostsFile={}", sshd.known_hosts().display()),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        // Debian's client config turns GSSAPI on, which costs a Kerberos lookup per connection.
        "-o".into(),
        "GSSAPIAuthentication=no".into(),
    ]
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn report(what: &str, d: Duration) {
    println!("{what:<58} {:>8.1} ms", d.as_secs_f64() * 1000.0);
}

#[tokio::main]
async fn main() {
    let sshd = TestSshd::start().expect("start sshd");
    let dest = format!("{}@{}", sshd.user(), sshd.address());
    let port = sshd.port().to_string();
    println!(
        "sshd on {}:{} as {}",
        sshd.address(),
        sshd.port(),
        sshd.user()
    );

    // 1. SshHost, one connection.
    let host = sshd.host();
    let start = Instant::now();
    host.connect().await.expect("connect");
    report(
        "SshHost: connect (TCP, key exchange, auth)",
        start.elapsed(),
    );
    let start = Instant::now();
    for _ in 0..100 {
        let out = host.execute("true", &ExecOptions::new()).await.unwrap();
        assert!(out.success());
    }
    report(
        "SshHost: 100 sequential `true`, one connection",
        start.elapsed(),
    );

    // 2. Plain ssh, a connection per command (MEASURE_QUICK=1 skips this slow part).
    let quick = std::env::var_os("MEASURE_QUICK").is_some();
    let start = Instant::now();
    if !quick {
        for _ in 0..100 {
            run(Command::new("ssh")
                .args(ssh_base(&sshd))
                .args(["-p", &port, &dest, "true"]));
        }
        report(
            "ssh: 100 sequential `true`, a connection each",
            start.elapsed(),
        );
    }

    // ... and multiplexed over one ControlMaster connection.
    let sock = sshd.dir().join("cm.sock");
    let control = format!("ControlPath={}", sock.display());
    run(Command::new("ssh")
        .args(ssh_base(&sshd))
        .args(["-o", "ControlMaster=yes", "-o", &control, "-f", "-N"])
        .args(["-p", &port, &dest]));
    let start = Instant::now();
    for _ in 0..100 {
        run(Command::new("ssh")
            .args(ssh_base(&sshd))
            .args(["-o", &control, "-p", &port, &dest, "true"]));
    }
    report(
        "ssh -S (ControlMaster): 100 sequential `true`",
        start.elapsed(),
    );
    run(Command::new("ssh").args(["-o", &control, "-O", "exit", "-p", &port, &dest]));

    // 3. 100 MiB upload.
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("payload.bin");
    let data: Vec<u8> = (0..100u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(&file, &data).unwrap();
    let remote_dir = host
        .execute("mktemp -d", &ExecOptions::new())
        .await
        .unwrap()
        .stdout_str()
        .trim()
        .to_string();
    let target = format!("{remote_dir}/payload.bin");
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        host.put(&file, &target, &PutOptions::default())
            .await
            .unwrap();
        best = best.min(start.elapsed());
    }
    report("SshHost::put: 100 MiB file (best of 3)", best);
    check(&host, &target, &file).await;

    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        run(Command::new("scp")
            .args(ssh_base(&sshd))
            .args(["-q", "-P", &port])
            .arg(&file)
            .arg(format!("{dest}:{target}.scp")));
        best = best.min(start.elapsed());
    }
    report("scp (SFTP protocol): 100 MiB file (best of 3)", best);

    let mut best = Duration::MAX;
    for _ in 0..3 {
        let start = Instant::now();
        run(Command::new("ssh")
            .args(ssh_base(&sshd))
            .args(["-p", &port, &dest, &format!("cat > {target}.cat")])
            .stdin(std::fs::File::open(&file).unwrap()));
        best = best.min(start.elapsed());
    }
    report("ssh 'cat > file' < file: 100 MiB (best of 3)", best);

    let _ = host
        .execute(&format!("rm -rf {remote_dir}"), &ExecOptions::new())
        .await;
}

async fn check(host: &dyn RemoteHost, remote: &str, local: &Path) {
    let out = host
        .execute(&format!("wc -c < {remote}"), &ExecOptions::new())
        .await
        .unwrap();
    assert_eq!(
        out.stdout_str().trim(),
        std::fs::metadata(local).unwrap().len().to_string()
    );
}
