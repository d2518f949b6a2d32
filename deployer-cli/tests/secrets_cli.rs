//! Secrets through the `deploy` program, run as a user runs it: a tasklist with an inline
//! secret (`{"secret": …}`) and one from the environment (`{"secret_env": …}`), run with JSON
//! output and with debug log lines, dumped, dry-run, shown from the run store and resumed.
//! Every byte the program prints — stdout and stderr of every invocation — and the SQLite
//! files of its run store are searched for the secrets: absent, with `***` where they were;
//! the commands still receive them intact.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::json;

const INLINE: &str = "cli-Inline-Secr3t-Vb7qM-2208";
const FROM_ENV: &str = "cli-Env-Secr3t-Tn3sD-6145";
const VAR: &str = "DEPLOYER_SECRETS_CLI_TOKEN";

fn deploy(store: &Path, env: bool, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_deploy"));
    cmd.arg("--store").arg(store).args(args).env_remove(VAR);
    if env {
        cmd.env(VAR, FROM_ENV);
    }
    cmd.output().expect("the binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// stdout and stderr of `out` hold neither secret.
fn assert_clean(what: &str, out: &Output) {
    for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        let t = text(bytes);
        for s in [INLINE, FROM_ENV] {
            assert!(!t.contains(s), "{what}: {stream} shows {s}:\n{t}");
        }
    }
}

fn run_id(stderr: &str) -> String {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .unwrap_or_else(|| panic!("no run id in\n{stderr}"))
        .trim()
        .to_string()
}

fn sqlite_bytes(store: &Path) -> String {
    let mut all = Vec::new();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        if let Ok(b) = std::fs::read(format!("{}{suffix}", store.display())) {
            all.extend(b);
        }
    }
    String::from_utf8_lossy(&all).into_owned()
}

/// Stage 1 hands both secrets to a command through `env` (it writes them to files and echoes
/// them); stage 2 fails, echoing the inline secret to stderr, until `gate` exists.
fn write_tasklist(dir: &Path) -> std::path::PathBuf {
    let p = |name: &str| dir.join(name).display().to_string();
    let tasklist = json!({"name": "secrets", "stages": [
        {"name": "deploy", "concurrency": 1, "tasks": [
            {"command": "execute_command", "tag": "db",
             "command_line": format!(
                 "printf '%s' \"$DB_PASSWORD\" > '{}' && printf '%s' \"$API_TOKEN\" > '{}' && \
                  echo \"using $DB_PASSWORD and $API_TOKEN\"",
                 p("db_pw"), p("token")),
             "env": {"DB_PASSWORD": {"secret": INLINE}, "API_TOKEN": {"secret_env": VAR}}}
        ]},
        {"name": "migrate", "concurrency": 1, "tasks": [
            {"command": "execute_command", "tag": "db",
             "command_line": format!(
                 "if test -e '{}'; then printf '%s' \"$DB_PASSWORD\" > '{}'; \
                  else echo \"access denied for $DB_PASSWORD\" >&2; exit 3; fi",
                 p("gate"), p("resumed")),
             "env": {"DB_PASSWORD": {"secret": INLINE}}}
        ]},
    ]});
    let path = dir.join("secrets.json");
    std::fs::write(&path, serde_json::to_string_pretty(&tasklist).unwrap()).unwrap();
    path
}

