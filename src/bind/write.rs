//! sysfs writes that may block in the kernel, done in a child process with a timeout.
//!
//! An unbind from nvidia with open clients, or a probe that waits for firmware, can sleep
//! in the kernel for minutes or forever; a thread stuck there would also keep vfioctl from
//! exiting. So the write runs in a forked helper process that reports the write's result
//! over a socket; the parent waits with `poll` up to the timeout. A write that does not
//! return in time is not left behind: the helper is killed (`SIGKILL`) and reaped, and
//! only then does the caller re-read the device, so a write cannot land after vfioctl
//! reported the state. A helper that does not die (blocked uninterruptibly in a driver) is
//! remembered as a pending write ([`pending`]), and the binder never reports a device with
//! a pending write as restored: its ledger entry stays for `vfioctl restore`.
//!
//! Within a [`Session`] (a bind's `execute`, a `restore`) the helper that answered stays
//! up for the next write, so that a bind forks once rather than once per write (under
//! TCG each fork, the child's start and its reaping cost 3-5 ms); a killed helper is
//! replaced by a new one at the next write. Outside a session every write has a helper
//! of its own, ended when the write is.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::sys::socket::{recv, send, socketpair, AddressFamily, MsgFlags, SockFlag, SockType};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{fork, ForkResult, Pid};
use vfioctl_common::sysroot::{open_raw_in, PreparedOpen};
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

/// How every timed write opens its file: as the shell's `>` does.
const WRITE_FLAGS: i32 = libc::O_WRONLY | libc::O_TRUNC | libc::O_NOCTTY;

/// The longest request a helper takes: the path, its NUL and the value (sysfs paths and
/// the values vfioctl writes are far shorter).
const MAX_REQUEST: usize = 4096;

/// A forked process that makes timed writes for its parent: it receives one request per
/// message (the path as [`PreparedOpen::path`] gives it, NUL-terminated, then the value),
/// opens and writes, and answers with the write's `errno` (0: success), then waits for
/// the next request; the end of the socket ends it.
struct Helper {
    pid: Pid,
    /// The parent's end of a `SOCK_SEQPACKET` pair: a request or an answer is one message.
    sock: OwnedFd,
    /// The root it opens under (its copy of that directory's descriptor).
    root: PathBuf,
}

/// The helper kept between the writes of open [`Session`]s.
static HELPER: Mutex<Option<Helper>> = Mutex::new(None);

/// How many [`Session`]s are open.
static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// Keeps the write helper up between timed writes while it lives (the writes of a bind's
/// `execute`, of a `restore`); when the last session ends, the helper is ended and reaped.
pub struct Session(());

impl Session {
    /// Open a session.
    pub fn begin() -> Session {
        SESSIONS.fetch_add(1, Ordering::SeqCst);
        Session(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if SESSIONS.fetch_sub(1, Ordering::SeqCst) == 1 {
            let h = HELPER.lock().unwrap_or_else(|e| e.into_inner()).take();
            if let Some(h) = h {
                h.end();
            }
        }
    }
}

impl Helper {
    /// Fork a helper for the root `target` was prepared under.
    fn spawn(root: &SysRoot, target: &PreparedOpen) -> Result<Helper, TimedError> {
        let (mine, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| TimedError::Io(e.into()))?;
        let dir = target.dir_fd().unwrap_or(-1);
        // SAFETY: the child only makes system calls (open/openat2, recv, send, write,
        // close, close_range, _exit) on memory prepared before the fork and on its own
        // stack; it never allocates or takes locks.
        match unsafe { fork() }.map_err(|e| TimedError::Io(e.into()))? {
            ForkResult::Child => {
                // SAFETY: plain libc calls on valid pointers owned by this (child) process.
                unsafe {
                    // Keep nothing of the parent's: a helper left blocked in the kernel must
                    // not hold the ledger lock or the caller's stdout/stderr pipes open.
                    let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                    for std_fd in 0..3 {
                        libc::dup2(null, std_fd);
                    }
                    close_all_but(theirs.as_raw_fd(), dir);
                    serve(theirs.as_raw_fd(), dir)
                }
            }
            ForkResult::Parent { child } => Ok(Helper {
                pid: child,
                sock: mine,
                root: root.root().to_path_buf(),
            }),
        }
    }

    /// Hand `request` over; false when the helper is gone (killed from outside).
    fn send(&self, request: &[u8]) -> bool {
        send(self.sock.as_raw_fd(), request, MsgFlags::MSG_NOSIGNAL) == Ok(request.len())
    }

