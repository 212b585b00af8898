//! Guest initramfs and disk images from `rootfs/*.toml` manifests: the static agent as
//! `/init`, kernel modules resolved with their dependencies, firmware, busybox, extra
//! files. [`cpio`] writes the archive deterministically; [`build`] puts it together.

pub mod agent_bin;
pub mod build;
pub mod cpio;
pub mod manifest;
pub mod modules;

use std::path::PathBuf;

pub use build::{build, BuildOptions, BuildReport};
pub use manifest::{Compression, Manifest, ManifestError};

use crate::exit::{Diagnose, Exit};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Usage(String),
    #[error("missing {what}: {}", path.display())]
    Missing { what: String, path: PathBuf },
    #[error("kernel module {name} is neither in modules.dep nor built into kernel {kver}")]
    Module { name: String, kver: String },
    #[error("guest path {path:?}: {reason}")]
    GuestPath { path: String, reason: String },
    #[error("input {}: {reason}", path.display())]
    BadSource { path: PathBuf, reason: String },
    #[error("{} is not a static executable", path.display())]
    NotStatic { path: PathBuf },
    /// No `--agent PATH` and no installed agent in any of `searched`.
    #[error(
        "no static guest agent: pass --agent PATH (looked for an installed one at {})",
        display_paths(searched)
    )]
    NoAgent { searched: Vec<PathBuf> },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{cmd}` failed: {message}")]
    Tool { cmd: String, message: String },
}

fn display_paths(v: &[PathBuf]) -> String {
    v.iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Diagnose for RootfsError {
    fn hint(&self) -> Option<String> {
        match self {
            RootfsError::NotStatic { .. } => Some(format!(
                "build the agent with {} ({}); for busybox install busybox-static",
                agent_bin::BUILD_AGENT,
                agent_bin::build_command()
            )),
            RootfsError::NoAgent { .. } => Some(format!(
                "build one from a checkout with {} (it prints the path to pass: {})",
                agent_bin::BUILD_AGENT,
                agent_bin::build_command()
            )),
            RootfsError::Module { .. } => Some(
                "check the name with `modinfo -b ROOT -k KVER NAME`; remove it from the manifest if the kernel lacks it".into(),
            ),
            RootfsError::Tool { .. } => Some("run scripts/setup to install the build tools".into()),
            RootfsError::GuestPath { .. } => Some(
                "a destination is an absolute guest path without `..`, and nothing is staged under a [[symlink]]".into(),
            ),
            RootfsError::BadSource { .. } => Some(
                "manifest sources are regular files (no devices, FIFOs or sockets) of at most 1 GiB".into(),
            ),
            _ => None,
        }
    }
    fn exit(&self) -> Exit {
        match self {
            RootfsError::Manifest(_)
            | RootfsError::Usage(_)
            | RootfsError::Missing { .. }
            | RootfsError::Module { .. }
            | RootfsError::GuestPath { .. }
            | RootfsError::BadSource { .. }
            | RootfsError::NotStatic { .. }
            | RootfsError::NoAgent { .. } => Exit::Usage,
            _ => Exit::Infrastructure,
        }
    }
}
