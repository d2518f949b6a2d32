//! What the SQLite and PostgreSQL stores share: the schema's migrations, conversions between
//! records and rows, and the [`RunStore`](deployer_core::RunStore) implementation itself
//! (written once, as a macro expanded for each backend's pool type).

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deployer_core::{
    CancelRequest, HostRecord, HostRun, HostState, RunId, RunRecord, RunState, RunSummary,
    StoreError, TaskCategory, TaskCounts, TaskId, TaskRecord, TaskState, Tasklist,
};
use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use crate::errors::corrupt;

/// The schema's migrations, in order. Append only: an applied migration never changes.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "runs, run hosts and run tasks",
        include_str!("../migrations/0001_runs.sql"),
    ),
    (
        2,
        "the catalog (object model) and monitor logs",
        include_str!("../migrations/0002_catalog.sql"),
    ),
    (
        3,
        "which drive (attempt) of a run did each task",
        include_str!("../migrations/0003_drives.sql"),
    ),
    (
        4,
        "why a monitor check did not pass (target down or check broken)",
        include_str!("../migrations/0004_monitor_failure.sql"),
    ),
    (
        5,
        "approvals of manual steps",
        include_str!("../migrations/0005_approvals.sql"),
    ),
    (
        6,
        "task output tails, cancel requests and the indexes of the run views",
        include_str!("../migrations/0006_web.sql"),
    ),
    (
        7,
        "distributed runs: submitted work, its entries and their claims, workers",
        include_str!("../migrations/0007_work.sql"),
    ),
    (
        8,
        "distributed runs: failure budgets, min_hosts_up and finally stages across workers",
        include_str!("../migrations/0008_work_rules.sql"),
    ),
];

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: i64 = 8;

/// The migrator applying [`MIGRATIONS`] (embedded, so nothing is read from disk at run time).
pub(crate) fn migrator() -> Migrator {
    Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                Migration::new(
                    *version,
                    Cow::Borrowed(*description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Microseconds since the Unix epoch (negative before it), saturating.
pub(crate) fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// Now, in microseconds since the Unix epoch.
pub(crate) fn now_micros() -> i64 {
    micros(SystemTime::now())
}

/// The time `us` microseconds after the Unix epoch.
pub(crate) fn time(us: i64, what: &str) -> Result<SystemTime, StoreError> {
    let d = Duration::from_micros(us.unsigned_abs());
    let t = if us >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.ok_or_else(|| corrupt(format!("{what}: timestamp {us} is out of range")))
}

/// A duration in whole microseconds, saturating.
pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Text as stored: NUL characters, which PostgreSQL text cannot hold, become U+FFFD on every
/// backend alike (so a value the plan accepted never fails to store). Used for every text
/// column but the tasklist, which is JSON (where NUL is written `\u0000`).
pub(crate) fn text(t: &str) -> Cow<'_, str> {
    if t.contains('\0') {
        Cow::Owned(t.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(t)
    }
}

/// [`text`] of a nullable column.
pub(crate) fn opt_text(t: Option<&str>) -> Option<Cow<'_, str>> {
    t.map(text)
}

/// The longest lease: a century (so "now + ttl" cannot overflow a BIGINT).
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A lease's length in microseconds, at least 1 and at most [`MAX_TTL`].
pub(crate) fn ttl_micros(ttl: Duration) -> i64 {
    duration_micros(ttl.min(MAX_TTL)).max(1)
}

/// A task id's columns: `(stage, entry, step)`, step -1 when the task is not in a chain.
pub(crate) fn task_key(id: TaskId) -> Result<(i64, i64, i64), StoreError> {
    let col = |v: usize| {
        i64::try_from(v).map_err(|_| StoreError::Backend {
            message: format!("failed to store task {id}"),
            source: "task index out of range".into(),
        })
    };
    Ok((
        col(id.stage)?,
        col(id.entry)?,
        id.step.map(col).transpose()?.unwrap_or(-1),
    ))
}

/// Typed column access with decoding failures reported as [`StoreError::Corrupt`].
pub(crate) trait RowExt {
    /// A non-null integer.
    fn int(&self, col: &str) -> Result<i64, StoreError>;
    /// A nullable integer.
    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError>;
    /// A non-null text.
    fn text(&self, col: &str) -> Result<String, StoreError>;
    /// A nullable text.
    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError>;
}

macro_rules! row_ext {
    ($row:ty) => {
        impl RowExt for $row {
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                get(self, col)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                get(self, col)
            }
            fn text(&self, col: &str) -> Result<String, StoreError> {
                get(self, col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                get(self, col)
            }
        }

        impl RowExt for &$row {
            fn int(&self, col: &str) -> Result<i64, StoreError> {
                (*self).int(col)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
                (*self).opt_int(col)
            }
            fn text(&self, col: &str) -> Result<String, StoreError> {
                (*self).text(col)
            }
            fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
                (*self).opt_text(col)
            }
        }
    };
}

fn get<'r, R, T>(row: &'r R, col: &str) -> Result<T, StoreError>
where
    R: sqlx::Row,
    T: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'c> &'c str: sqlx::ColumnIndex<R>,
{
    row.try_get(col)
        .map_err(|e| corrupt(format!("column {col}: {e}")))
}

