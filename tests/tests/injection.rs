//! No shell injection through any command argument.
//!
//! Every registered command and each of its arguments — found by asking the command itself
//! (an unknown argument's error lists the known ones), so a new command or argument without an
//! entry in [`entry`] fails [`every_argument_of_every_command_is_in_the_table`] — gets each of
//! [`HOSTILE`] against a real host: `LocalHost` for the whole matrix, the test sshd for
//! [`SSH_SUBSET`]. In every case:
//!
//! * the canary file the values would create (`touch deployer-canary`, `>deployer-canary`)
//!   never appears;
//! * the command refuses the value with a validation error at that argument — exactly when
//!   the argument's documented rules refuse it (`refuses` in the table) — or
//! * it runs and the host shows that the value was used literally: a directory literally named
//!   `$(touch deployer-canary)` exists, a link points at `--help`, a program got `-rf` as one
//!   plain argument.
//!
//! Relative values (`-rf`, `--help`, `*`) resolve against the host's working directory: the
//! local matrix runs each case with its own directory as the process's working directory.
//!
//! Arguments that are shell command lines by design (`execute_command`'s `command_line`, the
//! service commands' `*_command`s, `check_service`'s `check_command`, `migration_script`'s
//! `source`) run as the tasklist's author wrote them; they are listed as such and not tried.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use deployer_commands::{LoadBalancers, ShellBackend};
use deployer_core::{
    CommandError, CommandRegistry, ExecContext, ExecOptions, Outcome, RemoteHost, quote,
};
use deployer_remote::LocalHost;
use deployer_remote::testing::TestSshd;
use deployer_tests::{HttpServer, registry, task};
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

/// The file a successful injection creates in the host's working directory.
const CANARY: &str = "deployer-canary";

/// Values a shell would execute, split or expand if they were pasted into a command line,
/// and values a program would read as options.
const HOSTILE: &[&str] = &[
    "$(touch deployer-canary)",
    "`touch deployer-canary`",
    "; touch deployer-canary",
    "' ; touch deployer-canary ; '",
    "\" ; touch deployer-canary ; \"",
    "x\ntouch deployer-canary",
    "$(touch${IFS}deployer-canary)",
    "|touch${IFS}deployer-canary",
    ">deployer-canary",
    "*",
    "-rf",
    "--help",
];

/// The (command, argument) pairs also tried over real SSH.
const SSH_SUBSET: &[(&str, &str)] = &[
    ("upload", "destination"),
    ("unpack", "source"),
    ("unpack", "destination"),
    ("createdirectory", "source"),
    ("copyfile", "source"),
    ("movefile", "destination"),
    ("removefile", "source"),
    ("writefile", "destination"),
    ("writefile", "contents"),
    ("symlink", "source"),
    ("symlink", "destination"),
    ("cleanup", "path"),
    ("migration_script", "if_exists"),
    ("start_service", "service"),
    ("stop_service", "service_dir"),
    ("http_check", "url"),
    ("wait_for_port", "address"),
    ("disable_loadbalancer", "lb_service"),
    ("execute_command", "env"),
    ("execute_command", "stdin"),
    ("enable_loadbalancer", "lb_password"),
    ("get_remote_versions", "install_location"),
    ("release_lock", "holder"),
    ("release_create", "version"),
    ("release_link_shared", "shared_dirs"),
    ("release_activate", "version"),
    ("rollback", "version"),
    ("keep_releases", "deploy_to"),
];

// ---------------------------------------------------------------------------------------------
// The table
// ---------------------------------------------------------------------------------------------

/// Where a hostile value goes in an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Form {
    /// As it is: a relative path resolves in the host's working directory.
    Raw,
    /// `<case directory>/<value>`.
    InDir,
    /// `http://127.0.0.1:<port>/<value>`, the fixtures' HTTP server.
    Url,
}

const PATH: &[Form] = &[Form::Raw, Form::InDir];
const RAW: &[Form] = &[Form::Raw];

type Ran = Result<Outcome, CommandError>;
/// Whether an argument's rules refuse a placed value.
type Rule = fn(&str) -> bool;
type Prepare = Box<dyn Fn(&Case<'_>, &mut Value)>;
type Literal = Box<dyn Fn(&Case<'_>, &Ran) -> Result<(), String>>;

enum Entry {
    /// A number, boolean, choice or octal mode: every hostile string is refused.
    Refused,
    /// A shell command line written by the tasklist's author: runs as written, by design.
    ShellLine,
    /// A string the command must pass on literally (or refuse, by its rules).
    Text(Text),
}

/// How a value goes into the argument, and whether the argument's rules refuse it there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// The argument is the value.
    Scalar,
    /// A list of one element.
    List,
    /// A mapping with the value as its one key (`{value: "x"}`).
    Key,
    /// A mapping of `V` to the value.
    Value,
}

struct Text {
    forms: &'static [Form],
    /// Appended to the placed value (`.tgz` for an archive).
    suffixes: &'static [&'static str],
    /// How the value goes in, each with whether the argument's rules refuse the placed value.
    shapes: Vec<(Shape, Rule)>,
    /// Prepares the host for the value and adjusts the task.
    prepare: Prepare,
    /// Checks, after the command ran, that the host shows the value used literally.
    literal: Literal,
}

fn text(
    forms: &'static [Form],
    refuses: fn(&str) -> bool,
    prepare: impl Fn(&Case, &mut Value) + 'static,
    literal: impl Fn(&Case, &Ran) -> Result<(), String> + 'static,
) -> Entry {
    Entry::Text(Text {
        forms,
        suffixes: &[""],
        shapes: vec![(Shape::Scalar, refuses)],
        prepare: Box::new(prepare),
        literal: Box::new(literal),
    })
}

fn with_suffixes(e: Entry, suffixes: &'static [&'static str]) -> Entry {
    match e {
        Entry::Text(t) => Entry::Text(Text { suffixes, ..t }),
        other => other,
    }
}

fn as_list(e: Entry) -> Entry {
    match e {
        Entry::Text(t) => Entry::Text(Text {
            shapes: t.shapes.iter().map(|(_, r)| (Shape::List, *r)).collect(),
            ..t
        }),
        other => other,
    }
}

/// A mapping: the value as a key (refused by `key_refuses`) and as the value of `V`.
fn as_map(e: Entry, key_refuses: fn(&str) -> bool) -> Entry {
    match e {
        Entry::Text(t) => Entry::Text(Text {
            shapes: vec![(Shape::Key, key_refuses), (Shape::Value, t.shapes[0].1)],
            ..t
        }),
        other => other,
    }
}

fn nothing(_: &Case, _: &mut Value) {}

/// Arguments the commands check as paths on the host (`RemotePath`).
fn checked_path(command: &str, arg: &str) -> bool {
    matches!(
        (command, arg),
        ("cleanup", "path" | "current")
            | (
                _,
                "service_dir" | "install_location" | "deploy_to" | "if_exists" | "lb_service"
            )
            | (
                "copyfile"
                    | "movefile"
                    | "symlink"
                    | "unpack"
                    | "upload"
                    | "writefile"
                    | "createdirectory"
                    | "removefile",
                "source" | "destination"
            )
    )
}

