//! Tasklist loading, saving and validation: the JSON format of the original deployer, byte-stable
//! round trips, and every problem reported at once with its path.

use std::time::Duration;

use deployer_core::*;
use serde::Deserialize;

/// The task list the seed's `TestGenerator` returns.
const SEED_EXAMPLE: &str = r#"{
  "name": "Test Generator",
  "stages": [
    {
      "name": "Test stage",
      "concurrency": 1,
      "tasks": [
        {
          "command": "test_command",
          "message": "Hello World"
        }
      ]
    }
  ]
}
"#;

/// A task list as the original Python deployer's generators wrote them: per-host limits,
/// `remote_user`, arbitrary command arguments, a `lb_hostname` task, chains, a null
/// `concurrency_per_host`.
const ORIGINAL_FORMAT: &str = r#"{"name": "Deploy aurora-198604260123", "stages": [
  {"name": "Upload", "concurrency": 10, "concurrency_per_host": 5, "tasks": [
    {"command": "upload", "remote_host": "fe001", "remote_user": "deploy", "source": "/opt/tarballs/aurora-198604260123/web1_1.2.tar.gz", "destination": "/opt/deploy/tarballs/", "tag": "web1"},
    {"command": "upload", "remote_host": "fe002", "remote_user": "deploy", "source": "/opt/tarballs/aurora-198604260123/web1_1.2.tar.gz", "destination": "/opt/deploy/tarballs/", "tag": "web1"}
  ]},
  {"name": "Unpack", "concurrency": 10, "concurrency_per_host": 3, "tasks": [
    {"command": "unpack", "remote_host": "fe001", "remote_user": "deploy", "source": "/opt/deploy/tarballs/web1_1.2.tar.gz", "destination": "/opt/web1/releases", "rename_from": "web1_1.2", "rename_to": "web1_1.2"}
  ]},
  {"name": "Deploy and restart", "concurrency": 2, "concurrency_per_host": null, "tasks": [
    [
      {"command": "disable_loadbalancer", "lb_hostname": "lb001", "lb_service": "web1_fe001", "lb_username": "admin", "lb_password": "hunter2", "tag": "web1"},
      {"command": "control_service", "remote_host": "fe001", "service": "web1", "action": "stop", "timeout": 60},
      {"command": "symlink", "remote_host": "fe001", "source": "/opt/web1/releases/web1_1.2", "destination": "/opt/web1/current"},
      {"command": "control_service", "remote_host": "fe001", "service": "web1", "action": "start", "retries": 2, "timeout": 12.5},
      {"command": "enable_loadbalancer", "lb_hostname": "lb001", "lb_service": "web1_fe001", "lb_username": "admin", "lb_password": "hunter2", "tag": "web1"}
    ]
  ]},
  {"name": "Cleanup", "concurrency": 10, "tasks": [
    {"command": "cleanup", "remote_host": "fe001", "path": "/opt/web1/releases", "filespec": "web1_*", "keepversions": 5}
  ]}
]}"#;

fn assert_byte_stable(text: &str) -> Tasklist {
    let loaded = Tasklist::from_json_str(text).expect("loads");
    let saved = loaded.to_json_string();
    let reloaded = Tasklist::from_json_str(&saved).expect("saved tasklist loads");
    assert_eq!(reloaded, loaded, "loads back equal");
    assert_eq!(reloaded.to_json_string(), saved, "re-saves byte-identical");
    loaded
}

#[test]
fn seed_example_round_trips_byte_identical() {
    let t = assert_byte_stable(SEED_EXAMPLE);
    assert_eq!(t.name, "Test Generator");
    let task = &t.stages[0].tasks[0].tasks()[0];
    assert_eq!(task.command, "test_command");
    assert_eq!(task.args["message"], "Hello World");
    assert_eq!(task.host_key(), "local");
    // The seed's text is already in canonical form: saving reproduces it exactly.
    assert_eq!(t.to_json_string(), SEED_EXAMPLE);
}

#[test]
fn original_deployer_format_loads_unchanged_and_round_trips() {
    let t = assert_byte_stable(ORIGINAL_FORMAT);
    assert_eq!(t.stages.len(), 4);
    assert_eq!(t.task_count(), 9);
    assert_eq!(t.stages[0].concurrency_per_host, Some(5));
    assert_eq!(t.stages[2].concurrency_per_host, None);
    assert_eq!(t.stages[3].concurrency_per_host, None);

    let upload = &t.stages[0].tasks[0].tasks()[0];
    assert_eq!(upload.remote_host.as_deref(), Some("fe001"));
    assert_eq!(upload.remote_user.as_deref(), Some("deploy"));
    assert_eq!(upload.tag.as_deref(), Some("web1"));
    let keys: Vec<&str> = upload.args.keys().map(String::as_str).collect();
    assert_eq!(keys, ["source", "destination"], "argument order is kept");

    let TaskEntry::Chain(chain) = &t.stages[2].tasks[0] else {
        panic!("expected a chain")
    };
    assert_eq!(chain.len(), 5);
    // The load-balancer task has no remote_host: its host key is lb_hostname.
    assert_eq!(chain[0].host_key(), "lb001");
    assert_eq!(t.stages[2].tasks[0].host_key(), "lb001");
    assert_eq!(chain[1].timeout, Some(Duration::from_secs(60)));
    assert_eq!(chain[3].timeout, Some(Duration::from_secs_f64(12.5)));
    assert_eq!(chain[3].retries, Some(2));
    assert_eq!(t.hosts(), ["fe001", "fe002", "lb001"]);

    // Whole-second timeouts stay integers in the saved file.
    let saved = t.to_json_string();
    assert!(saved.contains("\"timeout\": 60,"), "{saved}");
    assert!(saved.contains("\"timeout\": 12.5"), "{saved}");
}

