//! Inventories: which hosts exist, how they are grouped, and the variables each host sees —
//! read from Ansible's formats (YAML, INI, the dynamic-inventory JSON of a script or a file)
//! and from a config's `hostgroup` lists; host patterns (`web*:&prod:!web3`) select from them.
//!
//! ```
//! use deployer_core::inventory::Inventory;
//!
//! let inventory = Inventory::from_ini_str(
//!     "[web]\nweb[1:3] ansible_user=deploy\n\n[db]\ndb1 ansible_host=10.0.0.9\n\n\
//!      [prod:children]\nweb\ndb\n\n[prod:vars]\ndatacenter=east\n",
//!     "hosts.ini",
//! ).unwrap();
//! assert_eq!(inventory.select("prod:!web2").unwrap(), ["web1", "web3", "db1"]);
//! assert_eq!(inventory.host_vars("db1")["ansible_host"], "10.0.0.9");
//! assert_eq!(inventory.host_vars("web1")["datacenter"], "east");
//! let err = inventory.select("prdo").unwrap_err().to_string();
//! assert_eq!(err, "host pattern \"prdo\" matches no host or group; did you mean \"prod\"?");
//! ```
//!
//! # Variable precedence
//!
//! A host's variables ([`Inventory::host_vars`]) are, from lowest to highest: the `all`
//! group's vars, then every other group the host is in, parents before children (a group's
//! depth is its longest path from `all`; groups of equal depth apply in name order, so the
//! later name wins), then the host's own vars. [`Config::host_vars`](crate::Config::host_vars)
//! puts the command line (`--set`) above all of these and the config's own top-level values
//! below, for [`Config::host_var`](crate::Config::host_var).
//!
//! # Merging
//!
//! Several sources merge as in Ansible ([`Inventory::merge`]): hosts and groups are united, a
//! variable set by a later source replaces the earlier one's.

mod ini;
mod json;
mod pattern;
mod range;
mod yaml;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use indexmap::{IndexMap, IndexSet};
use serde_json::{Map, Value};

pub use pattern::HostPattern;

/// The group every host is in.
pub const ALL: &str = "all";
/// The group of hosts that are in no other group.
pub const UNGROUPED: &str = "ungrouped";

/// A problem loading an inventory or selecting hosts from it.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// A source could not be read.
    #[error("cannot read inventory {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// A source is malformed: where (file, line, and column when known) and what was expected.
    #[error("{origin}{}: {message}", place(*line, *column))]
    Parse {
        /// The file name, or the script's command line.
        origin: String,
        /// 1-based line (0 when the mistake is not at one place).
        line: u64,
        /// 1-based column, when the parser knows it.
        column: Option<u64>,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A dynamic inventory script could not be run or failed.
    #[error("inventory script {command}: {message}")]
    Script {
        /// The command line run.
        command: String,
        /// What happened: how it exited and what it wrote on stderr.
        message: String,
    },
    /// A part of a host pattern matches no host or group.
    #[error("host pattern {} matches no host or group{}", crate::shown(part), hint.as_ref().map(|h| format!("; did you mean {}?", crate::shown(h))).unwrap_or_default())]
    NoMatch {
        /// The part of the pattern (without its `&`/`!`).
        part: String,
        /// The closest group or host name.
        hint: Option<String>,
    },
    /// A host pattern that cannot be read.
    #[error("host pattern {}: {message}", crate::shown(pattern))]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        message: String,
    },
}

/// A group of an [`Inventory`]: its own hosts, its child groups and its variables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    hosts: IndexSet<String>,
    children: IndexSet<String>,
    vars: Map<String, Value>,
}

impl Group {
    /// The hosts listed in the group itself (not those of its children).
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.iter().map(String::as_str)
    }

    /// The child groups.
    pub fn children(&self) -> impl Iterator<Item = &str> {
        self.children.iter().map(String::as_str)
    }

    /// The group's variables.
    pub fn vars(&self) -> &Map<String, Value> {
        &self.vars
    }
}

