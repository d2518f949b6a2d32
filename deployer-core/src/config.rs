//! Configuration: a YAML file whose only required key is `platform`, merged with command-line
//! values.

use std::path::Path;
use std::sync::Arc;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::errors::ConfigError;
use crate::inventory::Inventory;
use crate::redact::Redactor;
use crate::validation::did_you_mean;

/// One service of the `service` section.
#[derive(Clone, PartialEq)]
pub struct ServiceConfig {
    /// The service's name (its key in the `service` section).
    pub name: String,
    /// Hostgroup names or host names the service runs on.
    pub hosts: Vec<String>,
    /// The port it listens on, if given.
    pub port: Option<u16>,
    /// Every key of the service's section, including `hosts` and `port`.
    pub settings: Map<String, Value>,
}

/// The typed parts of a config file: deserialized only to check types with line and column.
#[derive(Deserialize)]
#[allow(dead_code)]
struct Typed {
    platform: Option<String>,
    #[serde(default)]
    hostgroup: Option<IndexMap<String, Vec<String>>>,
    #[serde(default)]
    service: Option<IndexMap<String, TypedService>>,
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct TypedService {
    #[serde(default)]
    hosts: Vec<String>,
    #[serde(default)]
    port: Option<u16>,
}

/// A deployment configuration: `platform` (which generator plans the deploy), optional
/// `hostgroup` and `service` sections as in the original deployer, and any other keys a
/// generator wants, with command-line values layered on top.
///
/// ```
/// use deployer_core::Config;
///
/// let yaml = "
/// platform: test
/// hostgroup:
///   frontend: [fe001, fe002]
///   backend: [be001]
/// service:
///   web1-frontend:
///     hosts: [frontend]
///     port: 8080
/// ";
/// let config = Config::from_yaml_str(yaml, "test.conf").unwrap();
/// assert_eq!(config.platform(), "test");
/// assert_eq!(config.service_hosts("web1-frontend").unwrap(), ["fe001", "fe002"]);
/// assert_eq!(config.service("web1-frontend").unwrap().port, Some(8080));
///
/// // Command-line values override the file, dotted keys reach into sections.
/// let config = config
///     .with_override("service.web1-frontend.port", 9090.into())
///     .unwrap();
/// assert_eq!(config.service("web1-frontend").unwrap().port, Some(9090));
///
/// // Mistakes are reported with file, line and column.
/// let err = Config::from_yaml_str("platform: test\nservice:\n  web:\n    port: http\n", "bad.yaml")
///     .unwrap_err();
/// assert!(err.to_string().starts_with("bad.yaml:4:"), "{err}");
/// ```
///
/// A value may be written secret, `{secret: …}` or `{secret_env: VAR}` (see
/// [`SecretArg`](crate::SecretArg)): `Debug` shows `***`, and a generator that passes the
/// value on unchanged (`config.get(key).cloned()` into a task argument) keeps it secret.
///
/// ```
/// use deployer_core::Config;
/// let config = Config::from_yaml_str(
///     "platform: test\nlb_password: {secret: hunter2}\ntoken: {secret_env: API_TOKEN}\n",
///     "deploy.yaml",
/// ).unwrap();
/// assert!(!format!("{config:?}").contains("hunter2"));
/// assert_eq!(config.get("lb_password").unwrap()["secret"], "hunter2");
/// let err = config.get_as::<String>("lb_password").unwrap_err().to_string();
/// assert!(err.contains("holds a secret") && !err.contains("hunter2"), "{err}");
/// ```
#[derive(Clone)]
pub struct Config {
    origin: String,
    platform: String,
    hostgroups: IndexMap<String, Vec<String>>,
    services: IndexMap<String, ServiceConfig>,
    values: Map<String, Value>,
    redactor: Redactor,
    /// The YAML text it was read from, for typed sections with line and column.
    text: Option<Arc<str>>,
    /// Dotted keys set by overrides (their values are not in `text`).
    overridden: Vec<String>,
    /// Inventories added to the config's own hostgroups (its `inventory` key, `-i`).
    loaded: Option<Arc<Inventory>>,
    /// The hostgroups, the services' other hosts and `loaded`, merged.
    inventory: Arc<Inventory>,
}

impl Config {
    /// The config's inline secrets (`{"secret": "…"}` values): a host application adds them
    /// to the redactor of its log lines and plans (`Redactor::add_all`).
    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Parses YAML text; `origin` names it in errors (a file name).
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Config, ConfigError> {
        Self::from_yaml_str_with(text, origin, std::iter::empty())
    }

