//! The commands a snapshot records, and running one as its own process.
//!
//! Each command runs as `vfioctl --root R --json [--access-log L] ARGS`: the very binary
//! and code path a person runs, with only the access log added, so what it printed is
//! what the live command prints. Running them as separate processes also keeps one
//! command's crash or hang out of the snapshot's own process.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vfioctl_common::pci::{enumerate, PciDevice};
use vfioctl_common::{Bdf, Selector, SysRoot};

use super::SnapshotError;

/// The Kata release `kata config` is recorded for (the newest vfioctl models).
pub const KATA_VERSION: &str = "4.1.0";

/// One command as it ran: arguments after `vfioctl --root R --json`, exit status, output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Recorded {
    /// The command's name (`devices`, `check`, `bind --dry-run`, `vm plan`, `kata config`).
    pub label: String,
    /// The arguments after `vfioctl --root R --json`.
    pub args: Vec<String>,
    /// The exit status (128 + signal number when a signal ended it).
    pub exit: i32,
    /// What it printed on standard output.
    pub stdout: String,
    /// What it printed on standard error.
    pub stderr: String,
}

/// A command to run: its name for the MANIFEST and its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// Its name, as [`Recorded::label`].
    pub label: &'static str,
    /// The arguments after `vfioctl --root R --json`.
    pub args: Vec<String>,
}

/// The commands a snapshot records, for the devices `selectors` pick (default: every PCI
/// function that is not a bridge): `devices`; `check` with its default selection and with
/// those devices; and per device `bind --dry-run`, `vm plan` and `kata config`, plus
/// `kata config` with its default selection (every GPU on vfio-pci).
pub fn plan(root: &SysRoot, selectors: &[Selector]) -> Result<Vec<Planned>, SnapshotError> {
    let mut picked: Vec<Bdf> = Vec::new();
    for bdf in enumerate(root)? {
        // A device that cannot be read is left to `devices` and `check` to report.
        let Ok(d) = PciDevice::read(root, bdf) else {
            continue;
        };
        let wanted = if selectors.is_empty() {
            !d.is_bridge
        } else {
            selectors
                .iter()
                .any(|s| s.matches(d.bdf, d.vendor, d.device, d.class))
        };
        if wanted {
            picked.push(bdf);
        }
    }
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let mut out = vec![
        Planned {
            label: "devices",
            args: s(&["devices"]),
        },
        Planned {
            label: "check",
            args: s(&["check"]),
        },
    ];
    if !picked.is_empty() {
        let mut args = s(&["check"]);
        args.extend(picked.iter().map(Bdf::to_string));
        out.push(Planned {
            label: "check",
            args,
        });
    }
    out.push(Planned {
        label: "kata config",
        args: s(&["kata", "config", "--kata-version", KATA_VERSION]),
    });
    for b in &picked {
        let b = b.to_string();
        out.push(Planned {
            label: "bind --dry-run",
            args: s(&["bind", "--dry-run", &b]),
        });
        out.push(Planned {
            label: "vm plan",
            args: s(&["vm", "plan", "--gpu", &b, "--cpu", "tcg"]),
        });
        out.push(Planned {
            label: "kata config",
            args: s(&[
                "kata",
                "config",
                "--kata-version",
                KATA_VERSION,
                "--gpu",
                &b,
            ]),
        });
    }
    Ok(out)
}

/// Run `exe --root root --json [--access-log log] args`, its output kept in files under
/// `work` (a pipe could fill while we wait), killed after `timeout`.
pub fn run(
    exe: &Path,
    root: &Path,
    p: &Planned,
    log: Option<&Path>,
    work: &Path,
    timeout: Duration,
) -> Result<Recorded, SnapshotError> {
    let command = p.args.join(" ");
    let err = |source| SnapshotError::Run {
        command: command.clone(),
        source,
    };
    let out_path = work.join("stdout");
    let err_path = work.join("stderr");
    let stdout = std::fs::File::create(&out_path).map_err(err)?;
    let stderr = std::fs::File::create(&err_path).map_err(err)?;
    let mut cmd = Command::new(exe);
    cmd.arg("--root").arg(root).arg("--json");
    if let Some(l) = log {
        cmd.arg("--access-log").arg(l);
    }
    cmd.args(&p.args)
        .env_remove("VFIOCTL_ROOT")
        .env_remove("VFIOCTL_ACCESS_LOG")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    let mut child = cmd.spawn().map_err(err)?;
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(err)? {
            break s;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Err(SnapshotError::Timeout {
                command,
                secs: timeout.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    use std::os::unix::process::ExitStatusExt;
    let exit = status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let read = |p: &PathBuf| -> Result<String, SnapshotError> {
        let b = std::fs::read(p).map_err(err)?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    };
    Ok(Recorded {
        label: p.label.to_string(),
        args: p.args.clone(),
        exit,
        stdout: read(&out_path)?,
        stderr: read(&err_path)?,
    })
}
