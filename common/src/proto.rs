//! The host <-> guest agent protocol: one definition, used by the agent (`guest/`) and by
//! the host client (`vfioctl::agent`).
//!
//! # Framing
//!
//! Every message is one frame: an 8-byte header followed by a JSON payload.
//!
//! | bytes | what |
//! |---|---|
//! | 0..3 | magic `VFA` |
//! | 3 | protocol version ([`PROTOCOL_VERSION`]) |
//! | 4..8 | payload length, big-endian `u32` |
//!
//! Requests may carry at most [`MAX_REQUEST`] payload bytes, replies [`MAX_REPLY`]. The
//! agent answers a frame it cannot use with an [`AgentError`] reply: a frame whose header
//! is bad (wrong magic, version, or too large) makes it close that connection after the
//! reply, since the stream can no longer be trusted; a well-framed payload that is not a
//! valid request gets the error and the connection keeps serving. The agent as a whole
//! keeps serving other connections either way.
//!
//! # The per-VM secret
//!
//! Every request carries the VM's [`Token`]: 32 random bytes as 64 hex digits, created by
//! the host (`vfioctl vm up`, mode 0600 in the VM's run directory) and handed to the guest
//! out of band, as QEMU `-fw_cfg name=opt/vfioctl/token,file=...` ([`TOKEN_FW_CFG`]),
//! which the guest reads at [`TOKEN_SYSFS`] (kernel module `qemu_fw_cfg`). The agent
//! compares it in constant time and answers a request without the right token with
//! [`ErrorKind::Unauthorized`], then closes the connection. Any local user can reach a
//! guest's vsock port; only root (and QEMU) can read the token.
//!
//! # Messages
//!
//! A [`Request`] is `{"id": N, "token": "...", "req": {"op": "hello", ...}}`; the [`Response`] carries the
//! same id (or none when the request could not be parsed) and either `{"ok": {"op": ...}}`
//! or `{"err": {"kind": ..., "message": ...}}`. New optional fields may be added within a
//! protocol version (unknown fields are ignored on both sides); anything else bumps it.

use std::fmt;
use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::bdf::{Bdf, Selector};
use crate::pci::PciDevice;

/// The protocol version both sides speak; in every frame header and in [`HelloReply`].
/// Version 2: every request carries the VM's [`Token`].
pub const PROTOCOL_VERSION: u8 = 2;
/// The fw_cfg item name of the per-VM secret (`-fw_cfg name=opt/vfioctl/token,file=...`).
pub const TOKEN_FW_CFG: &str = "opt/vfioctl/token";
/// Where the guest kernel's `qemu_fw_cfg` module shows that item.
pub const TOKEN_SYSFS: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/vfioctl/token/raw";
/// The fw_cfg item with which a VM asks for `exec` (`string=1`); the image must allow it
/// too (`exec = true` in its manifest).
pub const EXEC_FW_CFG: &str = "opt/vfioctl/exec";
/// Where the guest sees [`EXEC_FW_CFG`].
pub const EXEC_SYSFS: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/vfioctl/exec/raw";
/// The vsock port the agent listens on unless told otherwise (Kata's agent uses 1024 too).
pub const DEFAULT_PORT: u32 = 1024;
/// Frame magic.
pub const MAGIC: [u8; 3] = *b"VFA";
/// Header length in bytes.
pub const HEADER_LEN: usize = 8;
/// Largest request payload the agent accepts.
pub const MAX_REQUEST: u32 = 64 * 1024;
/// Largest reply payload (a full kernel log or a long device list fits).
pub const MAX_REPLY: u32 = 8 * 1024 * 1024;
/// Largest `max_output` an exec request may ask for, per stream.
pub const MAX_EXEC_OUTPUT: u32 = 1024 * 1024;

/// A frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    /// The peer closed the connection.
    Eof,
    #[error("bad frame magic {0:02x?} (not a vfioctl agent peer?)")]
    /// The first bytes are not the frame magic.
    BadMagic([u8; 3]),
    /// The peer speaks another protocol version.
    #[error("protocol version {got} not supported (this side speaks {PROTOCOL_VERSION})")]
    Version {
        /// The peer's version.
        got: u8,
    },
    /// The frame is larger than this side accepts.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The frame's length.
        len: u32,
        /// The limit.
        max: u32,
    },
    #[error("frame I/O")]
    /// Reading or writing the frame failed.
    Io(#[from] io::Error),
}

