//! The `TestFleet` harness: many loopback hosts served by a few sshd masters, one key, one port.

use std::time::{Duration, Instant};

use deployer_core::{Connector, ExecOptions, HostSpec, RemoteError};
use deployer_remote::testing::TestFleet;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_address_is_its_own_host_and_refusing_ones_refuse() {
    let fleet = TestFleet::builder()
        .hosts(40)
        .refusing(2)
        .start()
        .expect("the fleet starts");
    assert_eq!(fleet.masters(), 3, "16 addresses per master");
    assert_eq!(fleet.hosts().len(), 40);
    assert_eq!(fleet.hosts()[0], "127.1.0.1");
    assert_eq!(fleet.hosts()[39], "127.1.0.40");
    assert_eq!(fleet.refusing_hosts(), ["127.1.0.41", "127.1.0.42"]);
    let connector = fleet.connector();
    let mut set = tokio::task::JoinSet::new();
    for address in fleet.hosts() {
        let host = connector
            .host(&HostSpec::remote(address, None))
            .await
            .unwrap();
        let address = address.clone();
        set.spawn(async move {
            // sshd says which of its addresses the client reached.
            let out = host
                .execute("echo $SSH_CONNECTION; whoami", &ExecOptions::new())
                .await
                .unwrap_or_else(|e| panic!("{address}: {e}"));
            (address, out.stdout_str().to_string())
        });
    }
    while let Some(done) = set.join_next().await {
        let (address, out) = done.unwrap();
        let mut lines = out.lines();
        let conn: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(conn[2], address, "{out}");
        assert_eq!(conn[3], fleet.port().to_string(), "{out}");
        assert_eq!(lines.next(), Some(fleet.user()), "{out}");
    }
    assert_eq!(fleet.logs().matches("Accepted publickey").count(), 40);

    for address in fleet.refusing_hosts() {
        let t = Instant::now();
        let host = connector
            .host(&HostSpec::remote(address, None))
            .await
            .unwrap();
        let e = host
            .execute("true", &ExecOptions::new())
            .await
            .expect_err("nothing listens");
        assert!(matches!(e, RemoteError::Connect { .. }), "{e:?}");
        assert!(format!("{e:?}").contains("refused"), "{e:?}");
        assert!(t.elapsed() < Duration::from_secs(5), "refused at once");
    }

    let (first, port) = (fleet.hosts()[0].clone(), fleet.port());
    drop(fleet);
    assert!(
        std::net::TcpStream::connect((first.as_str(), port)).is_err(),
        "the masters are gone after drop"
    );
}

#[test]
fn bad_sizes_are_refused_with_the_limits() {
    let e = TestFleet::start(0).unwrap_err();
    assert!(e.to_string().contains("at least one host"), "{e}");
    let e = TestFleet::builder()
        .hosts(65_000)
        .refusing(100)
        .start()
        .unwrap_err();
    assert!(e.to_string().contains("at most 65024 addresses"), "{e}");
}
