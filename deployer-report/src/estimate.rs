//! How long each stage should take, from the history of past runs.

use std::collections::HashMap;
use std::time::Duration;

use deployer_core::Tasklist;

/// Per stage, how long it should take according to past runs: the average duration of each
/// task's command (from [`RunStore::average_duration`](deployer_core::RunStore::average_duration))
/// summed and spread over the stage's concurrency; `None` when a command has no history.
///
/// ```
/// use deployer_core::{Stage, Task, Tasklist};
/// use std::collections::HashMap;
/// use std::time::Duration;
///
/// let t = Tasklist::new("t").stage(Stage::new("s", 2).tasks(vec![
///     Task::new("upload"), Task::new("upload"), Task::new("upload"), Task::new("upload"),
/// ]));
/// let history = HashMap::from([("upload".to_string(), Duration::from_secs(3))]);
/// let est = deployer_report::stage_estimates(&t, &history);
/// assert_eq!(est, [Some(Duration::from_secs(6))]);
/// ```
pub fn stage_estimates(
    tasklist: &Tasklist,
    history: &HashMap<String, Duration>,
) -> Vec<Option<Duration>> {
    tasklist
        .stages
        .iter()
        .map(|stage| {
            let mut total = Duration::ZERO;
            for entry in &stage.tasks {
                for task in entry.tasks() {
                    total += *history.get(&task.command)?;
                }
            }
            let lanes = stage.concurrency.min(stage.tasks.len()).max(1) as u32;
            Some(total / lanes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::{Stage, Task};

    #[test]
    fn estimates_need_history_for_every_command() {
        let t = Tasklist::new("t")
            .stage(Stage::new("a", 10).tasks(vec![Task::new("x"), Task::new("x")]))
            .stage(Stage::new("b", 1).tasks(vec![Task::new("x"), Task::new("unknown")]));
        let history = HashMap::from([("x".to_string(), Duration::from_secs(4))]);
        assert_eq!(
            stage_estimates(&t, &history),
            [Some(Duration::from_secs(4)), None]
        );
    }
}
