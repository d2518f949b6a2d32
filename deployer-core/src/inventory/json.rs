//! Ansible's dynamic-inventory JSON, from a file or from a program run with `--list`.

use serde_json::{Map, Value};

use super::{ALL, Inventory, InventoryError};

pub(crate) fn parse(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
    let doc = crate::json::from_str_strict(text).map_err(|e| InventoryError::Parse {
        origin: origin.to_string(),
        line: e.line() as u64,
        column: Some(e.column() as u64),
        message: strip_place(&e.to_string()),
    })?;
    let bad = |path: String, message: String| InventoryError::Parse {
        origin: origin.to_string(),
        line: 0,
        column: None,
        message: format!("{path}: {message}"),
    };
    let Value::Object(top) = doc else {
        return Err(bad(
            "the document".into(),
            format!(
                "is {}, expected an object of groups (and \"_meta\")",
                crate::json_type(&doc)
            ),
        ));
    };
    let mut inv = Inventory::new();
    let mut hostvars = Map::new();
    for (name, value) in top {
        if name == "_meta" {
            let Value::Object(mut meta) = value else {
                return Err(bad(
                    "\"_meta\"".into(),
                    format!(
                        "is {}, expected an object with \"hostvars\"",
                        crate::json_type(&value)
                    ),
                ));
            };
            if let Some(k) = meta.keys().find(|k| *k != "hostvars") {
                return Err(bad(
                    format!("\"_meta\".{k:?}"),
                    "unknown key, expected only \"hostvars\"".into(),
                ));
            }
            match meta.remove("hostvars") {
                None | Some(Value::Null) => {}
                Some(Value::Object(m)) => hostvars = m,
                Some(other) => {
                    return Err(bad(
                        "\"_meta\".\"hostvars\"".into(),
                        format!(
                            "is {}, expected an object of host names to their variables",
                            crate::json_type(&other)
                        ),
                    ));
                }
            }
            continue;
        }
        let at = format!("{name:?}");
        if name != ALL {
            inv.group_mut(&name);
        }
        let (hosts, vars, children) = match value {
            Value::Null => (None, None, None),
            Value::Array(hosts) => (Some(hosts), None, None),
            Value::Object(mut g) => {
                if let Some(k) = g
                    .keys()
                    .find(|k| !["hosts", "vars", "children"].contains(&k.as_str()))
                {
                    let hint = crate::did_you_mean(k, ["hosts", "vars", "children"])
                        .map(|h| format!("; did you mean {h:?}?"))
                        .unwrap_or_default();
                    return Err(bad(
                        format!("{at}.{k:?}"),
                        format!("unknown key, expected \"hosts\", \"vars\" or \"children\"{hint}"),
                    ));
                }
                let list = |g: &mut Map<String, Value>, key: &str| match g.remove(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Array(a)) => Ok(Some(a)),
                    Some(other) => Err(bad(
                        format!("{at}.{key:?}"),
                        format!("is {}, expected a list of names", crate::json_type(&other)),
                    )),
                };
                let hosts = list(&mut g, "hosts")?;
                let children = list(&mut g, "children")?;
                let vars = match g.remove("vars") {
                    None | Some(Value::Null) => None,
                    Some(Value::Object(v)) => Some(v),
                    Some(other) => {
                        return Err(bad(
                            format!("{at}.\"vars\""),
                            format!("is {}, expected an object", crate::json_type(&other)),
                        ));
                    }
                };
                (hosts, vars, children)
            }
            other => {
                return Err(bad(
                    at,
                    format!(
                        "is {}, expected a group: an object with \"hosts\", \"vars\", \
                         \"children\", or a list of hosts",
                        crate::json_type(&other)
                    ),
                ));
            }
        };
        for (i, host) in hosts.unwrap_or_default().into_iter().enumerate() {
            let name_at = format!("{at}.\"hosts\"[{i}]");
            let Value::String(host) = host else {
                return Err(bad(
                    name_at,
                    format!("is {}, expected a host name", crate::json_type(&host)),
                ));
            };
            crate::HostName::parse(&host).map_err(|e| bad(name_at, e.to_string()))?;
            inv.add_host(&name, &host);
        }
        if let Some(vars) = vars {
            inv.group_mut(&name).vars.extend(vars);
        }
        for (i, child) in children.unwrap_or_default().into_iter().enumerate() {
            let Value::String(child) = child else {
                return Err(bad(
                    format!("{at}.\"children\"[{i}]"),
                    format!("is {}, expected a group name", crate::json_type(&child)),
                ));
            };
            if name != ALL {
                inv.group_mut(&name).children.insert(child.clone());
            }
            inv.group_mut(&child);
        }
    }
    for (host, vars) in hostvars {
        let Value::Object(vars) = vars else {
            return Err(bad(
                format!("\"_meta\".\"hostvars\".{host:?}"),
                format!(
                    "is {}, expected an object of variables",
                    crate::json_type(&vars)
                ),
            ));
        };
        crate::HostName::parse(&host)
            .map_err(|e| bad(format!("\"_meta\".\"hostvars\".{host:?}"), e.to_string()))?;
        inv.add_host(ALL, &host).extend(vars);
    }
    inv.finish(origin)
}