impl FrameError {
    /// The error reply the agent sends for this frame error, if it can send one.
    pub fn to_agent_error(&self) -> Option<AgentError> {
        let kind = match self {
            FrameError::Eof | FrameError::Io(_) => return None,
            FrameError::BadMagic(_) => ErrorKind::BadFrame,
            FrameError::Version { .. } => ErrorKind::UnsupportedVersion,
            FrameError::TooLarge { .. } => ErrorKind::TooLarge,
        };
        Some(AgentError::new(kind, self.to_string()))
    }
}

/// Encode a frame header for a payload of `len` bytes.
pub fn encode_header(len: u32) -> [u8; HEADER_LEN] {
    let l = len.to_be_bytes();
    [
        MAGIC[0],
        MAGIC[1],
        MAGIC[2],
        PROTOCOL_VERSION,
        l[0],
        l[1],
        l[2],
        l[3],
    ]
}

/// Check a frame header and return the payload length. Pure: the fuzz test drives it.
pub fn decode_header(h: &[u8; HEADER_LEN], max: u32) -> Result<u32, FrameError> {
    let magic = [h[0], h[1], h[2]];
    if magic != MAGIC {
        return Err(FrameError::BadMagic(magic));
    }
    if h[3] != PROTOCOL_VERSION {
        return Err(FrameError::Version { got: h[3] });
    }
    let len = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Encode one frame (header + payload).
pub fn encode_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_LEN + payload.len());
    v.extend_from_slice(&encode_header(payload.len() as u32));
    v.extend_from_slice(payload);
    v
}

/// Write one frame and flush.
pub fn write_frame<W: Write + ?Sized>(w: &mut W, payload: &[u8]) -> Result<(), FrameError> {
    w.write_all(&encode_frame(payload))?;
    w.flush()?;
    Ok(())
}

/// Read one frame's payload, refusing payloads above `max`. A clean end of stream before
/// the first header byte is [`FrameError::Eof`].
pub fn read_frame<R: Read + ?Sized>(r: &mut R, max: u32) -> Result<Vec<u8>, FrameError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) if got == 0 => return Err(FrameError::Eof),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(FrameError::Io(e)),
        }
    }
    let len = decode_header(&h, max)?;
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf)?;
    Ok(buf)
}

/// Decode a request payload. Pure: the fuzz test drives it with arbitrary bytes.
pub fn decode_request(payload: &[u8]) -> Result<Request, AgentError> {
    serde_json::from_slice(payload).map_err(|e| {
        // Try to keep the id so the client can match the error to its call.
        AgentError::new(ErrorKind::BadRequest, format!("malformed request: {e}"))
    })
}

/// The id of a request payload that failed to decode as a whole, when it has one.
pub fn salvage_id(payload: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice::<IdOnly>(payload).ok().map(|i| i.id)
}

/// Decode a response payload (host side).
pub fn decode_response(payload: &[u8]) -> Result<Response, serde_json::Error> {
    serde_json::from_slice(payload)
}

/// Serialize a message to a payload. Our own types always serialize.
pub fn to_payload<T: Serialize>(msg: &T) -> Vec<u8> {
    serde_json::to_vec(msg).unwrap_or_else(|e| {
        format!(
            r#"{{"id":null,"result":{{"err":{{"kind":"internal","message":"serialize: {e}"}}}}}}"#
        )
        .into_bytes()
    })
}

/// The per-VM agent secret: 64 lowercase hex digits (32 random bytes). `Debug` does not
/// show it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Token(String);

/// Text that is not a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an agent token: {0}")]
pub struct TokenError(&'static str);

impl Token {
    /// Hex digits in a token.
    pub const LEN: usize = 64;

    /// Hex-encode 32 random bytes.
    pub fn from_bytes(b: &[u8; 32]) -> Token {
        let mut s = String::with_capacity(Self::LEN);
        for x in b {
            s.push_str(&format!("{x:02x}"));
        }
        Token(s)
    }

    /// Parse a token file's content (surrounding whitespace ignored).
    pub fn parse(s: &str) -> Result<Token, TokenError> {
        let t = s.trim();
        if t.len() != Self::LEN {
            return Err(TokenError("expected 64 hex digits"));
        }
        if !t
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(TokenError("expected lowercase hex digits"));
        }
        Ok(Token(t.into()))
    }

    /// The secret as hex.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compare in constant time (no early exit on the first differing byte).
    pub fn matches(&self, other: &Token) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl TryFrom<String> for Token {
    type Error = TokenError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Token::parse(&s)
    }
}

