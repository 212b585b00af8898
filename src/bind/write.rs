//! sysfs writes that may block in the kernel, done in a child process with a timeout.
//!
//! An unbind from nvidia with open clients, or a probe that waits for firmware, can sleep
//! in the kernel for minutes or forever; a thread stuck there would also keep vfioctl from
//! exiting. So the write runs in a forked child that reports the write's result over a
//! pipe; the parent waits with `poll` up to the timeout. A write that does not return in
//! time is not left behind: the child is killed (`SIGKILL`) and reaped, and only then does
//! the caller re-read the device, so a write cannot land after vfioctl reported the state.
//! A child that does not die (blocked uninterruptibly in a driver) is remembered as a
//! pending write ([`pending`]), and the binder never reports a device with a pending write
//! as restored: its ledger entry stays for `vfioctl restore`.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, pipe, ForkResult, Pid};
use vfioctl_common::SysRoot;

/// How long a killed write helper gets to die before it counts as pending.
pub const KILL_GRACE: Duration = Duration::from_secs(2);

/// Why a timed write did not succeed.
#[derive(Debug)]
pub enum TimedError {
    /// The write did not return in time. `pending`: the helper still lives (blocked in
    /// the kernel, unkillable), with this pid; `None`: it was killed and reaped.
    Timeout {
        /// The still-living helper's pid, or `None` when it was killed and reaped.
        pending: Option<i32>,
    },
    /// open or write failed with this error.
    Io(std::io::Error),
}

/// A write whose helper outlived its kill.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingWrite {
    /// The helper process, blocked in the write.
    pub pid: i32,
    /// The sysfs file written.
    pub path: String,
    /// The value written.
    pub value: String,
}

static PENDING: Mutex<Vec<PendingWrite>> = Mutex::new(Vec::new());

/// The writes still pending in the kernel (helpers that outlived `SIGKILL`), after
/// reaping those that have finished since.
pub fn pending() -> Vec<PendingWrite> {
    let mut p = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    p.retain(|PendingWrite { pid, .. }| {
        !matches!(
            waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::Exited(..)) | Ok(WaitStatus::Signaled(..)) | Err(_)
        )
    });
    p.clone()
}