// The rules of the commands' validation, restated: a value is refused exactly when they say so.
fn never(_: &str) -> bool {
    false
}
/// `rm -rf` targets: not `/`, `.`, `..`, `~` or `*`.
fn removable(v: &str) -> bool {
    matches!(v.trim_end_matches('/'), "" | "." | ".." | "/" | "~" | "*")
}
/// One path component: a version, a service or host name.
fn name(v: &str) -> bool {
    v.is_empty()
        || v == "."
        || v == ".."
        || v.starts_with('-')
        || v.chars()
            .any(|c| c == '/' || c.is_whitespace() || c.is_control())
}
/// A systemd/init/daemontools service: a name without pattern characters.
fn service_name(v: &str) -> bool {
    name(v) || v.contains(['*', '?', '['])
}
fn not_absolute(v: &str) -> bool {
    !v.starts_with('/')
}
fn relative(v: &str) -> bool {
    v.is_empty() || v.starts_with('/') || v.split('/').any(|c| c == "." || c == "..")
}
fn control(v: &str) -> bool {
    v.is_empty() || v.chars().any(char::is_control)
}
fn url(v: &str) -> bool {
    !(v.starts_with("http://") || v.starts_with("https://"))
        || v.chars().any(|c| c.is_whitespace() || c.is_control())
}
fn address(v: &str) -> bool {
    !v.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
}
fn dash(v: &str) -> bool {
    v.starts_with('-')
}
fn env_name(v: &str) -> bool {
    v.is_empty() || v.contains('=')
}
fn spaced(v: &str) -> bool {
    v.is_empty() || v.chars().any(|c| c.is_whitespace() || c.is_control())
}
/// Not a shell variable name.
fn not_var(v: &str) -> bool {
    let mut chars = v.chars();
    !(matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric()))
}
fn zip_wildcard(v: &str) -> bool {
    v.ends_with(".zip") && v.contains(['*', '?', '['])
}

const SERVICES: &[&str] = &[
    "control_service",
    "start_service",
    "stop_service",
    "restart_service",
    "reload_service",
];

