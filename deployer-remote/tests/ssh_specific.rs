//! What only SSH hosts do: authentication, host-key policy, connection reuse, the connector,
//! ProxyJump, connect errors.

use std::sync::Arc;
use std::time::Duration;

use deployer_core::{Connector, ExecOptions, HostSpec, RemoteError, RemoteHost};
use deployer_remote::testing::TestSshd;
use deployer_remote::{HostKeyPolicy, SshConfig, SshConnector, SshHost, SshOptions};

/// How long to wait for sshd to log something the client already saw happen.
const LOG_WAIT: Duration = Duration::from_secs(10);

/// `SHA256:…` of a public key line, as `ssh-keygen -l` prints it.
fn fingerprint(public_key_line: &str) -> String {
    deployer_remote::testing::fingerprint(public_key_line).unwrap()
}

async fn whoami(host: &SshHost) -> Result<String, RemoteError> {
    let out = host.execute("whoami", &ExecOptions::new()).await?;
    Ok(out.stdout_str().trim().to_string())
}

#[tokio::test]
async fn one_connection_is_reused_and_capped_channels_add_connections() {
    let sshd = TestSshd::start().unwrap();
    let host = Arc::new(sshd.host_with(sshd.options().max_channels(4).max_connections(2)));
    assert_eq!(host.connection_count().await, 0, "connections open lazily");
    for _ in 0..5 {
        assert_eq!(whoami(&host).await.unwrap(), sshd.user());
    }
    assert_eq!(host.connection_count().await, 1);
    assert_eq!(sshd.wait_for_log("Accepted publickey", 1, LOG_WAIT), 1);
    // 12 at once with 4 channels per connection and at most 2 connections: some wait.
    let runs = (0..12).map(|_| {
        let host = host.clone();
        async move {
            host.execute("sleep 0.3", &ExecOptions::new())
                .await
                .unwrap()
        }
    });
    let outs = futures::future::join_all(runs).await;
    assert!(outs.iter().all(|o| o.success()));
    assert_eq!(host.connection_count().await, 2);
}

#[tokio::test]
async fn connector_hands_out_the_same_host_and_local() {
    let sshd = TestSshd::start().unwrap();
    let config = SshConfig::parse(&format!(
        "Host web*\n  HostName {}\n  Port {}\n  User {}\n",
        sshd.address(),
        sshd.port(),
        sshd.user()
    ))
    .unwrap();
    let connector = SshConnector::new(sshd.options().ssh_config(config)).unwrap();
    let a = connector
        .host(&HostSpec::remote("web1", None))
        .await
        .unwrap();
    let b = connector
        .host(&HostSpec::remote("web1", None))
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.name(), "web1");
    let out = a.execute("whoami", &ExecOptions::new()).await.unwrap();
    assert_eq!(out.stdout_str().trim(), sshd.user());
    // Another user is another host (and connection).
    let c = connector
        .host(&HostSpec::remote("web1", Some("root".into())))
        .await
        .unwrap();
    assert!(!Arc::ptr_eq(&a, &c));
    let local = connector.host(&HostSpec::local()).await.unwrap();
    assert_eq!(local.name(), "local");
    let typed = connector
        .ssh_host(&HostSpec::remote("web1", None))
        .unwrap()
        .unwrap();
    assert_eq!(typed.connection_count().await, 1);
}

#[tokio::test]
async fn host_down_is_a_connect_error_naming_the_host() {
    // Bound but not listening: connections are refused, and no other test can take the port.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let port = socket.local_addr().unwrap().port();
    let options = SshOptions::new()
        .user("nobody")
        .agent(false)
        .default_identities(false)
        .ssh_config(SshConfig::new());
    let host = SshHost::with_user_port("127.0.0.1", None, Some(port), options).unwrap();
    let err = whoami(&host).await.unwrap_err();
    assert!(matches!(err, RemoteError::Connect { .. }), "{err:?}");
    assert_eq!(err.host(), "127.0.0.1");
    assert_eq!(err.to_string(), "cannot connect to 127.0.0.1");
    drop(socket);
}

