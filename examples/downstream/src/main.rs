//! Plans `platform: mysite` for this machine and runs it: `cargo run -- [ROOT]`.

use std::sync::Arc;

use deployer::{Config, Executor, GeneratorContext, Plan, remote::LocalConnector};

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    let root = std::env::args().nth(1).unwrap_or("/tmp/mysite".into());
    let yaml = format!("platform: mysite\nroot: {root}\nhosts: [local]\n");
    let config = Config::from_yaml_str(&yaml, "mysite.yaml").expect("a valid config");
    let (generators, commands) = mysite_deploy::registries();
    let tasklist = generators
        .generate(GeneratorContext::new(config))
        .await
        .expect("a plan");
    let plan = Plan::build(&tasklist, &commands).expect("a valid plan");
    let report = Executor::new(Arc::new(LocalConnector::new()))
        .run(&plan)
        .await;
    let c = report.counts;
    println!(
        "{}: {} ok, {} failed, {} not run",
        report.outcome, c.succeeded, c.failed, c.not_run
    );
    if report.succeeded() {
        0.into()
    } else {
        1.into()
    }
}
