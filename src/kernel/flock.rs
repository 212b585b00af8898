//! An exclusive `flock` on a file: the one lock the kernel builder's phases share
//! (source extraction, `O=` trees, outputs). Below both [`super::source`] and
//! [`super::build`], so neither depends on the other for it.

use std::path::Path;

use super::error::{io, KernelError};

/// An exclusive lock on a file (released on drop): builds sharing a lab (several
/// worktrees, parallel tests) take turns on one `O=` tree and output.
pub struct FileLock(#[allow(dead_code)] std::fs::File);

impl FileLock {
    /// Take the lock on `path` (created with its parent directories if missing),
    /// blocking until it is free; `waiting` is called once first if another holder has it.
    pub fn take(path: &Path, mut waiting: impl FnMut()) -> Result<FileLock, KernelError> {
        use std::os::fd::AsRawFd;
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).map_err(io(d, "cannot create"))?;
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io(path, "cannot open lock"))?;
        // SAFETY: flock on a file descriptor we own; no memory is shared.
        let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            waiting();
            // SAFETY: as above (blocking this time).
            let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if r != 0 {
                return Err(KernelError::Io {
                    path: path.to_path_buf(),
                    what: "cannot lock",
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(FileLock(f))
    }
}
