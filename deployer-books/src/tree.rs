//! A job as a short tree a person reads at a glance (`books show`).

use std::fmt::Write as _;
use std::time::Duration;

use super::job::{EstimateSource, Job, JobStep, JobStepKind};

/// One line of the tree and the lines under it.
struct Node {
    /// The step name of a group (a child book's call), to find it again; `None` for a step.
    group: Option<String>,
    label: String,
    children: Vec<Node>,
}

/// How many host names a step line shows before "and N more".
const HOSTS_SHOWN: usize = 3;

impl Job {
    /// The job as a tree of text lines: a first line naming the book, action, state and id;
    /// one line per step with what it runs where, its estimate, timeout and retries, or why
    /// it is skipped; child books as branches under the step that calls them; and a last line
    /// with the totals. Nothing is printed: the caller writes the text where it wants.
    ///
    /// ```
    /// use deployer_books::{Book, BookLibrary, JobBuilder, Step};
    /// use serde_json::json;
    ///
    /// let mut library = BookLibrary::new();
    /// library.register(Book::new("pause", "1.0.0".parse().unwrap())
    ///     .step(Step::command("stop", "stop_service").hosts("deployment.hosts")
    ///         .estimated_duration(std::time::Duration::from_secs(3)))).unwrap();
    /// library.register(Book::new("deploy", "2.1.0".parse().unwrap())
    ///     .step(Step::book("pause", "pause", "^1".parse().unwrap()))
    ///     .step(Step::manual("approve").applies("deployment.production"))).unwrap();
    /// let scope = json!({"deployment": {"hosts": ["fe001"], "production": false}});
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let job = JobBuilder::new(&library, "deploy").scope(&scope).unwrap().build().await.unwrap();
    /// let tree = job.tree();
    /// let lines: Vec<&str> = tree.lines().collect();
    /// assert!(lines[0].starts_with("deploy@2.1.0 (draft, job "), "{tree}");
    /// assert_eq!(&lines[1..], [
    ///     "├─ pause: book pause@1.0.0",
    ///     "│  └─ stop: stop_service on fe001 · estimate 3s, timeout 30s",
    ///     "└─ approve: manual · skipped: its condition is false: deployment.production",
    ///     "1 step to run, 1 skipped · estimated 3s",
    /// ]);
    /// # });
    /// ```
    pub fn tree(&self) -> String {
        let mut roots: Vec<Node> = Vec::new();
        for step in &self.steps {
            let mut parts: Vec<&str> = step.path.split('/').skip(1).collect();
            let name = parts.pop().unwrap_or(&step.name);
            let mut level = &mut roots;
            let mut prefix = self.book.clone();
            for group in parts {
                prefix = format!("{prefix}/{group}");
                let open = level
                    .last()
                    .is_some_and(|n| n.group.as_deref() == Some(group));
                if !open {
                    level.push(Node {
                        group: Some(group.to_string()),
                        label: self.group_label(group, &prefix),
                        children: Vec::new(),
                    });
                }
                level = &mut level.last_mut().expect("just pushed").children;
            }
            level.push(Node {
                group: None,
                label: step_label(name, step),
                children: Vec::new(),
            });
        }
        let mut out = String::new();
        let action = self
            .action
            .as_deref()
            .map(|a| format!(" for action {a}"))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "{}@{}{action} ({}, job {})",
            self.book, self.version, self.state, self.id
        );
        render(&roots, "", &mut out);
        out.push_str(&self.totals());
        out.push('\n');
        out
    }

    /// `pause: book pause@1.0.0`: the book the steps under `prefix` belong to.
    fn group_label(&self, name: &str, prefix: &str) -> String {
        let parent = |s: &&JobStep| s.path.rsplit_once('/').map(|(p, _)| p) == Some(prefix);
        match self.steps.iter().find(parent) {
            Some(s) => format!("{name}: book {}@{}", s.book, s.version),
            None => format!("{name}: book"),
        }
    }

    /// `6 steps to run, 1 skipped · estimated 36s (2 without an estimate)`.
    fn totals(&self) -> String {
        let running: Vec<&JobStep> = self.steps.iter().filter(|s| s.runs()).collect();
        let skipped = self.steps.len() - running.len();
        let mut total = Duration::ZERO;
        let mut unknown = 0;
        for s in &running {
            match (&s.kind, s.estimate) {
                (JobStepKind::Manual, _) => {}
                (_, None) => unknown += 1,
                (
                    JobStepKind::Command {
                        hosts, concurrency, ..
                    },
                    Some(d),
                ) => {
                    // Hosts run `concurrency` at a time.
                    let rounds = hosts.len().max(1).div_ceil((*concurrency).max(1));
                    total = total.saturating_add(
                        d.saturating_mul(u32::try_from(rounds).unwrap_or(u32::MAX)),
                    );
                }
                (_, Some(d)) => total = total.saturating_add(d),
            }
        }
        let mut line = format!(
            "{} step{} to run",
            running.len(),
            if running.len() == 1 { "" } else { "s" }
        );
        if skipped > 0 {
            let _ = write!(line, ", {skipped} skipped");
        }
        if !total.is_zero() {
            let _ = write!(line, " · estimated {}", duration(total));
            if unknown > 0 {
                let _ = write!(line, " ({unknown} without an estimate)");
            }
        } else if unknown > 0 {
            line.push_str(" · no estimate");
        }
        line
    }
}

