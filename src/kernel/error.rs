//! Errors of kernel builds, each naming the file, tool or option that failed.

use std::path::PathBuf;

use crate::{Diagnose, Exit};

/// Why a kernel build, verification, lock or NVIDIA module step failed; its
/// [`Diagnose`] impl gives the hint and exit code the CLI shows.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// A file or command could not be read, written, created or started.
    #[error("{}: {what}", path.display())]
    Io {
        /// The file, directory or program the operation was on.
        path: PathBuf,
        /// What was attempted, e.g. "cannot read" or "cannot start".
        what: &'static str,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A config fragment or `.config` line could not be parsed.
    #[error(transparent)]
    Parse(#[from] super::config::ParseError),
    /// `kernel-configs/manifest.toml` (the pin manifest) is not valid TOML for [`super::manifest::Pins`].
    #[error("{}: invalid pin manifest", path.display())]
    Pins {
        /// The pin manifest file.
        path: PathBuf,
        /// The TOML error, with its position.
        #[source]
        source: toml::de::Error,
    },
    /// The kernel source's Kconfig files could not be read or parsed.
    #[error(transparent)]
    Kconfig(#[from] super::kconfig::KconfigError),
    /// The kernel source (tarball or directory) is missing or unusable.
    #[error("kernel source {}: {reason}", path.display())]
    Source {
        /// The source tarball or directory.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A downloaded or given file's sha256 is not the pinned one.
    #[error("{}: sha256 {got} does not match the pinned {want}", path.display())]
    Checksum {
        /// The file that was hashed.
        path: PathBuf,
        /// The pinned sha256 (hex).
        want: String,
        /// The file's actual sha256 (hex).
        got: String,
    },
    /// `kernel-configs/kernel.lock` is not valid TOML for the lock format.
    #[error("{}: invalid lock file", path.display())]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The TOML error, with its position.
        #[source]
        source: toml::de::Error,
    },
    /// The kernel source's version is outside the series pinned in the manifest.
    #[error("kernel source {}: version {version} is not in the pinned series {series}", path.display())]
    Series {
        /// The kernel source tarball or directory.
        path: PathBuf,
        /// The source's kernel version, e.g. `6.1.192`.
        version: String,
        /// The pinned series, e.g. `6.1`.
        series: String,
        /// The pin file that names the series.
        manifest: PathBuf,
    },
    /// A patch from `kernel-configs/` no longer applies (its dry run failed); the tree is unchanged.
    #[error("patch {} no longer applies to {}; log {}", patch.display(), tree.display(), log.display())]
    Patch {
        /// The patch file.
        patch: PathBuf,
        /// The kernel source tree it was applied to.
        tree: PathBuf,
        /// The log holding `patch`'s output.
        log: PathBuf,
    },
    /// `--series` names a series the pin manifest has no table for.
    #[error("kernel series `{name}` is not pinned in {} (pinned: {known})", manifest.display())]
    UnknownSeries {
        /// The series asked for.
        name: String,
        /// The series the manifest pins, comma-separated, the default first.
        known: String,
        /// The pin manifest.
        manifest: PathBuf,
    },
    /// A requested flavour has no `NN-<name>.config` fragment in `kernel-configs/`.
    #[error("unknown flavour `{name}` (kernel-configs/ has: {known})")]
    UnknownFlavour {
        /// The flavour asked for.
        name: String,
        /// The flavours that exist, comma-separated.
        known: String,
    },
    /// Requested options did not land in the generated `.config` (exit: check failed).
    #[error("{dropped} requested kernel option(s) did not land in {}:\n{report}", config.display())]
    Verify {
        /// The generated `.config` that was checked.
        config: PathBuf,
        /// How many requests were dropped or conflict.
        dropped: usize,
        /// The rendered verification report (also written to the verify log).
        report: String,
    },
    /// An external command exited unsuccessfully.
    #[error("{phase}: `{command}` failed ({status}); log {}{tail}", log.display())]
    Command {
        /// The build phase that ran it, e.g. `compile` or `query`.
        phase: String,
        /// The command line, rendered for copy and paste.
        command: String,
        /// Its exit status as text.
        status: String,
        /// The log with its output (`(stderr)` for captured queries).
        log: PathBuf,
        /// The last error lines of the log, prefixed with a newline.
        tail: String,
    },
    /// A program the build needs is not installed (not found on `PATH`).
    #[error("`{tool}` is not installed")]
    ToolMissing {
        /// The program's name.
        tool: String,
        /// How to install it.
        hint: String,
    },
    /// An NVIDIA module step failed (missing pin, download, unknown `.run` version...).
    #[error("NVIDIA {what}")]
    Nvidia {
        /// What failed, as a sentence fragment after "NVIDIA".
        what: String,
        /// How to fix it, when known.
        hint: Option<String>,
    },
}

impl Diagnose for KernelError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            KernelError::Source { .. } => {
                "install Debian's source with `scripts/setup --kernel-source` (tarball under /usr/src), or pass --source DIR|TARBALL of a clean tree (`make mrproper`)".into()
            }
            KernelError::Checksum { .. } => {
                "the file is not the pinned one: download it again (`scripts/setup --nvidia`), or update kernel-configs/manifest.toml (and re-check the NVIDIA patch)".into()
            }
            KernelError::Series { manifest, series, .. } => format!(
                "install the {series} source (scripts/setup installs linux-source), or move the pin: change `series` in {} and re-check the patches and fragments (then `vfioctl kernel lock`); --allow-unpinned builds it anyway",
                manifest.display()
            ),
            KernelError::Patch { patch, .. } => format!(
                "refresh {} against the new source (re-create it from the changed files, or drop it if upstream now has the change), then rebuild",
                patch.display()
            ),
            KernelError::Lock { .. } => {
                "fix the file at the position named above, or re-create it with `vfioctl kernel lock`".into()
            }
            KernelError::UnknownSeries { manifest, .. } => format!(
                "pass one of the pinned series, or add a [series.\"x.y\"] table to {}",
                manifest.display()
            ),
            KernelError::UnknownFlavour { .. } => {
                "flavours are the NN-<name>.config files in kernel-configs/".into()
            }
            KernelError::Verify { .. } => {
                "add the named dependency to the fragment that requested the option, or list the option with a reason in kernel-configs/allowlist".into()
            }
            KernelError::Command { .. } => "read the log named above; the build tree is kept for inspection".into(),
            KernelError::ToolMissing { hint, .. } => hint.clone(),
            KernelError::Nvidia { hint, .. } => return hint.clone(),
            KernelError::Pins { .. } | KernelError::Parse(_) => {
                "fix the file at the position named above".into()
            }
            _ => return None,
        })
    }

    fn exit(&self) -> Exit {
        match self {
            KernelError::Verify { .. } => Exit::CheckFailed,
            KernelError::Parse(_)
            | KernelError::Pins { .. }
            | KernelError::UnknownFlavour { .. }
            | KernelError::UnknownSeries { .. }
            | KernelError::Source { .. }
            | KernelError::Checksum { .. }
            | KernelError::Series { .. }
            | KernelError::Patch { .. }
            | KernelError::Lock { .. } => Exit::Usage,
            _ => Exit::Infrastructure,
        }
    }
}

pub(crate) fn io(
    path: impl Into<PathBuf>,
    what: &'static str,
) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.into();
    move |source| KernelError::Io { path, what, source }
}
