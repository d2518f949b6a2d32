//! The event stream as JSON lines, over any writer.

use std::io::{self, Write};
use std::sync::Mutex;

use deployer_core::{Event, EventSink};

/// Writes every event as one JSON object per line to a writer (`--output json`).
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
    writer: Mutex<W>,
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
            writer: Mutex::new(writer),
        }
    }

    /// The writer back, with everything written so far.
    pub fn into_inner(self) -> W {
        self.writer.into_inner().unwrap_or_else(|e| e.into_inner())
    }
}

impl<W: Write + Send> EventSink for JsonLines<W> {
    fn event(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            let mut out = self.writer.lock().unwrap_or_else(|e| e.into_inner());
            // A closed output (e.g. `| head`) must not stop the deploy.
            let _ = writeln!(out, "{line}").and_then(|()| out.flush());
        }
    }
}
