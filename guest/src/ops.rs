//! What the agent does for each request. Reads go through `SysRoot` (the guest's `/`), with
//! the same PCI parser the host uses.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vfioctl_common::error::chain;
use vfioctl_common::pci::{enumerate, PciDevice};
use vfioctl_common::proto::{
    self, AgentError, CheckOutcome, DevicesReply, ErrorKind, HelloReply, KernelLogReply,
    KmsgRecord, ModuleLoad, Verdict, WaitReply,
};
use vfioctl_common::{Selector, SysRoot};

use crate::sys;

pub struct State {
    pub root: SysRoot,
    pub pid1: bool,
    pub cfg: crate::config::Config,
    pub modules: Vec<ModuleLoad>,
    /// The secret, once it could be read (it may appear after start-up).
    token: std::sync::Mutex<Option<proto::Token>>,
}

impl State {
    pub fn new(
        root: SysRoot,
        pid1: bool,
        cfg: crate::config::Config,
        modules: Vec<ModuleLoad>,
    ) -> State {
        State {
            root,
            pid1,
            cfg,
            modules,
            token: std::sync::Mutex::new(None),
        }
    }

    /// Exec needs the image and the VM to ask (see `config`).
    pub fn exec_enabled(&self) -> bool {
        let fw_cfg = std::fs::read(proto::EXEC_SYSFS)
            .map(|b| String::from_utf8_lossy(&b).trim() == "1")
            .unwrap_or(false);
        self.cfg.exec(fw_cfg)
    }

    /// The per-VM secret, read once from the token file; the error says what is missing.
    pub fn token(&self) -> Result<proto::Token, String> {
        let mut g = self.token.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = g.as_ref() {
            return Ok(t.clone());
        }
        let path = &self.cfg.token_file;
        let mut text = String::new();
        use std::io::Read;
        std::fs::File::open(path)
            .and_then(|f| f.take(256).read_to_string(&mut text))
            .map_err(|e| {
                format!(
                    "this agent has no secret: {path}: {e} (start QEMU with -fw_cfg name={},file=TOKEN and load the qemu_fw_cfg module in the guest, or pass --token-file)",
                    proto::TOKEN_FW_CFG
                )
            })?;
        let t = proto::Token::parse(&text).map_err(|e| format!("{path}: {e}"))?;
        *g = Some(t.clone());
        Ok(t)
    }
}

pub fn hello(st: &State) -> HelloReply {
    let read = |p: &str| st.root.read_attr(p).unwrap_or_default();
    let uptime_s = read("/proc/uptime")
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    HelloReply {
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: proto::PROTOCOL_VERSION,
        kernel: sys::kernel_release(),
        kernel_version: read("/proc/version"),
        cmdline: read("/proc/cmdline"),
        uptime_s,
        pid1: st.pid1,
        exec_enabled: st.exec_enabled(),
        modules: st.modules.clone(),
        rss_kib: rss_kib(&st.root),
    }
}

/// Resident set size in KiB. `smaps_rollup` walks the page tables; `VmRSS` in `status`
/// comes from per-thread counters that Linux before 6.2 syncs only every 64 faults, so a
/// small multithreaded process can read as a few KiB there.
fn rss_kib(root: &SysRoot) -> Option<u64> {
    let field = |file: &str, key: &str| -> Option<u64> {
        root.read_string(file)
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
    };
    field("/proc/self/smaps_rollup", "Rss:").or_else(|| field("/proc/self/status", "VmRSS:"))
}

pub fn list_devices(root: &SysRoot) -> Result<DevicesReply, AgentError> {
    let bdfs = enumerate(root).map_err(|e| AgentError::new(ErrorKind::Io, chain(&e)))?;
    let mut devices = Vec::new();
    let mut errors = Vec::new();
    for bdf in bdfs {
        match PciDevice::read(root, bdf) {
            Ok(d) => devices.push(d),
            Err(e) => errors.push(format!("{bdf}: {}", chain(&e))),
        }
    }
    Ok(DevicesReply { devices, errors })
}

/// The best match for `sel` right now: a ready one if any, else the first.
fn find(root: &SysRoot, sel: &Selector, all_bars: bool) -> (Option<PciDevice>, bool) {
    let Ok(bdfs) = enumerate(root) else {
        return (None, false);
    };
    let mut first = None;
    for bdf in bdfs {
        let Ok(d) = PciDevice::read(root, bdf) else {
            continue;
        };
        if !sel.matches(d.bdf, d.vendor, d.device, d.class) {
            continue;
        }
        let ready = !all_bars || d.bars.iter().all(|b| b.assigned);
        if ready {
            return (Some(d), true);
        }
        first.get_or_insert(d);
    }
    (first, false)
}

