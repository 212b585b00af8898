//! A VM's name and its runtime directory: the one owner of the layout.
//!
//! vfioctl runs as root, and a VM name comes from the command line: it is validated into a
//! [`VmName`] (1-32 letters, digits, `-`, `_`; first a letter or digit) before any path is
//! built from it, so `../x`, `/abs`, `''` and `/` never name a directory. A run directory
//! is `BASE/NAME` (mode 0700) and carries a marker file vfioctl wrote when it created it;
//! `vm down` removes only a directory that is a real directory directly under the base and
//! carries the marker for that very name ([`RunDir::remove`]).
//!
//! | file | what |
//! |---|---|
//! | `.vfioctl-run-dir` | the marker: this directory was made by `vfioctl vm up` |
//! | `state.json` | the [`super::state::VmRecord`] (0600) |
//! | `qmp.sock` | QEMU's QMP socket (0600 once QEMU made it) |
//! | `serial.log`, `qemu.stderr`, `qemu.pid` | QEMU's console, its stderr, its pid file |
//! | `OVMF_VARS.fd` | the VM's copy of the OVMF variable store |
//! | `vhost-vsock.sock`, `vsock.uds`, `vhost-device-vsock.log` | vhost-user vsock |
//! | `agent.token` | the per-VM agent secret (0600), handed to the guest over fw_cfg |
//!
//! Next to the run directories, `BASE/.NAME.lock` serialises `vm up`, `down`, `plug` and
//! `unplug` of one name ([`RunDir::lock`]); it lives outside the run directory because
//! `vm down` removes that. A name never starts with `.`, so the two never collide.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use vfioctl_common::proto::Token;
use vfioctl_common::SysRoot;

use crate::{Diagnose, Exit};

/// The longest VM name: it is part of unix socket paths (108 bytes at most).
pub const MAX_NAME: usize = 32;

/// A validated VM name: 1-32 ASCII letters, digits, `-` and `_`, starting with a letter
/// or digit. It is a single path component by construction.
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

/// A string that is not a VM name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid VM name {}: {reason}", vfioctl_common::text::one_line(&format!("{name:?}")))]
pub struct VmNameError {
    /// The string as given.
    pub name: String,
    /// Which rule it breaks (`empty`, `must start with a letter or digit`, ...).
    pub reason: &'static str,
}

impl Diagnose for VmNameError {
    fn hint(&self) -> Option<String> {
        Some(format!(
            "a VM name is 1-{MAX_NAME} letters, digits, '-' or '_', starting with a letter or digit (it names a directory under the runtime base); `vfioctl vm list` shows the VMs"
        ))
    }
    fn exit(&self) -> Exit {
        Exit::Usage
    }
}

impl VmName {
    /// Validate `s` as a VM name.
    pub fn new(s: &str) -> Result<VmName, VmNameError> {
        let err = |reason| VmNameError {
            name: s.into(),
            reason,
        };
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.len() > MAX_NAME {
            return Err(err("longer than 32 characters"));
        }
        if s.contains('/') {
            return Err(err("contains '/' (a name is not a path)"));
        }
        if !s.as_bytes()[0].is_ascii_alphanumeric() {
            return Err(err("must start with a letter or digit"));
        }
        if !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(err("only letters, digits, '-' and '_' are allowed"));
        }
        Ok(VmName(s.into()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VmName {
    type Err = VmNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        VmName::new(s)
    }
}

impl TryFrom<String> for VmName {
    type Error = VmNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        VmName::new(&s)
    }
}

impl From<VmName> for String {
    fn from(n: VmName) -> String {
        n.0
    }
}

impl AsRef<str> for VmName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for VmName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for VmName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for VmName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// Where VMs live and how the host is reached.
#[derive(Clone, Debug)]
pub struct Env {
    /// Host root for sysfs/dev reads (`--root`).
    pub root: SysRoot,
    /// Runtime base directory (see [`super::state::run_base`]).
    pub base: PathBuf,
}

impl Env {
    /// The real host: `/` and the default runtime base.
    pub fn host() -> Env {
        Env {
            root: SysRoot::host(),
            base: super::state::run_base(),
        }
    }

