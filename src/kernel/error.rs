//! Errors of kernel builds, each naming the file, tool or option that failed.

use std::path::PathBuf;

use crate::{Diagnose, Exit};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("{}: {what}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Parse(#[from] super::config::ParseError),
    #[error("{}: invalid pin manifest", path.display())]
    Pins {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error(transparent)]
    Kconfig(#[from] super::kconfig::KconfigError),
    #[error("kernel source {}: {reason}", path.display())]
    Source { path: PathBuf, reason: String },
    #[error("{}: sha256 {got} does not match the pinned {want}", path.display())]
    Checksum {
        path: PathBuf,
        want: String,
        got: String,
    },
    #[error("{}: invalid lock file", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("kernel source {}: version {version} is not in the pinned series {series}", path.display())]
    Series {
        path: PathBuf,
        version: String,
        series: String,
        /// The pin file that names the series.
        manifest: PathBuf,
    },
    #[error("patch {} no longer applies to {}; log {}", patch.display(), tree.display(), log.display())]
    Patch {
        patch: PathBuf,
        tree: PathBuf,
        log: PathBuf,
    },
    #[error("unknown flavour `{name}` (kernel-configs/ has: {known})")]
    UnknownFlavour { name: String, known: String },
    #[error("{dropped} requested kernel option(s) did not land in {}:\n{report}", config.display())]
    Verify {
        config: PathBuf,
        dropped: usize,
        report: String,
    },
    #[error("{phase}: `{command}` failed ({status}); log {}{tail}", log.display())]
    Command {
        phase: String,
        command: String,
        status: String,
        log: PathBuf,
        /// The last error lines of the log, prefixed with a newline.
        tail: String,
    },
    #[error("`{tool}` is not installed")]
    ToolMissing { tool: String, hint: String },
    #[error("NVIDIA {what}")]
    Nvidia { what: String, hint: Option<String> },
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
