//! The dry run of a big tasklist file: JSON text → `Tasklist` → `Plan` with every standard
//! command, all problems collected. Prints the wall time and the peak RSS.
//!
//! ```text
//! cargo run --release -p deployer-benches --bin dry_run [TASKS] [valid|broken]
//! ```
//!
//! `valid` (default): TASKS `createdirectory` tasks over 1,000 hosts, every one fine.
//! `broken`: the same with a problem in every task (an unknown argument), so the dry run
//! collects and prints TASKS problems.

use std::fmt::Write as _;
use std::time::Instant;

use deployer_benches::peak_rss;
use deployer_core::{CommandRegistry, Plan, Tasklist};

fn main() {
    let mut args = std::env::args().skip(1);
    let tasks: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let broken = args.next().as_deref() == Some("broken");
    let mut text =
        String::from(r#"{"name": "big", "stages": [{"name": "s", "concurrency": 100, "tasks": ["#);
    for i in 0..tasks {
        let comma = if i == 0 { "" } else { "," };
        let extra = if broken { r#", "sourse": "typo""# } else { "" };
        let _ = write!(
            text,
            r#"{comma}
  {{"command": "createdirectory", "remote_host": "fe{:04}", "source": "/srv/app/releases/{i}"{extra}}}"#,
            i % 1_000
        );
    }
    text.push_str("]}]}\n");
    let mut commands = CommandRegistry::new();
    deployer_commands::register_all(&mut commands);

    let start = Instant::now();
    let tasklist = Tasklist::from_json_str(&text).expect("the tasklist parses");
    let parsed = start.elapsed();
    let result = Plan::build(&tasklist, &commands);
    let elapsed = start.elapsed();
    let problems = match &result {
        Ok(plan) => {
            assert_eq!(plan.task_count(), tasks);
            0
        }
        Err(errors) => errors.len(),
    };
    let printed = result.err().map(|e| e.to_string().len()).unwrap_or(0);
    println!(
        "{tasks} tasks ({} MiB of JSON): parsed in {:.0} ms, dry run done in {:.0} ms, \
         {problems} problems ({:.1} MiB of messages), peak RSS {:.1} MiB",
        text.len() / (1024 * 1024),
        parsed.as_secs_f64() * 1e3,
        elapsed.as_secs_f64() * 1e3,
        printed as f64 / (1024.0 * 1024.0),
        peak_rss() as f64 / (1024.0 * 1024.0)
    );
}
