//! `Connector::check_capacity` is asked once per plan, with the number of distinct hosts the
//! plan names, and its refusal is bad input (exit 2) before anything runs.

use std::sync::{Arc, Mutex};

use deployer_core::{
    Connector, DriveError, Driver, HostSpec, RemoteError, RemoteHost, Stage, Task, Tasklist,
    async_trait,
};

/// Serves nothing; records what it was asked and refuses more than `room` hosts.
struct Small {
    room: usize,
    asked: Mutex<Vec<usize>>,
}

#[async_trait]
impl Connector for Small {
    async fn host(&self, spec: &HostSpec) -> Result<Arc<dyn RemoteHost>, RemoteError> {
        panic!("no host may be contacted: {spec:?}")
    }

    fn check_capacity(&self, hosts: usize) -> Result<(), RemoteError> {
        self.asked.lock().unwrap().push(hosts);
        if hosts > self.room {
            return Err(RemoteError::Other {
                host: "local".into(),
                message: format!("{hosts} hosts need more than {}", self.room),
            });
        }
        Ok(())
    }
}

fn tasklist(hosts: &[&str]) -> Tasklist {
    let tasks = hosts.iter().map(|h| {
        Task::new("createdirectory")
            .on(*h)
            .arg("source", format!("/tmp/{h}"))
    });
    let again = hosts.iter().map(|h| {
        Task::new("createdirectory")
            .on(*h)
            .arg("source", format!("/tmp/{h}/again"))
    });
    Tasklist::new("capacity")
        .stage(Stage::new("One", 2).tasks(tasks))
        .stage(Stage::new("Two", 2).tasks(again))
}

#[test]
fn the_connector_is_asked_once_with_the_distinct_hosts_and_its_refusal_is_bad_input() {
    let connector = Arc::new(Small {
        room: 2,
        asked: Mutex::new(Vec::new()),
    });
    let driver = Driver::new(connector.clone())
        .commands(deployer_tests::registry())
        .handle_signals(false);

    driver.plan_tasklist(&tasklist(&["fe1", "fe2"])).unwrap();
    assert_eq!(*connector.asked.lock().unwrap(), [2]);

    let err = driver
        .plan_tasklist(&tasklist(&["fe1", "fe2", "fe3"]))
        .unwrap_err();
    assert!(matches!(err, DriveError::Hosts(_)), "{err:?}");
    assert_eq!(err.exit_code(), deployer_core::exit::BAD_INPUT);
    assert_eq!(
        err.to_string(),
        "1 problem found\n  local: 3 hosts need more than 2"
    );
    assert_eq!(*connector.asked.lock().unwrap(), [2, 3]);
}