    /// The run directory of `name` under this base.
    pub fn run_dir(&self, name: &VmName) -> RunDir {
        RunDir::new(&self.base, name.clone())
    }
}

const MARKER: &str = ".vfioctl-run-dir";

fn marker_text(name: &VmName) -> String {
    format!("vfioctl run directory of VM {name}\n")
}

/// Whether a path is a run directory vfioctl made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// Nothing there.
    Absent,
    /// A directory with vfioctl's marker for this name.
    Ours,
    /// Something else: never touched.
    Foreign(String),
}

/// `BASE/NAME` and every file in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunDir {
    base: PathBuf,
    name: VmName,
    dir: PathBuf,
}

impl RunDir {
    /// The run directory of `name` under `base` (nothing is created).
    pub fn new(base: &Path, name: VmName) -> RunDir {
        let dir = base.join(name.as_str());
        RunDir {
            base: base.to_path_buf(),
            name,
            dir,
        }
    }

    /// The VM's name.
    pub fn name(&self) -> &VmName {
        &self.name
    }
    /// The runtime base directory.
    pub fn base(&self) -> &Path {
        &self.base
    }
    /// The run directory itself, `BASE/NAME`.
    pub fn path(&self) -> &Path {
        &self.dir
    }
    /// `.vfioctl-run-dir`: the marker that vfioctl made this directory.
    pub fn marker(&self) -> PathBuf {
        self.dir.join(MARKER)
    }
    /// `state.json`: the VM's record.
    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    /// `qmp.sock`: QEMU's QMP socket.
    pub fn qmp_socket(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    /// `serial.log`: the guest's serial console.
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    /// `qemu.stderr`: QEMU's standard error.
    pub fn qemu_stderr(&self) -> PathBuf {
        self.dir.join("qemu.stderr")
    }
    /// `qemu.pid`: QEMU's pid file (`-pidfile`).
    pub fn qemu_pid(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    /// `OVMF_VARS.fd`: the VM's copy of the OVMF variable store.
    pub fn ovmf_vars(&self) -> PathBuf {
        self.dir.join("OVMF_VARS.fd")
    }
    /// `vhost-vsock.sock`: the vhost-user socket between QEMU and vhost-device-vsock.
    pub fn vhost_socket(&self) -> PathBuf {
        self.dir.join("vhost-vsock.sock")
    }
    /// `vsock.uds`: where the host connects to guest vsock ports (vhost-user).
    pub fn vsock_uds(&self) -> PathBuf {
        self.dir.join("vsock.uds")
    }
    /// `vhost-device-vsock.log`: the vsock backend's output.
    pub fn vsock_log(&self) -> PathBuf {
        self.dir.join("vhost-device-vsock.log")
    }
    /// `agent.token`: the per-VM guest agent secret.
    pub fn token_file(&self) -> PathBuf {
        self.dir.join("agent.token")
    }
    /// `BASE/.NAME.lock`.
    pub fn lock_file(&self) -> PathBuf {
        self.base.join(format!(".{}.lock", self.name))
    }

    /// The longest unix socket path this VM uses, in bytes (the kernel allows 107).
    pub fn longest_socket_path(&self) -> usize {
        [self.vhost_socket(), self.vsock_uds(), self.qmp_socket()]
            .iter()
            .map(|p| p.as_os_str().len())
            .max()
            .unwrap_or(0)
    }

    /// Is `BASE/NAME` a run directory vfioctl made for this name? Symlinks are never
    /// followed: a symlink is foreign even when it points at a real run directory.
    pub fn ownership(&self) -> Ownership {
        let meta = match std::fs::symlink_metadata(&self.dir) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ownership::Absent,
            Err(e) => return Ownership::Foreign(format!("cannot inspect it: {e}")),
        };
        if meta.file_type().is_symlink() {
            return Ownership::Foreign("it is a symbolic link".into());
        }
        if !meta.is_dir() {
            return Ownership::Foreign("it is not a directory".into());
        }
        let marker = self.marker();
        match std::fs::symlink_metadata(&marker) {
            Ok(m) if m.is_file() && m.len() < 4096 => {}
            _ => {
                return Ownership::Foreign(format!(
                    "it has no {MARKER} marker: vfioctl did not create it"
                ))
            }
        }
        match std::fs::read_to_string(&marker) {
            Ok(t) if t == marker_text(&self.name) => Ownership::Ours,
            _ => Ownership::Foreign(format!(
                "its {MARKER} marker is not vfioctl's for {}",
                self.name
            )),
        }
    }

    /// Make the base (0700, only when missing: an existing base keeps its mode) and the
    /// run directory (0700, which must not exist yet), then write the marker.
    pub fn create(&self) -> std::io::Result<()> {
        if std::fs::symlink_metadata(&self.base).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.base)?;
        }
        std::fs::DirBuilder::new().mode(0o700).create(&self.dir)?;
        // The umask may have narrowed it further; never wider than 0700.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))?;
        let mut f = private_file(&self.marker())?;
        f.write_all(marker_text(&self.name).as_bytes())
    }

    /// Remove the run directory, only when it is ours ([`Ownership::Ours`]). Returns
    /// `Ok(false)` when there was nothing to remove.
    pub fn remove(&self) -> Result<bool, Ownership> {
        match self.ownership() {
            Ownership::Absent => Ok(false),
            Ownership::Ours => match std::fs::remove_dir_all(&self.dir) {
                Ok(()) => Ok(true),
                Err(e) => Err(Ownership::Foreign(format!("removing it: {e}"))),
            },
            other => Err(other),
        }
    }

    /// Create the agent secret: 32 random bytes as hex, in a new 0600 file.
    pub fn write_token(&self) -> std::io::Result<Token> {
        let mut b = [0u8; 32];
        File::open("/dev/urandom")?.read_exact(&mut b)?;
        let t = Token::from_bytes(&b);
        let mut f = private_file(&self.token_file())?;
        f.write_all(t.as_str().as_bytes())?;
        Ok(t)
    }

    /// Read the agent secret back.
    pub fn read_token(&self) -> std::io::Result<Token> {
        read_token_file(&self.token_file())
    }

    /// Take the per-name lock for `op` (`vm up`, `vm down`, ...) without waiting: the
    /// holder is named in the error when another vfioctl has it.
    pub fn lock(&self, op: &str) -> Result<NameLock, LockError> {
        if std::fs::symlink_metadata(&self.base).is_err() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.base)
                .map_err(|e| LockError::Io(self.lock_file(), e))?;
        }
        let path = self.lock_file();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| LockError::Io(path.clone(), e))?;
        match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            Ok(mut l) => {
                let _ = l.set_len(0);
                let _ = writeln!(&mut *l, "pid {}: {op}", std::process::id());
                Ok(NameLock { _lock: l })
            }
            Err((mut f, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut holder = String::new();
                let _ = (&mut f).take(200).read_to_string(&mut holder);
                Err(LockError::Busy {
                    holder: vfioctl_common::text::one_line(holder.trim()).into_owned(),
                })
            }
            Err((_, e)) => Err(LockError::Io(path, e.into())),
        }
    }
}