#[cfg(feature = "sqlite")]
row_ext!(sqlx::sqlite::SqliteRow);
#[cfg(feature = "postgres")]
row_ext!(sqlx::postgres::PgRow);

/// Reads the columns of one row on behalf of `what` (`run 0190…`, `run 0190…: task
/// stages[0].tasks[1]`): every failure is a [`StoreError::Corrupt`] naming `what` and the
/// column, on one line.
struct Fields<'r, R> {
    row: &'r R,
    what: String,
}

impl<R: RowExt> Fields<'_, R> {
    fn fail(&self, col: &str, problem: impl std::fmt::Display) -> StoreError {
        let problem = problem.to_string().replace("\n  ", "; ").replace('\n', " ");
        corrupt(format!("{}: column {col}: {problem}", self.what))
    }

    /// `RowExt` errors already say "column C: …".
    fn context(&self, e: StoreError) -> StoreError {
        match e {
            StoreError::Corrupt { message } => corrupt(format!("{}: {message}", self.what)),
            other => other,
        }
    }

    fn int(&self, col: &str) -> Result<i64, StoreError> {
        self.row.int(col).map_err(|e| self.context(e))
    }

    fn opt_int(&self, col: &str) -> Result<Option<i64>, StoreError> {
        self.row.opt_int(col).map_err(|e| self.context(e))
    }

    fn text(&self, col: &str) -> Result<String, StoreError> {
        self.row.text(col).map_err(|e| self.context(e))
    }

    fn opt_text(&self, col: &str) -> Result<Option<String>, StoreError> {
        self.row.opt_text(col).map_err(|e| self.context(e))
    }

    fn time_of(&self, col: &str, us: i64) -> Result<SystemTime, StoreError> {
        time(us, "").map_err(|_| self.fail(col, format!("timestamp {us} is out of range")))
    }

    fn time(&self, col: &str) -> Result<SystemTime, StoreError> {
        self.time_of(col, self.int(col)?)
    }

    fn opt_time(&self, col: &str) -> Result<Option<SystemTime>, StoreError> {
        self.opt_int(col)?
            .map(|us| self.time_of(col, us))
            .transpose()
    }

    fn state<S: std::str::FromStr<Err = StoreError>>(&self, col: &str) -> Result<S, StoreError> {
        self.text(col)?.parse().map_err(|e| match e {
            StoreError::Corrupt { message } => self.fail(col, message),
            other => other,
        })
    }

    fn count_of<T: TryFrom<i64>>(&self, col: &str, v: i64) -> Result<T, StoreError> {
        T::try_from(v).map_err(|_| self.fail(col, format!("{v} is out of range")))
    }

    fn count<T: TryFrom<i64>>(&self, col: &str) -> Result<T, StoreError> {
        self.count_of(col, self.int(col)?)
    }

    fn opt_count<T: TryFrom<i64>>(&self, col: &str) -> Result<Option<T>, StoreError> {
        self.opt_int(col)?
            .map(|v| self.count_of(col, v))
            .transpose()
    }
}

/// The id of a row of `runs` for listing it as unreadable: `?` when even that cannot be read.
pub(crate) fn listed_id(row: &impl RowExt) -> String {
    row.text("id").unwrap_or_else(|_| "?".to_string())
}

