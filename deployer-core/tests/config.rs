//! Config loading, command-line overrides and generators.

mod common;

use std::io::Write;
use std::sync::Arc;

use deployer_core::fixture::FakeConnector;
use deployer_core::*;

const SEED_CONFIG: &str = "platform: test

hostgroup:

    frontend:
    - fe001
    - fe002
    backend:
    - be001
    - be002

service:

    web1-frontend:
        hosts: [frontend]
        port: 8080

    worker1-backend:
        hosts: [backend, be003]
        port: 8000
        install_location: /opt/worker1
";

#[test]
fn seed_config_loads_typed() {
    let c = Config::from_yaml_str(SEED_CONFIG, "test.conf").unwrap();
    assert_eq!(c.platform(), "test");
    assert_eq!(c.hostgroup("frontend").unwrap(), ["fe001", "fe002"]);
    assert_eq!(
        c.service_hosts("web1-frontend").unwrap(),
        ["fe001", "fe002"]
    );
    // Entries that are not hostgroups are host names.
    assert_eq!(
        c.service_hosts("worker1-backend").unwrap(),
        ["be001", "be002", "be003"]
    );
    let worker = c.service("worker1-backend").unwrap();
    assert_eq!(worker.port, Some(8000));
    assert_eq!(worker.settings["install_location"], "/opt/worker1");
    assert_eq!(c.get("service.worker1-backend.port"), Some(&8000.into()));
    assert_eq!(
        c.get_as::<u16>("service.web1-frontend.port").unwrap(),
        Some(8080)
    );
    assert_eq!(c.get_as::<u16>("nothing.here").unwrap(), None);
    let err = c.get_as::<u16>("platform").unwrap_err().to_string();
    assert!(
        err.starts_with("config key \"platform\": invalid type"),
        "{err}"
    );
}

#[test]
fn unknown_names_get_a_suggestion() {
    let c = Config::from_yaml_str(SEED_CONFIG, "test.conf").unwrap();
    assert_eq!(
        c.hostgroup("fronted").unwrap_err().to_string(),
        "unknown hostgroup \"fronted\"; did you mean \"frontend\"?"
    );
    assert_eq!(
        c.service_hosts("web1-frontent").unwrap_err().to_string(),
        "unknown service \"web1-frontent\"; did you mean \"web1-frontend\"?"
    );
    assert_eq!(
        c.service("zzz").unwrap_err().to_string(),
        "unknown service \"zzz\""
    );
}

#[test]
fn platform_is_the_only_required_key() {
    let c = Config::from_yaml_str("platform: minimal\n", "min.yaml").unwrap();
    assert!(c.hostgroups().is_empty() && c.services().is_empty());
    let err = Config::from_yaml_str("hostgroup: {a: [b]}\n", "cfg.yaml").unwrap_err();
    assert_eq!(
        err.to_string(),
        "cfg.yaml: missing required key \"platform\" (it picks the generator)"
    );
    let err = Config::from_yaml_str("", "empty.yaml").unwrap_err();
    assert!(matches!(err, ConfigError::MissingPlatform { .. }));
    // The command line may supply it.
    let c =
        Config::from_yaml_str_with("", "empty.yaml", [("platform".into(), "cli".into())]).unwrap();
    assert_eq!(c.platform(), "cli");
}

#[test]
fn command_line_values_override_file_values() {
    let overrides = vec![
        ("platform".to_string(), serde_json::json!("release")),
        (
            "service.web1-frontend.port".to_string(),
            serde_json::json!(9090),
        ),
        ("redeploy".to_string(), serde_json::json!(true)),
    ];
    let c = Config::from_yaml_str_with(SEED_CONFIG, "test.conf", overrides).unwrap();
    assert_eq!(c.platform(), "release");
    assert_eq!(c.service("web1-frontend").unwrap().port, Some(9090));
    assert_eq!(c.service("web1-frontend").unwrap().hosts, ["frontend"]);
    assert_eq!(c.get("redeploy"), Some(&true.into()));
    // An override cannot descend into a scalar.
    let err = c.with_override("platform.name", "x".into()).unwrap_err();
    assert!(
        err.to_string().contains("holds \"release\", not a mapping"),
        "{err}"
    );
}

