//! The blocking agent client: connect with retry until a deadline, then one request at a
//! time, each bounded by a timeout.

#![warn(missing_docs)]

use std::io::{self, Read};
use std::time::{Duration, Instant};

use vfioctl_common::error::chain;
use vfioctl_common::proto::{
    self, AgentError, CheckOutcome, DevicesReply, ErrorKind, ExecReply, FrameError, HelloReply,
    KernelLogReply, Outcome, PowerAction, Reply, Request, RequestBody, Token, WaitReply, MAX_REPLY,
};
use vfioctl_common::Selector;

use super::transport::{ConnectError, Stream, Transport};
use crate::exit::{Diagnose, Exit};

/// Default bound for one request (beyond what the request itself waits for).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
/// Talking to the guest agent failed; every variant names the agent's address.
pub enum ClientError {
    #[error("agent at {transport} did not answer within {}: {last}", crate::output::human_duration(*.waited))]
    /// The agent did not answer within the readiness wait.
    NotReady {
        /// The agent's address.
        transport: Transport,
        /// How long the client waited.
        waited: Duration,
        /// The last failure seen while waiting.
        last: String,
    },
    #[error("cannot reach the agent at {transport}: {reason}")]
    /// The agent's address cannot be connected to.
    Unreachable {
        /// The agent's address.
        transport: Transport,
        /// Why.
        reason: String,
    },
    #[error("agent at {transport}: {op} timed out after {}", crate::output::human_duration(*.after))]
    /// A request got no reply in time.
    Timeout {
        /// The agent's address.
        transport: Transport,
        /// The request.
        op: &'static str,
        /// How long the client waited.
        after: Duration,
    },
    #[error("agent at {transport}: {op}")]
    /// Reading or writing a frame failed.
    Frame {
        /// The agent's address.
        transport: Transport,
        /// The request.
        op: &'static str,
        #[source]
        /// The frame error.
        source: FrameError,
    },
    #[error("agent at {transport}: {op}: bad reply: {reason}")]
    /// The reply is not the one the request asks for.
    Protocol {
        /// The agent's address.
        transport: Transport,
        /// The request.
        op: &'static str,
        /// What was wrong.
        reason: String,
    },
    #[error("agent at {transport} refused {op}: {}", error.message)]
    /// The agent refused or failed the request.
    Agent {
        /// The agent's address.
        transport: Transport,
        /// The request.
        op: &'static str,
        /// The agent's error.
        error: AgentError,
    },
}

impl Diagnose for ClientError {
    fn hint(&self) -> Option<String> {
        match self {
            ClientError::NotReady { transport, .. } => Some(match transport {
                Transport::Hybrid { .. } => "check the guest's serial log: the agent prints `vfioctl-agent ... ready`; the guest needs the vsock modules (vsock, vmw_vsock_virtio_transport) and QEMU a shared memory backend for vhost-user-vsock".into(),
                Transport::Vsock { .. } => "check the guest's serial log for `vfioctl-agent ... ready`, that vhost_vsock is loaded on the host and that the CID matches -device vhost-vsock-pci,guest-cid=".into(),
                Transport::Unix { .. } => "start the agent with --listen unix:PATH".into(),
            }),
            ClientError::Agent { error, .. } if error.kind == ErrorKind::ExecDisabled => Some(
                "exec needs both the image (exec = true in the rootfs manifest) and the VM (`vfioctl vm up --agent-exec`)".into(),
            ),
            ClientError::Agent { error, .. } if error.kind == ErrorKind::Unauthorized => Some(
                "the agent takes requests only with its VM's secret: use `--vm NAME` (the secret is in the VM's run directory) or `--token-file RUN_DIR/agent.token`; a guest without the secret needs QEMU's -fw_cfg name=opt/vfioctl/token,file=... and the qemu_fw_cfg module".into(),
            ),
            ClientError::Frame { source: FrameError::BadMagic(_) | FrameError::Version { .. }, .. } => Some(
                "the peer is not a vfioctl agent of this version: check the address (port) and rebuild the guest image with this vfioctl".into(),
            ),
            _ => None,
        }
    }
    fn exit(&self) -> Exit {
        match self {
            ClientError::NotReady { .. } => Exit::BootTimeout,
            ClientError::Agent { error, .. } => match error.kind {
                ErrorKind::ExecDisabled | ErrorKind::UnknownCheck | ErrorKind::BadRequest => {
                    Exit::Usage
                }
                _ => Exit::Infrastructure,
            },
            _ => Exit::Infrastructure,
        }
    }
}