/// A run record from a row of `runs`.
pub(crate) fn run_record(row: &impl RowExt) -> Result<RunRecord, StoreError> {
    let mut f = Fields {
        row,
        what: "a run".to_string(),
    };
    let id_text = f.text("id")?;
    f.what = format!("run {id_text}");
    let id: RunId = id_text
        .parse()
        .map_err(|_| f.fail("id", "not a run id (expected a UUID)"))?;
    // A stored copy is read without the limits input must meet: a run recorded before they
    // changed still reads (see `Tasklist::from_stored_json`).
    let tasklist =
        Tasklist::from_stored_json(&f.text("tasklist")?).map_err(|e| f.fail("tasklist", e))?;
    Ok(RunRecord {
        id,
        name: f.text("name")?,
        source: f.text("source")?,
        started_by: f.text("started_by")?,
        state: f.state::<RunState>("state")?,
        tasklist,
        created_ts: f.time("created_ts")?,
        started_ts: f.opt_time("started_ts")?,
        finish_ts: f.opt_time("finish_ts")?,
        owner: f.opt_text("owner")?,
        lease_expires: f.opt_time("lease_expires")?,
        drives: f.count("drives")?,
    })
}

/// A run's summary from a row of `runs` (every column of [`run_record`] but the tasklist, which
/// is never read) with its host count in column `hosts`; task counts are added later.
pub(crate) fn run_summary(row: &impl RowExt) -> Result<RunSummary, StoreError> {
    let mut f = Fields {
        row,
        what: "a run".to_string(),
    };
    let id_text = f.text("id")?;
    f.what = format!("run {id_text}");
    let id: RunId = id_text
        .parse()
        .map_err(|_| f.fail("id", "not a run id (expected a UUID)"))?;
    Ok(RunSummary {
        id,
        name: f.text("name")?,
        source: f.text("source")?,
        started_by: f.text("started_by")?,
        state: f.state::<RunState>("state")?,
        created_ts: f.time("created_ts")?,
        started_ts: f.opt_time("started_ts")?,
        finish_ts: f.opt_time("finish_ts")?,
        drives: f.count("drives")?,
        owner: f.opt_text("owner")?,
        lease_expires: f.opt_time("lease_expires")?,
        hosts: f.count("hosts")?,
        counts: TaskCounts::default(),
    })
}

/// What [`TaskCategory::of_record`] makes of a task in `state` of a run, `earlier` when the
/// drive that last started or ended it is before the run's current one (`run_tasks.drive <
/// runs.drives`, false when `drive` is NULL). A page of runs counts its tasks by these two
/// values, grouped in the database; the unit test below holds this to `of_record` for every
/// state.
pub(crate) fn task_category(state: TaskState, earlier: bool) -> TaskCategory {
    use TaskState as S;
    match state {
        S::Succeeded | S::Skipped if earlier => TaskCategory::DoneEarlier,
        S::Succeeded => TaskCategory::Succeeded,
        S::Skipped => TaskCategory::Skipped,
        S::Failed | S::TimedOut => TaskCategory::Failed,
        S::Cancelled => TaskCategory::Cancelled,
        S::RolledBack => TaskCategory::RolledBack,
        S::Dropped => TaskCategory::Dropped,
        S::Pending | S::Running | S::NotRun => TaskCategory::NotRun,
    }
}

/// Every run state this version knows, as stored: a filtered page of runs leaves out rows in
/// any other state in the database (so a page is never short), as the default `find_runs`
/// leaves out runs it cannot read.
pub(crate) const RUN_STATES: [RunState; 6] = [
    RunState::Pending,
    RunState::Running,
    RunState::Succeeded,
    RunState::Failed,
    RunState::Cancelled,
    RunState::Degraded,
];

/// Every host state this version knows (see [`RUN_STATES`]).
pub(crate) const HOST_STATES: [HostState; 9] = [
    HostState::Pending,
    HostState::Added,
    HostState::Removed,
    HostState::Running,
    HostState::Done,
    HostState::Failed,
    HostState::Skipped,
    HostState::RolledBack,
    HostState::Dropped,
];

/// Fails to compile when a state is added without adding it to [`RUN_STATES`] /
/// [`HOST_STATES`].
#[allow(dead_code)]
fn every_state_is_listed(run: RunState, host: HostState) {
    use HostState as H;
    use RunState as R;
    match run {
        R::Pending | R::Running | R::Succeeded | R::Failed | R::Cancelled | R::Degraded => {}
    }
    match host {
        H::Pending
        | H::Added
        | H::Removed
        | H::Running
        | H::Done
        | H::Failed
        | H::Skipped
        | H::RolledBack
        | H::Dropped => {}
    }
}