fn yaml_error(text: &str) -> (u64, u64, String) {
    match Config::from_yaml_str(text, "deploy.yaml") {
        Err(ConfigError::Yaml {
            line,
            column,
            message,
            origin,
        }) => {
            assert_eq!(origin, "deploy.yaml");
            (line, column, message)
        }
        other => panic!("expected a YAML error, got {other:?}"),
    }
}

#[test]
fn malformed_yaml_names_line_and_column() {
    let (line, column, _) = yaml_error("platform: test\nhostgroup:\n  frontend: [fe001, fe002\n");
    assert_eq!(line, 3, "the unterminated flow sequence");
    assert!(column >= 1);
    let (line, _, _) = yaml_error("platform: test\n  bad: indentation\n");
    assert_eq!(line, 2);
}

#[test]
fn type_mismatches_name_line_and_column() {
    let (line, column, message) =
        yaml_error("platform: test\nservice:\n  web:\n    hosts: [fe]\n    port: http\n");
    assert_eq!((line, column), (5, 11));
    assert!(message.contains("http"), "{message}");

    let (line, _, _) = yaml_error("platform: test\nhostgroup:\n  frontend: fe001\n");
    assert_eq!(line, 3);

    let (line, _, _) = yaml_error("platform: [a, b]\n");
    assert_eq!(line, 1);

    let err = Config::from_yaml_str("- a\n- b\n", "list.yaml")
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("list.yaml:1:1:") && err.contains("mapping"),
        "{err}"
    );
}

#[test]
fn yaml_bombs_are_refused() {
    let bomb = "platform: x\n\
a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n\
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n\
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n\
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
    let err = Config::from_yaml_str(bomb, "bomb.yaml").unwrap_err();
    assert!(matches!(err, ConfigError::Yaml { .. }), "{err}");
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy.yaml");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(b"platform: test\nservice:\n  web:\n    port: [1]\n")
        .unwrap();
    let err = Config::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:4:", path.display())), "{err}");
    let err = Config::load(dir.path().join("nope.yaml"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.yaml"), "{err}");
}

// ---- generators ----

struct PerService;

#[async_trait]
impl Generator for PerService {
    async fn generate(&self, ctx: &GeneratorContext) -> Result<Tasklist, GeneratorError> {
        let mut tasklist = Tasklist::new("per service");
        for name in ctx.config().services().keys() {
            let hosts = ctx.service_hosts(name)?;
            tasklist = tasklist.stage(
                Stage::new(format!("Deploy {name}"), 10).per_host(1).tasks(
                    hosts
                        .iter()
                        .map(|h| common::work(h, &format!("{name}@{h}")).tag(name)),
                ),
            );
        }
        Ok(tasklist)
    }
}

#[tokio::test]
async fn generators_are_picked_by_platform_and_their_plans_run() {
    let mut generators = GeneratorRegistry::new();
    generators.register("test", PerService);
    let config = Config::from_yaml_str(SEED_CONFIG, "test.conf").unwrap();
    let tasklist = generators
        .generate(GeneratorContext::new(config))
        .await
        .unwrap();
    assert_eq!(tasklist.stages.len(), 2);
    assert_eq!(
        tasklist.hosts(),
        ["fe001", "fe002", "be001", "be002", "be003"]
    );

    let (registry, tracker) = common::registry();
    let plan = Plan::build(&tasklist, &registry).unwrap();
    let report = Executor::new(Arc::new(FakeConnector::new()))
        .run(&plan)
        .await;
    assert!(report.succeeded());
    assert_eq!(tracker.completed("worker1-backend@be003"), 1);
}

#[tokio::test]
async fn unknown_platform_lists_the_known_ones() {
    let mut generators = GeneratorRegistry::new();
    generators.register("release", PerService);
    generators.register("test", PerService);
    let config = Config::from_yaml_str("platform: relase\n", "c.yaml").unwrap();
    let err = generators
        .generate(GeneratorContext::new(config))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unknown platform \"relase\" (known: release, test); did you mean \"release\"?"
    );
}

#[tokio::test]
async fn generators_reach_hosts_only_through_a_connector() {
    let config = Config::from_yaml_str("platform: x\n", "c.yaml").unwrap();
    let err = GeneratorContext::new(config.clone())
        .host("fe001", None)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("needs host access"), "{err}");
    let ctx = GeneratorContext::new(config).with_connector(Arc::new(FakeConnector::new()));
    let host = ctx.host("fe001", Some("deploy")).await.unwrap();
    assert_eq!(host.name(), "fe001");
}
