//! The `mysite` platform: a generator and a custom command of a host application.

use deployer::{
    Command, CommandError, ExecContext, Generator, GeneratorContext, GeneratorError, Outcome,
    ShellCommand, Stage, Task, TaskArgs, Tasklist, ValidationErrors, async_trait,
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
        let line = ShellCommand::new("echo").arg(&self.message).build();
        ctx.run_checked(&line.map_err(|e| CommandError::failed(e.to_string()))?)
            .await?;
        Ok(Outcome::done())
    }
}

/// Plans `platform: mysite`: a directory, then an announcement, on every host of `hosts`.
pub struct MySite;

#[async_trait]
impl Generator for MySite {
    async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
        let root = ctx
            .config()
            .get_as::<String>("root")?
            .unwrap_or("/tmp/mysite".into());
        let hosts = ctx
            .config()
            .get_as::<Vec<String>>("hosts")?
            .unwrap_or_default();
        let task = |command: &str, host: &str| Task::new(command).on(host);
        let prepare = hosts
            .iter()
            .map(|h| task("createdirectory", h).arg("source", root.as_str()));
        let announce = hosts
            .iter()
            .map(|h| task("announce", h).arg("message", format!("{h} ready")));
        Ok(Tasklist::new("mysite")
            .stage(Stage::new("Prepare", 10).tasks(prepare))
            .stage(Stage::new("Announce", 10).tasks(announce)))
    }
}

/// The registries of the `mysite` tool: its platform, its command and the standard ones.
pub fn registries() -> (deployer::GeneratorRegistry, deployer::CommandRegistry) {
    let mut generators = deployer::GeneratorRegistry::new();
    generators.register("mysite", MySite);
    let mut commands = deployer::CommandRegistry::new();
    deployer_commands::register_all(&mut commands);
    commands.register::<Announce>("announce");
    (generators, commands)
}
