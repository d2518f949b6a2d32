//! Ansible's INI inventory: no INI crate reads its host lines, so this is a small parser that
//! keeps line and column for every mistake.

use serde_json::{Map, Value};

use super::{Inventory, InventoryError, range};

enum Section {
    Hosts(String),
    Vars(String),
    Children(String),
}

/// A word of a host line: where it starts (1-based column), its text with quotes removed, and
/// whether any of it was quoted.
struct Word {
    column: usize,
    text: String,
    quoted: bool,
}

pub(crate) fn parse(text: &str, origin: &str) -> Result<Inventory, InventoryError> {
    let mut inv = Inventory::new();
    let mut section = Section::Hosts(super::UNGROUPED.to_string());
    for (n, raw) in text.lines().enumerate() {
        let line_no = n as u64 + 1;
        let err = |column: usize, message: String| InventoryError::Parse {
            origin: origin.to_string(),
            line: line_no,
            column: Some(column as u64),
            message,
        };
        let indent = raw.len() - raw.trim_start().len();
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let col0 = raw[..indent].chars().count() + 1;
        if let Some(rest) = line.strip_prefix('[') {
            let Some(inner) = rest.strip_suffix(']') else {
                return Err(err(
                    col0,
                    format!(
                        "expected a section header [group], [group:vars] or [group:children], \
                         found {}",
                        crate::shown(line)
                    ),
                ));
            };
            let (name, kind) = match inner.split_once(':') {
                None => (inner, None),
                Some((name, kind)) => (name, Some(kind)),
            };
            check_group(name).map_err(|m| err(col0 + 1, m))?;
            section = match kind {
                None => Section::Hosts(name.to_string()),
                Some("vars") => Section::Vars(name.to_string()),
                Some("children") => Section::Children(name.to_string()),
                Some(other) => {
                    return Err(err(
                        col0 + 1 + name.len() + 1,
                        format!(
                            "unknown section kind {}: expected [{name}], [{name}:vars] or \
                             [{name}:children]",
                            crate::shown(other)
                        ),
                    ));
                }
            };
            inv.group_mut(match &section {
                Section::Hosts(g) | Section::Vars(g) | Section::Children(g) => g,
            });
            continue;
        }
        match &section {
            Section::Children(group) => {
                let words = words(raw).map_err(|(c, m)| err(c, m))?;
                let [child] = words.as_slice() else {
                    return Err(err(
                        words.get(1).map_or(col0, |w| w.column),
                        format!("[{group}:children] holds one group name per line"),
                    ));
                };
                check_group(&child.text).map_err(|m| err(child.column, m))?;
                if child.text == *group {
                    return Err(err(
                        child.column,
                        format!("group {group:?} cannot be its own child"),
                    ));
                }
                inv.group_mut(group).children.insert(child.text.clone());
            }
            Section::Vars(group) => {
                let Some((key, value)) = line.split_once('=') else {
                    return Err(err(
                        col0,
                        format!(
                            "expected key=value in [{group}:vars], found {}",
                            crate::shown(line)
                        ),
                    ));
                };
                let key = key.trim();
                if key.is_empty() || key.contains(char::is_whitespace) {
                    return Err(err(
                        col0,
                        format!(
                            "expected a variable name before `=`, found {}",
                            crate::shown(key)
                        ),
                    ));
                }
                let value = value.trim();
                let unquoted = strip_quotes(value);
                let value = match unquoted {
                    Some(s) => Value::String(s.to_string()),
                    None => typed(value),
                };
                inv.group_mut(group).vars.insert(key.to_string(), value);
            }
            Section::Hosts(group) => {
                let words = words(raw).map_err(|(c, m)| err(c, m))?;
                let Some((first, rest)) = words.split_first() else {
                    continue;
                };
                let (name, port) = host_and_port(&first.text).map_err(|m| err(first.column, m))?;
                let names = range::expand(&name).map_err(|m| err(first.column, m))?;
                let mut vars = Map::new();
                if let Some(port) = port {
                    vars.insert("ansible_port".into(), port.into());
                }
                for word in rest {
                    let Some((key, value)) = word.text.split_once('=') else {
                        return Err(err(
                            word.column,
                            format!(
                                "expected key=value after the host name, found {}",
                                crate::shown(&word.text)
                            ),
                        ));
                    };
                    if key.is_empty() {
                        return Err(err(
                            word.column,
                            format!(
                                "expected a variable name before `=`, found {}",
                                crate::shown(&word.text)
                            ),
                        ));
                    }
                    let value = if word.quoted {
                        Value::String(value.to_string())
                    } else {
                        typed(value)
                    };
                    if vars.insert(key.to_string(), value).is_some() {
                        return Err(err(
                            word.column,
                            format!("variable {key:?} is given twice for this host"),
                        ));
                    }
                }
                for name in names {
                    crate::HostName::parse(&name).map_err(|e| err(first.column, e.to_string()))?;
                    inv.add_host(group, &name).extend(vars.clone());
                }
            }
        }
    }
    inv.finish(origin)
}