/// Reads that never run past a deadline: each read first sets the socket timeout to what
/// is left.
struct DeadlineReader<'a> {
    stream: &'a mut Stream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.stream.set_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// A connection to one agent.
pub struct AgentClient {
    transport: Transport,
    token: Token,
    stream: Stream,
    next_id: u64,
    hello: HelloReply,
    /// Added to what a request waits for itself (wait_device, exec) to bound the call.
    pub call_timeout: Duration,
}

impl AgentClient {
    /// Connect, retrying until the agent answers `hello` or `timeout` passes. The answer
    /// to `hello` is the readiness signal: it comes from the guest. `token` is the VM's
    /// secret, sent with every request. A peer that answers with something that is not
    /// our protocol (wrong magic or version), or refuses the secret, is reported at once
    /// with that cause instead of being retried until the deadline.
    pub fn connect(
        transport: &Transport,
        token: &Token,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut backoff = Duration::from_millis(20);
        let mut last;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let attempt = left
                .min(Duration::from_secs(5))
                .max(Duration::from_millis(1));
            match transport.open(attempt) {
                Ok(stream) => {
                    let mut c = AgentClient {
                        transport: transport.clone(),
                        token: token.clone(),
                        stream,
                        next_id: 1,
                        hello: placeholder_hello(),
                        call_timeout: DEFAULT_CALL_TIMEOUT,
                    };
                    match c.call_for(RequestBody::Hello, attempt) {
                        Ok(Reply::Hello(h)) => {
                            c.hello = h;
                            return Ok(c);
                        }
                        Ok(other) => {
                            return Err(ClientError::Protocol {
                                transport: transport.clone(),
                                op: "hello",
                                reason: format!("answered with {}", other.op()),
                            })
                        }
                        Err(e @ ClientError::Agent { .. }) => return Err(e),
                        Err(
                            e @ ClientError::Frame {
                                source:
                                    FrameError::BadMagic(_)
                                    | FrameError::Version { .. }
                                    | FrameError::TooLarge { .. },
                                ..
                            },
                        ) => return Err(e),
                        Err(e @ ClientError::Protocol { .. }) => return Err(e),
                        Err(e) => last = chain(&e),
                    }
                }
                Err(ConnectError::NotYet(why)) => last = why,
                Err(ConnectError::Fatal(reason)) => {
                    return Err(ClientError::Unreachable {
                        transport: transport.clone(),
                        reason,
                    })
                }
            }
            if Instant::now() + backoff >= deadline {
                return Err(ClientError::NotReady {
                    transport: transport.clone(),
                    waited: start.elapsed(),
                    last,
                });
            }
            // Connection attempts to a guest that is still booting: back off between them.
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// The address this client talks to.
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The agent's `hello` answer from connect time.
    pub fn hello_info(&self) -> &HelloReply {
        &self.hello
    }

    /// Send one request and wait at most `timeout` for its reply.
    pub fn call_for(&mut self, body: RequestBody, timeout: Duration) -> Result<Reply, ClientError> {
        let op = body.op();
        let id = self.next_id;
        self.next_id += 1;
        let tr = &self.transport;
        let deadline = Instant::now() + timeout;
        let payload = proto::to_payload(&Request {
            id,
            token: Some(self.token.clone()),
            req: body,
        });
        let frame_err = |source: FrameError| match &source {
            FrameError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
                ) =>
            {
                ClientError::Timeout {
                    transport: tr.clone(),
                    op,
                    after: timeout,
                }
            }
            _ => ClientError::Frame {
                transport: tr.clone(),
                op,
                source,
            },
        };
        self.stream
            .set_timeout(Some(timeout))
            .map_err(|e| frame_err(FrameError::Io(e)))?;
        proto::write_frame(&mut self.stream, &payload).map_err(frame_err)?;
        let mut r = DeadlineReader {
            stream: &mut self.stream,
            deadline,
        };
        let reply = proto::read_frame(&mut r, MAX_REPLY).map_err(frame_err)?;
        let resp = proto::decode_response(&reply).map_err(|e| ClientError::Protocol {
            transport: tr.clone(),
            op,
            reason: e.to_string(),
        })?;
        if resp.id.is_some() && resp.id != Some(id) {
            return Err(ClientError::Protocol {
                transport: tr.clone(),
                op,
                reason: format!("reply for request {:?}, expected {id}", resp.id),
            });
        }
        match resp.result {
            Outcome::Ok(r) => Ok(r),
            Outcome::Err(error) => Err(ClientError::Agent {
                transport: tr.clone(),
                op,
                error,
            }),
        }
    }

