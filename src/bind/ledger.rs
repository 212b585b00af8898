//! The ledger: what every device vfioctl moved looked like before, so that `unbind` and
//! `restore` put back exactly that (not "whatever the kernel picks").
//!
//! One JSON file, `/var/lib/vfioctl/ledger.json` under the root, rewritten atomically
//! (temp file, fsync, rename, fsync of the directory) so a crash leaves the old or the new
//! version, never half of one. `ledger.lock` next to it is held with `flock(LOCK_EX)` for
//! the whole of a bind/unbind/restore, so two runs serialize.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use vfioctl_common::sysroot::RootDir;
use vfioctl_common::{Bdf, SysRoot};

use super::error::BindError;
use super::state::BindState;

/// The ledger's directory (under the root): `ledger.json` and `ledger.lock`.
pub const DIR: &str = "/var/lib/vfioctl";

/// One device's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Entry {
    /// Driver before vfioctl touched it (`None`: driverless).
    pub original_driver: Option<String>,
    /// `driver_override` before (`None`: unset, the kernel's `(null)`).
    pub original_override: Option<String>,
    /// The driver vfioctl binds it to.
    pub target_driver: String,
    /// Its IOMMU group when recorded.
    pub iommu_group: Option<u32>,
    /// vfioctl loaded the target driver's module for this run.
    pub module_loaded_by_vfioctl: bool,
    /// `sriov_numvfs` before (PFs only).
    pub sriov_numvfs: Option<u32>,
    /// `binding` until verified, then `on-vfio`.
    pub state: BindState,
    /// A boot-time override was asked for (`--persist`): recorded before any write, so a
    /// crash at any point leaves `restore` knowing to remove `/etc/driverctl.d/pci-<bdf>`.
    pub persisted: bool,
    /// Unix seconds when the entry was recorded.
    pub since: u64,
    /// The plan's id (the recording process id and time), to tell runs apart.
    pub plan: String,
}

/// The contents of `ledger.json`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LedgerFile {
    /// Format version (1).
    pub version: u32,
    /// Devices vfioctl moved, by address.
    pub devices: BTreeMap<Bdf, Entry>,
    /// Physical functions whose VFs vfioctl enabled (`vfioctl vf create`); `restore`
    /// disables them after the VFs themselves are given back.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sriov: BTreeMap<Bdf, crate::shared::SriovRecord>,
    /// Mediated devices vfioctl created (`vfioctl mdev create`), by UUID.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub mdevs: BTreeMap<String, crate::shared::MdevRecord>,
}

/// An open, locked ledger. The lock is released when this is dropped (or the process
/// dies: flock locks die with their file descriptor).
pub struct Ledger {
    path: PathBuf,
    dir: RootDir,
    _lock: Flock<File>,
    /// The contents; changes are written by [`Ledger::save`].
    pub data: LedgerFile,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BindError + '_ {
    move |source| BindError::Ledger {
        path: path.to_path_buf(),
        source,
    }
}

/// The largest ledger vfioctl reads (a few hundred bytes per device).
const MAX_LEDGER: usize = 16 << 20;