/// Wait for a device, driven by kernel uevents.
///
/// The uevent socket is opened before the first look, so an event between the look and
/// the wait is not lost. A hotplugged device's `add` uevent comes when it enters sysfs,
/// which is before the kernel assigns its BARs, and nothing announces the assignment
/// itself (a device without a driver gets no later `bind` event). So while a matching
/// device is present but not complete, the agent also looks again after short, growing
/// intervals (10 ms doubling to 1 s); with no matching device it sleeps until a uevent.
pub fn wait_device(
    root: &SysRoot,
    sel: &Selector,
    timeout: Duration,
    all_bars: bool,
) -> Result<WaitReply, AgentError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let sock = sys::uevent_socket()
        .map_err(|e| AgentError::new(ErrorKind::Io, format!("uevent socket: {e}")))?;
    let mut uevents = 0u32;
    let mut settle = Duration::from_millis(10);
    loop {
        let (device, ready) = find(root, sel, all_bars);
        let now = Instant::now();
        if ready || now >= deadline {
            return Ok(WaitReply {
                ready,
                device: device.map(Box::new),
                waited_ms: start.elapsed().as_millis() as u64,
                uevents,
            });
        }
        let mut wait = deadline - now;
        if device.is_some() {
            wait = wait.min(settle);
            settle = (settle * 2).min(Duration::from_secs(1));
        }
        if sys::poll_readable(sock.as_raw_fd(), wait)
            .map_err(|e| AgentError::new(ErrorKind::Io, format!("poll uevents: {e}")))?
        {
            uevents += sys::read_uevents(&sock).len() as u32;
        }
    }
}

/// Every `/dev/kmsg` record after `since`.
pub fn kernel_log(
    root: &SysRoot,
    since: Option<u64>,
    max_lines: Option<u32>,
) -> Result<KernelLogReply, AgentError> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let path = root.path("/dev/kmsg");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| AgentError::new(ErrorKind::Io, format!("open /dev/kmsg: {e}")))?;
    let mut records = Vec::new();
    let mut buf = vec![0u8; 8192];
    let is_file = f.metadata().map(|m| m.is_file()).unwrap_or(false);
    if is_file {
        // A plain file (tests): records separated by newlines.
        let mut s = String::new();
        let _ = f.read_to_string(&mut s);
        records.extend(s.lines().filter_map(KmsgRecord::parse));
    } else {
        loop {
            match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if let Some(r) = KmsgRecord::parse(&String::from_utf8_lossy(&buf[..n])) {
                        records.push(r);
                    }
                }
                // EPIPE: records were overwritten before we read them; go on.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    return Err(AgentError::new(
                        ErrorKind::Io,
                        format!("read /dev/kmsg: {e}"),
                    ))
                }
            }
        }
    }
    if let Some(s) = since {
        records.retain(|r| r.seq > s);
    }
    let mark = records.last().map(|r| r.seq).or(since).unwrap_or(0);
    let findings = proto::findings(&records);
    let mut truncated = false;
    if let Some(max) = max_lines {
        let max = max as usize;
        if records.len() > max {
            records.drain(..records.len() - max);
            truncated = true;
        }
    }
    Ok(KernelLogReply {
        records,
        findings,
        mark,
        truncated,
    })
}

fn outcome(
    name: &str,
    verdict: Verdict,
    detail: impl Into<String>,
    ev: Vec<String>,
) -> CheckOutcome {
    CheckOutcome {
        name: name.into(),
        verdict,
        detail: detail.into(),
        evidence: ev,
    }
}

