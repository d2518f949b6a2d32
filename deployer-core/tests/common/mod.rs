//! Commands used by the executor tests: they record, from inside `execute`, how many tasks run
//! at once overall and per host.

#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use deployer_core::*;
use serde::Deserialize;

#[derive(Default, Debug)]
pub struct State {
    pub now: usize,
    pub max: usize,
    pub per_now: HashMap<String, usize>,
    pub per_max: HashMap<String, usize>,
    /// How many times each `id` ran to completion (or was entered, see `entered`).
    pub completed: HashMap<String, usize>,
    pub entered: HashMap<String, usize>,
    /// Ids in the order they were entered.
    pub order: Vec<String>,
    pub done: usize,
}

#[derive(Default, Debug)]
pub struct Tracker {
    pub state: Mutex<State>,
    pub notify: tokio::sync::Notify,
}

impl Tracker {
    pub fn max(&self) -> usize {
        self.state.lock().unwrap().max
    }
    pub fn per_host_max(&self) -> HashMap<String, usize> {
        self.state.lock().unwrap().per_max.clone()
    }
    pub fn completed(&self, id: &str) -> usize {
        *self.state.lock().unwrap().completed.get(id).unwrap_or(&0)
    }
    pub fn entered(&self, id: &str) -> usize {
        *self.state.lock().unwrap().entered.get(id).unwrap_or(&0)
    }
    pub fn order(&self) -> Vec<String> {
        self.state.lock().unwrap().order.clone()
    }
}

struct Guard {
    tracker: Arc<Tracker>,
    host: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let mut s = self.tracker.state.lock().unwrap();
        s.now -= 1;
        *s.per_now.get_mut(&self.host).unwrap() -= 1;
        s.done += 1;
        drop(s);
        self.tracker.notify.notify_waiters();
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkArgs {
    /// Identifies the task in the tracker.
    #[serde(default)]
    pub id: Option<String>,
    /// How long it works.
    #[serde(default)]
    pub ms: u64,
    /// Fail every attempt.
    #[serde(default)]
    pub fail: bool,
    /// Fail this many first attempts, then succeed.
    #[serde(default)]
    pub fail_times: u32,
    /// Exit status reported on failure.
    #[serde(default)]
    pub exit: Option<i32>,
    /// Stderr reported on failure.
    #[serde(default)]
    pub stderr: Option<String>,
    /// Before finishing, wait until this many other tasks have finished.
    #[serde(default)]
    pub wait_done: Option<usize>,
    /// Report skipped.
    #[serde(default)]
    pub skip: bool,
}

#[derive(Debug)]
pub struct Work {
    args: WorkArgs,
    tracker: Arc<Tracker>,
}

#[async_trait]
impl Command for Work {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        unreachable!("built through register_fn")
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let host = ctx.info().host.clone();
        let id = self
            .args
            .id
            .clone()
            .unwrap_or_else(|| ctx.info().id.to_string());
        let attempt_no;
        {
            let mut s = self.tracker.state.lock().unwrap();
            s.now += 1;
            s.max = s.max.max(s.now);
            let n = s.per_now.entry(host.clone()).or_default();
            *n += 1;
            let n = *n;
            let m = s.per_max.entry(host.clone()).or_default();
            *m = (*m).max(n);
            let e = s.entered.entry(id.clone()).or_default();
            *e += 1;
            attempt_no = *e;
            s.order.push(id.clone());
        }
        let _guard = Guard {
            tracker: self.tracker.clone(),
            host,
        };
        if self.args.ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.args.ms)).await;
        }
        if let Some(n) = self.args.wait_done {
            loop {
                let notified = self.tracker.notify.notified();
                if self.tracker.state.lock().unwrap().done >= n {
                    break;
                }
                notified.await;
            }
        }
        ctx.log(&format!("work {id} attempt {attempt_no}"));
        if self.args.fail || attempt_no as u32 <= self.args.fail_times {
            return Err(CommandError::Failed {
                message: format!("work {id} failed"),
                exit_status: self.args.exit,
                stderr: self.args.stderr.clone().unwrap_or_default(),
            });
        }
        *self
            .tracker
            .state
            .lock()
            .unwrap()
            .completed
            .entry(id)
            .or_default() += 1;
        if self.args.skip {
            return Ok(Outcome::skipped("nothing to do"));
        }
        Ok(Outcome::done())
    }
}

/// A registry with the `work` command bound to a fresh tracker.
pub fn registry() -> (CommandRegistry, Arc<Tracker>) {
    let tracker = Arc::new(Tracker::default());
    let mut registry = CommandRegistry::new();
    let t = tracker.clone();
    registry.register_fn("work", move |args| {
        let parsed: WorkArgs = args.parse()?;
        Ok(Box::new(Work {
            args: parsed,
            tracker: t.clone(),
        }))
    });
    (registry, tracker)
}

pub fn work(host: &str, id: &str) -> Task {
    Task::new("work").on(host).arg("id", id)
}
