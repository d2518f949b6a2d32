//! Books: versioning, composition, cycles, expressions, jobs, lifecycle slots and book files.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use deployer_books::*;
use deployer_catalog::{Catalog, CatalogData, DeploymentRef, LifecycleAction, Scope};
use deployer_core::fixture::FakeConnector;
use deployer_core::*;
use serde_json::{Value, json};

fn v(s: &str) -> semver::Version {
    s.parse().unwrap()
}

fn req(s: &str) -> semver::VersionReq {
    s.parse().unwrap()
}

/// What the test command saw: (step tag, host, args).
type Seen = Arc<Mutex<Vec<(String, String, serde_json::Map<String, Value>)>>>;

/// A command that records its task and fails while `attempt <= fail_attempts`.
#[derive(Debug)]
struct Work {
    seen: Seen,
    fail_attempts: u32,
}

#[async_trait]
impl Command for Work {
    fn initialize(_: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        unreachable!()
    }
    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let task = ctx.task();
        self.seen.lock().unwrap().push((
            task.tag.clone().unwrap_or_default(),
            task.host_key().to_string(),
            task.args.clone(),
        ));
        if ctx.attempt() <= self.fail_attempts {
            return Err(CommandError::failed(format!(
                "attempt {} failed",
                ctx.attempt()
            )));
        }
        Ok(Outcome::done())
    }
}

fn registry() -> (CommandRegistry, Seen) {
    let seen: Seen = Arc::default();
    let mut r = CommandRegistry::new();
    for name in ["work", "dump_db", "stop_service", "start_service"] {
        let s = seen.clone();
        r.register_fn(name, move |args: &TaskArgs<'_>| {
            let fail_attempts = args
                .raw()
                .get("fail_attempts")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32;
            Ok(Box::new(Work {
                seen: s.clone(),
                fail_attempts,
            }) as Box<dyn Command>)
        });
    }
    (r, seen)
}

fn scope() -> Value {
    json!({
        "project": {"slug": "shop"},
        "deployment_group": {"slug": "web", "group_type": "odoo"},
        "deployment": {
            "slug": "prod", "deployment_type": "odoo", "scope": "production",
            "subdomain": "shop", "values": {"workers": 4},
            "books": {"general": "", "deploy": "deploy", "pause": "pause", "backup": "backup",
                      "restore": "", "sync_ingress": "", "upgrade": "", "drop": "",
                      "config_scope": ""}
        },
        "cluster": {"slug": "eu-1", "hosts": ["fe001", "fe002"]},
        "backup_datasource": {"bucket": "shop-backups"}
    })
}

/// pause (1 step), backup (calls snapshot), snapshot (2 steps), deploy (calls both).
fn library() -> BookLibrary {
    let (commands, _) = registry();
    let mut lib = BookLibrary::with_commands(&commands);
    lib.register_all([
        Book::new("pause", v("1.0.0")).step(
            Step::command("stop", "stop_service")
                .hosts("cluster.hosts")
                .arg("service", "web")
                .concurrency(2),
        ),
        Book::new("snapshot", v("1.0.0"))
            .step(Step::command("freeze", "work"))
            .step(Step::command("dump", "dump_db").data("bucket", "backup_datasource.bucket")),
        Book::new("backup", v("1.0.0"))
            .step(Step::book("snapshot", "snapshot", req("^1")))
            .step(Step::manual("verify").description("check the dump")),
        Book::new("deploy", v("1.0.0"))
            .should_notify(true)
            .step(Step::book("pause", "pause", req("^1")).sequence(1))
            .step(Step::book("backup", "backup", req("^1")).sequence(2))
            .step(
                Step::command("start", "start_service")
                    .sequence(3)
                    .hosts("cluster.hosts")
                    .arg("service", "web"),
            ),
    ])
    .unwrap();
    lib
}

async fn build(lib: &BookLibrary, book: &str) -> Job {
    JobBuilder::new(lib, book)
        .scope(&scope())
        .unwrap()
        .build()
        .await
        .unwrap()
}

fn paths(job: &Job) -> Vec<&str> {
    job.steps.iter().map(|s| s.path.as_str()).collect()
}

#[tokio::test]
async fn versions_are_kept_as_history_and_jobs_snapshot_theirs() {
    let mut lib = BookLibrary::new();
    let one = Book::new("pause", v("1.0.0")).step(Step::command("stop", "work"));
    lib.register(one.clone()).unwrap();
    // The same book again is a no-op.
    lib.register(one.clone()).unwrap();
    // A changed book under the same version is refused.
    let changed = one.clone().step(Step::manual("confirm"));
    let err = lib.register(changed.clone()).unwrap_err();
    assert!(
        matches!(&err, BookError::VersionConflict { name, version } if name == "pause" && version == &v("1.0.0")),
        "{err}"
    );
    // Under a new version it is kept next to the old one.
    let mut changed = changed;
    changed.version = v("1.1.0");
    lib.register(changed).unwrap();
    lib.register(Book::new("pause", v("2.0.0")).step(Step::manual("ask")))
        .unwrap();

    let history: Vec<String> = lib
        .history("pause")
        .iter()
        .map(|b| b.version.to_string())
        .collect();
    assert_eq!(history, ["1.0.0", "1.1.0", "2.0.0"]);
    assert_eq!(lib.get("pause", &req("^1")).unwrap().version, v("1.1.0"));
    assert_eq!(lib.get("pause", &req("~1.0")).unwrap().version, v("1.0.0"));
    assert_eq!(lib.get_exact("pause", &v("1.0.0")).unwrap().steps.len(), 1);
    assert_eq!(lib.latest("pause").unwrap().version, v("2.0.0"));
    assert!(lib.get("pause", &req("^3")).is_none());

    let job = JobBuilder::new(&lib, "pause")
        .version(req("^1"))
        .build()
        .await
        .unwrap();
    assert_eq!(job.version, v("1.1.0"));
    assert_eq!(paths(&job), ["pause/stop", "pause/confirm"]);
    // A later version does not change a job already built.
    lib.register(Book::new("pause", v("1.2.0"))).unwrap();
    assert_eq!(job.version, v("1.1.0"));
    assert_eq!(job.steps.len(), 2);

    let err = JobBuilder::new(&lib, "pause")
        .version(req("^3"))
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no book \"pause\" matching version \"^3\" (registered: 1.0.0, 1.1.0, 1.2.0, 2.0.0)"
    );
}

