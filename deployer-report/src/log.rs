//! Log lines in the shape of the original deployer:
//! `time [LEVEL] [component] [host] [tag] message`.

use tracing::Level;

use deployer_core::{Event, EventKind, EventSink, TaskOutcome};

/// An [`EventSink`] that turns executor events into `tracing` events with the fields
/// `component`, `host` and `tag`, for [`LogFormat`] (or any subscriber) to print.
///
/// Task output lines are logged at DEBUG, task starts at INFO, failures at ERROR.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracingSink;

macro_rules! log_at {
    ($lvl:expr, $host:expr, $tag:expr, $($arg:tt)+) => {
        match $lvl {
            Level::ERROR => tracing::error!(component = "Executor", host = $host, tag = $tag, $($arg)+),
            Level::WARN => tracing::warn!(component = "Executor", host = $host, tag = $tag, $($arg)+),
            Level::INFO => tracing::info!(component = "Executor", host = $host, tag = $tag, $($arg)+),
            Level::DEBUG => tracing::debug!(component = "Executor", host = $host, tag = $tag, $($arg)+),
            _ => tracing::trace!(component = "Executor", host = $host, tag = $tag, $($arg)+),
        }
    };
}

impl EventSink for TracingSink {
    fn event(&self, event: &Event) {
        match &event.kind {
            EventKind::RunStarted {
                name,
                stages,
                tasks,
            } => log_at!(
                Level::INFO,
                "*",
                "*",
                "Starting run: {name} ({stages} stages, {tasks} tasks)"
            ),
            EventKind::StageStarted { name, tasks, .. } => {
                log_at!(
                    Level::INFO,
                    "*",
                    "*",
                    "Starting stage: {name} ({tasks} tasks)"
                )
            }
            EventKind::TaskStarted { task, attempt } => {
                let tag = task.tag.as_deref().unwrap_or("*");
                if *attempt > 1 {
                    log_at!(
                        Level::INFO,
                        task.host.as_str(),
                        tag,
                        "Executing {} (attempt {attempt})",
                        task.command
                    )
                } else {
                    log_at!(
                        Level::INFO,
                        task.host.as_str(),
                        tag,
                        "Executing {}",
                        task.command
                    )
                }
            }
            EventKind::TaskOutput { task, stream, line } => {
                let tag = task.tag.as_deref().unwrap_or("*");
                let s = match stream {
                    deployer_core::Stream::Stdout => "out",
                    deployer_core::Stream::Stderr => "err",
                };
                log_at!(Level::DEBUG, task.host.as_str(), tag, "{s}: {line}")
            }
            EventKind::TaskRetrying {
                task,
                attempt,
                error,
            } => {
                let tag = task.tag.as_deref().unwrap_or("*");
                log_at!(
                    Level::WARN,
                    task.host.as_str(),
                    tag,
                    "{} attempt {attempt} failed, retrying: {error}",
                    task.command
                )
            }
            EventKind::TaskFinished {
                task,
                outcome,
                duration,
                ..
            } => {
                let tag = task.tag.as_deref().unwrap_or("*");
                let level = if outcome.is_success() {
                    Level::INFO
                } else {
                    Level::ERROR
                };
                match outcome {
                    TaskOutcome::Succeeded => log_at!(
                        level,
                        task.host.as_str(),
                        tag,
                        "Finished {} in {:.2}s",
                        task.command,
                        duration.as_secs_f64()
                    ),
                    other => log_at!(
                        level,
                        task.host.as_str(),
                        tag,
                        "{} {} ({})",
                        task.command,
                        other,
                        task.id
                    ),
                }
            }
            EventKind::TaskNotRun { task, reason } => {
                let tag = task.tag.as_deref().unwrap_or("*");
                log_at!(
                    Level::WARN,
                    task.host.as_str(),
                    tag,
                    "Not running {}: {reason}",
                    task.command
                )
            }
            EventKind::TaskDropped { task, reason } => {
                let tag = task.tag.as_deref().unwrap_or("*");
                log_at!(
                    Level::WARN,
                    task.host.as_str(),
                    tag,
                    "Not running {}: its host was dropped ({reason})",
                    task.command
                )
            }
            EventKind::HostDropped {
                host,
                reason,
                failed_hosts,
                budget,
                ..
            } => {
                log_at!(
                    Level::ERROR,
                    host.as_str(),
                    "*",
                    "Dropping the host from the run ({failed_hosts} failed so far, within {budget}): {reason}"
                )
            }
            EventKind::TaskDoneEarlier { task } => {
                let tag = task.tag.as_deref().unwrap_or("*");
                log_at!(
                    Level::DEBUG,
                    task.host.as_str(),
                    tag,
                    "Done in an earlier attempt: {}",
                    task.command
                )
            }
            EventKind::StageFinished {
                name,
                outcome,
                duration,
                ..
            } => {
                if outcome.completed() {
                    log_at!(
                        Level::INFO,
                        "*",
                        "*",
                        "Finished stage: {name} in {:.2}s",
                        duration.as_secs_f64()
                    )
                } else {
                    log_at!(Level::ERROR, "*", "*", "Stage {outcome}: {name}")
                }
            }
            EventKind::StageSkipped { name, .. } => {
                log_at!(Level::WARN, "*", "*", "Skipping stage: {name}")
            }
            EventKind::EntryClaimed {
                worker,
                host,
                tasks,
            } => {
                let ids: Vec<String> = tasks.iter().map(ToString::to_string).collect();
                log_at!(
                    Level::INFO,
                    host.as_str(),
                    "*",
                    "Worker {worker} claimed {}",
                    ids.join(", ")
                )
            }
            EventKind::RunFinished { outcome, duration } => {
                let level = if *outcome == deployer_core::RunOutcome::Succeeded {
                    Level::INFO
                } else if *outcome == deployer_core::RunOutcome::Degraded {
                    Level::WARN
                } else {
                    Level::ERROR
                };
                log_at!(
                    level,
                    "*",
                    "*",
                    "Run {outcome} in {:.2}s",
                    duration.as_secs_f64()
                )
            }
            _ => {}
        }
    }
}

