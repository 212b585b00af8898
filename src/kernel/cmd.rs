//! External commands as plain data (built by pure functions, tested as such) and one
//! runner that logs their output to a file.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::error::{io, KernelError};

/// A command line with its environment and working directory.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Cmd {
    /// The program, looked up on `PATH`.
    pub program: String,
    /// Its arguments.
    pub args: Vec<String>,
    /// Environment variables added to the inherited environment.
    pub env: Vec<(String, String)>,
    /// Working directory; `None` = the current one.
    pub cwd: Option<PathBuf>,
}

impl Cmd {
    /// A command running `program` with no arguments.
    pub fn new(program: impl Into<String>) -> Cmd {
        Cmd {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            cwd: None,
        }
    }
    /// Append one argument.
    pub fn arg(mut self, a: impl Into<String>) -> Cmd {
        self.args.push(a.into());
        self
    }
    /// Append arguments.
    pub fn args<I: IntoIterator<Item = S>, S: Into<String>>(mut self, a: I) -> Cmd {
        self.args.extend(a.into_iter().map(Into::into));
        self
    }
    /// Set an environment variable for the command.
    pub fn env(mut self, k: impl Into<String>, v: impl Into<String>) -> Cmd {
        self.env.push((k.into(), v.into()));
        self
    }
    /// Run in directory `d`.
    pub fn cwd(mut self, d: impl Into<PathBuf>) -> Cmd {
        self.cwd = Some(d.into());
        self
    }
    /// Run under `nice -n N` (kernel builds share the machine).
    pub fn niced(self, n: i32) -> Cmd {
        let mut c = Cmd::new("nice").args(["-n".to_string(), n.to_string(), self.program]);
        c.args.extend(self.args);
        c.env = self.env;
        c.cwd = self.cwd;
        c
    }