#[tokio::test]
async fn three_levels_of_books_are_inlined_in_order() {
    let lib = library();
    let job = build(&lib, "deploy").await;
    assert_eq!(
        paths(&job),
        [
            "deploy/pause/stop",
            "deploy/backup/snapshot/freeze",
            "deploy/backup/snapshot/dump",
            "deploy/backup/verify",
            "deploy/start"
        ]
    );
    assert!(job.should_notify);
    assert_eq!(job.books.len(), 4);
    assert_eq!(job.books["snapshot"], v("1.0.0"));
    let dump = job.step("deploy/backup/snapshot/dump").unwrap();
    assert_eq!(
        (dump.book.as_str(), dump.name.as_str()),
        ("snapshot", "dump")
    );
    assert_eq!(dump.history_key(), "snapshot/dump");

    // A child step may call a single step of a book.
    let mut lib = lib;
    lib.register(
        Book::new("quick", v("1.0.0"))
            .step(Step::book("dump", "snapshot", req("*")).only_step("dump")),
    )
    .unwrap();
    let job = build(&lib, "quick").await;
    assert_eq!(paths(&job), ["quick/dump/dump"]);
    // A new version of a child that lacks a step a parent calls is refused, naming the parent.
    let err = lib
        .register(Book::new("snapshot", v("1.1.0")).step(Step::command("freeze", "work")))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "quick@1.0.0: steps[0].step: book snapshot@1.1.0 has no step \"dump\""
    );
    assert!(lib.get_exact("snapshot", &v("1.1.0")).is_none());
    let err = lib
        .register(
            Book::new("bad", v("1.0.0"))
                .step(Step::book("x", "snapshot", req("*")).only_step("nope")),
        )
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("book snapshot@1.0.0 has no step \"nope\""),
        "{err}"
    );
}

#[test]
fn cycles_are_refused_and_named() {
    // Direct.
    let mut lib = BookLibrary::new();
    let err = lib
        .register(Book::new("a", v("1.0.0")).step(Step::book("again", "a", req("*"))))
        .unwrap_err();
    assert_eq!(err.to_string(), "books call each other in a cycle: a -> a");

    // Through several books, at different versions.
    let mut lib = BookLibrary::new();
    lib.register(Book::new("a", v("1.0.0")).step(Step::manual("m")))
        .unwrap();
    lib.register(Book::new("b", v("1.0.0")).step(Step::book("c", "c", req("*"))))
        .unwrap_err(); // c does not exist yet
    lib.register_all([
        Book::new("c", v("1.0.0")).step(Step::book("a", "a", req("^1"))),
        Book::new("b", v("1.0.0")).step(Step::book("c", "c", req("^1"))),
    ])
    .unwrap();
    let err = lib
        .register(Book::new("a", v("2.0.0")).step(Step::book("b", "b", req("^1"))))
        .unwrap_err();
    match &err {
        BookError::Cycle { cycle } => assert_eq!(cycle, &["a", "b", "c", "a"]),
        other => panic!("{other}"),
    }
    assert_eq!(
        err.to_string(),
        "books call each other in a cycle: a -> b -> c -> a"
    );
    // Nothing was registered.
    assert!(lib.get_exact("a", &v("2.0.0")).is_none());

    // In one batch.
    let mut lib = BookLibrary::new();
    let err = lib
        .register_all([
            Book::new("x", v("1.0.0")).step(Step::book("y", "y", req("*"))),
            Book::new("y", v("1.0.0")).step(Step::book("x", "x", req("*"))),
        ])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "books call each other in a cycle: x -> y -> x"
    );
    assert_eq!(lib.names().count(), 0);
}

#[tokio::test]
async fn applicability_true_false_and_error() {
    let mut lib = BookLibrary::new();
    // The child book must be registered first, or together.
    lib.register(
        Book::new("dns", v("1.0.0"))
            .step(Step::command("prod only", "work").applies("deployment.scope == 'production'"))
            .step(Step::command("staging only", "work").applies("deployment.scope == 'staging'"))
            .step(
                Step::book("pause", "dns-pause", req("*"))
                    .applies("deployment.values.workers > 10"),
            ),
    )
    .unwrap_err();
    lib.register_all([
        Book::new("dns-pause", v("1.0.0")).step(Step::manual("m")),
        Book::new("dns", v("1.0.0"))
            .step(Step::command("prod only", "work").applies("deployment.scope == 'production'"))
            .step(Step::command("staging only", "work").applies("deployment.scope == 'staging'"))
            .step(
                Step::book("pause", "dns-pause", req("*"))
                    .applies("deployment.values.workers > 10"),
            ),
        Book::new("typo", v("1.0.0"))
            .step(Step::command("s", "work").applies("deployment.subdomian != ''")),
        Book::new("not-bool", v("1.0.0"))
            .step(Step::command("s", "work").applies("deployment.subdomain")),
    ])
    .unwrap();

    let job = build(&lib, "dns").await;
    assert_eq!(
        paths(&job),
        ["dns/prod only", "dns/staging only", "dns/pause"]
    );
    assert_eq!(job.steps[0].skipped, None);
    assert_eq!(
        job.steps[1].skipped.as_deref(),
        Some("its condition is false: deployment.scope == 'staging'")
    );
    // A skipped child book is not inlined, and says so.
    assert!(job.steps[2].skipped.is_some());
    assert!(matches!(job.steps[2].kind, JobStepKind::Book { .. }));
    assert_eq!(job.tasklist().stages.len(), 1);

    // A typo is an error, not a silent false.
    let err = JobBuilder::new(&lib, "typo")
        .scope(&scope())
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "typo/s (typo@1.0.0): applies \"deployment.subdomian != ''\": no such key: subdomian"
    );
    let err = JobBuilder::new(&lib, "not-bool")
        .scope(&scope())
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("gave a string, expected true or false"),
        "{err}"
    );
}

#[tokio::test]
async fn data_and_hosts_come_from_the_scope_and_reach_the_command() {
    let (commands, seen) = registry();
    let lib = library();
    let mut job = build(&lib, "backup").await;
    let dump = job.step("backup/snapshot/dump").unwrap();
    assert_eq!(dump.data["bucket"], "shop-backups");

    let mut lib2 = BookLibrary::new();
    lib2.register(
        Book::new("hosts", v("1.0.0")).step(
            Step::command("restart", "work")
                .hosts("cluster.hosts")
                .concurrency(2)
                .per_host(1)
                .arg("service", "web")
                .data("workers", "deployment.values.workers * 2")
                .data("url", "'https://' + deployment.subdomain + '.example.com'"),
        ),
    )
    .unwrap();
    let hosts_job = JobBuilder::new(&lib2, "hosts")
        .scope(&scope())
        .unwrap()
        .build()
        .await
        .unwrap();
    let tasklist = hosts_job.tasklist();
    assert_eq!(tasklist.stages.len(), 1);
    let stage = &tasklist.stages[0];
    assert_eq!(
        (
            stage.name.as_str(),
            stage.concurrency,
            stage.concurrency_per_host
        ),
        ("hosts/restart", 2, Some(1))
    );
    assert_eq!(tasklist.hosts(), ["fe001", "fe002"]);
    let task = &stage.tasks[0].tasks()[0];
    assert_eq!(
        Value::Object(task.args.clone()),
        json!({"service": "web", "workers": 8, "url": "https://shop.example.com"})
    );

    // Run the backup (its manual step pre-acknowledged): the command gets its data.
    let runner = JobRunner::new(
        Executor::new(Arc::new(FakeConnector::new())).retry_delay(Duration::ZERO),
        &commands,
    );
    let report = runner
        .run(&mut job, &Acknowledgements::all(), RunOptions::default())
        .await
        .unwrap();
    assert!(report.succeeded());
    assert_eq!(job.state, JobState::Done);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].0, "backup/snapshot/dump");
    assert_eq!(seen[1].2["bucket"], "shop-backups");
    assert!(
        job.steps
            .iter()
            .all(|s| s.outcome == Some(RunOutcome::Succeeded))
    );
}

