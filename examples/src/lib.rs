//! Small programs a user of the deployer crate family copies, as a downstream crate would
//! write them against the `deployer` facade.
//!
//! * [`test_generator`] and [`test_command`]: the seed's `TestGenerator` and `TestCommand`,
//!   a custom generator and a custom command in their own small files.
//! * The `seed-deploy` binary wires them together: config → generator → plan → run on this
//!   machine, logging in the seed's line format.
//!
//! The `deploy`, `books` and `catalog` programs live in the `deployer-cli` crate.

pub mod test_command;
pub mod test_generator;
