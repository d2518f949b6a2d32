//! The book library: every version of every book, checked as a whole.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use petgraph::graph::{DiGraph, NodeIndex};
use semver::{Version, VersionReq};

use deployer_core::CommandRegistry;

use super::error::{BookError, BookProblem};
use super::expr::Expr;
use super::file::{self, Locations};
use super::model::{Book, StepKind};

/// A registered book with what was compiled from it.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) book: Arc<Book>,
    pub(crate) compiled: Arc<Vec<CompiledStep>>,
    origin: String,
    locs: Arc<Locations>,
}

/// The compiled expressions of one step (same index as in `Book::all_steps`: the ordinary
/// steps, then `on_failure`, then `always`).
#[derive(Debug, Clone, Default)]
pub(crate) struct CompiledStep {
    pub(crate) applies: Option<Expr>,
    pub(crate) hosts: Option<Expr>,
    pub(crate) data: Vec<(String, Expr)>,
}

impl Entry {
    fn new(book: Book, origin: Option<String>, locs: Locations) -> Self {
        Entry {
            origin: origin.unwrap_or_else(|| book.id()),
            book: Arc::new(book),
            compiled: Arc::new(Vec::new()),
            locs: Arc::new(locs),
        }
    }

    /// Where `path` (`steps[2].data.source`) is: `FILE:LINE:COLUMN` for a book from a file,
    /// `FILE` or `name@version` when the position is unknown.
    pub(crate) fn location(&self, path: &str) -> String {
        let p = self.problem(path, "");
        if p.line > 0 {
            format!("{}:{}:{}", p.origin, p.line, p.column)
        } else {
            p.origin
        }
    }

    fn problem(&self, path: &str, message: impl Into<String>) -> BookProblem {
        let mut key = path;
        let (line, column) = loop {
            if let Some(l) = self.locs.get(key) {
                break *l;
            }
            match key.rfind(['.', '[']) {
                Some(i) => key = &key[..i],
                None => break (0, 0),
            }
        };
        BookProblem {
            origin: self.origin.clone(),
            line,
            column,
            path: path.to_string(),
            message: message.into(),
        }
    }
}

/// Every version of every book, checked as a whole: step names are unique, commands are
/// registered, expressions compile, child books exist, and no books call each other in a
/// cycle.
///
/// Registering a book under a new version keeps the earlier ones (its history); registering
/// a *changed* book under a version already registered is an error, and registering the same
/// book again does nothing. Lookups take an exact version or a requirement such as `^1.2`
/// (the highest match wins).
///
/// ```
/// use deployer_books::{Book, BookLibrary, Step};
///
/// let mut library = BookLibrary::new();
/// library.register(Book::new("pause", "1.0.0".parse().unwrap())
///     .step(Step::manual("confirm"))).unwrap();
/// library.register(Book::new("pause", "1.1.0".parse().unwrap())
///     .step(Step::manual("confirm"))
///     .step(Step::manual("announce"))).unwrap();
///
/// assert_eq!(library.get("pause", &"^1.0".parse().unwrap()).unwrap().version.to_string(), "1.1.0");
/// assert_eq!(library.history("pause").len(), 2);
///
/// // A changed book needs a new version.
/// let err = library.register(Book::new("pause", "1.1.0".parse().unwrap())).unwrap_err();
/// assert!(err.to_string().contains("pause@1.1.0 is already registered"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct BookLibrary {
    books: BTreeMap<String, BTreeMap<Version, Entry>>,
    commands: Option<BTreeSet<String>>,
}

impl BookLibrary {
    /// An empty library that does not check command names (jobs still do, when they are
    /// planned).
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty library whose command steps must name a command of `registry`.
    pub fn with_commands(registry: &CommandRegistry) -> Self {
        BookLibrary {
            books: BTreeMap::new(),
            commands: Some(registry.names().map(str::to_string).collect()),
        }
    }

    /// Registers a book built in code.
    pub fn register(&mut self, book: Book) -> Result<(), BookError> {
        self.register_entries(vec![Entry::new(book, None, Locations::new())])
    }

