//! Hot plug and unplug over QMP, confirmed in the guest.
//!
//! Plug: host pre-checks (vfio-pci bound, IOMMU group viable, `/dev/vfio/N` present),
//! a port sized for the device, `object-add` (stand-in backend) + `device_add`, then the
//! guest must report the device with every BAR assigned; if it does not, the device is
//! unplugged again (rolled back) and the guest's own words are in the error.
//! Unplug: subscribe, `device_del`, wait for `DEVICE_DELETED` with our id, retrying the
//! "busy" answers; a timeout carries the guest's kernel log.

use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use vfioctl_common::{units, Bdf, PciDevice, SysRoot};

use super::devices::{PlugSpec, IVSHMEM_ID};
pub use super::error::PlugError;
use super::error::VmError;
use super::evidence::{self, PciEvidence};
use super::guest;
use super::liveness;
use super::process;
use super::profile::{GpuSpec, HotplugMode, Ready};
use super::rundir::{Env, VmName};
use super::state::{Plugged, VmRecord, VmState};
use crate::qmp::{wait_event, Qmp, QmpError};

/// Host-side checks for a VFIO device: bound to vfio-pci, group viable, node present.
pub fn precheck(root: &SysRoot, bdf: Bdf) -> Result<PciDevice, VmError> {
    let dev = PciDevice::read(root, bdf).map_err(|source| VmError::HostDevice {
        name: String::new(),
        bdf: bdf.to_string(),
        source,
    })?;
    let bound = dev.vfio_dev
        || dev
            .driver
            .as_deref()
            .is_some_and(vfioctl_common::pci::device::is_vfio_driver);
    if !bound {
        return Err(PlugError::NotBound {
            bdf,
            driver: dev.driver.clone(),
        }
        .into());
    }
    let group = dev.iommu_group.ok_or(PlugError::NoGroup { bdf })?;
    let mut bad = Vec::new();
    for peer in &dev.iommu_group_peers {
        if let Ok(p) = PciDevice::read(root, *peer) {
            if !p.is_vfio_safe() {
                bad.push((*peer, p.driver.clone()));
            }
        }
    }
    if !bad.is_empty() {
        return Err(PlugError::GroupNotViable {
            bdf,
            group,
            members: bad,
        }
        .into());
    }
    if !root.exists(format!("/dev/vfio/{group}")) {
        return Err(PlugError::NoVfioNode { bdf, group }.into());
    }
    Ok(dev)
}

/// What the guest confirmed.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Confirmed {
    /// `vendor:device` the guest should see (empty when the host's could not be read).
    pub id_pair: String,
    /// The device's address in the guest.
    pub guest_bdf: String,
    /// What the guest kernel said about it.
    pub evidence: PciEvidence,
    /// Seconds from `device_add` to the guest's confirmation.
    pub seconds: f64,
    /// Host unix time when `device_add` returned.
    #[serde(default)]
    pub device_add_unix: Option<f64>,
    /// Host unix time of the guest kernel's first message about the device (its own
    /// enumeration timestamp, mapped through the agent's uptime), when known.
    #[serde(default)]
    pub guest_enumerated_unix: Option<f64>,
    /// The guest kernel's own time from finding the device to its last BAR message.
    #[serde(default)]
    pub guest_enumeration_seconds: Option<f64>,
}

fn id_pair(root: &SysRoot, gpu: &GpuSpec) -> String {
    match gpu {
        GpuSpec::Emulated { .. } => IVSHMEM_ID.into(),
        GpuSpec::Vfio { bdf } => PciDevice::read(root, *bdf)
            .map(|d| d.id())
            .unwrap_or_default(),
        GpuSpec::Mdev { uuid } => crate::shared::mdev::guest_ids(root, uuid)
            .map(|(v, d)| format!("{v:04x}:{d:04x}"))
            .unwrap_or_default(),
    }
}