/// Wait up to `limit` for every pending write to finish; what is still pending after.
pub fn wait_pending(limit: Duration) -> Vec<PendingWrite> {
    let until = Instant::now() + limit;
    loop {
        let p = pending();
        if p.is_empty() || Instant::now() >= until {
            return p;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kill `child` and wait up to [`KILL_GRACE`] for it; true when it is gone.
fn kill_and_reap(child: Pid) -> bool {
    let _ = kill(child, Signal::SIGKILL);
    let until = Instant::now() + KILL_GRACE;
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(_) | Err(_) => return true,
        }
        if Instant::now() >= until {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Close every descriptor from 3 up but `a` and `b` (-1: none), in a forked child.
/// `close_range(2)` does it in at most three system calls; on kernels before 5.9
/// (`ENOSYS`) every descriptor below 4096 is closed one by one, as before. Under TCG
/// the 4,093 `close` calls cost 1.5-3 ms per write.
///
/// # Safety
/// Only in a child between `fork` and `_exit`: it closes descriptors that other owners in
/// the parent's address space would still think open.
unsafe fn close_all_but(a: i32, b: i32) {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let mut ok = true;
    let mut from: u32 = 3;
    for keep in [lo, hi] {
        let Ok(k) = u32::try_from(keep) else { continue };
        if k >= from {
            if k > from {
                ok &= close_range(from, k - 1);
            }
            from = k + 1;
        }
    }
    ok &= close_range(from, u32::MAX);
    if !ok {
        for fd in 3..4096 {
            if fd != a && fd != b {
                // SAFETY: the caller's contract (a child about to _exit).
                unsafe { libc::close(fd) };
            }
        }
    }
}

/// `close_range(first, last, 0)`; false when the kernel lacks it. One system call, no
/// allocation (async-signal-safe).
fn close_range(first: u32, last: u32) -> bool {
    // SAFETY: closes descriptors only; no pointers are passed.
    unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) == 0 }
}

/// Write `value` to host path `abs` (one `write(2)`, as `echo -n` does), giving up after
/// `timeout`. The path is resolved inside the root ([`SysRoot::prepare_open`]).
pub fn write_timed(
    root: &SysRoot,
    abs: &str,
    value: &str,
    timeout: Duration,
) -> Result<(), TimedError> {
    #[cfg(feature = "fault-injection")]
    if let Some(r) = super::sim::write(root, abs, value) {
        return r.map_err(TimedError::Io);
    }
    let target = root
        .prepare_open(abs, libc::O_WRONLY | libc::O_TRUNC | libc::O_NOCTTY)
        .map_err(TimedError::Io)?;
    let bytes = value.as_bytes().to_vec();
    let (r, w) = pipe().map_err(|e| TimedError::Io(e.into()))?;
    // SAFETY: the child only calls async-signal-safe functions (open/openat2, write,
    // close, _exit) on memory prepared before the fork; it never allocates or takes locks.
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
                let dir = target.dir_fd().unwrap_or(-1);
                close_all_but(keep, dir);
                let fd = target.open_raw();
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
                // Never leave the write behind to land later: kill the helper and reap
                // it. If it answered in the meantime, that answer is the truth.
                let gone = kill_and_reap(child);
                if gone {
                    let mut buf = [0u8; 4];
                    if let Ok(4) = nix::unistd::read(r.as_raw_fd(), &mut buf) {
                        return match i32::from_ne_bytes(buf) {
                            0 => Ok(()),
                            e => Err(TimedError::Io(std::io::Error::from_raw_os_error(e))),
                        };
                    }
                    return Err(TimedError::Timeout { pending: None });
                }
                PENDING
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(PendingWrite {
                        pid: child.as_raw(),
                        path: abs.to_string(),
                        value: value.to_string(),
                    });
                return Err(TimedError::Timeout {
                    pending: Some(child.as_raw()),
                });
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

/// Write a sysfs attribute as the shell's `echo -n value > attr` does ([`SysRoot::write_attr`]:
/// resolved inside the root, a FIFO in its place fails instead of hanging).
pub fn write_attr(root: &SysRoot, abs: &str, value: &str) -> std::io::Result<()> {
    #[cfg(feature = "fault-injection")]
    if let Some(r) = super::sim::write(root, abs, value) {
        return r;
    }
    root.write_attr(abs, value).map_err(|e| e.source)
}

/// Test-only fault injection, compiled only with the `fault-injection` cargo feature
/// (the tests enable it; a release build never has it). With
/// `VFIOCTL_FAULT_KILL_AFTER` in the environment vfioctl SIGKILLs itself right after a
/// step, so tests prove that `vfioctl restore` recovers from a crash anywhere:
///
/// - `<step>`: after that step of the first device (`override`, `unbind`, `probe`);
/// - `<step>@<n>`: after that step of the n-th device (1-based) or n-th occurrence;
/// - `#<k>`: at the k-th fault point reached, whatever it is (tests walk k = 1, 2, ...
///   until a run finishes: every step of every device).
///
/// `VFIOCTL_FAULT_TRACE=1` prints every point reached to stderr as `fault-point k step@n`.
pub const FAULT_ENV: &str = "VFIOCTL_FAULT_KILL_AFTER";

#[cfg(feature = "fault-injection")]
static FAULT_COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A step just finished: `step` of the `n`-th device (1-based; 1 for run-wide steps).
#[cfg(feature = "fault-injection")]
pub fn fault_point(step: &str, n: usize) {
    let k = FAULT_COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if std::env::var_os("VFIOCTL_FAULT_TRACE").is_some() {
        eprintln!("fault-point {k} {step}@{n}");
    }
    let Ok(want) = std::env::var(FAULT_ENV) else {
        return;
    };
    let hit = if let Some(kk) = want.strip_prefix('#') {
        kk.parse::<usize>().is_ok_and(|kk| kk == k)
    } else if let Some((s, i)) = want.split_once('@') {
        s == step && i.parse::<usize>().is_ok_and(|i| i == n)
    } else {
        want == step && n == 1
    };
    if hit {
        eprintln!("vfioctl: {FAULT_ENV}={want}: killing myself with SIGKILL after {step}@{n}");
        let _ = kill(nix::unistd::getpid(), Signal::SIGKILL);
    }
}

/// Without the `fault-injection` feature there are no fault points.
#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn fault_point(_step: &str, _n: usize) {}

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
    fn a_child_keeps_only_the_descriptors_it_needs() {
        let files: Vec<std::fs::File> = (0..6).map(|_| tempfile::tempfile().unwrap()).collect();
        let fds: Vec<i32> = files.iter().map(|f| f.as_raw_fd()).collect();
        let (a, b) = (fds[1], fds[4]);
        // SAFETY: the child makes system calls only (close_range, fcntl, _exit).
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                // SAFETY: a forked child about to _exit.
                unsafe { close_all_but(a, b) };
                let open = |fd: i32| {
                    // SAFETY: F_GETFD on any number only asks whether it is open.
                    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
                };
                let ok = (0..3).all(open)
                    && open(a)
                    && open(b)
                    && fds
                        .iter()
                        .filter(|f| **f != a && **f != b)
                        .all(|f| !open(*f));
                // SAFETY: ends the child without running the parent's destructors.
                unsafe { libc::_exit(if ok { 0 } else { 1 }) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn a_write_that_blocks_times_out_and_never_lands_later() {
        // A FIFO without a reader blocks open(O_WRONLY), as an nvidia unbind with
        // clients blocks in the kernel.
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        let fifo = t.path().join("unbind");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let r = write_timed(&root, "/unbind", "0000:01:00.0", Duration::from_millis(200));
        assert!(
            matches!(r, Err(TimedError::Timeout { pending: None })),
            "{r:?}"
        );
        assert!(pending().is_empty());
        // The helper is gone: a reader now finds no writer and nothing written.
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut s = String::new();
        use std::io::Read;
        let _ = f.read_to_string(&mut s);
        assert_eq!(s, "");
    }

    #[test]
    fn a_write_through_a_link_out_of_the_root_stays_inside() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("v");
        std::fs::write(&victim, "keep").unwrap();
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&victim, t.path().join("attr")).unwrap();
        let root = SysRoot::new(t.path());
        let _ = write_timed(&root, "/attr", "x", Duration::from_secs(5));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    }
}
