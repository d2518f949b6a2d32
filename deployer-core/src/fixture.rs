//! Test fixtures (feature `test-fixture`): an in-memory host and connector, and an event log
//! that tests assert on. Downstream crates use them to test their own generators and commands
//! without SSH.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::errors::RemoteError;

#[path = "store_contract.rs"]
pub mod store_contract;
use crate::events::{Event, EventKind, TaskId, TaskOutcome};
use crate::host::{Connector, ExecOptions, ExecOutput, HostSpec, PutOptions, RemoteHost, Stream};

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A test that panicked while holding the lock already failed; keep going for its report.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A scripted reply of [`FakeHost`] to commands containing a pattern.
#[derive(Debug, Clone, Default)]
pub struct FakeReply {
    /// Exit status (default 0).
    pub exit_status: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// How long the command "runs".
    pub delay: Duration,
}

impl FakeReply {
    /// Exit 0 with no output.
    pub fn ok() -> Self {
        Self::default()
    }

    /// Exit with `status` and `stderr`.
    pub fn fail(status: i32, stderr: impl Into<String>) -> Self {
        FakeReply {
            exit_status: status,
            stderr: stderr.into(),
            ..Self::default()
        }
    }

    /// Sets standard output.
    pub fn stdout(mut self, out: impl Into<String>) -> Self {
        self.stdout = out.into();
        self
    }

    /// Sets how long the command takes.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// An in-memory [`RemoteHost`]: files live in a map, commands get scripted replies (exit 0 by
/// default), and every command line is recorded.
///
/// ```
/// use deployer_core::fixture::{FakeHost, FakeReply};
/// use deployer_core::{ExecOptions, RemoteHost};
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let host = FakeHost::new("fe001").reply("systemctl status", FakeReply::fail(3, "inactive"));
/// let out = host.execute("systemctl status web", &ExecOptions::new()).await.unwrap();
/// assert_eq!(out.exit_status, Some(3));
/// assert_eq!(host.commands(), ["systemctl status web"]);
/// # });
/// ```
#[derive(Debug)]
pub struct FakeHost {
    name: String,
    replies: Vec<(String, FakeReply)>,
    files: Mutex<BTreeMap<String, Vec<u8>>>,
    commands: Mutex<Vec<String>>,
    in_flight: Mutex<(usize, usize)>,
}

impl FakeHost {
    /// A host called `name` that answers every command with exit 0.
    pub fn new(name: impl Into<String>) -> Self {
        FakeHost {
            name: name.into(),
            replies: Vec::new(),
            files: Mutex::new(BTreeMap::new()),
            commands: Mutex::new(Vec::new()),
            in_flight: Mutex::new((0, 0)),
        }
    }

    /// Answers commands containing `pattern` with `reply` (first matching pattern wins).
    pub fn reply(mut self, pattern: impl Into<String>, reply: FakeReply) -> Self {
        self.replies.push((pattern.into(), reply));
        self
    }

    /// Puts a file on the host.
    pub fn with_file(self, path: impl Into<String>, content: impl Into<Vec<u8>>) -> Self {
        lock(&self.files).insert(path.into(), content.into());
        self
    }

    /// Every command line executed so far, in order.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.commands).clone()
    }

    /// The content of a file on the host.
    pub fn file(&self, path: &str) -> Option<Vec<u8>> {
        lock(&self.files).get(path).cloned()
    }

    /// The most commands that ran at the same time.
    pub fn max_in_flight(&self) -> usize {
        lock(&self.in_flight).1
    }
}

struct InFlight<'a>(&'a Mutex<(usize, usize)>);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        lock(self.0).0 -= 1;
    }
}

#[async_trait]
impl RemoteHost for FakeHost {
    fn name(&self) -> &str {
        &self.name
    }

    async fn execute(
        &self,
        command: &str,
        options: &ExecOptions,
    ) -> Result<ExecOutput, RemoteError> {
        lock(&self.commands).push(command.to_string());
        {
            let mut f = lock(&self.in_flight);
            f.0 += 1;
            f.1 = f.1.max(f.0);
        }
        let _guard = InFlight(&self.in_flight);
        let reply = self
            .replies
            .iter()
            .find(|(p, _)| command.contains(p.as_str()))
            .map(|(_, r)| r.clone())
            .unwrap_or_default();
        if !reply.delay.is_zero() {
            tokio::time::sleep(reply.delay).await;
        }
        if let Some(sink) = &options.output {
            for line in reply.stdout.lines() {
                sink(Stream::Stdout, line);
            }
            for line in reply.stderr.lines() {
                sink(Stream::Stderr, line);
            }
        }
        Ok(ExecOutput {
            exit_status: Some(reply.exit_status),
            stdout: reply.stdout.into_bytes(),
            stderr: reply.stderr.into_bytes(),
            duration: reply.delay,
        })
    }

