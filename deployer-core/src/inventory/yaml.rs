//! Ansible's YAML inventory, read with serde-saphyr so every mistake has its line and column.

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{ALL, Inventory, InventoryError, range};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct YGroup {
    #[serde(default)]
    hosts: Option<IndexMap<String, Option<Map<String, Value>>>>,
    #[serde(default)]
    vars: Option<Map<String, Value>>,
    #[serde(default)]
    children: Option<IndexMap<String, Option<YGroup>>>,
}

pub(crate) fn parse(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
    let top: Option<IndexMap<String, Option<YGroup>>> =
        serde_saphyr::from_str(text).map_err(|e| {
            let (line, column) = e
                .location()
                .map(|l| (l.line(), l.column()))
                .unwrap_or((0, 0));
            let message = crate::config::yaml_message(&e.to_string(), origin);
            let message = crate::config::with_did_you_mean(&message);
            InventoryError::Parse {
                origin: origin.to_string(),
                line,
                column: (column > 0).then_some(column),
                message,
            }
        })?;
    let mut inv = Inventory::new();
    for (name, group) in top.unwrap_or_default() {
        add_group(&mut inv, &name, group, text, origin)?;
    }
    inv.finish(origin)
}

fn add_group(
    inv: &mut Inventory,
    name: &str,
    group: Option<YGroup>,
    text: &str,
    origin: &str,
) -> Result<(), InventoryError> {
    if name != ALL {
        inv.group_mut(name);
    }
    let Some(group) = group else {
        return Ok(());
    };
    for (pattern, vars) in group.hosts.unwrap_or_default() {
        let at = |message: String| {
            let (line, column) = locate(text, &pattern);
            InventoryError::Parse {
                origin: origin.to_string(),
                line,
                column,
                message,
            }
        };
        for host in range::expand(&pattern).map_err(at)? {
            crate::HostName::parse(&host).map_err(|e| at(e.to_string()))?;
            inv.add_host(name, &host)
                .extend(vars.clone().unwrap_or_default());
        }
    }
    if let Some(vars) = group.vars {
        inv.group_mut(name).vars.extend(vars);
    }
    for (child, sub) in group.children.unwrap_or_default() {
        if child == name {
            let (line, column) = locate(text, &child);
            return Err(InventoryError::Parse {
                origin: origin.to_string(),
                line,
                column,
                message: format!("group {child:?} cannot be its own child"),
            });
        }
        if name != ALL {
            inv.group_mut(name).children.insert(child.clone());
        }
        add_group(inv, &child, sub, text, origin)?;
    }
    Ok(())
}

/// Line and column of the first `key:` in `text` (a problem found after parsing).
fn locate(text: &str, key: &str) -> (u64, Option<u64>) {
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        for candidate in [
            format!("{key}:"),
            format!("\"{key}\":"),
            format!("'{key}':"),
        ] {
            if trimmed.starts_with(&candidate) {
                let column = line.len() - trimmed.len() + 1;
                return (n as u64 + 1, Some(column as u64));
            }
        }
    }
    (0, None)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn ansible_layout_with_null_hosts_vars_and_nested_children() {
        let inv = parse(
            "all:\n  hosts:\n    lonely:\n  vars:\n    ntp: time.example\n  children:\n    \
             web:\n      hosts:\n        web[1:2]:\n          ansible_user: deploy\n        \
             web3:\n      vars:\n        tier: front\n      children:\n        canary:\n          \
             hosts:\n            web1:\n          vars:\n            tier: canary\n    db:\n",
            "inv.yaml",
        )
        .unwrap();
        assert_eq!(
            inv.hosts().collect::<Vec<_>>(),
            ["lonely", "web1", "web2", "web3"]
        );
        assert_eq!(inv.select("web").unwrap(), ["web1", "web2", "web3"]);
        assert_eq!(inv.select("canary").unwrap(), ["web1"]);
        assert_eq!(inv.select("ungrouped").unwrap(), ["lonely"]);
        assert!(inv.groups().contains_key("db"));
        assert_eq!(
            inv.host_vars("web1")["tier"],
            "canary",
            "the child group wins"
        );
        assert_eq!(inv.host_vars("web2")["tier"], "front");
        assert_eq!(inv.host_vars("web2")["ansible_user"], "deploy");
        assert_eq!(inv.host_vars("lonely")["ntp"], "time.example");
        assert_eq!(inv.host_groups("web1"), ["all", "web", "canary"]);
    }

    #[test]
    fn mistakes_have_line_column_and_what_was_expected() {
        let e = parse(
            "all:\n  children:\n    web:\n      hosts: [web1, web2]\n",
            "inv.yaml",
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("inv.yaml:4:14: "), "{e}");
        assert!(e.contains("expected mapping"), "{e}");
        let e = parse("all:\n  children:\n    web:\n      varz: {}\n", "inv.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("inv.yaml:4:7: unknown field `varz`"), "{e}");
        assert!(e.ends_with("did you mean `vars`?"), "{e}");
        let e = parse("all:\n  hosts:\n    a:\n    a:\n", "inv.yaml")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("inv.yaml:4:"), "{e}");
        assert!(e.contains("duplicate key"), "{e}");
        let e = parse("all:\n  hosts:\n    web[3:1]:\n", "inv.yaml")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "inv.yaml:3:5: \"web[3:1]\": the range [3:1] ends before it starts"
        );
    }
}