    /// End the helper: it sees the end of the socket and exits; reap it (killed when it
    /// does not go within [`KILL_GRACE`]).
    fn end(self) {
        let _ =
            nix::sys::socket::shutdown(self.sock.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        // Its end of the socket closes as it exits: wait for that, not in sleeps.
        let mut fds = [PollFd::new(self.sock.as_fd(), PollFlags::POLLIN)];
        let grace = PollTimeout::try_from(KILL_GRACE.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        let hung_up = loop {
            match poll(&mut fds, grace) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break matches!(r, Ok(n) if n > 0),
            }
        };
        if hung_up {
            // It is past closing its files: exiting, not blocked anywhere.
            while let Err(nix::errno::Errno::EINTR) = waitpid(self.pid, None) {}
            return;
        }
        // Not reaped yet, so the pid is still this helper's.
        let _ = kill_and_reap(self.pid);
    }
}

/// The helper's loop: one request, one answer, until the socket ends.
///
/// # Safety
/// Only in a forked child: it never returns (`_exit`).
unsafe fn serve(sock: i32, dir: i32) -> ! {
    let mut buf = [0u8; MAX_REQUEST];
    loop {
        // SAFETY: `buf` is writable for its length; MSG_TRUNC returns the whole message's
        // length, so a request longer than the buffer is seen, not cut short.
        let n = unsafe { libc::recv(sock, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
        if n < 0 {
            // SAFETY: reads this process's errno.
            if unsafe { *libc::__errno_location() } == libc::EINTR {
                continue;
            }
            // SAFETY: ends the child.
            unsafe { libc::_exit(0) };
        }
        if n == 0 {
            // SAFETY: ends the child: the parent ended the socket (or died).
            unsafe { libc::_exit(0) };
        }
        let err = match buf.get(..n as usize) {
            // SAFETY: `req` lies in `buf`.
            Some(req) => unsafe { write_request(req, dir) },
            None => libc::EMSGSIZE,
        };
        let b = err.to_ne_bytes();
        // SAFETY: `b` is readable for 4 bytes.
        if unsafe { libc::send(sock, b.as_ptr().cast(), 4, libc::MSG_NOSIGNAL) } != 4 {
            // SAFETY: ends the child: nobody waits for the answer.
            unsafe { libc::_exit(0) };
        }
    }
}

/// Carry out one request (path, NUL, value): open, one `write(2)`, close. The `errno`
/// of the open or the write, 0 on success.
///
/// # Safety
/// In the helper only (`errno` is read right after each call).
unsafe fn write_request(req: &[u8], dir: i32) -> i32 {
    let Some(nul) = req.iter().position(|b| *b == 0) else {
        return libc::EINVAL;
    };
    let (path, value) = req.split_at(nul + 1);
    // SAFETY: `path` ends with its NUL.
    let fd = unsafe { open_raw_in(dir, path.as_ptr().cast(), WRITE_FLAGS) };
    if fd < 0 {
        // SAFETY: reads this process's errno.
        return unsafe { *libc::__errno_location() };
    }
    // SAFETY: `value` is readable for its length; `fd` was just opened.
    let n = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
    let err = if n < 0 {
        // SAFETY: reads this process's errno.
        unsafe { *libc::__errno_location() }
    } else {
        0
    };
    // SAFETY: closes the descriptor opened above.
    unsafe { libc::close(fd) };
    err
}

fn answer(code: i32) -> Result<(), TimedError> {
    match code {
        0 => Ok(()),
        e => Err(TimedError::Io(std::io::Error::from_raw_os_error(e))),
    }
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
        .prepare_open(abs, WRITE_FLAGS)
        .map_err(TimedError::Io)?;
    let mut request = target.path().to_bytes_with_nul().to_vec();
    request.extend_from_slice(value.as_bytes());
    if request.len() > MAX_REQUEST {
        return Err(TimedError::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("path and value are longer than {MAX_REQUEST} bytes"),
        )));
    }
    let mut slot = HELPER.lock().unwrap_or_else(|e| e.into_inner());
    let mut helper = match slot.take() {
        Some(h) if h.root == root.root() => Some(h),
        Some(h) => {
            h.end();
            None
        }
        None => None,
    };
    // A kept helper that was killed from outside is replaced by a new one.
    if let Some(h) = helper.take() {
        if h.send(&request) {
            helper = Some(h);
        } else {
            h.end();
        }
    }
    let h = match helper {
        Some(h) => h,
        None => {
            let h = Helper::spawn(root, &target)?;
            if !h.send(&request) {
                h.end();
                return Err(TimedError::Io(std::io::Error::other("write helper died")));
            }
            h
        }
    };
    drop(target);
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(h.sock.as_fd(), PollFlags::POLLIN)];
    let ready = loop {
        match poll(
            &mut fds,
            PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r.map(|n| n > 0),
        }
    };
    if ready != Ok(true) {
        // Never leave the write behind to land later: kill the helper and reap it. If it
        // answered in the meantime, that answer is the truth.
        let gone = kill_and_reap(h.pid);
        if gone {
            let mut buf = [0u8; 4];
            if let Ok(4) = recv(h.sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                return answer(i32::from_ne_bytes(buf));
            }
            return Err(match ready {
                Err(e) => TimedError::Io(e.into()),
                Ok(_) => TimedError::Timeout { pending: None },
            });
        }
        PENDING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(PendingWrite {
                pid: h.pid.as_raw(),
                path: abs.to_string(),
                value: value.to_string(),
            });
        return Err(TimedError::Timeout {
            pending: Some(h.pid.as_raw()),
        });
    }
    let mut buf = [0u8; 4];
    let n = recv(h.sock.as_raw_fd(), &mut buf, MsgFlags::empty());
    if n != Ok(4) {
        // Killed from outside while it had the request: whether the write happened is not
        // known, as for any write whose process dies in it.
        h.end();
        return Err(TimedError::Io(std::io::Error::other("write helper died")));
    }
    if SESSIONS.load(Ordering::SeqCst) > 0 {
        *slot = Some(h);
    } else {
        drop(slot);
        h.end();
    }
    answer(i32::from_ne_bytes(buf))
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

