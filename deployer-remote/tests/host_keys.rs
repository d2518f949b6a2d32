//! Host keys against a real sshd: the policy is strict unless a caller opts out, an unknown
//! host is refused, and a host that comes back at the same address and port with another key
//! is refused — under the default and under accept-new — with an error naming the host and the
//! offered fingerprint, before anything is authenticated or run, and without touching
//! known_hosts.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use deployer_core::{Connector, ExecOptions, HostSpec, RemoteError, RemoteHost};
use deployer_remote::testing::TestSshd;
use deployer_remote::{HostKeyPolicy, SshConfig, SshConnector, SshHost, SshOptions};

/// `SHA256:…` of a public key line, as `ssh-keygen -l` prints it.
fn fingerprint(public_key_line: &str) -> String {
    deployer_remote::testing::fingerprint(public_key_line).unwrap()
}

/// A directory any login user may write to, for proof that a command ran.
fn marker_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    dir
}

/// Runs `touch <marker>` on `host`.
async fn touch(host: &dyn RemoteHost, marker: &Path) -> Result<(), RemoteError> {
    let line = format!("touch {}", marker.display());
    let out = host.execute(&line, &ExecOptions::new()).await?;
    assert!(out.success(), "{}", out.stderr_str());
    Ok(())
}

/// Whether sshd logged a login within a second (it logs asynchronously).
fn logged_in(sshd: &TestSshd) -> bool {
    sshd.wait_for_log("Accepted publickey", 1, Duration::from_secs(1)) > 0
}

/// Options naming everything but the host-key policy, built from scratch (not from the
/// harness) so that nothing but the library's own default decides the policy.
fn options_without_policy(sshd: &TestSshd, known_hosts: &Path) -> SshOptions {
    SshOptions::new()
        .user(sshd.user())
        .port(sshd.port())
        .identity_file(sshd.client_key())
        .default_identities(false)
        .agent(false)
        .known_hosts_file(known_hosts)
        .ssh_config(SshConfig::new())
}

#[tokio::test]
async fn the_default_policy_is_strict_and_refuses_an_unknown_host_before_logging_in() {
    assert_eq!(HostKeyPolicy::default(), HostKeyPolicy::Strict);
    let sshd = TestSshd::start().unwrap();
    let dir = marker_dir();
    let known = dir.path().join("known_hosts");
    std::fs::write(&known, "").unwrap();
    let marker = dir.path().join("ran");
    let offered = fingerprint(&sshd.host_public_key());

    // An SshHost, and the connector a program such as `deploy` builds from its options.
    let host = sshd.host_with(options_without_policy(&sshd, &known));
    let connector = SshConnector::new(options_without_policy(&sshd, &known)).unwrap();
    let through_connector = connector
        .host(&HostSpec::remote(sshd.address(), None))
        .await
        .unwrap();
    for host in [&host as &dyn RemoteHost, through_connector.as_ref()] {
        let err = touch(host, &marker).await.unwrap_err();
        match &err {
            RemoteError::UnknownHostKey {
                host,
                key_type,
                fingerprint,
            } => {
                assert_eq!(host, sshd.address());
                assert_eq!(key_type, "ssh-ed25519");
                assert_eq!(fingerprint, &offered);
            }
            other => panic!("expected an unknown host key, got {other:?}"),
        }
        let message = err.to_string();
        for needle in [sshd.address(), offered.as_str(), "not known", "strict"] {
            assert!(message.contains(needle), "{needle:?} not in {message}");
        }
    }
    assert!(!marker.exists(), "a command ran on an unknown host");
    assert!(!logged_in(&sshd), "the client logged in to an unknown host");
    assert_eq!(
        std::fs::read_to_string(&known).unwrap(),
        "",
        "known_hosts was written"
    );
}

/// Starts a sshd that also listens on `address:port`, with a host key of its own.
fn sshd_at(address: &str, port: u16) -> TestSshd {
    TestSshd::builder()
        .address(address)
        .config_line(format!("ListenAddress {address}:{port}"))
        .start()
        .unwrap()
}

fn free_port(address: &str) -> u16 {
    std::net::TcpListener::bind((address, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_host_back_with_another_key_at_the_same_address_is_refused() {
    let address = "127.0.0.1";
    let port = free_port(address);
    let dir = marker_dir();
    let known: PathBuf = dir.path().join("known_hosts");
    let marker = dir.path().join("ran");

    // First contact: accept-new records the key, and commands run.
    let first = sshd_at(address, port);
    let learn = options_without_policy(&first, &known)
        .port(port)
        .host_key_policy(HostKeyPolicy::AcceptNew);
    let host = first.host_with(learn);
    touch(&host, &marker).await.unwrap();
    assert!(marker.exists());
    std::fs::remove_file(&marker).unwrap();
    drop(host);
    let recorded = std::fs::read_to_string(&known).unwrap();
    assert!(
        recorded.contains(&format!("[{address}]:{port}")),
        "{recorded}"
    );
    let old_key = first.host_public_key();
    drop(first);

    // The host comes back at the same address and port with a new key.
    let second = sshd_at(address, port);
    let new_key = second.host_public_key();
    assert_ne!(fingerprint(&old_key), fingerprint(&new_key));
    let offered = fingerprint(&new_key);
    let strict = options_without_policy(&second, &known).port(port);
    for (what, options) in [
        ("the default policy", strict.clone()),
        (
            "accept-new",
            strict.clone().host_key_policy(HostKeyPolicy::AcceptNew),
        ),
    ] {
        let host: Arc<SshHost> = Arc::new(second.host_with(options));
        let err = touch(host.as_ref(), &marker).await.unwrap_err();
        match &err {
            RemoteError::HostKeyMismatch {
                host,
                key_type,
                fingerprint,
                recorded,
            } => {
                let line = std::fs::read_to_string(&known)
                    .unwrap()
                    .lines()
                    .position(|l| l.starts_with(&format!("[{address}]:{port} ")))
                    .unwrap()
                    + 1;
                assert_eq!(recorded, &format!("{}:{line}", known.display()), "{what}");
                assert_eq!(host, address, "{what}");
                assert_eq!(key_type, "ssh-ed25519", "{what}");
                assert_eq!(fingerprint, &offered, "{what}");
            }
            other => panic!("{what}: expected a host key mismatch, got {other:?}"),
        }
        let message = err.to_string();
        for needle in [address, offered.as_str(), "has changed", "known_hosts"] {
            assert!(
                message.contains(needle),
                "{what}: {needle:?} not in {message}"
            );
        }
        assert!(
            !marker.exists(),
            "{what}: a command ran on the changed host"
        );
        assert_eq!(
            std::fs::read_to_string(&known).unwrap(),
            recorded,
            "{what}: known_hosts was changed"
        );
    }
    assert!(
        !logged_in(&second),
        "the client logged in to the changed host"
    );

    // Off, for throwaway machines only, checks nothing: the same server is reachable.
    let off = strict.host_key_policy(HostKeyPolicy::Off);
    touch(&second.host_with(off), &marker).await.unwrap();
    assert!(marker.exists());
}
