//! The single seam for host files.
//!
//! Every read and write of `/sys`, `/proc`, `/dev`, `/etc`, `/var/lib` and `/lib/modules`
//! goes through a [`SysRoot`]. On a real host the root is `/`; tests point it at a fixture
//! tree laid out exactly as Linux lays out sysfs (relative symlinks included), so the code
//! that runs in production is the code the tests run.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

/// An I/O failure on one host path. The path is the host-absolute one (as a person would
/// look for it), not the fixture-prefixed one, unless the root is not `/`, in which case the
/// full path is shown so fixture problems can be found.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct SysError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl SysError {
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
    pub fn is_permission_denied(&self) -> bool {
        self.source.kind() == io::ErrorKind::PermissionDenied
    }
}

/// How a [`SysRoot`] access used a host path, as told to an [`AccessLog`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// The path was resolved for the caller's own `std::fs` call ([`SysRoot::path`]).
    Path,
    /// The file's contents were read.
    Read,
    /// The directory's entries were listed.
    List,
    /// The symlink itself was read (`readlink`).
    ReadLink,
    /// Existence or type was asked, following symlinks.
    Stat,
    /// Existence was asked without following a final symlink.
    StatNoFollow,
    /// Every symlink on the way was resolved (`realpath`).
    Resolve,
    /// The file was opened for writing.
    Write,
}

/// Told of every path a [`SysRoot`] touches (`vfioctl snapshot` records what the commands
/// read this way). The host-absolute path is passed, before the access happens.
pub trait AccessLog: Send + Sync {
    fn record(&self, access: Access, abs: &Path);
}

/// A root directory under which host-absolute paths are resolved.
#[derive(Clone)]
pub struct SysRoot {
    root: PathBuf,
    log: Option<std::sync::Arc<dyn AccessLog>>,
}

impl std::fmt::Debug for SysRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SysRoot")
            .field("root", &self.root)
            .field("logged", &self.log.is_some())
            .finish()
    }
}

/// Two roots are equal when they stand for the same tree, logged or not.
impl PartialEq for SysRoot {
    fn eq(&self, other: &Self) -> bool {
        self.root == other.root
    }
}
impl Eq for SysRoot {}

impl Default for SysRoot {
    fn default() -> Self {
        Self::host()
    }
}

impl SysRoot {
    /// The machine itself (`/`).
    pub fn host() -> Self {
        Self::new("/")
    }

