//! The `RemoteHost` contract against `SshHost` and a real OpenSSH server, plus SSH specifics.

mod contract;

use std::path::Path;
use std::sync::Arc;

use deployer_core::{ExecOptions, ExecOutput, PutOptions, RemoteError, RemoteHost, async_trait};
use deployer_remote::SshHost;
use deployer_remote::testing::TestSshd;

/// An `SshHost` that owns its server, so the server stops when the test drops the host.
#[derive(Debug)]
struct HostOnOwnSshd {
    host: SshHost,
    _sshd: TestSshd,
}

#[async_trait]
impl RemoteHost for HostOnOwnSshd {
    fn name(&self) -> &str {
        self.host.name()
    }
    async fn execute(
        &self,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, RemoteError> {
        self.host.execute(command, options).await
    }
    async fn put(
        &self,
        local: &Path,
        remote: &str,
        options: &PutOptions,
    ) -> Result<(), RemoteError> {
        self.host.put(local, remote, options).await
    }
    async fn get(&self, remote: &str, local: &Path) -> Result<(), RemoteError> {
        self.host.get(remote, local).await
    }
    async fn file_exists(&self, remote: &str) -> Result<bool, RemoteError> {
        self.host.file_exists(remote).await
    }
}

async fn ssh() -> Arc<dyn RemoteHost> {
    let sshd = TestSshd::start().unwrap();
    Arc::new(HostOnOwnSshd {
        host: sshd.host(),
        _sshd: sshd,
    })
}

contract_tests!(ssh);
