//! What can go wrong taking or replaying a snapshot.

use std::path::{Path, PathBuf};

use crate::{Diagnose, Exit};

/// A snapshot could not be taken, written, read or replayed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The output path already exists; a snapshot never overwrites.
    #[error("{} already exists", path.display())]
    Exists {
        /// The output path asked for.
        path: PathBuf,
    },
    /// A file or directory operation failed.
    #[error("{what}: {}", path.display())]
    Io {
        /// What was being done, e.g. "reading" or "creating a scratch directory".
        what: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A vfioctl command the snapshot runs could not be started or waited for.
    #[error("running `vfioctl {command}` for the snapshot")]
    Run {
        /// The command's arguments, space-separated.
        command: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A vfioctl command the snapshot runs did not finish in time and was killed.
    #[error("`vfioctl {command}` did not finish within {secs} s; killed")]
    Timeout {
        /// The command's arguments, space-separated.
        command: String,
        /// The timeout, in seconds.
        secs: u64,
    },
    /// A command the snapshot runs wrote a file (its access log says so): a vfioctl bug.
    #[error("`vfioctl {command}` wrote {}: snapshot commands must only read", path.display())]
    Wrote {
        /// The command's arguments, space-separated.
        command: String,
        /// The file it wrote.
        path: PathBuf,
    },
    /// A line of a command's access log does not parse.
    #[error("access log {}: line {line} is not `<access> <absolute path>`", path.display())]
    BadLog {
        /// The access log.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
    /// The path to replay has no `SNAPSHOT.json`.
    #[error("{}: not a vfioctl snapshot (no SNAPSHOT.json)", path.display())]
    NotASnapshot {
        /// The path given.
        path: PathBuf,
    },
    /// `SNAPSHOT.json` is not valid JSON of the expected shape.
    #[error("{}: unreadable SNAPSHOT.json", path.display())]
    BadMeta {
        /// The snapshot's path.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The snapshot was written in a format this vfioctl does not read.
    #[error("{}: snapshot format {found}, this vfioctl reads format {supported}", path.display())]
    Format {
        /// The snapshot's path.
        path: PathBuf,
        /// The format number in its `SNAPSHOT.json`.
        found: u32,
        /// The format number this vfioctl reads.
        supported: u32,
    },
    /// The archive has an entry that is absolute, climbs out (`..`), or is not a file,
    /// directory or symlink; nothing more is unpacked.
    #[error("{}: the archive holds {entry:?}, which is not a plain relative path", path.display())]
    UnsafeEntry {
        /// The archive.
        path: PathBuf,
        /// The entry's path and tar entry type.
        entry: String,
    },
    /// The archive's entries add up to more than the unpack limit.
    #[error("{}: the archive unpacks to more than {limit} bytes", path.display())]
    TooLarge {
        /// The archive.
        path: PathBuf,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The file is not a zstd-compressed tar archive.
    #[error("{}: not a zstd-compressed tar archive", path.display())]
    Zstd {
        /// The archive.
        path: PathBuf,
        /// The decompression error.
        #[source]
        source: std::io::Error,
    },
    /// Listing the PCI devices to choose the snapshot's commands failed.
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
