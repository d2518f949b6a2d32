//! The event stream as JSON lines, over any writer.

use std::collections::HashMap;
use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use deployer_core::{Event, EventKind, EventSink, Stream, TaskId};
use serde_json::{Value, json};

/// How much of one task's output `JsonLines` writes (its lines' bytes plus 3 for quotes and
/// comma each); the rest is counted, not written.
pub const OUTPUT_BYTES_PER_TASK: usize = 1024 * 1024;
/// How often at most `JsonLines` writes one task's output lines (coalesced into one object).
pub const OUTPUT_INTERVAL: Duration = Duration::from_millis(100);
/// How many bytes of lines one coalesced object holds at most.
const BATCH_BYTES: usize = 64 * 1024;

/// Writes every event as one JSON object per line to a writer (`--output json`).
///
/// Output lines are coalesced, so a command printing millions of lines cannot make gigabytes
/// of JSON: a task's lines are written as `{"event": "task_output", …, "stream": "stdout",
/// "lines": [...]}`, at most one object per task and stream every [`OUTPUT_INTERVAL`] (or per
/// 64 KiB of lines), and at most [`OUTPUT_BYTES_PER_TASK`] of each task's output is written;
/// what is left out is counted in one `{"event": "task_output_dropped", …, "lines": N,
/// "bytes": M}` before the task's `task_finished`. Lines still waiting are written before any
/// other event of their task, and before `run_finished`.
///
/// A write error (a closed pipe, as with `| head`) never stops the run: the event is dropped.
/// The writer is behind a lock, so lines from concurrent tasks never interleave.
///
/// ```
/// use deployer_core::{Event, EventKind, EventSink};
/// use deployer_report::JsonLines;
/// use std::time::Duration;
///
/// let json = JsonLines::new(Vec::new());
/// json.event(&Event::new(
///     Duration::ZERO,
///     EventKind::RunStarted { name: "demo".into(), stages: 1, tasks: 2 },
/// ));
/// let text = String::from_utf8(json.into_inner()).unwrap();
/// assert!(text.starts_with('{') && text.ends_with("}\n"), "{text}");
/// assert!(text.contains("run_started"), "{text}");
/// ```
#[derive(Debug, Default)]
pub struct JsonLines<W> {
    state: Mutex<State<W>>,
}

#[derive(Debug, Default)]
struct State<W> {
    writer: W,
    tasks: HashMap<TaskId, TaskOutput>,
}

/// One task's output not written yet, and what was left out.
#[derive(Debug)]
struct TaskOutput {
    /// The event of the first waiting line (task, stream), to write the batch with.
    head: Option<Event>,
    lines: Vec<String>,
    pending_bytes: usize,
    since: Instant,
    written: usize,
    dropped_lines: usize,
    dropped_bytes: usize,
}

impl JsonLines<io::Stdout> {
    /// Writes to standard output.
    pub fn stdout() -> Self {
        JsonLines::new(io::stdout())
    }
}

impl<W: Write> JsonLines<W> {
    /// Writes to `writer`.
    pub fn new(writer: W) -> Self {
        JsonLines {
            state: Mutex::new(State {
                writer,
                tasks: HashMap::new(),
            }),
        }
    }

    /// The writer back, with everything written so far.
    pub fn into_inner(self) -> W {
        let state = self.state.into_inner().unwrap_or_else(|e| e.into_inner());
        state.writer
    }
}

impl<W: Write> State<W> {
    fn write(&mut self, value: &impl serde::Serialize) {
        if let Ok(line) = serde_json::to_string(value) {
            // A closed output (e.g. `| head`) must not stop the deploy.
            let _ = writeln!(self.writer, "{line}").and_then(|()| self.writer.flush());
        }
    }

    /// Writes `id`'s waiting lines as one object.
    fn flush(&mut self, id: TaskId) {
        let Some(out) = self.tasks.get_mut(&id) else {
            return;
        };
        let (Some(head), false) = (out.head.take(), out.lines.is_empty()) else {
            return;
        };
        let lines = std::mem::take(&mut out.lines);
        out.pending_bytes = 0;
        let mut value = serde_json::to_value(&head).unwrap_or(Value::Null);
        if let Some(map) = value.as_object_mut() {
            map.remove("line");
            map.insert("lines".into(), json!(lines));
        }
        self.write(&value);
    }

    fn output(&mut self, event: &Event, id: TaskId, stream: Stream, line: &str) {
        let now = Instant::now();
        let out = self.tasks.entry(id).or_insert_with(|| TaskOutput {
            head: None,
            lines: Vec::new(),
            pending_bytes: 0,
            since: now,
            written: 0,
            dropped_lines: 0,
            dropped_bytes: 0,
        });
        // A line costs its bytes and its JSON quotes and comma.
        let cost = line.len() + 3;
        if out.written + cost > OUTPUT_BYTES_PER_TASK {
            out.dropped_lines += 1;
            out.dropped_bytes += line.len();
            return;
        }
        let other_stream = matches!(
            &out.head,
            Some(Event { kind: EventKind::TaskOutput { stream: s, .. }, .. }) if *s != stream
        );
        if other_stream {
            self.flush(id);
        }
        let out = self.tasks.get_mut(&id).expect("inserted above");
        if out.head.is_none() {
            out.head = Some(event.clone());
            out.since = now;
        }
        out.written += cost;
        out.pending_bytes += cost;
        out.lines.push(line.to_string());
        if out.pending_bytes >= BATCH_BYTES || now.duration_since(out.since) >= OUTPUT_INTERVAL {
            self.flush(id);
        }
    }

