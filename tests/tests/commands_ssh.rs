//! The file and release commands over real SSH: a throwaway OpenSSH server on 127.0.0.1
//! (`deployer_remote::testing`), an `SshHost`, and a working directory with a shell-hostile
//! name created on the "remote" side by the login user.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use deployer_core::{ExecOptions, RemoteHost};
use deployer_remote::testing::TestSshd;
use deployer_tests::run;
use serde_json::json;

/// A name a shell would split, expand and execute if it were pasted unquoted.
const HOSTILE: &str = "it's a \"dir\" $(touch pwned); `touch pwned` & x";

struct Remote {
    _sshd: TestSshd,
    host: Arc<dyn RemoteHost>,
    /// A fresh directory owned by the login user, removed at the end.
    dir: PathBuf,
}

async fn remote() -> Remote {
    let sshd = TestSshd::start().expect("start the test sshd");
    let host: Arc<dyn RemoteHost> = Arc::new(sshd.host());
    let out = host
        .execute("mktemp -d", &ExecOptions::new())
        .await
        .expect("mktemp over ssh");
    assert!(out.success(), "{}", out.stderr_str());
    let base = PathBuf::from(out.stdout_str().trim());
    let dir = base.join(HOSTILE);
    run(
        host.clone(),
        json!({"command": "createdirectory", "source": dir}),
    )
    .await
    .expect("createdirectory over ssh");
    assert!(dir.is_dir());
    Remote {
        _sshd: sshd,
        host,
        dir,
    }
}

impl Remote {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }
    fn ps(&self, rel: &str) -> String {
        self.p(rel).to_str().expect("UTF-8").to_string()
    }
}