#[cfg(feature = "log")]
pub use format::LogFormat;

#[cfg(feature = "log")]
mod format {
    use std::fmt::{self, Write as _};

    use tracing::field::{Field, Visit};
    use tracing::{Event as TracingEvent, Subscriber};
    use tracing_subscriber::fmt::format::Writer;
    use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
    use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
    use tracing_subscriber::registry::LookupSpan;

    use deployer_core::Redactor;

    /// A `tracing-subscriber` event format that prints
    /// `time [LEVEL   ] [component      ] [host] [tag] message`, taking `component`, `host` and `tag`
    /// from the event's fields (`*` where there is none; the component falls back to the last
    /// segment of the event's target). The secrets of the [`Redactor`]s it was given
    /// ([`redactor`](Self::redactor)) show as `***`, whoever logged them.
    ///
    /// ```
    /// use deployer_core::Redactor;
    /// use deployer_report::LogFormat;
    /// use std::sync::{Arc, Mutex};
    ///
    /// let redactor = Redactor::new();
    /// let lines = Arc::new(Mutex::new(Vec::new()));
    /// let writer = lines.clone();
    /// let subscriber = tracing_subscriber::fmt()
    ///     .event_format(LogFormat::default().without_time().redactor(redactor.clone()))
    ///     .with_writer(move || Sink(writer.clone()))
    ///     .finish();
    /// redactor.add("hunter2");
    /// tracing::subscriber::with_default(subscriber, || {
    ///     tracing::info!(component = "Config", "logging in with hunter2");
    /// });
    /// let text = String::from_utf8(lines.lock().unwrap().clone()).unwrap();
    /// assert_eq!(text, "[INFO    ] [Config         ] [*] [*] logging in with ***\n");
    ///
    /// struct Sink(Arc<Mutex<Vec<u8>>>);
    /// impl std::io::Write for Sink {
    ///     fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
    ///         self.0.lock().unwrap().extend_from_slice(b);
    ///         Ok(b.len())
    ///     }
    ///     fn flush(&mut self) -> std::io::Result<()> { Ok(()) }
    /// }
    /// ```
    #[derive(Debug, Clone, Default)]
    pub struct LogFormat {
        /// Omit the timestamp (e.g. when a supervisor adds its own). Default: false.
        pub without_time: bool,
        redactors: Vec<Redactor>,
    }

    impl LogFormat {
        /// Omits the timestamp.
        pub fn without_time(mut self) -> Self {
            self.without_time = true;
            self
        }

        /// Hides the secrets `redactor` knows, now and later (clones share their secrets: hand
        /// it the redactor a plan is built with, [`Plan::build_with_redactor`]). Can be called
        /// for several redactors (several plans run side by side). Default: none.
        ///
        /// [`Plan::build_with_redactor`]: deployer_core::Plan::build_with_redactor
        pub fn redactor(mut self, redactor: Redactor) -> Self {
            self.redactors.push(redactor);
            self
        }
    }

    #[derive(Default)]
    struct Fields {
        message: String,
        component: Option<String>,
        host: Option<String>,
        tag: Option<String>,
        rest: String,
    }

    impl Visit for Fields {
        fn record_str(&mut self, field: &Field, value: &str) {
            match field.name() {
                "message" => self.message = value.to_string(),
                "component" => self.component = Some(value.to_string()),
                "host" => self.host = Some(value.to_string()),
                "tag" => self.tag = Some(value.to_string()),
                name => {
                    let _ = write!(self.rest, " {name}={value}");
                }
            }
        }

        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            match field.name() {
                "message" => self.message = format!("{value:?}"),
                "component" => self.component = Some(format!("{value:?}")),
                "host" => self.host = Some(format!("{value:?}")),
                "tag" => self.tag = Some(format!("{value:?}")),
                name => {
                    let _ = write!(self.rest, " {name}={value:?}");
                }
            }
        }
    }

    impl<S, N> FormatEvent<S, N> for LogFormat
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        N: for<'a> FormatFields<'a> + 'static,
    {
        fn format_event(
            &self,
            _ctx: &FmtContext<'_, S, N>,
            mut writer: Writer<'_>,
            event: &TracingEvent<'_>,
        ) -> fmt::Result {
            let mut fields = Fields::default();
            event.record(&mut fields);
            if !self.without_time {
                SystemTime.format_time(&mut writer)?;
                writer.write_char(' ')?;
            }
            let component = fields.component.unwrap_or_else(|| {
                let target = event.metadata().target();
                target.rsplit("::").next().unwrap_or(target).to_string()
            });
            let line = format!(
                "[{:<8}] [{:<15}] [{}] [{}] {}{}",
                event.metadata().level().as_str(),
                component,
                fields.host.as_deref().unwrap_or("*"),
                fields.tag.as_deref().unwrap_or("*"),
                fields.message,
                fields.rest
            );
            // Whatever logged it (a command, a library), a known secret shows as `***`.
            let mut line = std::borrow::Cow::Borrowed(line.as_str());
            for redactor in &self.redactors {
                if let std::borrow::Cow::Owned(o) = redactor.redact(&line) {
                    line = std::borrow::Cow::Owned(o);
                }
            }
            writeln!(writer, "{line}")
        }
    }
}