    /// Writes what every task has waiting for longer than the interval.
    fn flush_stale(&mut self) {
        let stale: Vec<TaskId> = self
            .tasks
            .iter()
            .filter(|(_, o)| o.head.is_some() && o.since.elapsed() >= OUTPUT_INTERVAL)
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            self.flush(id);
        }
    }
}

impl<W: Write + Send> EventSink for JsonLines<W> {
    fn event(&self, event: &Event) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &event.kind {
            EventKind::TaskOutput { task, stream, line } => {
                state.output(event, task.id, *stream, line);
                state.flush_stale();
                return;
            }
            EventKind::TaskFinished { task, .. } => {
                state.flush(task.id);
                if let Some(out) = state.tasks.remove(&task.id)
                    && out.dropped_lines > 0
                {
                    let mut value = serde_json::to_value(event).unwrap_or(Value::Null);
                    if let Some(map) = value.as_object_mut() {
                        for key in ["outcome", "duration", "attempts", "stats"] {
                            map.remove(key);
                        }
                        map.insert("event".into(), json!("task_output_dropped"));
                        map.insert("lines".into(), json!(out.dropped_lines));
                        map.insert("bytes".into(), json!(out.dropped_bytes));
                    }
                    state.write(&value);
                }
            }
            EventKind::TaskRetrying { task, .. }
            | EventKind::TaskNotRun { task, .. }
            | EventKind::TaskDropped { task, .. } => {
                state.flush(task.id);
            }
            EventKind::RunFinished { .. } => {
                let ids: Vec<TaskId> = state.tasks.keys().copied().collect();
                for id in ids {
                    state.flush(id);
                }
            }
            _ => state.flush_stale(),
        }
        state.write(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deployer_core::{RunOutcome, TaskInfo, TaskOutcome};

    fn info() -> TaskInfo {
        TaskInfo {
            id: TaskId {
                stage: 0,
                entry: 0,
                step: None,
            },
            host: "fe001".into(),
            tag: None,
            command: "spam".into(),
        }
    }

    #[test]
    fn a_flood_of_output_becomes_a_bounded_json_stream() {
        let json = JsonLines::new(Vec::new());
        let ev = |kind| Event::new(Duration::ZERO, kind);
        // 2 million lines of "y": 4 MB of output, once one JSON object per line.
        for _ in 0..2_000_000 {
            json.event(&ev(EventKind::TaskOutput {
                task: info(),
                stream: Stream::Stdout,
                line: "y".into(),
            }));
        }
        json.event(&ev(EventKind::TaskFinished {
            task: info(),
            outcome: TaskOutcome::Succeeded,
            duration: Duration::from_secs(1),
            attempts: 1,
        }));
        json.event(&ev(EventKind::RunFinished {
            outcome: RunOutcome::Succeeded,
            duration: Duration::from_secs(1),
        }));
        let text = String::from_utf8(json.into_inner()).unwrap();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(
            text.len() < 3 * OUTPUT_BYTES_PER_TASK,
            "{} bytes of JSON",
            text.len()
        );
        let written: usize = events
            .iter()
            .filter(|e| e["event"] == "task_output")
            .map(|e| e["lines"].as_array().unwrap().len())
            .sum();
        let dropped = events
            .iter()
            .find(|e| e["event"] == "task_output_dropped")
            .unwrap();
        assert_eq!(
            written + dropped["lines"].as_u64().unwrap() as usize,
            2_000_000
        );
        assert_eq!(written, OUTPUT_BYTES_PER_TASK / 4);
        assert_eq!(dropped["host"], "fe001");
        let order: Vec<&str> = events
            .iter()
            .map(|e| e["event"].as_str().unwrap())
            .collect();
        let finished = order.iter().position(|e| *e == "task_finished").unwrap();
        assert_eq!(order[finished - 1], "task_output_dropped");
        assert_eq!(order.last(), Some(&"run_finished"));
    }

    #[test]
    fn a_few_lines_keep_their_order_and_stream() {
        let json = JsonLines::new(Vec::new());
        let ev = |kind| Event::new(Duration::ZERO, kind);
        for (stream, line) in [
            (Stream::Stdout, "a"),
            (Stream::Stdout, "b"),
            (Stream::Stderr, "c"),
        ] {
            json.event(&ev(EventKind::TaskOutput {
                task: info(),
                stream,
                line: line.into(),
            }));
        }
        json.event(&ev(EventKind::TaskFinished {
            task: info(),
            outcome: TaskOutcome::Succeeded,
            duration: Duration::ZERO,
            attempts: 1,
        }));
        let text = String::from_utf8(json.into_inner()).unwrap();
        let events: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(events[0]["stream"], "stdout");
        assert_eq!(events[0]["lines"], json!(["a", "b"]));
        assert_eq!(events[1]["stream"], "stderr");
        assert_eq!(events[1]["lines"], json!(["c"]));
        assert_eq!(events[2]["event"], "task_finished");
    }
}
