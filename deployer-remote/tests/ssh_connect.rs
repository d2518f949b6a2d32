//! Opening connections at scale, against real OpenSSH servers on loopback: the connector's
//! budget of handshakes in flight, the connect timeout counted from a handshake's turn, retries
//! with backoff (and no retry of a refused host key or login), and known_hosts and key files
//! read once per connector.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use deployer_core::{Connector, ExecOptions, HostSpec, RemoteError, RemoteHost, error_chain};
use deployer_remote::testing::TestSshd;
use deployer_remote::{SshConfig, SshConnector, SshHost, SshOptions};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

async fn whoami(host: &dyn RemoteHost) -> Result<String, RemoteError> {
    let out = host.execute("whoami", &ExecOptions::new()).await?;
    Ok(out.stdout_str().trim().to_string())
}

/// Options with no key, no agent and no ssh config, for servers that never get that far.
fn bare_options() -> SshOptions {
    SshOptions::new()
        .user("nobody")
        .agent(false)
        .default_identities(false)
        .ssh_config(SshConfig::new())
}

/// A port on 127.0.0.1 that refuses connections: bound (so no one else takes it) but not
/// listening. Dropping the socket frees the port.
fn refusing_port() -> (tokio::net::TcpSocket, u16) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    (socket, port)
}

/// What a [`Relay`] does with each connection it accepts.
#[derive(Clone, Copy)]
enum Mode {
    /// Passes it on to this port of 127.0.0.1 (a real sshd).
    Forward(u16),
    /// Closes it at once: the client sees its handshake cut.
    Close,
    /// Keeps it open and never answers.
    Silent,
}

/// A TCP listener that counts the connections it accepted and how many were open at once.
struct Relay {
    port: u16,
    accepted: Arc<AtomicUsize>,
    most_open: Arc<AtomicUsize>,
}

impl Relay {
    async fn start(mode: Mode) -> Relay {
        Relay::on(TcpListener::bind("127.0.0.1:0").await.unwrap(), mode)
    }