/// Run a named check ([`proto::CHECKS`]).
pub fn run_check(root: &SysRoot, name: &str, args: &[String]) -> Result<CheckOutcome, AgentError> {
    use std::os::unix::fs::FileTypeExt;
    let arg = |i: usize, what: &str| {
        args.get(i).cloned().ok_or_else(|| {
            AgentError::new(
                ErrorKind::BadRequest,
                format!("check {name}: missing {what}"),
            )
        })
    };
    Ok(match name {
        "nvidia-dev-nodes" => {
            let nodes = ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"];
            let mut missing = Vec::new();
            let mut ev = Vec::new();
            for n in nodes {
                match std::fs::metadata(root.path(n)) {
                    Ok(m) if m.file_type().is_char_device() => ev.push(format!("{n}: char device")),
                    Ok(_) => missing.push(format!("{n} (not a character device)")),
                    Err(_) => missing.push(n.to_string()),
                }
            }
            if missing.is_empty() {
                outcome(name, Verdict::Pass, "all device nodes present", ev)
            } else {
                outcome(
                    name,
                    Verdict::Fail,
                    format!("missing: {}", missing.join(", ")),
                    ev,
                )
            }
        }
        "nvidia-proc-version" => match root.read_string("/proc/driver/nvidia/version") {
            Ok(v) => outcome(
                name,
                Verdict::Pass,
                v.lines().next().unwrap_or("").to_string(),
                v.lines().map(String::from).collect(),
            ),
            Err(e) => outcome(
                name,
                Verdict::Fail,
                format!("{e}: the nvidia module is not loaded"),
                vec![],
            ),
        },
        "nvidia-smi" => {
            let want: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(1);
            match crate::exec::run(
                &["nvidia-smi".into(), "-L".into()],
                &[],
                Duration::from_secs(60),
                64 * 1024,
            ) {
                Err(e) => outcome(name, Verdict::Fail, e.message, vec![]),
                Ok(r) => {
                    let gpus: Vec<String> = r
                        .stdout
                        .lines()
                        .filter(|l| l.starts_with("GPU "))
                        .map(String::from)
                        .collect();
                    let mut ev = gpus.clone();
                    ev.extend(r.stderr.lines().map(String::from));
                    if r.success() && gpus.len() >= want {
                        outcome(
                            name,
                            Verdict::Pass,
                            format!("{} GPU(s) listed", gpus.len()),
                            ev,
                        )
                    } else {
                        outcome(
                            name,
                            Verdict::Fail,
                            format!(
                                "nvidia-smi -L listed {} GPU(s), want {want} (exit {:?}, timed out {})",
                                gpus.len(),
                                r.exit_code,
                                r.timed_out
                            ),
                            ev,
                        )
                    }
                }
            }
        }
        "nvidia-cdi-or-hook" => {
            let mut ev = Vec::new();
            for dir in ["/var/run/cdi", "/run/cdi", "/etc/cdi"] {
                for n in root.list_opt(dir).unwrap_or_default() {
                    if n.ends_with(".yaml") || n.ends_with(".json") {
                        ev.push(format!("CDI spec {dir}/{n}"));
                    }
                }
            }
            let hook = "/usr/share/oci/hooks/prestart/nvidia-container-toolkit.sh";
            if root.exists(hook) {
                ev.push(format!("OCI hook {hook}"));
            }
            if ev.is_empty() {
                outcome(
                    name,
                    Verdict::Fail,
                    format!("no CDI spec in /var/run/cdi or /etc/cdi and no {hook}"),
                    ev,
                )
            } else {
                outcome(name, Verdict::Pass, ev[0].clone(), ev)
            }
        }
        "driver-bound" => {
            let bdf = arg(0, "BDF")?;
            let want = arg(1, "DRIVER")?;
            let bdf = bdf.parse().map_err(|e: vfioctl_common::BdfError| {
                AgentError::new(ErrorKind::BadRequest, e.to_string())
            })?;
            match PciDevice::read(root, bdf) {
                Ok(d) if d.driver.as_deref() == Some(want.as_str()) => outcome(
                    name,
                    Verdict::Pass,
                    format!("{bdf} bound to {want}"),
                    vec![],
                ),
                Ok(d) => outcome(
                    name,
                    Verdict::Fail,
                    format!(
                        "{bdf} is bound to {}, want {want}",
                        d.driver.as_deref().unwrap_or("no driver")
                    ),
                    vec![],
                ),
                Err(e) => outcome(name, Verdict::Fail, chain(&e), vec![]),
            }
        }
        "module-loaded" => {
            let m = arg(0, "MODULE")?.replace('-', "_");
            if root.exists(format!("/sys/module/{m}")) {
                outcome(name, Verdict::Pass, format!("{m} loaded"), vec![])
            } else {
                outcome(
                    name,
                    Verdict::Fail,
                    format!("/sys/module/{m} missing"),
                    vec![],
                )
            }
        }
        other => {
            return Err(AgentError::new(
                ErrorKind::UnknownCheck,
                format!(
                    "unknown check {other:?}; known: {}",
                    proto::CHECKS
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ))
        }
    })
}