impl From<Token> for String {
    fn from(t: Token) -> String {
        t.0
    }
}

/// One request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Chosen by the client; the response carries it back.
    pub id: u64,
    /// The VM's secret; required by the agent on every request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Token>,
    /// What is asked.
    pub req: RequestBody,
}

/// What the host asks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RequestBody {
    /// Versions, kernel, command line, uptime.
    Hello,
    /// Every PCI device the guest sees, read with the host's parser.
    ListDevices,
    /// Wait (event-driven) until a device matching `selector` exists and, when
    /// `all_bars` is set, every BAR it has is assigned.
    WaitDevice {
        /// The device to wait for.
        selector: Selector,
        /// How long to wait, milliseconds.
        timeout_ms: u64,
        #[serde(default = "yes")]
        /// Also wait until every BAR of the device is assigned.
        all_bars: bool,
    },
    /// Kernel log records after sequence number `since` (all since boot when absent),
    /// plus the classified lines that matter.
    KernelLog {
        #[serde(default)]
        /// Only records after this sequence number.
        since: Option<u64>,
        /// Keep at most this many of the newest records (findings cover all of them).
        #[serde(default)]
        max_lines: Option<u32>,
    },
    /// A named in-guest check ([`CHECKS`]).
    RunCheck {
        /// The check's name.
        name: String,
        #[serde(default)]
        /// The check's arguments.
        args: Vec<String>,
    },
    /// Run a command; only when the agent was started with exec enabled.
    Exec {
        /// The command and its arguments (no shell).
        argv: Vec<String>,
        /// How long the command may run, milliseconds.
        timeout_ms: u64,
        /// Bytes kept per stream (at most [`MAX_EXEC_OUTPUT`]).
        max_output: u32,
        #[serde(default)]
        /// Extra environment variables.
        env: Vec<(String, String)>,
    },
    /// Power off or reboot the guest (PID 1), or stop the agent (service).
    Shutdown {
        /// Power off or reboot.
        action: PowerAction,
    },
}

fn yes() -> bool {
    true
}

