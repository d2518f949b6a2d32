//! The examples' walkthrough (`examples/books/README.md`) run verbatim: every command line of
//! its `sh` blocks, from the repository's root, with only `cargo run -p deployer-cli --bin X --`
//! replaced by the binary cargo built. A command succeeds unless its comment says `exit N`;
//! then it must exit N. The example books write under `/tmp/deployer-books-example`, removed
//! first so the walkthrough starts as on a fresh machine.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

const README: &str = "examples/books/README.md";
const ROOT: &str = "/tmp/deployer-books-example";

fn repository() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The command lines of the README's `sh` blocks (a line ending in `\` continues).
fn commands(readme: &str) -> Vec<String> {
    let mut commands = Vec::new();
    let mut in_block = false;
    let mut pending = String::new();
    for line in readme.lines() {
        if line.starts_with("```") {
            in_block = !in_block && line.trim() == "```sh";
            continue;
        }
        if !in_block || line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => {
                pending.push_str(head);
                pending.push(' ');
            }
            None => {
                pending.push_str(line);
                commands.push(std::mem::take(&mut pending));
            }
        }
    }
    assert!(!in_block, "{README}: a code block is not closed");
    commands
}

/// The exit status a command's comment announces (`# refused: exit 2`), else 0.
fn expected_exit(command: &str) -> i32 {
    command
        .split_once('#')
        .and_then(|(_, comment)| comment.split("exit ").nth(1))
        .and_then(|n| n.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// The line as a shell runs it, the programs being the ones cargo built for this test.
fn with_built_binaries(command: &str) -> String {
    let bins = BTreeMap::from([
        ("books", env!("CARGO_BIN_EXE_books")),
        ("catalog", env!("CARGO_BIN_EXE_catalog")),
        ("deploy", env!("CARGO_BIN_EXE_deploy")),
    ]);
    let mut line = command.to_string();
    for (name, path) in bins {
        line = line.replace(
            &format!("cargo run -p deployer-cli --bin {name} --"),
            &format!("'{path}'"),
        );
    }
    assert!(
        !line.contains("cargo run"),
        "{README}: a command runs something else than the programs: {command}"
    );
    line
}

#[test]
fn the_examples_walkthrough_runs_verbatim() {
    let readme = std::fs::read_to_string(repository().join(README)).unwrap();
    let commands = commands(&readme);
    // What the walkthrough must show; each command's key output is checked below.
    for needed in [
        "books -- check",
        "books -- show deploy",
        "books -- run --action deploy",
        "catalog -- --file examples/catalog.yaml trigger shop/prod deploy --as alice --library examples/books/library --run --yes",
        "catalog -- --file examples/catalog.yaml monitors",
    ] {
        assert!(
            commands.iter().any(|c| c.contains(needed)),
            "{README} has no command with \"{needed}\": {commands:#?}"
        );
    }
    match std::fs::remove_dir_all(ROOT) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{ROOT}: {e}"),
        _ => {}
    }

    let mut outputs = Vec::new();
    for command in &commands {
        let out = Command::new("sh")
            .arg("-c")
            .arg(with_built_binaries(command))
            .current_dir(repository())
            .env_remove("DEPLOYER_CATALOG")
            .env_remove("DEPLOYER_CATALOG_STORE")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(
            out.status.code(),
            Some(expected_exit(command)),
            "{command}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        outputs.push((command.as_str(), stdout, stderr));
    }

    // The output of the command containing `needle`, or ending with it after a `$`.
    let output = |needle: &str| {
        outputs
            .iter()
            .find(|(c, _, _)| match needle.strip_prefix('$') {
                Some(end) => c.ends_with(end),
                None => c.contains(needle),
            })
            .map(|(_, o, e)| (o.as_str(), e.as_str()))
            .unwrap_or_else(|| panic!("no command with {needle}"))
    };
    let (check, _) = output("books -- check");
    assert_eq!(check, "backup 1.0.0\ndeploy 1.0.0\npause 1.0.0\n");
    // The tree: child books inlined, estimates and timeouts.
    let (tree, _) = output(
        "$books -- show deploy --library examples/books/library --scope examples/books/scope.json",
    );
    assert!(tree.starts_with("deploy@1.0.0 (draft, job "), "{tree}");
    for line in [
        "\n├─ pause: book pause@1.0.0\n│  ├─ root directory: createdirectory on local\n",
        "\n│  └─ dump: writefile on local · estimate 30s, timeout 5m, 2 retries\n",
        "\n├─ resume: removefile on local · Remove the maintenance flag\n",
        "\n   └─ remove maintenance flag: removefile on local · clean-up if the job fails · ",
        "\n8 steps to run",
    ] {
        assert!(tree.contains(line), "{tree}");
    }
    let (json, _) = output("--scope examples/books/scope.json --output json");
    let job: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(job["steps"].as_array().unwrap().len(), 8, "{json}");
    let (run, _) = output("books -- run --action deploy");
    assert!(
        run.contains("step deploy/backup/dump\n  writefile on local: succeeded"),
        "{run}"
    );
    assert!(run.ends_with(" done\n"), "{run}");
    let (version, _) = output("cat /tmp/deployer-books-example/prod.version");
    assert_eq!(version, "1.4.2\n");

    let (check, _) = output("catalog.yaml check");
    assert_eq!(check, "Catalog ok\n");
    let (show, _) = output("catalog.yaml show --as bob");
    assert!(
        show.contains("deployment shop/prod scope=production clusters=[local (active)]"),
        "{show}"
    );
    // The scope the books example ships is the one the catalog builds.
    let (scope, _) = output("catalog.yaml scope shop/prod --as alice");
    let shipped = std::fs::read_to_string(repository().join("examples/books/scope.json")).unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(scope).unwrap(),
        serde_json::from_str::<serde_json::Value>(&shipped).unwrap(),
        "examples/books/scope.json is not what `catalog scope shop/prod` prints"
    );
    let (job, _) = output("$--as alice --library examples/books/library");
    assert!(
        job.starts_with("deploy@1.0.0 for action deploy (draft, job "),
        "{job}"
    );
    assert!(job.contains("\n├─ approve: manual · "), "{job}");
    let (run, _) = output("--library examples/books/library --run --yes");
    assert!(
        run.contains("deploy/release writefile on local: succeeded"),
        "{run}"
    );
    assert!(run.ends_with(" done\n"), "{run}");
    let (_, refused) = output("--as bob   #");
    assert!(
        refused.starts_with("error: user \"bob\" may not"),
        "{refused}"
    );
    let (monitors, summary) = output("monitors");
    assert!(
        monitors.starts_with(
            "shop/prod/home warning target down: curl: (6) Could not resolve host: www.shop.example.com"
        ),
        "{monitors}"
    );
    assert_eq!(summary, "1 monitor(s) found their target down\n");
    assert!(
        !Path::new(ROOT)
            .join("ns-9a2f3b5c6d7e8f90-prod.maintenance")
            .exists(),
        "the deploy book removed its maintenance flag"
    );
}
