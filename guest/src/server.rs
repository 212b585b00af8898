//! Accepting connections and answering frames: a thread per connection, so a slow or
//! silent peer never holds up the accept loop.
//!
//! Hostile peers: every local user of a real host can reach the guest's vsock port, so a
//! connection must send a complete request carrying the VM's secret within the handshake
//! timeout (a half-open or silent connection is closed, never waited on), a request with
//! a wrong or missing secret is answered with `unauthorized` and the connection closed,
//! and at most [`MAX_CONNECTIONS`] connections are served at once.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfioctl_common::proto::{
    self, AgentError, ErrorKind, FrameError, Outcome, PowerAction, Reply, RequestBody, Response,
    MAX_REQUEST,
};

use crate::ops::{self, State};
use crate::{exec, sys};

pub enum Listener {
    Vsock(OwnedFd),
    Unix(UnixListener),
}

/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 32;
/// An authenticated connection idle this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

static ACTIVE: AtomicUsize = AtomicUsize::new(0);

/// Counts a live connection; the count drops with it.
struct Slot;

impl Slot {
    fn take() -> Option<Slot> {
        let n = ACTIVE.fetch_add(1, Ordering::SeqCst);
        if n >= MAX_CONNECTIONS {
            ACTIVE.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        Some(Slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        ACTIVE.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Reads bounded by a deadline: each read first sets the socket's receive timeout to
/// what is left, so a peer that trickles bytes cannot stretch a frame past it.
struct Deadline<'a> {
    conn: &'a mut dyn Conn,
    until: Instant,
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        sys::set_recv_timeout(self.conn.as_raw_fd(), left)?;
        self.conn.read(buf)
    }
}

/// Serve forever (until a shutdown request).
pub fn serve(listener: Listener, state: Arc<State>) -> ! {
    loop {
        let accepted: std::io::Result<(Box<dyn Conn>, String)> = match &listener {
            Listener::Vsock(fd) => sys::accept(fd).map(|(f, p)| (Box::new(f) as Box<dyn Conn>, p)),
            Listener::Unix(l) => l
                .accept()
                .map(|(s, _)| (Box::new(s) as Box<dyn Conn>, "unix".to_string())),
        };
        match accepted {
            Ok((conn, peer)) => {
                let Some(slot) = Slot::take() else {
                    eprintln!(
                        "vfioctl-agent: {peer}: more than {MAX_CONNECTIONS} connections; closing it"
                    );
                    continue;
                };
                let st = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || {
                        let _slot = slot;
                        handle(conn, &peer, &st)
                    });
                if let Err(e) = spawned {
                    eprintln!("vfioctl-agent: cannot start a connection thread: {e}");
                }
            }
            Err(e) => {
                eprintln!("vfioctl-agent: accept: {e}");
                // EMFILE and friends: back off a little instead of spinning.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// A bare echo server (no framing, no JSON): the floor for round-trip benchmarks.
pub fn echo(listener: OwnedFd) {
    let _ = std::thread::Builder::new()
        .name("echo".into())
        .stack_size(64 * 1024)
        .spawn(move || loop {
            let Ok((mut conn, _)) = sys::accept(&listener) else {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            };
            let _ = std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    while let Ok(n) = conn.read(&mut buf) {
                        if n == 0 || conn.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                });
        });
}

pub trait Conn: Read + Write + Send + AsRawFd {}
impl<T: Read + Write + Send + AsRawFd> Conn for T {}

/// The most one `write` hands the vsock socket. Linux 6.12's virtio-vsock sends a larger
/// write as a non-linear skb (fragments beyond 32 KiB, `PAGE_ALLOC_COSTLY_ORDER`), and
/// vhost-device-vsock 0.3.0 (the lab's vhost-user backend) never forwards such a packet: a
/// 6.12 guest's 351-record kernel log (a 32,776-byte frame) stalled with nothing received,
/// while 32,768 bytes went through. Writes of at most 16 KiB are linear on every kernel.
pub const WRITE_CHUNK: usize = 16 * 1024;

fn send(conn: &mut dyn Conn, resp: &Response) -> bool {
    let frame = proto::encode_frame(&proto::to_payload(resp));
    frame.chunks(WRITE_CHUNK).all(|c| conn.write_all(c).is_ok())
}

fn handle(mut conn: Box<dyn Conn>, peer: &str, st: &State) {
    let mut authenticated = false;
    loop {
        let limit = if authenticated {
            IDLE_TIMEOUT
        } else {
            st.cfg.handshake_timeout
        };
        let read = proto::read_frame(
            &mut Deadline {
                conn: conn.as_mut(),
                until: Instant::now() + limit,
            },
            MAX_REQUEST,
        );
        let payload = match read {
            Ok(p) => p,
            Err(FrameError::Eof) => return,
            Err(FrameError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
                ) =>
            {
                if !authenticated {
                    eprintln!(
                        "vfioctl-agent: {peer}: no complete request within {:?}; closing the connection",
                        limit
                    );
                }
                return;
            }
            Err(e) => {
                // Bad magic, version or size: answer once, then drop the connection (the
                // stream cannot be resynchronised).
                if let Some(err) = e.to_agent_error() {
                    eprintln!("vfioctl-agent: {peer}: {e}; closing the connection");
                    send(
                        conn.as_mut(),
                        &Response {
                            id: None,
                            result: Outcome::Err(err),
                        },
                    );
                }
                return;
            }
        };
        let (id, result) = match proto::decode_request(&payload) {
            Ok(req) => {
                if let Err(why) = authorize(st, req.token.as_ref()) {
                    eprintln!("vfioctl-agent: {peer}: {why}; closing the connection");
                    send(
                        conn.as_mut(),
                        &Response {
                            id: Some(req.id),
                            result: Outcome::Err(AgentError::new(ErrorKind::Unauthorized, why)),
                        },
                    );
                    return;
                }
                authenticated = true;
                let body = req.req;
                let shutdown = match &body {
                    RequestBody::Shutdown { action } => Some(*action),
                    _ => None,
                };
                let result =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| dispatch(st, body)))
                        .unwrap_or_else(|_| {
                            Err(AgentError::new(
                                ErrorKind::Internal,
                                "request handler panicked",
                            ))
                        });
                let resp = Response {
                    id: Some(req.id),
                    result: match result {
                        Ok(r) => Outcome::Ok(r),
                        Err(e) => Outcome::Err(e),
                    },
                };
                let sent = send(conn.as_mut(), &resp);
                if let Some(action) = shutdown {
                    let _ = conn.flush();
                    // The reply must reach the host before the guest goes away: wait
                    // (bounded) for the host to close the connection, which the client
                    // does once it has read the reply.
                    linger(conn.as_mut(), Duration::from_secs(3));
                    power(st, action);
                }
                if !sent {
                    return;
                }
                continue;
            }
            Err(e) => (proto::salvage_id(&payload), Outcome::Err(e)),
        };
        if !send(conn.as_mut(), &Response { id, result }) {
            return;
        }
    }
}

/// The request's secret against the agent's: both must exist and match.
fn authorize(st: &State, token: Option<&proto::Token>) -> Result<(), String> {
    let mine = st.token()?;
    match token {
        None => Err("request without the VM's secret (token)".into()),
        Some(t) if mine.matches(t) => Ok(()),
        Some(_) => Err("request with a wrong secret (token)".into()),
    }
}

fn dispatch(st: &State, body: RequestBody) -> Result<Reply, AgentError> {
    Ok(match body {
        RequestBody::Hello => Reply::Hello(ops::hello(st)),
        RequestBody::ListDevices => Reply::Devices(ops::list_devices(&st.root)?),
        RequestBody::WaitDevice {
            selector,
            timeout_ms,
            all_bars,
        } => Reply::WaitDevice(ops::wait_device(
            &st.root,
            &selector,
            Duration::from_millis(timeout_ms),
            all_bars,
        )?),
        RequestBody::KernelLog { since, max_lines } => {
            Reply::KernelLog(ops::kernel_log(&st.root, since, max_lines)?)
        }
        RequestBody::RunCheck { name, args } => {
            Reply::Check(ops::run_check(&st.root, &name, &args)?)
        }
        RequestBody::Exec {
            argv,
            timeout_ms,
            max_output,
            env,
        } => {
            if !st.exec_enabled() {
                return Err(AgentError::new(
                    ErrorKind::ExecDisabled,
                    "exec is disabled in this agent: it needs both the image (exec = true in the \
                     rootfs manifest) and the VM (vfioctl vm up --agent-exec, or vfioctl.exec=1 \
                     on the kernel command line) to ask, or --exec on the agent's command line",
                ));
            }
            Reply::Exec(exec::run(
                &argv,
                &env,
                Duration::from_millis(timeout_ms),
                max_output,
            )?)
        }
        RequestBody::Shutdown { action } => Reply::Shutdown { action },
    })
}

/// Read until the peer closes or `max` passes.
fn linger(conn: &mut dyn Conn, max: Duration) {
    let deadline = std::time::Instant::now() + max;
    let mut buf = [0u8; 256];
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() || !sys::poll_readable(conn.as_raw_fd(), left).unwrap_or(false) {
            return;
        }
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Act on a shutdown request after its reply went out.
fn power(st: &State, action: PowerAction) {
    if st.pid1 {
        eprintln!("vfioctl-agent: {action:?} requested");
        let e = sys::reboot(action == PowerAction::Poweroff);
        eprintln!("vfioctl-agent: reboot(2) failed: {e}");
    } else {
        eprintln!("vfioctl-agent: shutdown requested; exiting");
        std::process::exit(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that records the size of every write.
    #[derive(Default)]
    struct Recorder {
        writes: Vec<usize>,
        bytes: Vec<u8>,
    }
    impl Read for Recorder {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Ok(0)
        }
    }
    impl Write for Recorder {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.writes.push(b.len());
            self.bytes.extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl AsRawFd for Recorder {
        fn as_raw_fd(&self) -> std::os::fd::RawFd {
            -1
        }
    }

    #[test]
    fn a_large_reply_goes_out_in_writes_of_at_most_16_kib() {
        // a reply well above the 32 KiB that stalled on a 6.12 guest
        let resp = Response {
            id: Some(7),
            result: Outcome::Err(AgentError::new(ErrorKind::Io, "x".repeat(100_000))),
        };
        let mut r = Recorder::default();
        assert!(send(&mut r, &resp));
        assert!(r.writes.len() >= 7, "{:?}", r.writes);
        assert!(r.writes.iter().all(|n| *n <= WRITE_CHUNK), "{:?}", r.writes);
        assert_eq!(r.bytes, proto::encode_frame(&proto::to_payload(&resp)));
    }
}
