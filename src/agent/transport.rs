//! How the host reaches a guest agent: AF_VSOCK (`vhost-vsock-pci`, a real KVM host), the
//! hybrid unix-socket protocol of vhost-device-vsock / Firecracker / Cloud Hypervisor
//! (`CONNECT <port>\n` then `OK ...\n`), or a plain unix socket (an agent started with
//! `--listen unix:PATH` on this machine, for tests).

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vfioctl_common::proto::DEFAULT_PORT;

/// Where the agent is. Serializable: the VM state file stores it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Transport {
    /// `AF_VSOCK` to guest CID `cid`, port `port`.
    Vsock {
        /// The guest's context id (`guest-cid=` of `vhost-vsock-pci`).
        cid: u32,
        /// The vsock port the agent listens on.
        port: u32,
    },
    /// The hybrid protocol over the unix socket a vsock backend exposes (`uds-path=` of
    /// vhost-device-vsock).
    Hybrid {
        /// The backend's unix socket on the host.
        uds_path: PathBuf,
        /// The vsock port the agent listens on in the guest.
        port: u32,
    },
    /// A plain unix socket the agent itself listens on.
    Unix {
        /// The socket's path.
        path: PathBuf,
    },
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Transport::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Transport::Hybrid { uds_path, port } => write!(f, "unix:{}:{port}", uds_path.display()),
            Transport::Unix { path } => write!(f, "local:{}", path.display()),
        }
    }
}

/// An agent address (`--agent`, a state file) that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid agent address {input:?}: {reason}; expected vsock:CID[:PORT], unix:UDS_PATH[:PORT] (hybrid vsock) or local:SOCKET")]
pub struct TransportParseError {
    /// The address as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Transport {
    type Err = TransportParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| TransportParseError {
            input: s.into(),
            reason,
        };
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = match rest.split_once(':') {
                Some((c, p)) => (c, p.parse().map_err(|_| err("port is not a number"))?),
                None => (rest, DEFAULT_PORT),
            };
            let cid: u32 = cid.parse().map_err(|_| err("CID is not a number"))?;
            if cid < 2 {
                return Err(err("guest CIDs start at 3"));
            }
            return Ok(Transport::Vsock { cid, port });
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            let (path, port) = match rest.rsplit_once(':') {
                Some((p, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                    (p, port.parse().map_err(|_| err("port is not a number"))?)
                }
                _ => (rest, DEFAULT_PORT),
            };
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            return Ok(Transport::Hybrid {
                uds_path: path.into(),
                port,
            });
        }
        if let Some(path) = s.strip_prefix("local:") {
            if path.is_empty() {
                return Err(err("empty socket path"));
            }
            return Ok(Transport::Unix { path: path.into() });
        }
        Err(err("unknown scheme"))
    }
}

/// Why one connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Nobody listens yet (no socket file, refused, reset, EOF before `OK`): retry.
    #[error("agent not listening yet: {0}")]
    NotYet(String),
    /// Retrying will not help (bad socket path type, vsock not supported here).
    #[error("{0}")]
    Fatal(String),
}

/// A connected byte stream to the agent.
pub enum Stream {
    /// A unix socket (the hybrid protocol once `OK` came back, or a plain socket).
    Unix(UnixStream),
    /// An `AF_VSOCK` socket.
    Vsock(File),
}

impl Stream {
    fn fd(&self) -> RawFd {
        match self {
            Stream::Unix(s) => s.as_raw_fd(),
            Stream::Vsock(f) => f.as_raw_fd(),
        }
    }

    /// Bound every following read and write (`None`: block).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        // A zero Duration means "no timeout" to the kernel; use the smallest real one.
        let t = t.map(|d| d.max(Duration::from_millis(1)));
        match self {
            Stream::Unix(s) => {
                s.set_read_timeout(t)?;
                s.set_write_timeout(t)
            }
            Stream::Vsock(_) => {
                set_timeval(self.fd(), libc::SO_RCVTIMEO, t)?;
                set_timeval(self.fd(), libc::SO_SNDTIMEO, t)
            }
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Vsock(f) => f.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Vsock(f) => f.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn set_timeval(fd: RawFd, opt: libc::c_int, t: Option<Duration>) -> io::Result<()> {
    let tv = match t {
        Some(d) => libc::timeval {
            tv_sec: d.as_secs() as libc::time_t,
            tv_usec: d.subsec_micros() as libc::suseconds_t,
        },
        None => libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        },
    };
    set_opt(fd, libc::SOL_SOCKET, opt, &tv)
}

fn set_opt<T>(fd: RawFd, level: libc::c_int, opt: libc::c_int, val: &T) -> io::Result<()> {
    // SAFETY: `val` points to a live T of the size passed; fd is an open socket.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            val as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::TimedOut
            | io::ErrorKind::WouldBlock
            | io::ErrorKind::BrokenPipe
    ) || matches!(
        e.raw_os_error(),
        Some(libc::ENODEV) | Some(libc::EHOSTUNREACH) | Some(libc::ENETUNREACH)
    )
}

