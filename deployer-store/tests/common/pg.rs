//! A throwaway PostgreSQL server: `initdb` on a temporary directory, `postgres` listening on a
//! free port of 127.0.0.1 only (no Unix socket), stopped when dropped.
//!
//! Uses the newest `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package), or
//! `initdb` and `postgres` from `PATH`. As root, the server runs as the `postgres` user
//! (initdb refuses to run as root). It never touches the system's own cluster.
//!
//! The one copy: `deployer-web`'s and `deployer-cli`'s tests and the benchmarks
//! (`deployer-benches`, `pg` module) include this file by path.

use std::fs::File;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection;

pub struct PgServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    databases: AtomicUsize,
}

fn bin_dir() -> PathBuf {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    if let Some((_, bin)) = found.pop() {
        return bin;
    }
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .find(|p| p.join("initdb").exists() && p.join("postgres").exists())
        })
        .expect(
            "PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin or on PATH): \
             install the postgresql package (scripts/test.sh does)",
        )
}

/// The uid and gid of the `postgres` user, when running as root.
fn run_as() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        assert!(
            out.status.success(),
            "as root, the tests need the postgres user to run the server"
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("numeric id")
    };
    Some((id("-u"), id("-g")))
}

fn command(bin: &Path, user: Option<(u32, u32)>, cwd: &Path) -> Command {
    let mut cmd = Command::new(bin);
    cmd.current_dir(cwd).env("LC_ALL", "C").env_remove("PGDATA");
    if let Some((uid, gid)) = user {
        cmd.uid(uid).gid(gid);
    }
    // The server dies with the test process, even when that is killed.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port on 127.0.0.1")
        .port()
}

impl PgServer {
    /// Starts a server and waits (bounded) until it accepts connections.
    pub async fn start() -> PgServer {
        let bin = bin_dir();
        let user = run_as();
        let mut dir = tempfile::Builder::new()
            .prefix("deployer-pg-")
            .tempdir()
            .unwrap();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        }
        let data = dir.path().join("data");
        let out = command(&bin.join("initdb"), user, dir.path())
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // The port may be taken between choosing and binding it: try a few.
        for _ in 0..5 {
            let port = free_port();
            let log = dir.path().join(format!("postgres-{port}.log"));
            let log_file = File::create(&log).unwrap();
            let child = command(&bin.join("postgres"), user, dir.path())
                .arg("-D")
                .arg(&data)
                .arg("-p")
                .arg(port.to_string())
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "unix_socket_directories=",
                    "-c",
                    "fsync=off",
                    "-c",
                    "synchronous_commit=off",
                    "-c",
                    "full_page_writes=off",
                    "-c",
                    "max_connections=300",
                ])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().unwrap())
                .stderr(log_file)
                .spawn()
                .expect("start postgres");
            let mut server = PgServer {
                child: Some(child),
                port,
                dir,
                databases: AtomicUsize::new(0),
            };
            if server.wait_ready().await {
                return server;
            }
            let log = std::fs::read_to_string(&log).unwrap_or_default();
            if !log.contains("could not bind") && !log.contains("Address already in use") {
                panic!("postgres did not start:\n{log}");
            }
            server.stop();
            dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
        }
        panic!("postgres found no free port");
    }

    /// Waits until the server accepts connections (true), or exits or takes too long (false).
    async fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = self.admin_url();
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && child.try_wait().ok().flatten().is_some()
            {
                self.child = None;
                return false;
            }
            if let Ok(conn) = sqlx::PgConnection::connect(&url).await {
                let _ = conn.close().await;
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Creates a fresh, empty database and returns its URL.
    pub async fn database(&self) -> String {
        let name = format!("test_{}", self.databases.fetch_add(1, Ordering::SeqCst));
        let mut conn = sqlx::PgConnection::connect(&self.admin_url())
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let _ = conn.close().await;
        self.url(&name)
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // SIGINT is PostgreSQL's fast shutdown: it disconnects clients and exits.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGINT);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}
