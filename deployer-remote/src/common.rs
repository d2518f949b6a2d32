//! Pieces shared by every host: building the shell line and splitting output into lines.

use deployer_core::{ExecOptions, OutputSink, RemoteError, Stream, quote};

/// Whether `key` is a valid environment variable name for a POSIX shell.
fn valid_env_name(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

fn quoted(host: &str, s: &str) -> Result<String, RemoteError> {
    quote(s)
        .map(|q| q.into_owned())
        .map_err(|e| RemoteError::Other {
            host: host.to_string(),
            message: e.to_string(),
        })
}

/// The command line to run with `sh -c`: exports of `options.env`, then `command`, all under
/// `sudo -n` when asked and `use_sudo` (false when already root).
pub(crate) fn shell_line(
    host: &str,
    command: &str,
    options: &ExecOptions,
    use_sudo: bool,
) -> Result<String, RemoteError> {
    let mut inner = String::new();
    for (key, value) in &options.env {
        if !valid_env_name(key) {
            return Err(RemoteError::Other {
                host: host.to_string(),
                message: format!("invalid environment variable name {key:?}"),
            });
        }
        inner.push_str("export ");
        inner.push_str(key);
        inner.push('=');
        inner.push_str(&quoted(host, value)?);
        inner.push('\n');
    }
    inner.push_str(command);
    if options.sudo && use_sudo {
        Ok(format!("sudo -n -- sh -c {}", quoted(host, &inner)?))
    } else {
        Ok(inner)
    }
}

/// A shell script that fills a temporary path beside `dest` with `fill` (a fragment that
/// creates `"$tmp"`), sets `mode` on it when given, and renames it over `dest` (replacing a
/// directory too). On failure the temporary path is removed and `dest` is untouched.
pub(crate) fn install_with(
    host: &str,
    fill: &str,
    dest: &str,
    mode: Option<u32>,
) -> Result<String, RemoteError> {
    let mut s = String::from("set -e\n");
    s.push_str(&format!("dst={}\n", quoted(host, dest)?));
    s.push_str("tmp=\"$dst.deployer-tmp.$$\"\n");
    s.push_str("trap 'rm -rf \"$tmp\"' EXIT\n");
    s.push_str("if [ -e \"$tmp\" ] || [ -L \"$tmp\" ]; then rm -rf \"$tmp\"; fi\n");
    s.push_str(fill);
    s.push('\n');
    if let Some(mode) = mode {
        s.push_str(&format!("chmod {:o} \"$tmp\"\n", mode & 0o7777));
    }
    s.push_str(concat!(
        "if [ -d \"$dst\" ] && [ ! -L \"$dst\" ]; then\n",
        "  old=\"$dst.deployer-old.$$\"; mv \"$dst\" \"$old\"; mv \"$tmp\" \"$dst\"; rm -rf \"$old\"\n",
        "else\n",
        "  if [ -d \"$tmp\" ] && [ -e \"$dst\" ]; then rm -f \"$dst\"; fi\n",
        "  mv -f \"$tmp\" \"$dst\"\n",
        "fi\n",
        "trap - EXIT\n",
    ));
    Ok(s)
}

/// [`install_with`] copying the local path `src` (keeping modes).
pub(crate) fn install_script(
    host: &str,
    src: &str,
    dest: &str,
    mode: Option<u32>,
) -> Result<String, RemoteError> {
    let fill = format!("cp -R --preserve=mode {} \"$tmp\"", quoted(host, src)?);
    install_with(host, &fill, dest, mode)
}

/// The error for a sudo command that sudo itself refused: a password was wanted, or there is
/// no sudo on the host. `None` when the command ran (whatever its status).
pub(crate) fn sudo_failure(
    host: &str,
    used_sudo: bool,
    status: Option<i32>,
    stderr: &[u8],
) -> Option<RemoteError> {
    if !used_sudo {
        return None;
    }
    let text = String::from_utf8_lossy(stderr);
    match status {
        Some(1)
            if text.contains("sudo: a password is required")
                || text.contains("sudo: a terminal is required")
                || text.contains("sudo: no tty present") =>
        {
            Some(RemoteError::SudoPassword {
                host: host.to_string(),
            })
        }
        Some(127) if text.contains("sudo") && text.contains("not found") => {
            Some(RemoteError::Other {
                host: host.to_string(),
                message: "sudo is not installed on this host".to_string(),
            })
        }
        _ => None,
    }
}

/// Collects one stream's bytes and hands complete lines to the output sink.
pub(crate) struct LineCollector {
    stream: Stream,
    sink: Option<OutputSink>,
    /// Everything received.
    pub(crate) bytes: Vec<u8>,
    /// Offset in `bytes` where the current unfinished line starts.
    line_start: usize,
}

impl LineCollector {
    pub(crate) fn new(stream: Stream, sink: Option<OutputSink>) -> Self {
        LineCollector {
            stream,
            sink,
            bytes: Vec::new(),
            line_start: 0,
        }
    }

    /// Appends a chunk, emitting every line it completes.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        let old_len = self.bytes.len();
        self.bytes.extend_from_slice(chunk);
        let Some(sink) = &self.sink else {
            return;
        };
        let mut search_from = old_len;
        while let Some(pos) = self.bytes[search_from..].iter().position(|&b| b == b'\n') {
            let end = search_from + pos;
            let mut line = &self.bytes[self.line_start..end];
            if line.last() == Some(&b'\r') {
                line = &line[..line.len() - 1];
            }
            sink(self.stream, &String::from_utf8_lossy(line));
            self.line_start = end + 1;
            search_from = end + 1;
        }
    }

    /// Emits the last line if it had no newline, and returns everything received.
    pub(crate) fn finish(self) -> Vec<u8> {
        if let Some(sink) = &self.sink
            && self.line_start < self.bytes.len()
        {
            sink(
                self.stream,
                &String::from_utf8_lossy(&self.bytes[self.line_start..]),
            );
        }
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn env_names_are_checked_and_values_quoted() {
        let opts = ExecOptions::new().env("A_1", "x y; $(z)");
        let line = shell_line("h", "echo $A_1", &opts, true).unwrap();
        assert_eq!(line, "export A_1='x y; $(z)'\necho $A_1");
        let bad = ExecOptions::new().env("A;rm", "x");
        assert!(shell_line("h", "true", &bad, true).is_err());
        let sudo = ExecOptions::new().sudo(true);
        assert_eq!(
            shell_line("h", "id -u", &sudo, true).unwrap(),
            "sudo -n -- sh -c 'id -u'"
        );
        assert_eq!(shell_line("h", "id -u", &sudo, false).unwrap(), "id -u");
    }

    #[test]
    fn sudo_refusals_are_recognised() {
        let pw = sudo_failure("h", true, Some(1), b"sudo: a password is required\n");
        assert!(matches!(pw, Some(RemoteError::SudoPassword { .. })));
        let missing = sudo_failure("h", true, Some(127), b"sh: 1: sudo: not found\n");
        assert_eq!(
            missing.unwrap().to_string(),
            "h: sudo is not installed on this host"
        );
        assert!(sudo_failure("h", false, Some(1), b"sudo: a password is required").is_none());
        assert!(sudo_failure("h", true, Some(1), b"grep found nothing").is_none());
    }

    #[test]
    fn lines_are_split_across_chunks() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let sink: OutputSink = Arc::new(move |_, line| s.lock().unwrap().push(line.to_string()));
        let mut c = LineCollector::new(Stream::Stdout, Some(sink));
        c.push(b"ab");
        c.push(b"c\r\nd\n\ne");
        let all = c.finish();
        assert_eq!(all, b"abc\r\nd\n\ne");
        assert_eq!(*seen.lock().unwrap(), ["abc", "d", "", "e"]);
    }
}
