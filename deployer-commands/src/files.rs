//! File commands: upload, unpack, createdirectory, copyfile, movefile, removefile, writefile,
//! symlink, cleanup.

use std::path::{Path, PathBuf};

use deployer_core::{
    Command, CommandError, ExecContext, Outcome, PutOptions, ShellCommand, TaskArgs,
    ValidationError, ValidationErrors, async_trait,
};
use serde::Deserialize;

use crate::util::{self, Check, build, fnmatch, join, mode_str, operand, opt_mode};

/// Uploads a file or directory from the controller to the host.
///
/// When `destination` ends with `/` or is an existing directory on the host, the file keeps
/// its name inside it; otherwise `destination` is the resulting path. The upload never leaves a
/// half-written file behind (see `RemoteHost::put`).
///
/// ```json
/// {"command": "upload", "remote_host": "fe001", "source": "build/web_1.2.tgz",
///  "destination": "/tmp/", "mode": "0644", "sudo": false}
/// ```
///
/// `source` (path on the controller) and `destination` are required; `mode` (octal string)
/// and `sudo` (default false) are optional. Idempotent.
#[derive(Debug)]
pub struct Upload {
    source: PathBuf,
    destination: String,
    mode: Option<u32>,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UploadArgs {
    source: String,
    destination: String,
    #[serde(default, deserialize_with = "opt_mode")]
    mode: Option<u32>,
    #[serde(default)]
    sudo: bool,
}

#[async_trait]
impl Command for Upload {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: UploadArgs = args.parse()?;
        let mut c = Check::new();
        c.path("source", &a.source);
        if !a.source.is_empty() && Path::new(&a.source).file_name().is_none() {
            c.fail(
                "source",
                format!("{:?} does not name a file", a.source),
                "a path ending in a file or directory name",
            );
        }
        c.path("destination", &a.destination);
        c.finish(Upload {
            source: PathBuf::from(a.source),
            destination: a.destination,
            mode: a.mode,
            sudo: a.sudo,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let name = self
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let into_dir = if self.destination.ends_with('/') {
            true
        } else {
            let test = build(&ShellCommand::new("test").arg("-d").arg(&self.destination))?;
            ctx.run(&test).await?.success()
        };
        let remote = if into_dir {
            join(&self.destination, &name)
        } else {
            self.destination.clone()
        };
        ctx.log(&format!(
            "uploading {} to {}:{remote}",
            self.source.display(),
            ctx.host().name()
        ));
        let options = PutOptions {
            sudo: self.sudo,
            mode: self.mode,
        };
        ctx.host().put(&self.source, &remote, &options).await?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// An archive format `unpack` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    TarGz,
    Tar,
    Zip,
    War,
}

impl Format {
    fn of(path: &str) -> Option<Format> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(Format::TarGz)
        } else if lower.ends_with(".tar") {
            Some(Format::Tar)
        } else if lower.ends_with(".zip") {
            Some(Format::Zip)
        } else if lower.ends_with(".war") {
            Some(Format::War)
        } else {
            None
        }
    }
}

/// Unpacks an archive that is already on the host into an existing directory.
///
/// The format comes from the file name: `.tar.gz`/`.tgz` and `.tar` (`tar -x`), `.zip`
/// (`unzip -o`), `.war` (copied into the destination unchanged, as application servers expect).
/// Other names are rejected when the tasklist is loaded, and so is a `.zip` name holding `*`,
/// `?` or `[`, which unzip would expand as a pattern.
///
/// ```json
/// {"command": "unpack", "remote_host": "fe001", "source": "/tmp/web_1.2.tgz",
///  "destination": "/srv/web/releases/1.2"}
/// ```
///
/// Idempotent: unpacking again overwrites the same files.
///
/// `sudo` (default false) runs the work through non-interactive sudo.
#[derive(Debug)]
pub struct Unpack {
    source: String,
    destination: String,
    format: Format,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UnpackArgs {
    source: String,
    destination: String,
    #[serde(default)]
    sudo: bool,
}

/// `sh -c SCRIPT unpack DEST PROGRAM ARGS…`: exits [`GUARD_FAILED`] unless DEST is a
/// directory, else runs the program with its arguments.
pub(crate) const UNPACK_GUARD: &str = "[ -d \"$1\" ] || exit 97; shift; exec \"$@\"";

impl Unpack {
    /// The unpacking program and its arguments. The archive is an [`operand`]: `unzip` takes
    /// a leading `-` for options and `tar` a `host:` prefix for a remote archive.
    fn argv(&self) -> Vec<String> {
        let archive = operand(&self.source);
        let (src, dest) = (archive.as_str(), self.destination.as_str());
        let words: Vec<&str> = match self.format {
            Format::TarGz => vec!["tar", "-xzf", src, "-C", dest],
            Format::Tar => vec!["tar", "-xf", src, "-C", dest],
            Format::Zip => vec!["unzip", "-o", "-q", src, "-d", dest],
            Format::War => vec!["cp", "--", src, dest],
        };
        words.into_iter().map(str::to_string).collect()
    }