#[tokio::test]
async fn the_scope_type_of_the_catalog_works_as_is() {
    let data = CatalogData::from_yaml_str(
        r#"
clusters:
- uid: 0190f3a2-0000-7000-8000-000000000001
  name: EU 1
  hosts: [fe001]
  state: active
projects:
- slug: shop
  owner: alice
  users: [{user: alice, role: developer}]
  namespace: {uid: 0190f3a2-7c1e-7d4b-9a2f-3b5c6d7e8f90}
  groups:
  - slug: web
    group_type: odoo
    clusters: [eu-1]
    defaults: {subdomain: shop, books: {deploy: deploy, pause: pause, backup: backup}}
    deployments:
    - slug: prod
"#,
        "catalog.yaml",
    );
    let data = data.unwrap();
    let scope = Scope::build(&data, &"shop/prod".parse().unwrap()).unwrap();
    let lib = library();
    let job = JobBuilder::for_action(&lib, "pause", &scope)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(job.book, "pause");
    assert_eq!(job.action.as_deref(), Some("pause"));
    match &job.steps[0].kind {
        JobStepKind::Command { hosts, .. } => assert_eq!(hosts, &["fe001"]),
        other => panic!("{other:?}"),
    }

    // What the catalog hands over when a user triggers an action.
    let catalog = Catalog::in_memory(data);
    let prod: DeploymentRef = "shop/prod".parse().unwrap();
    let request = catalog
        .trigger("alice", &prod, LifecycleAction::Pause)
        .await
        .unwrap();
    let job = JobBuilder::for_request(&lib, &request)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(
        (job.book.as_str(), job.action.as_deref()),
        ("pause", Some("pause"))
    );
    assert_eq!(job.scope["deployment"]["ref"], "shop/prod");
    // This deployment has no backup datasource: the backup's data cannot be computed.
    let request = catalog
        .trigger("alice", &prod, LifecycleAction::Deploy)
        .await
        .unwrap();
    let err = JobBuilder::for_request(&lib, &request)
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "deploy/backup/snapshot/dump (snapshot@1.0.0): data.bucket \"backup_datasource.bucket\": "
        ),
        "{err}"
    );
    assert!(err.to_string().contains("is null"), "{err}");
}

#[tokio::test]
async fn every_lifecycle_slot_builds_its_book() {
    let mut lib = BookLibrary::new();
    let mut scope = scope();
    for action in LifecycleAction::ALL {
        let name = format!("{action}-book");
        lib.register(Book::new(name.clone(), v("1.0.0")).step(Step::manual("go")))
            .unwrap();
        scope["deployment"]["books"][action.as_str()] = json!(name);
    }
    for action in LifecycleAction::ALL {
        let job = JobBuilder::for_action(&lib, action.as_str(), &scope)
            .unwrap()
            .build()
            .await
            .unwrap();
        assert_eq!(job.book, format!("{action}-book"));
        assert_eq!(job.action.as_deref(), Some(action.as_str()));
        assert_eq!(job.steps[0].path, format!("{action}-book/go"));
    }
    // A slot may pin versions.
    lib.register(Book::new("deploy-book", v("2.0.0"))).unwrap();
    scope["deployment"]["books"]["deploy"] = json!("deploy-book@^1");
    let job = JobBuilder::for_action(&lib, "deploy", &scope)
        .unwrap()
        .build()
        .await
        .unwrap();
    assert_eq!(job.version, v("1.0.0"));
    // An empty slot is an error naming the action.
    scope["deployment"]["books"]["drop"] = json!("");
    let err = JobBuilder::for_action(&lib, "drop", &scope).unwrap_err();
    assert_eq!(
        err.to_string(),
        "the deployment has no book for action \"drop\" (deployment.books.drop is empty)"
    );
}

#[tokio::test]
async fn book_filters_must_match_the_scope() {
    let mut lib = BookLibrary::new();
    lib.register(
        Book::new("k8s", v("1.0.0"))
            .deployment_type("kubernetes")
            .step(Step::manual("m")),
    )
    .unwrap();
    lib.register(
        Book::new("odoo", v("1.0.0"))
            .deployment_group_type("odoo")
            .step(Step::manual("m")),
    )
    .unwrap();
    let err = JobBuilder::new(&lib, "k8s")
        .scope(&scope())
        .unwrap()
        .build()
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "book k8s@1.0.0 is for deployment.deployment_type \"kubernetes\", the scope's is \"odoo\""
    );
    let names: Vec<&str> = lib
        .available_for("odoo", "odoo")
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(names, ["odoo"]);
}

async fn record(store: &MemoryStore, key: &str, durations: &[u64]) {
    let plan_tasks: Vec<TaskInfo> = durations
        .iter()
        .enumerate()
        .map(|(i, _)| TaskInfo {
            id: TaskId {
                stage: 0,
                entry: i,
                step: None,
            },
            host: format!("h{i}"),
            tag: None,
            command: "work".into(),
        })
        .collect();
    let run = store
        .create_run(NewRun {
            id: RunId::new(),
            name: "old".into(),
            source: "test".into(),
            started_by: "test".into(),
            tasklist: Tasklist::new("old"),
            tasks: plan_tasks,
            history_keys: Default::default(),
        })
        .await
        .unwrap();
    for (mut t, secs) in store
        .tasks(&run.id)
        .await
        .unwrap()
        .into_iter()
        .zip(durations)
    {
        t.history_key = key.into();
        t.state = TaskState::Succeeded;
        t.duration = Some(Duration::from_secs(*secs));
        t.finished_ts = Some(SystemTime::now());
        store.update_task(&run.id, &t).await.unwrap();
    }
}

#[tokio::test]
async fn timeouts_come_from_history_else_the_estimate() {
    let mut lib = BookLibrary::new();
    lib.register(
        Book::new("b", v("1.0.0"))
            .step(Step::command("known", "work").estimated_duration(Duration::from_secs(100)))
            .step(
                Step::command("estimated", "work")
                    .estimated_duration(Duration::from_secs(30))
                    .over_stop(3),
            )
            .step(Step::command("unknown", "work"))
            .step(Step::manual("ask").estimated_duration(Duration::from_secs(60))),
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    record(&store, "b/known", &[10, 20]).await;
    record(&store, "b/ask", &[1]).await;
    record(&store, "other/known", &[1000]).await;
    let job = JobBuilder::new(&lib, "b")
        .history(store.clone())
        .build()
        .await
        .unwrap();
    let s = |p: &str| job.step(p).unwrap();
    assert_eq!(s("b/known").estimate, Some(Duration::from_secs(15)));
    assert_eq!(s("b/known").estimate_source, EstimateSource::History);
    assert_eq!(s("b/known").timeout, Some(Duration::from_secs(150)));
    assert_eq!(s("b/estimated").estimate_source, EstimateSource::Step);
    assert_eq!(s("b/estimated").timeout, Some(Duration::from_secs(90)));
    assert_eq!(s("b/unknown").estimate_source, EstimateSource::Unknown);
    assert_eq!(s("b/unknown").timeout, None);
    // A person's reaction time is no estimate of a manual step: its own estimate is used.
    assert_eq!(s("b/ask").estimate_source, EstimateSource::Step);
    assert_eq!(s("b/ask").timeout, Some(Duration::from_secs(600)));
    let tasks = job.tasklist();
    assert_eq!(
        tasks.stages[0].tasks[0].tasks()[0].timeout,
        Some(Duration::from_secs(150))
    );
}

#[tokio::test]
async fn a_recorded_job_keeps_durations_per_book_step() {
    let (commands, _) = registry();
    let lib = library();
    let store = Arc::new(MemoryStore::new());
    let runner = JobRunner::new(
        Executor::new(Arc::new(FakeConnector::new())).retry_delay(Duration::ZERO),
        &commands,
    )
    .runs(Runs::new(store.clone()))
    .started_by("alice");
    let mut job = build(&lib, "deploy").await;
    runner
        .run(&mut job, &Acknowledgements::all(), RunOptions::default())
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Done);
    let id: RunId = job.run_id.clone().unwrap().parse().unwrap();
    let record = store.run(&id).await.unwrap();
    assert_eq!(record.source, "book:deploy@1.0.0");
    assert_eq!(record.state, RunState::Succeeded);
    let keys: Vec<String> = store
        .tasks(&id)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.history_key)
        .collect();
    assert_eq!(
        keys,
        [
            "pause/stop",
            "pause/stop",
            "snapshot/freeze",
            "snapshot/dump",
            "backup/verify",
            "deploy/start",
            "deploy/start"
        ]
    );
    assert!(
        store
            .average_duration("snapshot/dump")
            .await
            .unwrap()
            .is_some()
    );
    // The next job reads them.
    let next = JobBuilder::new(&lib, "deploy")
        .scope(&scope())
        .unwrap()
        .history(store.clone())
        .build()
        .await
        .unwrap();
    assert_eq!(
        next.step("deploy/backup/snapshot/dump")
            .unwrap()
            .estimate_source,
        EstimateSource::History
    );
}