    fn call(&mut self, body: RequestBody) -> Result<Reply, ClientError> {
        let t = self.call_timeout;
        self.call_for(body, t)
    }

    fn unexpected(&self, op: &'static str, r: Reply) -> ClientError {
        ClientError::Protocol {
            transport: self.transport.clone(),
            op,
            reason: format!("answered with {}", r.op()),
        }
    }

    /// The agent's `hello`: versions, kernel, command line, uptime, modules.
    pub fn hello(&mut self) -> Result<HelloReply, ClientError> {
        match self.call(RequestBody::Hello)? {
            Reply::Hello(h) => Ok(h),
            r => Err(self.unexpected("hello", r)),
        }
    }

    /// Every PCI device the guest sees.
    pub fn list_devices(&mut self) -> Result<DevicesReply, ClientError> {
        match self.call(RequestBody::ListDevices)? {
            Reply::Devices(d) => Ok(d),
            r => Err(self.unexpected("list_devices", r)),
        }
    }

    /// Wait in the guest until a device matching `selector` is present (with every BAR
    /// assigned when `all_bars`), at most `timeout`. Not being ready in time is not an
    /// error here: the reply says what the guest saw.
    pub fn wait_device(
        &mut self,
        selector: &Selector,
        timeout: Duration,
        all_bars: bool,
    ) -> Result<WaitReply, ClientError> {
        let body = RequestBody::WaitDevice {
            selector: selector.clone(),
            timeout_ms: timeout.as_millis() as u64,
            all_bars,
        };
        match self.call_for(body, timeout + self.call_timeout)? {
            Reply::WaitDevice(w) => Ok(w),
            r => Err(self.unexpected("wait_device", r)),
        }
    }

    /// Kernel log records after `since` (a `mark` from an earlier reply), or since boot.
    pub fn kernel_log(
        &mut self,
        since: Option<u64>,
        max_lines: Option<u32>,
    ) -> Result<KernelLogReply, ClientError> {
        match self.call(RequestBody::KernelLog { since, max_lines })? {
            Reply::KernelLog(k) => Ok(k),
            r => Err(self.unexpected("kernel_log", r)),
        }
    }

    /// Run the named in-guest check (`vfioctl_common::proto::CHECKS`) with `args`.
    pub fn run_check(&mut self, name: &str, args: &[String]) -> Result<CheckOutcome, ClientError> {
        let body = RequestBody::RunCheck {
            name: name.into(),
            args: args.to_vec(),
        };
        // nvidia-smi may take a while on a cold GPU.
        match self.call_for(body, self.call_timeout + Duration::from_secs(60))? {
            Reply::Check(c) => Ok(c),
            r => Err(self.unexpected("run_check", r)),
        }
    }

    /// Run a command in the guest (the agent must have exec enabled).
    pub fn exec(
        &mut self,
        argv: &[&str],
        timeout: Duration,
        max_output: u32,
    ) -> Result<ExecReply, ClientError> {
        let body = RequestBody::Exec {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            timeout_ms: timeout.as_millis() as u64,
            max_output,
            env: Vec::new(),
        };
        match self.call_for(body, timeout + self.call_timeout)? {
            Reply::Exec(e) => Ok(e),
            r => Err(self.unexpected("exec", r)),
        }
    }

    /// Ask the guest to power off (or reboot). The agent answers, then waits (up to 3 s)
    /// for this connection to close before it acts; the client is consumed so that close
    /// happens at once.
    pub fn shutdown(mut self, action: PowerAction) -> Result<(), ClientError> {
        match self.call(RequestBody::Shutdown { action })? {
            Reply::Shutdown { .. } => Ok(()),
            r => Err(self.unexpected("shutdown", r)),
        }
    }

    /// The raw stream, for tests that speak bytes (garbage, partial frames).
    pub fn stream_mut(&mut self) -> &mut Stream {
        &mut self.stream
    }
}

fn placeholder_hello() -> HelloReply {
    HelloReply {
        agent_version: String::new(),
        protocol_version: 0,
        kernel: String::new(),
        kernel_version: String::new(),
        cmdline: String::new(),
        uptime_s: 0.0,
        pid1: false,
        exec_enabled: false,
        modules: Vec::new(),
        rss_kib: None,
    }
}
