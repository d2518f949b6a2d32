//! The checks of the `cargo fuzz` targets, one function per target.
//!
//! Each takes the raw bytes of one input and panics when a property is broken. The fuzz
//! targets (`fuzz_targets/*.rs`) call them, and so does the stable regression test
//! `tests/tests/fuzz_corpus.rs` of deployer-tests, which compiles this very file (with
//! `#[path]`) and replays the committed corpus through it. Keep this file free of
//! dependencies beyond deployer-core, deployer-commands and serde_json, which both sides
//! have.
//!
//! Input formats (plain files, so corpus entries can be read and written by hand):
//! * `tasklist`: a tasklist's JSON text.
//! * `config`: a config's YAML text, then optionally NUL-separated command-line overrides
//!   `KEY=VALUE` (the value is JSON if it parses, else a string, as `deploy --set` does).
//! * `book`: the YAML/JSON text of one book file, or several separated by NUL bytes (loaded as
//!   one library, in one batch).
//! * `shell_quote`: arguments separated by 0xFF bytes (a byte no UTF-8 text contains).

use std::borrow::Cow;
use std::path::PathBuf;
use std::pin::pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use deployer_books::{BookError, BookLibrary, JobBuilder};
use deployer_core::{
    CommandRegistry, Config, ConfigError, ListedRun, MemoryStore, NewRun, Plan, RunState, RunStore,
    ShellCommand, TaskState, Tasklist, TasklistError, ValidationErrors, quote,
};
use serde_json::Value;

/// The origin the config and book checks give their text (what errors must name).
pub const ORIGIN: &str = "fuzz.yaml";

/// Longest command line the shell check runs: Linux refuses a single `argv` string over
/// 128 KiB (`MAX_ARG_STRLEN`), which says nothing about quoting.
const MAX_COMMAND_LINE: usize = 100_000;

fn registry() -> &'static CommandRegistry {
    static REGISTRY: OnceLock<CommandRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let mut r = CommandRegistry::new();
        deployer_commands::register_all(&mut r);
        r
    })
}