/// The `backup` job started in the background with `options`, returned once its manual step
/// (`backup/verify`) waits; what ran so far is in `seen`.
async fn backup_job_at_its_manual_step(
    acks: &Acknowledgements,
    options: RunOptions,
) -> (
    tokio::task::JoinHandle<(Job, Result<RunReport, BookError>)>,
    Seen,
) {
    let (commands, seen) = registry();
    let lib = library();
    let mut job = build(&lib, "backup").await;
    let (sink, mut events) = ChannelSink::new();
    let runner = JobRunner::new(
        Executor::new(Arc::new(FakeConnector::new())).sink(sink),
        &commands,
    );
    let waiting = {
        let acks = acks.clone();
        tokio::spawn(async move {
            let report = runner.run(&mut job, &acks, options).await;
            (job, report)
        })
    };
    loop {
        let e = events.recv().await.unwrap();
        if let EventKind::TaskStarted { task, .. } = &e.kind
            && task.command == MANUAL_COMMAND
        {
            assert_eq!(task.tag.as_deref(), Some("backup/verify"));
            break;
        }
    }
    (waiting, seen)
}

#[tokio::test]
async fn a_manual_step_waits_for_its_acknowledgement() {
    let acks = Acknowledgements::new();
    let (waiting, seen) = backup_job_at_its_manual_step(&acks, RunOptions::default()).await;
    assert_eq!(seen.lock().unwrap().len(), 2);
    assert!(!acks.is_acknowledged("backup/verify"));
    acks.acknowledge("backup/verify");
    let (job, report) = waiting.await.unwrap();
    assert!(report.unwrap().succeeded());
    assert_eq!(job.state, JobState::Done);
}

#[tokio::test]
async fn retryable_and_final_step_errors() {
    let (commands, seen) = registry();
    let mut lib = BookLibrary::new();
    lib.register_all([
        Book::new("retry", v("1.0.0")).step(
            Step::command("flaky", "work")
                .arg("fail_attempts", 2)
                .retries(2),
        ),
        Book::new("final", v("1.0.0"))
            .step(Step::command("flaky", "work").arg("fail_attempts", 1))
            .step(Step::command("after", "work")),
    ])
    .unwrap();
    let runner = JobRunner::new(
        Executor::new(Arc::new(FakeConnector::new())).retry_delay(Duration::ZERO),
        &commands,
    );
    let mut job = build(&lib, "retry").await;
    let report = runner
        .run(&mut job, &Acknowledgements::new(), RunOptions::default())
        .await
        .unwrap();
    assert!(report.succeeded());
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(job.state, JobState::Done);

    let mut job = build(&lib, "final").await;
    let report = runner
        .run(&mut job, &Acknowledgements::new(), RunOptions::default())
        .await
        .unwrap();
    assert!(!report.succeeded());
    assert_eq!(job.state, JobState::Error);
    assert_eq!(job.steps[0].outcome, Some(RunOutcome::Failed));
    assert_eq!(job.steps[1].outcome, None);
    assert_eq!(seen.lock().unwrap().len(), 4);
}

#[tokio::test]
async fn job_states_follow_their_lifecycle() {
    let (commands, _) = registry();
    let lib = library();
    let mut job = build(&lib, "pause").await;
    assert_eq!(job.state, JobState::Draft);
    job.schedule().unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    let err = job.schedule().unwrap_err();
    assert_eq!(
        err.to_string(),
        "a job cannot go from scheduled to scheduled"
    );
    job.cancel().unwrap();
    assert_eq!(job.state, JobState::Cancel);
    let runner = JobRunner::new(Executor::new(Arc::new(FakeConnector::new())), &commands);
    let err = runner
        .run(&mut job, &Acknowledgements::new(), RunOptions::default())
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "a job cannot go from cancel to running");

    // A run cancelled before it starts ends in `cancel`.
    let mut job = build(&lib, "pause").await;
    let options = RunOptions::default();
    options.cancel.cancel();
    runner
        .run(&mut job, &Acknowledgements::new(), options)
        .await
        .unwrap();
    assert_eq!(job.state, JobState::Cancel);

    // A job whose tasklist does not validate does not start.
    let empty = JobRunner::new(
        Executor::new(Arc::new(FakeConnector::new())),
        &CommandRegistry::new(),
    );
    let mut job = build(&lib, "pause").await;
    let err = empty
        .run(&mut job, &Acknowledgements::new(), RunOptions::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("unknown command \"stop_service\""),
        "{err}"
    );
    assert_eq!(job.state, JobState::Scheduled);

    // Jobs serialize (a snapshot a host application can store).
    let text = serde_json::to_string(&job).unwrap();
    let back: Job = serde_json::from_str(&text).unwrap();
    assert_eq!(back, job);
}

fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn book_files_load_from_yaml_and_json() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "pause.yaml",
        "name: pause\nversion: 1.0.0\nsteps:\n- name: stop\n  command: stop_service\n  hosts: cluster.hosts\n  args: {service: web}\n  concurrency: 2\n  estimated_duration: 5\n  retries: 1\n",
    );
    write(
        dir.path(),
        "deploy.json",
        r#"{"name": "deploy", "version": "1.0.0", "should_notify": true, "steps": [
            {"name": "pause", "book": "pause", "version": "^1"},
            {"name": "ok", "manual": true, "description": "looks good?"}
        ]}"#,
    );
    let (commands, _) = registry();
    let mut lib = BookLibrary::with_commands(&commands);
    lib.load_dir(dir.path()).unwrap();
    let pause = lib.latest("pause").unwrap();
    assert_eq!(
        pause.steps[0],
        Step::command("stop", "stop_service")
            .hosts("cluster.hosts")
            .arg("service", "web")
            .concurrency(2)
            .estimated_duration(Duration::from_secs(5))
            .retries(1)
    );
    let deploy = lib.latest("deploy").unwrap();
    assert!(deploy.should_notify);
    assert_eq!(deploy.steps[1].kind, StepKind::Manual);
}

