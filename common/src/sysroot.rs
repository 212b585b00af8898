//! The single seam for host files.
//!
//! Every read and write of `/sys`, `/proc`, `/dev`, `/etc`, `/var/lib` and `/lib/modules`
//! goes through a [`SysRoot`]. On a real host the root is `/`; tests point it at a fixture
//! tree laid out exactly as Linux lays out sysfs (relative symlinks included), so the code
//! that runs in production is the code the tests run.

use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

/// An I/O failure on one host path. The path is the host-absolute one (as a person would
/// look for it), not the fixture-prefixed one, unless the root is not `/`, in which case the
/// full path is shown so fixture problems can be found.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}", path.display())]
pub struct SysError {
    /// What was being done (`read`, `list`, `write`).
    pub op: &'static str,
    /// The host-absolute path.
    pub path: PathBuf,
    #[source]
    /// The I/O error.
    pub source: io::Error,
}

impl SysError {
    /// The path does not exist.
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == io::ErrorKind::NotFound
    }
    /// The caller may not read or write the path.
    pub fn is_permission_denied(&self) -> bool {
        self.source.kind() == io::ErrorKind::PermissionDenied
    }
}

/// The most bytes vfioctl reads from one file under `/sys` (a text attribute is at most a
/// page, `config` 4 KiB; ACPI tables stay well below this).
pub const MAX_SYSFS_READ: usize = 1 << 20;
/// The most bytes read from one file under `/proc` (`mountinfo` of a container host).
pub const MAX_PROCFS_READ: usize = 16 << 20;
/// The most bytes read from any other host file (`modules.alias`, `pci.ids`).
pub const MAX_FILE_READ: usize = 64 << 20;
/// The most bytes read from one attribute of an opened device directory ([`SysDir`]):
/// sysfs text attributes are at most a page (64 KiB on the largest page size).
pub const MAX_ATTR_READ: usize = 64 << 10;

fn read_limit(abs: &Path) -> usize {
    if abs.starts_with("/sys/") {
        MAX_SYSFS_READ
    } else if abs.starts_with("/proc/") {
        MAX_PROCFS_READ
    } else {
        MAX_FILE_READ
    }
}

/// Read an opened file whole, refusing what is not a regular file (a FIFO in place of a
/// sysfs attribute would block the read forever, a device node would never end) and
/// anything longer than `limit` bytes. `short_is_all`: a short first read ends the file
/// (sysfs hands out an attribute in one read).
fn read_regular(f: fs::File, limit: usize, short_is_all: bool) -> io::Result<Vec<u8>> {
    check_regular(&f)?;
    read_bounded(f, limit, short_is_all)
}

fn check_regular(f: &fs::File) -> io::Result<()> {
    let ft = f.metadata()?.file_type();
    if !ft.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a regular file ({}): refusing to read it",
                kind_name(&ft)
            ),
        ));
    }
    Ok(())
}

/// The read loop of [`read_regular`] without the up-front type check. Opened with
/// `O_NONBLOCK`, anything that is not a regular file ends here one of three ways: an empty
/// read (a FIFO without a writer, `/dev/null`), `EAGAIN`, or more than `limit` bytes; the
/// first is checked with `fstat` afterwards, the other two are errors. A regular file
/// costs no extra system call (the hot path of `vfioctl devices`).
fn read_bounded(mut f: fs::File, limit: usize, short_is_all: bool) -> io::Result<Vec<u8>> {
    use std::io::Read;
    // Not `fs::read`: it stats the file to size its buffer, and sysfs reports 4096 for
    // every attribute anyway. A plain read loop saves a system call per file.
    let mut buf = Vec::with_capacity(256);
    let mut chunk = [0u8; 4096];
    loop {
        match f.read(&mut chunk) {
            Ok(0) => {
                if buf.is_empty() {
                    check_regular(&f)?;
                }
                return Ok(buf);
            }
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > limit {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("longer than {limit} bytes: not what the kernel writes there"),
                    ));
                }
                if short_is_all && buf.len() < chunk.len() {
                    return Ok(buf);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the read would block: not a sysfs or procfs file",
                ))
            }
            Err(e) => return Err(e),
        }
    }
}

