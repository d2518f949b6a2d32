//! The run viewer's run page of a big run: a SQLite run store (a real file) holding one run of
//! HOSTS hosts (default 1000) with six tasks each — the first four stages done, the fifth
//! part done, part failed (every 25th host, with exit status and a stderr tail), part running,
//! the sixth pending — served by `deployer_web::Web`'s router in this process (no socket: the
//! request goes to the router as a hyper server would hand it). Times GET of the run page as
//! HTML and as JSON (`Accept: application/json`), median of N (default 11) after one warm-up,
//! and prints the peak RSS.
//!
//! ```text
//! cargo run --release -p deployer-benches --bin web_run_page [HOSTS] [N]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use deployer_benches::peak_rss;
use deployer_core::{
    CommandRegistry, HostState, NewRun, Plan, RunState, RunStore, Stage, Task, TaskRecord,
    TaskState, Tasklist,
};
use http_body_util::BodyExt;
use tower::ServiceExt;

const STAGES: [&str; 6] = [
    "create release",
    "upload",
    "unpack",
    "link shared",
    "switch current",
    "restart",
];

fn tasklist(hosts: usize) -> Tasklist {
    let names: Vec<String> = (0..hosts).map(|i| format!("web{i:04}")).collect();
    let mut t = Tasklist::new("release shop 1.4.3");
    for (s, stage) in STAGES.iter().enumerate() {
        t = t.stage(
            Stage::new(*stage, 50)
                .per_host(1)
                .tasks(names.iter().map(|h| {
                    Task::new("execute_command")
                        .arg(
                            "command_line",
                            format!("/srv/shop/bin/step-{s} --host {h} --release 1.4.3"),
                        )
                        .on(h.clone())
                })),
        );
    }
    t
}

/// Records the run and brings its tasks to the states described above.
async fn fill(store: &dyn RunStore, hosts: usize) -> deployer_core::RunId {
    let mut registry = CommandRegistry::new();
    deployer_commands::register_all(&mut registry);
    let plan = Plan::build(&tasklist(hosts), &registry).expect("a valid plan");
    let new = NewRun::from_plan(&plan, "generator:release", "alice");
    let infos = new.tasks.clone();
    let run = store.create_run(new).await.expect("create the run");
    let id = run.id.clone();
    store
        .set_run_state(&id, RunState::Running)
        .await
        .expect("run state");
    let t0 = SystemTime::now() - Duration::from_secs(600);
    let per_stage = hosts;
    for (n, info) in infos.iter().enumerate() {
        let stage = n / per_stage;
        let host_index = n % per_stage;
        let mut task = TaskRecord::pending(info);
        let started = t0 + Duration::from_secs(stage as u64 * 60 + host_index as u64 % 50);
        let (state, failed) = match stage {
            0..=3 => (TaskState::Succeeded, false),
            4 if host_index % 25 == 7 => (TaskState::Failed, true),
            4 if host_index.is_multiple_of(3) => (TaskState::Running, false),
            4 => (TaskState::Succeeded, false),
            _ => (TaskState::Pending, false),
        };
        task.state = state;
        if state != TaskState::Pending {
            task.attempts = 1;
            task.started_ts = Some(started);
            task.drive = Some(1);
        }
        if matches!(state, TaskState::Succeeded | TaskState::Failed) {
            let took = Duration::from_millis(800 + (host_index as u64 * 37) % 2000);
            task.finished_ts = Some(started + took);
            task.duration = Some(took);
            // A chatty command: 4 KiB of output kept per task (24 MiB in the store), which
            // the run page must not read (only a host's page shows it).
            task.output_tail = Some(format!("unpacking file {stage}/{host_index}\n").repeat(128));
        }
        if failed {
            task.exit_status = Some(3);
            task.stderr_tail = Some(
                "switching /srv/shop/current\nln: failed to create symbolic link: No space left on device\n"
                    .to_string(),
            );
            task.error = Some("exit status 3".to_string());
        }
        store.update_task(&id, &task).await.expect("update a task");
    }
    for i in 0..hosts {
        let state = if i % 25 == 7 {
            HostState::Failed
        } else if i.is_multiple_of(3) {
            HostState::Running
        } else {
            HostState::Pending
        };
        store
            .set_host_state(&id, &format!("web{i:04}"), state)
            .await
            .expect("host state");
    }
    id
}

/// GET `path` (as JSON when `json`); the time to the whole body, and its length.
async fn get(router: &axum::Router, path: &str, json: bool) -> (Duration, usize) {
    let mut req = Request::get(path);
    if json {
        req = req.header("accept", "application/json");
    }
    let req = req.body(Body::empty()).unwrap();
    let started = Instant::now();
    let resp = router
        .clone()
        .oneshot(req)
        .await
        .expect("the router answers");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("a body").to_bytes();
    let took = started.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "GET {path}: {}",
        String::from_utf8_lossy(&body)
    );
    (took, body.len())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut args = std::env::args().skip(1);
    let hosts: usize = args.next().map_or(1000, |a| a.parse().expect("HOSTS"));
    let n: usize = args.next().map_or(11, |a| a.parse().expect("N"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.db");
        let store: Arc<dyn RunStore> = Arc::new(
            deployer_store::SqliteStore::open(&path)
                .await
                .expect("open the SQLite store"),
        );
        let filled = Instant::now();
        let id = fill(store.as_ref(), hosts).await;
        println!(
            "store: {hosts} hosts × {} tasks recorded in {:.1} s ({:.1} MiB)",
            STAGES.len(),
            filled.elapsed().as_secs_f64(),
            std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) as f64 / (1024.0 * 1024.0)
        );
        // Read-only pages for anybody: what is measured is reading and rendering.
        let router = deployer_web::Web::new(store.clone())
            .allow_anonymous_read(true)
            .router();
        let page = format!("/runs/{id}");
        for (what, json) in [("HTML", false), ("JSON", true)] {
            let (first, len) = get(&router, &page, json).await;
            let mut times = Vec::with_capacity(n);
            for _ in 0..n {
                times.push(get(&router, &page, json).await.0);
            }
            let max = *times.iter().max().unwrap();
            println!(
                "GET {page} ({what}, {:.0} KiB): first {:.0} ms, median of {n} {:.0} ms, max {:.0} ms",
                len as f64 / 1024.0,
                first.as_secs_f64() * 1e3,
                median(times).as_secs_f64() * 1e3,
                max.as_secs_f64() * 1e3,
            );
        }
        let (took, len) = get(&router, "/", false).await;
        println!(
            "GET / (runs list, HTML, {:.0} KiB): {:.0} ms",
            len as f64 / 1024.0,
            took.as_secs_f64() * 1e3
        );
    });
    println!("peak RSS {:.1} MiB", peak_rss() as f64 / (1024.0 * 1024.0));
}
