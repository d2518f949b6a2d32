//! Host patterns as Ansible reads them (`--limit`, `--hosts`, `deploy hosts`).

use indexmap::IndexSet;

use super::{ALL, Inventory, InventoryError};

/// How a part of a pattern combines with what came before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Union,
    Intersect,
    Exclude,
}

/// A host pattern: parts separated by `:` or `,` (with a `,` anywhere, only `,` separates,
/// so `host:port`-like names and IPv6 addresses are not split). A part is `all` or `*`
/// (every host), a group name, a host name, or a glob over group and host names (`web*`,
/// `db[0-9]`, `?` for one character); `&part` keeps only hosts also in `part`, `!part` drops
/// them.
///
/// Evaluation follows Ansible: the plain parts are united left to right, then every `&` part
/// intersects, then every `!` part excludes — so `web:!web2:db` is web and db without web2,
/// and a pattern of only `&`/`!` parts starts from `all`. A part that matches nothing is an
/// error naming it, with the closest name.
///
/// ```
/// use deployer_core::inventory::{HostPattern, Inventory};
///
/// let inv = Inventory::from_ini_str(
///     "[web]\nweb1\nweb2\nweb3\n[db]\ndb1\n[prod]\nweb1\ndb1\n",
///     "hosts",
/// ).unwrap();
/// let select = |p: &str| HostPattern::parse(p).unwrap().select(&inv).unwrap();
/// assert_eq!(select("web:!web2"), ["web1", "web3"]);
/// assert_eq!(select("web:&prod"), ["web1"]);
/// assert_eq!(select("db,web3"), ["web3", "db1"]);
/// assert_eq!(select("web[12]"), ["web1", "web2"]);
/// assert_eq!(select("!db"), ["web1", "web2", "web3"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    text: String,
    parts: Vec<(Op, String)>,
}