/// Hosts, groups and variables (see the [module documentation](self)).
///
/// Every host is in the group `all`; a host in no other group is in `ungrouped`. Loading
/// contacts no host: a dynamic inventory is a program run on this machine.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Hosts in order of first appearance, with their own variables.
    hosts: IndexMap<String, Map<String, Value>>,
    /// Named groups (never `all` or `ungrouped` themselves, whose vars live in `all_vars` and
    /// the `ungrouped` entry when given).
    groups: IndexMap<String, Group>,
}

impl Inventory {
    /// An empty inventory.
    pub fn new() -> Self {
        Inventory::default()
    }

    /// Groups of hosts as a config's `hostgroup` section lists them.
    ///
    /// ```
    /// use deployer_core::inventory::Inventory;
    /// let groups = [("web".to_string(), vec!["fe1".to_string(), "fe2".to_string()])];
    /// let inventory = Inventory::from_hostgroups(groups.iter().map(|(g, h)| (g, h)));
    /// assert_eq!(inventory.select("web").unwrap(), ["fe1", "fe2"]);
    /// ```
    pub fn from_hostgroups<'a, I, H>(groups: I) -> Inventory
    where
        I: IntoIterator<Item = (&'a String, H)>,
        H: IntoIterator<Item = &'a String>,
    {
        let mut inv = Inventory::new();
        for (name, hosts) in groups {
            inv.group_mut(name);
            for host in hosts {
                inv.add_host(name, host);
            }
        }
        inv
    }

    /// Loads one source, picked by what it is: an executable file is a dynamic inventory
    /// (run with `--list`), a directory loads every file in it in name order (skipping hidden
    /// files and names ending in `~`, `.retry`, `.md`), `.yaml`/`.yml` is YAML, `.json` is the
    /// dynamic-inventory JSON as a file, anything else (`.ini`, no extension) is INI. A path that
    /// does not exist but holds a space is a command line, run with `--list` appended.
    pub fn load(path: impl AsRef<Path>) -> Result<Inventory, InventoryError> {
        let path = path.as_ref();
        let io = |source| InventoryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let line = path.to_string_lossy();
                if line.contains(' ')
                    && let Some(argv) = shlex::split(&line)
                {
                    return json::run_script(&argv);
                }
                return Err(io(e));
            }
            Err(e) => return Err(io(e)),
        };
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    let name = p.file_name().unwrap_or_default().to_string_lossy();
                    !(name.starts_with('.')
                        || name.ends_with('~')
                        || name.ends_with(".retry")
                        || name.ends_with(".md"))
                })
                .collect();
            entries.sort();
            let mut inv = Inventory::new();
            for entry in entries {
                inv.merge(Inventory::load(&entry)?);
            }
            return Ok(inv);
        }
        if is_executable(&meta) {
            return json::run_script(&[path.to_string_lossy().into_owned()]);
        }
        let text = std::fs::read_to_string(path).map_err(io)?;
        let origin = path.display().to_string();
        match path.extension().and_then(|e| e.to_str()) {
            Some("yaml" | "yml") => Inventory::from_yaml_str(&text, &origin),
            Some("json") => Inventory::from_json_str(&text, &origin),
            _ => Inventory::from_ini_str(&text, &origin),
        }
    }

    /// Parses Ansible's INI layout: `[group]` sections of `host key=value …` lines (values may
    /// be quoted; `host:port` sets `ansible_port`), `[group:vars]` of `key=value` lines,
    /// `[group:children]` of group names, comments (`#`, `;`), host ranges (`web[01:20]`,
    /// `db-[a:c]`, `n[0:10:5]`); hosts before any section are `ungrouped`. A value written
    /// without quotes that reads as a whole number, a decimal number or `true`/`false` is one;
    /// anything else is a string.
    ///
    /// ```
    /// use deployer_core::inventory::Inventory;
    /// let err = Inventory::from_ini_str("[web]\nweb1 ansible_port\n", "hosts").unwrap_err();
    /// assert_eq!(
    ///     err.to_string(),
    ///     "hosts:2:6: expected key=value after the host name, found \"ansible_port\""
    /// );
    /// ```
    pub fn from_ini_str(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        ini::parse(text, origin)
    }

    /// Parses Ansible's YAML layout: top-level groups (usually `all`), each with optional
    /// `hosts` (a mapping of host names to their vars, or to nothing), `vars` and `children`
    /// (a mapping of group names to groups of the same shape). An unknown key is an error at
    /// its line and column with a "did you mean".
    ///
    /// ```
    /// use deployer_core::inventory::Inventory;
    /// let inv = Inventory::from_yaml_str(
    ///     "all:\n  children:\n    web:\n      hosts:\n        web1:\n        web2: {ansible_port: 2222}\n",
    ///     "hosts.yaml",
    /// ).unwrap();
    /// assert_eq!(inv.select("web").unwrap(), ["web1", "web2"]);
    /// assert_eq!(inv.host_vars("web2")["ansible_port"], 2222);
    /// let err = Inventory::from_yaml_str("all:\n  host:\n    web1:\n", "hosts.yaml").unwrap_err();
    /// assert!(err.to_string().starts_with("hosts.yaml:2:3: unknown field `host`"), "{err}");
    /// ```
    pub fn from_yaml_str(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        yaml::parse(text, origin)
    }

    /// Parses the dynamic-inventory JSON (`{"web": {"hosts": [...], "vars": {...},
    /// "children": [...]}, "_meta": {"hostvars": {...}}}`; a group may also be a plain list of
    /// hosts). Strict: a key given twice is an error at its line and column.
    ///
    /// ```
    /// use deployer_core::inventory::Inventory;
    /// let inv = Inventory::from_json_str(
    ///     r#"{"web": {"hosts": ["web1"]}, "_meta": {"hostvars": {"web1": {"ansible_user": "app"}}}}"#,
    ///     "inv.json",
    /// ).unwrap();
    /// assert_eq!(inv.host_vars("web1")["ansible_user"], "app");
    /// ```
    pub fn from_json_str(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
        json::parse(text, origin)
    }

    /// Adds `other` to this inventory: hosts and groups united, `other`'s variables win.
    pub fn merge(&mut self, other: Inventory) {
        for (host, vars) in other.hosts {
            self.hosts.entry(host).or_default().extend(vars);
        }
        for (name, group) in other.groups {
            let mine = self.groups.entry(name).or_default();
            mine.hosts.extend(group.hosts);
            mine.children.extend(group.children);
            mine.vars.extend(group.vars);
        }
    }

    /// Every host, in order of first appearance.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// Whether `name` is a host of the inventory.
    pub fn has_host(&self, name: &str) -> bool {
        self.hosts.contains_key(name)
    }

    /// Whether the inventory has no host.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// The named groups as written (without the implicit `all` and `ungrouped` unless a
    /// source gave them vars), in order of first appearance.
    pub fn groups(&self) -> &IndexMap<String, Group> {
        &self.groups
    }

    /// Every group name a pattern may use: `all`, `ungrouped` and the named groups.
    pub fn group_names(&self) -> Vec<&str> {
        let mut names = vec![ALL, UNGROUPED];
        names.extend(
            self.groups
                .keys()
                .map(String::as_str)
                .filter(|g| *g != ALL && *g != UNGROUPED),
        );
        names
    }

    /// The hosts of a group, its children's included (`all`: every host), in inventory
    /// order; `None` for a group the inventory does not have.
    pub fn group_hosts(&self, name: &str) -> Option<Vec<&str>> {
        if name == ALL {
            return Some(self.hosts().collect());
        }
        if name == UNGROUPED {
            return Some(
                self.hosts()
                    .filter(|h| {
                        !self.groups.iter().any(|(g, group)| {
                            g != ALL && g != UNGROUPED && group.hosts.contains(*h)
                        })
                    })
                    .collect(),
            );
        }
        self.groups.get(name)?;
        let mut members = HashSet::new();
        let mut seen = HashSet::new();
        let mut stack = vec![name];
        while let Some(g) = stack.pop() {
            if !seen.insert(g) {
                continue;
            }
            if let Some(group) = self.groups.get(g) {
                members.extend(group.hosts.iter().map(String::as_str));
                stack.extend(group.children.iter().map(String::as_str));
            }
        }
        Some(self.hosts().filter(|h| members.contains(h)).collect())
    }

    /// The groups `host` is in, directly or through a child group, `all` first, then by
    /// depth and name (the order their vars apply in).
    pub fn host_groups(&self, host: &str) -> Vec<&str> {
        if !self.has_host(host) {
            return Vec::new();
        }
        let depth = self.depths();
        let mut out: Vec<&str> = self
            .group_names()
            .into_iter()
            .filter(|g| *g != ALL)
            .filter(|g| self.group_hosts(g).is_some_and(|hs| hs.contains(&host)))
            .collect();
        out.sort_by_key(|g| (depth.get(g).copied().unwrap_or(1), *g));
        out.insert(0, ALL);
        out
    }

    /// The host's variables: `all`'s, then its groups' (parents before children), then its own
    /// (see the [module documentation](self) for the order).
    pub fn host_vars(&self, host: &str) -> Map<String, Value> {
        let mut out = Map::new();
        for g in self.host_groups(host) {
            if let Some(group) = self.groups.get(g) {
                out.extend(group.vars.clone());
            }
        }
        if let Some(own) = self.hosts.get(host) {
            out.extend(own.clone());
        }
        out
    }

    /// The hosts a pattern selects (see [`HostPattern`]), in inventory order.
    pub fn select(&self, pattern: &str) -> Result<Vec<String>, InventoryError> {
        HostPattern::parse(pattern)?.select(self)
    }

    /// A check of the group graph: every child group exists (one named but never defined is
    /// created empty, as Ansible does) and no group is its own descendant.
    pub(crate) fn finish(mut self, origin: &str) -> Result<Inventory, InventoryError> {
        let named: Vec<String> = self
            .groups
            .values()
            .flat_map(|g| g.children.iter().cloned())
            .collect();
        for child in named {
            self.group_mut(&child);
        }
        for start in self.groups.keys() {
            let mut stack: Vec<(&str, Vec<&str>)> = vec![(start, vec![start])];
            while let Some((g, path)) = stack.pop() {
                for child in &self.groups[g].children {
                    if child == start {
                        let mut cycle = path.clone();
                        cycle.push(child);
                        return Err(InventoryError::Parse {
                            origin: origin.to_string(),
                            line: 0,
                            column: None,
                            message: format!(
                                "group {start:?} is its own child ({}); expected groups without cycles",
                                cycle.join(" → ")
                            ),
                        });
                    }
                    if !path.contains(&child.as_str()) {
                        let mut next = path.clone();
                        next.push(child);
                        stack.push((child, next));
                    }
                }
            }
        }
        Ok(self)
    }

    /// Each group's depth: its longest path from `all` (top-level groups are 1).
    fn depths(&self) -> HashMap<&str, usize> {
        let mut depth: HashMap<&str, usize> = HashMap::new();
        depth.insert(ALL, 0);
        fn walk<'a>(inv: &'a Inventory, g: &'a str, d: usize, depth: &mut HashMap<&'a str, usize>) {
            if depth.get(g).is_some_and(|&old| old >= d) || d > inv.groups.len() + 1 {
                return;
            }
            depth.insert(g, d);
            if let Some(group) = inv.groups.get(g) {
                for child in &group.children {
                    walk(inv, child, d + 1, depth);
                }
            }
        }
        for g in self.groups.keys() {
            if g != ALL {
                walk(self, g, 1, &mut depth);
            }
        }
        if let Some(all) = self.groups.get(ALL) {
            for child in &all.children {
                walk(self, child, 1, &mut depth);
            }
        }
        depth
    }

    pub(crate) fn group_mut(&mut self, name: &str) -> &mut Group {
        self.groups.entry(name.to_string()).or_default()
    }

    /// Adds `host` (with no vars yet) to `group` (`all`: to no group).
    pub(crate) fn add_host(&mut self, group: &str, host: &str) -> &mut Map<String, Value> {
        if group != ALL {
            self.group_mut(group).hosts.insert(host.to_string());
        }
        self.hosts.entry(host.to_string()).or_default()
    }
}

/// `:line:column`, `:line` or nothing (line 0: not at one place).
fn place(line: u64, column: Option<u64>) -> String {
    match (line, column) {
        (0, _) => String::new(),
        (l, Some(c)) => format!(":{l}:{c}"),
        (l, None) => format!(":{l}"),
    }
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.is_file() && meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_meta: &std::fs::Metadata) -> bool {
    false
}

#[cfg(test)]
mod tests;
