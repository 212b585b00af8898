//! What can go wrong taking or replaying a snapshot.

use std::path::{Path, PathBuf};

use crate::{Diagnose, Exit};

/// A snapshot could not be taken, written, read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{} already exists", path.display())]
    Exists { path: PathBuf },
    #[error("{what}: {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("running `vfioctl {command}` for the snapshot")]
    Run {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`vfioctl {command}` did not finish within {secs} s; killed")]
    Timeout { command: String, secs: u64 },
    #[error("`vfioctl {command}` wrote {}: snapshot commands must only read", path.display())]
    Wrote { command: String, path: PathBuf },
    #[error("access log {}: line {line} is not `<access> <absolute path>`", path.display())]
    BadLog { path: PathBuf, line: usize },
    #[error("{}: not a vfioctl snapshot (no SNAPSHOT.json)", path.display())]
    NotASnapshot { path: PathBuf },
    #[error("{}: unreadable SNAPSHOT.json", path.display())]
    BadMeta {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{}: snapshot format {found}, this vfioctl reads format {supported}", path.display())]
    Format {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("{}: the archive holds {entry:?}, which is not a plain relative path", path.display())]
    UnsafeEntry { path: PathBuf, entry: String },
    #[error("{}: the archive unpacks to more than {limit} bytes", path.display())]
    TooLarge { path: PathBuf, limit: u64 },
    #[error("{}: not a zstd-compressed tar archive", path.display())]
    Zstd {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pci(#[from] vfioctl_common::PciError),
}

impl Diagnose for SnapshotError {
    fn hint(&self) -> Option<String> {
        match self {
            SnapshotError::Exists { .. } => {
                Some("choose a new name; vfioctl snapshot never overwrites".into())
            }
            SnapshotError::NotASnapshot { .. } | SnapshotError::Format { .. } => Some(
                "replay a directory or .tar.zst written by `vfioctl snapshot` (its SNAPSHOT.json lists the commands)"
                    .into(),
            ),
            SnapshotError::Wrote { .. } => {
                Some("this is a bug in vfioctl: please report it with the command named".into())
            }
            _ => None,
        }
    }
    fn exit(&self) -> Exit {
        match self {
            SnapshotError::Exists { .. }
            | SnapshotError::NotASnapshot { .. }
            | SnapshotError::BadMeta { .. }
            | SnapshotError::Format { .. }
            | SnapshotError::UnsafeEntry { .. }
            | SnapshotError::TooLarge { .. }
            | SnapshotError::Zstd { .. } => Exit::Usage,
            _ => Exit::Infrastructure,
        }
    }
}

/// `map_err` for an I/O failure on `path`.
pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SnapshotError + 'a {
    move |source| SnapshotError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}
