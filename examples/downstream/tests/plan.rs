//! The `mysite` plan against in-memory hosts.

use std::sync::Arc;

use deployer::Config;
use deployer::fixture::FakeConnector;

#[tokio::test]
async fn mysite_prepares_then_announces_on_every_host() {
    let yaml = "platform: mysite\nroot: /srv/site\nhosts: [fe001, fe002]\n";
    let config = Config::from_yaml_str(yaml, "mysite.yaml").unwrap();
    let connector = Arc::new(FakeConnector::new());
    let driver = mysite_deploy::driver(connector.clone()).handle_signals(false);
    let finished = driver.deploy(config).await;
    assert_eq!(finished.exit_code(), 0, "{:?}", finished.error_message());
    let commands = connector.fake("fe002").commands();
    assert_eq!(commands[0], "mkdir -p -- /srv/site");
    assert_eq!(commands.last().unwrap(), "echo 'fe002 ready'");
}

#[tokio::test]
async fn a_missing_key_is_bad_input_naming_the_file() {
    let config = Config::from_yaml_str("platform: mysite\nhosts: [a]\n", "mysite.yaml").unwrap();
    let finished = mysite_deploy::driver(Arc::new(FakeConnector::new()))
        .deploy(config)
        .await;
    assert_eq!(finished.exit_code(), 2);
    assert_eq!(
        finished.error_message().as_deref(),
        Some("mysite.yaml: missing required key \"root\"")
    );
}
