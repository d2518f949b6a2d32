//! The `deploy` config that reaches a `TestFleet`: included by path by the fleet and worker
//! tests.

use std::path::{Path, PathBuf};

use deployer_remote::testing::TestFleet;

/// A config that reaches the fleet's hosts: its port, key, known_hosts (strict) and user.
pub fn ssh_config(fleet: &TestFleet, dir: &Path) -> PathBuf {
    let config = dir.join("deploy.yaml");
    std::fs::write(
        &config,
        format!(
            "platform: release\nuser: {}\nssh:\n  port: {}\n  identity_file: {}\n  \
             known_hosts: {}\n  host_key_policy: strict\n  agent: false\n  config: false\n",
            fleet.user(),
            fleet.port(),
            fleet.client_key().display(),
            fleet.known_hosts().display(),
        ),
    )
    .unwrap();
    config
}
