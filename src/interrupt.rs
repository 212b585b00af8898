//! SIGINT and SIGTERM for the commands that start things (`vm up`, `validate`, `regress`):
//! the first signal is recorded and wakes whoever waits for it, so the command can tear
//! down what it started and exit with 130 (SIGINT) or 143 (SIGTERM); a second signal of
//! either kind ends the process at once, the way an impatient user expects.
//!
//! The handler only stores the signal number and writes one byte to a pipe (both
//! async-signal-safe); a watcher thread reads the pipe and wakes async waiters
//! ([`wait`]) through a [`tokio::sync::Notify`], which works across runtimes. Synchronous
//! code polls [`received`]. Commands that never call [`install`] keep the default
//! dispositions.

#![warn(missing_docs)]

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use crate::Exit;

/// The signal that stopped a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Signal {
    /// SIGINT (Ctrl-C): exit 130.
    Sigint,
    /// SIGTERM: exit 143.
    Sigterm,
}

impl Signal {
    fn from_raw(n: i32) -> Option<Signal> {
        match n {
            libc::SIGINT => Some(Signal::Sigint),
            libc::SIGTERM => Some(Signal::Sigterm),
            _ => None,
        }
    }

    /// 130 for SIGINT, 143 for SIGTERM (128 + the signal number, as shells report it).
    pub fn exit(self) -> Exit {
        match self {
            Signal::Sigint => Exit::Interrupted,
            Signal::Sigterm => Exit::Terminated,
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Signal::Sigint => "SIGINT",
            Signal::Sigterm => "SIGTERM",
        })
    }
}

/// A command stopped by a signal, after it cleaned up.
#[derive(Debug, thiserror::Error)]
#[error("{what}: stopped by {signal}")]
pub struct Interrupted {
    /// What was running (`vm up lab`, `validate`).
    pub what: String,
    /// The signal.
    pub signal: Signal,
}

impl crate::Diagnose for Interrupted {
    fn exit(&self) -> Exit {
        self.signal.exit()
    }
}

static RECEIVED: AtomicI32 = AtomicI32::new(0);
static PIPE_WR: AtomicI32 = AtomicI32::new(-1);
static NOTIFY: OnceLock<tokio::sync::Notify> = OnceLock::new();
static INSTALLED: OnceLock<Result<(), String>> = OnceLock::new();

fn notify() -> &'static tokio::sync::Notify {
    NOTIFY.get_or_init(tokio::sync::Notify::new)
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Only async-signal-safe calls: atomics, write(2), signal(2), raise(3).
    if RECEIVED
        .compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst)
        .is_err()
    {
        // The second signal: give up on cleaning up, die by the signal.
        // SAFETY: signal(2) and raise(3) are async-signal-safe.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
        return;
    }
    let fd = PIPE_WR.load(Ordering::SeqCst);
    if fd >= 0 {
        let b = [1u8];
        // SAFETY: write(2) of one byte from a live buffer to our pipe; async-signal-safe.
        unsafe {
            libc::write(fd, b.as_ptr().cast(), 1);
        }
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Install the handlers (idempotent). After this, SIGINT and SIGTERM no longer kill the
/// process on their own: the caller must watch [`wait`] or [`received`].
pub fn install() -> Result<(), crate::Failure> {
    let r = INSTALLED.get_or_init(|| {
        let (rd, wr) = pipe().map_err(|e| format!("signal pipe: {e}"))?;
        PIPE_WR.store(wr.as_raw_fd(), Ordering::SeqCst);
        // The write end lives as long as the process.
        std::mem::forget(wr);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut b = [0u8; 16];
                loop {
                    // SAFETY: read(2) into a live buffer from the pipe we own.
                    let n = unsafe { libc::read(rd.as_raw_fd(), b.as_mut_ptr().cast(), b.len()) };
                    if n > 0 {
                        notify().notify_waiters();
                    } else if n == 0 {
                        return;
                    }
                }
            })
            .map_err(|e| format!("signal watcher thread: {e}"))?;
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: a zeroed sigaction is valid; we set a plain handler with SA_RESTART so
            // other threads' blocking calls resume instead of failing with EINTR.
            let rc = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
            }
        }
        Ok(())
    });
    r.clone()
        .map_err(|e| crate::Failure::new(Exit::Infrastructure, e))
}

/// The first SIGINT/SIGTERM received since [`install`], if any.
pub fn received() -> Option<Signal> {
    Signal::from_raw(RECEIVED.load(Ordering::SeqCst))
}

/// Wait for SIGINT or SIGTERM (forever when [`install`] was not called).
pub async fn wait() -> Signal {
    loop {
        let n = notify().notified();
        tokio::pin!(n);
        n.as_mut().enable();
        if let Some(s) = received() {
            return s;
        }
        n.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Signal::Sigint.exit().code(), 130);
        assert_eq!(Signal::Sigterm.exit().code(), 143);
        assert_eq!(Signal::from_raw(libc::SIGTERM), Some(Signal::Sigterm));
        assert_eq!(Signal::from_raw(0), None);
    }
}
