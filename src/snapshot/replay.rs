//! Opening a snapshot (directory or `.tar.zst`) and replaying its recorded commands with
//! `--root` pointed at it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::run::{self, Planned, Recorded};
use super::{archive, SnapshotError};

/// The file at the top of a snapshot that lists the recorded commands.
pub const META: &str = "SNAPSHOT.json";
/// The file at the top of a snapshot that lists every entry and why it was taken.
pub const MANIFEST: &str = "MANIFEST";
/// The snapshot format this vfioctl writes and reads.
pub const FORMAT: u32 = 1;

/// `SNAPSHOT.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Meta {
    /// The snapshot format it was written in (see [`FORMAT`]).
    pub format: u32,
    /// The vfioctl version that took it.
    pub vfioctl: String,
    /// `uname -r` of the host it was taken on.
    pub kernel: Option<String>,
    /// Taken with `--keep-identifiers` (MAC addresses and serial numbers as read).
    pub keep_identifiers: bool,
    /// Every command run, with what it printed live.
    pub commands: Vec<Recorded>,
}

/// A directory this process created and removes when dropped.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new directory `<parent>/.<prefix>-<pid>-<n>`.
    pub fn new(parent: &Path, prefix: &str) -> Result<Scratch, SnapshotError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = parent.join(format!(
            ".{prefix}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&p).map_err(|source| SnapshotError::Io {
            what: "creating a scratch directory",
            path: p.clone(),
            source,
        })?;
        Ok(Scratch(p))
    }
    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A snapshot ready to replay: its directory, unpacked into a scratch directory when it
/// came as an archive.
#[derive(Debug)]
pub struct Opened {
    /// The snapshot directory: the one given, or where its archive was unpacked.
    pub dir: PathBuf,
    /// Its `SNAPSHOT.json`.
    pub meta: Meta,
    _scratch: Option<Scratch>,
}

/// Read `SNAPSHOT.json` of the snapshot directory `dir`.
pub fn read_meta(dir: &Path) -> Result<Meta, SnapshotError> {
    let p = dir.join(META);
    let text = match std::fs::read(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SnapshotError::NotASnapshot {
                path: dir.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(SnapshotError::Io {
                what: "reading",
                path: p,
                source,
            })
        }
    };
    let meta: Meta = serde_json::from_slice(&text).map_err(|source| SnapshotError::BadMeta {
        path: p.clone(),
        source,
    })?;
    if meta.format != FORMAT {
        return Err(SnapshotError::Format {
            path: p,
            found: meta.format,
            supported: FORMAT,
        });
    }
    Ok(meta)
}

/// Open a snapshot directory or `.tar.zst` (unpacked under the system's temporary
/// directory, removed when the [`Opened`] is dropped).
pub fn open(snap: &Path) -> Result<Opened, SnapshotError> {
    if archive::is_archive(snap) && snap.is_file() {
        let scratch = Scratch::new(&std::env::temp_dir(), "vfioctl-replay")?;
        archive::unpack(snap, scratch.path())?;
        let dir = scratch.path().to_path_buf();
        let meta = read_meta(&dir).map_err(|e| match e {
            SnapshotError::NotASnapshot { .. } => SnapshotError::NotASnapshot {
                path: snap.to_path_buf(),
            },
            e => e,
        })?;
        return Ok(Opened {
            dir,
            meta,
            _scratch: Some(scratch),
        });
    }
    let meta = read_meta(snap)?;
    Ok(Opened {
        dir: snap.to_path_buf(),
        meta,
        _scratch: None,
    })
}

/// One recorded command run again against the snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Replayed {
    /// The command's name, as recorded.
    pub label: String,
    /// The arguments after `vfioctl --root R --json`.
    pub args: Vec<String>,
    /// The exit status recorded when the snapshot was taken.
    pub live_exit: i32,
    /// The exit status of the replay.
    pub replay_exit: i32,
    /// Same exit status and byte-identical standard output.
    pub identical: bool,
    /// A unified diff of the standard output (live, then replayed) when it differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
}

/// The most diff text kept per command.
const MAX_DIFF: usize = 16 << 10;

/// Compare a replayed run with the live one.
pub fn compare(live: &Recorded, replayed: &Recorded) -> Replayed {
    let identical = live.exit == replayed.exit && live.stdout == replayed.stdout;
    let diff = (live.stdout != replayed.stdout).then(|| {
        let mut d = similar::TextDiff::from_lines(&live.stdout, &replayed.stdout)
            .unified_diff()
            .context_radius(2)
            .header("live", "replay")
            .to_string();
        if d.len() > MAX_DIFF {
            let mut cut = MAX_DIFF;
            while !d.is_char_boundary(cut) {
                cut -= 1;
            }
            d.truncate(cut);
            d.push_str("\n[diff cut]\n");
        }
        d
    });
    Replayed {
        label: live.label.clone(),
        args: live.args.clone(),
        live_exit: live.exit,
        replay_exit: replayed.exit,
        identical,
        diff,
    }
}

/// Run every command of `meta` with `--root dir` and compare with what it printed live.
pub fn replay(
    exe: &Path,
    dir: &Path,
    meta: &Meta,
    timeout: Duration,
) -> Result<Vec<Replayed>, SnapshotError> {
    let work = Scratch::new(&std::env::temp_dir(), "vfioctl-replay-run")?;
    let mut out = Vec::new();
    for live in &meta.commands {
        let p = Planned {
            label: "",
            args: live.args.clone(),
        };
        let mut r = run::run(exe, dir, &p, None, work.path(), timeout)?;
        r.label = live.label.clone();
        out.push(compare(live, &r));
    }
    Ok(out)
}