fn parse(path: &Path, bytes: &[u8]) -> Result<LedgerFile, BindError> {
    serde_json::from_slice(bytes).map_err(|e| BindError::LedgerCorrupt {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl Ledger {
    /// Where the ledger lives under `root`.
    pub fn path(root: &SysRoot) -> PathBuf {
        root.path(format!("{DIR}/ledger.json"))
    }

    /// Lock (waiting for another vfioctl run to finish) and read. The directory and its
    /// files are resolved inside the root and never through a symlink.
    pub fn open(root: &SysRoot) -> Result<Ledger, BindError> {
        let dir = root
            .create_dir_all_in(DIR)
            .map_err(|e| io(&root.path(DIR))(e.source))?;
        let lock_path = root.path(format!("{DIR}/ledger.lock"));
        let f = dir
            .open("ledger.lock", libc::O_CREAT | libc::O_RDWR, 0o600)
            .map_err(io(&lock_path))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&lock_path)(std::io::Error::from(e)))?;
        let path = Self::path(root);
        let data = match dir.read("ledger.json", MAX_LEDGER).map_err(io(&path))? {
            Some(bytes) => parse(&path, &bytes)?,
            None => LedgerFile {
                version: 1,
                ..LedgerFile::default()
            },
        };
        Ok(Ledger {
            path,
            dir,
            _lock: lock,
            data,
        })
    }

    /// Read without locking (for status output); `None` when there is no ledger.
    pub fn peek(root: &SysRoot) -> Result<Option<LedgerFile>, BindError> {
        let path = Self::path(root);
        let dir = match root.open_in_root(DIR, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
            Ok(_) => root
                .create_dir_all_in(DIR)
                .map_err(|e| io(&path)(e.source))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(&path)(e)),
        };
        match dir.read("ledger.json", MAX_LEDGER).map_err(io(&path))? {
            Some(bytes) => Ok(Some(parse(&path, &bytes)?)),
            None => Ok(None),
        }
    }

    /// Write the ledger atomically: temp file, fsync, rename over, fsync the directory.
    pub fn save(&self) -> Result<(), BindError> {
        let mut text = serde_json::to_vec_pretty(&self.data).map_err(|e| BindError::Ledger {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push(b'\n');
        self.dir
            .write_atomic("ledger.json", &text, 0o600)
            .map_err(io(&self.path))
    }

    /// The entry of `bdf`, if any.
    pub fn get(&self, bdf: &Bdf) -> Option<&Entry> {
        self.data.devices.get(bdf)
    }

    /// Add or replace the entry of `bdf` (in memory until saved).
    pub fn record(&mut self, bdf: Bdf, e: Entry) {
        self.data.devices.insert(bdf, e);
    }

    /// Set the state of `bdf`'s entry, if it has one (in memory until saved).
    pub fn set_state(&mut self, bdf: &Bdf, s: BindState) {
        if let Some(e) = self.data.devices.get_mut(bdf) {
            e.state = s;
        }
    }

    /// Remove and return the entry of `bdf` (in memory until saved).
    pub fn remove(&mut self, bdf: &Bdf) -> Option<Entry> {
        self.data.devices.remove(bdf)
    }

    /// The addresses of every entry, in order.
    pub fn bdfs(&self) -> Vec<Bdf> {
        self.data.devices.keys().copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn entry() -> Entry {
        Entry {
            original_driver: Some("e1000e".into()),
            original_override: None,
            target_driver: "vfio-pci".into(),
            iommu_group: Some(5),
            module_loaded_by_vfioctl: false,
            sriov_numvfs: None,
            state: BindState::HostDriver,
            persisted: false,
            since: 0,
            plan: "t".into(),
        }
    }

    #[test]
    fn save_and_reopen() {
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        let bdf: Bdf = "0000:01:00.0".parse().unwrap();
        {
            let mut l = Ledger::open(&root).unwrap();
            l.record(bdf, entry());
            l.save().unwrap();
        }
        let l = Ledger::open(&root).unwrap();
        assert_eq!(l.get(&bdf), Some(&entry()));
        let names: Vec<_> = fs::read_dir(t.path().join("var/lib/vfioctl"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert!(!names.iter().any(|n| n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn lock_serializes_two_holders() {
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        let first = Ledger::open(&root).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let r2 = root.clone();
        let h = std::thread::spawn(move || {
            let _second = Ledger::open(&r2).unwrap();
            tx.send(()).unwrap();
        });
        // The second open must block while the first holds the lock.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        h.join().unwrap();
    }

    #[test]
    fn corrupt_ledger_is_an_error_not_an_empty_one() {
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        fs::create_dir_all(t.path().join("var/lib/vfioctl")).unwrap();
        fs::write(t.path().join("var/lib/vfioctl/ledger.json"), "{not json").unwrap();
        assert!(matches!(
            Ledger::open(&root),
            Err(BindError::LedgerCorrupt { .. })
        ));
    }
}
