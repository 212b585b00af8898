//! Taking a snapshot: run the commands with their access logged, build the tree from the
//! log, write MANIFEST and SNAPSHOT.json, replay every command against the tree, then
//! move the tree into place or pack it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use vfioctl_common::pci::enumerate;
use vfioctl_common::sysroot::Access;
use vfioctl_common::{Selector, SysRoot};

use super::error::io;
use super::redact::Redactor;
use super::replay::{self, Meta, Replayed, Scratch, FORMAT, MANIFEST, META};
use super::tree::{Counts, Tree};
use super::{archive, record, run, SnapshotError};

/// What to snapshot and where.
#[derive(Clone, Debug)]
pub struct Options {
    /// A new directory, or a file ending in `.tar.zst`.
    pub out: PathBuf,
    /// Devices the per-device commands run for (default: every function but bridges).
    pub selectors: Vec<Selector>,
    /// Keep MAC addresses and serial numbers.
    pub keep_identifiers: bool,
    /// The vfioctl binary that runs the commands (the running one, on the command line).
    pub exe: PathBuf,
    /// How long one command may take.
    pub timeout: Duration,
}

/// What was written.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Report {
    /// The snapshot written (the `--out` path).
    pub out: PathBuf,
    /// Written as `.tar.zst` (else a directory).
    pub archive: bool,
    /// Size of the `.tar.zst`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compressed_bytes: Option<u64>,
    /// How many entries of each kind the tree holds.
    pub entries: Counts,
    /// Taken with `--keep-identifiers` (MAC addresses and serial numbers as read).
    pub keep_identifiers: bool,
    /// Each recorded command, replayed against the snapshot.
    pub commands: Vec<Replayed>,
    /// Every command printed against the snapshot exactly what it printed live.
    pub identical: bool,
}

/// Move `from` to `to`, refusing to replace anything that appeared at `to` meanwhile.
fn rename_new(from: &Path, to: &Path) -> Result<(), SnapshotError> {
    use nix::fcntl::{renameat2, RenameFlags};
    match renameat2(None, from, None, to, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EEXIST) => Err(SnapshotError::Exists {
            path: to.to_path_buf(),
        }),
        Err(e) => Err(SnapshotError::Io {
            what: "moving into place",
            path: to.to_path_buf(),
            source: e.into(),
        }),
    }
}

/// The PCI (vendor, device) ids present under `root`.
fn pci_ids(root: &SysRoot) -> Result<BTreeSet<(u16, u16)>, SnapshotError> {
    let hex = |s: String| u16::from_str_radix(s.trim_start_matches("0x"), 16).ok();
    let mut out = BTreeSet::new();
    for bdf in enumerate(root)? {
        let dir = bdf.sysfs_path();
        let v = root.read_attr(format!("{dir}/vendor")).ok().and_then(hex);
        let d = root.read_attr(format!("{dir}/device")).ok().and_then(hex);
        if let (Some(v), Some(d)) = (v, d) {
            out.insert((v, d));
        }
    }
    Ok(out)
}

/// Take a snapshot of `root` (the host, `/`, or any tree laid out like it).
pub fn take(root: &SysRoot, o: &Options) -> Result<Report, SnapshotError> {
    if std::fs::symlink_metadata(&o.out).is_ok() {
        return Err(SnapshotError::Exists {
            path: o.out.clone(),
        });
    }
    let parent = match o.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let scratch = Scratch::new(&parent, "vfioctl-snapshot")?;
    let logs = scratch.path().join("logs");
    let runs = scratch.path().join("run");
    let tree_dir = scratch.path().join("tree");
    for d in [&logs, &runs, &tree_dir] {
        std::fs::create_dir(d).map_err(io("creating", d))?;
    }

    // 1. Run each command with its accesses logged.
    let planned = run::plan(root, &o.selectors)?;
    let mut recorded = Vec::new();
    let mut accesses = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        let log = logs.join(format!("{i}.log"));
        let r = run::run(&o.exe, root.root(), p, Some(&log), &runs, o.timeout)?;
        let bytes = std::fs::read(&log).map_err(io("reading the access log", &log))?;
        let acc = record::parse(&log, &bytes)?;
        if let Some((_, path)) = acc.iter().find(|(a, _)| *a == Access::Write) {
            return Err(SnapshotError::Wrote {
                command: p.args.join(" "),
                path: path.clone(),
            });
        }
        accesses.push((p.label, acc));
        recorded.push(r);
    }

    // 2. The tree: what they touched, from the source root (read without a log).
    let src = SysRoot::new(root.root());
    let redactor = Redactor {
        keep_identifiers: o.keep_identifiers,
        ids: pci_ids(&src)?,
    };
    let mut tree = Tree::new(src.clone(), tree_dir.clone(), redactor);
    for (label, acc) in &accesses {
        for (a, path) in acc {
            tree.take(*a, path, label)?;
        }
    }
    let manifest = tree_dir.join(MANIFEST);
    std::fs::write(&manifest, tree.manifest()).map_err(io("writing", &manifest))?;
    let meta = Meta {
        format: FORMAT,
        vfioctl: env!("CARGO_PKG_VERSION").to_string(),
        kernel: src
            .read_attr_opt("/proc/sys/kernel/osrelease")
            .ok()
            .flatten(),
        keep_identifiers: o.keep_identifiers,
        commands: recorded,
    };
    let meta_path = tree_dir.join(META);
    let text = serde_json::to_string_pretty(&meta).expect("snapshot metadata serializes");
    std::fs::write(&meta_path, text + "\n").map_err(io("writing", &meta_path))?;

    // 3. Replay every command against the tree.
    let commands = replay::replay(&o.exe, &tree_dir, &meta, o.timeout)?;
    let identical = commands.iter().all(|c| c.identical);

    // 4. Into place.
    let archive = archive::is_archive(&o.out);
    let mut compressed_bytes = None;
    if archive {
        let bytes = archive::pack(&tree_dir)?;
        let tmp = scratch.path().join("out.tar.zst");
        std::fs::write(&tmp, &bytes).map_err(io("writing", &tmp))?;
        rename_new(&tmp, &o.out)?;
        compressed_bytes = Some(bytes.len() as u64);
    } else {
        rename_new(&tree_dir, &o.out)?;
    }
    Ok(Report {
        out: o.out.clone(),
        archive,
        compressed_bytes,
        entries: tree.counts(),
        keep_identifiers: o.keep_identifiers,
        commands,
        identical,
    })
}
