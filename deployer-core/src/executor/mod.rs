//! The executor: stages one after another, tasks within a stage through the job queue.
//!
//! Each file has one role: `options` (cancel, run options, targets), `journal`, `report` (what
//! a run returns), `imp` (the `Executor`), `scheduler` (one stage's job queue) and `task` (one
//! entry's attempts).

mod imp;
mod journal;
mod options;
mod report;
mod scheduler;
mod task;

pub use imp::Executor;
pub(crate) use imp::{Emitter, REMOVED_REASON, Shared};
pub use journal::Journal;
pub use options::{CancelHandle, RunOptions, TargetSet};
pub use report::{DroppedHost, FailedTask, RunError, RunReport, StageReport, error_chain};
pub(crate) use scheduler::{EntryResult, JobQueue};
pub(crate) use task::{done_earlier, dropped, not_run, run_entry, skipped};