impl RequestBody {
    /// The op name as it appears on the wire.
    pub fn op(&self) -> &'static str {
        match self {
            RequestBody::Hello => "hello",
            RequestBody::ListDevices => "list_devices",
            RequestBody::WaitDevice { .. } => "wait_device",
            RequestBody::KernelLog { .. } => "kernel_log",
            RequestBody::RunCheck { .. } => "run_check",
            RequestBody::Exec { .. } => "exec",
            RequestBody::Shutdown { .. } => "shutdown",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// What `shutdown` does.
pub enum PowerAction {
    /// Power the guest off.
    Poweroff,
    /// Reboot the guest.
    Reboot,
}

/// One reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request's id; `None` when the request could not be read far enough to know it.
    pub id: Option<u64>,
    /// The reply or the error.
    pub result: Outcome,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
/// A request's result.
pub enum Outcome {
    /// The request was served.
    Ok(Reply),
    /// The request failed.
    Err(AgentError),
}

/// What the agent answers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Reply {
    /// Reply to `hello`.
    Hello(HelloReply),
    /// Reply to `list_devices`.
    Devices(DevicesReply),
    /// Reply to `wait_device`.
    WaitDevice(WaitReply),
    /// Reply to `kernel_log`.
    KernelLog(KernelLogReply),
    /// Reply to `run_check`.
    Check(CheckOutcome),
    /// Reply to `exec`.
    Exec(ExecReply),
    /// Reply to `shutdown`, sent before the guest goes down.
    Shutdown {
        /// What the guest does now.
        action: PowerAction,
    },
}

impl Reply {
    /// The request kind this reply answers (`hello`, `devices`, ...).
    pub fn op(&self) -> &'static str {
        match self {
            Reply::Hello(_) => "hello",
            Reply::Devices(_) => "devices",
            Reply::WaitDevice(_) => "wait_device",
            Reply::KernelLog(_) => "kernel_log",
            Reply::Check(_) => "check",
            Reply::Exec(_) => "exec",
            Reply::Shutdown { .. } => "shutdown",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
// Like `Verdict` below: part of the committed JSON schemas, where doc comments would
// become descriptions; the fields without one say what they are by name.
#[allow(missing_docs)]
pub struct HelloReply {
    pub agent_version: String,
    pub protocol_version: u8,
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/version`.
    pub kernel_version: String,
    pub cmdline: String,
    pub uptime_s: f64,
    /// The agent is the guest's init.
    pub pid1: bool,
    pub exec_enabled: bool,
    /// Modules the agent loaded at start, with their result.
    #[serde(default)]
    pub modules: Vec<ModuleLoad>,
    /// The agent's resident set size (`VmRSS`), KiB.
    #[serde(default)]
    pub rss_kib: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[allow(missing_docs)]
pub struct ModuleLoad {
    pub path: String,
    /// `loaded`, `already loaded`, or the error.
    pub result: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// Every PCI device the guest sees.
pub struct DevicesReply {
    /// The devices, read with the host's parser.
    pub devices: Vec<PciDevice>,
    /// Devices that could not be read (address and error), so one bad device does not
    /// hide the rest.
    #[serde(default)]
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// The outcome of `wait_device`.
pub struct WaitReply {
    /// The device exists and (if asked) every BAR is assigned.
    pub ready: bool,
    /// The matching device as last seen (also when not ready: it shows what is missing).
    pub device: Option<Box<PciDevice>>,
    /// How long the agent waited, milliseconds.
    pub waited_ms: u64,
    /// Kernel uevents seen while waiting.
    pub uevents: u32,
}

/// One `/dev/kmsg` record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmsgRecord {
    /// The record's sequence number.
    pub seq: u64,
    /// Syslog level 0 (emerg) to 7 (debug).
    pub level: u8,
    /// Microseconds since boot.
    pub ts_us: u64,
    /// The message.
    pub text: String,
}

impl KmsgRecord {
    /// Parse one `/dev/kmsg` record: `prio,seq,ts_us,flags[,...];text\n[ KEY=value\n...]`.
    pub fn parse(rec: &str) -> Option<KmsgRecord> {
        let (head, rest) = rec.split_once(';')?;
        let mut f = head.split(',');
        let prio: u32 = f.next()?.parse().ok()?;
        let seq = f.next()?.parse().ok()?;
        let ts_us = f.next()?.parse().ok()?;
        let text = rest.lines().next().unwrap_or("").to_string();
        Some(KmsgRecord {
            seq,
            level: (prio & 7) as u8,
            ts_us,
            text: unescape_kmsg(&text),
        })
    }

    /// `[    1.234567] text`, as dmesg prints it.
    pub fn display(&self) -> String {
        format!(
            "[{:5}.{:06}] {}",
            self.ts_us / 1_000_000,
            self.ts_us % 1_000_000,
            self.text
        )
    }
}

/// `/dev/kmsg` escapes non-printable bytes as `\xNN`.
fn unescape_kmsg(s: &str) -> String {
    if !s.contains("\\x") {
        return s.to_string();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.get(i + 1) == Some(&b'x') {
            if let Some(v) = s
                .get(i + 2..i + 4)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a kernel log line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// `BAR N ... assigned` (good news; evidence for validation).
    BarAssigned,
    /// `can't assign`, `no space`, `failed to assign`.
    BarAssignFailed,
    /// pciehp / ACPI (acpiphp) hotplug.
    Hotplug,
    /// `NVRM:` from the NVIDIA driver.
    Nvrm,
    /// Firmware load failures.
    Firmware,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// How much a kernel log finding matters.
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Likely a problem.
    Warning,
    /// A failure.
    Error,
}

/// A kernel log line that matters, classified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// What the line says.
    pub kind: FindingKind,
    /// How much it matters.
    pub severity: Severity,
    /// The record's sequence number.
    pub seq: u64,
    /// The device the line names (`pci 0000:01:00.0: ...`), if any.
    pub bdf: Option<Bdf>,
    /// The BAR the line names (`BAR 2`), if any. Bridge windows are 13-16 as in `resource`.
    pub bar: Option<u8>,
    /// The line.
    pub text: String,
}

/// The `DDDD:BB:DD.F` the line is about: the first token that parses as an address.
fn line_bdf(text: &str) -> Option<Bdf> {
    text.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']' || c == '(')
        .map(|t| t.trim_end_matches(':'))
        .find_map(|t| {
            if t.len() >= 12 && t.as_bytes().get(4) == Some(&b':') {
                t.parse::<Bdf>().ok()
            } else {
                None
            }
        })
}

fn line_bar(text: &str) -> Option<u8> {
    let i = text.find("BAR ")?;
    let digits: String = text[i + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// Classify one kernel log line; `None` when it does not matter to vfioctl.
pub fn classify(text: &str) -> Option<(FindingKind, Severity)> {
    let lower = text.to_ascii_lowercase();
    let io_space = text.contains("[io ") || text.contains("[io\t") || text.contains("[io  ");
    if lower.contains("can't assign")
        || lower.contains("no space")
        || lower.contains("failed to assign")
    {
        // I/O port windows run out on machines with many root ports and do not matter
        // for GPUs; memory BARs and windows do.
        let sev = if io_space {
            Severity::Warning
        } else {
            Severity::Error
        };
        return Some((FindingKind::BarAssignFailed, sev));
    }
    if text.contains("NVRM:") {
        let info = lower.contains("loading nvidia unix") || lower.contains("kernel module for");
        return Some((
            FindingKind::Nvrm,
            if info {
                Severity::Info
            } else {
                Severity::Error
            },
        ));
    }
    if (lower.contains("firmware") || lower.contains("direct firmware load"))
        && (lower.contains("failed") || lower.contains("error -2") || lower.contains("not found"))
    {
        return Some((FindingKind::Firmware, Severity::Error));
    }
    if lower.contains("pciehp")
        || lower.contains("acpiphp")
        || lower.contains("shpchp")
        || (lower.contains("hotplug") && lower.contains("pci"))
    {
        if lower.contains("no space") {
            return Some((FindingKind::Hotplug, Severity::Error));
        }
        let bad = lower.contains("failed")
            || lower.contains("cannot")
            || lower.contains("timeout")
            || lower.contains("timed out")
            || lower.contains("error");
        return Some((
            FindingKind::Hotplug,
            if bad {
                Severity::Warning
            } else {
                Severity::Info
            },
        ));
    }
    if text.contains("BAR ") && text.contains(": assigned") {
        return Some((FindingKind::BarAssigned, Severity::Info));
    }
    None
}

/// Classify every record; the findings in log order.
pub fn findings(records: &[KmsgRecord]) -> Vec<Finding> {
    records
        .iter()
        .filter_map(|r| {
            let (kind, severity) = classify(&r.text)?;
            Some(Finding {
                kind,
                severity,
                seq: r.seq,
                bdf: line_bdf(&r.text),
                bar: line_bar(&r.text),
                text: r.text.clone(),
            })
        })
        .collect()
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// Kernel log records and what they say.
pub struct KernelLogReply {
    /// The records, oldest first.
    pub records: Vec<KmsgRecord>,
    /// The lines that matter, classified.
    pub findings: Vec<Finding>,
    /// The last sequence number seen: pass it as `since` to get only newer records.
    pub mark: u64,
    /// Older records were left out (`max_lines`).
    pub truncated: bool,
}

/// A check's verdict. `Skip` only when the check does not apply, with the reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
// The variants and the fields of `CheckOutcome` below say what they are by name; doc
// comments would turn into descriptions in the committed JSON schemas (schemas/).
#[allow(missing_docs)]
pub enum Verdict {
    Pass,
    Fail,
    Skip,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Skip => "skip",
        })
    }
}

/// The result of one named in-guest check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[allow(missing_docs)]
pub struct CheckOutcome {
    pub name: String,
    pub verdict: Verdict,
    /// Why: what was found or missing.
    pub detail: String,
    /// Lines that back the verdict (file contents, command output).
    #[serde(default)]
    pub evidence: Vec<String>,
}

/// The named checks the agent runs (`run_check`), with what they look at.
pub const CHECKS: &[(&str, &str)] = &[
    (
        "nvidia-dev-nodes",
        "/dev/nvidia0, /dev/nvidiactl and /dev/nvidia-uvm exist as character devices",
    ),
    (
        "nvidia-proc-version",
        "/proc/driver/nvidia/version is readable (the nvidia module is loaded)",
    ),
    (
        "nvidia-smi",
        "`nvidia-smi -L` lists at least one GPU (args: expected count)",
    ),
    (
        "nvidia-cdi-or-hook",
        "a CDI spec (/var/run/cdi/*.yaml, /etc/cdi/*.yaml) or the toolkit OCI hook is in place",
    ),
    (
        "driver-bound",
        "args: BDF DRIVER; the device is bound to the driver",
    ),
    ("module-loaded", "args: MODULE; /sys/module/MODULE exists"),
];

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
/// How a command run by `exec` ended, with its output.
pub struct ExecReply {
    /// The exit status, `None` when a signal ended it.
    pub exit_code: Option<i32>,
    /// The signal that ended it.
    pub signal: Option<i32>,
    /// It ran past its timeout and was killed.
    pub timed_out: bool,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
    /// Standard output was cut at `max_output`.
    pub stdout_truncated: bool,
    /// Standard error was cut at `max_output`.
    pub stderr_truncated: bool,
    /// How long it ran, milliseconds.
    pub duration_ms: u64,
}

impl ExecReply {
    /// Exit status 0 within the timeout.
    pub fn success(&self) -> bool {
        self.exit_code == Some(0) && !self.timed_out
    }
}

/// Why the agent refused or failed a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The frame header was not a vfioctl frame.
    BadFrame,
    /// The frame is larger than the agent accepts.
    TooLarge,
    /// The peer speaks another protocol version.
    UnsupportedVersion,
    /// Well framed, but not a valid request.
    BadRequest,
    /// The request did not carry the VM's secret (or the agent has none to compare with).
    Unauthorized,
    /// `exec` is off in this agent.
    ExecDisabled,
    /// No check of that name ([`CHECKS`]).
    UnknownCheck,
    /// What the request names does not exist.
    NotFound,
    /// An I/O error in the guest.
    Io,
    /// A bug in the agent.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
/// Why the agent refused or failed a request.
pub struct AgentError {
    /// The kind of failure.
    pub kind: ErrorKind,
    /// What happened, for people.
    pub message: String,
}

impl AgentError {
    /// An error of `kind`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(req: RequestBody) {
        let r = Request {
            id: 7,
            token: Some(Token::from_bytes(&[7; 32])),
            req,
        };
        let p = to_payload(&r);
        let framed = encode_frame(&p);
        let got = read_frame(&mut &framed[..], MAX_REQUEST).unwrap();
        assert_eq!(decode_request(&got).unwrap(), r);
    }