/// A run as seen from one host, from a row of `run_hosts` joined with `runs` (columns `id`,
/// `name`, `source`, `started_by`, `run_state`, `host_state`, `created_ts`, `updated_ts`,
/// `finish_ts`).
pub(crate) fn host_run(row: &impl RowExt) -> Result<HostRun, StoreError> {
    let mut f = Fields {
        row,
        what: "a run".to_string(),
    };
    let id_text = f.text("id")?;
    f.what = format!("run {id_text}");
    let run: RunId = id_text
        .parse()
        .map_err(|_| f.fail("id", "not a run id (expected a UUID)"))?;
    Ok(HostRun {
        run,
        name: f.text("name")?,
        source: f.text("source")?,
        started_by: f.text("started_by")?,
        run_state: f.state::<RunState>("run_state")?,
        host_state: f.state::<HostState>("host_state")?,
        created_ts: f.time("created_ts")?,
        updated_ts: f.time("updated_ts")?,
        finish_ts: f.opt_time("finish_ts")?,
    })
}

/// The cancel request stored in a row of `runs` (columns `cancel_by`, `cancel_ts`), if any.
pub(crate) fn cancel_request(
    run: &RunId,
    row: &impl RowExt,
) -> Result<Option<CancelRequest>, StoreError> {
    let f = Fields {
        row,
        what: format!("run {run}"),
    };
    match f.opt_text("cancel_by")? {
        None => Ok(None),
        Some(by) => Ok(Some(CancelRequest {
            by,
            ts: f.time("cancel_ts")?,
        })),
    }
}

/// An approval from a row of `run_approvals`.
pub(crate) fn approval(row: &impl RowExt) -> Result<deployer_core::Approval, StoreError> {
    let mut f = Fields {
        row,
        what: "an approval".to_string(),
    };
    let run_text = f.text("run_id")?;
    let step = f.text("step")?;
    f.what = format!("run {run_text}: approval of step {step}");
    let run: RunId = run_text
        .parse()
        .map_err(|_| f.fail("run_id", "not a run id (expected a UUID)"))?;
    let approvers: deployer_core::Approvers =
        serde_json::from_str(&f.text("approvers")?).map_err(|e| f.fail("approvers", e))?;
    let decision = match f.opt_text("decided_by")? {
        None => None,
        Some(by) => Some(deployer_core::Decision {
            by,
            at: f.time("decided_ts")?,
            approved: f.int("approved")? != 0,
            comment: f.opt_text("comment")?,
        }),
    };
    Ok(deployer_core::Approval {
        request: deployer_core::ApprovalRequest {
            run,
            step,
            message: f.text("message")?,
            target: f.opt_text("target")?,
            approvers,
            four_eyes: f.int("four_eyes")? != 0,
            started_by: f.text("started_by")?,
            expires_ts: f.opt_time("expires_ts")?,
        },
        requested_ts: f.time("requested_ts")?,
        decision,
    })
}

/// A host record from a row of `run_hosts` of run `run`.
pub(crate) fn host_record(run: &RunId, row: &impl RowExt) -> Result<HostRecord, StoreError> {
    let mut f = Fields {
        row,
        what: format!("run {run}: a host"),
    };
    let host = f.text("host")?;
    f.what = format!("run {run}: host {host}");
    Ok(HostRecord {
        state: f.state::<HostState>("state")?,
        updated_ts: f.time("updated_ts")?,
        finish_ts: f.opt_time("finish_ts")?,
        host,
    })
}