/// What the table says about `arg` of `command`; `None`: not in the table.
fn entry(command: &str, arg: &str) -> Option<Entry> {
    let service_cmd = SERVICES.contains(&command);
    let lb = matches!(command, "disable_loadbalancer" | "enable_loadbalancer");
    let lists_versions = matches!(command, "get_remote_versions" | "getremoteversions");
    Some(match (command, arg) {
        (_, "sudo") => Entry::Refused,
        ("upload", "source") => text(
            PATH,
            never,
            |c, t| {
                write(&c.at(), "payload");
                mkdir(&c.p("into"));
                t["destination"] = json!(format!("{}/", c.s("into")));
            },
            |c, ran| {
                ok(ran)?;
                let name = c.at().file_name().unwrap().to_owned();
                expect_file(&c.p("into").join(name), "payload")
            },
        ),
        ("upload", "destination") => text(PATH, never, nothing, |c, ran| {
            ok(ran)?;
            expect_file(&c.at(), "payload")
        }),
        ("upload", "mode") => Entry::Refused,
        ("unpack", "source") => with_suffixes(
            text(
                PATH,
                zip_wildcard,
                |c, t| {
                    let ext = c.value.rsplit('.').next().unwrap();
                    copy(&c.fx.archives.join(format!("a.{ext}")), &c.at());
                    t["destination"] = json!(c.s("out"));
                },
                |c, ran| {
                    ok(ran)?;
                    expect_file(&c.p("out/app/hello.txt"), "hello")
                },
            ),
            &[".tgz", ".zip"],
        ),
        ("unpack", "destination") => text(
            PATH,
            never,
            |c, _| mkdir(&c.at()),
            |c, ran| {
                ok(ran)?;
                expect_file(&c.at().join("app/hello.txt"), "hello")
            },
        ),
        ("createdirectory", "source") => text(PATH, never, nothing, |c, ran| {
            ok(ran)?;
            expect(c.at().is_dir(), "no directory at the literal path")
        }),
        ("createdirectory", "clobber" | "mode") => Entry::Refused,
        ("copyfile", "source") => text(
            PATH,
            never,
            |c, _| write(&c.at(), "content"),
            |c, ran| {
                ok(ran)?;
                expect_file(&c.p("dst"), "content")
            },
        ),
        ("copyfile", "destination") => text(PATH, never, nothing, |c, ran| {
            ok(ran)?;
            expect_file(&c.at(), "content")
        }),
        ("copyfile", "remove_if_exists" | "continue_if_exists") => Entry::Refused,
        ("movefile", "source") => text(
            PATH,
            never,
            |c, _| write(&c.at(), "content"),
            |c, ran| {
                ok(ran)?;
                expect_file(&c.p("dst"), "content")?;
                expect(!c.at().exists(), "the source is still there")
            },
        ),
        ("movefile", "destination") => text(PATH, removable, nothing, |c, ran| {
            ok(ran)?;
            expect_file(&c.at(), "content")?;
            expect(!c.p("src").exists(), "the source is still there")
        }),
        ("movefile", "clobber") => Entry::Refused,
        ("removefile", "source") => text(
            PATH,
            removable,
            |c, _| {
                write(&c.at(), "x");
                write(&c.p("keep-me"), "k");
            },
            |c, ran| {
                ok(ran)?;
                expect(!exists(&c.at()), "the literal path was not removed")?;
                expect_file(&c.p("keep-me"), "k")
            },
        ),
        ("writefile", "destination") => text(PATH, never, nothing, |c, ran| {
            ok(ran)?;
            expect_file(&c.at(), "hello")?;
            let tmp = format!("{}.deployer-tmp", c.at().display());
            expect(!Path::new(&tmp).exists(), "the temporary file is left")
        }),
        ("writefile", "contents") => text(RAW, never, nothing, |c, ran| {
            ok(ran)?;
            expect_file(&c.p("w.txt"), &c.value)
        }),
        ("writefile", "clobber" | "mode") => Entry::Refused,
        ("symlink", "source") => text(
            PATH,
            never,
            |c, _| mkdir(&c.at()),
            |c, ran| {
                ok(ran)?;
                expect_link(&c.p("link"), &c.value)
            },
        ),
        ("symlink", "destination") => text(PATH, never, nothing, |c, ran| {
            ok(ran)?;
            expect_link(&c.at(), &c.s("target"))
        }),
        ("cleanup", "path") => text(
            PATH,
            removable,
            |c, _| versions(&c.at()),
            |c, ran| {
                ok(ran)?;
                expect_versions(&c.at(), &["r3"], &["r1", "r2"])?;
                expect_file(&c.p("keep-me"), "k")
            },
        ),
        ("cleanup", "filespec") => text(
            RAW,
            |v| v.is_empty() || v.contains('/'),
            nothing,
            |c, ran| {
                ok(ran)?;
                // A pattern, matched by the command itself: only `*` matches the versions.
                if c.value == "*" {
                    expect_versions(&c.p("rel"), &["r3"], &["r1", "r2"])
                } else {
                    expect_versions(&c.p("rel"), &["r1", "r2", "r3"], &[])
                }
            },
        ),
        ("cleanup", "exclude") => text(RAW, never, nothing, |c, ran| {
            ok(ran)?;
            if c.value == "*" {
                expect_versions(&c.p("rel"), &["r1", "r2", "r3"], &[])
            } else {
                expect_versions(&c.p("rel"), &["r3"], &["r1", "r2"])
            }
        }),
        ("cleanup", "current") => text(
            PATH,
            never,
            |c, _| link(&c.s("rel/r1"), &c.at()),
            |c, ran| {
                ok(ran)?;
                // r1 is what the literal link points at: kept.
                expect_versions(&c.p("rel"), &["r1", "r3"], &["r2"])
            },
        ),
        ("cleanup", "keepversions") => Entry::Refused,
        ("execute_command", "command_line" | "cmd") => Entry::ShellLine,
        ("execute_command", "env") => as_map(
            text(
                RAW,
                |v| v.contains('\0'),
                |c, t| {
                    let out = quote(&c.s("env.out")).unwrap().into_owned();
                    t["command_line"] = json!(format!("printf '%s' \"$V\" > {out}"));
                },
                |c, ran| {
                    ok(ran)?;
                    expect_file(&c.p("env.out"), &c.value)
                },
            ),
            not_var,
        ),
        ("execute_command", "stdin") => text(
            RAW,
            never,
            |c, t| {
                let out = quote(&c.s("stdin.out")).unwrap().into_owned();
                t["command_line"] = json!(format!("cat > {out}"));
            },
            |c, ran| {
                ok(ran)?;
                expect_file(&c.p("stdin.out"), &c.value)
            },
        ),
        ("migration_script", "source") => Entry::ShellLine,
        ("migration_script", "if_exists") => text(
            PATH,
            never,
            |c, t| {
                write(&c.at(), "x");
                t["source"] = json!(format!("touch {}", quote(&c.s("ran")).unwrap()));
            },
            |c, ran| {
                ok(ran)?;
                expect(c.p("ran").exists(), "the script did not run")
            },
        ),
        ("check_service", "check_command") => Entry::ShellLine,
        ("check_service", "want_state" | "wait_timeout" | "poll_interval" | "notify_interval") => {
            Entry::Refused
        }
        (_, "service") if service_cmd => text(
            RAW,
            service_name,
            |c, _| init_script(&c.p("svc").join(&c.value)),
            |c, ran| {
                ok(ran)?;
                expect_calls(&c.p("svc"), c.verb())
            },
        ),
        (_, "service_dir") if service_cmd => text(
            PATH,
            never,
            |c, _| init_script(&c.at().join("web")),
            |c, ran| {
                ok(ran)?;
                expect_calls(&c.at(), c.verb())
            },
        ),
        (
            _,
            "start_command" | "stop_command" | "reload_command" | "control_command"
            | "status_command" | "check_command" | "kill_command",
        ) if service_cmd => Entry::ShellLine,
        (_, "manager" | "action" | "want_state" | "wait_timeout" | "poll_interval")
            if service_cmd =>
        {
            Entry::Refused
        }
        ("http_check", "url") => text(&[Form::Raw, Form::Url], url, nothing, |c, ran| {
            ok(ran)?;
            let path = c.value.strip_prefix(&c.fx.http.url("")).unwrap();
            let line = format!("GET {path} HTTP/1.1\r\n");
            let n =
                c.fx.http
                    .requests()
                    .iter()
                    .filter(|r| r.starts_with(&line))
                    .count();
            expect(n == 1, format!("{n} requests for {path:?}, expected 1"))
        }),
        ("http_check", "body_contains") => text(
            RAW,
            |v| v.contains('\0'),
            nothing,
            |_, ran| expect_err(ran, "body does not contain"),
        ),
        (
            "http_check",
            "expected_status" | "tries" | "interval" | "request_timeout" | "insecure",
        ) => Entry::Refused,
        ("wait_for_port", "address") => text(RAW, address, nothing, |_, ran| ok(ran).map(|_| ())),
        ("wait_for_port", "port" | "state" | "wait_timeout" | "poll_interval") => Entry::Refused,
        (_, "lb_hostname") if lb => text(RAW, name, nothing, |c, ran| {
            ok(ran)?;
            expect_lb_args(c, &[&c.value, "web1", "deploy"])
        }),
        (_, "lb_service") if lb => text(RAW, dash, nothing, |c, ran| {
            ok(ran)?;
            expect_lb_args(c, &["lb1", &c.value, "deploy"])
        }),
        (_, "lb_username") if lb => text(RAW, dash, nothing, |c, ran| {
            ok(ran)?;
            expect_lb_args(c, &["lb1", "web1", &c.value])
        }),
        (_, "lb_password") if lb => text(RAW, never, nothing, |c, ran| {
            ok(ran)?;
            expect_file(&c.p("lb.stdin"), &format!("{}\n", c.value))
        }),
        (_, "lb_password_env") if lb => text(
            RAW,
            env_name,
            |_, t| {
                t.as_object_mut().unwrap().remove("lb_password");
            },
            |_, ran| expect_err(ran, "is not set"),
        ),
        (_, "lb_backend" | "lb_timeout") if lb => Entry::Refused,
        ("send_graphite", "carbon_host") => text(RAW, name, nothing, |c, ran| {
            expect_err(ran, &format!("graphite {}:", c.value))
        }),
        ("send_graphite", "metric_name") => text(RAW, spaced, nothing, |c, ran| {
            ok(ran)?;
            // The relay reads on its own task: give it a moment.
            let prefix = format!("{} 1 ", c.value);
            for _ in 0..100 {
                if c.fx
                    .carbon_lines
                    .lock()
                    .unwrap()
                    .iter()
                    .any(|l| l.starts_with(&prefix))
                {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(format!(
                "carbon got {:?}",
                c.fx.carbon_lines.lock().unwrap()
            ))
        }),
        (
            "send_graphite",
            "carbon_port" | "metric_value" | "continue_on_fail" | "connect_timeout",
        ) => Entry::Refused,
        (_, "install_location") if lists_versions => text(
            PATH,
            never,
            |c, _| link("/srv/web/releases/1.2", &c.at().join("web/current")),
            |c, ran| {
                let data = ok(ran)?.data.clone().unwrap_or_default();
                // The listing is one line per link: a location with a newline is looked at
                // literally but cannot be read back.
                let want = if c.value.contains('\n') {
                    json!({})
                } else {
                    json!({"web": "1.2"})
                };
                expect(data["versions"] == want, format!("found {data}"))
            },
        ),
        (_, "services") if lists_versions => as_list(text(RAW, name, nothing, |_, ran| {
            let data = ok(ran)?.data.clone().unwrap_or_default();
            expect(data["versions"] == json!({}), format!("found {data}"))
        })),
        ("release_lock", "deploy_to") => text(PATH, not_absolute, nothing, |c, ran| {
            ok(ran)?;
            expect_file(&c.at().join(".deploy.lock/holder"), "alice\n")
        }),
        ("release_lock", "holder") => text(RAW, control, nothing, |c, ran| {
            ok(ran)?;
            expect_file(&c.p("app/.deploy.lock/holder"), &format!("{}\n", c.value))
        }),
        ("release_unlock", "deploy_to") => text(
            PATH,
            not_absolute,
            |c, _| write(&c.at().join(".deploy.lock/holder"), "alice\n"),
            |c, ran| {
                ok(ran)?;
                expect(
                    !c.at().join(".deploy.lock").exists(),
                    "the lock is still there",
                )
            },
        ),
        ("release_unlock", "holder") => text(
            RAW,
            control,
            |c, _| write(&c.p("app/.deploy.lock/holder"), &format!("{}\n", c.value)),
            |c, ran| {
                ok(ran)?;
                expect(!c.p("app/.deploy.lock").exists(), "the lock is still there")
            },
        ),
        ("release_lock" | "release_unlock", "force") => Entry::Refused,
        ("release_lock", "user" | "controller") => text(RAW, control, nothing, |c, ran| {
            ok(ran)?;
            let info = std::fs::read_to_string(c.p("app/.deploy.lock/info"))
                .map_err(|e| format!("no lock info: {e}"))?;
            expect(
                info.lines()
                    .any(|l| l.split_once('=').map(|(_, v)| v) == Some(&c.value)),
                format!("the lock's info holds no literal {:?}: {info:?}", c.value),
            )
        }),
        ("release_unlock", "user" | "controller") => text(
            RAW,
            control,
            |c, _| write(&c.p("app/.deploy.lock/holder"), "alice\n"),
            |c, ran| {
                ok(ran)?;
                expect(!c.p("app/.deploy.lock").exists(), "the lock is still there")
            },
        ),
        ("release_create", "fresh") => Entry::Refused,
        ("release_create", "deploy_to") => text(PATH, not_absolute, nothing, |c, ran| {
            ok(ran)?;
            expect(
                c.at().join("releases/1.0").is_dir() && c.at().join("shared").is_dir(),
                "no release directory at the literal path",
            )
        }),
        ("release_create", "version") => text(RAW, name, nothing, |c, ran| {
            ok(ran)?;
            expect(
                c.p("app/releases").join(&c.value).is_dir(),
                "no release directory with the literal name",
            )
        }),
        ("release_link_shared", "deploy_to") => text(
            PATH,
            not_absolute,
            |c, _| {
                mkdir(&c.at().join("releases/1.0"));
                write(&c.at().join("shared/config.yml"), "x");
            },
            |c, ran| {
                ok(ran)?;
                let shared = c.at().join("shared/log");
                expect_link(&c.at().join("releases/1.0/log"), s(&shared))
            },
        ),
        ("release_link_shared", "version") => text(
            RAW,
            name,
            |c, _| mkdir(&c.p("app/releases").join(&c.value)),
            |c, ran| {
                ok(ran)?;
                let release = c.p("app/releases").join(&c.value);
                expect_link(&release.join("log"), &c.s("app/shared/log"))
            },
        ),
        ("release_link_shared", "shared_dirs") => {
            as_list(text(RAW, relative, nothing, |c, ran| {
                ok(ran)?;
                let shared = c.p("app/shared").join(&c.value);
                expect(shared.is_dir(), "no shared directory with the literal name")?;
                expect_link(&c.p("app/releases/1.0").join(&c.value), s(&shared))
            }))
        }
        ("release_link_shared", "shared_files") => as_list(text(
            RAW,
            relative,
            |c, t| {
                write(&c.p("app/shared").join(&c.value), "x");
                t["shared_dirs"] = json!([]);
            },
            |c, ran| {
                ok(ran)?;
                let shared = c.p("app/shared").join(&c.value);
                expect_link(&c.p("app/releases/1.0").join(&c.value), s(&shared))
            },
        )),
        ("release_activate", "deploy_to") => text(
            PATH,
            not_absolute,
            |c, _| mkdir(&c.at().join("releases/1.0")),
            |c, ran| {
                ok(ran)?;
                expect_link(&c.at().join("current"), "releases/1.0")
            },
        ),
        ("release_activate", "version") => text(
            RAW,
            name,
            |c, _| mkdir(&c.p("app/releases").join(&c.value)),
            |c, ran| {
                ok(ran)?;
                expect_link(&c.p("app/current"), &format!("releases/{}", c.value))
            },
        ),
        ("release_activate", "holder") => text(RAW, control, nothing, |c, ran| {
            ok(ran)?;
            expect_log_end(&c.p("app"), &format!("\tactivate\t1.0\t{}\n", c.value))
        }),
        ("rollback", "deploy_to") => text(
            PATH,
            not_absolute,
            |c, _| releases_for_rollback(&c.at()),
            |c, ran| {
                ok(ran)?;
                expect_link(&c.at().join("current"), "releases/1.0")
            },
        ),
        ("rollback", "version") => text(
            RAW,
            name,
            |c, _| mkdir(&c.p("app/releases").join(&c.value)),
            |c, ran| {
                ok(ran)?;
                expect_link(&c.p("app/current"), &format!("releases/{}", c.value))
            },
        ),
        ("rollback", "holder") => text(RAW, control, nothing, |c, ran| {
            ok(ran)?;
            expect_log_end(&c.p("app"), &format!("\trollback\t1.0\t{}\n", c.value))
        }),
        ("keep_releases", "deploy_to") => text(
            PATH,
            not_absolute,
            |c, _| {
                release_dirs(&c.at().join("releases"));
                link("releases/r1", &c.at().join("current"));
            },
            |c, ran| {
                ok(ran)?;
                expect_versions(&c.at().join("releases"), &["r1", "r3"], &["r2"])?;
                expect_file(&c.p("keep-me"), "k")
            },
        ),
        ("keep_releases", "keep") => Entry::Refused,
        _ => return None,
    })
}

/// A valid task for `command` (without `command`), its host prepared; `None`: not in the table.
fn base(command: &str, c: &Case) -> Option<Value> {
    let d = |rel: &str| c.s(rel);
    Some(match command {
        "upload" => {
            write(&c.p("payload.txt"), "payload");
            json!({"source": d("payload.txt"), "destination": d("dest.txt")})
        }
        "unpack" => {
            copy(&c.fx.archives.join("a.tgz"), &c.p("a.tgz"));
            mkdir(&c.p("out"));
            json!({"source": d("a.tgz"), "destination": d("out")})
        }
        "createdirectory" => json!({"source": d("new")}),
        "copyfile" | "movefile" => {
            write(&c.p("src"), "content");
            json!({"source": d("src"), "destination": d("dst")})
        }
        "removefile" => {
            write(&c.p("victim"), "x");
            json!({"source": d("victim")})
        }
        "writefile" => json!({"destination": d("w.txt"), "contents": "hello"}),
        "symlink" => {
            mkdir(&c.p("target"));
            json!({"source": d("target"), "destination": d("link")})
        }
        "cleanup" => {
            versions(&c.p("rel"));
            json!({"path": d("rel"), "keepversions": 1})
        }
        "execute_command" => json!({"command_line": "true"}),
        "migration_script" => json!({"source": "true"}),
        "check_service" => json!({"check_command": "true"}),
        _ if SERVICES.contains(&command) => {
            init_script(&c.p("svc/web"));
            let mut t = json!({"service": "web", "manager": "init", "service_dir": d("svc"),
                               "wait_timeout": 10, "poll_interval": 0.05});
            if command == "control_service" {
                t["action"] = json!("start");
            }
            t
        }
        "http_check" => json!({"url": c.fx.http.url("/health"), "request_timeout": 10}),
        "wait_for_port" => {
            json!({"port": 1, "state": "closed", "wait_timeout": 5, "poll_interval": 0.1})
        }
        "disable_loadbalancer" | "enable_loadbalancer" => json!({
            "lb_hostname": "lb1", "lb_service": "web1", "lb_username": "deploy", "lb_password": "pw"
        }),
        "send_graphite" => json!({
            "carbon_host": "127.0.0.1", "carbon_port": c.fx.carbon.port(),
            "metric_name": "deploys.web", "metric_value": 1, "continue_on_fail": false,
            "connect_timeout": 3
        }),
        "get_remote_versions" | "getremoteversions" => {
            mkdir(&c.p("inst"));
            json!({"install_location": d("inst")})
        }
        "release_lock" | "release_unlock" => json!({"deploy_to": d("app"), "holder": "alice"}),
        "release_create" => json!({"deploy_to": d("app"), "version": "1.0"}),
        "release_link_shared" => {
            mkdir(&c.p("app/releases/1.0"));
            write(&c.p("app/shared/config.yml"), "x");
            json!({"deploy_to": d("app"), "version": "1.0",
                   "shared_dirs": ["log"], "shared_files": ["config.yml"]})
        }
        "release_activate" => {
            mkdir(&c.p("app/releases/1.0"));
            json!({"deploy_to": d("app"), "version": "1.0"})
        }
        "rollback" => {
            releases_for_rollback(&c.p("app"));
            json!({"deploy_to": d("app"), "version": "1.0"})
        }
        "keep_releases" => {
            release_dirs(&c.p("app/releases"));
            link("releases/r1", &c.p("app/current"));
            json!({"deploy_to": d("app"), "keep": 1})
        }
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// Cases
// ---------------------------------------------------------------------------------------------

/// Servers and files the cases share.
struct Fixtures {
    /// `a.tgz` and `a.zip`, each holding `app/hello.txt` ("hello").
    archives: PathBuf,
    http: HttpServer,
    carbon: SocketAddr,
    carbon_lines: Arc<Mutex<Vec<String>>>,
    _dir: tempfile::TempDir,
}

impl Fixtures {
    async fn start() -> Fixtures {
        let dir = tempfile::tempdir().unwrap();
        let archives = dir.path().to_path_buf();
        write(&archives.join("src/app/hello.txt"), "hello");
        let made = std::process::Command::new("sh")
            .arg("-c")
            .arg("cd src && tar -czf ../a.tgz app && zip -qr ../a.zip app")
            .current_dir(&archives)
            .status()
            .unwrap();
        assert!(made.success(), "tar and zip make the fixture archives");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let carbon = listener.local_addr().unwrap();
        let carbon_lines = Arc::new(Mutex::new(Vec::new()));
        let lines = carbon_lines.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let lines = lines.clone();
                tokio::spawn(async move {
                    let mut reader = tokio::io::BufReader::new(stream).lines();
                    while let Ok(Some(line)) = reader.next_line().await {
                        lines.lock().unwrap().push(line);
                    }
                });
            }
        });
        Fixtures {
            archives,
            http: HttpServer::start(vec![(200, "ok")]).await,
            carbon,
            carbon_lines,
            _dir: dir,
        }
    }
}

/// One hostile value in one argument.
struct Case<'a> {
    command: &'a str,
    /// A fresh directory: the host's working directory on `LocalHost`.
    dir: PathBuf,
    /// The value as placed in the task.
    value: String,
    fx: &'a Fixtures,
}

impl Case<'_> {
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.join(rel)
    }

    fn s(&self, rel: &str) -> String {
        s(&self.p(rel)).to_string()
    }

    /// Where the value points when taken as a path.
    fn at(&self) -> PathBuf {
        self.dir.join(&self.value)
    }

    /// The init-script verb a service command runs.
    fn verb(&self) -> &'static str {
        match self.command {
            "stop_service" => "stop",
            "restart_service" => "restart",
            "reload_service" => "reload",
            _ => "start",
        }
    }
}