/// serde_json's message without its own " at line N column M".
fn strip_place(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

/// Runs `argv` with `--list` and parses what it prints; a failure shows its exit status and
/// stderr.
pub(crate) fn run_script(argv: &[String]) -> Result<Inventory, InventoryError> {
    let command = format!("{} --list", argv.join(" "));
    let fail = |message: String| InventoryError::Script {
        command: command.clone(),
        message,
    };
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| fail("an empty command line".into()))?;
    let out = std::process::Command::new(program)
        .args(args)
        .arg("--list")
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| fail(format!("cannot run it: {e}")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stderr = stderr.trim();
    if !out.status.success() {
        let status = match out.status.code() {
            Some(code) => format!("exited with status {code}"),
            None => format!("was stopped by a signal ({})", out.status),
        };
        return Err(fail(if stderr.is_empty() {
            format!("{status} (nothing on stderr)")
        } else {
            format!("{status}; stderr:\n{}", tail(stderr))
        }));
    }
    let text = String::from_utf8(out.stdout)
        .map_err(|_| fail("printed something that is not UTF-8 (expected JSON)".into()))?;
    parse(&text, &command)
}

/// The last 20 lines of `text`, each at most 512 bytes, without control characters.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let skip = lines.len().saturating_sub(20);
    lines[skip..]
        .iter()
        .map(|l| crate::one_line(l).into_owned())
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn groups_lists_children_and_hostvars() {
        let inv = parse(
            r#"{"web": {"hosts": ["web1", "web2"], "vars": {"tier": "front"}, "children": ["canary"]},
                "canary": ["web3"],
                "all": {"vars": {"ntp": "t"}},
                "_meta": {"hostvars": {"web1": {"ansible_host": "10.0.0.1"}, "solo": {}}}}"#,
            "inv.json",
        )
        .unwrap();
        assert_eq!(inv.select("web").unwrap(), ["web1", "web2", "web3"]);
        assert_eq!(inv.select("ungrouped").unwrap(), ["solo"]);
        assert_eq!(inv.host_vars("web1")["ansible_host"], "10.0.0.1");
        assert_eq!(inv.host_vars("web3")["tier"], "front");
        assert_eq!(inv.host_vars("solo")["ntp"], "t");
    }

    #[test]
    fn mistakes_say_where_and_what_was_expected() {
        let e = |t: &str| parse(t, "inv.json").unwrap_err().to_string();
        assert_eq!(
            e("{\"web\": {\"hosts\": []},\n \"web\": {}}"),
            "inv.json:2:6: duplicate key \"web\" (each key may appear once in an object)"
        );
        assert_eq!(
            e("{\"web\": {\"host\": []}}"),
            "inv.json: \"web\".\"host\": unknown key, expected \"hosts\", \"vars\" or \
             \"children\"; did you mean \"hosts\"?"
        );
        assert_eq!(
            e("{\"web\": {\"hosts\": [\"a\", 3]}}"),
            "inv.json: \"web\".\"hosts\"[1]: is an integer, expected a host name"
        );
        assert_eq!(
            e("[1]"),
            "inv.json: the document: is a list, expected an object of groups (and \"_meta\")"
        );
        assert!(
            e("{\"web\": [}").starts_with("inv.json:1:10: "),
            "{}",
            e("{\"web\": [}")
        );
    }
}