fn kind_name(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_dir() {
        "a directory"
    } else {
        "not a file"
    }
}

/// `openat2(2)` with `RESOLVE_IN_ROOT`: `rel` is resolved as if `dirfd` were `/`, so
/// neither `..` nor an absolute symlink inside the tree can lead out of it.
fn openat2_in_root(dirfd: i32, rel: &std::ffi::CStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let how = open_how_in_root(flags, mode);
    // SAFETY: `rel` is NUL-terminated, `how` a valid open_how whose size is passed, and
    // the returned descriptor is owned by nobody else.
    let fd = unsafe { openat2_raw(dirfd, rel.as_ptr(), &how) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat2 and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The `open_how` of [`openat2_in_root`], built before a fork so that the child only has
/// to make the system call.
pub fn open_how_in_root(flags: i32, mode: u32) -> libc::open_how {
    // SAFETY: open_how is plain old data; all-zero is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.mode = if flags & libc::O_CREAT != 0 {
        u64::from(mode)
    } else {
        0
    };
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    how
}

/// Open `path` with `flags` as [`PreparedOpen::open_raw`] does, for a process that got
/// the path ([`PreparedOpen::path`]) from elsewhere, e.g. a forked helper from its parent:
/// a plain `open` on the real machine (`dir` -1), else `openat2` resolved inside the root
/// that `dir` is a descriptor of. One system call, no allocation (async-signal-safe).
/// Returns the descriptor or -1 with `errno` set.
///
/// # Safety
/// `path` must point to a NUL-terminated string.
pub unsafe fn open_raw_in(dir: i32, path: *const libc::c_char, flags: i32) -> i32 {
    if dir < 0 {
        // SAFETY: the caller guarantees `path`.
        unsafe { libc::open(path, flags | libc::O_CLOEXEC) }
    } else {
        // SAFETY: the caller guarantees `path`; the open_how is valid.
        unsafe { openat2_raw(dir, path, &open_how_in_root(flags, 0)) }
    }
}

/// The raw `openat2` system call (async-signal-safe: one syscall, no allocation).
///
/// # Safety
/// `path` must be a valid NUL-terminated string and `how` a valid `open_how`.
pub unsafe fn openat2_raw(dirfd: i32, path: *const libc::c_char, how: &libc::open_how) -> i32 {
    // SAFETY: the caller guarantees the pointers; the kernel copies `how` by its size.
    unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path,
            how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        ) as i32
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
    /// Called with `abs` before `access` happens.
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

    /// The directory the host-absolute paths are resolved under (`/` on a real machine).
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

    /// True when `abs` exists under the root.
    pub fn exists(&self, abs: impl AsRef<Path>) -> bool {
        self.note(Access::Stat, abs.as_ref());
        self.full(abs).exists()
    }

    /// `exists` without following a final symlink.
    pub fn exists_nofollow(&self, abs: impl AsRef<Path>) -> bool {
        self.note(Access::StatNoFollow, abs.as_ref());
        fs::symlink_metadata(self.full(abs)).is_ok()
    }

    /// True when `abs` is a directory under the root.
    pub fn is_dir(&self, abs: impl AsRef<Path>) -> bool {
        self.note(Access::Stat, abs.as_ref());
        self.full(abs).is_dir()
    }

    /// The contents of `abs`.
    pub fn read_bytes(&self, abs: impl AsRef<Path>) -> Result<Vec<u8>, SysError> {
        use std::os::unix::fs::OpenOptionsExt;
        let abs = abs.as_ref();
        self.note(Access::Read, abs);
        // O_NONBLOCK: a FIFO planted where a sysfs file should be must not hang the open;
        // `read_regular` then refuses anything that is not a regular file.
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(self.full(abs))
            .map_err(|e| self.err("read", abs, e))?;
        // A sysfs attribute is produced whole by one show() call (at most a page) and
        // handed out by the first read; a short first read is the whole file. procfs
        // seq_files (/proc/cpuinfo) may stop short of a page mid-file, so only /sys
        // takes the shortcut.
        let sysfs = abs.starts_with("/sys/");
        read_regular(f, read_limit(abs), sysfs).map_err(|e| self.err("read", abs, e))
    }

    /// The contents of `abs` as text (an error when it is not UTF-8).
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
    /// value. sysfs store functions see exactly these bytes. The path is resolved inside
    /// the root ([`open_in_root`](Self::open_in_root)), and a FIFO in its place fails
    /// (`O_NONBLOCK`) instead of hanging.
    pub fn write_attr(&self, abs: impl AsRef<Path>, value: &str) -> Result<(), SysError> {
        use std::io::Write;
        let abs = abs.as_ref();
        let mut f = self
            .open_in_root(abs, libc::O_WRONLY | libc::O_TRUNC | libc::O_NONBLOCK, 0)
            .map_err(|e| self.err("open for write", abs, e))?;
        f.write_all(value.as_bytes())
            .map_err(|e| self.err("write", abs, e))
    }

    /// `abs` relative to the root, `..` dropped, as a C string (`.` for the root itself).
    fn rel_c(&self, abs: &Path) -> io::Result<std::ffi::CString> {
        use std::os::unix::ffi::OsStrExt;
        let mut rel = PathBuf::new();
        for c in abs.components() {
            if let Component::Normal(part) = c {
                rel.push(part);
            }
        }
        if rel.as_os_str().is_empty() {
            rel.push(".");
        }
        std::ffi::CString::new(rel.as_os_str().as_bytes())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    }

    fn root_fd(&self) -> io::Result<OwnedFd> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_PATH)
            .open(&self.root)?;
        Ok(f.into())
    }

    /// Open `abs` with `flags` (`O_WRONLY | O_TRUNC`, `O_CREAT`, ...), resolved inside the
    /// root: under a `--root` tree, `..` and absolute or relative symlinks that point out of
    /// the tree are resolved as if the tree were `/` (`openat2` with `RESOLVE_IN_ROOT`), so
    /// a write can never land outside it. On the real machine (`/`) this is a plain open.
    pub fn open_in_root(
        &self,
        abs: impl AsRef<Path>,
        flags: i32,
        mode: u32,
    ) -> io::Result<fs::File> {
        let abs = abs.as_ref();
        let acc = flags & libc::O_ACCMODE;
        self.note(
            if acc == libc::O_RDONLY && flags & libc::O_CREAT == 0 {
                Access::Read
            } else {
                Access::Write
            },
            abs,
        );
        if self.is_host() {
            use std::os::unix::fs::OpenOptionsExt;
            return fs::OpenOptions::new()
                .read(acc == libc::O_RDONLY || acc == libc::O_RDWR)
                .write(acc == libc::O_WRONLY || acc == libc::O_RDWR)
                .custom_flags(flags & !libc::O_ACCMODE)
                .mode(mode)
                .open(abs);
        }
        let root = self.root_fd()?;
        let rel = self.rel_c(abs)?;
        let fd = openat2_in_root(root.as_raw_fd(), &rel, flags, mode).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOSYS) {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    "openat2(2) is missing (Linux before 5.6): writes under --root need it to stay inside the tree",
                )
            } else {
                e
            }
        })?;
        Ok(fd.into())
    }

    /// Everything a forked child needs to open `abs` inside the root with one system call
    /// ([`PreparedOpen::open_raw`]), prepared before the fork.
    pub fn prepare_open(&self, abs: impl AsRef<Path>, flags: i32) -> io::Result<PreparedOpen> {
        use std::os::unix::ffi::OsStrExt;
        let abs = abs.as_ref();
        self.note(Access::Write, abs);
        if self.is_host() {
            return Ok(PreparedOpen {
                dir: None,
                path: std::ffi::CString::new(self.full(abs).as_os_str().as_bytes())
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?,
                flags: flags | libc::O_CLOEXEC,
                how: open_how_in_root(flags, 0),
            });
        }
        Ok(PreparedOpen {
            dir: Some(self.root_fd()?),
            path: self.rel_c(abs)?,
            flags: flags | libc::O_CLOEXEC,
            how: open_how_in_root(flags, 0),
        })
    }

    /// The directory `abs`, created with its parents (mode 0755) when missing, every step
    /// resolved inside the root as [`open_in_root`](Self::open_in_root) does.
    pub fn create_dir_all_in(&self, abs: impl AsRef<Path>) -> Result<RootDir, SysError> {
        let abs = abs.as_ref();
        self.note(Access::Write, abs);
        let open = |p: &Path| self.open_in_root(p, libc::O_RDONLY | libc::O_DIRECTORY, 0);
        if let Ok(f) = open(abs) {
            return Ok(RootDir {
                file: f,
                abs: abs.to_path_buf(),
            });
        }
        let mut cur = PathBuf::from("/");
        for c in abs.components() {
            let Component::Normal(part) = c else { continue };
            let next = cur.join(part);
            match open(&next) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    let parent = open(&cur).map_err(|e| self.err("open", &cur, e))?;
                    if self.exists_nofollow(&next) {
                        // There, but it does not resolve inside the root: a link whose
                        // target is outside the tree (or missing). Refused, not followed.
                        return Err(self.err(
                            "create directory",
                            &next,
                            io::Error::new(
                                io::ErrorKind::NotFound,
                                "a symlink whose target is not inside the root: refusing to follow it out",
                            ),
                        ));
                    }
                    let c = plain_name(&part.to_string_lossy())
                        .map_err(|e| self.err("create directory", &next, e))?;
                    // SAFETY: `c` is NUL-terminated, `parent` an open directory.
                    let rc = unsafe { libc::mkdirat(parent.as_raw_fd(), c.as_ptr(), 0o755) };
                    if rc < 0 {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::AlreadyExists {
                            return Err(self.err("create directory", &next, e));
                        }
                    }
                }
                Err(e) => return Err(self.err("open", &next, e)),
            }
            cur = next;
        }
        let f = open(abs).map_err(|e| self.err("open", abs, e))?;
        Ok(RootDir {
            file: f,
            abs: abs.to_path_buf(),
        })
    }
}