    fn on(listener: TcpListener, mode: Mode) -> Relay {
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let most_open = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let (acc, most) = (accepted.clone(), most_open.clone());
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                let open = open.clone();
                tokio::spawn(async move {
                    match mode {
                        Mode::Forward(to) => {
                            if let Ok(mut server) =
                                tokio::net::TcpStream::connect(("127.0.0.1", to)).await
                            {
                                let _ =
                                    tokio::io::copy_bidirectional(&mut stream, &mut server).await;
                            }
                        }
                        Mode::Close => drop(stream),
                        Mode::Silent => {
                            let mut buf = [0u8; 1024];
                            while matches!(stream.read(&mut buf).await, Ok(n) if n > 0) {}
                        }
                    }
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        Relay {
            port,
            accepted,
            most_open,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A known_hosts file in `dir` giving `key_line` (`type base64`) for 127.0.0.1:`port`.
fn known_hosts_for(dir: &Path, port: u16, key_line: &str) -> PathBuf {
    let path = dir.join(format!("known_hosts_{port}"));
    std::fs::write(&path, format!("[127.0.0.1]:{port} {key_line}\n")).unwrap();
    path
}

/// Options reaching `sshd` through a relay on `port`, host key recorded for that port.
fn through(sshd: &TestSshd, dir: &Path, port: u16) -> SshOptions {
    sshd.options()
        .port(port)
        .known_hosts_file(known_hosts_for(dir, port, &sshd.host_public_key()))
}

#[tokio::test]
async fn nothing_listening_fails_after_exactly_the_attempts_with_the_backoff_between() {
    let (socket, port) = refusing_port();
    let options = bare_options()
        .connect_attempts(3)
        .connect_backoff(Duration::from_millis(100));
    let host = SshHost::with_user_port("127.0.0.1", None, Some(port), options).unwrap();
    let started = Instant::now();
    let err = whoami(&host).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, RemoteError::Connect { .. }), "{err:?}");
    assert_eq!(
        error_chain(&err),
        format!(
            "cannot connect to 127.0.0.1: connecting to 127.0.0.1:{port} failed after 3 \
             attempts (TCP connect): Connection refused (os error 111)"
        )
    );
    // Pauses of 100 ms and 200 ms, each plus at most a quarter; refusals take no time.
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    drop(socket);

    // Counted at a server that cuts every handshake: exactly as many connections as attempts.
    let relay = Relay::start(Mode::Close).await;
    let options = bare_options()
        .connect_attempts(4)
        .connect_backoff(Duration::from_millis(20));
    let host = SshHost::with_user_port("127.0.0.1", None, Some(relay.port), options).unwrap();
    let err = whoami(&host).await.unwrap_err();
    let text = error_chain(&err);
    assert!(
        text.starts_with(&format!(
            "cannot connect to 127.0.0.1: connecting to 127.0.0.1:{} failed after 4 attempts \
             (key exchange): ",
            relay.port
        )),
        "{text}"
    );
    assert_eq!(relay.accepted(), 4);

    // One attempt: the error of that attempt, as before retries existed.
    let (socket, port) = refusing_port();
    let host = SshHost::with_user_port(
        "127.0.0.1",
        None,
        Some(port),
        bare_options().connect_attempts(1),
    )
    .unwrap();
    let err = whoami(&host).await.unwrap_err();
    assert_eq!(
        error_chain(&err),
        "cannot connect to 127.0.0.1: Connection refused (os error 111)"
    );
    drop(socket);
}

#[tokio::test]
async fn a_server_that_starts_listening_after_the_first_attempt_is_reached_on_a_later_one() {
    let sshd = TestSshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A free port, nothing listening on it yet.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let options = through(&sshd, dir.path(), port)
        .connect_attempts(4)
        .connect_backoff(Duration::from_millis(400));
    let host = Arc::new(SshHost::with_user_port("127.0.0.1", None, Some(port), options).unwrap());
    let started = Instant::now();
    let connecting = tokio::spawn({
        let host = host.clone();
        async move { whoami(&*host).await }
    });
    // The first attempt is refused at once; the server comes up during the first pause.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let relay = Relay::on(
        TcpListener::bind(("127.0.0.1", port)).await.unwrap(),
        Mode::Forward(sshd.port()),
    );
    let user = connecting.await.unwrap().unwrap();
    assert_eq!(user, sshd.user());
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "reached only after the first pause: {:?}",
        started.elapsed()
    );
    assert_eq!(relay.accepted(), 1, "one attempt reached the server");
    assert_eq!(host.connection_count().await, 1);
}

#[tokio::test]
async fn a_changed_host_key_or_a_refused_login_is_not_retried() {
    let sshd = TestSshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start(Mode::Forward(sshd.port())).await;

    // Another server's key on record for this address.
    let other = TestSshd::start().unwrap();
    let wrong = known_hosts_for(dir.path(), relay.port, &other.host_public_key());
    let options = sshd
        .options()
        .port(relay.port)
        .known_hosts_file(&wrong)
        .connect_attempts(3)
        .connect_backoff(Duration::from_millis(50));
    let host = SshHost::with_user_port("127.0.0.1", None, Some(relay.port), options).unwrap();
    let err = whoami(&host).await.unwrap_err();
    assert!(
        matches!(err, RemoteError::HostKeyMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(relay.accepted(), 1, "a changed host key is not retried");

    // A key the server does not accept.
    let key = dir.path().join("stranger");
    let status = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(status.success());
    let options = bare_options()
        .user(sshd.user())
        .port(relay.port)
        .identity_file(&key)
        .known_hosts_file(known_hosts_for(
            dir.path(),
            relay.port,
            &sshd.host_public_key(),
        ))
        .connect_attempts(3)
        .connect_backoff(Duration::from_millis(50));
    let host = SshHost::with_user_port("127.0.0.1", None, Some(relay.port), options).unwrap();
    let err = whoami(&host).await.unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
    assert_eq!(relay.accepted(), 2, "a refused login is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_beyond_the_budget_wait_and_time_out_only_after_their_turn() {
    let silent = Relay::start(Mode::Silent).await;
    let config = SshConfig::parse(&format!(
        "Host *\n  HostName 127.0.0.1\n  Port {}\n",
        silent.port
    ))
    .unwrap();
    let limit = Duration::from_millis(300);
    let options = bare_options()
        .ssh_config(config)
        .max_handshakes(2)
        .connect_attempts(1)
        .connect_timeout(limit);
    let connector = Arc::new(SshConnector::new(options).unwrap());
    let started = Instant::now();
    let tries: Vec<_> = (1..=5)
        .map(|i| {
            let connector = connector.clone();
            tokio::spawn(async move {
                let host = connector
                    .host(&HostSpec::remote(format!("h{i}"), None))
                    .await
                    .unwrap();
                whoami(&*host).await
            })
        })
        .collect();
    for t in tries {
        match t.await.unwrap() {
            Err(RemoteError::Timeout { what, after, .. }) => {
                assert_eq!(after, limit);
                assert_eq!(
                    what,
                    format!("connecting to 127.0.0.1:{} (key exchange)", silent.port)
                );
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    // Two at a time, each given its full 300 ms once its turn came: three rounds.
    assert!(started.elapsed() >= 3 * limit, "{:?}", started.elapsed());
    assert_eq!(silent.accepted(), 5);
    // The relay sees a connection close a moment after the client gave its turn up (it reads
    // the end of the stream), so the next one may overlap it by that moment: the rounds above
    // are the bound; this says no more than one more was ever seen.
    let most = silent.most_open.load(Ordering::SeqCst);
    assert!((2..=3).contains(&most), "{most}");
}

/// Two servers reachable as `a` and `b` with one client key and one known_hosts file.
struct Pair {
    a: TestSshd,
    b: TestSshd,
    dir: tempfile::TempDir,
    config: String,
}

impl Pair {
    fn start() -> Pair {
        let a = TestSshd::start().unwrap();
        let b = TestSshd::start().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let public = std::fs::read_to_string(a.dir().join("id_ed25519.pub")).unwrap();
        use std::io::Write;
        std::fs::OpenOptions::new()
            .append(true)
            .open(b.dir().join("authorized_keys"))
            .unwrap()
            .write_all(public.as_bytes())
            .unwrap();
        let mut known = String::new();
        let mut config = String::new();
        for (name, s) in [("a", &a), ("b", &b)] {
            known.push_str(std::fs::read_to_string(s.known_hosts()).unwrap().trim_end());
            known.push('\n');
            config.push_str(&format!(
                "Host {name}\n  HostName {}\n  Port {}\n  User {}\n",
                s.address(),
                s.port(),
                s.user()
            ));
        }
        std::fs::write(dir.path().join("known_hosts"), known).unwrap();
        // The client key, copied so that a test can remove it.
        std::fs::copy(a.client_key(), dir.path().join("id")).unwrap();
        Pair { a, b, dir, config }
    }

    fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("id")
    }

    fn options(&self) -> SshOptions {
        bare_options()
            .identity_file(self.key())
            .known_hosts_file(self.known_hosts())
            .ssh_config(SshConfig::parse(&self.config).unwrap())
    }

    async fn host(connector: &SshConnector, name: &str) -> Arc<dyn RemoteHost> {
        connector.host(&HostSpec::remote(name, None)).await.unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_on_open_connections_do_not_wait_for_a_handshake_turn() {
    let pair = Pair::start();
    let connector = SshConnector::new(pair.options().max_handshakes(1)).unwrap();
    let a = Pair::host(&connector, "a").await;
    assert_eq!(whoami(&*a).await.unwrap(), pair.a.user());
    // Four commands at once on a's connection, while b connects with the only turn.
    let long = {
        let a = a.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let exec = ExecOptions::new();
            let runs = (0..4).map(|_| a.execute("sleep 1", &exec));
            for r in futures::future::join_all(runs).await {
                assert_eq!(r.unwrap().exit_status, Some(0));
            }
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let b = Pair::host(&connector, "b").await;
    assert_eq!(whoami(&*b).await.unwrap(), pair.b.user());
    assert!(
        started.elapsed() < Duration::from_millis(850),
        "b waited for a's commands: {:?}",
        started.elapsed()
    );
    assert!(long.await.unwrap() < Duration::from_secs(3));
}

#[tokio::test]
async fn known_hosts_and_key_files_are_read_once_per_connector() {
    let pair = Pair::start();
    let connector = SshConnector::new(pair.options()).unwrap();
    let a = Pair::host(&connector, "a").await;
    assert_eq!(whoami(&*a).await.unwrap(), pair.a.user());

    // Both files gone after the first host connected: the second host of the same connector
    // still connects, with what the connector read the first time.
    std::fs::write(pair.known_hosts(), "").unwrap();
    std::fs::remove_file(pair.key()).unwrap();
    let b = Pair::host(&connector, "b").await;
    assert_eq!(whoami(&*b).await.unwrap(), pair.b.user());

    // A new connector reads them again, and finds nothing.
    let fresh = SshConnector::new(pair.options()).unwrap();
    let b = Pair::host(&fresh, "b").await;
    let err = whoami(&*b).await.unwrap_err();
    assert!(matches!(err, RemoteError::UnknownHostKey { .. }), "{err:?}");
}

#[tokio::test]
async fn an_encrypted_key_is_decrypted_once_for_every_host() {
    let pair = Pair::start();
    let key = pair.a.add_client_key("ed25519", "s3cret").unwrap();
    let public = std::fs::read_to_string(format!("{}.pub", key.display())).unwrap();
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(pair.b.dir().join("authorized_keys"))
        .unwrap()
        .write_all(public.as_bytes())
        .unwrap();
    let asked = Arc::new(AtomicUsize::new(0));
    let options = bare_options()
        .identity_file(&key)
        .known_hosts_file(pair.known_hosts())
        .ssh_config(SshConfig::parse(&pair.config).unwrap())
        .passphrase({
            let asked = asked.clone();
            move |_| {
                asked.fetch_add(1, Ordering::SeqCst);
                Some("s3cret".to_string())
            }
        });
    let connector = SshConnector::new(options).unwrap();
    let (a, b) = (
        Pair::host(&connector, "a").await,
        Pair::host(&connector, "b").await,
    );
    let (ra, rb) = tokio::join!(whoami(&*a), whoami(&*b));
    assert_eq!(ra.unwrap(), pair.a.user());
    assert_eq!(rb.unwrap(), pair.b.user());
    assert_eq!(asked.load(Ordering::SeqCst), 1, "asked once for both hosts");
}