#[tokio::test]
async fn a_silent_server_times_out_connecting() {
    // Accepts TCP (the kernel does) but never speaks SSH.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let options = SshOptions::new()
        .user("nobody")
        .agent(false)
        .default_identities(false)
        .ssh_config(SshConfig::new())
        .connect_timeout(Duration::from_millis(300));
    let host = SshHost::with_user_port("127.0.0.1", None, Some(port), options).unwrap();
    let err = whoami(&host).await.unwrap_err();
    match err {
        RemoteError::Timeout { host, what, after } => {
            assert_eq!(host, "127.0.0.1");
            assert!(what.contains("connecting"), "{what}");
            assert_eq!(after, Duration::from_millis(300));
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    drop(listener);
}

#[tokio::test]
async fn a_key_the_server_does_not_know_is_an_auth_error() {
    let sshd = TestSshd::start().unwrap();
    let other = TestSshd::start().unwrap();
    // The other server's client key is not authorized here.
    let options = SshOptions::new()
        .user(sshd.user())
        .port(sshd.port())
        .identity_file(other.client_key())
        .default_identities(false)
        .agent(false)
        .known_hosts_file(sshd.known_hosts())
        .ssh_config(SshConfig::new());
    let err = whoami(&sshd.host_with(options)).await.unwrap_err();
    match &err {
        RemoteError::Auth { host, user, detail } => {
            assert_eq!(host, sshd.address());
            assert_eq!(user, sshd.user());
            assert!(detail.contains("refused"), "{detail}");
        }
        other => panic!("expected an auth error, got {other:?}"),
    }
}

#[tokio::test]
async fn rsa_ecdsa_and_passphrase_keys_work() {
    let sshd = TestSshd::start().unwrap();
    for kind in ["rsa", "ecdsa"] {
        let key = sshd.add_client_key(kind, "").unwrap();
        let options = SshOptions::new()
            .user(sshd.user())
            .port(sshd.port())
            .identity_file(&key)
            .default_identities(false)
            .agent(false)
            .known_hosts_file(sshd.known_hosts())
            .ssh_config(SshConfig::new());
        assert_eq!(
            whoami(&sshd.host_with(options)).await.unwrap(),
            sshd.user(),
            "{kind}"
        );
    }
    let key = sshd.add_client_key("ed25519", "correct horse").unwrap();
    let base = SshOptions::new()
        .user(sshd.user())
        .port(sshd.port())
        .identity_file(&key)
        .default_identities(false)
        .agent(false)
        .known_hosts_file(sshd.known_hosts())
        .ssh_config(SshConfig::new());
    // Without a passphrase callback the key is skipped, and the error says why.
    let err = whoami(&sshd.host_with(base.clone())).await.unwrap_err();
    assert!(err.to_string().contains("authentication"), "{err}");
    assert!(format!("{err:?}").contains("encrypted"), "{err:?}");
    let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let a = asked.clone();
    let options = base.passphrase(move |_| {
        a.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some("correct horse".to_string())
    });
    assert!(!format!("{options:?}").contains("correct horse"));
    assert_eq!(whoami(&sshd.host_with(options)).await.unwrap(), sshd.user());
    assert_eq!(asked.load(std::sync::atomic::Ordering::SeqCst), 1);
}

#[tokio::test]
async fn unknown_host_key_is_refused_when_strict_and_learned_with_accept_new() {
    let sshd = TestSshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    let strict = sshd.options().known_hosts_file(&known);
    let err = whoami(&sshd.host_with(strict.clone())).await.unwrap_err();
    match &err {
        RemoteError::UnknownHostKey {
            host,
            key_type,
            fingerprint: fp,
        } => {
            assert_eq!(host, sshd.address());
            assert_eq!(key_type, "ssh-ed25519");
            assert_eq!(fp, &fingerprint(&sshd.host_public_key()));
        }
        other => panic!("expected an unknown host key, got {other:?}"),
    }
    assert!(!known.exists(), "strict mode writes nothing");

    let accept = strict.clone().host_key_policy(HostKeyPolicy::AcceptNew);
    assert_eq!(whoami(&sshd.host_with(accept)).await.unwrap(), sshd.user());
    let learned = std::fs::read_to_string(&known).unwrap();
    assert!(
        learned.contains(&format!("[{}]:{}", sshd.address(), sshd.port())),
        "{learned}"
    );
    // Now strict mode knows the host.
    assert_eq!(whoami(&sshd.host_with(strict)).await.unwrap(), sshd.user());
}

#[tokio::test]
async fn a_changed_host_key_is_refused_even_with_accept_new() {
    let first = TestSshd::start().unwrap();
    let second = TestSshd::start().unwrap();
    // known_hosts says the second server has the first one's key.
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    std::fs::write(
        &known,
        format!(
            "[{}]:{} {}\n",
            second.address(),
            second.port(),
            first.host_public_key()
        ),
    )
    .unwrap();
    for policy in [HostKeyPolicy::Strict, HostKeyPolicy::AcceptNew] {
        let options = second
            .options()
            .known_hosts_file(&known)
            .host_key_policy(policy);
        let err = whoami(&second.host_with(options)).await.unwrap_err();
        match &err {
            RemoteError::HostKeyMismatch {
                host,
                key_type,
                fingerprint: fp,
                recorded,
            } => {
                assert!(
                    recorded.starts_with(&format!("{}:", known.display())),
                    "{recorded}"
                );
                assert_eq!(host, second.address());
                assert_eq!(key_type, "ssh-ed25519");
                assert_eq!(fp, &fingerprint(&second.host_public_key()));
            }
            other => panic!("expected a host key mismatch, got {other:?}"),
        }
        assert!(err.to_string().contains("has changed"), "{err}");
    }
    // Off checks nothing (for throwaway machines only).
    let off = second
        .options()
        .known_hosts_file(&known)
        .host_key_policy(HostKeyPolicy::Off);
    assert_eq!(whoami(&second.host_with(off)).await.unwrap(), second.user());
}

/// Options reaching `target` through `jump` via `ProxyJump` in the ssh config.
fn jump_options(jump: &TestSshd, target: &TestSshd, dir: &std::path::Path) -> SshOptions {
    let known = dir.join("known_hosts");
    std::fs::write(
        &known,
        std::fs::read_to_string(jump.known_hosts()).unwrap()
            + "\n"
            + &std::fs::read_to_string(target.known_hosts()).unwrap(),
    )
    .unwrap();
    let config = SshConfig::parse(&format!(
        "Host target\n  HostName {}\n  Port {}\n  User {}\n  ProxyJump {}@{}:{}\n",
        target.address(),
        target.port(),
        target.user(),
        jump.user(),
        jump.address(),
        jump.port()
    ))
    .unwrap();
    SshOptions::new()
        .identity_file(jump.client_key())
        .identity_file(target.client_key())
        .default_identities(false)
        .agent(false)
        .known_hosts_file(known)
        .ssh_config(config)
}

#[tokio::test]
async fn proxy_jump_goes_through_the_jump_host() {
    let jump = TestSshd::start().unwrap();
    let target = TestSshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = SshHost::new("target", jump_options(&jump, &target, dir.path())).unwrap();
    assert_eq!(whoami(&host).await.unwrap(), target.user());
    let out = host
        .execute("echo $SSH_CONNECTION", &ExecOptions::new())
        .await
        .unwrap();
    assert!(
        out.stdout_str().contains(&target.port().to_string()),
        "{}",
        out.stdout_str()
    );
    assert_eq!(jump.wait_for_log("Accepted publickey", 1, LOG_WAIT), 1);
    assert_eq!(target.wait_for_log("Accepted publickey", 1, LOG_WAIT), 1);
}

#[tokio::test]
async fn proxy_jump_fails_when_the_jump_host_does_not_forward() {
    let jump = TestSshd::builder().tcp_forwarding(false).start().unwrap();
    let target = TestSshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let host = SshHost::new("target", jump_options(&jump, &target, dir.path())).unwrap();
    let err = whoami(&host).await.unwrap_err();
    assert!(matches!(err, RemoteError::Connect { .. }), "{err:?}");
    assert_eq!(err.host(), "target");
    assert!(
        deployer_core::error_chain(&err).contains("jump host"),
        "{}",
        deployer_core::error_chain(&err)
    );
    assert_eq!(target.logs().matches("Accepted publickey").count(), 0);
}

#[tokio::test]
async fn a_command_timeout_leaves_the_connection_usable() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host();
    let err = host
        .execute(
            "sleep 30",
            &ExecOptions::new().timeout(Duration::from_millis(300)),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Timeout { .. }), "{err:?}");
    assert_eq!(whoami(&host).await.unwrap(), sshd.user());
    assert_eq!(host.connection_count().await, 1);
}