/// An open(2) prepared by [`SysRoot::prepare_open`].
#[derive(Debug)]
pub struct PreparedOpen {
    dir: Option<OwnedFd>,
    path: std::ffi::CString,
    flags: i32,
    how: libc::open_how,
}

impl PreparedOpen {
    /// Open it: one `open` or `openat2` system call, no allocation (safe to call in a
    /// child between `fork` and `_exit`). Returns the descriptor or -1 with `errno` set.
    pub fn open_raw(&self) -> i32 {
        match &self.dir {
            // SAFETY: `path` is NUL-terminated and lives as long as `self`.
            None => unsafe { libc::open(self.path.as_ptr(), self.flags) },
            // SAFETY: `path` is NUL-terminated, `how` valid, `d` an open directory.
            Some(d) => unsafe { openat2_raw(d.as_raw_fd(), self.path.as_ptr(), &self.how) },
        }
    }

    /// The directory descriptor it resolves under (kept open across a fork's fd cleanup).
    pub fn dir_fd(&self) -> Option<i32> {
        self.dir.as_ref().map(|d| d.as_raw_fd())
    }

    /// The path it opens: host-absolute on the real machine, else relative to
    /// [`dir_fd`](Self::dir_fd).
    pub fn path(&self) -> &std::ffi::CStr {
        &self.path
    }
}