    async fn put(
        &self,
        local: &Path,
        remote: &str,
        _options: &PutOptions,
    ) -> Result<(), RemoteError> {
        let io = |source| RemoteError::Io {
            host: self.name.clone(),
            op: "upload to".into(),
            path: remote.to_string(),
            source,
        };
        let mut stack = vec![(local.to_path_buf(), remote.to_string())];
        let mut staged = Vec::new();
        while let Some((l, r)) = stack.pop() {
            if l.is_dir() {
                for entry in std::fs::read_dir(&l).map_err(io)? {
                    let entry = entry.map_err(io)?;
                    let name = entry.file_name().to_string_lossy().into_owned();
                    stack.push((entry.path(), format!("{r}/{name}")));
                }
            } else {
                staged.push((r, std::fs::read(&l).map_err(io)?));
            }
        }
        lock(&self.files).extend(staged);
        Ok(())
    }

    async fn get(&self, remote: &str, local: &Path) -> Result<(), RemoteError> {
        let content = self.file(remote).ok_or_else(|| RemoteError::Io {
            host: self.name.clone(),
            op: "download of".into(),
            path: remote.to_string(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        std::fs::write(local, content).map_err(|source| RemoteError::Io {
            host: self.name.clone(),
            op: "download of".into(),
            path: remote.to_string(),
            source,
        })
    }

    async fn file_exists(&self, remote: &str) -> Result<bool, RemoteError> {
        let files = lock(&self.files);
        let prefix = format!("{}/", remote.trim_end_matches('/'));
        Ok(files.contains_key(remote) || files.keys().any(|k| k.starts_with(&prefix)))
    }
}

/// A [`Connector`] that hands out [`FakeHost`]s, creating plain ones on first use.
///
/// ```
/// use deployer_core::fixture::FakeConnector;
/// use deployer_core::{Connector, HostSpec};
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let connector = FakeConnector::new().unreachable("db001");
/// assert!(connector.host(&HostSpec::remote("fe001", None)).await.is_ok());
/// let err = connector.host(&HostSpec::remote("db001", None)).await.unwrap_err();
/// assert!(err.to_string().contains("db001"));
/// # });
/// ```
#[derive(Debug, Default)]
pub struct FakeConnector {
    hosts: Mutex<HashMap<String, Arc<FakeHost>>>,
    unreachable: HashSet<String>,
    connects: Mutex<Vec<String>>,
    replies: Vec<(String, FakeReply)>,
}

impl FakeConnector {
    /// A connector with no hosts yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a configured host (replacing one of the same name).
    pub fn with_host(self, host: FakeHost) -> Self {
        lock(&self.hosts).insert(host.name.clone(), Arc::new(host));
        self
    }

    /// Gives every host it creates from now on this reply to commands containing `pattern`
    /// (after the host's own replies): one reply for a whole fleet.
    ///
    /// ```
    /// use deployer_core::fixture::{FakeConnector, FakeReply};
    /// use deployer_core::{Connector, ExecOptions, HostSpec};
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let connector = FakeConnector::new().reply_all("cat VERSION", FakeReply::ok().stdout("1.2.0\n"));
    /// for name in ["fe001", "fe002"] {
    ///     let host = connector.host(&HostSpec::remote(name, None)).await.unwrap();
    ///     let out = host.execute("cat VERSION", &ExecOptions::new()).await.unwrap();
    ///     assert_eq!(out.stdout_str(), "1.2.0\n");
    /// }
    /// # });
    /// ```
    pub fn reply_all(mut self, pattern: impl Into<String>, reply: FakeReply) -> Self {
        self.replies.push((pattern.into(), reply));
        self
    }

    /// Makes connecting to `host` fail.
    pub fn unreachable(mut self, host: impl Into<String>) -> Self {
        self.unreachable.insert(host.into());
        self
    }

    /// The host called `name` (created if needed).
    pub fn fake(&self, name: &str) -> Arc<FakeHost> {
        lock(&self.hosts)
            .entry(name.to_string())
            .or_insert_with(|| {
                let mut host = FakeHost::new(name);
                host.replies.extend(self.replies.iter().cloned());
                Arc::new(host)
            })
            .clone()
    }

    /// How many times `host` was asked for.
    pub fn connects(&self, host: &str) -> usize {
        lock(&self.connects).iter().filter(|h| *h == host).count()
    }
}

#[async_trait]
impl Connector for FakeConnector {
    async fn host(&self, spec: &HostSpec) -> Result<Arc<dyn RemoteHost>, RemoteError> {
        let name = spec.host.as_deref().unwrap_or(crate::LOCAL_HOST);
        lock(&self.connects).push(name.to_string());
        if self.unreachable.contains(name) {
            return Err(RemoteError::Connect {
                host: name.to_string(),
                source: "connection refused (fake)".into(),
            });
        }
        Ok(self.fake(name))
    }
}

/// An event sink that keeps every event, with helpers for assertions.
#[derive(Debug, Default)]
pub struct EventLog {
    events: Mutex<Vec<Event>>,
}

impl EventLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<Event> {
        lock(&self.events).clone()
    }

    /// Every event kind so far.
    pub fn kinds(&self) -> Vec<EventKind> {
        lock(&self.events).iter().map(|e| e.kind.clone()).collect()
    }

    /// Ids of tasks in the order their first attempt started.
    pub fn started(&self) -> Vec<TaskId> {
        lock(&self.events)
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::TaskStarted { task, attempt: 1 } => Some(task.id),
                _ => None,
            })
            .collect()
    }

