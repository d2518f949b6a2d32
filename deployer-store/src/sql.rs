//! What the SQLite and PostgreSQL stores share: the schema's migrations, conversions between
//! records and rows, and the [`RunStore`](deployer_core::RunStore) implementation itself
//! (written once, as a macro expanded for each backend's pool type).

use std::borrow::Cow;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deployer_core::{
    HostRecord, HostState, RunId, RunRecord, RunState, StoreError, TaskId, TaskRecord, TaskState,
    Tasklist,
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
];

/// The schema version this build migrates to.
pub const SCHEMA_VERSION: i64 = 2;

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

fn opt_time(us: Option<i64>, what: &str) -> Result<Option<SystemTime>, StoreError> {
    us.map(|us| time(us, what)).transpose()
}

/// A duration in whole microseconds, saturating.
pub(crate) fn duration_micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// Free-form output (stderr tails, error messages) as stored: NUL characters, which
/// PostgreSQL text cannot hold, become U+FFFD on every backend alike.
pub(crate) fn output_text(text: Option<&str>) -> Option<Cow<'_, str>> {
    text.map(|t| {
        if t.contains('\0') {
            Cow::Owned(t.replace('\0', "\u{FFFD}"))
        } else {
            Cow::Borrowed(t)
        }
    })
}

/// The longest lease: a century (so "now + ttl" cannot overflow a BIGINT).
const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// A lease's length in microseconds, at least 1 and at most [`MAX_TTL`].
pub(crate) fn ttl_micros(ttl: Duration) -> i64 {
    duration_micros(ttl.min(MAX_TTL)).max(1)
}

fn count<T: TryFrom<i64>>(v: i64, what: &str) -> Result<T, StoreError> {
    T::try_from(v).map_err(|_| corrupt(format!("{what}: {v} is out of range")))
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

fn state<S: std::str::FromStr<Err = StoreError>>(text: &str, what: &str) -> Result<S, StoreError> {
    text.parse().map_err(|e| match e {
        StoreError::Corrupt { message } => corrupt(format!("{what}: {message}")),
        other => other,
    })
}

/// A run record from a row of `runs`.
pub(crate) fn run_record(row: &impl RowExt) -> Result<RunRecord, StoreError> {
    let id_text = row.text("id")?;
    let what = format!("run {id_text}");
    let id: RunId = id_text
        .parse()
        .map_err(|_| corrupt(format!("\"{id_text}\" is not a run id")))?;
    let tasklist = Tasklist::from_json_str(&row.text("tasklist")?)
        .map_err(|e| corrupt(format!("{what}: stored tasklist: {e}")))?;
    Ok(RunRecord {
        id,
        name: row.text("name")?,
        source: row.text("source")?,
        started_by: row.text("started_by")?,
        state: state::<RunState>(&row.text("state")?, &what)?,
        tasklist,
        created_ts: time(row.int("created_ts")?, &what)?,
        started_ts: opt_time(row.opt_int("started_ts")?, &what)?,
        finish_ts: opt_time(row.opt_int("finish_ts")?, &what)?,
        owner: row.opt_text("owner")?,
        lease_expires: opt_time(row.opt_int("lease_expires")?, &what)?,
    })
}

/// A host record from a row of `run_hosts`.
pub(crate) fn host_record(row: &impl RowExt) -> Result<HostRecord, StoreError> {
    let host = row.text("host")?;
    let what = format!("host {host}");
    Ok(HostRecord {
        state: state::<HostState>(&row.text("state")?, &what)?,
        updated_ts: time(row.int("updated_ts")?, &what)?,
        finish_ts: opt_time(row.opt_int("finish_ts")?, &what)?,
        host,
    })
}

/// A task record from a row of `run_tasks`.
pub(crate) fn task_record(row: &impl RowExt) -> Result<TaskRecord, StoreError> {
    let step = row.int("step")?;
    let id = TaskId {
        stage: count(row.int("stage")?, "task stage")?,
        entry: count(row.int("entry")?, "task entry")?,
        step: if step < 0 {
            None
        } else {
            Some(count(step, "task step")?)
        },
    };
    let what = format!("task {id}");
    Ok(TaskRecord {
        id,
        host: row.text("host")?,
        tag: row.opt_text("tag")?,
        command: row.text("command")?,
        history_key: row.text("history_key")?,
        state: state::<TaskState>(&row.text("state")?, &what)?,
        attempts: count(row.int("attempts")?, &format!("{what}: attempts"))?,
        started_ts: opt_time(row.opt_int("started_ts")?, &what)?,
        finished_ts: opt_time(row.opt_int("finished_ts")?, &what)?,
        duration: row
            .opt_int("duration_us")?
            .map(|us| count::<u64>(us, &format!("{what}: duration")).map(Duration::from_micros))
            .transpose()?,
        exit_status: row
            .opt_int("exit_status")?
            .map(|s| count::<i32>(s, &format!("{what}: exit status")))
            .transpose()?,
        stderr_tail: row.opt_text("stderr_tail")?,
        error: row.opt_text("error")?,
        finish_ts: opt_time(row.opt_int("finish_ts")?, &what)?,
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

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i64> = MIGRATIONS.iter().map(|m| m.0).collect();
        let expected: Vec<i64> = (1..=SCHEMA_VERSION).collect();
        assert_eq!(versions, expected);
    }
}
