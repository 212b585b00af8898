//! Guest initramfs and disk images from `rootfs/*.toml` manifests: the static agent as
//! `/init`, kernel modules resolved with their dependencies, firmware, busybox, extra
//! files. [`cpio`] writes the archive deterministically; [`build`] puts it together.

#![warn(missing_docs)]

pub mod agent_bin;
pub mod build;
pub mod cpio;
pub mod manifest;
pub mod modules;

use std::path::PathBuf;

pub use build::{build, BuildOptions, BuildReport};
pub use manifest::{Compression, Manifest, ManifestError};

use crate::exit::{Diagnose, Exit};

/// Why `vfioctl rootfs build` could not build the image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// The manifest could not be read or parsed.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The arguments or the manifest ask for something that cannot be done (the message
    /// says what, e.g. modules listed without `--kernel-modules`).
    #[error("{0}")]
    Usage(String),
    /// A required input is not there.
    #[error("missing {what}: {}", path.display())]
    Missing {
        /// What the input is (e.g. "input file", a manifest item, `modules.dep`).
        what: String,
        /// Where it was looked for.
        path: PathBuf,
    },
    /// A required kernel module is neither a module file nor built into the kernel.
    #[error("kernel module {name} is neither in modules.dep nor built into kernel {kver}")]
    Module {
        /// The module's name, as the manifest gives it.
        name: String,
        /// The kernel version searched.
        kver: String,
    },
    /// A guest destination path cannot be used: not absolute, with `..` or a NUL byte, or
    /// clashing with what is already staged there (e.g. a file where a directory is wanted).
    #[error("guest path {path:?}: {reason}")]
    GuestPath {
        /// The guest path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An input is not a regular file, or is larger than [`build::MAX_SOURCE_BYTES`].
    #[error("input {}: {reason}", path.display())]
    BadSource {
        /// The input on the host.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The agent or busybox binary is not a static executable (the guest has no libc).
    #[error("{} is not a static executable", path.display())]
    NotStatic {
        /// The binary.
        path: PathBuf,
    },
    /// No `--agent PATH` and no installed agent in any of `searched`.
    #[error(
        "no static guest agent: pass --agent PATH (looked for an installed one at {})",
        display_paths(searched)
    )]
    NoAgent {
        /// The places an installed agent was looked for.
        searched: Vec<PathBuf>,
    },
    /// Reading an input or writing an output failed.
    #[error("{}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An external tool (`mkfs.ext4`, busybox, a decompressor) could not run or failed.
    #[error("`{cmd}` failed: {message}")]
    Tool {
        /// The command line run.
        cmd: String,
        /// Why it failed: its standard error, or why it could not start.
        message: String,
    },
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