/// Text as the loaders see it: a file that is not UTF-8 fails to read before any parsing,
/// so invalid sequences are replaced to keep the fuzzer's mutations reaching the parsers.
fn text(data: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// Longest problem line a tasklist's validation may print: a hostile value (a 10 MB string, a
/// 10,000-byte key) is shown cut, never whole.
pub const MAX_PROBLEM_LINE: usize = 64 * 1024;

/// Tasklist loading, validation and planning never panic; a syntax error has a line and
/// column; every problem of an input that does not validate is one readable line (see
/// [`assert_readable`]); a tasklist that loads saves canonically: `load(save(x)) == x` and
/// `save(load(save(x))) == save(x)` byte for byte; and a tasklist that plans is recorded in a
/// [`MemoryStore`] and reads back as it was (see [`assert_recorded`]).
///
/// Loading is `Tasklist::from_json_str_checked` with the standard commands, what `deploy`
/// runs: for a tasklist with structural problems, it also reports each well-formed task's
/// argument, host and user problems.
pub fn tasklist(data: &[u8]) {
    let text = text(data);
    let tasklist = match Tasklist::from_json_str_checked(&text, registry()) {
        Ok(t) => t,
        Err(e) => {
            let message = e.to_string();
            match &e {
                TasklistError::Syntax { line, column, .. } => {
                    assert!(*line >= 1, "syntax error without a line: {message}");
                    assert!(
                        message.starts_with(&format!("<tasklist>:{line}:{column}: ")),
                        "{message}"
                    );
                    assert_one_line(&message, "a syntax error");
                }
                TasklistError::Invalid(errors) => {
                    assert!(!errors.is_empty(), "an invalid tasklist with no problem");
                    assert_readable(errors);
                }
                _ => panic!("unexpected error loading text: {message}"),
            }
            return;
        }
    };
    assert_saves_canonically(&tasklist, "a tasklist");
    match Plan::build(&tasklist, registry()) {
        Ok(plan) => {
            assert_eq!(plan.task_count(), tasklist.task_count());
            assert_eq!(
                plan.tasklist(),
                &tasklist,
                "the plan's tasklist is not the input"
            );
            assert_recorded(&plan);
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a plan refused with no problem");
            assert_readable(&errors);
        }
    }
}

/// Every problem prints as one line (`PATH: MESSAGE (expected …)`) with no control character
/// in it — a newline, carriage return or NUL of the input is shown escaped, so one problem
/// cannot pass for several or hide the next — and under [`MAX_PROBLEM_LINE`] bytes; the list
/// prints a count line and then one line per problem.
fn assert_readable(errors: &ValidationErrors) {
    for problem in errors {
        assert_one_line(&problem.to_string(), "a problem");
    }
    let all = errors.to_string();
    assert_eq!(
        all.lines().count(),
        errors.len() + 1,
        "the problems do not print one per line:\n{all}"
    );
}

/// `line` holds no control character and is shorter than [`MAX_PROBLEM_LINE`].
fn assert_one_line(line: &str, what: &str) {
    assert!(
        line.len() < MAX_PROBLEM_LINE,
        "{what} is {} bytes long: {:?}…",
        line.len(),
        line.chars().take(200).collect::<String>()
    );
    if let Some(c) = line.chars().find(|c| c.is_control()) {
        panic!("{what} holds the raw control character {c:?}: {line:?}");
    }
}

/// A plan's run is recorded in a [`MemoryStore`] (what `Runs` does before anything runs) and
/// reads back as it was: listed as a readable [`ListedRun::Run`], read with `run` and `tasks`
/// (one pending record per task of the plan, in order, on the plan's host), its tasklist equal
/// to the plan's tasklist with inline secrets redacted; and that stored copy survives the
/// save/load a SQL store makes (`to_json_string` → `Tasklist::from_stored_json`).
fn assert_recorded(plan: &Plan) {
    let store = MemoryStore::new();
    let new = NewRun::from_plan(plan, "tasklist:fuzz.json", "fuzz");
    let id = new.id.clone();
    let created = now(store.create_run(new)).unwrap_or_else(|e| panic!("create_run: {e}"));
    assert_eq!(created.id, id);
    assert_eq!(created.state, RunState::Pending);
    let listed = now(store.list_runs(10)).unwrap_or_else(|e| panic!("list_runs: {e}"));
    match listed.as_slice() {
        [ListedRun::Run(run)] => assert_eq!(
            run.as_ref(),
            &created,
            "the listed run is not the created one"
        ),
        other => panic!("list_runs gave {other:?}, expected the one run, readable"),
    }
    let run = now(store.run(&id)).unwrap_or_else(|e| panic!("run: {e}"));
    assert_eq!(run, created, "the run read back is not the created one");
    let redacted = plan.tasklist().redacted();
    assert_eq!(
        run.tasklist, redacted,
        "the stored tasklist is not the plan's, redacted"
    );
    let saved = run.tasklist.to_json_string();
    let reloaded = Tasklist::from_stored_json(&saved)
        .unwrap_or_else(|e| panic!("the stored tasklist does not load back: {e}\n{saved}"));
    assert_eq!(
        reloaded, redacted,
        "the stored tasklist changes when saved and loaded"
    );
    let tasks = now(store.tasks(&id)).unwrap_or_else(|e| panic!("tasks: {e}"));
    assert_eq!(tasks.len(), plan.task_count(), "one task record per task");
    for (record, info) in tasks.iter().zip(plan.tasks()) {
        assert_eq!(record.id, info.id);
        assert_eq!(record.host, info.host);
        assert_eq!(record.command, info.command);
        assert_eq!(record.state, TaskState::Pending);
        assert_eq!(record.attempts, 0);
    }
}

/// `tasklist` saves canonically: what it saves loads back equal to it, and saves to the same
/// bytes again. Saved JSON leaves the values of inline secrets out (`{"secret": "***"}`), so
/// that round trip gives [`Tasklist::redacted`]; [`Tasklist::to_json_string_with_secrets`]
/// (what a file to run again holds) gives the tasklist itself.
fn assert_saves_canonically(tasklist: &Tasklist, what: &str) {
    let round_trip = |saved: &str| {
        let again = Tasklist::from_json_str(saved)
            .unwrap_or_else(|e| panic!("{what}: the saved tasklist does not load: {e}\n{saved}"));
        let resaved = again.to_json_string_with_secrets();
        assert_eq!(
            resaved, saved,
            "{what}: saving is not canonical: save(load(save(x))) != save(x)"
        );
        again
    };
    let saved = tasklist.to_json_string();
    let again = round_trip(&saved);
    assert_eq!(
        again,
        tasklist.redacted(),
        "{what}: load(save(x)) != x with secrets redacted; saved:\n{saved}"
    );
    let exposed = tasklist.to_json_string_with_secrets();
    let again = round_trip(&exposed);
    assert_eq!(
        &again, tasklist,
        "{what}: load(save(x)) != x, secrets exposed; saved:\n{exposed}"
    );
}

/// Splits a config input into its YAML text and its overrides.
fn config_input(text: &str) -> (&str, Vec<(String, Value)>) {
    let mut parts = text.split('\0');
    let yaml = parts.next().unwrap_or_default();
    let overrides = parts
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| {
            let value = serde_json::from_str(v).unwrap_or_else(|_| Value::from(v));
            (k.to_string(), value)
        })
        .collect();
    (yaml, overrides)
}

