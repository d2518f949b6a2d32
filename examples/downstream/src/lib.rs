//! The `mysite` platform: a generator and a custom command of a host application.

use std::sync::Arc;

use deployer::{
    Command, CommandError, Connector, Driver, ExecContext, Generator, GeneratorContext,
    GeneratorError, Outcome, ShellCommand, Stage, Task, TaskArgs, Tasklist, ValidationErrors,
    async_trait,
};

/// `announce`: echoes a message on its host.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Announce {
    message: String,
}

#[async_trait]
impl Command for Announce {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        args.parse()
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        ctx.run_checked(&ShellCommand::new("echo").arg(&self.message).build()?)
            .await?;
        Ok(Outcome::done())
    }
}

/// Plans `platform: mysite`: a directory, `settle` seconds of waiting (when set), then an
/// announcement, on every host of `hosts`.
pub struct MySite;

#[async_trait]
impl Generator for MySite {
    async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
        let root: String = ctx.config().require("root")?;
        let hosts: Vec<String> = ctx.config().require("hosts")?;
        let mkdir = each("Prepare", &hosts, "createdirectory", |_| {
            ("source", root.clone())
        });
        let mut plan = Tasklist::new("mysite").stage(mkdir);
        if let Some(secs) = ctx.config().get_as::<u32>("settle")? {
            let sleep = format!("sleep {secs}");
            plan = plan.stage(each("Settle", &hosts, "execute_command", |_| {
                ("command_line", sleep.clone())
            }));
        }
        Ok(plan.stage(each("Announce", &hosts, "announce", |h| {
            ("message", format!("{h} ready"))
        })))
    }
}

/// A stage running `command` on every host, with one argument made for each.
fn each(
    name: &str,
    hosts: &[String],
    command: &str,
    arg: impl Fn(&str) -> (&'static str, String),
) -> Stage {
    Stage::new(name, 10).tasks(hosts.iter().map(|h| {
        let (key, value) = arg(h);
        Task::new(command).on(h).arg(key, value)
    }))
}

/// The `mysite` tool's driver: its platform, its command and the standard ones.
pub fn driver(connector: Arc<dyn Connector>) -> Driver {
    let commands = deployer_commands::registry();
    let driver = Driver::new(connector).generator("mysite", MySite);
    driver.commands(commands).command::<Announce>("announce")
}