#[test]
fn deploy_never_prints_or_stores_a_secret_and_resumes_with_the_tasklist() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("runs.db");
    let tasklist = write_tasklist(dir.path());
    let tl = tasklist.to_str().unwrap();

    // A dry run reads secret_env too: without the variable it names the place.
    let dry = deploy(&store, false, &["--tasklist", tl, "--dry-run"]);
    assert_eq!(dry.status.code(), Some(2), "{}", text(&dry.stderr));
    assert!(
        text(&dry.stderr).contains(&format!(
            "stages[0].tasks[0].env.API_TOKEN: the secret's environment variable {VAR} is not set"
        )),
        "{}",
        text(&dry.stderr)
    );
    assert_clean("dry run", &dry);

    // --dump: the plan as saved JSON, inline secret redacted, the reference kept.
    let dump = deploy(&store, true, &["--tasklist", tl, "--dump"]);
    assert!(dump.status.success(), "{}", text(&dump.stderr));
    assert_clean("--dump", &dump);
    let dumped = text(&dump.stdout);
    assert!(dumped.contains("\"secret\": \"***\""), "{dumped}");
    assert!(
        dumped.contains(&format!("\"secret_env\": \"{VAR}\"")),
        "{dumped}"
    );

    // --output json: every event as a JSON line (output lines coalesced).
    let json_run = deploy(&store, true, &["--tasklist", tl, "--output", "json"]);
    assert_eq!(
        json_run.status.code(),
        Some(1),
        "{}",
        text(&json_run.stderr)
    );
    assert_clean("--output json", &json_run);
    let lines = text(&json_run.stdout);
    assert!(
        lines.contains("\"lines\":[\"using *** and ***\"]"),
        "{lines}"
    );
    assert!(
        lines.contains("\"stderr_tail\":\"access denied for ***\""),
        "{lines}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("db_pw")).unwrap(),
        INLINE,
        "the command got the inline secret"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("token")).unwrap(),
        FROM_ENV,
        "the command got the secret from the environment"
    );

    // Text output with every debug log line, then the summary with the failure.
    let text_run = deploy(&store, true, &["--tasklist", tl, "-d"]);
    assert_eq!(
        text_run.status.code(),
        Some(1),
        "{}",
        text(&text_run.stderr)
    );
    assert_clean("-d", &text_run);
    let err = text(&text_run.stderr);
    assert!(err.contains("out: using *** and ***"), "{err}");
    assert!(err.contains("failures:"), "{err}");
    assert!(err.contains("stderr: access denied for ***"), "{err}");
    let id = run_id(&err);

    // What the run store shows, and what it holds on disk.
    let show = deploy(&store, false, &["runs", "show", &id]);
    assert!(show.status.success(), "{}", text(&show.stderr));
    assert_clean("runs show", &show);
    assert!(
        text(&show.stdout).contains("FAILED"),
        "{}",
        text(&show.stdout)
    );
    let list = deploy(&store, false, &["runs", "list"]);
    assert_clean("runs list", &list);
    let bytes = sqlite_bytes(&store);
    for s in [INLINE, FROM_ENV] {
        assert!(!bytes.contains(s), "the run store holds {s}");
    }
    assert!(bytes.contains("\"secret\": \"***\""));
    assert!(
        bytes.contains("access denied for ***"),
        "the stored stderr tail"
    );
    assert!(bytes.contains(&format!("\"secret_env\": \"{VAR}\"")));

    // Resuming needs the inline secret again: refused with what to do, then done with
    // --tasklist; the resumed task gets the secret intact.
    std::fs::write(dir.path().join("gate"), "").unwrap();
    let refused = deploy(&store, true, &["runs", "resume", &id]);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused.stderr));
    assert_clean("runs resume", &refused);
    let msg = text(&refused.stderr);
    assert!(
        msg.contains("needs its secrets again")
            && msg.contains("stages[1].tasks[0].env.DB_PASSWORD")
            && msg.contains(&format!("deploy runs resume {id} --tasklist FILE")),
        "{msg}"
    );
    assert!(!dir.path().join("resumed").exists());
    let resumed = deploy(&store, true, &["runs", "resume", &id, "--tasklist", tl]);
    assert!(resumed.status.success(), "{}", text(&resumed.stderr));
    assert_clean("runs resume --tasklist", &resumed);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("resumed")).unwrap(),
        INLINE
    );
    let bytes = sqlite_bytes(&store);
    assert!(!bytes.contains(INLINE) && !bytes.contains(FROM_ENV));
}