    /// A tree whose `sys/`, `proc/`, `dev/`, ... stand for the host's.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            log: None,
        }
    }

    /// The same root, telling `log` of every path it touches from now on (clones and
    /// [`SysDir`]s opened from it included).
    pub fn with_log(mut self, log: std::sync::Arc<dyn AccessLog>) -> Self {
        self.log = Some(log);
        self
    }

    fn note(&self, access: Access, abs: &Path) {
        if let Some(log) = &self.log {
            log.record(access, abs);
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// True when this is the real machine (`/`).
    pub fn is_host(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Resolve a host-absolute path (`/sys/bus/pci/devices`) under the root.
    ///
    /// `..` components are dropped rather than followed, so a caller cannot climb out of
    /// the root by accident; BDFs and driver names are validated before they get here.
    pub fn path(&self, abs: impl AsRef<Path>) -> PathBuf {
        self.note(Access::Path, abs.as_ref());
        self.full(abs)
    }

    /// [`path`](Self::path) without telling the log: for the accessors below, which tell
    /// it what they do with the path.
    fn full(&self, abs: impl AsRef<Path>) -> PathBuf {
        let mut out = self.root.clone();
        for c in abs.as_ref().components() {
            if let Component::Normal(part) = c {
                out.push(part);
            }
        }
        out
    }

    /// Map a path under the root back to its host-absolute form (for messages and for
    /// symlink targets that were canonicalized inside a fixture tree).
    pub fn strip(&self, full: &Path) -> PathBuf {
        match full.strip_prefix(&self.root) {
            Ok(rel) => Path::new("/").join(rel),
            Err(_) => full.to_path_buf(),
        }
    }

    fn err(&self, op: &'static str, abs: &Path, source: io::Error) -> SysError {
        SysError {
            op,
            path: if self.is_host() {
                abs.to_path_buf()
            } else {
                self.full(abs)
            },
            source,
        }
    }

    pub fn exists(&self, abs: impl AsRef<Path>) -> bool {
        self.note(Access::Stat, abs.as_ref());
        self.full(abs).exists()
    }

    /// `exists` without following a final symlink.
    pub fn exists_nofollow(&self, abs: impl AsRef<Path>) -> bool {
        self.note(Access::StatNoFollow, abs.as_ref());
        fs::symlink_metadata(self.full(abs)).is_ok()
    }

    pub fn is_dir(&self, abs: impl AsRef<Path>) -> bool {
        self.note(Access::Stat, abs.as_ref());
        self.full(abs).is_dir()
    }

    pub fn read_bytes(&self, abs: impl AsRef<Path>) -> Result<Vec<u8>, SysError> {
        use std::io::Read;
        let abs = abs.as_ref();
        self.note(Access::Read, abs);
        // Not `fs::read`: it stats the file to size its buffer, and sysfs reports 4096
        // for every attribute anyway. A plain read loop saves a system call per file.
        let mut f = fs::File::open(self.full(abs)).map_err(|e| self.err("read", abs, e))?;
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 4096];
        // A sysfs attribute is produced whole by one show() call (at most a page) and
        // handed out by the first read; a short first read is the whole file. procfs
        // seq_files (/proc/cpuinfo) may stop short of a page mid-file, so only /sys
        // takes the shortcut.
        let sysfs = abs.starts_with("/sys/");
        loop {
            match f.read(&mut chunk) {
                Ok(0) => return Ok(buf),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if sysfs && buf.len() < chunk.len() {
                        return Ok(buf);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err("read", abs, e)),
            }
        }
    }

    pub fn read_string(&self, abs: impl AsRef<Path>) -> Result<String, SysError> {
        let abs = abs.as_ref();
        let bytes = self.read_bytes(abs)?;
        String::from_utf8(bytes).map_err(|e| {
            self.err(
                "read (not UTF-8)",
                abs,
                io::Error::new(io::ErrorKind::InvalidData, e),
            )
        })
    }

    /// Read a one-value attribute, trimmed.
    pub fn read_attr(&self, abs: impl AsRef<Path>) -> Result<String, SysError> {
        Ok(self.read_string(abs)?.trim().to_string())
    }

    /// Read a one-value attribute; `None` when the file does not exist (many sysfs
    /// attributes exist only for some devices).
    pub fn read_attr_opt(&self, abs: impl AsRef<Path>) -> Result<Option<String>, SysError> {
        match self.read_attr(abs) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The final component of a symlink's target (`driver -> ../../bus/pci/drivers/nvidia`
    /// gives `nvidia`); `None` when the link does not exist.
    pub fn link_name(&self, abs: impl AsRef<Path>) -> Result<Option<String>, SysError> {
        let abs = abs.as_ref();
        self.note(Access::ReadLink, abs);
        match fs::read_link(self.full(abs)) {
            Ok(t) => Ok(t.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.err("readlink", abs, e)),
        }
    }

    /// The host-absolute canonical path (symlinks resolved inside the root).
    pub fn canonicalize(&self, abs: impl AsRef<Path>) -> Result<PathBuf, SysError> {
        let abs = abs.as_ref();
        self.note(Access::Resolve, abs);
        let full = fs::canonicalize(self.full(abs)).map_err(|e| self.err("resolve", abs, e))?;
        Ok(self.strip(&full))
    }

    /// Sorted entry names of a directory; an absent directory is an error.
    pub fn list(&self, abs: impl AsRef<Path>) -> Result<Vec<String>, SysError> {
        let abs = abs.as_ref();
        self.note(Access::List, abs);
        let rd = fs::read_dir(self.full(abs)).map_err(|e| self.err("list", abs, e))?;
        let mut names = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| self.err("list", abs, e))?;
            names.push(entry.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    /// Like [`list`](Self::list) but an absent directory is an empty list.
    pub fn list_opt(&self, abs: impl AsRef<Path>) -> Result<Vec<String>, SysError> {
        match self.list(abs) {
            Ok(v) => Ok(v),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Write a sysfs attribute the way `echo -n value > attr` does: open with `O_TRUNC`
    /// (as the shell's `>`; sysfs ignores it, a regular fixture file is replaced rather
    /// than left with the tail of a longer old value) and one `write(2)` of the whole
    /// value. sysfs store functions see exactly these bytes.
    pub fn write_attr(&self, abs: impl AsRef<Path>, value: &str) -> Result<(), SysError> {
        use std::io::Write;
        let abs = abs.as_ref();
        self.note(Access::Write, abs);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(self.full(abs))
            .map_err(|e| self.err("open for write", abs, e))?;
        f.write_all(value.as_bytes())
            .map_err(|e| self.err("write", abs, e))
    }
}

/// An open directory under a [`SysRoot`] whose entries are read by name relative to it
/// (`openat`, `readlinkat`), so the kernel resolves one path component per access instead
/// of the whole path. A device directory has a dozen attributes vfioctl reads; this is how
/// `vfioctl devices` stays faster than lspci on a thousand devices.
#[derive(Debug)]
pub struct SysDir {
    fd: std::os::fd::OwnedFd,
    /// Host-absolute path of the directory (for messages).
    abs: PathBuf,
    root: SysRoot,
}

impl SysRoot {
    /// Open the directory `abs` for reads relative to it.
    pub fn open_dir(&self, abs: impl AsRef<Path>) -> Result<SysDir, SysError> {
        use std::os::unix::fs::OpenOptionsExt;
        let abs = abs.as_ref();
        self.note(Access::Stat, abs);
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open(self.full(abs))
            .map_err(|e| self.err("open", abs, e))?;
        Ok(SysDir {
            fd: f.into(),
            abs: abs.to_path_buf(),
            root: self.clone(),
        })
    }
}

impl SysDir {
    fn err(&self, op: &'static str, name: &str, source: io::Error) -> SysError {
        self.root.err(op, &self.abs.join(name), source)
    }

    fn note(&self, access: Access, name: &str) {
        if self.root.log.is_some() {
            self.root.note(access, &self.abs.join(name));
        }
    }

    fn cname(&self, name: &str) -> Result<std::ffi::CString, SysError> {
        if name.is_empty() || name.contains('/') {
            return Err(self.err(
                "open",
                name,
                io::Error::new(io::ErrorKind::InvalidInput, "not a plain file name"),
            ));
        }
        std::ffi::CString::new(name)
            .map_err(|e| self.err("open", name, io::Error::new(io::ErrorKind::InvalidInput, e)))
    }

    /// The directory's host-absolute path.
    pub fn path(&self) -> &Path {
        &self.abs
    }

    /// Read the whole entry `name` (a plain name, no `/`).
    pub fn read_bytes(&self, name: &str) -> Result<Vec<u8>, SysError> {
        use std::io::Read;
        use std::os::fd::{AsRawFd, FromRawFd};
        self.note(Access::Read, name);
        let c = self.cname(name)?;
        // SAFETY: `c` is a valid NUL-terminated string and `self.fd` an open directory
        // descriptor owned by `self`; openat does not retain either pointer.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(self.err("read", name, io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by openat, is valid, and nothing else owns it.
        let mut f = unsafe { fs::File::from_raw_fd(fd) };
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 4096];
        // Same rule as SysRoot::read_bytes: a short first read of a sysfs file is all.
        let sysfs = self.abs.starts_with("/sys/");
        loop {
            match f.read(&mut chunk) {
                Ok(0) => return Ok(buf),
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if sysfs && buf.len() < chunk.len() {
                        return Ok(buf);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err("read", name, e)),
            }
        }
    }

    /// A one-value attribute, trimmed; `None` when it does not exist.
    pub fn read_attr_opt(&self, name: &str) -> Result<Option<String>, SysError> {
        match self.read_bytes(name) {
            Ok(b) => String::from_utf8(b)
                .map(|s| Some(s.trim().to_string()))
                .map_err(|e| {
                    self.err(
                        "read (not UTF-8)",
                        name,
                        io::Error::new(io::ErrorKind::InvalidData, e),
                    )
                }),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The final component of the symlink `name`'s target; `None` when there is no link.
    pub fn link_name(&self, name: &str) -> Result<Option<String>, SysError> {
        use std::os::fd::AsRawFd;
        self.note(Access::ReadLink, name);
        let c = self.cname(name)?;
        let mut buf = vec![0u8; 4096];
        // SAFETY: `c` is NUL-terminated, `buf` is writable for `buf.len()` bytes, and
        // `self.fd` is an open directory descriptor owned by `self`.
        let n = unsafe {
            libc::readlinkat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ if e.raw_os_error() == Some(libc::EINVAL) => Ok(None), // not a link
                _ => Err(self.err("readlink", name, e)),
            };
        }
        buf.truncate(n as usize);
        let target = PathBuf::from(std::ffi::OsString::from_vec_compat(buf));
        Ok(target.file_name().map(|n| n.to_string_lossy().into_owned()))
    }
}

/// `OsString::from_vec` without importing the unix extension trait at every call.
trait FromVecCompat {
    fn from_vec_compat(v: Vec<u8>) -> Self;
}
impl FromVecCompat for std::ffi::OsString {
    fn from_vec_compat(v: Vec<u8>) -> Self {
        use std::os::unix::ffi::OsStringExt;
        std::ffi::OsString::from_vec(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_stays_under_root() {
        let r = SysRoot::new("/tmp/fx");
        assert_eq!(r.path("/sys/bus/pci"), PathBuf::from("/tmp/fx/sys/bus/pci"));
        assert_eq!(r.path("/sys/../../etc"), PathBuf::from("/tmp/fx/sys/etc"));
        assert_eq!(
            SysRoot::host().path("/proc/cmdline"),
            PathBuf::from("/proc/cmdline")
        );
    }

    #[test]
    fn reads_whole_files_large_and_small() {
        let dir = tempfile::tempdir().unwrap();
        let r = SysRoot::new(dir.path());
        let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for p in ["proc/cpuinfo", "sys/bus/pci/devices/x/config"] {
            std::fs::create_dir_all(dir.path().join(p).parent().unwrap()).unwrap();
            std::fs::write(dir.path().join(p), &big).unwrap();
            assert_eq!(r.read_bytes(format!("/{p}")).unwrap(), big, "{p}");
        }
        std::fs::write(dir.path().join("sys/bus/pci/devices/x/vendor"), "0x10de\n").unwrap();
        assert_eq!(
            r.read_attr("/sys/bus/pci/devices/x/vendor").unwrap(),
            "0x10de"
        );
        assert!(r
            .read_attr_opt("/sys/bus/pci/devices/x/nope")
            .unwrap()
            .is_none());
    }

    #[test]
    fn write_attr_replaces_like_the_shell() {
        let dir = tempfile::tempdir().unwrap();
        let r = SysRoot::new(dir.path());
        std::fs::create_dir_all(r.path("/sys/bus/pci/devices/x")).unwrap();
        std::fs::write(r.path("/sys/bus/pci/devices/x/driver_override"), "vfio-pci").unwrap();
        r.write_attr("/sys/bus/pci/devices/x/driver_override", "e1000e")
            .unwrap();
        assert_eq!(
            r.read_attr("/sys/bus/pci/devices/x/driver_override")
                .unwrap(),
            "e1000e"
        );
    }

    #[test]
    fn dir_handle_reads_and_links() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sys/devices/pci0000:00/0000:00:01.0");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), "0x8086\n").unwrap();
        std::os::unix::fs::symlink("../../../bus/pci/drivers/pcieport", d.join("driver")).unwrap();
        let r = SysRoot::new(dir.path());
        let h = r.open_dir("/sys/devices/pci0000:00/0000:00:01.0").unwrap();
        assert_eq!(
            h.read_attr_opt("vendor").unwrap().as_deref(),
            Some("0x8086")
        );
        assert_eq!(h.read_attr_opt("nope").unwrap(), None);
        assert_eq!(h.link_name("driver").unwrap().as_deref(), Some("pcieport"));
        assert_eq!(h.link_name("vendor").unwrap(), None);
        assert_eq!(h.link_name("nope").unwrap(), None);
        assert!(h.read_bytes("../x").is_err());
        assert!(r.open_dir("/sys/nope").unwrap_err().is_not_found());
    }

    #[test]
    fn log_hears_every_access_once() {
        #[derive(Default)]
        struct Log(std::sync::Mutex<Vec<(Access, PathBuf)>>);
        impl AccessLog for Log {
            fn record(&self, access: Access, abs: &Path) {
                self.0.lock().unwrap().push((access, abs.to_path_buf()));
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("sys/devices/x");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("vendor"), "0x8086\n").unwrap();
        let log = std::sync::Arc::new(Log::default());
        let r = SysRoot::new(dir.path()).with_log(log.clone());
        assert_eq!(r, SysRoot::new(dir.path()));
        r.read_attr("/sys/devices/x/vendor").unwrap();
        r.list("/sys/devices").unwrap();
        let _ = r.link_name("/sys/devices/x");
        let _ = r.path("/proc/1/fd");
        let h = r.clone().open_dir("/sys/devices/x").unwrap();
        h.read_attr_opt("vendor").unwrap();
        let got = log.0.lock().unwrap().clone();
        let p = PathBuf::from;
        assert_eq!(
            got,
            vec![
                (Access::Read, p("/sys/devices/x/vendor")),
                (Access::List, p("/sys/devices")),
                (Access::ReadLink, p("/sys/devices/x")),
                (Access::Path, p("/proc/1/fd")),
                (Access::Stat, p("/sys/devices/x")),
                (Access::Read, p("/sys/devices/x/vendor")),
            ]
        );
    }

    #[test]
    fn strip_maps_back() {
        let r = SysRoot::new("/tmp/fx");
        assert_eq!(
            r.strip(Path::new("/tmp/fx/sys/devices/pci0000:00")),
            PathBuf::from("/sys/devices/pci0000:00")
        );
    }
}
