//! Accepting connections and answering frames: a thread per connection.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::Arc;
use std::time::Duration;

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
                let st = state.clone();
                let spawned = std::thread::Builder::new()
                    .name("conn".into())
                    .stack_size(256 * 1024)
                    .spawn(move || handle(conn, &peer, &st));
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

fn send(conn: &mut dyn Conn, resp: &Response) -> bool {
    proto::write_frame(conn, &proto::to_payload(resp)).is_ok()
}

fn handle(mut conn: Box<dyn Conn>, peer: &str, st: &State) {
    loop {
        let payload = match proto::read_frame(&mut conn, MAX_REQUEST) {
            Ok(p) => p,
            Err(FrameError::Eof) => return,
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
            if !st.exec {
                return Err(AgentError::new(
                    ErrorKind::ExecDisabled,
                    "exec is disabled in this agent; start it with --exec, vfioctl.exec=1 on the \
                     kernel command line, or exec = true in the rootfs manifest",
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