#[tokio::test]
async fn sudo_that_wants_a_password_is_a_clear_error() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host_with(sshd.user_without_sudo().unwrap());
    // Without sudo the user works fine.
    let out = host.execute("whoami", &ExecOptions::new()).await.unwrap();
    assert_eq!(out.stdout_str().trim(), "deployer-nosudo");
    let err = host
        .execute("true", &ExecOptions::new().sudo(true))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::SudoPassword { .. }), "{err:?}");
    assert_eq!(err.host(), sshd.address());
    let local = tempfile::tempdir().unwrap();
    let file = local.path().join("f");
    std::fs::write(&file, b"x").unwrap();
    let err = host
        .put(
            &file,
            "/tmp/deployer-nosudo-put",
            &deployer_core::PutOptions {
                sudo: true,
                mode: None,
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::SudoPassword { .. }), "{err:?}");
}

#[tokio::test]
async fn test_connector_maps_every_name_to_the_server() {
    let sshd = TestSshd::start().unwrap();
    let connector = sshd.connector();
    let fe1 = connector
        .host(&HostSpec::remote("fe001", None))
        .await
        .unwrap();
    let fe2 = connector
        .host(&HostSpec::remote("fe002", None))
        .await
        .unwrap();
    assert!(!Arc::ptr_eq(&fe1, &fe2));
    for host in [&fe1, &fe2] {
        let out = host.execute("whoami", &ExecOptions::new()).await.unwrap();
        assert_eq!(out.stdout_str().trim(), sshd.user());
    }
    assert_eq!(sshd.wait_for_log("Accepted publickey", 2, LOG_WAIT), 2);
}