    #[test]
    fn requests_roundtrip() {
        roundtrip(RequestBody::Hello);
        roundtrip(RequestBody::ListDevices);
        roundtrip(RequestBody::WaitDevice {
            selector: "1af4:1110".parse().unwrap(),
            timeout_ms: 5000,
            all_bars: true,
        });
        roundtrip(RequestBody::WaitDevice {
            selector: "0000:01:00.0".parse().unwrap(),
            timeout_ms: 1,
            all_bars: false,
        });
        roundtrip(RequestBody::KernelLog {
            since: Some(12),
            max_lines: None,
        });
        roundtrip(RequestBody::RunCheck {
            name: "nvidia-smi".into(),
            args: vec!["1".into()],
        });
        roundtrip(RequestBody::Exec {
            argv: vec!["/bin/true".into()],
            timeout_ms: 1000,
            max_output: 100,
            env: vec![("A".into(), "b".into())],
        });
        roundtrip(RequestBody::Shutdown {
            action: PowerAction::Poweroff,
        });
    }

    #[test]
    fn wire_shape_is_stable() {
        let r = Request {
            id: 1,
            token: None,
            req: RequestBody::Hello,
        };
        assert_eq!(
            String::from_utf8(to_payload(&r)).unwrap(),
            r#"{"id":1,"req":{"op":"hello"}}"#
        );
        let r = Request {
            id: 1,
            token: Some(Token::from_bytes(&[0xab; 32])),
            req: RequestBody::Hello,
        };
        assert_eq!(
            String::from_utf8(to_payload(&r)).unwrap(),
            format!(
                r#"{{"id":1,"token":"{}","req":{{"op":"hello"}}}}"#,
                "ab".repeat(32)
            )
        );
        let resp = Response {
            id: None,
            result: Outcome::Err(AgentError::new(ErrorKind::BadRequest, "x")),
        };
        assert_eq!(
            String::from_utf8(to_payload(&resp)).unwrap(),
            r#"{"id":null,"result":{"err":{"kind":"bad_request","message":"x"}}}"#
        );
        assert_eq!(encode_header(5), [b'V', b'F', b'A', 2, 0, 0, 0, 5]);
        // wait_device's all_bars defaults to true.
        let r: Request = serde_json::from_str(
            r#"{"id":3,"req":{"op":"wait_device","selector":{"kind":"id","vendor":6900,"device":4368},"timeout_ms":10}}"#,
        )
        .unwrap();
        assert!(matches!(
            r.req,
            RequestBody::WaitDevice { all_bars: true, .. }
        ));
    }