#[test]
fn save_and_load_through_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tasklist.json");
    let t = Tasklist::from_json_str(ORIGINAL_FORMAT).unwrap();
    t.save(&path).unwrap();
    let first = std::fs::read(&path).unwrap();
    let loaded = Tasklist::load(&path).unwrap();
    assert_eq!(loaded, t);
    loaded.save(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), first);
}

#[test]
fn tasklist_deserializes_through_serde() {
    #[derive(Deserialize)]
    struct Record {
        tasklist: Tasklist,
    }
    let r: Record = serde_json::from_str(&format!("{{\"tasklist\": {SEED_EXAMPLE}}}")).unwrap();
    assert_eq!(r.tasklist.stages[0].name, "Test stage");
    let err = serde_json::from_str::<Record>(r#"{"tasklist": {"stages": [{"name": "x"}]}}"#)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("stages[0].concurrency: missing"),
        "{err}"
    );
}

fn problems(text: &str) -> Vec<String> {
    match Tasklist::from_json_str(text) {
        Err(TasklistError::Invalid(errors)) => errors.iter().map(|e| e.to_string()).collect(),
        other => panic!("expected validation errors, got {other:?}"),
    }
}

#[test]
fn syntax_errors_name_line_and_column() {
    let err = Tasklist::from_json_str("{\n  \"name\": \"x\",\n  \"stages\": [\n}").unwrap_err();
    let TasklistError::Syntax { line, column, .. } = &err else {
        panic!("{err:?}")
    };
    assert_eq!((*line, *column), (4, 1));
    assert!(
        err.to_string().starts_with("<tasklist>:4:1: invalid JSON"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.json");
    std::fs::write(&path, "{\"stages\": [").unwrap();
    let err = Tasklist::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:1:", path.display())), "{err}");

    let err = Tasklist::load(dir.path().join("missing.json")).unwrap_err();
    assert!(err.to_string().contains("missing.json"), "{err}");
}

#[test]
fn every_structural_problem_is_reported_at_once_with_its_path() {
    let text = r#"{"name": "bad", "stages": [
      {"name": "zero", "concurrency": 0, "tasks": []},
      {"name": "", "concurrency": 1, "tasks": []},
      {"name": "typo", "concurrancy": 2, "tasks": []},
      {"name": "types", "concurrency": "10", "concurrency_per_host": -1, "tasks": [
        {"remote_host": "fe001", "source": "x"},
        {"command": 5},
        {"command": "upload", "remote_host": 7, "timeout": -3, "retries": "twice", "tag": ["a"]},
        [{"command": "a"}, [{"command": "nested"}]],
        [],
        "upload"
      ]},
      {"name": "huge", "concurrency": 1e30, "tasks": {}},
      "not a stage"
    ], "extra": true}"#;
    let got = problems(text);
    let expected = [
        "extra: unknown tasklist key \"extra\" (expected one of name, max_failures, max_fail_percentage, stages)",
        "stages[0].concurrency: must be at least 1 (expected an integer ≥ 1)",
        "stages[1].name: stage name is empty (expected a non-empty string)",
        "stages[2].concurrancy: unknown stage key \"concurrancy\" (expected one of name, concurrency, concurrency_per_host, max_failures, max_fail_percentage, min_hosts_up, finally, tasks); did you mean \"concurrency\"?",
        "stages[2].concurrency: missing (expected an integer ≥ 1)",
        "stages[3].concurrency: found a string (expected an integer from 1 to 4294967295)",
        "stages[3].concurrency_per_host: found -1 (expected an integer from 1 to 4294967295)",
        "stages[3].tasks[0].command: missing (expected a registered command name)",
        "stages[3].tasks[1].command: found an integer (expected a string naming a registered command)",
        "stages[3].tasks[2].remote_host: found an integer (expected a string)",
        "stages[3].tasks[2].tag: found a list (expected a string)",
        "stages[3].tasks[2].timeout: found -3 (expected a number of seconds from 0.001 (1 ms) to 31536000 (365 days))",
        "stages[3].tasks[2].retries: found \"twice\" (expected an integer from 0 to 1000)",
        "stages[3].tasks[3][1]: a chain cannot contain a list (expected a task object)",
        "stages[3].tasks[4]: empty chain (expected a list of at least one task object)",
        "stages[3].tasks[5]: found a string (expected a task object with \"command\", or a list of task objects)",
        "stages[4].concurrency: found 1e+30 (expected an integer from 1 to 4294967295)",
        "stages[4].tasks: found an object (expected a list of tasks)",
        "stages[5]: found a string (expected a stage object with name, concurrency and tasks)",
    ];
    assert_eq!(got, expected);
}

