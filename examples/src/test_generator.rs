//! A custom generator, written the way a downstream crate writes one: the seed's
//! `TestGenerator`, which plans one stage with one `test_command` task.

use deployer::{Generator, GeneratorContext, GeneratorError, Stage, Task, Tasklist, async_trait};

/// Plans the seed's "Test Generator" tasklist.
///
/// Register it with `generators.register("test", TestGenerator)`; a config with
/// `platform: test` then selects it.
pub struct TestGenerator;

#[async_trait]
impl Generator for TestGenerator {
    async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
        tracing::info!(component = "TestGenerator", "Generating test task list");
        let message = ctx
            .config()
            .get_as::<String>("message")?
            .unwrap_or_else(|| "Hello World".to_string());
        let task = Task::new("test_command").arg("message", message);
        Ok(Tasklist::new("Test Generator").stage(Stage::new("Test stage", 1).task(task)))
    }
}