#[tokio::test]
async fn hashed_known_hosts_entries_are_recognised() {
    let sshd = TestSshd::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("known_hosts");
    std::fs::copy(sshd.known_hosts(), &known).unwrap();
    let status = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&known)
        .output()
        .unwrap();
    assert!(status.status.success());
    let hashed = std::fs::read_to_string(&known).unwrap();
    assert!(hashed.starts_with("|1|"), "{hashed}");
    let options = sshd.options().known_hosts_file(&known);
    assert_eq!(whoami(&sshd.host_with(options)).await.unwrap(), sshd.user());
}

/// An `ssh-agent` on a socket in a temp dir, killed on drop.
struct Agent {
    child: std::process::Child,
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn start_with(key: &std::path::Path) -> Agent {
        use std::io::BufRead;
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut child = std::process::Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It prints the SSH_AUTH_SOCK line once the socket listens.
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.contains("SSH_AUTH_SOCK"), "{line}");
        let added = std::process::Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &socket)
            .output()
            .unwrap();
        assert!(added.status.success(), "{added:?}");
        Agent {
            child,
            socket,
            _dir: dir,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn keys_of_the_ssh_agent_are_used() {
    let sshd = TestSshd::start().unwrap();
    let agent = Agent::start_with(&sshd.client_key());
    // No key file at all: only the agent can authenticate.
    let options = SshOptions::new()
        .user(sshd.user())
        .port(sshd.port())
        .default_identities(false)
        .agent_socket(&agent.socket)
        .known_hosts_file(sshd.known_hosts())
        .ssh_config(SshConfig::new());
    assert_eq!(
        whoami(&sshd.host_with(options.clone())).await.unwrap(),
        sshd.user()
    );
    let err = whoami(&sshd.host_with(options.agent(false)))
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Auth { .. }), "{err:?}");
}

#[tokio::test]
async fn a_broken_connection_is_reestablished_on_the_next_call() {
    let sshd = TestSshd::start().unwrap();
    let host = sshd.host();
    assert_eq!(whoami(&host).await.unwrap(), sshd.user());
    // Kill this connection's sshd process (the command's closest `sshd` ancestor) from inside.
    let kill_sshd = "p=$PPID; while [ \"$(ps -o comm= -p $p)\" != sshd ]; do \
                     p=$(ps -o ppid= -p $p | tr -d ' '); done; kill -9 $p; sleep 5";
    let err = host
        .execute(kill_sshd, &ExecOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(err, RemoteError::Disconnected { .. }), "{err:?}");
    assert_eq!(err.host(), sshd.address());
    assert_eq!(whoami(&host).await.unwrap(), sshd.user());
    assert_eq!(host.connection_count().await, 1);
    assert_eq!(sshd.wait_for_log("Accepted publickey", 2, LOG_WAIT), 2);
}