#[test]
fn the_top_level_must_be_a_tasklist_object() {
    assert_eq!(
        problems("[1, 2]"),
        ["the tasklist is a list (expected an object with \"name\" and \"stages\")"]
    );
    assert_eq!(
        problems("{\"name\": \"x\"}"),
        ["stages: missing (expected a list of stages)"]
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let err = Tasklist::from_json_str(&deep).unwrap_err();
    assert!(err.to_string().contains("recursion limit"), "{err}");
}

// ---- command-level validation through Plan::build ----

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct UploadArgs {
    source: String,
    destination: String,
    #[serde(default)]
    mode: Option<u32>,
}

#[derive(Debug)]
struct Upload(#[allow(dead_code)] UploadArgs);

#[async_trait]
impl Command for Upload {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: UploadArgs = args.parse()?;
        if a.source.is_empty() {
            return Err(ValidationError::new("source", "is empty")
                .expected("a local path")
                .into());
        }
        Ok(Upload(a))
    }
    async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> {
        Ok(Outcome::done())
    }
}

#[derive(Debug)]
struct Restart;

#[async_trait]
impl Command for Restart {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        Ok(Restart)
    }
    async fn execute(&self, _: &ExecContext) -> Result<Outcome, CommandError> {
        Ok(Outcome::done())
    }
}

fn registry() -> CommandRegistry {
    let mut r = CommandRegistry::new();
    r.register::<Upload>("upload");
    r.register::<Restart>("restart_service");
    r
}

#[test]
fn plan_reports_every_command_problem_with_path_and_hint() {
    let text = r#"{"name": "t", "stages": [
      {"name": "ok", "concurrency": 1, "tasks": [
        {"command": "upload", "source": "a", "destination": "/b"}
      ]},
      {"name": "bad", "concurrency": 4, "tasks": [
        {"command": "uplaod", "source": "a", "destination": "/b"},
        {"command": "upload", "destination": "/b"},
        {"command": "upload", "source": "", "destination": "/b"},
        [{"command": "upload", "source": 5, "destination": "/b"}, {"command": "restart_service"}],
        {"command": "upload", "source": "a", "destination": "/b", "destinaton": "/c"},
        {"command": "upload", "source": "a", "destination": "/b", "mode": "rwx"},
        {"command": "frobnicate"}
      ]}
    ]}"#;
    let tasklist = Tasklist::from_json_str(text).unwrap();
    let errors = Plan::build(&tasklist, &registry()).unwrap_err();
    let got: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        got,
        [
            "stages[1].tasks[0].command: unknown command \"uplaod\" (expected a registered command); did you mean \"upload\"?",
            "stages[1].tasks[1].source: missing required argument",
            "stages[1].tasks[2].source: is empty (expected a local path)",
            "stages[1].tasks[3][0].source: invalid type: integer `5`, expected a string",
            "stages[1].tasks[4].destinaton: unknown argument \"destinaton\" (expected one of source, destination, mode); did you mean \"destination\"?",
            "stages[1].tasks[5].mode: invalid type: string \"rwx\", expected u32",
            "stages[1].tasks[6].command: unknown command \"frobnicate\" (expected a registered command)",
        ]
    );
    assert!(
        errors
            .to_string()
            .starts_with("7 problems found\n  stages[1].tasks[0]")
    );
}

#[test]
fn plan_rejects_zero_limits_built_in_code() {
    let t = Tasklist::new("t").stage(
        Stage::new("", 0)
            .per_host(0)
            .task(Task::new("restart_service")),
    );
    let errors = Plan::build(&t, &registry()).unwrap_err();
    let got: Vec<String> = errors.iter().map(|e| e.path.clone()).collect();
    assert_eq!(
        got,
        [
            "stages[0].name",
            "stages[0].concurrency",
            "stages[0].concurrency_per_host"
        ]
    );
}

#[test]
fn a_valid_plan_counts_tasks_and_knows_idempotency() {
    let t = Tasklist::from_json_str(ORIGINAL_FORMAT).unwrap();
    let mut r = CommandRegistry::new();
    for name in [
        "upload",
        "unpack",
        "disable_loadbalancer",
        "control_service",
        "symlink",
        "enable_loadbalancer",
        "cleanup",
    ] {
        r.register::<Restart>(name);
    }
    let plan = Plan::build(&t, &r).unwrap();
    assert_eq!(plan.task_count(), 9);
    assert_eq!(plan.tasks().count(), 9);
    assert_eq!(
        plan.is_idempotent(TaskId {
            stage: 0,
            entry: 0,
            step: None
        }),
        Some(false)
    );
    assert_eq!(
        plan.is_idempotent(TaskId {
            stage: 9,
            entry: 0,
            step: None
        }),
        None
    );
}
