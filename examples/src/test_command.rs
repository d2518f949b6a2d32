//! A custom command, written the way a downstream crate writes one: the seed's `TestCommand`.

use deployer::{
    Command, CommandError, ExecContext, Outcome, ShellCommand, TaskArgs, ValidationErrors,
    async_trait,
};
use serde::Deserialize;

/// The task arguments, typed: unknown or mistyped arguments are reported by the dry run.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Args {
    message: String,
    #[serde(default)]
    optional_argument: Option<String>,
}

/// Prints its message on the task's host with `echo` (quoted, so any message is safe).
///
/// ```json
/// {"command": "test_command", "message": "Hello World", "optional_argument": "x"}
/// ```
#[derive(Debug)]
pub struct TestCommand {
    args: Args,
}

#[async_trait]
impl Command for TestCommand {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let args: Args = args.parse()?;
        tracing::info!(
            component = "TestCommand",
            "Initializing test command: {} / {}",
            args.message,
            args.optional_argument.as_deref().unwrap_or("None")
        );
        Ok(TestCommand { args })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let line = format!(
            "Executing test command: {} / {}",
            self.args.message,
            self.args.optional_argument.as_deref().unwrap_or("None")
        );
        let cmd = ShellCommand::new("echo")
            .arg(line)
            .build()
            .map_err(|e| CommandError::failed(e.to_string()))?;
        ctx.run_checked(&cmd).await?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}