/// A registry with every standard command; the load-balancer commands get a backend that
/// records its arguments in `<dir>/lb.args` and its standard input in `<dir>/lb.stdin`.
fn registry_for(dir: &Path) -> CommandRegistry {
    let mut r = registry();
    let record = format!("{}/lb", s(dir));
    LoadBalancers::new()
        .backend(
            "record",
            ShellBackend::new([
                "sh",
                "-c",
                "printf '%s\\n' \"$@\" > \"$0.args\"; cat > \"$0.stdin\"",
                &record,
                "{action}",
                "{lb_hostname}",
                "{lb_service}",
                "{lb_username}",
            ]),
        )
        .register(&mut r);
    r
}

/// The arguments `command` accepts, from the error for an unknown one.
fn arguments(registry: &CommandRegistry, command: &str) -> Vec<String> {
    let probe = task(&json!({"command": command, "deployer_probe": true}));
    let errors = match registry.instantiate(&probe) {
        Ok(_) => panic!("{command} accepts an unknown argument: its arguments cannot be listed"),
        Err(e) => e,
    };
    let e = errors
        .iter()
        .find(|e| e.path == "deployer_probe")
        .unwrap_or_else(|| panic!("{command}: no error for an unknown argument: {errors}"));
    match e.expected.as_deref() {
        Some("no arguments") => Vec::new(),
        Some(list) => list
            .strip_prefix("one of ")
            .unwrap_or(list)
            .split(", ")
            .map(str::to_string)
            .collect(),
        None => panic!("{command}: the unknown-argument error lists no arguments: {e:?}"),
    }
}

