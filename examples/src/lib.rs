//! Examples of the deployer crate family, as a downstream crate would write them.
//!
//! * [`test_generator`] and [`test_command`]: the seed's `TestGenerator` and `TestCommand`,
//!   a custom generator and a custom command in their own small files.
//! * [`release`]: the `release` platform — a generator built from the standard commands that
//!   lays out `releases/<version>/`, links shared paths, switches `current` in a rolling
//!   deploy that keeps `min_nodes_up` hosts serving, and cleans up old releases.
//! * [`report`]: what a person sees — a progress display, log lines, a per-host summary,
//!   JSON lines, and a Graphviz rendering of a plan.
//!
//! The binaries `deploy` and `seed-deploy` wire them together.

pub mod release;
pub mod report;
pub mod test_command;
pub mod test_generator;
