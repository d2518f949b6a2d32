//! The `RemoteHost` contract against `LocalHost`.

mod contract;

use std::sync::Arc;

use deployer_core::{Connector, HostSpec, RemoteHost};
use deployer_remote::{LocalConnector, LocalHost};

async fn local() -> Arc<dyn RemoteHost> {
    Arc::new(LocalHost::new())
}

contract_tests!(local);

#[tokio::test]
async fn connector_hands_out_one_local_host() {
    let connector = LocalConnector::new();
    let a = connector.host(&HostSpec::local()).await.unwrap();
    let b = connector.host(&HostSpec::local()).await.unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert_eq!(a.name(), "local");
    let err = connector
        .host(&HostSpec::remote("fe001", None))
        .await
        .unwrap_err();
    assert_eq!(err.host(), "fe001");
}
