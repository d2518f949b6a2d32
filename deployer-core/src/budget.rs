//! The failure budget: how many hosts may fail before a run stops.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::validation::{ValidationError, ValidationErrors};

/// How many hosts may fail before a run (or a stage) stops: with none set, the first failure
/// stops the run (nothing new starts, running tasks and started chains finish, later stages do
/// not run).
///
/// While a failure keeps within the budget, its host is **dropped**: its other tasks of the
/// stage and of every later stage do not run (each counts as
/// [`TaskCategory::Dropped`](crate::TaskCategory::Dropped), with the reason), its chain stops
/// at the failing step, its `finally` stages still run, and the other hosts go on. A run that
/// ends with dropped hosts and no other failure is
/// [`RunOutcome::Degraded`](crate::RunOutcome::Degraded) (`deploy` exits 4), and a resume
/// runs only what the dropped hosts did not finish. The failure that goes past the budget
/// stops the run as without one.
///
/// A budget counts **hosts**, not tasks: a host that fails twice counts once. It is set on the
/// tasklist (counted over every host of the run) and may be set on a stage (counted over the
/// stage's hosts, instead of the tasklist's for that stage; the tasklist's, when set, is still
/// checked over the run). `max_failures` and `max_fail_percentage` may both be given: going
/// past either stops the run. A failure inside a `finally` stage is not counted: it fails the
/// run, as always. With [`Stage::min_hosts_up`](crate::Stage::min_hosts_up), a failure that
/// would leave fewer hosts of the stage up than that stops the run whatever the budget.
///
/// In JSON, keys of the tasklist or of a stage:
/// `"max_failures": 10` or `"max_fail_percentage": 5`.
///
/// ```
/// use deployer_core::FailureBudget;
///
/// let budget = FailureBudget::max_failures(10);
/// assert!(!budget.exceeded(10, 200));
/// assert!(budget.exceeded(11, 200));
///
/// let budget = FailureBudget::max_fail_percentage(5);
/// assert!(!budget.exceeded(10, 200)); // 5 %
/// assert!(budget.exceeded(11, 200));
///
/// // None set: the first failure stops the run.
/// assert!(FailureBudget::default().exceeded(1, 1000));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct FailureBudget {
    /// At most this many hosts may fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<usize>,
    /// At most this percentage (0 to 100) of the hosts may fail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_fail_percentage: Option<u8>,
}

impl FailureBudget {
    /// At most `n` hosts may fail.
    pub fn max_failures(n: usize) -> Self {
        FailureBudget {
            max_failures: Some(n),
            max_fail_percentage: None,
        }
    }

    /// At most `percent` % of the hosts may fail.
    pub fn max_fail_percentage(percent: u8) -> Self {
        FailureBudget {
            max_failures: None,
            max_fail_percentage: Some(percent),
        }
    }

    /// Whether either limit is set.
    pub fn is_set(&self) -> bool {
        self.max_failures.is_some() || self.max_fail_percentage.is_some()
    }

    /// Whether `failed` hosts out of `total` go past the budget (any failure does when none
    /// is set).
    pub fn exceeded(&self, failed: usize, total: usize) -> bool {
        if !self.is_set() {
            return failed > 0;
        }
        self.max_failures.is_some_and(|n| failed > n)
            || self
                .max_fail_percentage
                .is_some_and(|p| failed.saturating_mul(100) > usize::from(p) * total)
    }

    /// Reads `max_failures` and `max_fail_percentage` from a tasklist or stage object at
    /// `path` ("" for the tasklist).
    pub(crate) fn parse(
        obj: &Map<String, Value>,
        path: &str,
        errors: &mut ValidationErrors,
    ) -> FailureBudget {
        let key_path = |key: &str| {
            if path.is_empty() {
                key.to_string()
            } else {
                format!("{path}.{key}")
            }
        };
        let max_failures = match obj.get("max_failures") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) => Some(usize::try_from(n).unwrap_or(usize::MAX)),
                None => {
                    errors.push(
                        ValidationError::new(key_path("max_failures"), format!("found {v}"))
                            .expected("a whole number of hosts (0 or more)"),
                    );
                    None
                }
            },
        };
        let max_fail_percentage = match obj.get("max_fail_percentage") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n <= 100 => Some(n as u8),
                _ => {
                    errors.push(
                        ValidationError::new(key_path("max_fail_percentage"), format!("found {v}"))
                            .expected("a whole percentage from 0 to 100"),
                    );
                    None
                }
            },
        };
        FailureBudget {
            max_failures,
            max_fail_percentage,
        }
    }
}

impl fmt::Display for FailureBudget {
    /// `max_failures 10`, `max_fail_percentage 5`, both, or `no failure allowed`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.max_failures, self.max_fail_percentage) {
            (None, None) => f.write_str("no failure allowed"),
            (Some(n), None) => write!(f, "max_failures {n}"),
            (None, Some(p)) => write!(f, "max_fail_percentage {p}"),
            (Some(n), Some(p)) => write!(f, "max_failures {n}, max_fail_percentage {p}"),
        }
    }
}