/// A group name: not empty, no blank, no `:`, `[`, `]`, `,`, `!`, `&` or `*` (they mean
/// something in patterns).
fn check_group(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || ":[],!&*?".contains(c))
    {
        return Err(format!(
            "expected a group name (letters, digits, `_`, `-`, `.`), found {}",
            crate::shown(name)
        ));
    }
    Ok(())
}

/// `host` or `host:port` (a range's colons are inside brackets).
fn host_and_port(word: &str) -> Result<(String, Option<u16>), String> {
    let outside = match word.rfind(']') {
        Some(i) => i + 1,
        None => 0,
    };
    match word[outside..].rfind(':') {
        Some(i) => {
            let (host, port) = (&word[..outside + i], &word[outside + i + 1..]);
            let port = port.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| {
                format!(
                    "expected host or host:port with a port from 1 to 65535, found {}",
                    crate::shown(word)
                )
            })?;
            Ok((host.to_string(), Some(port)))
        }
        None => Ok((word.to_string(), None)),
    }
}

/// `"x"` or `'x'` as `x`; `None` when not quoted as a whole.
fn strip_quotes(value: &str) -> Option<&str> {
    for q in ['"', '\''] {
        if value.len() >= 2 && value.starts_with(q) && value.ends_with(q) {
            return Some(&value[1..value.len() - 1]);
        }
    }
    None
}

/// An unquoted value: a whole number, a decimal number, true/false, else the text.
fn typed(value: &str) -> Value {
    if let Ok(n) = value.parse::<i64>() {
        return n.into();
    }
    if value.contains('.')
        && let Ok(f) = value.parse::<f64>()
        && let Some(n) = serde_json::Number::from_f64(f)
    {
        return Value::Number(n);
    }
    match value {
        "true" | "True" => Value::Bool(true),
        "false" | "False" => Value::Bool(false),
        _ => Value::String(value.to_string()),
    }
}

