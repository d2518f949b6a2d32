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
        Ok(format!("sudo -n -- sh -c -- {}", quoted(host, &inner)?))
    } else {
        Ok(inner)
    }
}

/// `path`, relative ones as `./path`: no command of a script reads a leading `-` as an option.
fn operand(path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("./{path}")
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
    s.push_str(&format!("dst={}\n", quoted(host, &operand(dest))?));
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
    let fill = format!("cp -R --preserve=mode -- {} \"$tmp\"", quoted(host, src)?);
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

/// How much of one output stream a command's [`ExecOutput`](deployer_core::ExecOutput) keeps:
/// the first and the last half of this, with a note of what was cut in between. Every line
/// still reaches the output sink as it arrives; only what is kept for the result is bounded,
/// so a command that floods its output cannot exhaust the controller's memory.
pub const OUTPUT_KEPT: usize = 16 * 1024 * 1024;

/// The longest line the output sink is handed: a longer one (a command writing megabytes
/// without a newline) is cut, and the cut marked `… [N more bytes cut]`, within this size.
pub const LINE_MAX: usize = 64 * 1024;

/// Room kept for the cut marker of a line longer than [`LINE_MAX`].
const CUT_ROOM: usize = 64;

/// Collects one stream's bytes (bounded by [`OUTPUT_KEPT`]) and hands complete lines to the
/// output sink.
pub(crate) struct LineCollector {
    stream: Stream,
    sink: Option<OutputSink>,
    /// The first `OUTPUT_KEPT / 2` bytes.
    head: Vec<u8>,
    /// The last `OUTPUT_KEPT / 2` bytes after `head` (a ring: oldest first).
    tail: std::collections::VecDeque<u8>,
    /// Bytes received in all.
    total: u64,
    /// The current unfinished line, for the sink (its start, when it is too long).
    line: Vec<u8>,
    /// Bytes of the current line not kept in `line`.
    line_cut: u64,
}

impl LineCollector {
    pub(crate) fn new(stream: Stream, sink: Option<OutputSink>) -> Self {
        LineCollector {
            stream,
            sink,
            head: Vec::new(),
            tail: std::collections::VecDeque::new(),
            total: 0,
            line: Vec::new(),
            line_cut: 0,
        }
    }

    /// Appends a chunk, emitting every line it completes.
    pub(crate) fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let half = OUTPUT_KEPT / 2;
        let to_head = chunk.len().min(half - self.head.len());
        self.head.extend_from_slice(&chunk[..to_head]);
        let rest = &chunk[to_head..];
        if !rest.is_empty() {
            let rest = &rest[rest.len().saturating_sub(half)..];
            let over = (self.tail.len() + rest.len()).saturating_sub(half);
            self.tail.drain(..over);
            self.tail.extend(rest);
        }
        if self.sink.is_none() {
            return;
        }
        let mut chunk = chunk;
        while !chunk.is_empty() {
            let (part, ends_line) = match chunk.iter().position(|&b| b == b'\n') {
                Some(pos) => (&chunk[..pos], true),
                None => (chunk, false),
            };
            let room = (LINE_MAX - CUT_ROOM).saturating_sub(self.line.len());
            let keep = if self.line_cut > 0 {
                0
            } else {
                part.len().min(room)
            };
            self.line.extend_from_slice(&part[..keep]);
            self.line_cut += (part.len() - keep) as u64;
            if ends_line {
                self.emit_line();
                chunk = &chunk[part.len() + 1..];
            } else {
                chunk = &[];
            }
        }
    }

    /// Hands the current line to the sink (cut and marked if it was too long).
    fn emit_line(&mut self) {
        let Some(sink) = &self.sink else {
            return;
        };
        if self.line_cut == 0 && self.line.last() == Some(&b'\r') {
            self.line.pop();
        }
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if self.line_cut > 0 {
            text.push_str(&format!("… [{} more bytes cut]", self.line_cut));
        }
        sink(self.stream, &text);
        self.line.clear();
        self.line_cut = 0;
    }

    /// Emits the last line if it had no newline, and returns what was kept.
    pub(crate) fn finish(mut self) -> Vec<u8> {
        if !self.line.is_empty() || self.line_cut > 0 {
            self.emit_line();
        }
        let mut kept = self.head;
        if !self.tail.is_empty() {
            let cut = self.total - (kept.len() + self.tail.len()) as u64;
            if cut > 0 {
                kept.extend_from_slice(
                    format!("\n[… {cut} bytes of output not kept …]\n").as_bytes(),
                );
            }
            kept.extend(self.tail);
        }
        kept
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
            "sudo -n -- sh -c -- 'id -u'"
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
    fn a_flood_keeps_its_first_and_last_part_and_every_line_reaches_the_sink() {
        let lines = Arc::new(Mutex::new(0usize));
        let longest = Arc::new(Mutex::new(0usize));
        let (l, m) = (lines.clone(), longest.clone());
        let sink: OutputSink = Arc::new(move |_, line| {
            *l.lock().unwrap() += 1;
            let mut m = m.lock().unwrap();
            *m = (*m).max(line.len());
        });
        let mut c = LineCollector::new(Stream::Stdout, Some(sink));
        // 24 MiB of numbered 16-byte lines, in odd-sized chunks.
        let mut all = Vec::new();
        for i in 0..(24 * 1024 * 1024 / 16) {
            all.extend_from_slice(format!("{i:015}\n").as_bytes());
        }
        for chunk in all.chunks(33_333) {
            c.push(chunk);
        }
        let kept = c.finish();
        assert_eq!(*lines.lock().unwrap(), all.len() / 16);
        let half = OUTPUT_KEPT / 2;
        assert_eq!(&kept[..half], &all[..half]);
        assert_eq!(&kept[kept.len() - half..], &all[all.len() - half..]);
        let note = String::from_utf8_lossy(&kept[half..kept.len() - half]).into_owned();
        assert_eq!(
            note,
            format!(
                "\n[… {} bytes of output not kept …]\n",
                all.len() - 2 * half
            )
        );
        // One 1 MiB line without a newline: one line for the sink, cut and marked.
        let lines2 = Arc::new(Mutex::new(Vec::new()));
        let l2 = lines2.clone();
        let sink: OutputSink = Arc::new(move |_, line| l2.lock().unwrap().push(line.to_string()));
        let mut c = LineCollector::new(Stream::Stderr, Some(sink));
        c.push(&vec![b'x'; 1024 * 1024]);
        c.push(b"yz\nnext\n");
        assert_eq!(c.finish().len(), 1024 * 1024 + 8);
        let lines2 = lines2.lock().unwrap().clone();
        assert_eq!(lines2.len(), 2);
        assert!(lines2[0].len() <= LINE_MAX, "{}", lines2[0].len());
        let kept = LINE_MAX - CUT_ROOM;
        assert_eq!(
            &lines2[0][kept..],
            format!("… [{} more bytes cut]", 1024 * 1024 + 2 - kept)
        );
        assert_eq!(lines2[1], "next");
        assert_eq!(*longest.lock().unwrap(), 15);
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