    /// The unpacking command behind a check that the destination exists, in one session.
    fn guarded_line(&self) -> Result<String, CommandError> {
        build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(UNPACK_GUARD)
                .arg("unpack")
                .arg(&self.destination)
                .args(self.argv()),
        )
    }
}

#[async_trait]
impl Command for Unpack {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: UnpackArgs = args.parse()?;
        let mut c = Check::new();
        c.path("source", &a.source);
        c.path("destination", &a.destination);
        let format = Format::of(&a.source);
        if format.is_none() && !a.source.is_empty() {
            c.fail(
                "source",
                format!("unknown archive format of {:?}", a.source),
                "a name ending in .tar.gz, .tgz, .tar, .zip or .war",
            );
        }
        if format == Some(Format::Zip) && a.source.contains(['*', '?', '[']) {
            // unzip expands wildcards in the archive name itself, and has no way to escape them.
            c.fail(
                "source",
                format!(
                    "{:?} contains a wildcard (*, ? or [), which unzip would expand",
                    a.source
                ),
                "a .zip path without *, ? or [",
            );
        }
        c.finish(())?;
        Ok(Unpack {
            sudo: a.sudo,
            source: a.source,
            destination: a.destination,
            format: format.unwrap_or(Format::Tar),
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        // One session: the destination check guards the unpacking command.
        let out = ctx
            .run_with(
                &self.guarded_line()?,
                deployer_core::ExecOptions::new().sudo(self.sudo),
            )
            .await?;
        match out.exit_status {
            Some(0) => Ok(Outcome::done()),
            Some(GUARD_FAILED) => Err(CommandError::failed(format!(
                "unpack destination {} does not exist on {}",
                self.destination,
                ctx.host().name()
            ))),
            _ => Err(util::process_failed(
                format!(
                    "unpacking {} into {} failed on {}",
                    self.source,
                    self.destination,
                    ctx.host().name()
                ),
                &out,
            )),
        }
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// Creates a directory and its parents (`mkdir -p`).
///
/// With `clobber: true` an existing directory is removed first, so it ends up empty.
/// `mode` (octal string) is applied to the directory when given.
///
/// ```json
/// {"command": "createdirectory", "remote_host": "fe001", "source": "/srv/web/releases/1.2",
///  "clobber": false, "mode": "0755"}
/// ```
///
/// Idempotent.
///
/// `sudo` (default false) runs the work through non-interactive sudo.
#[derive(Debug)]
pub struct CreateDirectory {
    source: String,
    clobber: bool,
    mode: Option<u32>,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateDirectoryArgs {
    source: String,
    #[serde(default)]
    clobber: bool,
    #[serde(default, deserialize_with = "opt_mode")]
    mode: Option<u32>,
    #[serde(default)]
    sudo: bool,
}

impl CreateDirectory {
    fn command_line(&self) -> Result<String, CommandError> {
        let mut cmd = if self.clobber {
            ShellCommand::new("rm")
                .arg("-rf")
                .arg("--")
                .arg(&self.source)
                .then("mkdir")
        } else {
            ShellCommand::new("mkdir")
        };
        cmd = cmd.arg("-p").arg("--").arg(&self.source);
        if let Some(mode) = self.mode {
            cmd = cmd
                .then("chmod")
                .arg(mode_str(mode))
                .arg("--")
                .arg(&self.source);
        }
        build(&cmd)
    }
}

#[async_trait]
impl Command for CreateDirectory {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: CreateDirectoryArgs = args.parse()?;
        let mut c = Check::new();
        if a.clobber {
            c.removable("source", &a.source);
        } else {
            c.path("source", &a.source);
        }
        c.finish(CreateDirectory {
            sudo: a.sudo,
            source: a.source,
            clobber: a.clobber,
            mode: a.mode,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        run_as(ctx, self.sudo, &self.command_line()?).await?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// Copies a file or directory to another place on the same host (`cp -Rp`).
///
/// The copy is made under a temporary name beside the destination
/// (`<destination>.deployer-tmp`) and renamed into place, so a copy that fails half-way (a full
/// disk) leaves no partial destination behind. When the destination exists: with
/// `remove_if_exists: true` it is removed first; with `continue_if_exists: true` the copy goes
/// ahead anyway, straight into it (into it, for a directory); otherwise the command fails.
/// Copying a path onto itself does nothing.
///
/// ```json
/// {"command": "copyfile", "remote_host": "fe001", "source": "/srv/web/current/config",
///  "destination": "/srv/web/releases/1.3/config", "remove_if_exists": true}
/// ```
///
/// `sudo` (default false) runs the work through non-interactive sudo.
#[derive(Debug)]
pub struct CopyFile {
    source: String,
    destination: String,
    remove_if_exists: bool,
    continue_if_exists: bool,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CopyFileArgs {
    source: String,
    destination: String,
    #[serde(default)]
    remove_if_exists: bool,
    #[serde(default)]
    continue_if_exists: bool,
    #[serde(default)]
    sudo: bool,
}

#[async_trait]
impl Command for CopyFile {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: CopyFileArgs = args.parse()?;
        let mut c = Check::new();
        c.path("source", &a.source);
        if a.remove_if_exists {
            c.removable("destination", &a.destination);
        } else {
            c.path("destination", &a.destination);
        }
        if a.remove_if_exists && a.continue_if_exists {
            c.fail(
                "continue_if_exists",
                "cannot be combined with remove_if_exists",
                "at most one of remove_if_exists and continue_if_exists",
            );
        }
        c.finish(CopyFile {
            sudo: a.sudo,
            source: a.source,
            destination: a.destination,
            remove_if_exists: a.remove_if_exists,
            continue_if_exists: a.continue_if_exists,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        if self.source == self.destination {
            return Ok(Outcome::skipped("source and destination are the same"));
        }
        let exists = ctx.host().file_exists(&self.destination).await?;
        if exists {
            if self.remove_if_exists {
                let rm = ShellCommand::new("rm")
                    .arg("-rf")
                    .arg("--")
                    .arg(&self.destination);
                run_as(ctx, self.sudo, &build(&rm)?).await?;
            } else if !self.continue_if_exists {
                return Err(CommandError::failed(format!(
                    "cannot copy {} to {}: the destination already exists on {} (set remove_if_exists or continue_if_exists)",
                    self.source,
                    self.destination,
                    ctx.host().name()
                )));
            }
        }
        let line = if exists && self.continue_if_exists {
            ShellCommand::new("cp")
                .arg("-Rp")
                .arg("--")
                .arg(&self.source)
                .arg(&self.destination)
        } else {
            ShellCommand::new("sh")
                .arg("-c")
                .arg(COPY_SCRIPT)
                .arg("copyfile")
                .arg(&self.source)
                .arg(&self.destination)
                .arg(format!("{}{TMP_SUFFIX}", self.destination))
        };
        run_as(ctx, self.sudo, &build(&line)?)
            .await
            .map_err(util::explain(format!(
                "cannot copy {} to {} on {}",
                self.source,
                self.destination,
                ctx.host().name()
            )))?;
        Ok(Outcome::done())
    }
}

/// Copies `$1` to `$2` through `$3` (a temporary name beside `$2`): nothing is left at `$2` or
/// `$3` when the copy fails.
pub(crate) const COPY_SCRIPT: &str = "rm -rf -- \"$3\" && cp -Rp -- \"$1\" \"$3\" && mv -fT -- \"$3\" \"$2\" || { s=$?; rm -rf -- \"$3\"; exit $s; }";

/// Moves or renames a file or directory on the host (`mv`).
///
/// An existing destination is removed first unless `clobber` is false (default true, as in
/// the original deployer), in which case the command fails.
///
/// ```json
/// {"command": "movefile", "remote_host": "fe001", "source": "/srv/web/releases/1.2.tmp",
///  "destination": "/srv/web/releases/1.2", "clobber": true}
/// ```
///
/// `sudo` (default false) runs the work through non-interactive sudo.
#[derive(Debug)]
pub struct MoveFile {
    source: String,
    destination: String,
    clobber: bool,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoveFileArgs {
    source: String,
    destination: String,
    #[serde(default = "yes")]
    clobber: bool,
    #[serde(default)]
    sudo: bool,
}

fn yes() -> bool {
    true
}

#[async_trait]
impl Command for MoveFile {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: MoveFileArgs = args.parse()?;
        let mut c = Check::new();
        c.path("source", &a.source);
        if a.clobber {
            c.removable("destination", &a.destination);
        } else {
            c.path("destination", &a.destination);
        }
        c.finish(MoveFile {
            sudo: a.sudo,
            source: a.source,
            destination: a.destination,
            clobber: a.clobber,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        if self.source == self.destination {
            return Ok(Outcome::skipped("source and destination are the same"));
        }
        if ctx.host().file_exists(&self.destination).await? {
            if !self.clobber {
                return Err(CommandError::failed(format!(
                    "cannot move {} to {}: the destination already exists on {} (clobber is false)",
                    self.source,
                    self.destination,
                    ctx.host().name()
                )));
            }
            let rm = ShellCommand::new("rm")
                .arg("-rf")
                .arg("--")
                .arg(&self.destination);
            run_as(ctx, self.sudo, &build(&rm)?).await?;
        }
        let mv = ShellCommand::new("mv")
            .arg("--")
            .arg(&self.source)
            .arg(&self.destination);
        run_as(ctx, self.sudo, &build(&mv)?).await?;
        Ok(Outcome::done())
    }
}

/// Removes a file or directory (`rm -rf`); a missing path is not an error.
///
/// `/`, `.`, `..`, `~` and `*` are refused when the tasklist is loaded.
///
/// ```json
/// {"command": "removefile", "remote_host": "fe001", "source": "/tmp/web_1.2.tgz"}
/// ```
///
/// Idempotent.
///
/// `sudo` (default false) runs the work through non-interactive sudo.
#[derive(Debug)]
pub struct RemoveFile {
    source: String,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RemoveFileArgs {
    source: String,
    #[serde(default)]
    sudo: bool,
}

#[async_trait]
impl Command for RemoveFile {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: RemoveFileArgs = args.parse()?;
        let mut c = Check::new();
        c.removable("source", &a.source);
        c.finish(RemoveFile {
            source: a.source,
            sudo: a.sudo,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        let rm = ShellCommand::new("rm")
            .arg("-rf")
            .arg("--")
            .arg(&self.source);
        run_as(ctx, self.sudo, &build(&rm)?).await?;
        if ctx.host().file_exists(&self.source).await? {
            return Err(CommandError::failed(format!(
                "{} still exists on {} after removal",
                self.source,
                ctx.host().name()
            )));
        }
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// Runs `line` (through sudo when asked), failing on a non-zero exit.
async fn run_as(ctx: &ExecContext, sudo: bool, line: &str) -> Result<(), CommandError> {
    ctx.run_checked_with(line, deployer_core::ExecOptions::new().sudo(sudo))
        .await?;
    Ok(())
}

/// The suffix of temporary names next to a destination (a retry reuses and replaces them).
pub(crate) const TMP_SUFFIX: &str = ".deployer-tmp";

/// Writes a file from content given inline, atomically: the content goes to a temporary file
/// next to the destination (`<destination>.deployer-tmp`), gets its mode, and is renamed over
/// the destination, so readers see the old or the new file, never a partial one.
///
/// An existing destination is replaced only with `clobber: true` (default false, as in the
/// original deployer). `mode` defaults to `"0644"`.
///
/// ```json
/// {"command": "writefile", "remote_host": "fe001", "destination": "/srv/web/VERSION",
///  "contents": "1.2\n", "mode": "0644", "clobber": true}
/// ```
///
/// Idempotent.
///
/// `sudo` (default false) runs the work through non-interactive sudo.
#[derive(Debug)]
pub struct WriteFile {
    destination: String,
    contents: String,
    clobber: bool,
    mode: u32,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteFileArgs {
    destination: String,
    contents: String,
    #[serde(default)]
    clobber: bool,
    #[serde(default, deserialize_with = "opt_mode")]
    mode: Option<u32>,
    #[serde(default)]
    sudo: bool,
}

/// `$1` temp file, `$2` mode, `$3` destination; content on stdin.
const WRITE_SCRIPT: &str = "umask 077; if cat > \"$1\" && chmod \"$2\" -- \"$1\" && mv -f -- \"$1\" \"$3\"; then exit 0; fi; rm -f -- \"$1\"; exit 1";

impl WriteFile {
    fn command_line(&self) -> Result<String, CommandError> {
        build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(WRITE_SCRIPT)
                .arg("writefile")
                .arg(format!("{}{TMP_SUFFIX}", self.destination))
                .arg(mode_str(self.mode))
                .arg(&self.destination),
        )
    }
}

#[async_trait]
impl Command for WriteFile {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: WriteFileArgs = args.parse()?;
        let mut c = Check::new();
        c.path("destination", &a.destination);
        if a.destination.ends_with('/') {
            c.fail(
                "destination",
                format!("{:?} names a directory", a.destination),
                "a file path",
            );
        }
        c.finish(WriteFile {
            sudo: a.sudo,
            destination: a.destination,
            contents: a.contents,
            clobber: a.clobber,
            mode: a.mode.unwrap_or(0o644),
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        if !self.clobber && ctx.host().file_exists(&self.destination).await? {
            return Err(CommandError::failed(format!(
                "{} already exists on {} (set clobber to replace it)",
                self.destination,
                ctx.host().name()
            )));
        }
        let options = deployer_core::ExecOptions::new()
            .sudo(self.sudo)
            .stdin(self.contents.clone().into_bytes());
        ctx.run_checked_with(&self.command_line()?, options)
            .await
            .map_err(crate::util::explain(format!(
                "cannot write {} on {}",
                self.destination,
                ctx.host().name()
            )))?;
        Ok(Outcome::done())
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// Points a symbolic link at a target, atomically: the new link is made under a temporary
/// name and renamed over the old one, so the link never disappears. The target must exist
/// (a relative target is resolved from the link's directory). A link already pointing at the
/// target is left alone.
///
/// ```json
/// {"command": "symlink", "remote_host": "fe001", "source": "/srv/web/releases/1.2",
///  "destination": "/srv/web/current"}
/// ```
///
/// Idempotent. Needs GNU `mv -T` (Linux).
///
/// `sudo` (default false) runs the work through non-interactive sudo.
#[derive(Debug)]
pub struct Symlink {
    source: String,
    destination: String,
    sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SymlinkArgs {
    source: String,
    destination: String,
    #[serde(default)]
    sudo: bool,
}

impl Symlink {
    /// `sh -c SCRIPT symlink SOURCE TARGET LINK TMP`: prints [`LINK_UNCHANGED`] when the link
    /// already points to SOURCE, exits [`GUARD_FAILED`] when TARGET does not exist, else
    /// switches the link atomically.
    fn switch_script(&self, target: &str) -> Result<String, CommandError> {
        let link = self.destination.trim_end_matches('/');
        build(
            &ShellCommand::new("sh")
                .arg("-c")
                .arg(SWITCH_SCRIPT)
                .arg("symlink")
                .arg(&self.source)
                .arg(target)
                .arg(link)
                .arg(format!("{link}{TMP_SUFFIX}")),
        )
    }

    fn resolved_target(&self) -> String {
        if self.source.starts_with('/') {
            self.source.clone()
        } else {
            join(util::dirname(&self.destination), &self.source)
        }
    }
}

/// Printed by the symlink script when the link already points where it should.
const LINK_UNCHANGED: &str = "deployer: link unchanged";

/// Exit status of a guard in a one-session script (a target or destination that must exist
/// does not); chosen outside the codes of `tar`, `unzip`, `cp`, `ln` and `mv`.
pub(crate) const GUARD_FAILED: i32 = 97;

/// `$1` source as written, `$2` resolved target, `$3` link, `$4` temporary link.
pub(crate) const SWITCH_SCRIPT: &str = "if [ -L \"$3\" ] && [ \"$(readlink -- \"$3\")\" = \"$1\" ]; then echo 'deployer: link unchanged'; exit 0; fi; [ -e \"$2\" ] || exit 97; ln -sfn -- \"$1\" \"$4\" && mv -fT -- \"$4\" \"$3\"";

/// The target of the link at `path`, or `None` when it is not a link.
pub(crate) async fn read_link(
    ctx: &ExecContext,
    path: &str,
) -> Result<Option<String>, CommandError> {
    let line = build(&ShellCommand::new("readlink").arg("--").arg(path))?;
    let out = ctx.run(&line).await?;
    if out.success() {
        Ok(Some(out.stdout_str().trim_end_matches('\n').to_string()))
    } else {
        Ok(None)
    }
}

#[async_trait]
impl Command for Symlink {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: SymlinkArgs = args.parse()?;
        let mut c = Check::new();
        c.path("source", &a.source);
        c.path("destination", &a.destination);
        c.finish(Symlink {
            sudo: a.sudo,
            source: a.source,
            destination: a.destination,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        // One session: compare, check the target, switch.
        let target = self.resolved_target();
        let line = self.switch_script(&target)?;
        let out = ctx
            .run_with(&line, deployer_core::ExecOptions::new().sudo(self.sudo))
            .await?;
        match out.exit_status {
            Some(0) if out.stdout_str().contains(LINK_UNCHANGED) => Ok(Outcome::skipped(format!(
                "{} already points to {}",
                self.destination, self.source
            ))),
            Some(0) => Ok(Outcome::done()),
            Some(GUARD_FAILED) => Err(CommandError::failed(format!(
                "link target {target} does not exist on {}",
                ctx.host().name()
            ))),
            _ => Err(util::process_failed(
                format!(
                    "switching {} to {} failed on {}",
                    self.destination,
                    self.source,
                    ctx.host().name()
                ),
                &out,
            )),
        }
    }

    fn idempotent(&self) -> bool {
        true
    }
}

/// Removes old entries of a directory, keeping the newest `keepversions` (by modification
/// time) of those whose name matches `filespec` (default `*`) and not `exclude`.
///
/// Never removed: symbolic links, and whatever a link in the directory or the `current` link
/// (when given) points to. With `keepversions: 0` and no `exclude`, one is kept, as in the
/// original deployer. Needs GNU `find` (Linux).
///
/// ```json
/// {"command": "cleanup", "remote_host": "fe001", "path": "/srv/web/releases",
///  "filespec": "web_*", "keepversions": 5, "exclude": "*.keep", "current": "/srv/web/current"}
/// ```
///
/// Idempotent.
///
/// `sudo` (default false) runs the work through non-interactive sudo.
#[derive(Debug)]
pub struct Cleanup {
    pub(crate) path: String,
    pub(crate) filespec: String,
    pub(crate) keep: usize,
    pub(crate) exclude: Option<String>,
    pub(crate) current: Option<String>,
    pub(crate) sudo: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CleanupArgs {
    path: String,
    #[serde(default)]
    filespec: Option<String>,
    keepversions: usize,
    #[serde(default)]
    exclude: Option<String>,
    #[serde(default)]
    current: Option<String>,
    #[serde(default)]
    sudo: bool,
}

/// One entry of a listed directory.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entry {
    pub(crate) mtime: f64,
    pub(crate) kind: char,
    pub(crate) name: String,
    pub(crate) link: String,
}

/// Lists a directory: `mtime \t type \t name \t link-target \0` per entry. The directory is
/// an [`operand`]: `find` reads a leading `-` as part of its expression (`-delete`).
pub(crate) fn list_line(dir: &str) -> Result<String, CommandError> {
    build(
        &ShellCommand::new("find")
            .arg(operand(dir))
            .arg("-mindepth")
            .arg("1")
            .arg("-maxdepth")
            .arg("1")
            .arg("-printf")
            .arg("%T@\\t%y\\t%f\\t%l\\0"),
    )
}

pub(crate) fn parse_list(out: &[u8]) -> Vec<Entry> {
    let text = String::from_utf8_lossy(out);
    text.split('\0')
        .filter(|r| !r.is_empty())
        .filter_map(|record| {
            let mut parts = record.splitn(4, '\t');
            let mtime = parts.next()?.parse::<f64>().ok()?;
            let kind = parts.next()?.chars().next()?;
            let name = parts.next()?.to_string();
            let link = parts.next().unwrap_or("").to_string();
            Some(Entry {
                mtime,
                kind,
                name,
                link,
            })
        })
        .collect()
}

impl Cleanup {
    /// Which entries to remove, newest first.
    pub(crate) fn select(&self, entries: &[Entry], current: Option<&str>) -> Vec<String> {
        let mut protected: Vec<&str> = entries
            .iter()
            .filter(|e| e.kind == 'l')
            .map(|e| util::basename(&e.link))
            .collect();
        if let Some(c) = current {
            protected.push(util::basename(c));
        }
        let mut candidates: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.kind != 'l')
            .filter(|e| fnmatch(&self.filespec, &e.name))
            .filter(|e| !self.exclude.as_deref().is_some_and(|x| fnmatch(x, &e.name)))
            .collect();
        candidates.sort_by(|a, b| {
            b.mtime
                .partial_cmp(&a.mtime)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then_with(|| b.name.cmp(&a.name))
        });
        let keep = if self.keep == 0 && self.exclude.is_none() {
            1
        } else {
            self.keep
        };
        candidates
            .into_iter()
            .skip(keep)
            .filter(|e| !protected.contains(&e.name.as_str()))
            .map(|e| e.name.clone())
            .collect()
    }

    pub(crate) async fn run(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        // The listing is data for this command, not output for a person: not streamed.
        let options = deployer_core::ExecOptions::new()
            .sudo(self.sudo)
            .output(std::sync::Arc::new(|_, _: &str| {}));
        let out = ctx
            .run_checked_with(&list_line(&self.path)?, options)
            .await?;
        let entries = parse_list(&out.stdout);
        let current = match &self.current {
            Some(link) => read_link(ctx, link).await?,
            None => None,
        };
        let doomed = self.select(&entries, current.as_deref());
        if doomed.is_empty() {
            return Ok(Outcome::skipped("nothing to clean up"));
        }
        let mut rm = ShellCommand::new("rm").arg("-rf").arg("--");
        for name in &doomed {
            ctx.log(&format!("removing old version {name}"));
            rm = rm.arg(join(&self.path, name));
        }
        run_as(ctx, self.sudo, &build(&rm)?).await?;
        Ok(Outcome::done().with_data(serde_json::json!({ "removed": doomed })))
    }
}

#[async_trait]
impl Command for Cleanup {
    fn initialize(args: &TaskArgs<'_>) -> Result<Self, ValidationErrors> {
        let a: CleanupArgs = args.parse()?;
        let mut c = Check::new();
        c.removable("path", &a.path);
        if let Some(f) = &a.filespec
            && (f.is_empty() || f.contains('/'))
        {
            c.push(
                ValidationError::new("filespec", format!("invalid pattern {f:?}"))
                    .expected("a file name pattern such as \"web_*\" (no \"/\")"),
            );
        }
        if let Some(x) = &a.exclude {
            c.text("exclude", x);
        }
        if let Some(cur) = &a.current {
            c.path("current", cur);
        }
        c.finish(Cleanup {
            path: a.path,
            filespec: a.filespec.unwrap_or_else(|| "*".to_string()),
            keep: a.keepversions,
            exclude: a.exclude.filter(|x| !x.is_empty()),
            current: a.current,
            sudo: a.sudo,
        })
    }

    async fn execute(&self, ctx: &ExecContext) -> Result<Outcome, CommandError> {
        self.run(ctx).await
    }

    fn idempotent(&self) -> bool {
        true
    }
}