fn render(nodes: &[Node], prefix: &str, out: &mut String) {
    for (i, node) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        let _ = writeln!(
            out,
            "{prefix}{}{}",
            if last { "└─ " } else { "├─ " },
            node.label
        );
        let deeper = format!("{prefix}{}", if last { "   " } else { "│  " });
        render(&node.children, &deeper, out);
    }
}

/// `dump: writefile on local · estimate 30s, timeout 5m, 2 retries · Dump the database`.
fn step_label(name: &str, step: &JobStep) -> String {
    let what = match &step.kind {
        JobStepKind::Manual => "manual".to_string(),
        JobStepKind::Book { book, version } => format!("book {book} {version}"),
        JobStepKind::Command {
            command,
            hosts,
            concurrency,
            ..
        } => {
            let mut text = format!("{command} on ");
            if hosts.is_empty() {
                text.push_str("the controller");
            } else {
                text.push_str(&hosts[..hosts.len().min(HOSTS_SHOWN)].join(", "));
                if hosts.len() > HOSTS_SHOWN {
                    let _ = write!(text, " and {} more", hosts.len() - HOSTS_SHOWN);
                }
                if *concurrency > 1 && hosts.len() > 1 {
                    let _ = write!(text, " ({concurrency} at a time)");
                }
            }
            text
        }
    };
    let mut label = format!("{}: {what}", deployer_core::one_line(name));
    if let Some(cleanup) = &step.cleanup {
        label.push_str(match cleanup.when {
            crate::CleanupWhen::OnFailure => " · clean-up if the job fails",
            crate::CleanupWhen::Always => " · clean-up, always",
        });
    }
    if let Some(reason) = &step.skipped {
        let _ = write!(label, " · skipped: {}", deployer_core::one_line(reason));
        return label;
    }
    let mut facts = Vec::new();
    if let Some(d) = step.estimate {
        let from = match step.estimate_source {
            EstimateSource::History => " (history)",
            EstimateSource::Step | EstimateSource::Unknown => "",
        };
        facts.push(format!("estimate {}{from}", duration(d)));
    }
    if let Some(t) = step.timeout {
        facts.push(format!("timeout {}", duration(t)));
    }
    match step.retries {
        0 => {}
        1 => facts.push("1 retry".to_string()),
        n => facts.push(format!("{n} retries")),
    }
    if !facts.is_empty() {
        let _ = write!(label, " · {}", facts.join(", "));
    }
    if let Some(outcome) = step.outcome {
        let _ = write!(label, " · {outcome}");
    }
    if !step.description.is_empty() {
        let _ = write!(label, " · {}", deployer_core::one_line(&step.description));
    }
    label
}

/// `250ms`, `1.5s`, `30s`, `5m`, `2m 30s`, `1h 5m`, `3d 2h`.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = d.as_secs();
    if s < 60 {
        let tenths = (ms % 1000) / 100;
        return if tenths == 0 {
            format!("{s}s")
        } else {
            format!("{s}.{tenths}s")
        };
    }
    let (value, unit, rest, rest_unit) = if s < 3600 {
        (s / 60, "m", s % 60, "s")
    } else if s < 86_400 {
        (s / 3600, "h", (s % 3600) / 60, "m")
    } else {
        (s / 86_400, "d", (s % 86_400) / 3600, "h")
    };
    if rest == 0 {
        format!("{value}{unit}")
    } else {
        format!("{value}{unit} {rest}{rest_unit}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_at_a_glance() {
        for (secs, shown) in [
            (0.25, "250ms"),
            (1.0, "1s"),
            (1.55, "1.5s"),
            (300.0, "5m"),
            (150.0, "2m 30s"),
            (3900.0, "1h 5m"),
            (266_400.0, "3d 2h"),
        ] {
            assert_eq!(duration(Duration::from_secs_f64(secs)), shown, "{secs}");
        }
    }
}