/// Where a case runs.
enum Target<'a> {
    /// `LocalHost`, each case in its own working directory.
    Local,
    /// The test sshd; case directories are handed to its login user, whose home is checked for
    /// the canary too.
    Ssh {
        host: Arc<dyn RemoteHost>,
        user: &'a str,
        home: &'a Path,
    },
}

#[derive(Default, Debug)]
struct Tally {
    commands: usize,
    arguments: usize,
    shell_lines: usize,
    cases: usize,
    refused: usize,
    literal: usize,
    failures: Vec<String>,
}

/// Runs the matrix: every (command, argument) of the registry, or those in `only`.
async fn matrix(
    target: &Target<'_>,
    fx: &Fixtures,
    root: &Path,
    only: Option<&[(&str, &str)]>,
) -> Tally {
    let mut tally = Tally::default();
    let reg = registry();
    let mut commands: Vec<String> = reg.names().map(str::to_string).collect();
    commands.sort();
    for command in &commands {
        let args = arguments(&reg, command);
        let mut counted = false;
        for arg in &args {
            if only.is_some_and(|o| !o.contains(&(command.as_str(), arg.as_str()))) {
                continue;
            }
            if !counted {
                tally.commands += 1;
                counted = true;
            }
            tally.arguments += 1;
            let Some(e) = entry(command, arg) else {
                tally
                    .failures
                    .push(format!("{command}.{arg}: not in the table"));
                continue;
            };
            match &e {
                Entry::ShellLine => tally.shell_lines += 1,
                Entry::Refused if !matches!(target, Target::Local) => {}
                Entry::Refused => {
                    for hostile in HOSTILE {
                        let case = new_case(command, root, &mut tally, hostile.to_string(), fx);
                        let problem =
                            try_case(target, &case, arg, &e, Shape::Scalar, |_| true).await;
                        record(&mut tally, &case, arg, problem);
                    }
                }
                Entry::Text(t) => {
                    for form in t.forms {
                        // Over SSH the working directory is the login user's home: paths only
                        // in the case directory.
                        if *form == Form::Raw
                            && t.forms.contains(&Form::InDir)
                            && !matches!(target, Target::Local)
                        {
                            continue;
                        }
                        for suffix in t.suffixes {
                            for (shape, refuses) in &t.shapes {
                                for hostile in HOSTILE {
                                    // The directory `new_case` makes for this case.
                                    let dir = root.join(format!("c{}", tally.cases));
                                    let value = match form {
                                        Form::Raw => format!("{hostile}{suffix}"),
                                        Form::InDir => format!("{}/{hostile}{suffix}", s(&dir)),
                                        Form::Url => fx.http.url(&format!("/{hostile}{suffix}")),
                                    };
                                    let case = new_case(command, root, &mut tally, value, fx);
                                    let problem =
                                        try_case(target, &case, arg, &e, *shape, refuses).await;
                                    record(&mut tally, &case, arg, problem);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    tally
}

fn new_case<'a>(
    command: &'a str,
    root: &Path,
    tally: &mut Tally,
    value: String,
    fx: &'a Fixtures,
) -> Case<'a> {
    let dir = root.join(format!("c{}", tally.cases));
    tally.cases += 1;
    mkdir(&dir);
    write(&dir.join("keep-me"), "k");
    Case {
        command,
        dir,
        value,
        fx,
    }
}

/// `Ok(true)`: refused as the rules say; `Ok(false)`: ran and was taken literally.
fn record(tally: &mut Tally, case: &Case, arg: &str, problem: Result<bool, String>) {
    match problem {
        Ok(true) => tally.refused += 1,
        Ok(false) => tally.literal += 1,
        Err(why) => tally.failures.push(format!(
            "{}.{arg} = {:?} (in {}): {why}",
            case.command,
            case.value,
            case.dir.display()
        )),
    }
}

async fn try_case(
    target: &Target<'_>,
    case: &Case<'_>,
    arg: &str,
    e: &Entry,
    shape: Shape,
    refuses: impl Fn(&str) -> bool,
) -> Result<bool, String> {
    if let Target::Local = target {
        std::env::set_current_dir(&case.dir).unwrap();
    }
    let mut t = base(case.command, case).ok_or("no base task in the table")?;
    if let Entry::Text(text) = e {
        (text.prepare)(case, &mut t);
    }
    let value = match shape {
        Shape::Scalar => json!(case.value),
        Shape::List => json!([case.value]),
        Shape::Key => json!({ case.value.clone(): "x" }),
        Shape::Value => json!({ "V": case.value }),
    };
    t[arg] = value;
    t["command"] = json!(case.command);
    let host: Arc<dyn RemoteHost> = match target {
        Target::Local => Arc::new(LocalHost::new()),
        Target::Ssh { host, user, .. } => {
            give(&case.dir, user);
            host.clone()
        }
    };
    let reg = registry_for(&case.dir);
    let task = task(&t);
    // Paths are checked as `RemotePath` (no control character) and load-balancer and carbon hosts as
    // `HostName`, on top of each argument's own rules.
    let want_refused = refuses(&case.value)
        || (checked_path(case.command, arg) && case.value.chars().any(char::is_control))
        || (matches!(arg, "lb_hostname" | "carbon_host")
            && deployer_core::HostName::parse(&case.value).is_err());
    let outcome = match reg.instantiate(&task) {
        Err(errors) => {
            let all_here = errors.iter().all(|e| {
                e.path == arg
                    || e.path.starts_with(&format!("{arg}["))
                    || e.path.starts_with(&format!("{arg}."))
            });
            if !want_refused {
                Err(format!("refused, but the rules accept it: {errors}"))
            } else if !all_here || !errors.to_string().contains(arg) {
                Err(format!("refused without naming {arg}: {errors}"))
            } else {
                Ok(true)
            }
        }
        Ok(_) if want_refused => Err("accepted, but the rules refuse it".to_string()),
        Ok(cmd) => {
            let ctx = ExecContext::new(host, task, Arc::new(|_, _| {}));
            let ran = tokio::time::timeout(Duration::from_secs(60), cmd.execute(&ctx))
                .await
                .map_err(|_| "did not finish within 60 s".to_string())?;
            match e {
                Entry::Text(text) => (text.literal)(case, &ran)
                    .map(|()| false)
                    .map_err(|why| format!("{why}; the command returned {ran:?}")),
                _ => Err(format!("accepted: {ran:?}")),
            }
        }
    };
    let mut places = vec![case.dir.clone()];
    if let Target::Ssh { home, .. } = target {
        places.push(home.to_path_buf());
    }
    if let Some(root) = case.dir.parent() {
        places.push(root.to_path_buf());
    }
    for place in places {
        if let Some(found) = canary_in(&place, place == case.dir) {
            let _ = std::fs::remove_file(&found);
            return Err(format!("INJECTION: {} appeared", found.display()));
        }
    }
    outcome
}

/// A file named [`CANARY`] in `dir` (and below it, when `deep`).
fn canary_in(dir: &Path, deep: bool) -> Option<PathBuf> {
    let entries = std::fs::read_dir(dir).ok()?;
    for e in entries.flatten() {
        if e.file_name() == CANARY {
            return Some(e.path());
        }
        if deep
            && e.file_type().is_ok_and(|t| t.is_dir())
            && let Some(found) = canary_in(&e.path(), true)
        {
            return Some(found);
        }
    }
    None
}

/// Hands `dir` to `user` (the sshd's login user), so commands over SSH can work in it.
fn give(dir: &Path, user: &str) {
    let ok = std::process::Command::new("chown")
        .arg("-R")
        .arg(user)
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "chown {user} {}", dir.display());
}

// ---------------------------------------------------------------------------------------------
// Host helpers
// ---------------------------------------------------------------------------------------------

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

fn mkdir(p: &Path) {
    std::fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

fn write(p: &Path, content: &str) {
    if let Some(parent) = p.parent() {
        mkdir(parent);
    }
    std::fs::write(p, content).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
}

fn copy(from: &Path, to: &Path) {
    if let Some(parent) = to.parent() {
        mkdir(parent);
    }
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy to {}: {e}", to.display()));
}

fn link(target: &str, at: &Path) {
    if let Some(parent) = at.parent() {
        mkdir(parent);
    }
    std::os::unix::fs::symlink(target, at).unwrap_or_else(|e| panic!("link {}: {e}", at.display()));
}

fn exists(p: &Path) -> bool {
    p.symlink_metadata().is_ok()
}

/// Files `r1`, `r2`, `r3` in `dir`, oldest first.
fn versions(dir: &Path) {
    for (i, name) in ["r1", "r2", "r3"].iter().enumerate() {
        let p = dir.join(name);
        write(&p, name);
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 * (i as u64 + 1));
        std::fs::File::options()
            .write(true)
            .open(&p)
            .and_then(|f| f.set_modified(when))
            .unwrap();
    }
}

/// Release directories `r1`, `r2`, `r3` in `dir`, oldest first (releases are directories).
fn release_dirs(dir: &Path) {
    for (i, name) in ["r1", "r2", "r3"].iter().enumerate() {
        let p = dir.join(name);
        mkdir(&p);
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 * (i as u64 + 1));
        std::fs::File::open(&p)
            .and_then(|f| f.set_modified(when))
            .unwrap();
    }
}

/// `releases/1.0` and `releases/2.0` under `root`, `current` pointing at 2.0.
fn releases_for_rollback(root: &Path) {
    mkdir(&root.join("releases/1.0"));
    mkdir(&root.join("releases/2.0"));
    link("releases/2.0", &root.join("current"));
}

/// An init script that appends each verb to `calls` beside it and keeps its state in `state`.
fn init_script(path: &Path) {
    write(
        path,
        "#!/bin/sh\nd=$(dirname -- \"$0\")\nprintf '%s\\n' \"$1\" >> \"$d/calls\"\n\
         case $1 in\n  status) [ \"$(cat -- \"$d/state\" 2>/dev/null)\" = up ] ;;\n\
         \x20 start|restart) echo up > \"$d/state\" ;;\n  stop) echo down > \"$d/state\" ;;\nesac\n",
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn expect(cond: bool, why: impl Into<String>) -> Result<(), String> {
    if cond { Ok(()) } else { Err(why.into()) }
}

fn ok(ran: &Ran) -> Result<&Outcome, String> {
    ran.as_ref().map_err(|e| format!("failed: {e}"))
}

fn expect_err(ran: &Ran, needle: &str) -> Result<(), String> {
    match ran {
        Err(e) if e.to_string().contains(needle) => Ok(()),
        other => Err(format!(
            "expected a failure containing {needle:?}, got {other:?}"
        )),
    }
}

fn expect_file(p: &Path, content: &str) -> Result<(), String> {
    match std::fs::read_to_string(p) {
        Ok(c) if c == content => Ok(()),
        Ok(c) => Err(format!("{} holds {c:?}, expected {content:?}", p.display())),
        Err(e) => Err(format!("{}: {e}", p.display())),
    }
}

fn expect_link(p: &Path, target: &str) -> Result<(), String> {
    match std::fs::read_link(p) {
        Ok(t) if t == Path::new(target) => Ok(()),
        Ok(t) => Err(format!(
            "{} points at {t:?}, expected {target:?}",
            p.display()
        )),
        Err(e) => Err(format!("{} is not a link: {e}", p.display())),
    }
}

fn expect_versions(dir: &Path, kept: &[&str], removed: &[&str]) -> Result<(), String> {
    for k in kept {
        expect(
            dir.join(k).exists(),
            format!("{k} was removed from {}", dir.display()),
        )?;
    }
    for r in removed {
        expect(
            !dir.join(r).exists(),
            format!("{r} was kept in {}", dir.display()),
        )?;
    }
    Ok(())
}

fn expect_calls(dir: &Path, verb: &str) -> Result<(), String> {
    let calls = std::fs::read_to_string(dir.join("calls"))
        .map_err(|e| format!("the init script at the literal path did not run: {e}"))?;
    expect(
        calls.lines().any(|l| l == verb),
        format!("the init script got {calls:?}, expected {verb}"),
    )
}

fn expect_lb_args(c: &Case, words: &[&str]) -> Result<(), String> {
    let action = c.command.trim_end_matches("_loadbalancer");
    let mut want = format!("{action}\n");
    for w in words {
        want.push_str(w);
        want.push('\n');
    }
    expect_file(&c.p("lb.args"), &want)
}

fn expect_log_end(root: &Path, end: &str) -> Result<(), String> {
    let log = std::fs::read_to_string(root.join("releases.log")).map_err(|e| e.to_string())?;
    expect(log.ends_with(end), format!("releases.log is {log:?}"))
}

/// Serializes the tests that change the process's working directory.
static CWD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A temporary directory the working directory may be moved into: when it is dropped (also
/// by a panic), the working directory goes back to the crate's before the directory goes.
struct Scratch(tempfile::TempDir);

impl Scratch {
    fn new() -> Scratch {
        Scratch(tempfile::tempdir().unwrap())
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(env!("CARGO_MANIFEST_DIR"));
    }
}

fn report(what: &str, tally: &Tally) {
    eprintln!(
        "{what}: {} commands, {} arguments ({} shell lines by design), {} hostile values: \
         {} cases, {} refused by validation, {} run and taken literally",
        tally.commands,
        tally.arguments,
        tally.shell_lines,
        HOSTILE.len(),
        tally.cases,
        tally.refused,
        tally.literal
    );
    let shown: Vec<&String> = tally.failures.iter().take(40).collect();
    assert!(
        tally.failures.is_empty(),
        "{} of {} cases failed:\n{}",
        tally.failures.len(),
        tally.cases,
        shown
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn every_argument_of_every_command_is_in_the_table() {
    let reg = registry();
    let tmp = tempfile::tempdir().unwrap();
    let fx = Fixtures::start().await;
    let mut missing = Vec::new();
    let mut names: Vec<&str> = reg.names().collect();
    names.sort();
    assert!(names.len() >= deployer_commands::COMMAND_NAMES.len());
    for command in names {
        let case = Case {
            command,
            dir: tmp.path().join(command),
            value: String::new(),
            fx: &fx,
        };
        if base(command, &case).is_none() {
            missing.push(format!("{command}: no base task"));
        }
        for arg in arguments(&reg, command) {
            if entry(command, &arg).is_none() {
                missing.push(format!("{command}.{arg}"));
            }
        }
    }
    assert!(missing.is_empty(), "not in the table: {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_argument_of_every_command_on_local_host() {
    let _cwd = CWD.lock().await;
    let fx = Fixtures::start().await;
    let root = Scratch::new();
    let tally = matrix(&Target::Local, &fx, root.path(), None).await;
    assert!(tally.commands >= deployer_commands::COMMAND_NAMES.len());
    report("LocalHost", &tally);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subset_over_real_ssh() {
    let sshd = TestSshd::start().expect("start the test sshd");
    let host: Arc<dyn RemoteHost> = Arc::new(sshd.host());
    let out = host.execute("pwd", &ExecOptions::new()).await.unwrap();
    let home = PathBuf::from(out.stdout_str().trim());
    let stale = home.join(CANARY);
    assert!(
        !stale.exists(),
        "{} exists before the test: remove it",
        stale.display()
    );
    let fx = Fixtures::start().await;
    let root = tempfile::tempdir().unwrap();
    let target = Target::Ssh {
        host,
        user: sshd.user(),
        home: &home,
    };
    let tally = matrix(&target, &fx, root.path(), Some(SSH_SUBSET)).await;
    assert_eq!(
        tally.arguments,
        SSH_SUBSET.len(),
        "every pair of the subset exists"
    );
    report("SSH", &tally);
}

// Injections found by the matrix, kept as tests of their own.

/// Runs `t` on `LocalHost` with `dir` as the working directory.
async fn run_in(dir: &Path, t: Value) -> Ran {
    std::env::set_current_dir(dir).unwrap();
    let task = task(&t);
    let cmd = registry_for(dir)
        .instantiate(&task)
        .unwrap_or_else(|e| panic!("{t}: {e}"));
    let ctx = ExecContext::new(Arc::new(LocalHost::new()), task, Arc::new(|_, _| {}));
    cmd.execute(&ctx).await
}

/// `find -delete …` would have emptied the working directory (the login user's home over
/// SSH): a relative directory starting with `-` was read as part of find's expression.
#[tokio::test(flavor = "multi_thread")]
async fn cleanup_of_a_directory_named_like_a_find_action_removes_only_old_versions() {
    let _cwd = CWD.lock().await;
    let tmp = Scratch::new();
    write(&tmp.path().join("precious"), "p");
    versions(&tmp.path().join("-delete"));
    let t = json!({"command": "cleanup", "path": "-delete", "keepversions": 1});
    run_in(tmp.path(), t).await.unwrap();
    expect_versions(&tmp.path().join("-delete"), &["r3"], &["r1", "r2"]).unwrap();
    expect_file(&tmp.path().join("precious"), "p").unwrap();
}

/// unzip read `-l.zip` as options and expanded `*` in `*.zip` itself; tar read `fe001:a.tgz`
/// as an archive on the host `fe001`.
#[tokio::test(flavor = "multi_thread")]
async fn archive_names_are_neither_options_nor_patterns_nor_remote() {
    let _cwd = CWD.lock().await;
    let fx = Fixtures::start().await;
    let tmp = Scratch::new();
    for (i, (name, fixture)) in [("-l.zip", "a.zip"), ("fe001:a.tgz", "a.tgz")]
        .into_iter()
        .enumerate()
    {
        copy(&fx.archives.join(fixture), &tmp.path().join(name));
        let out = tmp.path().join(format!("out{i}"));
        mkdir(&out);
        let t = json!({"command": "unpack", "source": name, "destination": s(&out)});
        run_in(tmp.path(), t).await.unwrap();
        expect_file(&out.join("app/hello.txt"), "hello").unwrap();
    }
    // Another zip beside a name with a wildcard: unzip would have unpacked it.
    let t = task(&json!({"command": "unpack", "source": "*.zip", "destination": "out0"}));
    let err = registry().instantiate(&t).unwrap_err().to_string();
    assert!(
        err.contains("source:") && err.contains("which unzip would expand"),
        "{err}"
    );
}

/// curl expanded `{a,b}` and `[1-2]` in a URL into several requests.
#[tokio::test]
async fn http_check_requests_a_url_with_braces_and_brackets_as_written() {
    let fx = Fixtures::start().await;
    let url = fx.http.url("/{a,b}[1-2]");
    let t = json!({"command": "http_check", "url": url});
    let tmp = tempfile::tempdir().unwrap();
    let task = task(&t);
    let cmd = registry_for(tmp.path()).instantiate(&task).unwrap();
    let ctx = ExecContext::new(Arc::new(LocalHost::new()), task, Arc::new(|_, _| {}));
    cmd.execute(&ctx).await.unwrap();
    let requests = fx.http.requests();
    assert_eq!(requests.len(), 1, "{requests:?}");
    assert!(
        requests[0].starts_with("GET /{a,b}[1-2] HTTP/1.1\r\n"),
        "{requests:?}"
    );
}

/// `systemctl stop 'web*'` stops every loaded unit the pattern matches.
#[test]
fn service_names_with_patterns_are_refused() {
    for service in ["*", "web*", "w?b", "[w]eb"] {
        let t = task(&json!({"command": "stop_service", "service": service, "manager": "systemd"}));
        let err = registry().instantiate(&t).unwrap_err();
        assert!(err.iter().all(|e| e.path == "service"), "{service}: {err}");
        assert!(
            err.to_string().contains("make a pattern"),
            "{service}: {err}"
        );
    }
}

/// Placeholders were filled one after another, so a value holding `{lb_hostname}` got the host
/// put into it; a service starting with `-` became an option of the backend's program. (A host
/// name holding a placeholder is not a host name at all: refused.)
#[tokio::test]
async fn load_balancer_values_stay_literal_in_a_backends_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let t = json!({"command": "disable_loadbalancer", "lb_hostname": "lb1",
                   "lb_service": "{lb_hostname}", "lb_username": "{action}"});
    let first = task(&t);
    let cmd = registry_for(tmp.path()).instantiate(&first).unwrap();
    let ctx = ExecContext::new(Arc::new(LocalHost::new()), first, Arc::new(|_, _| {}));
    cmd.execute(&ctx).await.unwrap();
    expect_file(
        &tmp.path().join("lb.args"),
        "disable\nlb1\n{lb_hostname}\n{action}\n",
    )
    .unwrap();
    let t = task(
        &json!({"command": "disable_loadbalancer", "lb_hostname": "{lb_service}",
                         "lb_service": "web1"}),
    );
    let err = registry_for(tmp.path()).instantiate(&t).unwrap_err();
    assert!(err.iter().all(|e| e.path == "lb_hostname"), "{err}");
    let t = task(
        &json!({"command": "disable_loadbalancer", "lb_hostname": "lb1",
                         "lb_service": "--force-all"}),
    );
    let err = registry_for(tmp.path()).instantiate(&t).unwrap_err();
    assert!(err.iter().all(|e| e.path == "lb_service"), "{err}");
}

/// The upload script over SSH took a relative destination starting with `-` for options of
/// `rm`, `mv` and `chmod`, and failed; it lands in the login user's home like any relative path.
#[tokio::test]
async fn upload_over_ssh_to_a_relative_path_starting_with_a_dash() {
    let sshd = TestSshd::start().expect("start the test sshd");
    let host: Arc<dyn RemoteHost> = Arc::new(sshd.host());
    let out = host.execute("pwd", &ExecOptions::new()).await.unwrap();
    let home = PathBuf::from(out.stdout_str().trim());
    let local = tempfile::tempdir().unwrap();
    write(&local.path().join("payload.txt"), "payload");
    let name = format!("-rf-deployer-injection-{}", std::process::id());
    let t = json!({"command": "upload", "source": s(&local.path().join("payload.txt")),
                   "destination": name, "mode": "0644"});
    let task = task(&t);
    let cmd = registry().instantiate(&task).unwrap();
    let ctx = ExecContext::new(host, task, Arc::new(|_, _| {}));
    let ran = cmd.execute(&ctx).await;
    let landed = home.join(&name);
    let found = std::fs::read_to_string(&landed);
    let _ = std::fs::remove_file(&landed);
    ran.unwrap();
    assert_eq!(found.unwrap(), "payload");
}