#[test]
fn mistakes_in_book_files_say_where() {
    let (commands, _) = registry();
    let dir = tempfile::tempdir().unwrap();
    let check = |name: &str, text: &str, expected: &str| {
        let path = write(dir.path(), name, text);
        let mut lib = BookLibrary::with_commands(&commands);
        let err = lib.load_file(&path).unwrap_err().to_string();
        let expected = format!("{}:{expected}", path.display());
        assert!(err.starts_with(&expected), "{err}\nexpected: {expected}");
        err
    };
    let err = check(
        "cmd.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  command: stop_servise\n",
        "5:12: steps[0].command: unknown command \"stop_servise\"",
    );
    assert!(err.contains("did you mean \"stop_service\"?"), "{err}");
    check(
        "version.yaml",
        "name: b\nversion: '1.0'\nsteps: []\n",
        "2:10: version: \"1.0\" is not a semantic version",
    );
    check(
        "req.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  book: x\n  version: '>>1'\n",
        "6:12: steps[0].version: \">>1\" is not a version requirement",
    );
    let err = check(
        "expr.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  manual: true\n  applies: deployment.subdomain !=\n",
        "6:12: steps[0].applies: invalid expression \"deployment.subdomain !=\": line 1, column",
    );
    assert!(err.contains("of the expression"), "{err}");
    check(
        "child.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: first\n  manual: true\n- name: s\n  book: pasue\n  version: ^1\n",
        "7:9: steps[1].book: step \"s\" calls book \"pasue\" ^1, which is not registered",
    );
    check(
        "kind.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  command: work\n  manual: true\n",
        "4:3: steps[0]: step \"s\" must have exactly one of `command`, `book` or `manual: true`",
    );
    check(
        "manual.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  command: manual\n",
        "5:12: steps[0].command: \"manual\" is the built-in command of manual steps",
    );
    check(
        "unknown-key.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  manual: true\n  aplies: x\n",
        "6:",
    );
    check(
        "dup.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  manual: true\n- name: s\n  manual: true\n",
        "6:9: steps[1].name: step name \"s\" is already used by steps[0]",
    );

    // Every problem of a batch is reported, and nothing is registered.
    let a = write(
        dir.path(),
        "a.yaml",
        "name: a\nversion: 1.0.0\nsteps:\n- name: s\n  command: nope\n",
    );
    let b = write(
        dir.path(),
        "b.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  book: missing\n",
    );
    let mut lib = BookLibrary::with_commands(&commands);
    let err = lib.load_files([&a, &b]).unwrap_err();
    match &err {
        BookError::Invalid { problems } => assert_eq!(problems.len(), 2, "{err}"),
        other => panic!("{other}"),
    }
    assert_eq!(lib.names().count(), 0);
}

/// Reported: a step's `estimated_duration` of `1e-300` silently became 0 ("unknown"). An
/// estimate is 0 (unknown) or within a task timeout's range; retries at most 1000; the path
/// and what was expected are named, in the file and for a book built in code.
#[test]
fn estimates_and_retries_outside_their_limits_are_refused() {
    let (commands, _) = registry();
    let expected =
        "(expected 0 for unknown, or a number of seconds from 0.001 (1 ms) to 31536000 (365 days))";
    let load = |extra: &str| {
        let text = format!("name: b\nversion: 1.0.0\nsteps:\n- name: s\n  command: work\n{extra}");
        let mut lib = BookLibrary::with_commands(&commands);
        lib.add_str(&text, "b.yaml").map(|()| lib)
    };
    for (value, found) in [
        ("1e-300", "1e-300"),
        ("5e-324", "5e-324"),
        ("0.0005", "0.0005"),
        ("-1", "-1.0"),
        ("31536000.5", "31536000.5"),
        (".inf", "inf"),
    ] {
        let err = load(&format!("  estimated_duration: {value}\n"))
            .err()
            .unwrap_or_else(|| panic!("{value} was accepted"))
            .to_string();
        assert!(
            err.contains(&format!(
                "b.yaml:4:3: steps[0].estimated_duration: found {found} {expected}"
            )),
            "{value}: {err}"
        );
    }
    for (value, estimate) in [
        ("0", Duration::ZERO),
        ("0.001", Duration::from_millis(1)),
        ("20", Duration::from_secs(20)),
        ("31536000", Task::TIMEOUT_MAX),
    ] {
        let lib = load(&format!("  estimated_duration: {value}\n")).unwrap();
        assert_eq!(
            lib.latest("b").unwrap().steps[0].estimated_duration,
            estimate
        );
    }
    let err = load("  retries: 1001\n").err().unwrap().to_string();
    assert!(
        err.contains("steps[0].retries: found 1001 (expected an integer from 0 to 1000)"),
        "{err}"
    );
    assert!(load("  retries: 1000\n").is_ok());

    // Built in code: checked when registered.
    let mut lib = BookLibrary::with_commands(&commands);
    let err = lib
        .register(
            Book::new("b", v("1.0.0")).step(
                Step::command("s", "work")
                    .estimated_duration(Duration::from_nanos(5))
                    .retries(5000),
            ),
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!(
            "steps[0].estimated_duration: found 5ns {expected}"
        )),
        "{err}"
    );
    assert!(err.contains("steps[0].retries: found 5000"), "{err}");
}

/// A step's timeout is estimate × over-stop kept within a task timeout's range: a history
/// average of 0 (a step that did nothing) does not become a timeout of 0, a long estimate ×
/// 10 does not pass 365 days, and the job's tasklist is within every limit.
#[tokio::test]
async fn step_timeouts_stay_within_a_task_timeouts_range() {
    let mut lib = BookLibrary::new();
    lib.register(
        Book::new("b", v("1.0.0"))
            .step(Step::command("instant", "work").estimated_duration(Duration::from_secs(5)))
            .step(Step::command("tiny", "work").estimated_duration(Duration::from_millis(1)))
            .step(Step::command("long", "work").estimated_duration(Task::TIMEOUT_MAX)),
    )
    .unwrap();
    let store = Arc::new(MemoryStore::new());
    record(&store, "b/instant", &[0, 0]).await;
    let job = JobBuilder::new(&lib, "b")
        .history(store.clone())
        .build()
        .await
        .unwrap();
    let s = |p: &str| job.step(p).unwrap();
    assert_eq!(s("b/instant").estimate, Some(Duration::ZERO));
    assert_eq!(s("b/instant").timeout, Some(Task::TIMEOUT_MIN));
    assert_eq!(s("b/tiny").timeout, Some(Duration::from_millis(10)));
    assert_eq!(s("b/long").timeout, Some(Task::TIMEOUT_MAX));
    let tasklist = job.tasklist();
    tasklist.check_limits().unwrap();
    // And it loads back from its JSON, limits included.
    assert_eq!(
        Tasklist::from_json_str(&tasklist.to_json_string()).unwrap(),
        tasklist
    );
}