    /// Registers several books at once (they may call each other); nothing is registered
    /// when one has a problem.
    pub fn register_all(&mut self, books: impl IntoIterator<Item = Book>) -> Result<(), BookError> {
        self.register_entries(
            books
                .into_iter()
                .map(|b| Entry::new(b, None, Locations::new()))
                .collect(),
        )
    }

    /// Registers the book of a YAML or JSON text; `origin` names it in errors (a file name).
    ///
    /// # File format
    ///
    /// One book per file. A step has exactly one of `command`, `book` or `manual: true`.
    /// `on_failure` and `always` list clean-up steps (commands or books, not manual) that run
    /// after the steps: `on_failure` only when the job failed, was rejected or cancelled,
    /// `always` in any case (see [`Book::on_failure`]). Step names are unique across the three
    /// lists;
    /// expressions (`applies`, `hosts`, `data` values) are CEL over the scope's top-level
    /// keys, and a missing key is an error (test for an optional one with `has(x.key)`);
    /// durations are seconds.
    ///
    /// ```
    /// use deployer_books::{BookLibrary, StepKind};
    ///
    /// let mut library = BookLibrary::new();
    /// library.add_str("name: pause\nversion: 1.0.0\nsteps: [{name: stop, manual: true}]\n",
    ///     "pause.yaml").unwrap();
    /// library.add_str(r#"
    /// name: deploy
    /// version: 1.2.0
    /// description: Release the current image
    /// deployment_group_type: odoo        # optional filters
    /// deployment_type: odoo
    /// should_notify: true
    /// steps:
    /// - name: pause
    ///   book: pause                      # a child book, inlined when the job is built
    ///   version: ^1                      # default: any; `step: NAME` calls one step
    /// - name: approve
    ///   manual: true
    ///   description: Check the backup
    /// - name: restart
    ///   command: restart_service         # a registered command
    ///   args: {service: web}
    ///   hosts: cluster.hosts             # default: once, on the controller
    ///   concurrency: 2                   # default: 1
    ///   concurrency_per_host: 1          # default: no limit
    ///   applies: deployment.scope == 'production'
    ///   data: {url: "'https://' + deployment.subdomain + '.' + deployment.domain"}
    ///   sequence: 30                     # default: 0, ties keep the file's order
    ///   estimated_duration: 20           # default: 0, unknown
    ///   estimated_duration_over_stop: 5  # default: 10
    ///   retries: 2                       # default: 0
    /// on_failure:                        # clean-up when the job fails or is cancelled
    /// - name: tell
    ///   command: execute_command
    ///   args: {command_line: "echo failed"}
    /// always:                            # clean-up in any case, after on_failure
    /// - name: resume
    ///   command: restart_service
    ///   args: {service: web}
    ///   hosts: cluster.hosts
    /// "#, "deploy.yaml").unwrap();
    /// let deploy = library.latest("deploy").unwrap();
    /// assert!(matches!(&deploy.steps[2].kind, StepKind::Command(c) if c.concurrency == 2));
    /// ```
    pub fn add_str(&mut self, text: &str, origin: &str) -> Result<(), BookError> {
        let (book, locs) = file::parse(text, origin)?;
        self.register_entries(vec![Entry::new(book, Some(origin.to_string()), locs)])
    }

    /// Registers the book of a YAML or JSON file.
    pub fn load_file(&mut self, path: impl AsRef<Path>) -> Result<(), BookError> {
        self.load_files([path.as_ref()])
    }