    /// Shell-like rendering for logs and error messages.
    pub fn render(&self) -> String {
        let q = |s: &str| {
            if !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c))
            {
                s.to_string()
            } else {
                format!("'{}'", s.replace('\'', "'\\''"))
            }
        };
        let mut parts: Vec<String> = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", q(v)))
            .collect();
        parts.push(q(&self.program));
        parts.extend(self.args.iter().map(|a| q(a)));
        parts.join(" ")
    }

    /// Run, appending stdout+stderr to `log`; fail with the log's last error lines.
    pub fn run_logged(&self, phase: &str, log: &Path) -> Result<(), KernelError> {
        self.run_logged_lines(phase, log, None)
    }

    /// [`run_logged`](Self::run_logged), also handing each line of stdout to `on_line`
    /// (after it is in the log): kbuild's `  CC      init/main.o` lines count the
    /// objects compiled.
    pub fn run_logged_lines(
        &self,
        phase: &str,
        log: &Path,
        mut on_line: Option<&mut dyn FnMut(&str)>,
    ) -> Result<(), KernelError> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(io(log, "cannot open log"))?;
        writeln!(f, "$ {}", self.render()).map_err(io(log, "cannot write log"))?;
        let err = f.try_clone().map_err(io(log, "cannot open log"))?;
        let mut c = Command::new(&self.program);
        c.args(&self.args).stdin(Stdio::null()).stderr(err);
        if on_line.is_some() {
            c.stdout(Stdio::piped());
        } else {
            c.stdout(f.try_clone().map_err(io(log, "cannot open log"))?);
        }
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let spawned = c.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                KernelError::ToolMissing {
                    tool: self.program.clone(),
                    hint: "run scripts/setup (kernel build dependencies)".into(),
                }
            } else {
                KernelError::Io {
                    path: PathBuf::from(&self.program),
                    what: "cannot start",
                    source: e,
                }
            }
        });
        let mut child = spawned?;
        // Drained to the end even when the log cannot be written, so the child never
        // blocks on a full pipe; the write error is reported after it exits.
        let mut log_error = None;
        if let (Some(cb), Some(out)) = (on_line.as_mut(), child.stdout.take()) {
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                if log_error.is_none() {
                    log_error = f.write_all(&line).and_then(|_| f.write_all(b"\n")).err();
                }
                cb(&String::from_utf8_lossy(&line));
            }
        }
        let status = child.wait().map_err(|e| KernelError::Io {
            path: PathBuf::from(&self.program),
            what: "cannot wait for",
            source: e,
        })?;
        if let Some(e) = log_error {
            return Err(io(log, "cannot write log")(e));
        }
        if status.success() {
            return Ok(());
        }
        Err(KernelError::Command {
            phase: phase.to_string(),
            command: self.render(),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: error_tail(log, 12),
        })
    }

    /// Run and capture stdout (for short queries like `make kernelrelease`).
    pub fn output(&self) -> Result<String, KernelError> {
        let mut c = Command::new(&self.program);
        c.args(&self.args)
            .stdin(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            c.env(k, v);
        }
        if let Some(d) = &self.cwd {
            c.current_dir(d);
        }
        let o = c.output().map_err(|e| KernelError::Io {
            path: PathBuf::from(&self.program),
            what: "cannot start",
            source: e,
        })?;
        if !o.status.success() {
            return Err(KernelError::Command {
                phase: "query".into(),
                command: self.render(),
                status: o.status.to_string(),
                log: PathBuf::from("(stderr)"),
                tail: format!("\n{}", String::from_utf8_lossy(&o.stderr).trim()),
            });
        }
        Ok(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

/// The last `n` lines of `log` that look like errors (or the last lines if none do),
/// each on its own line, prefixed with a newline.
pub fn error_tail(log: &Path, n: usize) -> String {
    let Ok(f) = File::open(log) else {
        return String::new();
    };
    let lines: Vec<String> = BufReader::new(f).lines().map_while(Result::ok).collect();
    let errs: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("error") || l.contains("Error") || l.contains("No rule"))
        .collect();
    let pick: Vec<&String> = if errs.is_empty() {
        lines.iter().rev().take(n).rev().collect()
    } else {
        errs.into_iter().rev().take(n).rev().collect()
    };
    pick.iter().map(|l| format!("\n    {l}")).collect()
}

/// Whether `tool` is on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_nices() {
        let c = Cmd::new("make")
            .args(["-C", "/src dir", "CC=ccache gcc"])
            .env("KBUILD_BUILD_USER", "vfioctl")
            .niced(10);
        assert_eq!(
            c.render(),
            "KBUILD_BUILD_USER=vfioctl nice -n 10 make -C '/src dir' 'CC=ccache gcc'"
        );
    }

    #[test]
    fn lines_reach_the_callback_and_the_log() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        let mut seen = Vec::new();
        Cmd::new("sh")
            .args([
                "-c",
                "echo '  CC      a.o'; echo warn >&2; echo '  LD      b.o'",
            ])
            .run_logged_lines(
                "compile",
                &log,
                Some(&mut |l: &str| seen.push(l.to_string())),
            )
            .unwrap();
        assert_eq!(seen, ["  CC      a.o", "  LD      b.o"]);
        let text = std::fs::read_to_string(&log).unwrap();
        for want in ["$ sh -c", "  CC      a.o", "warn", "  LD      b.o"] {
            assert!(text.contains(want), "{want}: {text}");
        }
    }

    #[test]
    fn failing_command_names_log_and_tail() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("x.log");
        let e = Cmd::new("sh")
            .args(["-c", "echo fine; echo 'foo.c:1: error: boom' >&2; exit 3"])
            .run_logged("compile", &log)
            .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("compile: `sh -c"), "{s}");
        assert!(s.contains("error: boom"), "{s}");
        assert!(std::fs::read_to_string(&log).unwrap().contains("fine"));
        let e = Cmd::new("definitely-not-a-tool-xyz")
            .run_logged("x", &log)
            .unwrap_err();
        assert!(matches!(e, KernelError::ToolMissing { .. }));
    }
}