/// The `OK` line of the hybrid protocol, read one byte at a time so no payload byte is
/// consumed. Only the `OK ` prefix is checked: Firecracker answers with the host-side port
/// it assigned, vhost-device-vsock 0.3.0 with the guest port.
pub fn read_ok_line(r: &mut impl Read) -> Result<String, ConnectError> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Err(ConnectError::NotYet(
                "the vsock backend closed the connection before OK (no listener on the guest port)"
                    .into(),
            )),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() > 64 {
                    return Err(ConnectError::Fatal(format!(
                        "hybrid vsock: answer too long: {:?}",
                        String::from_utf8_lossy(&line)
                    )));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if retryable(&e) => {
                return Err(ConnectError::NotYet(format!("reading OK: {e}")))
            }
            Err(e) => return Err(ConnectError::Fatal(format!("reading OK: {e}"))),
        }
    }
    let s = String::from_utf8_lossy(&line).into_owned();
    if s.starts_with("OK ") || s == "OK" {
        Ok(s)
    } else {
        Err(ConnectError::Fatal(format!(
            "hybrid vsock: expected `OK <port>`, got {s:?}"
        )))
    }
}

impl Transport {
    /// One connection attempt, bounded by `timeout`.
    pub fn open(&self, timeout: Duration) -> Result<Stream, ConnectError> {
        match self {
            Transport::Unix { path } => {
                let s = UnixStream::connect(path).map_err(|e| classify(e, path))?;
                Ok(Stream::Unix(s))
            }
            Transport::Hybrid { uds_path, port } => {
                let s = UnixStream::connect(uds_path).map_err(|e| classify(e, uds_path))?;
                let mut st = Stream::Unix(s);
                st.set_timeout(Some(timeout))
                    .map_err(|e| ConnectError::Fatal(e.to_string()))?;
                st.write_all(format!("CONNECT {port}\n").as_bytes())
                    .map_err(|e| ConnectError::NotYet(format!("writing CONNECT: {e}")))?;
                read_ok_line(&mut st)?;
                Ok(st)
            }
            Transport::Vsock { cid, port } => vsock_connect(*cid, *port, timeout),
        }
    }
}

fn classify(e: io::Error, path: &std::path::Path) -> ConnectError {
    if retryable(&e) {
        ConnectError::NotYet(format!("{}: {e}", path.display()))
    } else {
        ConnectError::Fatal(format!("connect {}: {e}", path.display()))
    }
}

/// `SO_VM_SOCKETS_CONNECT_TIMEOUT` (`linux/vm_sockets.h`; the timeval variant).
const SO_VM_SOCKETS_CONNECT_TIMEOUT: libc::c_int = 6;

fn vsock_connect(cid: u32, port: u32, timeout: Duration) -> Result<Stream, ConnectError> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return Err(ConnectError::Fatal(format!(
            "AF_VSOCK socket: {e} (load vhost_vsock on the host, or use the hybrid transport unix:UDS_PATH:PORT)"
        )));
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: timeout.subsec_micros() as libc::suseconds_t,
    };
    let _ = set_opt(
        fd.as_raw_fd(),
        libc::AF_VSOCK,
        SO_VM_SOCKETS_CONNECT_TIMEOUT,
        &tv,
    );
    // SAFETY: sockaddr_vm is plain old data.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    // SAFETY: addr is a valid sockaddr_vm of the given length.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_vm as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(if retryable(&e) {
            ConnectError::NotYet(format!("vsock {cid}:{port}: {e}"))
        } else {
            ConnectError::Fatal(format!("vsock {cid}:{port}: {e}"))
        });
    }
    Ok(Stream::Vsock(File::from(fd)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        for (s, t) in [
            ("vsock:3:1024", Transport::Vsock { cid: 3, port: 1024 }),
            (
                "unix:/run/vm/a.vsock:2000",
                Transport::Hybrid {
                    uds_path: "/run/vm/a.vsock".into(),
                    port: 2000,
                },
            ),
            (
                "local:/tmp/agent.sock",
                Transport::Unix {
                    path: "/tmp/agent.sock".into(),
                },
            ),
        ] {
            let got: Transport = s.parse().unwrap();
            assert_eq!(got, t);
            assert_eq!(got.to_string(), s);
        }
        assert_eq!(
            "vsock:7".parse::<Transport>().unwrap(),
            Transport::Vsock { cid: 7, port: 1024 }
        );
        assert_eq!(
            "unix:/x/vm.vsock".parse::<Transport>().unwrap(),
            Transport::Hybrid {
                uds_path: "/x/vm.vsock".into(),
                port: 1024
            }
        );
        for bad in ["tcp:1", "vsock:x:1", "vsock:1:1", "unix:", "local:"] {
            assert!(bad.parse::<Transport>().is_err(), "{bad}");
        }
        let j = serde_json::to_string(&Transport::Vsock { cid: 3, port: 1024 }).unwrap();
        assert_eq!(j, r#"{"kind":"vsock","cid":3,"port":1024}"#);
    }

    #[test]
    fn ok_line_parsing() {
        // vhost-device-vsock answers with the guest port, Firecracker with a host port:
        // only the prefix counts, and the payload after the line stays unread.
        let mut r = &b"OK 1024\npayload"[..];
        assert_eq!(read_ok_line(&mut r).unwrap(), "OK 1024");
        assert_eq!(r, b"payload");
        let mut r = &b"OK 1073741824\n"[..];
        assert!(read_ok_line(&mut r).is_ok());
        assert!(matches!(
            read_ok_line(&mut &b""[..]),
            Err(ConnectError::NotYet(_))
        ));
        assert!(matches!(
            read_ok_line(&mut &b"ERR nope\n"[..]),
            Err(ConnectError::Fatal(_))
        ));
    }
}