/// A task record from a row of `run_tasks` of run `run`.
pub(crate) fn task_record(run: &RunId, row: &impl RowExt) -> Result<TaskRecord, StoreError> {
    let mut f = Fields {
        row,
        what: format!("run {run}: a task"),
    };
    let step: i64 = f.int("step")?;
    let id = TaskId {
        stage: f.count("stage")?,
        entry: f.count("entry")?,
        step: if step < 0 {
            None
        } else {
            Some(f.count_of("step", step)?)
        },
    };
    f.what = format!("run {run}: task {id}");
    Ok(TaskRecord {
        id,
        host: f.text("host")?,
        tag: f.opt_text("tag")?,
        command: f.text("command")?,
        history_key: f.text("history_key")?,
        state: f.state::<TaskState>("state")?,
        attempts: f.count("attempts")?,
        started_ts: f.opt_time("started_ts")?,
        finished_ts: f.opt_time("finished_ts")?,
        duration: f
            .opt_count::<u64>("duration_us")?
            .map(Duration::from_micros),
        exit_status: f.opt_count::<i32>("exit_status")?,
        stderr_tail: f.opt_text("stderr_tail")?,
        output_tail: f.opt_text("output_tail")?,
        error: f.opt_text("error")?,
        finish_ts: f.opt_time("finish_ts")?,
        drive: f.opt_count("drive")?,
        worker: f.opt_text("worker")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_in_microseconds() {
        for t in [
            UNIX_EPOCH,
            UNIX_EPOCH + Duration::from_micros(1_700_000_000_123_456),
            UNIX_EPOCH - Duration::from_micros(86_400_000_001),
        ] {
            assert_eq!(time(micros(t), "t").unwrap(), t);
        }
        let nanos = UNIX_EPOCH + Duration::from_nanos(1_500);
        assert_eq!(micros(nanos), 1, "sub-microsecond parts are dropped");
        assert!(matches!(
            time(i64::MIN, "t"),
            Ok(_) | Err(StoreError::Corrupt { .. })
        ));
        assert_eq!(ttl_micros(Duration::ZERO), 1);
        assert_eq!(ttl_micros(Duration::MAX), duration_micros(MAX_TTL));
        assert!(
            now_micros()
                .checked_add(ttl_micros(Duration::MAX))
                .is_some()
        );
    }

    /// Migrations are append-only: an applied one never changes (sqlx refuses a database whose
    /// recorded checksum differs, so editing one would lock every existing store out). A schema
    /// change is a new file, `0003_….sql`, and a bump of `SCHEMA_VERSION`.
    #[test]
    fn applied_migrations_never_change() {
        let released = [
            (
                1,
                "76d91b18ee1c5eccbf8becb5e9ebe8faac7719671800d302ca7570b084973ef463398542c7f0de6735d833f84c287009",
            ),
            (
                2,
                "52053dd60a65f9721b1036f1d561cdff9c4bc810bc635032aec5f20088109be3edd02820b441180dc0a2ad354ac01529",
            ),
            (
                3,
                "a70bd5483b20dfd7e7a2dafd7ba2c8a0f8db47ada2cadeb01bb4ec8277fdf927f8509b866f41bf32452770b2a5c275c0",
            ),
            (
                4,
                "91f0aa89fda90431929377c70bf1946146c7c272f1f25861654147c5af100df5d0a8e569846ed982228040ca58109b91",
            ),
            (
                5,
                "3ff59996bec707b2361de4add886342b8e9e7a61f7b9492ed7dad562544dfe196e640f2a54390ab9f417b606a0484afe",
            ),
            (
                6,
                "adf30e6920553bc57d9697115b1a030f95a047d492661a26094c9e44c2cb314ee40225893334f10e6538f09f483bdf72",
            ),
            (
                7,
                "81504d06f3fd93b9201e576eafbd503f54adb671b16ba0c8b80c2e52780686e53b26247dced8c5b044d798d37165da1f",
            ),
        ];
        let migrator = migrator();
        for (version, sha384) in released {
            let migration = migrator
                .iter()
                .find(|m| m.version == version)
                .expect("a released migration is never removed");
            let hex: String = migration
                .checksum
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(hex, sha384, "migration {version} was edited");
        }
    }

    /// The task counts of a page of runs classify like the records would.
    #[test]
    fn task_categories_mirror_of_record() {
        let info = deployer_core::TaskInfo {
            id: TaskId {
                stage: 0,
                entry: 0,
                step: None,
            },
            host: "fe001".to_string(),
            tag: None,
            command: "upload".to_string(),
        };
        use TaskState as S;
        for state in [
            S::Pending,
            S::Running,
            S::Succeeded,
            S::Skipped,
            S::Failed,
            S::TimedOut,
            S::Cancelled,
            S::NotRun,
            S::RolledBack,
            S::Dropped,
        ] {
            for (drive, earlier) in [
                (None, false),
                (Some(1), true),
                (Some(2), false),
                (Some(3), false),
            ] {
                let mut record = TaskRecord::pending(&info);
                record.state = state;
                record.drive = drive;
                assert_eq!(
                    task_category(state, earlier),
                    TaskCategory::of_record(&record, 2),
                    "{state} drive {drive:?}"
                );
            }
        }
    }

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        let expected: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions, expected);
    }
}