/// A directory opened inside a [`SysRoot`]; its entries are opened by plain name relative
/// to it, never following a symlink, so what vfioctl keeps there (the ledger, boot-time
/// overrides) cannot be redirected elsewhere.
#[derive(Debug)]
pub struct RootDir {
    file: fs::File,
    abs: PathBuf,
}

fn plain_name(name: &str) -> io::Result<std::ffi::CString> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a plain file name"),
        ));
    }
    std::ffi::CString::new(name).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

impl RootDir {
    /// The directory's host-absolute path (for messages).
    pub fn path(&self) -> &Path {
        &self.abs
    }

    /// Open the entry `name` with `flags` (`O_NOFOLLOW` and `O_CLOEXEC` added).
    pub fn open(&self, name: &str, flags: i32, mode: u32) -> io::Result<fs::File> {
        let c = plain_name(name)?;
        // SAFETY: `c` is NUL-terminated, the directory descriptor is open.
        let fd = unsafe {
            libc::openat(
                self.file.as_raw_fd(),
                c.as_ptr(),
                flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                mode as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by openat and is owned by nothing else.
        Ok(unsafe { fs::File::from_raw_fd(fd) })
    }

    /// Read the regular file `name` (at most `limit` bytes); `None` when it does not exist.
    pub fn read(&self, name: &str, limit: usize) -> io::Result<Option<Vec<u8>>> {
        match self.open(name, libc::O_RDONLY | libc::O_NONBLOCK, 0) {
            Ok(f) => read_regular(f, limit, false).map(Some),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Replace `name` atomically with `data`: a temp file (mode `mode`), fsync, rename
    /// over, fsync of the directory; a crash leaves the old or the new content.
    pub fn write_atomic(&self, name: &str, data: &[u8], mode: u32) -> io::Result<()> {
        use std::io::Write;
        let tmp = format!(".{name}.{}.tmp", std::process::id());
        let _ = self.remove(&tmp);
        {
            let mut f = self.open(&tmp, libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL, mode)?;
            f.write_all(data)?;
            f.sync_all()?;
        }
        self.rename(&tmp, name)?;
        self.sync()
    }

    /// `renameat` within the directory.
    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let (a, b) = (plain_name(from)?, plain_name(to)?);
        let fd = self.file.as_raw_fd();
        // SAFETY: both names are NUL-terminated, the descriptor is open.
        if unsafe { libc::renameat(fd, a.as_ptr(), fd, b.as_ptr()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Remove the entry `name` (not following a symlink); `false` when there was none.
    pub fn remove(&self, name: &str) -> io::Result<bool> {
        let c = plain_name(name)?;
        // SAFETY: `c` is NUL-terminated, the descriptor is open.
        if unsafe { libc::unlinkat(self.file.as_raw_fd(), c.as_ptr(), 0) } < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::NotFound {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(true)
    }

    /// fsync the directory (makes renames and removals durable).
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_all()
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
        let f = self.open_read(name)?;
        // Same rule as SysRoot::read_bytes: a short first read of a sysfs file is all.
        let sysfs = self.abs.starts_with("/sys/");
        read_bounded(f, MAX_ATTR_READ, sysfs).map_err(|e| self.err("read", name, e))
    }

    /// Read at most the first `len` bytes of the regular file `name` (a plain name, no
    /// `/`): fewer only where the file ends first. For files whose head is all that is
    /// needed and whose whole costs the kernel work: a device's `config` is 4 KiB of
    /// config-space reads, one hardware access per dword, where the 64-byte header is what
    /// [`crate::pci::config::parse`] reads. Anything but a regular file is refused, as by
    /// [`read_bytes`](Self::read_bytes).
    pub fn read_prefix(&self, name: &str, len: usize) -> Result<Vec<u8>, SysError> {
        use std::io::Read;
        let mut f = self.open_read(name)?;
        check_regular(&f).map_err(|e| self.err("read", name, e))?;
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match f.read(&mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.err("read", name, e)),
            }
        }
        buf.truncate(got);
        Ok(buf)
    }

    /// Open the entry `name` for reading (`O_NONBLOCK`: a FIFO in its place cannot hang
    /// the open).
    fn open_read(&self, name: &str) -> Result<fs::File, SysError> {
        use std::os::fd::{AsRawFd, FromRawFd};
        self.note(Access::Read, name);
        let c = self.cname(name)?;
        // SAFETY: `c` is a valid NUL-terminated string and `self.fd` an open directory
        // descriptor owned by `self`; openat does not retain either pointer.
        let fd = unsafe {
            libc::openat(
                self.fd.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY,
            )
        };
        if fd < 0 {
            return Err(self.err("read", name, io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by openat, is valid, and nothing else owns it.
        Ok(unsafe { fs::File::from_raw_fd(fd) })
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
    fn a_fifo_or_a_device_in_place_of_an_attribute_is_refused_not_waited_on() {
        let dir = tempfile::tempdir().unwrap();
        let r = SysRoot::new(dir.path());
        let d = r.path("/sys/devices/x");
        std::fs::create_dir_all(&d).unwrap();
        let fifo = std::ffi::CString::new(d.join("config").to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = r.read_bytes("/sys/devices/x/config").unwrap_err();
        assert!(e.to_string().contains("/sys/devices/x/config"), "{e}");
        assert!(
            std::error::Error::source(&e)
                .unwrap()
                .to_string()
                .contains("FIFO"),
            "{e:?}"
        );
        let h = r.open_dir("/sys/devices/x").unwrap();
        let e = h.read_bytes("config").unwrap_err();
        assert!(format!("{e:?}").contains("FIFO"), "{e:?}");
        std::os::unix::fs::symlink("/dev/zero", d.join("resource")).unwrap();
        let e = h.read_bytes("resource").unwrap_err();
        assert!(format!("{e:?}").contains("longer than"), "{e:?}");
        std::os::unix::fs::symlink("/dev/null", d.join("vendor")).unwrap();
        let e = h.read_bytes("vendor").unwrap_err();
        assert!(format!("{e:?}").contains("character device"), "{e:?}");
    }

    #[test]
    fn a_prefix_read_takes_the_head_and_refuses_what_is_not_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let r = SysRoot::new(dir.path());
        let d = r.path("/sys/devices/x");
        std::fs::create_dir_all(&d).unwrap();
        let cfg: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(d.join("config"), &cfg).unwrap();
        std::fs::write(d.join("short"), b"0123456789").unwrap();
        let h = r.open_dir("/sys/devices/x").unwrap();
        assert_eq!(h.read_prefix("config", 64).unwrap(), &cfg[..64]);
        assert_eq!(h.read_prefix("short", 64).unwrap(), b"0123456789");
        assert!(h.read_prefix("nope", 64).unwrap_err().is_not_found());
        let fifo = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
        // SAFETY: a valid path string.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let e = h.read_prefix("fifo", 64).unwrap_err();
        assert!(format!("{e:?}").contains("FIFO"), "{e:?}");
        std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
        let e = h.read_prefix("zero", 64).unwrap_err();
        assert!(format!("{e:?}").contains("character device"), "{e:?}");
    }

    #[test]
    fn reads_are_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let r = SysRoot::new(dir.path());
        let d = r.path("/sys/devices/x");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("driver_override"), vec![b'a'; 1 << 20]).unwrap();
        let h = r.open_dir("/sys/devices/x").unwrap();
        let e = h.read_attr_opt("driver_override").unwrap_err();
        assert!(
            format!("{e:?}").contains("longer than 65536 bytes"),
            "{e:?}"
        );
        std::fs::write(d.join("big"), vec![b'a'; MAX_SYSFS_READ + 1]).unwrap();
        assert!(r.read_bytes("/sys/devices/x/big").is_err());
    }

    #[test]
    fn writes_stay_inside_the_root_whatever_the_links_say() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = SysRoot::new(dir.path());
        let d = r.path("/sys/devices/x");
        std::fs::create_dir_all(&d).unwrap();
        // An absolute link, and a relative one climbing out of the tree.
        std::os::unix::fs::symlink(&victim, d.join("driver_override")).unwrap();
        let up = "../".repeat(20) + victim.strip_prefix("/").unwrap().to_str().unwrap();
        std::os::unix::fs::symlink(&up, d.join("unbind")).unwrap();
        for attr in ["driver_override", "unbind"] {
            let _ = r.write_attr(format!("/sys/devices/x/{attr}"), "vfio-pci");
        }
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        // A directory link out of the tree resolves inside it, as if the tree were `/`.
        std::os::unix::fs::symlink(outside.path(), dir.path().join("var")).unwrap();
        let inside = dir.path().join(outside.path().strip_prefix("/").unwrap());
        std::fs::create_dir_all(&inside).unwrap();
        let rd = r.create_dir_all_in("/var/lib/vfioctl").unwrap();
        rd.write_atomic("ledger.json", b"{}", 0o600).unwrap();
        assert!(!outside.path().join("lib").exists());
        assert!(inside.join("lib/vfioctl/ledger.json").exists());
        assert_eq!(rd.read("ledger.json", 10).unwrap().unwrap(), b"{}");
        assert!(rd.remove("ledger.json").unwrap());
        assert!(!rd.remove("ledger.json").unwrap());
        assert!(rd.open("../x", libc::O_RDONLY, 0).is_err());
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
