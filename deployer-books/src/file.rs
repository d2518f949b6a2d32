//! Book files: YAML or JSON (JSON is read as YAML), one book per file, parsed with
//! serde-saphyr so every mistake carries its line and column.

use std::collections::HashMap;
use std::time::Duration;

use indexmap::IndexMap;
use serde::Deserialize;
use serde_json::{Map, Value};
use serde_saphyr::Spanned;

use super::error::{BookError, BookProblem};
use super::model::{Book, ChildBook, CommandStep, DEFAULT_OVER_STOP, Step, StepKind};

/// Where things are in a file: a path (`steps[2].command`) → line and column.
pub(crate) type Locations = HashMap<String, (u64, u64)>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BookDoc {
    name: Spanned<String>,
    version: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    deployment_group_type: Option<String>,
    #[serde(default)]
    deployment_type: Option<String>,
    #[serde(default)]
    should_notify: bool,
    #[serde(default)]
    steps: Vec<Spanned<StepDoc>>,
    #[serde(default)]
    on_failure: Vec<Spanned<StepDoc>>,
    #[serde(default)]
    always: Vec<Spanned<StepDoc>>,
}

fn default_over_stop() -> u32 {
    DEFAULT_OVER_STOP
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepDoc {
    name: Spanned<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    sequence: i64,
    #[serde(default)]
    manual: bool,
    #[serde(default)]
    command: Option<Spanned<String>>,
    #[serde(default)]
    args: Option<Spanned<Map<String, Value>>>,
    #[serde(default)]
    hosts: Option<Spanned<String>>,
    #[serde(default)]
    concurrency: Option<usize>,
    #[serde(default)]
    concurrency_per_host: Option<usize>,
    #[serde(default)]
    book: Option<Spanned<String>>,
    #[serde(default)]
    version: Option<Spanned<String>>,
    #[serde(default)]
    step: Option<Spanned<String>>,
    #[serde(default)]
    estimated_duration: f64,
    #[serde(default = "default_over_stop")]
    estimated_duration_over_stop: u32,
    #[serde(default)]
    applies: Option<Spanned<String>>,
    #[serde(default)]
    data: IndexMap<String, Spanned<String>>,
    #[serde(default)]
    retries: u32,
    #[serde(default)]
    approvers: Option<Spanned<ApproversDoc>>,
    #[serde(default)]
    four_eyes: Option<bool>,
    #[serde(default)]
    expires_after: Option<Spanned<f64>>,
}

/// `approvers: developer` (a role) or `approvers: [bob, carol]` (users).
#[derive(Deserialize)]
#[serde(untagged)]
enum ApproversDoc {
    Role(String),
    Users(Vec<String>),
}

fn at<T>(s: &Spanned<T>) -> (u64, u64) {
    (s.referenced.line(), s.referenced.column())
}

/// Parses one book; returns it with the locations of its parts.
pub(crate) fn parse(text: &str, origin: &str) -> Result<(Book, Locations), BookError> {
    let problem = |line: u64, column: u64, path: &str, message: String| BookProblem {
        origin: origin.to_string(),
        line,
        column,
        path: path.to_string(),
        message,
    };
    let doc: BookDoc = serde_saphyr::from_str(text).map_err(|e| {
        let (line, column) = e
            .location()
            .map(|l| (l.line(), l.column()))
            .unwrap_or((0, 0));
        BookError::Invalid {
            problems: vec![problem(line, column, "", e.to_string())],
        }
    })?;
    let mut locs = Locations::new();
    let mut problems = Vec::new();
    locs.insert("name".into(), at(&doc.name));
    locs.insert("version".into(), at(&doc.version));
    let version = match doc.version.value.trim().parse::<semver::Version>() {
        Ok(v) => v,
        Err(e) => {
            let (l, c) = at(&doc.version);
            problems.push(problem(
                l,
                c,
                "version",
                format!(
                    "{} is not a semantic version (expected MAJOR.MINOR.PATCH such as 1.2.0): {e}",
                    deployer_core::shown(&doc.version.value)
                ),
            ));
            semver::Version::new(0, 0, 0)
        }
    };
    let mut book = Book::new(doc.name.value.clone(), version);
    book.description = doc.description;
    book.deployment_group_type = doc.deployment_group_type;
    book.deployment_type = doc.deployment_type;
    book.should_notify = doc.should_notify;
    for (key, docs) in [
        ("steps", doc.steps),
        ("on_failure", doc.on_failure),
        ("always", doc.always),
    ] {
        for (i, s) in docs.into_iter().enumerate() {
            if let Some(step) = parse_step(key, i, s, &mut locs, &mut problems, &problem) {
                match key {
                    "steps" => book.steps.push(step),
                    "on_failure" => book.on_failure.push(step),
                    _ => book.always.push(step),
                }
            }
        }
    }
    if problems.is_empty() {
        Ok((book, locs))
    } else {
        Err(BookError::Invalid { problems })
    }
}

/// One step of a section (`steps`, `on_failure`, `always`); `None` when its kind is unclear.
fn parse_step(
    key: &str,
    i: usize,
    s: Spanned<StepDoc>,
    locs: &mut Locations,
    problems: &mut Vec<BookProblem>,
    problem: &impl Fn(u64, u64, &str, String) -> BookProblem,
) -> Option<Step> {
    let p = format!("{key}[{i}]");
    locs.insert(p.clone(), at(&s));
    let (sl, sc) = at(&s);
    let s = s.value;
    locs.insert(format!("{p}.name"), at(&s.name));
    let kinds = [s.manual, s.command.is_some(), s.book.is_some()]
        .iter()
        .filter(|k| **k)
        .count();
    if kinds != 1 {
        problems.push(problem(
            sl,
            sc,
            &p,
            format!(
                "step \"{}\" must have exactly one of `command`, `book` or `manual: true`",
                s.name.value
            ),
        ));
        return None;
    }
    let mut misplaced = Vec::new();
    let mut approval = super::model::ApprovalRule::default();
    if !s.manual {
        for (key, set) in [
            ("approvers", s.approvers.is_some()),
            ("four_eyes", s.four_eyes.is_some()),
            ("expires_after", s.expires_after.is_some()),
        ] {
            if set {
                misplaced.push(key);
            }
        }
    } else {
        approval.four_eyes = s.four_eyes.unwrap_or(false);
        if let Some(a) = &s.approvers {
            let (l, c) = at(a);
            locs.insert(format!("{p}.approvers"), (l, c));
            let mut bad =
                |message: String| problems.push(problem(l, c, &format!("{p}.approvers"), message));
            approval.approvers = match &a.value {
                ApproversDoc::Role(role) => {
                    if !super::model::APPROVER_ROLES.contains(&role.as_str()) {
                        bad(format!(
                            "{} is not a role (expected {}, or a list of user names such as [bob, carol])",
                            deployer_core::shown(role),
                            super::model::APPROVER_ROLES.join(", ")
                        ));
                    }
                    deployer_core::Approvers::Role(role.clone())
                }
                ApproversDoc::Users(users) => {
                    if users.is_empty() {
                        bad("an empty list: nobody could approve the step (expected a role or at least one user name)".to_string());
                    } else if let Some(u) = users.iter().find(|u| u.trim().is_empty()) {
                        bad(format!("user name {} is blank", deployer_core::shown(u)));
                    }
                    deployer_core::Approvers::Users(users.clone())
                }
            };
        }
        if let Some(e) = &s.expires_after {
            let (l, c) = at(e);
            locs.insert(format!("{p}.expires_after"), (l, c));
            match Duration::try_from_secs_f64(e.value)
                .ok()
                .filter(|d| !d.is_zero() && *d <= deployer_core::Task::TIMEOUT_MAX)
            {
                Some(d) => approval.expires_after = Some(d),
                None => problems.push(problem(
                    l,
                    c,
                    &format!("{p}.expires_after"),
                    format!(
                        "found {:?} (expected a number of seconds above 0, at most {} ({} days))",
                        e.value,
                        deployer_core::Task::TIMEOUT_MAX.as_secs(),
                        deployer_core::Task::TIMEOUT_MAX.as_secs() / 86_400
                    ),
                )),
            }
        }
    }
    let kind = if let Some(command) = &s.command {
        locs.insert(format!("{p}.command"), at(command));
        if let Some(h) = &s.hosts {
            locs.insert(format!("{p}.hosts"), at(h));
        }
        if let Some(a) = &s.args {
            locs.insert(format!("{p}.args"), at(a));
        }
        for (key, set) in [("version", s.version.is_some()), ("step", s.step.is_some())] {
            if set {
                misplaced.push(key);
            }
        }
        StepKind::Command(CommandStep {
            command: command.value.clone(),
            args: s.args.map(|a| a.value).unwrap_or_default(),
            hosts: s.hosts.map(|h| h.value),
            concurrency: s.concurrency.unwrap_or(1),
            concurrency_per_host: s.concurrency_per_host,
        })
    } else {
        for (key, set) in [
            ("args", s.args.is_some()),
            ("hosts", s.hosts.is_some()),
            ("concurrency", s.concurrency.is_some()),
            ("concurrency_per_host", s.concurrency_per_host.is_some()),
        ] {
            if set {
                misplaced.push(key);
            }
        }
        if let Some(child) = &s.book {
            locs.insert(format!("{p}.book"), at(child));
            let version = match &s.version {
                None => semver::VersionReq::STAR,
                Some(v) => {
                    locs.insert(format!("{p}.version"), at(v));
                    match v.value.trim().parse::<semver::VersionReq>() {
                        Ok(r) => r,
                        Err(e) => {
                            let (l, c) = at(v);
                            problems.push(problem(
                                l,
                                c,
                                &format!("{p}.version"),
                                format!(
                                    "{} is not a version requirement (such as ^1.2 or =1.0.3): {e}",
                                    deployer_core::shown(&v.value)
                                ),
                            ));
                            semver::VersionReq::STAR
                        }
                    }
                }
            };
            if let Some(st) = &s.step {
                locs.insert(format!("{p}.step"), at(st));
            }
            StepKind::Book(ChildBook {
                book: child.value.clone(),
                version,
                step: s.step.map(|s| s.value),
            })
        } else {
            for (key, set) in [("version", s.version.is_some()), ("step", s.step.is_some())] {
                if set {
                    misplaced.push(key);
                }
            }
            StepKind::Manual
        }
    };
    if !misplaced.is_empty() {
        problems.push(problem(
            sl,
            sc,
            &p,
            format!(
                "step \"{}\" sets {} which do not apply to its kind",
                s.name.value,
                misplaced.join(", ")
            ),
        ));
    }
    // Checked as the duration it becomes, so nothing rounds to zero (`1e-300` would be
    // 0 ns: "unknown"); exactly 0 is "unknown".
    let estimated_duration = if s.estimated_duration == 0.0 {
        Some(Duration::ZERO)
    } else {
        Duration::try_from_secs_f64(s.estimated_duration)
            .ok()
            .filter(|d| !d.is_zero() && super::model::estimate_allowed(*d))
    };
    if estimated_duration.is_none() {
        problems.push(problem(
            sl,
            sc,
            &format!("{p}.estimated_duration"),
            format!(
                "found {:?} (expected {})",
                s.estimated_duration,
                super::model::estimate_expected()
            ),
        ));
    }
    if let Some(a) = &s.applies {
        locs.insert(format!("{p}.applies"), at(a));
    }
    let mut data = IndexMap::new();
    for (k, v) in s.data {
        locs.insert(format!("{p}.data.{k}"), at(&v));
        data.insert(k, v.value);
    }
    Some(Step {
        name: s.name.value,
        description: s.description,
        sequence: s.sequence,
        kind,
        estimated_duration: estimated_duration.unwrap_or_default(),
        estimated_duration_over_stop: s.estimated_duration_over_stop,
        applies: s.applies.map(|a| a.value),
        data,
        retries: s.retries,
        approval,
    })
}
