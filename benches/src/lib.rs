//! Shared pieces of the benchmarks: a no-op command and a host that does nothing, so that what
//! is measured is the scheduler itself.

/// The throwaway PostgreSQL server of `deployer-store`'s tests, shared (one copy).
#[path = "../../deployer-store/tests/common/pg.rs"]
pub mod pg;
pub mod ssh;

use std::path::Path;
use std::sync::Arc;

use deployer_core::{
    Command, CommandError, CommandRegistry, Connector, ExecContext, ExecOptions, ExecOutput,
    HostSpec, Outcome, Plan, PutOptions, RemoteError, RemoteHost, Stage, Task, TaskArgs, Tasklist,
    ValidationErrors, async_trait,
};

/// A command that does nothing.
#[derive(Debug)]
pub struct Noop;

#[async_trait]
impl Command for Noop {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        Ok(Noop)
    }
    async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> {
        Ok(Outcome::done())
    }
}

/// A host that does nothing.
#[derive(Debug)]
pub struct NullHost;

#[async_trait]
impl RemoteHost for NullHost {
    fn name(&self) -> &str {
        "null"
    }
    async fn execute(&self, _: &str, _: &ExecOptions) -> Result<ExecOutput, RemoteError> {
        Ok(ExecOutput::default())
    }
    async fn put(&self, _: &Path, _: &str, _: &PutOptions) -> Result<(), RemoteError> {
        Ok(())
    }
    async fn get(&self, _: &str, _: &Path) -> Result<(), RemoteError> {
        Ok(())
    }
    async fn file_exists(&self, _: &str) -> Result<bool, RemoteError> {
        Ok(true)
    }
}

/// Hands out one shared [`NullHost`] for every host.
#[derive(Debug)]
pub struct NullConnector(Arc<dyn RemoteHost>);

impl Default for NullConnector {
    fn default() -> Self {
        NullConnector(Arc::new(NullHost))
    }
}

#[async_trait]
impl Connector for NullConnector {
    async fn host(&self, _: &HostSpec) -> Result<Arc<dyn RemoteHost>, RemoteError> {
        Ok(self.0.clone())
    }
}

/// A registry with `noop`.
pub fn registry() -> CommandRegistry {
    let mut r = CommandRegistry::new();
    r.register::<Noop>("noop");
    r
}

/// One stage of `tasks` no-op tasks spread round-robin over `hosts` hosts.
pub fn one_stage(tasks: usize, hosts: usize, concurrency: usize, per_host: usize) -> Plan {
    let names: Vec<String> = (0..hosts).map(|i| format!("h{i}")).collect();
    let stage = Stage::new("bench", concurrency)
        .per_host(per_host)
        .tasks((0..tasks).map(|i| Task::new("noop").on(names[i % hosts].clone())));
    Plan::build(&Tasklist::new("bench").stage(stage), &registry()).expect("valid plan")
}

/// `stages` stages of `tasks` no-op tasks each, over 10 hosts.
pub fn many_stages(stages: usize, tasks: usize) -> Plan {
    let mut t = Tasklist::new("bench");
    for s in 0..stages {
        t = t.stage(
            Stage::new(format!("s{s}"), 10)
                .per_host(1)
                .tasks((0..tasks).map(|i| Task::new("noop").on(format!("h{}", i % 10)))),
        );
    }
    Plan::build(&t, &registry()).expect("valid plan")
}

/// The baseline: `n` no-op futures spawned through a bare tokio semaphore of `permits`.
pub async fn semaphore_loop(n: usize, permits: usize) {
    let sem = Arc::new(tokio::sync::Semaphore::new(permits));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..n {
        let Ok(permit) = sem.clone().acquire_owned().await else {
            break;
        };
        set.spawn(async move {
            drop(permit);
        });
    }
    while set.join_next().await.is_some() {}
}

/// Peak resident memory of this process so far, in bytes.
pub fn peak_rss() -> u64 {
    // SAFETY: getrusage writes into the struct we pass and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    if rc == 0 {
        usage.ru_maxrss as u64 * 1024
    } else {
        0
    }
}
