//! A plan as a Graphviz graph.

use std::fmt::Write as _;

use deployer_core::{TaskEntry, Tasklist};

fn dot_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders a tasklist as a Graphviz graph: a cluster per stage (with its limits), a node per
/// task labelled with command, host and tag, edges along chains and between stages.
///
/// ```
/// use deployer_core::{Stage, Task, Tasklist};
/// let t = Tasklist::new("demo").stage(Stage::new("s", 2).task(vec![
///     Task::new("stop").on("fe001"),
///     Task::new("start").on("fe001"),
/// ]));
/// let dot = deployer_report::to_dot(&t);
/// assert!(dot.starts_with("digraph tasklist {"));
/// assert!(dot.contains("t0_0_0 -> t0_0_1;"));
/// ```
pub fn to_dot(tasklist: &Tasklist) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph tasklist {{");
    let _ = writeln!(s, "  label=\"{}\";", dot_escape(&tasklist.name));
    let _ = writeln!(s, "  labelloc=t; rankdir=TB; compound=true; newrank=true;");
    let _ = writeln!(
        s,
        "  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    for (si, stage) in tasklist.stages.iter().enumerate() {
        let limits = match stage.concurrency_per_host {
            Some(p) => format!("concurrency {}, per host {p}", stage.concurrency),
            None => format!("concurrency {}", stage.concurrency),
        };
        let _ = writeln!(s, "  subgraph cluster_{si} {{");
        let _ = writeln!(
            s,
            "    label=\"{si}: {} ({limits})\"; style=rounded;",
            dot_escape(&stage.name)
        );
        let _ = writeln!(s, "    s{si} [shape=point, style=invis];");
        for (ei, entry) in stage.tasks.iter().enumerate() {
            let tasks = entry.tasks();
            for (ti, task) in tasks.iter().enumerate() {
                let tag = task
                    .tag
                    .as_deref()
                    .map(|t| format!(" [{t}]"))
                    .unwrap_or_default();
                let _ = writeln!(
                    s,
                    "    t{si}_{ei}_{ti} [label=\"{}\\n{}{}\"];",
                    dot_escape(&task.command),
                    dot_escape(task.host_key()),
                    dot_escape(&tag)
                );
            }
            if matches!(entry, TaskEntry::Chain(_)) {
                for ti in 1..tasks.len() {
                    let _ = writeln!(s, "    t{si}_{ei}_{} -> t{si}_{ei}_{ti};", ti - 1);
                }
            }
        }
        let _ = writeln!(s, "  }}");
    }
    for si in 1..tasklist.stages.len() {
        let _ = writeln!(
            s,
            "  s{} -> s{si} [ltail=cluster_{}, lhead=cluster_{si}, style=bold];",
            si - 1,
            si - 1
        );
    }
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::{Stage, Task};
    use std::io::Write as _;

    #[test]
    fn dot_has_a_cluster_per_stage_chains_and_stage_order() {
        let t = Tasklist::new("deploy \"web\"")
            .stage(Stage::new("Prepare", 10).per_host(2).tasks(vec![
                Task::new("upload").on("fe001").tag("web"),
                Task::new("upload").on("fe002").tag("web"),
            ]))
            .stage(Stage::new("Activate", 1).task(vec![
                Task::new("stop").on("fe001"),
                Task::new("start").on("fe001"),
                Task::new("check").on("fe001"),
            ]));
        let dot = to_dot(&t);
        assert!(dot.contains("label=\"deploy \\\"web\\\"\";"), "{dot}");
        assert!(dot.contains("subgraph cluster_0 {"));
        assert!(dot.contains("label=\"0: Prepare (concurrency 10, per host 2)\""));
        assert!(dot.contains("label=\"1: Activate (concurrency 1)\""));
        assert!(
            dot.contains("t0_1_0 [label=\"upload\\nfe002 [web]\"];"),
            "{dot}"
        );
        assert!(dot.contains("t1_0_0 -> t1_0_1;"));
        assert!(dot.contains("t1_0_1 -> t1_0_2;"));
        assert!(
            !dot.contains("t0_0_0 -> t0_1_0"),
            "separate tasks are not chained"
        );
        assert!(dot.contains("s0 -> s1 [ltail=cluster_0, lhead=cluster_1"));
        // Graphviz accepts it, when installed.
        if let Ok(mut child) = std::process::Command::new("dot")
            .arg("-Tsvg")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
        {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(dot.as_bytes())
                .unwrap();
            assert!(child.wait().unwrap().success());
        }
    }
}