impl Drop for Remote {
    fn drop(&mut self) {
        if let Some(base) = self.dir.parent() {
            let _ = std::fs::remove_dir_all(base);
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[tokio::test]
async fn file_commands_over_ssh() {
    let r = remote().await;
    let h = r.host.clone();
    let local = tempfile::tempdir().unwrap();

    // upload + unpack
    std::fs::create_dir_all(local.path().join("pkg/app")).unwrap();
    std::fs::write(local.path().join("pkg/app/index.html"), "hello").unwrap();
    let archive = local.path().join("app 1.tgz");
    let ok = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&archive)
        .arg("-C")
        .arg(local.path().join("pkg"))
        .arg("app")
        .status()
        .unwrap();
    assert!(ok.success());
    run(
        h.clone(),
        json!({"command": "upload", "source": archive, "destination": format!("{}/", r.ps(""))}),
    )
    .await
    .unwrap();
    assert!(r.p("app 1.tgz").is_file());
    run(
        h.clone(),
        json!({"command": "createdirectory", "source": r.ps("rel 1")}),
    )
    .await
    .unwrap();
    run(
        h.clone(),
        json!({"command": "unpack", "source": r.ps("app 1.tgz"), "destination": r.ps("rel 1")}),
    )
    .await
    .unwrap();
    assert_eq!(read(&r.p("rel 1/app/index.html")), "hello");

    // writefile: the content travels on stdin, the mode is set, the write is atomic
    let contents = "a: 'x' \"$(reboot)\" `id`\n";
    run(h.clone(), json!({"command": "writefile", "destination": r.ps("conf $(x).yml"), "contents": contents, "mode": "0600"}))
        .await
        .unwrap();
    assert_eq!(read(&r.p("conf $(x).yml")), contents);
    let err = run(
        h.clone(),
        json!({"command": "writefile", "destination": r.ps("conf $(x).yml"), "contents": "y"}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("already exists"), "{err}");

    // symlink, copy, move, remove
    run(
        h.clone(),
        json!({"command": "symlink", "source": "rel 1", "destination": r.ps("current")}),
    )
    .await
    .unwrap();
    assert_eq!(read(&r.p("current/app/index.html")), "hello");
    run(
        h.clone(),
        json!({"command": "copyfile", "source": r.ps("rel 1"), "destination": r.ps("rel 2")}),
    )
    .await
    .unwrap();
    run(
        h.clone(),
        json!({"command": "movefile", "source": r.ps("rel 2"), "destination": r.ps("rel 3")}),
    )
    .await
    .unwrap();
    assert_eq!(read(&r.p("rel 3/app/index.html")), "hello");
    assert!(!r.p("rel 2").exists());
    run(
        h.clone(),
        json!({"command": "removefile", "source": r.ps("rel 3")}),
    )
    .await
    .unwrap();
    assert!(!r.p("rel 3").exists());

    // cleanup never removes what `current` points to
    let out = run(h.clone(), json!({"command": "cleanup", "path": r.ps(""), "filespec": "rel *", "keepversions": 0, "current": r.ps("current")}))
        .await
        .unwrap();
    assert!(out.skipped.is_some(), "{out:?}");
    assert!(r.p("rel 1").is_dir());
    assert!(!r.dir.join("pwned").exists());
}

#[tokio::test]
async fn sudo_lets_file_commands_write_where_the_login_user_cannot() {
    let r = remote().await;
    let sudo_ok = r
        .host
        .execute("sudo -n true", &ExecOptions::new())
        .await
        .is_ok_and(|o| o.success());
    if !sudo_ok {
        // Only when the harness could set up passwordless sudo (it does when run as root).
        eprintln!("skipped: no passwordless sudo for the test user");
        return;
    }
    let h = r.host.clone();
    let owned = tempfile::tempdir().unwrap(); // owned by root (this process), mode 0700
    let dest = owned.path().join("conf $(x)");
    let dest_s = dest.to_str().unwrap();
    let err = run(
        h.clone(),
        json!({"command": "writefile", "destination": dest_s, "contents": "x"}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().starts_with("cannot write "), "{err}");
    assert_eq!(err.exit_status(), Some(1));
    run(h.clone(), json!({"command": "writefile", "destination": dest_s, "contents": "as root\n", "sudo": true}))
        .await
        .unwrap();
    assert_eq!(read(&dest), "as root\n");
    run(h.clone(), json!({"command": "createdirectory", "source": owned.path().join("d 1"), "sudo": true, "mode": "0700"}))
        .await
        .unwrap();
    assert!(owned.path().join("d 1").is_dir());
    run(
        h.clone(),
        json!({"command": "removefile", "source": owned.path().join("d 1"), "sudo": true}),
    )
    .await
    .unwrap();
    assert!(!owned.path().join("d 1").exists());
}

#[tokio::test]
async fn a_release_deploy_over_ssh() {
    let r = remote().await;
    let h = r.host.clone();
    let root = r.ps("app root");
    run(
        h.clone(),
        json!({"command": "release_lock", "deploy_to": root, "holder": "alice"}),
    )
    .await
    .unwrap();
    let err = run(
        h.clone(),
        json!({"command": "release_lock", "deploy_to": root, "holder": "bob"}),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("is locked by alice"), "{err}");
    for v in ["1", "2"] {
        run(
            h.clone(),
            json!({"command": "release_create", "deploy_to": root, "version": v}),
        )
        .await
        .unwrap();
        run(h.clone(), json!({"command": "writefile", "destination": format!("{root}/releases/{v}/VERSION"), "contents": v}))
            .await
            .unwrap();
        run(h.clone(), json!({"command": "release_link_shared", "deploy_to": root, "version": v, "shared_dirs": ["log"]}))
            .await
            .unwrap();
        run(h.clone(), json!({"command": "release_activate", "deploy_to": root, "version": v, "holder": "alice"}))
            .await
            .unwrap();
    }
    assert_eq!(read(&r.p("app root/current/VERSION")), "2");
    assert!(r.p("app root/current/log").is_symlink());
    let out = run(h.clone(), json!({"command": "rollback", "deploy_to": root}))
        .await
        .unwrap();
    assert_eq!(out.data.unwrap()["version"], "1");
    assert_eq!(read(&r.p("app root/current/VERSION")), "1");
    let versions = run(
        h.clone(),
        json!({"command": "get_remote_versions", "install_location": r.ps("")}),
    )
    .await
    .unwrap();
    assert_eq!(versions.data.unwrap()["versions"], json!({"app root": "1"}));
    run(
        h.clone(),
        json!({"command": "keep_releases", "deploy_to": root, "keep": 1}),
    )
    .await
    .unwrap();
    // 2 is the newest and is kept; 1 is live and is kept too.
    assert!(r.p("app root/releases/1").is_dir() && r.p("app root/releases/2").is_dir());
    run(
        h.clone(),
        json!({"command": "release_unlock", "deploy_to": root, "holder": "alice"}),
    )
    .await
    .unwrap();
    assert!(!r.p("app root/.deploy.lock").exists());
}
