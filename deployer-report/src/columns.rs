//! The count columns of the recap and of `deploy runs show`: one per category of
//! [`TaskCounts`], OK and FAILED always, the others only when some row has one.

use std::fmt::Write as _;

use deployer_core::{TaskCategory, TaskCounts};

/// The heading of a category's column.
fn heading(category: TaskCategory) -> &'static str {
    match category {
        TaskCategory::Succeeded => "OK",
        TaskCategory::DoneEarlier => "EARLIER",
        TaskCategory::Skipped => "SKIPPED",
        TaskCategory::Failed => "FAILED",
        TaskCategory::Cancelled => "CANCELLED",
        TaskCategory::NotRun => "NOT RUN",
        TaskCategory::RolledBack => "ROLLED BACK",
        TaskCategory::Dropped => "DROPPED",
        _ => "OTHER",
    }
}

/// The columns a table of these rows shows: (position in [`TaskCounts::categories`], heading).
pub(crate) fn columns<'a>(
    rows: impl IntoIterator<Item = &'a TaskCounts>,
) -> Vec<(usize, &'static str)> {
    let mut any = vec![false; TaskCounts::default().categories().len()];
    for counts in rows {
        for (i, (_, n, _)) in counts.categories().iter().enumerate() {
            any[i] |= *n > 0;
        }
    }
    TaskCounts::default()
        .categories()
        .iter()
        .enumerate()
        .filter(|(i, (c, _, _))| {
            any[*i] || matches!(c, TaskCategory::Succeeded | TaskCategory::Failed)
        })
        .map(|(i, (c, _, _))| (i, heading(*c)))
        .collect()
}

/// Appends the headings.
pub(crate) fn headings(s: &mut String, columns: &[(usize, &str)]) {
    for (_, h) in columns {
        let _ = write!(s, "  {h}");
    }
}

/// Appends one row's counts under the headings.
pub(crate) fn cells(s: &mut String, columns: &[(usize, &str)], counts: &TaskCounts) {
    let all = counts.categories();
    for (i, h) in columns {
        let _ = write!(s, "  {:>w$}", all[*i].1, w = h.len());
    }
}