/// Every error of config loading says where: the file with line and column, or the key (which
/// is empty only when an override's key was).
fn assert_located(error: &ConfigError, overrides: &[(String, Value)]) {
    let message = error.to_string();
    match error {
        ConfigError::Yaml {
            origin,
            line,
            column,
            ..
        } => {
            assert_eq!(origin, ORIGIN, "{message}");
            assert!(*line >= 1 && *column >= 1, "no line and column: {message}");
        }
        ConfigError::MissingPlatform { origin } => assert_eq!(origin, ORIGIN, "{message}"),
        ConfigError::Invalid { key, .. } => assert!(
            !key.is_empty() || overrides.iter().any(|(k, _)| k.is_empty()),
            "no key: {message}"
        ),
        _ => panic!("unexpected error loading text: {message}"),
    }
}

/// Config loading with dotted overrides never panics, every error carries a location, and
/// applying the overrides while loading equals loading and then applying them one by one.
pub fn config(data: &[u8]) {
    let text = text(data);
    let (yaml, overrides) = config_input(&text);
    let loaded = Config::from_yaml_str_with(yaml, ORIGIN, overrides.clone());
    match &loaded {
        Err(e) => assert_located(e, &overrides),
        Ok(config) => {
            assert!(!config.platform().is_empty());
            assert_eq!(
                config.get("platform"),
                Some(&Value::from(config.platform()))
            );
            for name in config.services().keys() {
                let _ = config.service_hosts(name).expect("a service of the config");
            }
        }
    }
    if overrides.is_empty() {
        return;
    }
    let stepwise = Config::from_yaml_str(yaml, ORIGIN).and_then(|base| {
        overrides
            .iter()
            .try_fold(base, |c, (k, v)| c.with_override(k, v.clone()))
    });
    match &stepwise {
        Err(e) => assert_located(e, &overrides),
        Ok(stepwise) => {
            let loaded = loaded.as_ref().unwrap_or_else(|e| {
                panic!("overrides applied one by one succeed, applied while loading fail: {e}")
            });
            assert_eq!(loaded, stepwise, "overrides while loading != one by one");
        }
    }
}

/// The scope jobs of fuzzed books are built against: the example deployment's.
fn scope() -> &'static Value {
    static SCOPE: OnceLock<Value> = OnceLock::new();
    SCOPE.get_or_init(|| {
        serde_json::from_str(include_str!("../../examples/books/scope.json"))
            .expect("examples/books/scope.json is JSON")
    })
}