/// The words of a line, split at blanks outside quotes; `#` or `;` starting a word begins a
/// comment. Inside double quotes a backslash escapes the next character.
fn words(line: &str) -> Result<Vec<Word>, (usize, String)> {
    let mut out = Vec::new();
    let mut chars = line.chars().enumerate().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        if c == '#' || c == ';' {
            break;
        }
        let mut word = Word {
            column: i + 1,
            text: String::new(),
            quoted: false,
        };
        while let Some(&(j, c)) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            if c == '"' || c == '\'' {
                word.quoted = true;
                let mut closed = false;
                while let Some((_, d)) = chars.next() {
                    if d == c {
                        closed = true;
                        break;
                    }
                    if d == '\\' && c == '"' {
                        if let Some((_, e)) = chars.next() {
                            word.text.push(e);
                        }
                        continue;
                    }
                    word.text.push(d);
                }
                if !closed {
                    return Err((j + 1, format!("this {c} quote is not closed")));
                }
            } else {
                word.text.push(c);
            }
        }
        out.push(word);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::parse;

    fn err(text: &str) -> String {
        parse(text, "hosts").unwrap_err().to_string()
    }

    #[test]
    fn hosts_vars_children_ranges_comments_and_ungrouped() {
        let inv = parse(
            "# a comment\nlonely ansible_host=10.0.0.1\n\n[web]\n\
             web[01:02] ansible_user=deploy motd=\"hello world\" n=3 f=1.5 on=true s='007'\n\
             ; another\nweb3:2222 # the third\n\n[web:vars]\nhttp_port = 8080\nname = \"x y\"\n\n\
             [prod:children]\nweb\n",
            "hosts",
        )
        .unwrap();
        assert_eq!(
            inv.hosts().collect::<Vec<_>>(),
            ["lonely", "web01", "web02", "web3"]
        );
        assert_eq!(inv.select("ungrouped").unwrap(), ["lonely"]);
        assert_eq!(inv.select("prod").unwrap(), ["web01", "web02", "web3"]);
        let v = inv.host_vars("web02");
        assert_eq!(v["ansible_user"], "deploy");
        assert_eq!(v["motd"], "hello world");
        assert_eq!(v["n"], 3);
        assert_eq!(v["f"], 1.5);
        assert_eq!(v["on"], true);
        assert_eq!(v["s"], "007");
        assert_eq!(v["http_port"], 8080);
        assert_eq!(v["name"], "x y");
        assert_eq!(inv.host_vars("web3")["ansible_port"], 2222);
        assert_eq!(inv.host_vars("lonely")["ansible_host"], "10.0.0.1");
        assert!(!inv.host_vars("lonely").contains_key("http_port"));
    }

    #[test]
    fn mistakes_name_line_column_and_what_was_expected() {
        assert_eq!(
            err("[web\nweb1\n"),
            "hosts:1:1: expected a section header [group], [group:vars] or [group:children], \
             found \"[web\""
        );
        assert_eq!(
            err("[web:var]\n"),
            "hosts:1:6: unknown section kind \"var\": expected [web], [web:vars] or [web:children]"
        );
        assert_eq!(
            err("[web]\nweb1 ansible_port\n"),
            "hosts:2:6: expected key=value after the host name, found \"ansible_port\""
        );
        assert_eq!(
            err("[web]\n  web1 motd=\"unclosed\n"),
            "hosts:2:13: this \" quote is not closed"
        );
        assert_eq!(
            err("[web]\nweb1:http\n"),
            "hosts:2:1: expected host or host:port with a port from 1 to 65535, found \"web1:http\""
        );
        assert_eq!(
            err("[web]\nweb[1:x]\n"),
            "hosts:2:1: \"web[1:x]\": expected a range [start:end] or [start:end:step] of \
             numbers or of letters, found [1:x]"
        );
        assert_eq!(
            err("[web:vars]\nport 80\n"),
            "hosts:2:1: expected key=value in [web:vars], found \"port 80\""
        );
        assert_eq!(
            err("[web:children]\ndb app\n"),
            "hosts:2:4: [web:children] holds one group name per line"
        );
        assert_eq!(
            err("[a b]\n"),
            "hosts:1:2: expected a group name (letters, digits, `_`, `-`, `.`), found \"a b\""
        );
        assert_eq!(
            err("[web]\nweb1 a=1 a=2\n"),
            "hosts:2:10: variable \"a\" is given twice for this host"
        );
        assert_eq!(
            err("[a:children]\nb\n[b:children]\na\n"),
            "hosts: group \"a\" is its own child (a → b → a); expected groups without cycles"
        );
        assert!(
            err("[web]\nweb$1\n").starts_with("hosts:2:1: "),
            "{}",
            err("[web]\nweb$1\n")
        );
    }
}
