//! Generators: code that plans a deploy, chosen by the config's `platform`.

use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use indexmap::IndexMap;

use crate::config::Config;
use crate::errors::{GeneratorError, RemoteError};
use crate::host::{Connector, HostSpec, RemoteHost};
use crate::tasklist::Tasklist;
use crate::validation::did_you_mean;

/// What a generator gets: the merged config, and a way to reach hosts when it must ask them
/// something (e.g. which version is live) before planning.
#[derive(Clone)]
pub struct GeneratorContext {
    config: Config,
    connector: Option<Arc<dyn Connector>>,
}

impl GeneratorContext {
    /// A context with no host access (plans that need none, dry runs, tests).
    pub fn new(config: Config) -> Self {
        GeneratorContext {
            config,
            connector: None,
        }
    }

    /// Gives the generator access to hosts through `connector`.
    pub fn with_connector(mut self, connector: Arc<dyn Connector>) -> Self {
        self.connector = Some(connector);
        self
    }

    /// Whether the generator may ask hosts anything: false for a dry run
    /// ([`Driver::dry_run`](crate::Driver::dry_run)), where a generator plans without what hosts
    /// would tell it (e.g. deploys every host instead of skipping those already on a version).
    pub fn has_host_access(&self) -> bool {
        self.connector.is_some()
    }

    /// The merged config.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The host `host` (logging in as `user`), connecting on first use. Fails when the context
    /// has no connector.
    pub async fn host(
        &self,
        host: &str,
        user: Option<&str>,
    ) -> Result<Arc<dyn RemoteHost>, GeneratorError> {
        let connector = self.connector.as_ref().ok_or_else(|| {
            GeneratorError::Remote(RemoteError::Other {
                host: host.to_string(),
                message: "this generator needs host access, but none was given".to_string(),
            })
        })?;
        Ok(connector
            .host(&HostSpec::remote(host, user.map(str::to_string)))
            .await?)
    }

    /// The hosts of a service, expanding hostgroups (see [`Config::service_hosts`]).
    pub fn service_hosts(&self, service: &str) -> Result<Vec<String>, GeneratorError> {
        Ok(self.config.service_hosts(service)?)
    }

    /// The hosts of a hostgroup.
    pub fn hostgroup_hosts(&self, hostgroup: &str) -> Result<Vec<String>, GeneratorError> {
        Ok(self.config.hostgroup(hostgroup)?.to_vec())
    }
}

impl fmt::Debug for GeneratorContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratorContext")
            .field("config", &self.config.origin())
            .field("connector", &self.connector.is_some())
            .finish()
    }
}

/// Plans a deploy: turns a config into a [`Tasklist`].
///
/// ```
/// use deployer_core::*;
///
/// struct Hello;
///
/// #[async_trait::async_trait]
/// impl Generator for Hello {
///     async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
///         let hosts = ctx.service_hosts("web")?;
///         Ok(Tasklist::new("hello").stage(
///             Stage::new("greet", 10).per_host(1).tasks(
///                 hosts.iter().map(|h| Task::new("echo").on(h).arg("message", "hi")),
///             ),
///         ))
///     }
/// }
///
/// let mut generators = GeneratorRegistry::new();
/// generators.register("hello", Hello);
/// let config = Config::from_yaml_str(
///     "platform: hello\nhostgroup: {fe: [fe001, fe002]}\nservice: {web: {hosts: [fe]}}",
///     "c.yaml",
/// ).unwrap();
/// let tasklist = tokio::runtime::Runtime::new().unwrap()
///     .block_on(generators.generate(GeneratorContext::new(config)))
///     .unwrap();
/// assert_eq!(tasklist.hosts(), ["fe001", "fe002"]);
/// ```
#[async_trait]
pub trait Generator: Send + Sync {
    /// Builds the tasklist. May query hosts through the context.
    async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError>;
}

/// Maps `platform` names to generators.
#[derive(Clone, Default)]
pub struct GeneratorRegistry {
    generators: IndexMap<String, Arc<dyn Generator>>,
}

impl GeneratorRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `generator` for `platform`, replacing an earlier one.
    pub fn register(
        &mut self,
        platform: impl Into<String>,
        generator: impl Generator + 'static,
    ) -> &mut Self {
        self.generators.insert(platform.into(), Arc::new(generator));
        self
    }

    /// Registered platforms, in registration order.
    pub fn platforms(&self) -> impl Iterator<Item = &str> {
        self.generators.keys().map(String::as_str)
    }

    /// The generator for `platform`, or an error listing the known ones with a suggestion.
    pub fn get(&self, platform: &str) -> Result<Arc<dyn Generator>, GeneratorError> {
        self.generators
            .get(platform)
            .cloned()
            .ok_or_else(|| GeneratorError::UnknownPlatform {
                platform: platform.to_string(),
                known: self.platforms().map(str::to_string).collect(),
                hint: did_you_mean(platform, self.platforms()).map(str::to_string),
            })
    }

    /// Runs the generator that the context's config names in `platform`.
    pub async fn generate(&self, ctx: GeneratorContext) -> Result<Tasklist, GeneratorError> {
        let generator = self.get(ctx.config().platform())?;
        generator.generate(&ctx).await
    }
}

impl fmt::Debug for GeneratorRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.generators.keys()).finish()
    }
}
