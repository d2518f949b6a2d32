//! What a person (or a script) sees of a deployer run. Every reporter is an
//! [`EventSink`](deployer_core::EventSink) fed by the executor's typed event stream, or a
//! function of a value (a plan, a run record); none knows where the events come from, and the
//! executor itself prints nothing.
//!
//! * [`JsonLines`]: every event as one JSON object per line, to any [`std::io::Write`].
//! * [`Summary`]: the recap at the end of a run — a row per host, then every failure with its
//!   command, exit status and the tail of its stderr ([`Summary::render`] returns the text);
//!   [`Recap`] prints it to a writer when the run ends.
//! * [`Progress`] (feature `progress`, indicatif): a live bar per stage with the hosts in
//!   flight and the time left by history ([`stage_estimates`]).
//! * [`TracingSink`] turns events into `tracing` events; [`LogFormat`] (feature `log`,
//!   tracing-subscriber) prints them as `time [LEVEL] [component] [host] [tag] message`.
//! * [`to_dot`]: a plan as a Graphviz graph; [`render_runs`], [`render_run`] and [`render_approvals`]: the run
//!   store's listings.
//!
//! # Example
//!
//! A run on in-memory hosts, reported as JSON lines into a buffer and as a recap:
//!
//! ```
//! use std::sync::Arc;
//! use deployer_core::fixture::{FakeConnector, FakeReply};
//! use deployer_core::{CommandRegistry, Executor, Plan, Stage, Task, Tasklist};
//! use deployer_report::{JsonLines, Summary};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut commands = CommandRegistry::new();
//! commands.register_fn("noop", |_| Ok(Box::new(deployer_core::fixture::Noop)));
//! // One at a time: rows follow the order hosts finish.
//! let tasklist = Tasklist::new("demo").stage(Stage::new("all", 1).tasks(vec![
//!     Task::new("noop").on("fe001"),
//!     Task::new("noop").on("fe002"),
//! ]));
//! let plan = Plan::build(&tasklist, &commands).unwrap();
//! let json = Arc::new(JsonLines::new(Vec::new()));
//! let recap = Arc::new(Summary::new());
//! let report = Executor::new(Arc::new(FakeConnector::new()))
//!     .sink(json.clone())
//!     .sink(recap.clone())
//!     .run(&plan)
//!     .await;
//! let text = recap.render(&report);
//! assert!(text.starts_with("HOST   OK  FAILED      TIME\nfe001   1       0"), "{text}");
//! assert!(text.contains(": 2 ok\n"), "{text}");
//! assert!(text.contains("run \"demo\" succeeded"), "{text}");
//! let json = Arc::try_unwrap(json).unwrap().into_inner();
//! assert!(String::from_utf8(json).unwrap().lines().count() >= 6);
//! # });
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod columns;
mod dot;
mod estimate;
mod json;
mod log;
#[cfg(feature = "progress")]
mod progress;
mod recap;
mod runs;

pub use dot::to_dot;
pub use estimate::stage_estimates;
pub use json::{JsonLines, OUTPUT_BYTES_PER_TASK, OUTPUT_INTERVAL};
#[cfg(feature = "log")]
#[cfg_attr(docsrs, doc(cfg(feature = "log")))]
pub use log::LogFormat;
pub use log::TracingSink;
#[cfg(feature = "progress")]
#[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
pub use progress::Progress;
pub use recap::{HostSummary, RECAP_GROUP_ABOVE, Recap, Summary};
pub use runs::{render_approvals, render_run, render_runs, render_work};

/// Re-exported so a host application draws on the same indicatif version as [`Progress`].
#[cfg(feature = "progress")]
#[cfg_attr(docsrs, doc(cfg(feature = "progress")))]
pub use indicatif::ProgressDrawTarget;