    /// Registers the books of several files at once (they may call each other); nothing is
    /// registered when one has a problem, and every problem is reported.
    pub fn load_files<P: AsRef<Path>>(
        &mut self,
        paths: impl IntoIterator<Item = P>,
    ) -> Result<(), BookError> {
        let mut entries = Vec::new();
        let mut problems = Vec::new();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|source| BookError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let origin = path.display().to_string();
            match file::parse(&text, &origin) {
                Ok((book, locs)) => entries.push(Entry::new(book, Some(origin), locs)),
                Err(BookError::Invalid { problems: p }) => problems.extend(p),
                Err(e) => return Err(e),
            }
        }
        if !problems.is_empty() {
            return Err(BookError::Invalid { problems });
        }
        self.register_entries(entries)
    }

    /// Registers every `*.yaml`, `*.yml` and `*.json` file of `dir` (not recursive), as
    /// [`load_files`](Self::load_files) does.
    pub fn load_dir(&mut self, dir: impl AsRef<Path>) -> Result<(), BookError> {
        let dir = dir.as_ref();
        let io = |source| BookError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut paths: Vec<PathBuf> = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let path = entry.map_err(io)?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext, "yaml" | "yml" | "json") && path.is_file() {
                paths.push(path);
            }
        }
        paths.sort();
        self.load_files(paths)
    }

    /// The highest version of `name` matching `requirement`.
    pub fn get(&self, name: &str, requirement: &VersionReq) -> Option<&Book> {
        self.entry(name, requirement).map(|e| &*e.book)
    }

    /// `name` at exactly `version`.
    pub fn get_exact(&self, name: &str, version: &Version) -> Option<&Book> {
        self.books.get(name)?.get(version).map(|e| &*e.book)
    }

    /// The highest version of `name`.
    pub fn latest(&self, name: &str) -> Option<&Book> {
        self.get(name, &VersionReq::STAR)
    }

    /// Every version of `name`, oldest first.
    pub fn history(&self, name: &str) -> Vec<&Book> {
        self.books
            .get(name)
            .map(|v| v.values().map(|e| &*e.book).collect())
            .unwrap_or_default()
    }

    /// The names of the books, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.books.keys().map(String::as_str)
    }

    /// The latest version of every book whose filters admit a group of `group_type` and a
    /// deployment of `deployment_type`.
    pub fn available_for(&self, group_type: &str, deployment_type: &str) -> Vec<&Book> {
        self.names()
            .filter_map(|n| self.latest(n))
            .filter(|b| {
                b.deployment_group_type
                    .as_deref()
                    .is_none_or(|t| t == group_type)
                    && b.deployment_type
                        .as_deref()
                        .is_none_or(|t| t == deployment_type)
            })
            .collect()
    }

    pub(crate) fn entry(&self, name: &str, requirement: &VersionReq) -> Option<&Entry> {
        self.books
            .get(name)?
            .iter()
            .rev()
            .find(|(v, _)| requirement.matches(v))
            .map(|(_, e)| e)
    }

    pub(crate) fn versions(&self, name: &str) -> Vec<Version> {
        self.books
            .get(name)
            .map(|v| v.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn register_entries(&mut self, entries: Vec<Entry>) -> Result<(), BookError> {
        let mut problems = Vec::new();
        let mut books = self.books.clone();
        for mut entry in entries {
            let compiled = self.check_book(&entry, &mut problems);
            entry.compiled = Arc::new(compiled);
            let versions = books.entry(entry.book.name.clone()).or_default();
            match versions.get(&entry.book.version) {
                Some(existing) if existing.book == entry.book => {}
                Some(_) => {
                    return Err(BookError::VersionConflict {
                        name: entry.book.name.clone(),
                        version: entry.book.version.clone(),
                    });
                }
                None => {
                    versions.insert(entry.book.version.clone(), entry);
                }
            }
        }
        // Child books must exist, with the step asked for: in the books added, and in those
        // already registered (a new version of a child may lack a step they call).
        let all: Vec<&Entry> = books.values().flat_map(|v| v.values()).collect();
        for entry in all {
            for (p, step) in entry.book.all_steps() {
                let StepKind::Book(child) = &step.kind else {
                    continue;
                };
                let found = books.get(&child.book).and_then(|v| {
                    v.iter()
                        .rev()
                        .find(|(v, _)| child.version.matches(v))
                        .map(|(_, e)| e)
                });
                match found {
                    None => {
                        let available: Vec<String> = books
                            .get(&child.book)
                            .map(|v| v.keys().map(ToString::to_string).collect())
                            .unwrap_or_default();
                        let mut message = format!(
                            "step \"{}\" calls book \"{}\" {}, which is not registered",
                            step.name, child.book, child.version
                        );
                        if !available.is_empty() {
                            message.push_str(&format!(
                                " (registered versions: {})",
                                available.join(", ")
                            ));
                        } else if let Some(s) = deployer_core::did_you_mean(
                            &child.book,
                            books.keys().map(String::as_str),
                        ) {
                            message.push_str(&format!("; did you mean \"{s}\"?"));
                        }
                        problems.push(entry.problem(&format!("{p}.book"), message));
                    }
                    Some(c) => {
                        if let Some(only) = &child.step
                            && !c.book.steps.iter().any(|s| &s.name == only)
                        {
                            problems.push(entry.problem(
                                &format!("{p}.step"),
                                format!("book {} has no step \"{only}\"", c.book.id()),
                            ));
                        }
                    }
                }
            }
        }
        if !problems.is_empty() {
            return Err(BookError::Invalid { problems });
        }
        if let Some(cycle) = find_cycle(&books) {
            return Err(BookError::Cycle { cycle });
        }
        self.books = books;
        Ok(())
    }

    /// Checks one book on its own and compiles its expressions.
    fn check_book(&self, entry: &Entry, problems: &mut Vec<BookProblem>) -> Vec<CompiledStep> {
        let book = &entry.book;
        if book.name.trim().is_empty() {
            problems.push(entry.problem("name", "the book's name is empty"));
        } else if book.name.contains('/') || book.name.contains('@') {
            problems.push(entry.problem("name", "a book's name cannot contain '/' or '@'"));
        }
        let mut seen: HashMap<&str, String> = HashMap::new();
        let mut compiled = Vec::new();
        for (p, step) in book.all_steps() {
            if step.name.trim().is_empty() || step.name.contains('/') {
                problems.push(entry.problem(
                    &format!("{p}.name"),
                    "a step's name must be non-empty and cannot contain '/'",
                ));
            } else if let Some(first) = seen.insert(&step.name, p.clone()) {
                problems.push(entry.problem(
                    &format!("{p}.name"),
                    format!("step name \"{}\" is already used by {first}", step.name),
                ));
            }
            if !p.starts_with("steps[") && matches!(step.kind, StepKind::Manual) {
                problems.push(entry.problem(
                    &p,
                    format!(
                        "clean-up step \"{}\" cannot be manual: clean-up runs after a failure \
                         or a cancel, when nobody may be there to acknowledge it (expected a \
                         `command` or a `book`)",
                        step.name
                    ),
                ));
            }
            if !super::model::estimate_allowed(step.estimated_duration) {
                problems.push(entry.problem(
                    &format!("{p}.estimated_duration"),
                    format!(
                        "found {:?} (expected {})",
                        step.estimated_duration,
                        super::model::estimate_expected()
                    ),
                ));
            }
            if step.retries > deployer_core::Task::RETRIES_MAX {
                problems.push(entry.problem(
                    &format!("{p}.retries"),
                    format!(
                        "found {} (expected an integer from 0 to {})",
                        step.retries,
                        deployer_core::Task::RETRIES_MAX
                    ),
                ));
            }
            if step.estimated_duration_over_stop == 0 {
                problems.push(entry.problem(
                    &format!("{p}.estimated_duration_over_stop"),
                    "must be at least 1",
                ));
            }
            let mut compile = |path: String, source: &str| -> Option<Expr> {
                match Expr::compile(source) {
                    Ok(e) => Some(e),
                    Err(e) => {
                        problems.push(entry.problem(
                            &path,
                            format!(
                                "invalid expression {}: line {}, column {} of the expression: {}",
                                deployer_core::shown(source),
                                e.line,
                                e.column,
                                e.message
                            ),
                        ));
                        None
                    }
                }
            };
            let mut c = CompiledStep {
                applies: step
                    .applies
                    .as_deref()
                    .and_then(|s| compile(format!("{p}.applies"), s)),
                ..CompiledStep::default()
            };
            for (k, v) in &step.data {
                if let Some(e) = compile(format!("{p}.data.{k}"), v) {
                    c.data.push((k.clone(), e));
                }
            }
            if let StepKind::Command(cmd) = &step.kind {
                c.hosts = cmd
                    .hosts
                    .as_deref()
                    .and_then(|s| compile(format!("{p}.hosts"), s));
                if cmd.command == super::run::MANUAL_COMMAND {
                    problems.push(entry.problem(
                        &format!("{p}.command"),
                        "\"manual\" is the built-in command of manual steps; write `manual: true`",
                    ));
                } else if cmd.command == super::run::STARTED_COMMAND {
                    problems.push(entry.problem(
                        &format!("{p}.command"),
                        format!(
                            "\"{}\" is the built-in command that arms a called book's clean-up",
                            super::run::STARTED_COMMAND
                        ),
                    ));
                } else if let Some(known) = &self.commands
                    && !known.contains(&cmd.command)
                {
                    let mut message =
                        format!("unknown command {}", deployer_core::shown(&cmd.command));
                    if let Some(s) =
                        deployer_core::did_you_mean(&cmd.command, known.iter().map(String::as_str))
                    {
                        message.push_str(&format!("; did you mean \"{s}\"?"));
                    }
                    problems.push(entry.problem(&format!("{p}.command"), message));
                }
                if cmd.concurrency == 0 {
                    problems.push(entry.problem(&format!("{p}.concurrency"), "must be at least 1"));
                }
                if cmd.concurrency_per_host == Some(0) {
                    problems.push(
                        entry.problem(&format!("{p}.concurrency_per_host"), "must be at least 1"),
                    );
                }
                for k in cmd.args.keys().chain(step.data.keys()) {
                    if deployer_core::RESERVED_TASK_KEYS.contains(&k.as_str()) {
                        problems.push(entry.problem(
                            &format!("{p}.args"),
                            format!(
                                "\"{k}\" is a task key, not a command argument; the step sets it"
                            ),
                        ));
                    }
                }
                for k in step.data.keys() {
                    if cmd.args.contains_key(k) {
                        problems.push(entry.problem(
                            &format!("{p}.data.{k}"),
                            format!("\"{k}\" is both an argument and a data key"),
                        ));
                    }
                }
            }
            if matches!(step.kind, StepKind::Book(_)) && !step.data.is_empty() {
                problems.push(entry.problem(
                    &format!("{p}.data"),
                    "a step calling a book has no data of its own; set data on the called steps",
                ));
            }
            compiled.push(c);
        }
        compiled
    }
}

/// A cycle of book names, if books (at any versions) call each other in one.
fn find_cycle(books: &BTreeMap<String, BTreeMap<Version, Entry>>) -> Option<Vec<String>> {
    let mut graph: DiGraph<&str, ()> = DiGraph::new();
    let mut nodes: BTreeMap<&str, NodeIndex> = BTreeMap::new();
    for name in books.keys() {
        nodes.insert(name, graph.add_node(name));
    }
    for (name, versions) in books {
        for entry in versions.values() {
            for (_, step) in entry.book.all_steps() {
                if let StepKind::Book(child) = &step.kind
                    && let Some(&to) = nodes.get(child.book.as_str())
                {
                    graph.update_edge(nodes[name.as_str()], to, ());
                }
            }
        }
    }
    let mut cycles: Vec<Vec<String>> = Vec::new();
    for scc in petgraph::algo::tarjan_scc(&graph) {
        let start = *scc.iter().min_by_key(|n| graph[**n])?;
        if scc.len() == 1 && graph.find_edge(start, start).is_none() {
            continue;
        }
        // Shortest way back to `start` within the component.
        let members: BTreeSet<NodeIndex> = scc.iter().copied().collect();
        let mut parent: HashMap<NodeIndex, NodeIndex> = HashMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(n) = queue.pop_front() {
            let mut next: Vec<NodeIndex> = graph.neighbors(n).collect();
            next.sort_by_key(|m| graph[*m]);
            for m in next {
                if m == start {
                    last = Some(n);
                    break 'search;
                }
                if members.contains(&m) && !parent.contains_key(&m) {
                    parent.insert(m, n);
                    queue.push_back(m);
                }
            }
        }
        let mut path = vec![start];
        let mut n = last?;
        while n != start {
            path.push(n);
            n = parent[&n];
        }
        path[1..].reverse();
        path.push(start);
        cycles.push(path.into_iter().map(|n| graph[n].to_string()).collect());
    }
    cycles.sort();
    cycles.into_iter().next()
}