/// Wait until the guest reports `gpu` on root port `port` with all BARs settled: from
/// the agent when the VM has one (`ready = "agent"`), else from the kernel's messages on
/// the serial console after byte `offset`. Errors carry the guest's own lines.
pub async fn confirm(
    rec: &VmRecord,
    gpu: &GpuSpec,
    root: &SysRoot,
    port: &str,
    offset: usize,
    timeout: Duration,
) -> Result<Confirmed, VmError> {
    let pair = id_pair(root, gpu);
    match (&rec.ready, &rec.agent) {
        (Ready::Agent, Some(_)) => {
            let port_bdf = rec
                .ports
                .iter()
                .find(|p| p.id == port)
                .and_then(|p| guest_port_bdf(&p.addr));
            let (pair2, label, port2) = (pair.clone(), gpu.label(), port.to_string());
            let rec2 = rec.clone();
            tokio::task::spawn_blocking(move || {
                confirm_agent(&rec2, &pair2, port_bdf, &label, &port2, timeout)
            })
            .await
            .expect("agent confirm task")
        }
        _ => confirm_serial(rec, gpu, &pair, port, offset, timeout).await,
    }
}

/// The guest's recent kernel messages: from the agent when it answers, else the tail of
/// the serial console.
pub async fn guest_log_tail(rec: &VmRecord, n: u32) -> String {
    if let (Ready::Agent, Some(_)) = (&rec.ready, &rec.agent) {
        let r = rec.clone();
        let got = tokio::task::spawn_blocking(move || {
            let mut c = guest::connect(&r, Duration::from_secs(5)).ok()?;
            let k = c.kernel_log(None, Some(n)).ok()?;
            Some(
                k.records
                    .iter()
                    .map(|r| r.display())
                    .collect::<Vec<_>>()
                    .join("\n"),
            )
        })
        .await
        .ok()
        .flatten();
        if let Some(g) = got {
            return g;
        }
    }
    process::tail_file(&rec.serial_log, n as usize)
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Guest address of a root port at `addr` (`0x10.1`) on pcie.0.
pub fn guest_port_bdf(addr: &str) -> Option<Bdf> {
    let (slot, func) = addr.split_once('.')?;
    let slot = u8::from_str_radix(slot.trim_start_matches("0x"), 16).ok()?;
    Some(Bdf::new(0, 0, slot, func.parse().ok()?))
}

fn confirm_agent(
    rec: &VmRecord,
    pair: &str,
    port_bdf: Option<Bdf>,
    label: &str,
    port: &str,
    timeout: Duration,
) -> Result<Confirmed, VmError> {
    let start = Instant::now();
    let agent_err = |e: crate::agent::ClientError| VmError::Agent {
        name: rec.name.to_string(),
        source: Box::new(e),
    };
    let mut c = guest::connect(rec, Duration::from_secs(10))?;
    // Map guest uptime to host time once: boot = now - uptime (off by the vsock RTT).
    let hello = c.hello().map_err(agent_err)?;
    let guest_boot_unix = unix_now() - hello.uptime_s;
    let (vendor, device) = pair.split_once(':').unwrap_or(("", ""));
    let (vendor, device) = (
        u16::from_str_radix(vendor, 16).unwrap_or(0),
        u16::from_str_radix(device, 16).unwrap_or(0),
    );
    loop {
        // The device sits directly below its root port; the port tells it apart from an
        // identical device on another port.
        let devs = c.list_devices().map_err(agent_err)?;
        let found = devs.devices.into_iter().find(|d| {
            d.vendor == vendor
                && d.device == device
                && (port_bdf.is_none() || d.parents.first() == port_bdf.as_ref())
        });
        if let Some(d) = found {
            // The guest has reported it: that is the latency; what follows is diagnostics.
            let seen_after = start.elapsed().as_secs_f64();
            let bdf = d.bdf.to_string();
            let mem: Vec<_> = d.bars.iter().filter(|b| !b.io).collect();
            let mut ev = PciEvidence {
                bdf: bdf.clone(),
                found: mem.iter().map(|b| b.index).collect(),
                ..Default::default()
            };
            for b in &mem {
                if b.assigned {
                    let end = b.start + b.size.unwrap_or(1) - 1;
                    ev.assigned.push((
                        b.index,
                        format!(
                            "mem {:#x}-{:#x}{}",
                            b.start,
                            end,
                            if b.is_64bit { " 64bit" } else { "" }
                        ),
                    ));
                }
            }
            let log = c.kernel_log(None, Some(2000)).map_err(agent_err)?;
            // The newest "[vvvv:dddd] type 00" line for this address: an earlier plug on
            // the same port left older ones.
            let first_ts = log
                .records
                .iter()
                .rev()
                .find(|r| r.text.contains(&bdf) && r.text.contains(&format!("[{pair}]")))
                .map(|r| r.ts_us);
            let last_ts = log
                .records
                .iter()
                .rev()
                .find(|r| r.text.contains(&bdf) && r.text.contains("BAR"))
                .map(|r| r.ts_us);
            // Map guest time to host time now, close to the event (the guest clock drifts
            // under TCG): boot = now - uptime, off by the vsock round trip.
            let guest_boot_unix = match c.hello() {
                Ok(h) => unix_now() - h.uptime_s,
                Err(_) => guest_boot_unix,
            };
            ev.lines = log
                .records
                .iter()
                .filter(|r| r.text.contains(&bdf))
                .map(|r| r.display())
                .collect();
            for b in mem.iter().filter(|b| !b.assigned) {
                let why = ev
                    .lines
                    .iter()
                    .find(|l| {
                        l.contains(&format!("BAR {}", b.index))
                            && (l.contains("no space") || l.contains("failed"))
                    })
                    .map(|l| l.rsplit(": ").next().unwrap_or(l).to_string())
                    .unwrap_or_else(|| "not assigned".into());
                ev.failed.push((b.index, why));
            }
            if !ev.failed.is_empty() {
                return Err(PlugError::NotAssigned {
                    gpu: label.into(),
                    port: port.into(),
                    bdf,
                    failed: ev.failed.clone(),
                    lines: ev.lines.clone(),
                }
                .into());
            }
            return Ok(Confirmed {
                id_pair: pair.into(),
                guest_bdf: bdf,
                evidence: ev,
                seconds: seen_after,
                device_add_unix: None,
                guest_enumerated_unix: first_ts.map(|ts| guest_boot_unix + ts as f64 / 1e6),
                guest_enumeration_seconds: first_ts
                    .zip(last_ts)
                    .map(|(a, b)| b.saturating_sub(a) as f64 / 1e6),
            });
        }
        if !liveness::qemu_alive(rec) {
            return Err(liveness::crashed(rec));
        }
        if start.elapsed() > timeout {
            let log = c
                .kernel_log(None, Some(25))
                .map(|k| {
                    k.records
                        .iter()
                        .map(|r| r.text.clone())
                        .collect::<Vec<_>>()
                        .join("\n")
                })
                .unwrap_or_default();
            return Err(PlugError::NotSeen {
                gpu: label.into(),
                port: port.into(),
                secs: timeout.as_secs(),
                log,
            }
            .into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn confirm_serial(
    rec: &VmRecord,
    gpu: &GpuSpec,
    pair: &str,
    port: &str,
    offset: usize,
    timeout: Duration,
) -> Result<Confirmed, VmError> {
    let start = Instant::now();
    loop {
        let text = std::fs::read(&rec.serial_log).unwrap_or_default();
        let text = String::from_utf8_lossy(text.get(offset..).unwrap_or_default());
        if let Some(ev) = evidence::scan(&text, pair) {
            if ev.settled() {
                if !ev.all_assigned() {
                    return Err(PlugError::NotAssigned {
                        gpu: gpu.label(),
                        port: port.into(),
                        bdf: ev.bdf.clone(),
                        failed: ev.failed.clone(),
                        lines: ev.lines.clone(),
                    }
                    .into());
                }
                return Ok(Confirmed {
                    id_pair: pair.into(),
                    guest_bdf: ev.bdf.clone(),
                    evidence: ev,
                    seconds: start.elapsed().as_secs_f64(),
                    device_add_unix: None,
                    guest_enumerated_unix: None,
                    guest_enumeration_seconds: None,
                });
            }
        }
        if !liveness::qemu_alive(rec) {
            return Err(liveness::crashed(rec));
        }
        if start.elapsed() > timeout {
            return Err(PlugError::NotSeen {
                gpu: gpu.label(),
                port: port.into(),
                secs: timeout.as_secs(),
                log: evidence::tail(&text, 20),
            }
            .into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn port_list(rec: &VmRecord) -> String {
    rec.ports
        .iter()
        .map(|p| {
            format!(
                "{}{}",
                p.id,
                p.pref64_reserve
                    .map(|r| format!(" (pref64 {})", units::short(r)))
                    .unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Choose the port: the one asked for, else the first free port whose reserve fits the
/// device (the port sized for it first).
pub fn choose_port(
    rec: &VmRecord,
    gpu: &GpuSpec,
    need: u64,
    want: Option<&str>,
) -> Result<String, PlugError> {
    let busy = |port: &str| {
        rec.plugged
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.id.clone())
    };
    if let Some(w) = want {
        if !rec.ports.iter().any(|p| p.id == w) {
            return Err(PlugError::UnknownPort {
                name: rec.name.to_string(),
                port: w.into(),
                ports: port_list(rec),
            });
        }
        if let Some(id) = busy(w) {
            return Err(PlugError::PortBusy { port: w.into(), id });
        }
        return Ok(w.into());
    }
    let free = rec.ports.iter().filter(|p| busy(&p.id).is_none());
    let label = gpu.label();
    let mut fits: Vec<_> = free.filter(|p| p.fits_pref64 >= need).collect();
    fits.sort_by_key(|p| {
        (
            p.sized_for.as_deref() != Some(label.as_str()),
            p.fits_pref64,
        )
    });
    fits.first().map(|p| p.id.clone()).ok_or(PlugError::NoPort {
        gpu: label,
        need: units::human(need),
        ports: port_list(rec),
    })
}

/// Plug `gpu` into the running VM and wait until the guest confirms it.
pub async fn plug(
    env: &Env,
    rec: &mut VmRecord,
    qmp: &Qmp,
    gpu: &GpuSpec,
    port: Option<&str>,
) -> Result<Confirmed, VmError> {
    if !matches!(rec.state, VmState::Ready | VmState::DevicePlugged) {
        return Err(PlugError::NotReady {
            name: rec.name.to_string(),
            state: rec.state.to_string(),
        }
        .into());
    }
    let (need, peers) = match gpu {
        GpuSpec::Emulated { size } => (*size, Vec::new()),
        // An mdev's BARs are emulated by its parent driver: any port fits.
        GpuSpec::Mdev { .. } => (0, Vec::new()),
        GpuSpec::Vfio { bdf } => {
            let dev = precheck(&env.root, *bdf)?;
            (dev.bar_totals().0, dev.iommu_group_peers.clone())
        }
    };
    let port = choose_port(rec, gpu, need, port)?;
    let n = (0..)
        .find(|i| !rec.plugged.iter().any(|p| p.id == format!("gpu{i}")))
        .unwrap_or(0);
    let spec = PlugSpec {
        id: format!("gpu{n}"),
        port: port.clone(),
        gpu: gpu.clone(),
    };
    let offset = std::fs::metadata(&rec.serial_log)
        .map(|m| m.len() as usize)
        .unwrap_or(0);
    let qemu_err = |source: QmpError| -> VmError {
        match source {
            QmpError::Command { ref desc, .. } => PlugError::Qemu {
                gpu: gpu.label(),
                port: port.clone(),
                desc: desc.clone(),
                peers: peers.clone(),
                source: Box::new(source),
            }
            .into(),
            other => VmError::Qmp {
                name: rec.name.to_string(),
                what: format!("plugging {} on {}", gpu.label(), port),
                source: other,
            },
        }
    };
    if let Some(obj) = spec.object_add_args() {
        qmp.execute_raw("object-add", Some(obj))
            .await
            .map_err(qemu_err)?;
    }
    // On the iommufd backend the device names the VM's iommufd object (made at start).
    let added = qmp.run(&spec.device_add_for(rec.vfio_backend)).await;
    let device_add_unix = unix_now();
    if let Err(e) = added {
        if let Some(m) = spec.memdev_id() {
            let _ = qmp.execute_raw("object-del", Some(json!({"id": m}))).await;
        }
        return Err(qemu_err(e));
    }
    rec.plugged.push(Plugged {
        id: spec.id.clone(),
        gpu: gpu.label(),
        port: port.clone(),
        memdev: spec.memdev_id(),
        cold: false,
        id_pair: id_pair(&env.root, gpu),
        guest_bdf: None,
    });
    match confirm(rec, gpu, &env.root, &port, offset, Duration::from_secs(60)).await {
        Ok(mut c) => {
            c.device_add_unix = Some(device_add_unix);
            if let Some(p) = rec.plugged.iter_mut().find(|p| p.id == spec.id) {
                p.guest_bdf = Some(c.guest_bdf.clone());
            }
            rec.transition(VmState::DevicePlugged)?;
            rec.save()?;
            Ok(c)
        }
        Err(e) => {
            // Roll back: take the device out again so the VM is as it was.
            if liveness::qemu_alive(rec) {
                if let Err(u) = unplug(env, rec, qmp, &spec.id).await {
                    tracing::error!("rolling back {}: {u}", spec.id);
                }
            }
            Err(e)
        }
    }
}

/// Unplug device `id` and wait for QEMU's `DEVICE_DELETED`. Returns the seconds it took.
pub async fn unplug(_env: &Env, rec: &mut VmRecord, qmp: &Qmp, id: &str) -> Result<f64, VmError> {
    let Some(dev) = rec.plugged.iter().find(|p| p.id == id).cloned() else {
        return Err(PlugError::NotPlugged {
            name: rec.name.to_string(),
            id: id.into(),
        }
        .into());
    };
    let timeout = match rec.hotplug {
        HotplugMode::Acpi => Duration::from_secs(15),
        HotplugMode::Native => Duration::from_secs(20),
    };
    let start = Instant::now();
    let mut rx = qmp.subscribe();
    loop {
        match qmp.execute_raw("device_del", Some(json!({"id": id}))).await {
            Ok(_) => break,
            Err(QmpError::Command { ref desc, .. })
                if (desc.contains("already in the process of unplug") || desc.contains("busy"))
                    && start.elapsed() < timeout =>
            {
                // Native hotplug: the guest is in its 5 s attention-button window. QEMU
                // expires a pending request after 5 s; ask again after a moment.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(QmpError::Command { class, .. }) if class == "DeviceNotFound" => {
                // Already gone (an earlier request completed).
                rec.plugged.retain(|p| p.id != id);
                return Ok(start.elapsed().as_secs_f64());
            }
            Err(source) => {
                return Err(VmError::Qmp {
                    name: rec.name.to_string(),
                    what: format!("device_del {id}"),
                    source,
                })
            }
        }
    }
    let want = id.to_string();
    let got = wait_event(&mut rx, timeout.saturating_sub(start.elapsed()), |e| {
        e.name == "DEVICE_DELETED" && e.device() == Some(want.as_str())
    })
    .await;
    if got.is_none() {
        if !liveness::qemu_alive(rec) {
            return Err(liveness::crashed(rec));
        }
        let log = guest_log_tail(rec, 25).await;
        return Err(PlugError::UnplugTimeout {
            id: id.into(),
            secs: timeout.as_secs(),
            log,
        }
        .into());
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(m) = &dev.memdev {
        let _ = qmp.execute_raw("object-del", Some(json!({"id": m}))).await;
    }
    rec.plugged.retain(|p| p.id != id);
    if rec.plugged.is_empty() && rec.state == VmState::DevicePlugged {
        rec.transition(VmState::Ready)?;
    }
    rec.save()?;
    Ok(secs)
}

/// `vm plug`: load the VM, check it is running, connect to QMP and plug, holding the
/// name's lock so no other `vm up/down/plug/unplug` of it runs meanwhile.
pub async fn plug_vm(
    env: &Env,
    name: &VmName,
    gpu: &GpuSpec,
    port: Option<&str>,
) -> Result<(Confirmed, VmRecord), VmError> {
    let rd = env.run_dir(name);
    // The VM must exist (and be ours) before its lock file is made.
    super::lifecycle::load(env, name)?;
    let _lock = super::lifecycle::lock(&rd, "vm plug")?;
    let mut rec = super::lifecycle::load(env, name)?;
    if rec.state == VmState::Crashed {
        return Err(liveness::crashed(&rec));
    }
    let qmp = connect_qmp(&rec).await?;
    let c = plug(env, &mut rec, &qmp, gpu, port).await?;
    Ok((c, rec))
}

/// `vm unplug`: `id` is the device id (`gpu0`) or what was plugged (`emulated:8G`, a
/// BDF). Returns the id and the seconds until `DEVICE_DELETED`.
pub async fn unplug_vm(env: &Env, name: &VmName, id: &str) -> Result<(String, f64), VmError> {
    let rd = env.run_dir(name);
    // The VM must exist (and be ours) before its lock file is made.
    super::lifecycle::load(env, name)?;
    let _lock = super::lifecycle::lock(&rd, "vm unplug")?;
    let mut rec = super::lifecycle::load(env, name)?;
    let id = rec
        .plugged
        .iter()
        .find(|p| p.id == id || p.gpu == id)
        .map(|p| p.id.clone())
        .unwrap_or(id.to_string());
    let qmp = connect_qmp(&rec).await?;
    let secs = unplug(env, &mut rec, &qmp, &id).await?;
    Ok((id, secs))
}

async fn connect_qmp(rec: &VmRecord) -> Result<Qmp, VmError> {
    Qmp::connect(&rec.qmp_socket, Duration::from_secs(5))
        .await
        .map_err(|source| VmError::Qmp {
            name: rec.name.to_string(),
            what: format!("connecting to {}", rec.qmp_socket.display()),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::ports::{self, DeviceBars, Firmware, PhysBits};
    use crate::{Diagnose, Exit};

    fn rec() -> VmRecord {
        let mut r = VmRecord::new(&super::super::rundir::RunDir::new(
            std::path::Path::new("/nonexistent"),
            VmName::new("lab").unwrap(),
        ));
        r.ports = ports::plan(
            &[DeviceBars::emulated(8 << 30)],
            1,
            Firmware::Seabios,
            1 << 30,
            PhysBits::TCG,
        )
        .unwrap()
        .ports;
        r
    }

    #[test]
    fn port_choice() {
        let mut r = rec();
        let g = GpuSpec::Emulated { size: 8 << 30 };
        assert_eq!(choose_port(&r, &g, 8 << 30, None).unwrap(), "rp0");
        // The spare port (no reserve) is only used when asked for: the negative control.
        assert_eq!(choose_port(&r, &g, 8 << 30, Some("rp1")).unwrap(), "rp1");
        assert!(matches!(
            choose_port(&r, &g, 8 << 30, Some("rp9")),
            Err(PlugError::UnknownPort { .. })
        ));
        r.plugged.push(Plugged {
            id: "gpu0".into(),
            gpu: g.label(),
            port: "rp0".into(),
            memdev: None,
            cold: false,
            id_pair: IVSHMEM_ID.into(),
            guest_bdf: None,
        });
        let e = choose_port(&r, &g, 8 << 30, None).unwrap_err();
        assert!(e.to_string().contains("rp0 (pref64 16G), rp1"), "{e}");
        assert!(matches!(
            choose_port(&r, &g, 8 << 30, Some("rp0")),
            Err(PlugError::PortBusy { .. })
        ));
    }

    #[test]
    fn qemu_errors_get_the_fix() {
        let bdf: Bdf = "0000:41:00.0".parse().unwrap();
        let mk = |desc: &str| PlugError::Qemu {
            gpu: bdf.to_string(),
            port: "rp0".into(),
            desc: desc.into(),
            peers: vec!["0000:41:00.1".parse().unwrap()],
            source: Box::new(QmpError::Command {
                command: "device_add".into(),
                class: "GenericError".into(),
                desc: desc.into(),
            }),
        };
        assert!(mk("vfio 0000:41:00.0: group 40 is not viable")
            .hint()
            .unwrap()
            .contains("0000:41:00.1"));
        assert!(mk("vfio /sys/bus/pci/devices/0000:41:00.0: no such host device: No such file or directory").hint().unwrap().contains("vfioctl devices"));
        assert!(mk("vfio 0000:41:00.0: failed to setup container for group 40: memory listener initialization failed: Region pc.ram: vfio_dma_map(0x55, 0x0, 0x80000000, 0x7f) = -12 (Cannot allocate memory)").hint().unwrap().contains("ulimit -l"));
        assert_eq!(mk("x").exit(), Exit::OperationFailed);
    }

    #[test]
    fn precheck_on_a_fixture_tree() {
        // A GPU bound to nvidia: refused, naming the driver and the fix.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let dev = root.join("sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
        std::fs::create_dir_all(root.join("sys/bus/pci/drivers/nvidia")).unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:40/0000:40:01.1/0000:41:00.0",
            root.join("sys/bus/pci/devices/0000:41:00.0"),
        )
        .unwrap();
        for (f, v) in [
            ("vendor", "0x10de"),
            ("device", "0x2330"),
            ("class", "0x030200"),
        ] {
            std::fs::write(dev.join(f), v).unwrap();
        }
        std::os::unix::fs::symlink("../../../../bus/pci/drivers/nvidia", dev.join("driver"))
            .unwrap();
        let e = precheck(&SysRoot::new(root), "0000:41:00.0".parse().unwrap()).unwrap_err();
        let VmError::Plug(p) = e else { panic!("{e}") };
        assert!(p.to_string().contains("bound to nvidia"), "{p}");
        assert_eq!(p.exit(), Exit::Refused);
        assert!(p.hint().unwrap().contains("vfioctl bind 0000:41:00.0"));
    }

    #[tokio::test]
    async fn unplug_retries_busy_and_waits_for_our_device_deleted() {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = tokio::net::UnixStream::pair().unwrap();
        let server = tokio::spawn(async move {
            let (rd, mut wr) = b.into_split();
            wr.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": [\"oob\"]}}\n").await.unwrap();
            let mut lines = BufReader::new(rd).lines();
            let mut seen = Vec::new();
            let mut dels = 0;
            while let Ok(Some(l)) = lines.next_line().await {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                let id = v["id"].clone();
                let cmd = v["execute"].as_str().unwrap().to_string();
                let reply = match cmd.as_str() {
                    "device_del" if dels == 0 => {
                        dels += 1;
                        json!({"id": id, "error": {"class": "GenericError", "desc": "Hot-unplug failed: guest is busy (power indicator blinking)"}}).to_string()
                    }
                    "device_del" => format!(
                        "{}\n{}\n{}",
                        json!({"return": {}, "id": id}),
                        r#"{"event": "DEVICE_DELETED", "data": {"device": "gpu9", "path": "/machine/peripheral/gpu9"}, "timestamp": {"seconds": 1, "microseconds": 0}}"#,
                        r#"{"event": "DEVICE_DELETED", "data": {"device": "gpu0", "path": "/machine/peripheral/gpu0"}, "timestamp": {"seconds": 1, "microseconds": 5}}"#
                    ),
                    _ => json!({"return": {}, "id": id}).to_string(),
                };
                seen.push(cmd);
                wr.write_all(format!("{reply}\n").as_bytes()).await.unwrap();
            }
            seen
        });
        let qmp = Qmp::handshake(a, "fake".into(), Duration::from_secs(5))
            .await
            .unwrap();
        let rd = super::super::rundir::RunDir::new(dir.path(), VmName::new("lab").unwrap());
        rd.create().unwrap();
        let mut r = VmRecord::new(&rd);
        r.state = VmState::DevicePlugged;
        r.hotplug = HotplugMode::Native;
        r.plugged.push(Plugged {
            id: "gpu0".into(),
            gpu: "emulated:8G".into(),
            port: "rp0".into(),
            memdev: Some("gpu0-mem".into()),
            cold: false,
            id_pair: IVSHMEM_ID.into(),
            guest_bdf: None,
        });
        let env = Env {
            root: SysRoot::host(),
            base: dir.path().to_path_buf(),
        };
        unplug(&env, &mut r, &qmp, "gpu0").await.unwrap();
        assert!(r.plugged.is_empty());
        assert_eq!(r.state, VmState::Ready);
        drop(qmp);
        let seen = server.await.unwrap();
        assert_eq!(
            seen,
            vec!["qmp_capabilities", "device_del", "device_del", "object-del"]
        );
    }
}