    /// The write helper and the session count are per process: the tests that write take
    /// turns.
    static TURN: Mutex<()> = Mutex::new(());

    fn turn() -> std::sync::MutexGuard<'static, ()> {
        TURN.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn helper_pid() -> Option<Pid> {
        HELPER.lock().unwrap().as_ref().map(|h| h.pid)
    }

    fn reaped(pid: Pid) -> bool {
        matches!(
            waitpid(pid, Some(WaitPidFlag::WNOHANG)),
            Err(nix::errno::Errno::ECHILD)
        )
    }

    #[test]
    fn a_session_keeps_one_helper_and_reaps_it_at_the_end() {
        let _t = turn();
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        for f in ["a", "b"] {
            std::fs::write(t.path().join(f), "").unwrap();
        }
        let s = Session::begin();
        write_timed(&root, "/a", "one", Duration::from_secs(5)).unwrap();
        let pid = helper_pid().expect("kept for the next write");
        write_timed(&root, "/b", "two", Duration::from_secs(5)).unwrap();
        assert_eq!(helper_pid(), Some(pid), "the same helper made both writes");
        assert_eq!(std::fs::read_to_string(t.path().join("a")).unwrap(), "one");
        assert_eq!(std::fs::read_to_string(t.path().join("b")).unwrap(), "two");
        // Errors come back as before, and the helper stays.
        match write_timed(&root, "/missing/attr", "x", Duration::from_secs(5)) {
            Err(TimedError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
            other => panic!("{other:?}"),
        }
        assert_eq!(helper_pid(), Some(pid));
        drop(s);
        assert_eq!(helper_pid(), None);
        assert!(reaped(pid), "the helper is reaped when the session ends");
    }

    #[test]
    fn a_helper_killed_between_writes_is_replaced() {
        let _t = turn();
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        std::fs::write(t.path().join("a"), "").unwrap();
        let _s = Session::begin();
        write_timed(&root, "/a", "one", Duration::from_secs(5)).unwrap();
        let pid = helper_pid().unwrap();
        kill(pid, Signal::SIGKILL).unwrap();
        // Dead (a zombie until reaped) before the next write comes.
        let stat = format!("/proc/{pid}/stat");
        let until = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&stat).is_ok_and(|s| s.contains(") Z ")) {
            assert!(Instant::now() < until, "the helper did not die");
            std::thread::sleep(Duration::from_millis(5));
        }
        write_timed(&root, "/a", "two", Duration::from_secs(5)).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("a")).unwrap(), "two");
        assert_ne!(helper_pid(), Some(pid));
        assert!(reaped(pid));
    }

    #[test]
    fn outside_a_session_no_helper_outlives_its_write() {
        let _t = turn();
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        std::fs::write(t.path().join("a"), "").unwrap();
        write_timed(&root, "/a", "one", Duration::from_secs(5)).unwrap();
        assert_eq!(helper_pid(), None);
    }

    #[test]
    fn a_timed_out_write_in_a_session_is_killed_and_the_next_gets_a_new_helper() {
        let _t = turn();
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        nix::unistd::mkfifo(&t.path().join("unbind"), nix::sys::stat::Mode::S_IRWXU).unwrap();
        std::fs::write(t.path().join("a"), "").unwrap();
        let _s = Session::begin();
        write_timed(&root, "/a", "one", Duration::from_secs(5)).unwrap();
        let pid = helper_pid().unwrap();
        let r = write_timed(&root, "/unbind", "0000:01:00.0", Duration::from_millis(200));
        assert!(
            matches!(r, Err(TimedError::Timeout { pending: None })),
            "{r:?}"
        );
        assert_eq!(helper_pid(), None);
        assert!(reaped(pid), "killed and reaped");
        write_timed(&root, "/a", "two", Duration::from_secs(5)).unwrap();
        assert_eq!(std::fs::read_to_string(t.path().join("a")).unwrap(), "two");
    }

    #[test]
    fn writes_and_reports_errors() {
        let _t = turn();
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
        let _t = turn();
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
        let _t = turn();
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
