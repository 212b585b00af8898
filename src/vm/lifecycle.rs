//! `vm up`, `vm down`, `vm status`, `vm list`: the VM lifecycle on top of the state
//! machine in [`super::state`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use vfioctl_common::{PciDevice, SysRoot};

use super::accel::{self, Accel};
use super::argv::{qemu_argv, Launch};
use super::devices::PlugSpec;
use super::error::VmError;
use super::evidence;
use super::plug;
use super::ports::{self, DeviceBars, PhysBits};
use super::process;
use super::profile::{GpuSpec, PlugWhen, Profile, Ready};
use super::state::{self, VmRecord, VmState};
use super::vsock::{self, VsockBackend};
use crate::agent::AgentClient;
use crate::qmp::Qmp;
use vfioctl_common::proto::PowerAction;

/// Where VMs live and how the host is reached.
#[derive(Clone, Debug)]
pub struct Env {
    /// Host root for sysfs/dev reads (`--root`).
    pub root: SysRoot,
    /// Runtime base directory (see [`state::run_base`]).
    pub base: PathBuf,
}

impl Env {
    pub fn host() -> Env {
        Env {
            root: SysRoot::host(),
            base: state::run_base(),
        }
    }
    pub fn run_dir(&self, name: &str) -> PathBuf {
        self.base.join(name)
    }
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The marker QEMU's command line carries (`-name vfioctl-NAME`), to recognise our pid.
pub fn qemu_marker(rec: &VmRecord) -> String {
    format!("vfioctl-{},", rec.name)
}

fn backend_marker(rec: &VmRecord) -> String {
    rec.run_dir.join("vhost-vsock.sock").display().to_string()
}

/// Every process of the VM with its liveness marker.
pub fn processes(rec: &VmRecord) -> Vec<(u32, String)> {
    let mut v = Vec::new();
    if let Some(p) = rec.pid {
        v.push((p, qemu_marker(rec)));
    }
    if let Some(p) = rec.vsock_backend_pid {
        v.push((p, backend_marker(rec)));
    }
    v
}

pub fn qemu_alive(rec: &VmRecord) -> bool {
    rec.pid
        .is_some_and(|p| process::alive(p, &qemu_marker(rec)))
}

/// The crash report for a VM whose QEMU is gone.
pub fn crashed(rec: &VmRecord) -> VmError {
    let status = rec
        .pid
        .and_then(process::exit_status)
        .unwrap_or_else(|| "no longer running".into());
    VmError::Crashed {
        name: rec.name.clone(),
        status,
        stderr: process::tail_file(&rec.qemu_stderr, 20),
        serial: process::tail_file(&rec.serial_log, 30),
    }
}

fn io_err(name: &str, what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> VmError {
    let (name, path) = (name.to_string(), path.to_path_buf());
    move |source| VmError::Io {
        name,
        what,
        path,
        source,
    }
}

fn save(rec: &VmRecord) -> Result<(), VmError> {
    rec.save()
        .map_err(io_err(&rec.name, "writing state", &rec.state_file()))
}

/// Load a VM's record and bring its state up to date: a QEMU that died on its own is
/// `crashed` from now on.
pub fn load(env: &Env, name: &str) -> Result<VmRecord, VmError> {
    let dir = env.run_dir(name);
    if !dir.join(state::STATE_FILE).exists() {
        return Err(VmError::NoSuchVm {
            name: name.into(),
            run_dir: dir,
        });
    }
    let mut rec = VmRecord::load(&dir).map_err(io_err(name, "reading state", &dir))?;
    if rec.state.expects_running() && !qemu_alive(&rec) {
        rec.transition(VmState::Crashed)?;
        save(&rec)?;
    }
    Ok(rec)
}

/// Host devices' BARs for sizing.
fn device_bars(env: &Env, name: &str, gpu: &GpuSpec) -> Result<DeviceBars, VmError> {
    match gpu {
        GpuSpec::Emulated { size } => Ok(DeviceBars::emulated(*size)),
        GpuSpec::Vfio { bdf } => PciDevice::read(&env.root, *bdf)
            .map(|d| DeviceBars::from_pci(&d))
            .map_err(|source| VmError::HostDevice {
                name: name.into(),
                bdf: bdf.to_string(),
                source,
            }),
    }
}

/// A bare program name resolved through `PATH`, then `~/.cargo/bin` (where
/// scripts/setup installs vhost-device-vsock); other paths as given.
pub fn find_program(p: &Path) -> PathBuf {
    if p.components().count() != 1 {
        return p.to_path_buf();
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join(p))
        .find(|c| c.is_file())
        .unwrap_or_else(|| p.to_path_buf())
}

/// Everything `vm up` decides before starting anything (also `vm up --dry-run`).
pub fn prepare(env: &Env, profile: &Profile) -> Result<(Launch, VmRecord), VmError> {
    profile.validate()?;
    let name = profile.name.clone();
    let run_dir = env.run_dir(&name);
    let probe = accel::probe(
        &env.root,
        &profile.qemu,
        profile.kernel.as_deref(),
        profile.accel,
    )?;
    let mut rec = VmRecord::new(&name, &run_dir);
    if let Some(w) = &probe.warning {
        rec.warnings.push(w.clone());
    }
    let used: Vec<u32> = state::list_records(&env.base)
        .iter()
        .filter(|r| r.name != name && qemu_alive(r))
        .filter_map(|r| match r.vsock {
            VsockBackend::Vhost { cid } => Some(cid),
            _ => None,
        })
        .collect();
    let backend = vsock::choose(
        profile.vsock,
        vsock::vhost_vsock_usable(&env.root),
        &run_dir,
        &used,
    )
    .map_err(|reason| VmError::Vsock {
        name: name.clone(),
        reason,
    })?;
    let gpus = profile.gpus()?;
    let bars = gpus
        .iter()
        .map(|(g, _)| device_bars(env, &name, g))
        .collect::<Result<Vec<_>, _>>()?;
    let memory = profile.memory_bytes()?;
    let cpu = match probe.accel {
        Accel::Kvm => PhysBits::host(probe.host_phys_bits.unwrap_or(40)),
        Accel::Tcg => PhysBits::TCG,
    };
    let plan = ports::plan(
        &bars,
        profile.port_count() - bars.len(),
        profile.firmware,
        memory,
        cpu,
    )?;
    let cold: Vec<PlugSpec> = gpus
        .iter()
        .enumerate()
        .filter(|(_, (_, when))| *when == PlugWhen::Cold)
        .map(|(i, (g, _))| PlugSpec {
            id: format!("gpu{i}"),
            port: plan.ports[i].id.clone(),
            gpu: g.clone(),
        })
        .collect();
    let launch = Launch {
        name: name.clone(),
        qemu: profile.qemu.clone(),
        accel: probe.accel,
        vcpus: profile.vcpus,
        memory,
        kernel: profile.kernel.clone(),
        initrd: profile.initrd.clone(),
        disk: profile.disk.clone(),
        cmdline: profile.cmdline.clone(),
        firmware: profile.firmware,
        ovmf_code: profile.ovmf_code.clone(),
        ovmf_vars: run_dir.join("OVMF_VARS.fd"),
        hotplug: profile.hotplug,
        plan,
        vsock: backend.clone(),
        cold,
        qmp_socket: rec.qmp_socket.clone(),
        serial_log: rec.serial_log.clone(),
        pid_file: run_dir.join("qemu.pid"),
        extra: profile.qemu_args.clone(),
    };
    rec.argv = qemu_argv(&launch);
    rec.accel = probe.accel;
    rec.ready = profile.ready.clone();
    rec.firmware = profile.firmware;
    rec.hotplug = profile.hotplug;
    rec.ports = launch.plan.ports.clone();
    rec.vsock = backend.clone();
    rec.agent = backend.transport(profile.agent_port);
    Ok((launch, rec))
}

/// Start the VM and return once the guest is ready and the declared devices are plugged
/// and confirmed. On failure the processes are gone and the runtime directory is kept
/// (state `failed`, logs inside) until `vm down`.
pub async fn up(env: &Env, profile: &Profile) -> Result<VmRecord, VmError> {
    let name = profile.name.clone();
    let run_dir = env.run_dir(&name);
    if run_dir.exists() {
        match load(env, &name) {
            Ok(r) if qemu_alive(&r) => {
                return Err(VmError::AlreadyRunning {
                    name,
                    state: r.state.to_string(),
                    pid: r.pid.unwrap_or(0),
                })
            }
            _ => {
                // A leftover from a crash or a failed start: clean it up first.
                down(env, &name, Duration::ZERO).await?;
            }
        }
    }
    let (launch, mut rec) = prepare(env, profile)?;
    for w in &rec.warnings {
        // Carried in the record (the CLI prints them); logged for library users at info.
        tracing::info!("{w}");
    }
    state::make_private_dir(&env.base).map_err(io_err(&name, "creating", &env.base))?;
    state::make_private_dir(&run_dir).map_err(io_err(&name, "creating", &run_dir))?;
    save(&rec)?;
    match boot(env, profile, &launch, &mut rec).await {
        Ok(()) => Ok(rec),
        Err(e) => {
            let left = process::kill_group(rec.pgid, &processes(&rec), Duration::from_secs(2));
            if !left.is_empty() {
                tracing::error!("vm {name}: processes {left:?} survived SIGKILL");
            }
            if rec.state != VmState::Crashed {
                let _ = rec.transition(VmState::Failed);
            }
            let _ = rec.save();
            Err(e)
        }
    }
}

async fn boot(
    env: &Env,
    profile: &Profile,
    launch: &Launch,
    rec: &mut VmRecord,
) -> Result<(), VmError> {
    let name = rec.name.clone();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(profile.boot_timeout);
    if launch.firmware == ports::Firmware::Ovmf {
        std::fs::copy(&profile.ovmf_vars, &launch.ovmf_vars).map_err(io_err(
            &name,
            "copying OVMF vars",
            &profile.ovmf_vars,
        ))?;
    }
    rec.transition(VmState::Booting)?;
    let mut pgid = 0;
    if let Some(argv) = launch
        .vsock
        .backend_argv(&find_program(&profile.vhost_device_vsock))
    {
        let log = rec.run_dir.join("vhost-device-vsock.log");
        let pid = process::spawn(&argv, 0, &log).map_err(|source| VmError::Spawn {
            name: name.clone(),
            program: argv[0].clone(),
            source,
        })?;
        rec.vsock_backend_pid = Some(pid);
        pgid = pid as i32;
        rec.pgid = Some(pgid);
        save(rec)?;
        let sock = rec.run_dir.join("vhost-vsock.sock");
        // The backend creates its socket before QEMU may connect to it.
        while !sock.exists() {
            if !process::alive(pid, &backend_marker(rec)) {
                return Err(VmError::HelperDied {
                    name,
                    program: argv[0].clone(),
                    status: process::exit_status(pid).unwrap_or_else(|| "exited".into()),
                    log: process::tail_file(&log, 20),
                });
            }
            if Instant::now() > deadline {
                return Err(VmError::Vsock {
                    name,
                    reason: format!("{} did not create {}", argv[0], sock.display()),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let pid =
        process::spawn(&rec.argv, pgid, &rec.qemu_stderr).map_err(|source| VmError::Spawn {
            name: name.clone(),
            program: rec.argv[0].clone(),
            source,
        })?;
    rec.pid = Some(pid);
    if pgid == 0 {
        rec.pgid = Some(pid as i32);
    }
    rec.started_at = Some(now_unix());
    save(rec)?;

    // QMP: QEMU creates the socket a few ms after start.
    let qmp = loop {
        let slice = tokio::time::Instant::now() + Duration::from_millis(200);
        match Qmp::connect_retry(&rec.qmp_socket, slice).await {
            Ok(q) => break q,
            Err(e) => {
                if !qemu_alive(rec) {
                    let _ = rec.transition(VmState::Crashed);
                    return Err(crashed(rec));
                }
                if Instant::now() > deadline {
                    return Err(VmError::Qmp { name, source: e });
                }
            }
        }
    };
    let v = &qmp.greeting().version;
    rec.qemu_version = Some(format!("{}.{}.{}", v.major, v.minor, v.micro));
    save(rec)?;

    wait_ready(profile, rec, deadline, start).await?;
    rec.boot_seconds = Some(start.elapsed().as_secs_f64());
    rec.transition(VmState::Ready)?;
    save(rec)?;

    // Cold-plugged devices were enumerated at boot: confirm them in the guest too.
    for c in &launch.cold {
        let confirmed =
            plug::confirm(rec, &c.gpu, &env.root, &c.port, 0, Duration::from_secs(30)).await?;
        rec.plugged.push(state::Plugged {
            id: c.id.clone(),
            gpu: c.gpu.label(),
            port: c.port.clone(),
            memdev: c.memdev_id(),
            cold: true,
            id_pair: confirmed.id_pair,
            guest_bdf: Some(confirmed.guest_bdf),
        });
        rec.transition(VmState::DevicePlugged)?;
        save(rec)?;
    }
    // Hot plug what the profile asks for, each onto the port sized for it.
    for (i, (gpu, when)) in profile.gpus()?.into_iter().enumerate() {
        if when == PlugWhen::Hot {
            let port = rec.ports[i].id.clone();
            plug::plug(env, rec, &qmp, &gpu, Some(&port)).await?;
        }
    }
    Ok(())
}

async fn wait_ready(
    profile: &Profile,
    rec: &mut VmRecord,
    deadline: Instant,
    start: Instant,
) -> Result<(), VmError> {
    match &profile.ready {
        Ready::Serial(marker) => loop {
            let text = std::fs::read(&rec.serial_log).unwrap_or_default();
            if String::from_utf8_lossy(&text).contains(marker.as_str()) {
                return Ok(());
            }
            if !qemu_alive(rec) {
                let _ = rec.transition(VmState::Crashed);
                return Err(crashed(rec));
            }
            if Instant::now() > deadline {
                return Err(VmError::BootTimeout {
                    name: rec.name.clone(),
                    secs: deadline.duration_since(start).as_secs(),
                    what: format!("serial marker {marker:?}"),
                    serial: process::tail_file(&rec.serial_log, 30),
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        },
        Ready::Agent => {
            let Some(t) = rec.agent.clone() else {
                return Err(VmError::NoAgent {
                    name: rec.name.clone(),
                });
            };
            // Connect with retries in short slices so a QEMU that dies meanwhile is
            // reported at once, not at the deadline.
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                // Slices of a few seconds: long enough that an attempt is never abandoned
                // mid-handshake (an abandoned hybrid connection was seen to leave the guest
                // agent unresponsive), short enough to notice a dead QEMU promptly.
                let slice = left
                    .min(Duration::from_secs(3))
                    .max(Duration::from_millis(100));
                let tt = t.clone();
                let r = tokio::task::spawn_blocking(move || AgentClient::connect(&tt, slice))
                    .await
                    .expect("agent connect task");
                match r {
                    Ok(c) => {
                        rec.guest = Some(c.hello_info().clone());
                        return Ok(());
                    }
                    Err(e) => {
                        if !qemu_alive(rec) {
                            let _ = rec.transition(VmState::Crashed);
                            return Err(crashed(rec));
                        }
                        if Instant::now() >= deadline {
                            return Err(VmError::BootTimeout {
                                name: rec.name.clone(),
                                secs: deadline.duration_since(start).as_secs(),
                                what: format!("the guest agent at {t} ({e})"),
                                serial: process::tail_file(&rec.serial_log, 30),
                            });
                        }
                    }
                }
            }
        }
    }
}

/// What `vm down` did.
#[derive(Clone, Debug, Serialize)]
pub struct DownReport {
    pub name: String,
    /// State before `down` (`None`: there was no such VM, nothing to do).
    pub was: Option<VmState>,
    pub steps: Vec<String>,
}

/// Stop the VM: unplug hot-plugged devices, `system_powerdown` (waiting up to
/// `powerdown`), `quit`, then kill the process group; remove the runtime directory.
/// Idempotent: a VM that does not exist is already down.
pub async fn down(env: &Env, name: &str, powerdown: Duration) -> Result<DownReport, VmError> {
    let dir = env.run_dir(name);
    let mut report = DownReport {
        name: name.into(),
        was: None,
        steps: Vec::new(),
    };
    if !dir.exists() {
        report.steps.push("not running".into());
        return Ok(report);
    }
    let mut rec = match load(env, name) {
        Ok(r) => r,
        Err(_) => {
            // A directory without a readable state: nothing we started can be found.
            std::fs::remove_dir_all(&dir).map_err(io_err(name, "removing", &dir))?;
            report
                .steps
                .push("removed a runtime directory without state".into());
            return Ok(report);
        }
    };
    report.was = Some(rec.state);
    if rec.state != VmState::Stopping {
        rec.transition(VmState::Stopping)?;
    }
    save(&rec)?;
    if qemu_alive(&rec) {
        match Qmp::connect(&rec.qmp_socket, Duration::from_secs(5)).await {
            Ok(qmp) => {
                for p in rec.plugged.clone().iter().filter(|p| !p.cold) {
                    match plug::unplug(env, &mut rec, &qmp, &p.id).await {
                        Ok(_) => report.steps.push(format!("unplugged {} ({})", p.id, p.gpu)),
                        Err(e) => report.steps.push(format!("unplug {} failed: {e}", p.id)),
                    }
                }
                if !powerdown.is_zero() && rec.ready == Ready::Agent {
                    if let Some(t) = rec.agent.clone() {
                        // The agent powers the guest off cleanly; with -no-reboot QEMU exits.
                        let asked = tokio::task::spawn_blocking(move || {
                            AgentClient::connect(&t, Duration::from_secs(3))
                                .and_then(|c| c.shutdown(PowerAction::Poweroff))
                        })
                        .await;
                        if matches!(asked, Ok(Ok(()))) && qmp.wait_closed(powerdown).await {
                            report.steps.push("guest powered off (agent)".into());
                        }
                    }
                }
                if !powerdown.is_zero() && !qmp.is_closed() {
                    let _ = qmp.execute_raw("system_powerdown", None).await;
                    if qmp.wait_closed(powerdown).await {
                        report.steps.push("guest powered off".into());
                    } else {
                        report
                            .steps
                            .push(format!("no power-off within {}s", powerdown.as_secs_f64()));
                    }
                }
                if !qmp.is_closed() {
                    let _ = qmp.quit().await;
                    if qmp.wait_closed(Duration::from_secs(5)).await {
                        report.steps.push("quit".into());
                    }
                }
            }
            Err(e) => report.steps.push(format!("QMP unreachable ({e}); killing")),
        }
    }
    let left = process::kill_group(rec.pgid, &processes(&rec), Duration::from_secs(3));
    if !left.is_empty() {
        return Err(VmError::Leftover {
            name: name.into(),
            pids: left,
        });
    }
    report.steps.push("no process left".into());
    rec.transition(VmState::Stopped)?;
    std::fs::remove_dir_all(&dir).map_err(io_err(name, "removing", &dir))?;
    report.steps.push(format!("removed {}", dir.display()));
    Ok(report)
}

/// `vm status` / `vm list` rows.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    pub name: String,
    pub state: VmState,
    pub pid: Option<u32>,
    pub accel: Accel,
    pub qemu_version: Option<String>,
    pub uptime_seconds: Option<f64>,
    pub boot_seconds: Option<f64>,
    pub qmp_socket: PathBuf,
    pub agent: Option<vsock::AgentTransport>,
    pub run_status: Option<String>,
    pub ports: Vec<ports::PortPlan>,
    pub plugged: Vec<state::Plugged>,
    pub warnings: Vec<String>,
    /// Tail of QEMU's stderr and the serial log for a crashed VM.
    pub crash: Option<String>,
}

pub async fn status(env: &Env, name: &str) -> Result<Status, VmError> {
    let rec = load(env, name)?;
    let alive = qemu_alive(&rec);
    let mut run_status = None;
    if alive {
        if let Ok(q) = Qmp::connect(&rec.qmp_socket, Duration::from_secs(2)).await {
            run_status = q
                .run(&qapi_qmp::query_status {})
                .await
                .ok()
                .map(|s| format!("{:?}", s.status).to_lowercase());
        }
    }
    Ok(Status {
        name: rec.name.clone(),
        state: rec.state,
        pid: rec.pid,
        accel: rec.accel,
        qemu_version: rec.qemu_version.clone(),
        uptime_seconds: rec.started_at.filter(|_| alive).map(|s| now_unix() - s),
        boot_seconds: rec.boot_seconds,
        qmp_socket: rec.qmp_socket.clone(),
        agent: rec.agent.clone(),
        run_status,
        ports: rec.ports.clone(),
        plugged: rec.plugged.clone(),
        warnings: rec.warnings.clone(),
        crash: (rec.state == VmState::Crashed).then(|| crashed(&rec).to_string()),
    })
}

/// Every VM under the runtime base (states refreshed).
pub fn list(env: &Env) -> Vec<VmRecord> {
    state::list_records(&env.base)
        .into_iter()
        .filter_map(|r| load(env, &r.name).ok())
        .collect()
}

/// Tail of the serial log, for messages.
pub fn serial_tail(rec: &VmRecord, n: usize) -> String {
    evidence::tail(
        &String::from_utf8_lossy(&std::fs::read(&rec.serial_log).unwrap_or_default()),
        n,
    )
}

/// The agent transport and plugged devices of a VM, for `vfioctl validate --vm NAME` and
/// `regress`: read from its state file.
pub fn agent_target(
    env: &Env,
    name: &str,
) -> Result<(vsock::AgentTransport, Vec<state::Plugged>), VmError> {
    let rec = load(env, name)?;
    if rec.state == VmState::Crashed {
        return Err(crashed(&rec));
    }
    let t = rec
        .agent
        .clone()
        .ok_or(VmError::NoAgent { name: name.into() })?;
    Ok((t, rec.plugged.clone()))
}