/// Clean-up: pause has `on_failure` (start again) on the cluster's hosts; backup has an
/// `always` step on the controller and calls snapshot, whose clean-up is on the controller;
/// deploy has its own `on_failure` and `always`.
fn cleanup_library() -> BookLibrary {
    let (commands, _) = registry();
    let mut lib = BookLibrary::with_commands(&commands);
    lib.register_all([
        Book::new("pause", v("1.0.0"))
            .step(Step::manual("confirm"))
            .step(Step::command("stop", "stop_service").hosts("cluster.hosts"))
            .on_failure(Step::command("restart", "start_service").hosts("cluster.hosts")),
        Book::new("snapshot", v("1.0.0"))
            .step(Step::command("freeze", "work"))
            .always(Step::command("thaw", "work")),
        Book::new("backup", v("1.0.0"))
            .step(Step::book("snapshot", "snapshot", req("^1")))
            .always(Step::command("tidy", "work")),
        Book::new("notify", v("1.0.0"))
            .step(Step::command("send", "work"))
            .on_failure(Step::command("page", "work")),
        Book::new("deploy", v("1.0.0"))
            .step(Step::book("pause", "pause", req("^1")))
            .step(Step::book("backup", "backup", req("^1")))
            .step(Step::command("release", "work").hosts("cluster.hosts"))
            .on_failure(Step::command("tell", "work"))
            .always(Step::book("notify", "notify", req("^1"))),
    ])
    .unwrap();
    lib
}

#[tokio::test]
async fn clean_up_comes_last_the_book_started_last_first() {
    let lib = cleanup_library();
    let job = build(&lib, "deploy").await;
    assert_eq!(
        paths(&job),
        [
            "deploy/pause/confirm",
            "deploy/pause/stop",
            "deploy/backup/snapshot/freeze",
            "deploy/release",
            // snapshot started after backup, backup after pause, pause after deploy.
            "deploy/backup/snapshot/thaw",
            "deploy/backup/tidy",
            "deploy/pause/restart",
            "deploy/tell",
            // A book called in clean-up: its steps, then its own clean-up, all clean-up.
            "deploy/notify/send",
            "deploy/notify/page",
        ]
    );
    let when = |path: &str| {
        let c = job.step(path).unwrap().cleanup.clone();
        c.map(|c| (c.when, c.after))
    };
    assert_eq!(when("deploy/release"), None);
    assert_eq!(
        when("deploy/backup/snapshot/thaw"),
        Some((CleanupWhen::Always, Some("deploy/backup/snapshot".into())))
    );
    assert_eq!(
        when("deploy/pause/restart"),
        Some((CleanupWhen::OnFailure, Some("deploy/pause".into())))
    );
    assert_eq!(when("deploy/tell"), Some((CleanupWhen::OnFailure, None)));
    assert_eq!(
        when("deploy/notify/send"),
        Some((CleanupWhen::Always, None))
    );
    // An on_failure inside an always call runs only on failure.
    assert_eq!(
        when("deploy/notify/page"),
        Some((CleanupWhen::OnFailure, None))
    );

    // Compiled: a `started` stage before each called book with clean-up, on the hosts of
    // its clean-up; clean-up stages are finally stages for the hosts that reached it.
    let tasklist = job.tasklist();
    let stages: Vec<(&str, Option<&Finally>, Vec<&str>)> = tasklist
        .stages
        .iter()
        .map(|s| {
            let hosts = s.tasks.iter().map(|e| e.host_key()).collect();
            (s.name.as_str(), s.finally.as_ref(), hosts)
        })
        .collect();
    let pause = Finally::if_reached("started:deploy.pause.0");
    let snapshot = Finally::if_reached("started:deploy.backup.snapshot.2");
    assert_eq!(
        stages,
        [
            ("deploy/pause started", None, vec!["fe001", "fe002"]),
            ("deploy/pause/confirm", None, vec!["local"]),
            ("deploy/pause/stop", None, vec!["fe001", "fe002"]),
            (
                "deploy/backup, deploy/backup/snapshot started",
                None,
                vec!["local"]
            ),
            ("deploy/backup/snapshot/freeze", None, vec!["local"]),
            ("deploy/release", None, vec!["fe001", "fe002"]),
            (
                "deploy/backup/snapshot/thaw",
                Some(&snapshot),
                vec!["local"]
            ),
            ("deploy/backup/tidy", Some(&snapshot), vec!["local"]),
            (
                "deploy/pause/restart",
                Some(&pause.clone().only_on_failure()),
                vec!["fe001", "fe002"]
            ),
            ("deploy/tell", Some(&Finally::on_failure()), vec!["local"]),
            (
                "deploy/notify/send",
                Some(&Finally::always()),
                vec!["local"]
            ),
            (
                "deploy/notify/page",
                Some(&Finally::on_failure()),
                vec!["local"]
            ),
        ]
    );
    let started = &tasklist.stages[0].tasks[0].tasks()[0];
    assert_eq!(started.command, STARTED_COMMAND);
    assert_eq!(started.reaches.as_deref(), Some("started:deploy.pause.0"));
    // The whole plan validates (every point is reached by some task).
    let (commands, _) = registry();
    JobRunner::new(Executor::new(Arc::new(FakeConnector::new())), &commands)
        .plan(&job, &Acknowledgements::all())
        .unwrap();
}

async fn run_cleanup(
    lib: &BookLibrary,
    book: &str,
    scope: Value,
    acks: Acknowledgements,
    cancel: Option<&str>,
) -> (Job, Vec<String>) {
    let mut job = JobBuilder::new(lib, book)
        .scope(&scope)
        .unwrap()
        .build()
        .await
        .unwrap();
    let (commands, seen) = registry();
    let (sink, mut events) = ChannelSink::new();
    let runner = JobRunner::new(
        Executor::new(Arc::new(FakeConnector::new()))
            .sink(sink)
            .retry_delay(Duration::ZERO),
        &commands,
    );
    let options = RunOptions::default();
    if let Some(step) = cancel {
        let (cancel, step) = (options.cancel.clone(), step.to_string());
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                if let EventKind::TaskStarted { task, .. } = &e.kind
                    && task.tag.as_deref() == Some(step.as_str())
                {
                    cancel.cancel();
                }
            }
        });
    }
    runner.run(&mut job, &acks, options).await.unwrap();
    let ran = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(tag, host, _)| format!("{tag}@{host}"))
        .collect();
    (job, ran)
}

