//! Shell quoting: arguments are quoted by the library, never pasted into a command line.

use std::borrow::Cow;
use std::fmt;

/// An argument that cannot be passed through a POSIX shell.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("argument {arg:?} contains a NUL byte, which a shell cannot pass")]
pub struct ShellError {
    /// The offending argument (truncated to 64 characters).
    pub arg: String,
}

/// Quotes `arg` so that a POSIX shell passes it through as exactly one word, unchanged.
///
/// ```
/// use deployer_core::quote;
/// assert_eq!(quote("plain").unwrap(), "plain");
/// assert_eq!(quote("a b").unwrap(), "'a b'");
/// assert_eq!(quote("it's $(rm -rf /)").unwrap(), r#""it's "'$(rm -rf /)'"#);
/// assert!(quote("nul\0byte").is_err());
/// ```
pub fn quote(arg: &str) -> Result<Cow<'_, str>, ShellError> {
    if arg.is_empty() {
        return Ok(Cow::Borrowed("''"));
    }
    shlex::try_quote(arg).map_err(|_| ShellError {
        arg: arg.chars().take(64).collect(),
    })
}

/// A command line built from a program and its arguments, each quoted.
///
/// ```
/// use deployer_core::ShellCommand;
///
/// let cmd = ShellCommand::new("tar")
///     .arg("-xzf")
///     .arg("/tmp/my app.tgz")
///     .arg("-C")
///     .arg("/srv/releases/1; rm -rf /")
///     .build()
///     .unwrap();
/// assert_eq!(cmd, r#"tar -xzf '/tmp/my app.tgz' -C '/srv/releases/1; rm -rf /'"#);
///
/// // Operators between commands are added explicitly, never from an argument.
/// let two = ShellCommand::new("mkdir").arg("-p").arg("/srv/a b")
///     .then("test").arg("-d").arg("/srv/a b")
///     .build().unwrap();
/// assert_eq!(two, "mkdir -p '/srv/a b' && test -d '/srv/a b'");
/// ```
#[derive(Clone, Default)]
pub struct ShellCommand {
    words: Vec<Word>,
}

#[derive(Clone)]
enum Word {
    Quoted(String),
    Raw(&'static str),
}

impl ShellCommand {
    /// Starts a command line with `program` (quoted like any argument).
    pub fn new(program: impl Into<String>) -> Self {
        ShellCommand {
            words: vec![Word::Quoted(program.into())],
        }
    }

    /// Adds one argument, quoted.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.words.push(Word::Quoted(arg.into()));
        self
    }

    /// Adds several arguments, each quoted.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.words
            .extend(args.into_iter().map(|a| Word::Quoted(a.into())));
        self
    }

    /// Adds a fixed shell fragment (an operator or redirection such as `&&`, `2>&1`,
    /// `>/dev/null`). Only `'static` strings are accepted, so user data can never get here.
    pub fn raw(mut self, fragment: &'static str) -> Self {
        self.words.push(Word::Raw(fragment));
        self
    }

    /// Adds `&&` and starts the next command with `program`.
    pub fn then(self, program: impl Into<String>) -> Self {
        self.raw("&&").arg(program)
    }

    /// The command line; fails only for arguments containing a NUL byte.
    pub fn build(&self) -> Result<String, ShellError> {
        let mut out = String::new();
        for (i, word) in self.words.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            match word {
                Word::Quoted(s) => out.push_str(&quote(s)?),
                Word::Raw(s) => out.push_str(s),
            }
        }
        Ok(out)
    }
}

impl fmt::Debug for ShellCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.build() {
            Ok(s) => write!(f, "ShellCommand({s})"),
            Err(e) => write!(f, "ShellCommand(<{e}>)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a real `sh` receives for a quoted argument must be the argument, byte for byte.
    #[test]
    fn quoted_arguments_survive_a_real_shell() {
        let hostile = [
            "",
            "plain",
            "with space",
            "it's",
            "\"double\"",
            "$(touch /tmp/pwned)",
            "`id`",
            "a;b&&c||d|e",
            "$HOME ${PATH} $1 $@",
            "back\\slash\\",
            "new\nline\ttab",
            "glob * ? [a-z]",
            "~user",
            "-n",
            "#comment",
            "!bang",
            "ünïcødé ✓",
            "'\"'\"'",
            "trailing\\",
        ];
        for arg in hostile {
            let cmd = ShellCommand::new("printf")
                .arg("%s")
                .arg(arg)
                .build()
                .unwrap();
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&cmd)
                .output()
                .unwrap();
            assert!(out.status.success(), "{cmd}");
            assert_eq!(String::from_utf8(out.stdout).unwrap(), arg, "through {cmd}");
        }
    }

    #[test]
    fn nul_bytes_are_refused() {
        let err = ShellCommand::new("echo").arg("a\0b").build().unwrap_err();
        assert_eq!(
            err.to_string(),
            "argument \"a\\0b\" contains a NUL byte, which a shell cannot pass"
        );
    }
}
