//! What the `Driver` takes from a config besides the generated plan: a config with an
//! inventory gives each task its host's vars (its own over its groups'), and a config's
//! failure budget applies whatever the generator.

use std::sync::{Arc, Mutex};

use deployer_core::fixture::FakeConnector;
use deployer_core::inventory::Inventory;
use deployer_core::*;

/// Records `host=http_port` for each host it runs on.
#[derive(Debug)]
struct ReadPort(Arc<Mutex<Vec<String>>>);

#[async_trait]
impl Command for ReadPort {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        unreachable!("built through register_fn")
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let port = ctx
            .host_var("http_port")
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        self.0
            .lock()
            .unwrap()
            .push(format!("{}={port}", ctx.info().host));
        Ok(Outcome::done())
    }
}

/// One `read_port` task per host of the `web` group.
struct PerHost;

#[async_trait]
impl Generator for PerHost {
    async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
        let hosts = ctx.config().hostgroup("web")?.to_vec();
        Ok(Tasklist::new("ports").stage(
            Stage::new("read", 4)
                .tasks(hosts.iter().map(|h| Task::new("read_port").on(h.as_str()))),
        ))
    }
}

#[tokio::test]
async fn each_task_reads_its_hosts_vars() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let mut commands = CommandRegistry::new();
    commands.register_fn("read_port", move |_| Ok(Box::new(ReadPort(s.clone()))));
    let inventory = Inventory::from_ini_str(
        "[web]\nweb1 http_port=8081\nweb2\nweb3\n[web:vars]\nhttp_port=8080\n",
        "hosts.ini",
    )
    .unwrap();
    let config = Config::from_yaml_str("platform: ports\n", "deploy.yaml")
        .unwrap()
        .with_inventory(inventory)
        .unwrap();
    let driver = Driver::new(Arc::new(FakeConnector::new()))
        .generator("ports", PerHost)
        .commands(commands)
        .handle_signals(false);
    let finished = driver.deploy(config).await;
    assert_eq!(finished.exit_code(), exit::SUCCESS);
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, ["web1=8081", "web2=8080", "web3=8080"]);
}

/// One `work` task per host of `web`; the generator knows nothing of failure budgets.
struct FailOn;

#[async_trait]
impl Generator for FailOn {
    async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
        let hosts = ctx.config().hostgroup("web")?.to_vec();
        Ok(Tasklist::new("work").stage(
            Stage::new("work", 4).tasks(hosts.iter().map(|h| Task::new("fail_on").on(h.as_str()))),
        ))
    }
}

/// Fails on `web2`.
#[derive(Debug)]
struct FailOnWeb2;

#[async_trait]
impl Command for FailOnWeb2 {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        Ok(FailOnWeb2)
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        if ctx.info().host == "web2" {
            return Err(CommandError::failed("web2 is broken"));
        }
        Ok(Outcome::done())
    }
}

#[tokio::test]
async fn a_configs_failure_budget_applies_whatever_the_generator() {
    let mut commands = CommandRegistry::new();
    commands.register::<FailOnWeb2>("fail_on");
    let driver = Driver::new(Arc::new(FakeConnector::new()))
        .generator("work", FailOn)
        .commands(commands)
        .handle_signals(false);
    let config = |extra: &str| {
        Config::from_yaml_str(
            &format!("platform: work\nhostgroup:\n  web: [web1, web2, web3]\n{extra}"),
            "deploy.yaml",
        )
        .unwrap()
    };
    let within = driver.deploy(config("max_failures: 1\n")).await;
    assert_eq!(within.exit_code(), exit::WITHIN_BUDGET);
    // Without one, as before; a wrong type names its key.
    assert_eq!(driver.deploy(config("")).await.exit_code(), exit::FAILED);
    let wrong = driver.deploy(config("max_fail_percentage: lots\n")).await;
    assert_eq!(wrong.exit_code(), exit::BAD_INPUT);
    let message = wrong.error_message().unwrap();
    assert!(message.contains("max_fail_percentage"), "{message}");
}