/// Book files load into a library without panicking, every problem names its file; the
/// latest version of every book of a library that loads builds a job against the example
/// scope (or fails cleanly), and the job's tasklist saves canonically.
pub fn book(data: &[u8]) {
    let text = text(data);
    let files: Vec<&str> = text.split('\0').collect();
    let mut library = BookLibrary::with_commands(registry());
    let origins: Vec<String>;
    let result = if let [one] = files.as_slice() {
        origins = vec![ORIGIN.to_string()];
        library.add_str(one, ORIGIN)
    } else {
        let dir = TempDir::new();
        let paths: Vec<PathBuf> = files
            .iter()
            .enumerate()
            .map(|(i, f)| {
                let path = dir.0.join(format!("{i}.yaml"));
                std::fs::write(&path, f).expect("writing a book file");
                path
            })
            .collect();
        origins = paths.iter().map(|p| p.display().to_string()).collect();
        library.load_files(&paths)
    };
    match result {
        Err(BookError::Invalid { problems }) => {
            assert!(!problems.is_empty(), "invalid books with no problem");
            for p in &problems {
                assert!(origins.contains(&p.origin), "problem of no file: {p}");
            }
        }
        Err(
            e
            @ (BookError::VersionConflict { .. } | BookError::Cycle { .. } | BookError::Io { .. }),
        ) => {
            let _ = e.to_string();
        }
        Err(e) => panic!("unexpected error loading books: {e}"),
        Ok(()) => {
            let names: Vec<String> = library.names().map(str::to_string).collect();
            for name in names {
                let builder = JobBuilder::new(&library, name)
                    .scope(scope())
                    .expect("the example scope is an object");
                match now(builder.build()) {
                    Ok(job) => assert_saves_canonically(&job.tasklist(), "a job's tasklist"),
                    Err(e) => {
                        let _ = e.to_string();
                    }
                }
            }
        }
    }
}

/// Polls `future` once: building a job without a history store must not wait, and neither
/// does a [`MemoryStore`].
fn now<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a future that must not wait waited"),
    }
}

/// A directory removed when dropped; in memory (`/dev/shm`) where there is one, since creating
/// files on disk was two thirds of the book target's time.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "deployer-fuzz-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("creating a temporary directory");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The shells a command line is checked with: `/bin/sh` (what `sh -c` runs), and bash when
/// present (the usual login shell, which runs an SSH command line).
fn shells() -> &'static [&'static str] {
    static SHELLS: OnceLock<Vec<&'static str>> = OnceLock::new();
    SHELLS.get_or_init(|| {
        ["/bin/sh", "/bin/bash"]
            .into_iter()
            .filter(|s| std::path::Path::new(s).exists())
            .collect()
    })
}

/// The shell receives exactly the arguments the deployer quoted: a `printf '%s\0' ARGS...`
/// command line built with [`ShellCommand`] prints every argument byte for byte through each
/// shell of [`shells`]. Arguments are `String`s, so invalid UTF-8 cannot be passed at all (an
/// input chunk that is not UTF-8 is checked in its lossy form); an argument with a NUL byte,
/// which no shell can receive, must be refused by [`quote`] and by [`ShellCommand::build`].
pub fn shell_quote(data: &[u8]) {
    let mut args = Vec::new();
    for chunk in data.split(|b| *b == 0xFF) {
        let arg = String::from_utf8_lossy(chunk).into_owned();
        if arg.contains('\0') {
            assert!(quote(&arg).is_err(), "quote accepted a NUL byte: {arg:?}");
            assert!(
                ShellCommand::new("printf").arg(&arg).build().is_err(),
                "ShellCommand accepted a NUL byte: {arg:?}"
            );
        } else {
            args.push(arg);
        }
    }
    for arg in &args {
        let quoted = quote(arg).unwrap_or_else(|e| panic!("quote refused {arg:?}: {e}"));
        assert!(!quoted.is_empty(), "{arg:?} quoted to nothing");
    }
    let line = ShellCommand::new("printf")
        .arg("%s\\0")
        .args(args.iter().cloned())
        .build()
        .unwrap_or_else(|e| panic!("ShellCommand refused {args:?}: {e}"));
    if line.len() > MAX_COMMAND_LINE {
        return;
    }
    // `printf FORMAT` with no argument still prints the format once.
    let expected: Vec<u8> = if args.is_empty() {
        vec![0]
    } else {
        args.iter()
            .flat_map(|a| a.bytes().chain(std::iter::once(0)))
            .collect()
    };
    for shell in shells() {
        let out = std::process::Command::new(shell)
            .arg("-c")
            .arg(&line)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {shell}: {e}"));
        assert!(
            out.status.success(),
            "{shell} -c {line:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == expected,
            "{shell} -c {line:?} received {:?}, expected {args:?}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