    #[test]
    fn header_errors() {
        let mut h = encode_header(10);
        assert_eq!(decode_header(&h, 10).unwrap(), 10);
        assert!(matches!(
            decode_header(&h, 9),
            Err(FrameError::TooLarge { len: 10, max: 9 })
        ));
        h[3] = 9;
        assert!(matches!(
            decode_header(&h, 10),
            Err(FrameError::Version { got: 9 })
        ));
        h[0] = b'G';
        assert!(matches!(
            decode_header(&h, 10),
            Err(FrameError::BadMagic(_))
        ));
        assert!(matches!(
            read_frame(&mut &b""[..], 10),
            Err(FrameError::Eof)
        ));
        assert!(matches!(
            read_frame(&mut &b"VF"[..], 10),
            Err(FrameError::Io(_))
        ));
        let short = encode_header(4);
        assert!(matches!(
            read_frame(&mut &short[..], 10),
            Err(FrameError::Io(_))
        ));
    }

    #[test]
    fn bad_payloads_are_errors_with_salvaged_ids() {
        let e = decode_request(br#"{"id":5,"req":{"op":"format_disk"}}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert_eq!(
            salvage_id(br#"{"id":5,"req":{"op":"format_disk"}}"#),
            Some(5)
        );
        assert_eq!(salvage_id(b"\xff\xfe"), None);
    }

    #[test]
    fn tokens_parse_strictly_compare_fully_and_never_print() {
        let t = Token::from_bytes(&[0x5a; 32]);
        assert_eq!(Token::parse(&format!("{}\n", t.as_str())).unwrap(), t);
        assert!(t.matches(&Token::parse(t.as_str()).unwrap()));
        let mut other = t.as_str().to_string();
        other.replace_range(63..64, "b");
        assert!(!t.matches(&Token::parse(&other).unwrap()));
        for bad in ["", "abc", &"G".repeat(64), &"A".repeat(64), &"a".repeat(65)] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
        assert!(!format!("{t:?}").contains("5a5a"));
        // A request with a malformed token is a bad request, not a panic.
        let e = decode_request(br#"{"id":1,"token":"x","req":{"op":"hello"}}"#).unwrap_err();
        assert_eq!(e.kind, ErrorKind::BadRequest);
    }

    #[test]
    fn kmsg_parse_and_classify() {
        let r = KmsgRecord::parse(
            "3,812,4242424,-;pci 0000:01:00.0: BAR 2: no space for [mem size 0x200000000 64bit pref]\n SUBSYSTEM=pci\n DEVICE=+pci:0000:01:00.0\n",
        )
        .unwrap();
        assert_eq!((r.seq, r.level, r.ts_us), (812, 3, 4242424));
        assert_eq!(r.display(), "[    4.242424] pci 0000:01:00.0: BAR 2: no space for [mem size 0x200000000 64bit pref]");
        let recs = vec![
            r,
            KmsgRecord::parse("6,813,1,-;pci 0000:01:00.0: BAR 2: failed to assign [mem size 0x200000000 64bit pref]").unwrap(),
            KmsgRecord::parse("6,814,1,-;pci 0000:00:02.0: bridge window [io  size 0x1000]: can't assign; no space").unwrap(),
            KmsgRecord::parse("6,815,1,-;pci 0000:01:00.0: BAR 2 [mem 0x200000000-0x3ffffffff 64bit pref]: assigned").unwrap(),
            KmsgRecord::parse("6,816,1,-;pcieport 0000:00:02.0: pciehp: Slot #0 AttnBtn+ PwrCtrl+ MRL- AttnInd+ PwrInd+ HotPlug+ Surprise+ Interlock+ NoCompl- IbPresDis- LLActRep+").unwrap(),
            KmsgRecord::parse("3,817,1,-;NVRM: GPU 0000:01:00.0: RmInitAdapter failed! (0x22:0x56:742)").unwrap(),
            KmsgRecord::parse("4,818,1,-;nvidia 0000:01:00.0: Direct firmware load for nvidia/535.129.03/gsp_ga10x.bin failed with error -2").unwrap(),
            KmsgRecord::parse("6,819,1,-;Run /init as init process").unwrap(),
            KmsgRecord::parse("6,819,1,-;smpboot: Allowing 1 CPUs, 0 hotplug CPUs").unwrap(),
            KmsgRecord::parse("6,820,1,-;NVRM: loading NVIDIA UNIX x86_64 Kernel Module  535.129.03").unwrap(),
        ];
        let f = findings(&recs);
        let kinds: Vec<_> = f.iter().map(|f| (f.kind, f.severity, f.seq)).collect();
        use FindingKind::*;
        use Severity::*;
        assert_eq!(
            kinds,
            vec![
                (BarAssignFailed, Error, 812),
                (BarAssignFailed, Error, 813),
                (BarAssignFailed, Warning, 814),
                (BarAssigned, Info, 815),
                (Hotplug, Info, 816),
                (Nvrm, Error, 817),
                (Firmware, Error, 818),
                (Nvrm, Info, 820),
            ]
        );
        assert_eq!(f[0].bdf, Some("0000:01:00.0".parse().unwrap()));
        assert_eq!(f[0].bar, Some(2));
        assert_eq!(f[2].bdf, Some("0000:00:02.0".parse().unwrap()));
        assert_eq!(f[2].bar, None);
        assert_eq!(f[5].bdf, Some("0000:01:00.0".parse().unwrap()));
    }

    #[test]
    fn kmsg_unescapes_and_rejects_garbage() {
        let r = KmsgRecord::parse("6,1,2,-;a\\x09b").unwrap();
        assert_eq!(r.text, "a\tb");
        assert!(KmsgRecord::parse("garbage").is_none());
        assert!(KmsgRecord::parse("x,1,2;t").is_none());
    }

    proptest! {
        // The decoder fuzz target (stable toolchain): arbitrary bytes never panic the
        // framing or the request decoder, and an oversized length is always refused
        // before anything is allocated for it.
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut r = &bytes[..];
            while let Ok(p) = read_frame(&mut r, MAX_REQUEST) {
                let _ = decode_request(&p);
                let _ = salvage_id(&p);
            }
            let _ = decode_request(&bytes);
        }

        #[test]
        fn framed_garbage_never_panics(
            len in 0u32..600,
            body in proptest::collection::vec(any::<u8>(), 0..600),
        ) {
            let mut bytes = encode_header(len).to_vec();
            bytes.extend_from_slice(&body);
            let mut r = &bytes[..];
            while let Ok(p) = read_frame(&mut r, MAX_REQUEST) {
                let _ = decode_request(&p);
            }
        }

        #[test]
        fn oversized_lengths_refused(len in (MAX_REQUEST + 1)..=u32::MAX) {
            let h = encode_header(len);
            let refused = matches!(decode_header(&h, MAX_REQUEST), Err(FrameError::TooLarge { .. }));
            prop_assert!(refused);
        }

        #[test]
        fn json_shaped_garbage_is_an_error_not_a_panic(
            op in "[a-z_]{0,16}",
            extra in "[ -~]{0,64}",
            id in any::<u64>(),
        ) {
            let s = format!(r#"{{"id":{id},"req":{{"op":"{op}",{extra}}}}}"#);
            let _ = decode_request(s.as_bytes());
            let framed = encode_frame(s.as_bytes());
            let p = read_frame(&mut &framed[..], MAX_REQUEST).unwrap();
            prop_assert_eq!(p, s.as_bytes());
        }

        #[test]
        fn classify_never_panics(line in "\\PC{0,200}") {
            let _ = classify(&line);
            let _ = line_bdf(&line);
            let _ = line_bar(&line);
            let _ = KmsgRecord::parse(&line);
        }
    }
}