#[tokio::test]
async fn a_job_runs_its_clean_up_by_what_happened() {
    let lib = cleanup_library();
    // Success: always steps only.
    let (job, ran) = run_cleanup(&lib, "deploy", scope(), Acknowledgements::all(), None).await;
    assert_eq!(job.state, JobState::Done);
    assert_eq!(
        ran,
        [
            "deploy/pause/stop@fe001",
            "deploy/pause/stop@fe002",
            "deploy/backup/snapshot/freeze@local",
            "deploy/release@fe001",
            "deploy/release@fe002",
            "deploy/backup/snapshot/thaw@local",
            "deploy/backup/tidy@local",
            "deploy/notify/send@local",
        ]
    );
    let step = |path: &str| job.step(path).unwrap().outcome;
    assert_eq!(
        step("deploy/tell"),
        Some(RunOutcome::Succeeded),
        "nothing to do"
    );
    assert_eq!(step("deploy/backup/tidy"), Some(RunOutcome::Succeeded));

    // A failure in backup: pause and snapshot started, so their clean-up runs with the job's.
    let lib = {
        let (commands, _) = registry();
        let mut lib = BookLibrary::with_commands(&commands);
        let mut books: Vec<Book> = ["pause", "snapshot", "backup", "notify", "deploy"]
            .iter()
            .map(|n| cleanup_library().latest(n).unwrap().clone())
            .collect();
        // freeze fails.
        books[1].steps[0] = Step::command("freeze", "work").arg("fail_attempts", 1);
        lib.register_all(books).unwrap();
        lib
    };
    let (job, ran) = run_cleanup(&lib, "deploy", scope(), Acknowledgements::all(), None).await;
    assert_eq!(job.state, JobState::Error);
    assert_eq!(
        ran,
        [
            "deploy/pause/stop@fe001",
            "deploy/pause/stop@fe002",
            "deploy/backup/snapshot/freeze@local",
            "deploy/backup/snapshot/thaw@local",
            "deploy/backup/tidy@local",
            "deploy/pause/restart@fe001",
            "deploy/pause/restart@fe002",
            "deploy/tell@local",
            "deploy/notify/send@local",
            "deploy/notify/page@local",
        ]
    );

    // A first cancel while pause stops fe001 (a manual step would wait on after a first
    // cancel, so it is acknowledged in advance): pause started, its clean-up runs on both
    // hosts; backup never started, so snapshot's thaw and backup's tidy have nothing to do.
    let (job, ran) = run_cleanup(
        &cleanup_library(),
        "deploy",
        scope(),
        Acknowledgements::all(),
        Some("deploy/pause/stop"),
    )
    .await;
    assert_eq!(job.state, JobState::Cancel);
    assert_eq!(
        ran,
        [
            "deploy/pause/stop@fe001",
            "deploy/pause/restart@fe001",
            "deploy/pause/restart@fe002",
            "deploy/tell@local",
            "deploy/notify/send@local",
            "deploy/notify/page@local",
        ],
        "snapshot never started: no thaw, no tidy"
    );
    assert_eq!(
        job.step("deploy/backup/tidy").unwrap().outcome,
        Some(RunOutcome::Succeeded)
    );
}

#[tokio::test]
async fn a_called_book_without_a_step_that_runs_has_its_clean_up_skipped() {
    let (commands, _) = registry();
    let mut lib = BookLibrary::with_commands(&commands);
    lib.register_all([
        Book::new("pause", v("1.0.0"))
            .step(Step::command("stop", "work").applies("false"))
            .on_failure(Step::command("restart", "work")),
        Book::new("deploy", v("1.0.0")).step(Step::book("pause", "pause", req("^1"))),
    ])
    .unwrap();
    let job = build(&lib, "deploy").await;
    assert_eq!(
        job.step("deploy/pause/restart").unwrap().skipped.as_deref(),
        Some("book call deploy/pause has no step that runs")
    );
    assert!(job.tasklist().stages.is_empty());
}

#[test]
fn clean_up_mistakes_say_where() {
    let (commands, _) = registry();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "c.yaml",
        "name: b\nversion: 1.0.0\nsteps:\n- name: s\n  command: work\non_failure:\n- name: s\n  command: work\nalways:\n- name: ask\n  manual: true\n- name: t\n  command: wrok\n- name: u\n  command: book_started\n",
    );
    let mut lib = BookLibrary::with_commands(&commands);
    let err = lib.load_file(&path).unwrap_err().to_string();
    let at = |s: &str| format!("{}:{s}", path.display());
    for expected in [
        at("7:9: on_failure[0].name: step name \"s\" is already used by steps[0]"),
        at("10:3: always[0]: clean-up step \"ask\" cannot be manual"),
        at("13:12: always[1].command: unknown command \"wrok\""),
        at("15:12: always[2].command: \"book_started\" is the built-in command"),
    ] {
        assert!(err.contains(&expected), "{err}\nexpected: {expected}");
    }
}

/// An expression that fails when the job is built names the book file, and the line and
/// column of the expression in it, also when the book is a child of the one asked for.
#[tokio::test]
async fn a_failing_expression_names_its_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pause.yaml"),
        "name: pause\nversion: 1.0.0\nsteps:\n- name: flag\n  command: writefile\n  \
         args: {contents: x}\n  data:\n    destination: deployment.values.root + '/flag'\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("deploy.yaml"),
        "name: deploy\nversion: 1.0.0\nsteps:\n- {name: pause, book: pause}\n- name: go\n  \
         manual: true\n  applies: deployment.scope\n",
    )
    .unwrap();
    let mut commands = deployer_core::CommandRegistry::new();
    commands.register_fn("writefile", |_| Ok(Box::new(deployer_core::fixture::Noop)));
    let mut lib = BookLibrary::with_commands(&commands);
    lib.load_dir(dir.path()).unwrap();
    let scope = serde_json::json!({"deployment": {"values": {}, "scope": "production"}});
    let err = JobBuilder::new(&lib, "deploy")
        .scope(&scope)
        .unwrap()
        .build()
        .await
        .unwrap_err();
    let file = dir.path().join("pause.yaml");
    assert_eq!(
        err.to_string(),
        format!(
            "{}:8:18: deploy/pause/flag (pause@1.0.0): data.destination \"deployment.values.root + '/flag'\": no such key: root",
            file.display()
        )
    );
    let scope =
        serde_json::json!({"deployment": {"values": {"root": "/r"}, "scope": "production"}});
    let err = JobBuilder::new(&lib, "deploy")
        .scope(&scope)
        .unwrap()
        .build()
        .await
        .unwrap_err();
    let file = dir.path().join("deploy.yaml");
    assert!(
        err.to_string().starts_with(&format!(
            "{}:7:12: deploy/go (deploy@1.0.0): applies \"deployment.scope\": the condition gave a string",
            file.display()
        )),
        "{err}"
    );
}

/// A book of one manual step with `step`'s approval rule.
fn approval_book(step: Step) -> BookLibrary {
    let mut lib = BookLibrary::new();
    lib.register(Book::new("gate", v("1.0.0")).step(step))
        .unwrap();
    lib
}

async fn run_gate(
    lib: &BookLibrary,
    acks: &Acknowledgements,
    started_by: &str,
) -> (Job, RunReport, Vec<Event>, Arc<MemoryStore>) {
    let (commands, _) = registry();
    let mut job = build(lib, "gate").await;
    let (sink, mut rx) = ChannelSink::new();
    let store = Arc::new(MemoryStore::new());
    let runner = JobRunner::new(
        Executor::new(Arc::new(FakeConnector::new())).sink(sink),
        &commands,
    )
    .started_by(started_by)
    .runs(Runs::new(store.clone()));
    let report = tokio::time::timeout(
        Duration::from_secs(10),
        runner.run(&mut job, acks, RunOptions::default()),
    )
    .await
    .expect("the step ends")
    .unwrap();
    drop(runner);
    let mut events = Vec::new();
    while let Ok(e) = rx.try_recv() {
        events.push(e);
    }
    (job, report, events, store)
}