    /// Parses YAML text, then applies `overrides` (command-line values: dotted key, value)
    /// before checking that `platform` is set.
    pub fn from_yaml_str_with<I>(
        text: &str,
        origin: &str,
        overrides: I,
    ) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, Value)>,
    {
        let yaml_err = |e: serde_saphyr::Error| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            ConfigError::Yaml {
                origin: origin.to_string(),
                line,
                column,
                message: yaml_message(&e.to_string(), origin),
            }
        };
        // Pass 1: the typed sections, so type errors carry line and column.
        let _: Option<Typed> = serde_saphyr::from_str(text).map_err(yaml_err)?;
        // Pass 2: every key, for generators and overrides.
        let doc: Option<Value> = serde_saphyr::from_str(text).map_err(yaml_err)?;
        let mut values = match doc {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m,
            Some(other) => {
                return Err(ConfigError::Yaml {
                    origin: origin.to_string(),
                    line: 1,
                    column: 1,
                    message: format!(
                        "the config is {}, expected a mapping of keys to values",
                        crate::validation::json_type(&other)
                    ),
                });
            }
        };
        let mut overridden = Vec::new();
        for (key, value) in overrides {
            set_dotted(&mut values, &key, value)?;
            overridden.push(key);
        }
        let mut config = Self::from_values(values, origin)?;
        config.text = Some(Arc::from(text));
        config.overridden = overridden;
        Ok(config)
    }

    /// Reads and parses a YAML file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        Self::load_with(path, std::iter::empty())
    }

    /// Reads a YAML file and applies command-line `overrides`.
    pub fn load_with<I>(path: impl AsRef<Path>, overrides: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = (String, Value)>,
    {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config = Self::from_yaml_str_with(&text, &path.display().to_string(), overrides)?;
        let sources: Vec<String> = match config.get("inventory") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.clone()],
            Some(v) => serde_json::from_value(v.clone()).map_err(|_| ConfigError::Invalid {
                key: "inventory".into(),
                message: format!(
                    "expected a file (or a list of files) relative to the config, found {}",
                    crate::validation::json_type(v)
                ),
            })?,
        };
        let dir = path.parent().unwrap_or(Path::new(""));
        let mut config = config;
        for source in sources {
            let p = Path::new(&source);
            // A command line (a path that is not a file) stays as written.
            let resolved = if p.is_relative() && dir.join(p).exists() {
                dir.join(p)
            } else {
                p.to_path_buf()
            };
            config = config.with_inventory(Inventory::load(resolved)?)?;
        }
        Ok(config)
    }

    /// The config with `inventory` added to its hosts and groups (after its own `hostgroup`
    /// lists and earlier inventories, whose variables it overrides): every group becomes a
    /// hostgroup ([`hostgroups`](Self::hostgroups), [`service_hosts`](Self::service_hosts)) holding
    /// its hosts and its children's, and [`host_vars`](Self::host_vars) gives each host's
    /// variables. [`Config::load`] adds the inventories the config's `inventory` key names
    /// (a file or a list, relative to the config file).
    ///
    /// ```
    /// use deployer_core::Config;
    /// use deployer_core::inventory::Inventory;
    ///
    /// let config = Config::from_yaml_str(
    ///     "platform: test\nuser: deploy\nservice:\n  web:\n    hosts: [frontend]\n",
    ///     "deploy.yaml",
    /// ).unwrap();
    /// let inventory = Inventory::from_ini_str(
    ///     "[frontend]\nfe1 ansible_user=app\nfe2\n[frontend:vars]\ntier=front\n",
    ///     "hosts",
    /// ).unwrap();
    /// let config = config.with_inventory(inventory).unwrap();
    /// assert_eq!(config.service_hosts("web").unwrap(), ["fe1", "fe2"]);
    /// assert_eq!(config.host_vars("fe2")["tier"], "front");
    /// // Host vars over the config's own values; the command line over both.
    /// assert_eq!(config.host_var("fe1", "ansible_user").unwrap(), "app");
    /// assert_eq!(config.host_var("fe2", "user").unwrap(), "deploy");
    /// let config = config.with_override("tier", "canary".into()).unwrap();
    /// assert_eq!(config.host_var("fe2", "tier").unwrap(), "canary");
    /// ```
    pub fn with_inventory(self, inventory: Inventory) -> Result<Config, ConfigError> {
        let mut loaded = self.loaded.as_deref().cloned().unwrap_or_default();
        loaded.merge(inventory);
        let mut config = Self::from_values(self.values, &self.origin)?;
        config.text = self.text;
        config.overridden = self.overridden;
        config.attach(Some(Arc::new(loaded)));
        Ok(config)
    }

    /// Sets `loaded` and rebuilds the merged inventory and the hostgroups.
    fn attach(&mut self, loaded: Option<Arc<Inventory>>) {
        let mut inventory = Inventory::from_hostgroups(self.hostgroups.iter());
        for service in self.services.values() {
            for host in &service.hosts {
                if !self.hostgroups.contains_key(host)
                    && loaded
                        .as_ref()
                        .is_none_or(|l| l.group_hosts(host).is_none())
                {
                    inventory.add_host(crate::inventory::UNGROUPED, host);
                }
            }
        }
        if let Some(extra) = &loaded {
            inventory.merge((**extra).clone());
            for name in extra.groups().keys() {
                if name == crate::inventory::ALL || name == crate::inventory::UNGROUPED {
                    continue;
                }
                let hosts = inventory.group_hosts(name).unwrap_or_default();
                let entry = self.hostgroups.entry(name.clone()).or_default();
                for h in hosts {
                    if !entry.iter().any(|e| e == h) {
                        entry.push(h.to_string());
                    }
                }
            }
        }
        self.inventory = Arc::new(inventory);
        self.loaded = loaded;
    }

    /// Every host and group: the config's `hostgroup` lists, the hosts its services name
    /// directly (in `ungrouped`), and the inventories added (see
    /// [`with_inventory`](Self::with_inventory)). Host patterns select from it.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// A host's variables, lowest first: its groups' (`all`, parents, children), its own,
    /// then values set on the command line (`--set KEY=VALUE`, an override with a key of one
    /// part). The config's other top-level values are below all of these: see
    /// [`host_var`](Self::host_var).
    pub fn host_vars(&self, host: &str) -> Map<String, Value> {
        let mut vars = self.inventory.host_vars(host);
        for key in &self.overridden {
            if !key.contains('.')
                && let Some(v) = self.values.get(key)
            {
                vars.insert(key.clone(), v.clone());
            }
        }
        vars
    }

    /// The variables of each of `hosts` that has any (see [`host_vars`](Self::host_vars)):
    /// what [`Plan::with_host_vars`](crate::Plan::with_host_vars) gives their tasks.
    pub fn host_vars_of<'a>(&self, hosts: impl IntoIterator<Item = &'a str>) -> crate::HostVars {
        hosts
            .into_iter()
            .map(|h| (h.to_string(), self.host_vars(h)))
            .filter(|(_, v)| !v.is_empty())
            .collect()
    }

    /// One variable of a host: the command line, else the host's vars, else its groups' (a
    /// child group's over its parent's, `all` lowest), else the config's top-level value.
    pub fn host_var(&self, host: &str, key: &str) -> Option<Value> {
        self.host_vars(host)
            .remove(key)
            .or_else(|| self.values.get(key).cloned())
    }

    /// Whether a dotted key was set by an override (the command line), which beats host vars.
    pub fn is_overridden(&self, key: &str) -> bool {
        self.overridden.iter().any(|o| o == key)
    }

    /// Builds a config from already parsed values (e.g. built in code).
    pub fn from_values(values: Map<String, Value>, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            message,
        };
        let platform = match values.get("platform") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            None | Some(Value::Null) => {
                return Err(ConfigError::MissingPlatform {
                    origin: origin.to_string(),
                });
            }
            Some(other) => {
                return Err(invalid(
                    "platform",
                    format!("expected a non-empty string, found {other}"),
                ));
            }
        };
        let hostgroups: IndexMap<String, Vec<String>> = match values.get("hostgroup") {
            None | Some(Value::Null) => IndexMap::new(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                invalid(
                    "hostgroup",
                    format!("expected a mapping of names to host lists: {e}"),
                )
            })?,
        };
        let mut services = IndexMap::new();
        match values.get("service") {
            None | Some(Value::Null) => {}
            Some(Value::Object(map)) => {
                for (name, section) in map {
                    let key = format!("service.{name}");
                    let settings = match section {
                        Value::Object(m) => m.clone(),
                        Value::Null => Map::new(),
                        other => {
                            return Err(invalid(
                                &key,
                                format!("expected a mapping, found {other}"),
                            ));
                        }
                    };
                    let hosts = match settings.get("hosts") {
                        None | Some(Value::Null) => Vec::new(),
                        Some(v) => serde_json::from_value(v.clone()).map_err(|e| {
                            invalid(
                                &format!("{key}.hosts"),
                                format!("expected a list of names: {e}"),
                            )
                        })?,
                    };
                    let port = match settings.get("port") {
                        None | Some(Value::Null) => None,
                        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| {
                            invalid(
                                &format!("{key}.port"),
                                format!("expected a port number: {e}"),
                            )
                        })?),
                    };
                    services.insert(
                        name.clone(),
                        ServiceConfig {
                            name: name.clone(),
                            hosts,
                            port,
                            settings,
                        },
                    );
                }
            }
            Some(other) => {
                return Err(invalid(
                    "service",
                    format!("expected a mapping, found {other}"),
                ));
            }
        }
        let redactor = Redactor::new();
        for v in values.values() {
            crate::secrets::inline_values(v).for_each(|s| redactor.add(s));
        }
        let mut config = Config {
            redactor,
            origin: origin.to_string(),
            platform,
            hostgroups,
            services,
            values,
            text: None,
            overridden: Vec::new(),
            loaded: None,
            inventory: Arc::new(Inventory::new()),
        };
        config.attach(None);
        Ok(config)
    }

    /// Applies one command-line value (dotted key) and re-validates.
    pub fn with_override(self, key: &str, value: Value) -> Result<Config, ConfigError> {
        let mut values = self.values;
        set_dotted(&mut values, key, value)?;
        let mut config = Self::from_values(values, &self.origin)?;
        config.text = self.text;
        config.overridden = self.overridden;
        config.overridden.push(key.to_string());
        config.attach(self.loaded);
        Ok(config)
    }

    /// Where the config came from.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The platform, which picks the generator.
    pub fn platform(&self) -> &str {
        &self.platform
    }

    /// Every key of the config.
    pub fn values(&self) -> &Map<String, Value> {
        &self.values
    }

    /// The value at a dotted key (`service.web.port`), if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let mut parts = key.split('.');
        let mut cur = self.values.get(parts.next()?)?;
        for part in parts {
            cur = cur.as_object()?.get(part)?;
        }
        Some(cur)
    }

    /// The section at a dotted key (`""` for the whole config) as a typed value `T`, `Ok(None)`
    /// when absent: for the settings a generator or a host application reads itself. Mistakes are reported as the
    /// config's own are: with file, line and column, what was expected, and for a misspelt key
    /// (`T` with `#[serde(deny_unknown_fields)]`) a "did you mean". A section that command-line
    /// overrides touched is read from its values and names its key instead.
    ///
    /// ```
    /// use deployer_core::Config;
    ///
    /// #[derive(Debug, serde::Deserialize)]
    /// #[serde(deny_unknown_fields)]
    /// struct Ssh {
    ///     port: Option<u16>,
    ///     user: Option<String>,
    /// }
    ///
    /// let config = Config::from_yaml_str("platform: site\nssh:\n  port: 2222\n", "site.yaml").unwrap();
    /// assert_eq!(config.section::<Ssh>("ssh").unwrap().unwrap().port, Some(2222));
    ///
    /// let typo = Config::from_yaml_str("platform: site\nssh:\n  prot: 2222\n", "site.yaml").unwrap();
    /// let err = typo.section::<Ssh>("ssh").unwrap_err().to_string();
    /// assert!(err.starts_with("site.yaml:3:3: unknown field `prot`"), "{err}");
    /// assert!(err.contains("did you mean `port`?"), "{err}");
    /// ```
    pub fn section<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        let value = if key.is_empty() {
            Value::Object(self.values.clone())
        } else {
            match self.get(key) {
                None | Some(Value::Null) => return Ok(None),
                Some(v) => v.clone(),
            }
        };
        let touched = self.overridden.iter().any(|o| {
            key.is_empty()
                || o == key
                || o.strip_prefix(key).is_some_and(|r| r.starts_with('.'))
                || key
                    .strip_prefix(o.as_str())
                    .is_some_and(|r| r.starts_with('.'))
        });
        if let Some(text) = &self.text {
            let path: Vec<&str> = if key.is_empty() {
                Vec::new()
            } else {
                key.split('.').collect()
            };
            let seed = Pick::<T> {
                path: &path,
                _t: std::marker::PhantomData,
            };
            match serde_saphyr::with_deserializer_from_str(text, |de| {
                serde::de::DeserializeSeed::deserialize(seed, de)
            }) {
                // The text as written is fine; what overrides changed is checked below.
                Ok(Some(value)) if !touched => return Ok(Some(value)),
                Ok(_) => {}
                Err(e) => {
                    let (line, column) = e
                        .location()
                        .map(|l| (l.line(), l.column()))
                        .unwrap_or((0, 0));
                    let message = first_line(&e.to_string());
                    return Err(ConfigError::Yaml {
                        origin: self.origin.clone(),
                        line,
                        column,
                        message: in_words(&with_did_you_mean(&self.redactor.redact(&message))),
                    });
                }
            }
        }
        serde_path_to_error::deserialize::<_, T>(value)
            .map(Some)
            .map_err(|e| {
                let path = e.path().to_string();
                let key = match (key.is_empty(), path == ".") {
                    (true, _) => path,
                    (false, true) => key.to_string(),
                    (false, false) => format!("{key}.{path}"),
                };
                ConfigError::Invalid {
                    key,
                    message: in_words(&with_did_you_mean(
                        &self.redactor.redact(&e.inner().to_string()),
                    )),
                }
            })
    }

    /// The value at a dotted key as `T`; an error naming the config and the key when it is
    /// absent (or null), or naming the key when it has the wrong type.
    ///
    /// ```
    /// use deployer_core::Config;
    ///
    /// let config = Config::from_yaml_str("platform: site\nport: 8080\n", "site.yaml").unwrap();
    /// let port: u16 = config.require("port").unwrap();
    /// assert_eq!(port, 8080);
    /// let err = config.require::<String>("root").unwrap_err();
    /// assert_eq!(err.to_string(), "site.yaml: missing required key \"root\"");
    /// ```
    pub fn require<T: DeserializeOwned>(&self, key: &str) -> Result<T, ConfigError> {
        self.get_as(key)?.ok_or_else(|| ConfigError::MissingKey {
            origin: self.origin.clone(),
            key: key.to_string(),
        })
    }

    /// The value at a dotted key as `T`; `Ok(None)` when absent, an error naming the key when
    /// it has the wrong type.
    pub fn get_as<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|e| {
                let message = if crate::SecretArg::is_secret(v) {
                    "holds a secret; read it with Config::get and pass the value on unchanged, so it stays secret".to_string()
                } else {
                    in_words(&self.redactor.redact(&e.to_string()))
                };
                ConfigError::Invalid {
                    key: key.to_string(),
                    message,
                }
            }),
        }
    }

    /// All hostgroups, in file order.
    pub fn hostgroups(&self) -> &IndexMap<String, Vec<String>> {
        &self.hostgroups
    }

    /// The hosts of a hostgroup.
    pub fn hostgroup(&self, name: &str) -> Result<&[String], ConfigError> {
        self.hostgroups
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| ConfigError::UnknownHostgroup {
                name: name.to_string(),
                hint: did_you_mean(name, self.hostgroups.keys().map(String::as_str))
                    .map(str::to_string),
            })
    }

    /// All services, in file order.
    pub fn services(&self) -> &IndexMap<String, ServiceConfig> {
        &self.services
    }

    /// One service.
    pub fn service(&self, name: &str) -> Result<&ServiceConfig, ConfigError> {
        self.services
            .get(name)
            .ok_or_else(|| ConfigError::UnknownService {
                name: name.to_string(),
                hint: did_you_mean(name, self.services.keys().map(String::as_str))
                    .map(str::to_string),
            })
    }

    /// The hosts a service runs on: each entry of its `hosts` that names a hostgroup is
    /// expanded, any other entry is a host name. Duplicates are dropped, order kept.
    pub fn service_hosts(&self, name: &str) -> Result<Vec<String>, ConfigError> {
        let service = self.service(name)?;
        let mut out = indexmap::IndexSet::new();
        for entry in &service.hosts {
            match self.hostgroups.get(entry) {
                Some(hosts) => out.extend(hosts.iter().cloned()),
                None => {
                    out.insert(entry.clone());
                }
            }
        }
        Ok(out.into_iter().collect())
    }
}