/// Read a token file (the host's `agent.token`, or `--token-file`).
pub fn read_token_file(path: &Path) -> std::io::Result<Token> {
    let mut s = String::new();
    File::open(path)?.take(256).read_to_string(&mut s)?;
    Token::parse(&s).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// A new file, mode 0600, that must not exist yet (never follows a planted symlink).
fn private_file(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
}

/// The per-name lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct NameLock {
    _lock: Flock<File>,
}

/// Why the per-name lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error("another vfioctl holds the lock ({holder})")]
    Busy {
        /// What the lock file says about the holder (`pid 1234: vm up`).
        holder: String,
    },
    /// The lock file (or the base directory) could not be created or locked.
    #[error("lock file {}", .0.display())]
    Io(PathBuf, #[source] std::io::Error),
}

/// The names of every run directory under `base` that vfioctl made (sorted).
pub fn names(base: &Path) -> Vec<VmName> {
    let mut v: Vec<VmName> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| VmName::new(e.file_name().to_str()?).ok())
        .filter(|n| RunDir::new(base, n.clone()).ownership() == Ownership::Ours)
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_safe_components() {
        for good in ["lab", "gpu-1", "a", "X_2", &"n".repeat(32)] {
            assert_eq!(VmName::new(good).unwrap().as_str(), good);
        }
        for bad in [
            "",
            "/",
            "..",
            ".",
            "../x",
            "/abs/dir",
            "a/b",
            "-x",
            "_x",
            ".hidden",
            "a b",
            "a,b",
            "a\u{1b}[2J",
            "naïve",
            &"n".repeat(33),
            "x\0y",
        ] {
            let e = VmName::new(bad).unwrap_err();
            assert!(e.to_string().contains("invalid VM name"), "{bad:?}: {e}");
            assert!(!e.to_string().contains('\u{1b}'), "escaped: {e}");
            assert_eq!(e.exit(), Exit::Usage);
        }
        let n: VmName = serde_json::from_str("\"lab\"").unwrap();
        assert_eq!(n, "lab");
        assert!(serde_json::from_str::<VmName>("\"../x\"").is_err());
    }

    #[test]
    fn create_marks_and_remove_only_removes_ours() {
        let t = tempfile::tempdir().unwrap();
        let base = t.path().join("base");
        let rd = RunDir::new(&base, VmName::new("lab").unwrap());
        assert_eq!(rd.ownership(), Ownership::Absent);
        assert_eq!(rd.remove(), Ok(false));
        rd.create().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&base), 0o700);
        assert_eq!(mode(rd.path()), 0o700);
        assert_eq!(mode(&rd.marker()), 0o600);
        assert_eq!(rd.ownership(), Ownership::Ours);
        // A second create refuses to reuse the directory.
        assert!(rd.create().is_err());
        assert_eq!(rd.remove(), Ok(true));
        assert!(!rd.path().exists());
        assert!(base.exists());

        // A directory without the marker, a symlink to a real run dir, a file, and a
        // marker written for another name: all foreign, all left alone.
        let other = RunDir::new(&base, VmName::new("other").unwrap());
        std::fs::create_dir_all(other.path()).unwrap();
        std::fs::write(other.path().join("state.json"), "{}").unwrap();
        assert!(matches!(other.remove(), Err(Ownership::Foreign(_))));
        assert!(other.path().join("state.json").exists());
        let real = RunDir::new(&base, VmName::new("real").unwrap());
        real.create().unwrap();
        let link = RunDir::new(&base, VmName::new("link").unwrap());
        std::os::unix::fs::symlink(real.path(), link.path()).unwrap();
        assert!(matches!(link.remove(), Err(Ownership::Foreign(r)) if r.contains("symbolic link")));
        assert!(real.marker().exists());
        let file = RunDir::new(&base, VmName::new("file").unwrap());
        std::fs::write(file.path(), "x").unwrap();
        assert!(matches!(file.remove(), Err(Ownership::Foreign(_))));
        let forged = RunDir::new(&base, VmName::new("forged").unwrap());
        std::fs::create_dir(forged.path()).unwrap();
        std::fs::write(forged.marker(), marker_text(&VmName::new("real").unwrap())).unwrap();
        assert!(matches!(forged.remove(), Err(Ownership::Foreign(_))));
        assert!(forged.path().exists());
        assert_eq!(names(&base), vec![VmName::new("real").unwrap()]);
    }

    #[test]
    fn an_existing_base_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let rd = RunDir::new(t.path(), VmName::new("lab").unwrap());
        rd.create().unwrap();
        assert_eq!(
            std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o777,
            0o755
        );
    }

    #[test]
    fn token_is_private_and_round_trips() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let rd = RunDir::new(t.path(), VmName::new("lab").unwrap());
        rd.create().unwrap();
        let tok = rd.write_token().unwrap();
        assert_eq!(tok.as_str().len(), 64);
        assert_eq!(
            std::fs::metadata(rd.token_file())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        assert_eq!(rd.read_token().unwrap(), tok);
        // Never overwritten in place.
        assert!(rd.write_token().is_err());
    }

    #[test]
    fn the_name_lock_excludes_a_second_holder_and_names_the_first() {
        let t = tempfile::tempdir().unwrap();
        let rd = RunDir::new(&t.path().join("b"), VmName::new("lab").unwrap());
        let l = rd.lock("vm up").unwrap();
        let e = rd.lock("vm down").unwrap_err();
        assert!(
            matches!(&e, LockError::Busy { holder } if holder.contains("vm up") && holder.contains(&std::process::id().to_string())),
            "{e}"
        );
        drop(l);
        rd.lock("vm down").unwrap();
        // Other names are independent.
        let other = RunDir::new(&t.path().join("b"), VmName::new("lab2").unwrap());
        let _a = rd.lock("x").unwrap();
        let _b = other.lock("y").unwrap();
    }
}