    /// How task `id` ended, if it did.
    pub fn outcome(&self, id: TaskId) -> Option<TaskOutcome> {
        lock(&self.events).iter().find_map(|e| match &e.kind {
            EventKind::TaskFinished { task, outcome, .. } if task.id == id => Some(outcome.clone()),
            _ => None,
        })
    }

    /// Ids of tasks reported as never run.
    pub fn not_run(&self) -> Vec<TaskId> {
        lock(&self.events)
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::TaskNotRun { task, .. } => Some(task.id),
                _ => None,
            })
            .collect()
    }

    fn in_flight(&self) -> (usize, HashMap<String, usize>) {
        self.in_flight_where(|_| true)
    }

    fn in_flight_where(&self, keep: impl Fn(&TaskId) -> bool) -> (usize, HashMap<String, usize>) {
        let mut now = 0usize;
        let mut max = 0usize;
        let mut per: HashMap<String, usize> = HashMap::new();
        let mut per_max: HashMap<String, usize> = HashMap::new();
        for e in lock(&self.events).iter() {
            match &e.kind {
                EventKind::TaskStarted { task, .. } | EventKind::TaskFinished { task, .. }
                    if !keep(&task.id) => {}
                EventKind::TaskStarted { task, attempt: 1 } => {
                    now += 1;
                    max = max.max(now);
                    let n = per.entry(task.host.clone()).or_default();
                    *n += 1;
                    let m = per_max.entry(task.host.clone()).or_default();
                    *m = (*m).max(*n);
                }
                EventKind::TaskFinished { task, .. } => {
                    now = now.saturating_sub(1);
                    if let Some(n) = per.get_mut(&task.host) {
                        *n = n.saturating_sub(1);
                    }
                }
                _ => {}
            }
        }
        (max, per_max)
    }

    /// The most tasks in flight at once, over the whole run (from start/finish events).
    pub fn max_in_flight(&self) -> usize {
        self.in_flight().0
    }

    /// The most tasks in flight at once on any one host.
    pub fn max_in_flight_per_host(&self) -> usize {
        self.in_flight().1.values().copied().max().unwrap_or(0)
    }

    /// The most tasks in flight at once on each host.
    pub fn max_in_flight_by_host(&self) -> HashMap<String, usize> {
        self.in_flight().1
    }

    /// The most tasks in flight at once within stage `stage`: overall, and on any one host.
    /// Stages run one after another, so this is what that stage's `concurrency` and
    /// `concurrency_per_host` limit.
    pub fn max_in_flight_in_stage(&self, stage: usize) -> (usize, usize) {
        let (all, per) = self.in_flight_where(|id| id.stage == stage);
        (all, per.values().copied().max().unwrap_or(0))
    }
}

impl crate::EventSink for EventLog {
    fn event(&self, event: &Event) {
        lock(&self.events).push(event.clone());
    }
}

/// A command that accepts any arguments, does nothing and succeeds: a stand-in for a real
/// command in tests of plans, schedules and reporters.
///
/// ```
/// use deployer_core::CommandRegistry;
/// use deployer_core::fixture::Noop;
///
/// let mut commands = CommandRegistry::new();
/// commands.register::<Noop>("restart");
/// commands.register_fn("deploy", |_| Ok(Box::new(Noop)));
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct Noop;

#[async_trait]
impl crate::command::Command for Noop {
    fn initialize(_: &crate::command::TaskArgs<'_>) -> Result<Self, crate::ValidationErrors> {
        Ok(Noop)
    }

    async fn execute(
        &self,
        _: &crate::command::ExecContext,
    ) -> Result<crate::command::Outcome, crate::CommandError> {
        Ok(crate::command::Outcome::done())
    }
}
