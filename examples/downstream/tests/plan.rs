//! The `mysite` plan against in-memory hosts.

use std::sync::Arc;

use deployer::fixture::FakeConnector;
use deployer::{Config, Executor, GeneratorContext, Plan};

#[tokio::test]
async fn mysite_prepares_then_announces_on_every_host() {
    let yaml = "platform: mysite\nroot: /srv/site\nhosts: [fe001, fe002]\n";
    let config = Config::from_yaml_str(yaml, "mysite.yaml").unwrap();
    let (generators, commands) = mysite_deploy::registries();
    let tasklist = generators
        .generate(GeneratorContext::new(config))
        .await
        .unwrap();
    let plan = Plan::build(&tasklist, &commands).unwrap();
    let connector = Arc::new(FakeConnector::new());
    assert!(
        Executor::new(connector.clone())
            .run(&plan)
            .await
            .succeeded()
    );
    let commands = connector.fake("fe002").commands();
    assert!(
        commands[0].contains("mkdir") && commands[0].contains("/srv/site"),
        "{commands:?}"
    );
    assert_eq!(commands.last().unwrap(), "echo 'fe002 ready'");
}