fn failure(report: &RunReport) -> String {
    report
        .failures
        .iter()
        .map(|f| f.outcome.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::test]
async fn a_rejection_fails_the_job_naming_who_and_why_and_is_recorded() {
    let lib = approval_book(Step::manual("approve"));
    let acks = Acknowledgements::new();
    acks.decide(
        "gate/approve",
        Approver::new("bob"),
        false,
        Some("not during the sale".into()),
    );
    let (job, report, events, store) = run_gate(&lib, &acks, "alice").await;
    assert_eq!(job.state, JobState::Error);
    let why = failure(&report);
    assert!(
        why.contains("step gate/approve rejected by bob at ")
            && why.ends_with(": \"not during the sale\""),
        "{why}"
    );
    let id: RunId = job.run_id.unwrap().parse().unwrap();
    let approvals = store.approvals(&id).await.unwrap();
    let d = approvals[0].decision.as_ref().expect("recorded");
    assert_eq!((d.by.as_str(), d.approved), ("bob", false));
    assert_eq!(approvals[0].request.started_by, "alice");
    let kinds: Vec<&EventKind> = events.iter().map(|e| &e.kind).collect();
    assert!(
        kinds.iter().any(
            |k| matches!(k, EventKind::ApprovalRequested { step, .. } if step == "gate/approve")
        ),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().any(|k| matches!(k, EventKind::ApprovalDecided { by, approved: false, comment: Some(c), .. } if by == "bob" && c == "not during the sale")),
        "{kinds:?}"
    );
}

#[tokio::test]
async fn four_eyes_refuses_the_starter_and_a_list_refuses_others() {
    // Approved in advance by the starter: refused, and the job fails saying why.
    let lib = approval_book(Step::manual("approve").four_eyes(true));
    let (job, report, _, _) = run_gate(&lib, &Acknowledgements::all(), "alice").await;
    assert_eq!(job.state, JobState::Error);
    let why = failure(&report);
    assert!(why.contains("alice started the run"), "{why}");
    assert!(why.contains("four-eyes"), "{why}");
    // Another person is fine.
    let acks = Acknowledgements::all_as(Approver::new("bob"), None);
    let (job, _, _, store) = run_gate(&lib, &acks, "alice").await;
    assert_eq!(job.state, JobState::Done);
    let id: RunId = job.run_id.unwrap().parse().unwrap();
    assert_eq!(
        store.approvals(&id).await.unwrap()[0]
            .decision
            .as_ref()
            .unwrap()
            .by,
        "bob"
    );

    // A step for named users refuses anybody else: the refusal is logged and the step waits
    // for a decision it accepts.
    let lib =
        approval_book(Step::manual("approve").approvers(Approvers::Users(vec!["carol".into()])));
    let acks = Acknowledgements::new();
    acks.decide("gate/approve", Approver::new("dave"), true, None);
    let later = acks.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        later.decide("gate/approve", Approver::new("carol"), true, None);
    });
    let (job, _, events, _) = run_gate(&lib, &acks, "alice").await;
    assert_eq!(job.state, JobState::Done);
    assert!(
        events.iter().any(|e| matches!(&e.kind, EventKind::TaskOutput { line, .. }
            if line.contains("refused: dave may not decide step gate/approve: only carol may decide it"))),
        "{events:?}"
    );
    // A role requirement cannot be checked without roles.
    let lib = approval_book(Step::manual("approve").approvers(Approvers::Role("admin".into())));
    let acks = Acknowledgements::all_as(Approver::new("bob"), None);
    let (job, report, _, _) = run_gate(&lib, &acks, "alice").await;
    assert_eq!(job.state, JobState::Error);
    assert!(
        failure(&report).contains("needs role admin"),
        "{}",
        failure(&report)
    );
    let acks = Acknowledgements::all_as(
        Approver::new("bob").with_roles(["user", "developer", "admin"]),
        None,
    );
    let (job, _, _, _) = run_gate(&lib, &acks, "alice").await;
    assert_eq!(job.state, JobState::Done);
}

#[tokio::test]
async fn an_approval_nobody_decides_expires_and_fails_the_job() {
    let lib = approval_book(Step::manual("approve").expires_after(Duration::from_millis(300)));
    let started = std::time::Instant::now();
    let (job, report, _, _) = run_gate(&lib, &Acknowledgements::new(), "alice").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(job.state, JobState::Error);
    let why = failure(&report);
    assert!(
        why.contains("step gate/approve expired at ") && why.contains("without a decision"),
        "{why}"
    );
}

#[test]
fn approval_keys_in_book_files_are_checked_with_where() {
    let dir = tempfile::tempdir().unwrap();
    let ok = write(
        dir.path(),
        "ok.yaml",
        "name: ok\nversion: 1.0.0\nsteps:\n- name: a\n  manual: true\n  approvers: [bob, carol]\n  four_eyes: true\n  expires_after: 3600\n- name: b\n  manual: true\n  approvers: admin\n",
    );
    let mut lib = BookLibrary::new();
    lib.load_file(&ok).unwrap();
    let book = lib.get("ok", &req("*")).unwrap();
    assert_eq!(
        book.steps[0].approval.approvers,
        Approvers::Users(vec!["bob".into(), "carol".into()])
    );
    assert!(book.steps[0].approval.four_eyes);
    assert_eq!(
        book.steps[0].approval.expires_after,
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        book.steps[1].approval.approvers,
        Approvers::Role("admin".into())
    );

    let bad = write(
        dir.path(),
        "bad.yaml",
        "name: bad\nversion: 1.0.0\nsteps:\n- name: a\n  manual: true\n  approvers: admn\n  expires_after: 0\n- name: b\n  command: work\n  four_eyes: true\n- name: c\n  manual: true\n  approvers: []\n",
    );
    let err = BookLibrary::new().load_file(&bad).unwrap_err().to_string();
    for expected in [
        "bad.yaml:6:14: steps[0].approvers: \"admn\" is not a role (expected user, developer, admin, or a list of user names such as [bob, carol])",
        "bad.yaml:7:18: steps[0].expires_after: found 0.0",
        "steps[1]: step \"b\" sets four_eyes which do not apply to its kind",
        "bad.yaml:13:14: steps[2].approvers: an empty list",
    ] {
        assert!(err.contains(expected), "{expected}\n{err}");
    }
}

/// A first cancel lets work on hosts finish, but a manual step that waits for a person gives
/// up at once: the job ends cancelled, the steps after it never run.
#[tokio::test]
async fn a_first_cancel_ends_a_manual_step_waiting_for_a_decision() {
    let acks = Acknowledgements::new();
    let cancel = CancelHandle::new();
    let options = RunOptions {
        cancel: cancel.clone(),
        ..RunOptions::default()
    };
    let (waiting, seen) = backup_job_at_its_manual_step(&acks, options).await;
    cancel.cancel();
    let (job, report) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting step gave up on the first cancel")
        .unwrap();
    let report = report.unwrap();
    assert_eq!(report.outcome, RunOutcome::Cancelled);
    assert_eq!(job.state, JobState::Cancel);
    let stopped = report.failures.first().expect("the manual step ended");
    assert_eq!(stopped.task.command, MANUAL_COMMAND);
    assert_eq!(
        stopped.outcome,
        TaskOutcome::Cancelled,
        "cancelled, not failed"
    );
    assert_eq!(report.counts.cancelled, 1);
    assert_eq!(report.counts.failed, 0);
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "nothing ran after the manual step"
    );
}