impl HostPattern {
    /// Reads a pattern; an empty pattern or part is an error.
    pub fn parse(pattern: &str) -> Result<HostPattern, InventoryError> {
        let bad = |message: String| InventoryError::Pattern {
            pattern: pattern.to_string(),
            message,
        };
        let pieces: Vec<&str> = if pattern.contains(',') {
            pattern.split(',').collect()
        } else {
            split_colons(pattern)
        };
        let mut parts = Vec::new();
        for piece in pieces {
            let piece = piece.trim();
            let (op, name) = if let Some(rest) = piece.strip_prefix('&') {
                (Op::Intersect, rest)
            } else if let Some(rest) = piece.strip_prefix('!') {
                (Op::Exclude, rest)
            } else {
                (Op::Union, piece)
            };
            if name.is_empty() {
                return Err(bad(
                    "an empty part (expected names, groups or globs separated by `:` or `,`, \
                     each optionally after `&` or `!`)"
                        .into(),
                ));
            }
            if name.starts_with('~') {
                return Err(bad(format!(
                    "{}: regular expressions are not supported; use a glob (`*`, `?`, `[0-9]`)",
                    crate::shown(name)
                )));
            }
            if is_glob(name) {
                glob::Pattern::new(name).map_err(|e| {
                    bad(format!(
                        "{}: not a valid glob: {}",
                        crate::shown(name),
                        e.msg
                    ))
                })?;
            }
            parts.push((op, name.to_string()));
        }
        Ok(HostPattern {
            text: pattern.to_string(),
            parts,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The hosts of `inventory` the pattern selects, in inventory order.
    pub fn select(&self, inventory: &Inventory) -> Result<Vec<String>, InventoryError> {
        let mut selected: IndexSet<&str> = IndexSet::new();
        let unions: Vec<&str> = self
            .parts
            .iter()
            .filter(|(op, _)| *op == Op::Union)
            .map(|(_, n)| n.as_str())
            .collect();
        if unions.is_empty() {
            selected.extend(inventory.hosts());
        }
        for name in unions {
            selected.extend(matching(inventory, name)?);
        }
        for (op, name) in &self.parts {
            match op {
                Op::Union => {}
                Op::Intersect => {
                    let keep: IndexSet<&str> = matching(inventory, name)?.into_iter().collect();
                    selected.retain(|h| keep.contains(h));
                }
                Op::Exclude => {
                    let drop: IndexSet<&str> = matching(inventory, name)?.into_iter().collect();
                    selected.retain(|h| !drop.contains(h));
                }
            }
        }
        Ok(inventory
            .hosts()
            .filter(|h| selected.contains(h))
            .map(str::to_string)
            .collect())
    }
}

impl std::fmt::Display for HostPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Splits at `:` outside brackets (`db[0:3]`-style ranges keep theirs); an IPv6 address (more
/// than one `:` in a row or a part that is all hex) is not supported with `:` — use `,`.
fn split_colons(pattern: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in pattern.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => {
                out.push(&pattern[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&pattern[start..]);
    out
}

fn is_glob(name: &str) -> bool {
    name.contains(['*', '?', '['])
}

/// The hosts one part names: `all`/`*`, a group, a host, or a glob over both.
fn matching<'a>(inventory: &'a Inventory, name: &str) -> Result<Vec<&'a str>, InventoryError> {
    if name == ALL || name == "*" {
        return Ok(inventory.hosts().collect());
    }
    if let Some(hosts) = inventory.group_hosts(name)
        && (name == super::UNGROUPED || !hosts.is_empty() || inventory.groups.contains_key(name))
    {
        return Ok(hosts);
    }
    if let Some((host, _)) = inventory.hosts.get_key_value(name) {
        return Ok(vec![host.as_str()]);
    }
    let mut out: IndexSet<&str> = IndexSet::new();
    if is_glob(name)
        && let Ok(glob) = glob::Pattern::new(name)
    {
        for g in inventory.group_names() {
            if glob.matches(g) {
                out.extend(inventory.group_hosts(g).unwrap_or_default());
            }
        }
        out.extend(inventory.hosts().filter(|h| glob.matches(h)));
    }
    if out.is_empty() {
        let names: Vec<&str> = inventory
            .group_names()
            .into_iter()
            .chain(inventory.hosts())
            .collect();
        let hint = crate::did_you_mean(name, names);
        return Err(InventoryError::NoMatch {
            part: name.to_string(),
            hint: hint.map(str::to_string),
        });
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        Inventory::from_ini_str(
            "[web]\nweb1\nweb2\nweb3\n[db]\ndb1\ndb2\n[prod]\nweb1\ndb1\n[empty]\n",
            "hosts",
        )
        .unwrap()
    }

    fn select(p: &str) -> Vec<String> {
        inv().select(p).unwrap()
    }

    #[test]
    fn every_operator() {
        assert_eq!(select("all"), ["web1", "web2", "web3", "db1", "db2"]);
        assert_eq!(select("*"), select("all"));
        assert_eq!(select("web"), ["web1", "web2", "web3"]);
        assert_eq!(select("web2"), ["web2"]);
        assert_eq!(select("web*"), ["web1", "web2", "web3"]);
        assert_eq!(
            select("d*"),
            ["db1", "db2"],
            "a glob matches group names too"
        );
        assert_eq!(select("db[0-1]"), ["db1"]);
        assert_eq!(select("web?"), ["web1", "web2", "web3"]);
        assert_eq!(select("db:web3"), ["web3", "db1", "db2"]);
        assert_eq!(select("db,web3"), ["web3", "db1", "db2"]);
        assert_eq!(select("web:&prod"), ["web1"]);
        assert_eq!(select("web:!web2"), ["web1", "web3"]);
        assert_eq!(select("web,!web2"), ["web1", "web3"]);
        assert_eq!(select("!web"), ["db1", "db2"], "starts from all");
        assert_eq!(select("&prod"), ["web1", "db1"]);
        // Ansible's order: unions first, then intersections, then exclusions.
        assert_eq!(select("web:!web1:prod"), ["web2", "web3", "db1"]);
        assert_eq!(select("all:!prod:&web"), ["web2", "web3"]);
        assert_eq!(
            select("empty"),
            Vec::<String>::new(),
            "an empty group is no mistake"
        );
        assert_eq!(select("ungrouped"), Vec::<String>::new());
    }

    #[test]
    fn a_part_that_matches_nothing_is_an_error_naming_it() {
        let e = |p: &str| inv().select(p).unwrap_err().to_string();
        assert_eq!(
            e("web:!wbe2"),
            "host pattern \"wbe2\" matches no host or group; did you mean \"web2\"?"
        );
        assert_eq!(
            e("prdo"),
            "host pattern \"prdo\" matches no host or group; did you mean \"prod\"?"
        );
        assert_eq!(e("xyz*"), "host pattern \"xyz*\" matches no host or group");
        assert_eq!(
            e("web:"),
            "host pattern \"web:\": an empty part (expected names, groups or globs separated by \
             `:` or `,`, each optionally after `&` or `!`)"
        );
        assert_eq!(
            e("~web.*"),
            "host pattern \"~web.*\": \"~web.*\": regular expressions are not supported; use a \
             glob (`*`, `?`, `[0-9]`)"
        );
        assert!(e("web[").contains("not a valid glob"), "{}", e("web["));
    }
}