/// Deserializes the value at `path` of a YAML mapping as `T` (`None` when absent), skipping
/// everything else, so errors inside it keep the document's line and column.
struct Pick<'p, T> {
    path: &'p [&'p str],
    _t: std::marker::PhantomData<T>,
}

impl<'de, T: DeserializeOwned> serde::de::DeserializeSeed<'de> for Pick<'_, T> {
    type Value = Option<T>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Option<T>, D::Error> {
        if self.path.is_empty() {
            return T::deserialize(de).map(Some);
        }
        de.deserialize_any(self)
    }
}

impl<'de, T: DeserializeOwned> serde::de::Visitor<'de> for Pick<'_, T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Option<T>, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<String>()? {
            match self.path {
                [first] if *first == key => found = Some(map.next_value::<T>()?),
                [first, rest @ ..] if *first == key => {
                    found = map.next_value_seed(Pick::<T> {
                        path: rest,
                        _t: std::marker::PhantomData,
                    })?;
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(found)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Option<T>, E> {
        Ok(None)
    }
}

/// A YAML parser message as this crate shows it: what is wrong (without the parser's own
/// "error:" and "line N column M:", since the error names the place, and without advice meant
/// for programmers using the parser), then the parser's snippet of the text, naming `origin`
/// instead of `<input>`.
pub(crate) fn yaml_message(message: &str, origin: &str) -> String {
    let mut lines = message.lines();
    let mut out = plain(&first_line(message));
    let _ = lines.next();
    for line in lines {
        out.push('\n');
        out.push_str(&plain(&line.replace("<input>", origin)));
    }
    out
}

/// `message` without the parser's advice to programmers.
fn plain(message: &str) -> String {
    message
        .replace(", set DuplicateKeyPolicy in Options if acceptable", "")
        .replace(
            "multiple YAML documents detected; use from_str_multiple or from_str_multiple_with_options",
            "a second YAML document (a file holds one document)",
        )
        .replace("duplicate mapping key: ", "duplicate key: ")
}

/// The first line of a parser message without its own "error:" and "line N column M:" (the
/// error names the place itself; the rest of the message is the parser's snippet and advice).
pub(crate) fn first_line(message: &str) -> String {
    let line = message.lines().next().unwrap_or(message);
    let line = line.strip_prefix("error: ").unwrap_or(line);
    if let Some(rest) = line.strip_prefix("line ")
        && let Some((place, rest)) = rest.split_once(": ")
        && place
            .split(' ')
            .all(|w| w == "column" || w.parse::<u64>().is_ok())
    {
        return rest.to_string();
    }
    line.to_string()
}

/// `message` with Rust's type names said in words: `invalid u16` → `expected a whole number from
/// 0 to 65535`, `expected usize` → `expected a whole number (0 or more)`.
pub(crate) fn in_words(message: &str) -> String {
    const WORDS: [(&str, &str); 12] = [
        ("u8", "a whole number from 0 to 255"),
        ("u16", "a whole number from 0 to 65535"),
        ("u32", "a whole number (0 or more)"),
        ("u64", "a whole number (0 or more)"),
        ("usize", "a whole number (0 or more)"),
        ("i32", "a whole number"),
        ("i64", "a whole number"),
        ("isize", "a whole number"),
        ("f32", "a number"),
        ("f64", "a number"),
        ("bool", "true or false"),
        ("char", "one character"),
    ];
    let mut out = message.to_string();
    for (ty, words) in WORDS {
        if out == format!("invalid {ty}") {
            return format!("expected {words}");
        }
        for (from, to) in [
            (format!("expected {ty}"), format!("expected {words}")),
            (
                format!("invalid {ty}"),
                format!("invalid value, expected {words}"),
            ),
        ] {
            let at_end = out.ends_with(&from);
            let before_sep = out.contains(&format!("{from} ")) || out.contains(&format!("{from},"));
            if at_end || before_sep {
                out = out.replace(&from, &to);
            }
        }
    }
    out
}

/// `message` with "; did you mean `x`?" when it is serde's "unknown field `y`, expected one of
/// `a`, `b`" and one of the expected fields is close.
pub(crate) fn with_did_you_mean(message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((field, rest)) = rest.split_once('`') else {
        return message.to_string();
    };
    let expected = rest
        .split_once("expected one of ")
        .or_else(|| rest.split_once("expected "))
        .map_or("", |(_, list)| list);
    let candidates: Vec<&str> = expected
        .split(", ")
        .map(|c| c.trim().trim_matches('`'))
        .filter(|c| !c.is_empty())
        .collect();
    match crate::validation::did_you_mean(field, candidates.iter().copied()) {
        Some(hint) => format!("{message}; did you mean `{hint}`?"),
        None => message.to_string(),
    }
}

impl PartialEq for Config {
    /// Configs are equal when they hold the same values (their redactors follow from them).
    fn eq(&self, other: &Config) -> bool {
        self.origin == other.origin
            && self.platform == other.platform
            && self.hostgroups == other.hostgroups
            && self.services == other.services
            && self.values == other.values
            && self.inventory == other.inventory
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("origin", &self.origin)
            .field("platform", &self.platform)
            .field("hostgroups", &self.hostgroups)
            .field("services", &self.services)
            .field("values", &crate::secrets::DebugArgs(&self.values))
            .finish()
    }
}

impl std::fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceConfig")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("port", &self.port)
            .field("settings", &crate::secrets::DebugArgs(&self.settings))
            .finish()
    }
}

fn set_dotted(values: &mut Map<String, Value>, key: &str, value: Value) -> Result<(), ConfigError> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Invalid {
            key: key.to_string(),
            message: "empty part in dotted key".to_string(),
        });
    }
    let Some((last, parents)) = parts.split_last() else {
        return Ok(());
    };
    let mut cur = values;
    for (i, part) in parents.iter().enumerate() {
        let slot = cur
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        cur = match slot {
            Value::Object(m) => m,
            other => {
                return Err(ConfigError::Invalid {
                    key: parts[..=i].join("."),
                    message: format!("cannot set \"{key}\": this key holds {other}, not a mapping"),
                });
            }
        };
    }
    cur.insert(last.to_string(), value);
    Ok(())
}
