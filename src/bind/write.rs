//! sysfs writes that may block in the kernel, done in a child process with a timeout.
//!
//! An unbind from nvidia with open clients, or a probe that waits for firmware, can sleep
//! in the kernel for minutes or forever; a thread stuck there would also keep vfioctl from
//! exiting. So the write runs in a forked child that reports the write's result over a
//! pipe; the parent waits with `poll` up to the timeout and otherwise gives up on it (the
//! child stays blocked in the kernel and finishes, or not, on its own).

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe, ForkResult};
use vfioctl_common::SysRoot;

/// Why a timed write did not succeed.
#[derive(Debug)]
pub enum TimedError {
    /// The write did not return in time.
    Timeout,
    /// open or write failed with this error.
    Io(std::io::Error),
}

/// Write `value` to host path `abs` (one `write(2)`, as `echo -n` does), giving up after
/// `timeout`.
pub fn write_timed(
    root: &SysRoot,
    abs: &str,
    value: &str,
    timeout: Duration,
) -> Result<(), TimedError> {
    let path = CString::new(root.path(abs).as_os_str().as_bytes())
        .map_err(|e| TimedError::Io(std::io::Error::new(std::io::ErrorKind::InvalidInput, e)))?;
    let bytes = value.as_bytes().to_vec();
    let (r, w) = pipe().map_err(|e| TimedError::Io(e.into()))?;
    // SAFETY: the child only calls async-signal-safe functions (open, write, close,
    // _exit) on memory prepared before the fork; it never allocates or takes locks.
    match unsafe { fork() }.map_err(|e| TimedError::Io(e.into()))? {
        ForkResult::Child => {
            // SAFETY: plain libc calls on valid pointers owned by this (child) process.
            unsafe {
                // Keep nothing of the parent's: a child left blocked in the kernel must not
                // hold the ledger lock or the caller's stdout/stderr pipes open.
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                for std_fd in 0..3 {
                    libc::dup2(null, std_fd);
                }
                let keep = w.as_raw_fd();
                for fd in 3..4096 {
                    if fd != keep {
                        libc::close(fd);
                    }
                }
                let fd = libc::open(
                    path.as_ptr(),
                    libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
                );
                let mut err: i32 = 0;
                if fd < 0 {
                    err = *libc::__errno_location();
                } else {
                    let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
                    if n < 0 {
                        err = *libc::__errno_location();
                    }
                    libc::close(fd);
                }
                let b = err.to_ne_bytes();
                libc::write(w.as_raw_fd(), b.as_ptr().cast(), 4);
                libc::_exit(0);
            }
        }
        ForkResult::Parent { child } => {
            drop(w);
            let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
            let mut fds = [PollFd::new(r.as_fd(), PollFlags::POLLIN)];
            let ready = loop {
                match poll(
                    &mut fds,
                    PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(TimedError::Io(e.into())),
                    Ok(n) => break n > 0,
                }
            };
            if !ready {
                // Leave the child blocked in the kernel; it is reaped by init when we exit.
                return Err(TimedError::Timeout);
            }
            let mut buf = [0u8; 4];
            let n =
                nix::unistd::read(r.as_raw_fd(), &mut buf).map_err(|e| TimedError::Io(e.into()))?;
            let _ = waitpid(child, None);
            if n != 4 {
                return Err(TimedError::Io(std::io::Error::other("write helper died")));
            }
            match i32::from_ne_bytes(buf) {
                0 => Ok(()),
                e => Err(TimedError::Io(std::io::Error::from_raw_os_error(e))),
            }
        }
    }
}

/// Write a sysfs attribute as the shell's `echo -n value > attr` does: open with
/// `O_TRUNC` (ignored by sysfs, needed for a fixture tree's plain files to hold exactly
/// the last value, as the attribute would read back) and one `write(2)` of the value.
pub fn write_attr(root: &SysRoot, abs: &str, value: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(root.path(abs))?;
    f.write_all(value.as_bytes())
}

/// Test-only fault injection: with `VFIOCTL_FAULT_KILL_AFTER=<step>` in the environment
/// (`override`, `unbind` or `probe`), vfioctl SIGKILLs itself right after that step of the
/// first device, so tests can prove that `vfioctl restore` recovers from a crash anywhere.
pub const FAULT_ENV: &str = "VFIOCTL_FAULT_KILL_AFTER";

pub fn fault_point(step: &str) {
    if std::env::var(FAULT_ENV).is_ok_and(|v| v == step) {
        eprintln!("vfioctl: {FAULT_ENV}={step}: killing myself with SIGKILL");
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reports_errors() {
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        std::fs::write(t.path().join("attr"), "").unwrap();
        write_timed(&root, "/attr", "0000:01:00.0", Duration::from_secs(5)).unwrap();
        assert_eq!(
            std::fs::read_to_string(t.path().join("attr")).unwrap(),
            "0000:01:00.0"
        );
        match write_timed(&root, "/missing/attr", "x", Duration::from_secs(5)) {
            Err(TimedError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_write_that_blocks_times_out() {
        // A FIFO without a reader blocks open(O_WRONLY), as an nvidia unbind with
        // clients blocks in the kernel.
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        nix::unistd::mkfifo(&t.path().join("unbind"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        let r = write_timed(&root, "/unbind", "0000:01:00.0", Duration::from_millis(200));
        assert!(matches!(r, Err(TimedError::Timeout)), "{r:?}");
        // Unblock the child so it exits.
        let _ = std::fs::read(t.path().join("unbind"));
    }
}
