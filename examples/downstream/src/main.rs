//! `mysite-deploy CONFIG [STORE]`: deploys `platform: mysite` with progress, a recap and a
//! SQLite run store; SIGINT, SIGTERM and SIGHUP cancel (exit 130). Hosts are played by this
//! machine (a rehearsal).

use std::sync::Arc;

use deployer::report::{Progress, Recap};
use deployer::{Config, Finished, remote::LocalConnector};

#[tokio::main]
async fn main() -> Finished {
    let args: Vec<String> = std::env::args().collect();
    let config = match Config::load(args.get(1).map_or("mysite.yaml", String::as_str)) {
        Ok(config) => config,
        Err(e) => return e.into(),
    };
    let store = match deployer::store::open(args.get(2).map_or("mysite-runs.db", |s| s)).await {
        Ok(store) => store,
        Err(e) => return e.into(),
    };
    let driver = mysite_deploy::driver(Arc::new(LocalConnector::rehearsal())).store(store);
    driver
        .sink(Progress::stderr())
        .sink(Recap::stderr())
        .deploy(config)
        .await
}
