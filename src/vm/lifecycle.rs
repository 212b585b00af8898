//! `vm up`, `vm down`, `vm status`, `vm list`: the VM lifecycle on top of the state
//! machine in [`super::state`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use vfioctl_common::error::chain;
use vfioctl_common::proto::Token;
use vfioctl_common::PciDevice;

use super::accel::{self, Accel};
use super::argv::{qemu_argv, Launch};
use super::devices::PlugSpec;
use super::error::VmError;
use super::evidence;
use super::guest;
use super::liveness;
use super::plug;
use super::ports::{self, DeviceBars, PhysBits};
use super::process;
use super::profile::{GpuSpec, PlugWhen, Profile, Ready};
use super::rundir::{LockError, NameLock, Ownership, RunDir, VmName};
use super::state::{self, Starter, VmRecord, VmState};
use super::vsock::{self, VsockBackend};
use crate::agent::AgentClient;
use crate::interrupt::Signal;
use crate::qmp::{Qmp, QmpError};
use vfioctl_common::proto::PowerAction;

pub use super::liveness::{crashed, processes, qemu_alive, qemu_marker};
pub use super::rundir::Env;

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn io_err(
    name: &VmName,
    what: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> VmError {
    let (name, path) = (name.to_string(), path.to_path_buf());
    move |source| VmError::Io {
        name,
        what,
        path,
        source,
    }
}

/// Take the per-name lock for `op`, or say who holds it.
pub fn lock(rd: &RunDir, op: &str) -> Result<NameLock, VmError> {
    rd.lock(op).map_err(|e| match e {
        LockError::Busy { holder } => VmError::Busy {
            name: rd.name().to_string(),
            holder,
        },
        LockError::Io(path, source) => VmError::Io {
            name: rd.name().to_string(),
            what: "opening the lock",
            path,
            source,
        },
    })
}

/// The run directory of `name`, which must be one vfioctl made.
fn our_dir(env: &Env, name: &VmName) -> Result<RunDir, VmError> {
    let rd = env.run_dir(name);
    match rd.ownership() {
        Ownership::Ours => Ok(rd),
        Ownership::Absent => Err(VmError::NoSuchVm {
            name: name.to_string(),
            run_dir: rd.path().into(),
        }),
        Ownership::Foreign(reason) => Err(VmError::NotOurs {
            name: name.to_string(),
            path: rd.path().into(),
            reason,
        }),
    }
}

/// Load a VM's record and bring its state up to date: a QEMU that died on its own is
/// `crashed`, a VM whose `vm up` died before it was ready `orphaned`, from now on.
pub fn load(env: &Env, name: &VmName) -> Result<VmRecord, VmError> {
    let rd = our_dir(env, name)?;
    let mut rec = VmRecord::load(&rd).map_err(io_err(name, "reading state", &rd.state_file()))?;
    if liveness::refresh(&mut rec)? {
        rec.save()?;
    }
    Ok(rec)
}

/// The profile's VFIO backend choice, resolved against the host kernel and QEMU. The
/// QEMU binary is probed only when the kernel offers iommufd (or it was asked for).
fn vfio_backend(
    env: &Env,
    profile: &Profile,
) -> Result<crate::shared::VfioBackend, crate::shared::SharedError> {
    use crate::shared::{backend, BackendChoice, BackendFacts};
    let kernel = BackendFacts::gather(&env.root, None);
    let facts = match profile.vfio_backend {
        BackendChoice::Group => kernel,
        BackendChoice::Auto if !kernel.kernel_iommufd() => kernel,
        _ => BackendFacts {
            qemu_iommufd: Some(backend::qemu_has_iommufd(&find_program(&profile.qemu))),
            ..kernel
        },
    };
    backend::choose(profile.vfio_backend, &facts)
}

/// Host devices' BARs for sizing.
fn device_bars(env: &Env, name: &str, gpu: &GpuSpec) -> Result<DeviceBars, VmError> {
    match gpu {
        GpuSpec::Emulated { size } => Ok(DeviceBars::emulated(*size)),
        GpuSpec::Mdev { uuid } => Ok(crate::shared::mdev::device_bars(uuid)),
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
    let name = VmName::new(&profile.name)?;
    let rd = env.run_dir(&name);
    let longest = rd.longest_socket_path();
    if longest > 107 {
        return Err(VmError::SocketPathTooLong {
            name: name.to_string(),
            path: rd.vhost_socket(),
            len: longest,
        });
    }
    let probe = accel::probe(
        &env.root,
        &profile.qemu,
        profile.kernel.as_deref(),
        profile.accel,
    )?;
    let mut rec = VmRecord::new(&rd);
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
        &rd,
        &used,
    )
    .map_err(|e| VmError::Vsock {
        name: name.to_string(),
        reason: e.to_string(),
    })?;
    let gpus = profile.gpus()?;
    let bars = gpus
        .iter()
        .map(|(g, _)| device_bars(env, name.as_str(), g))
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
    let agent = backend.transport(profile.agent_port);
    let vfio_backend = vfio_backend(env, profile).map_err(|e| VmError::Backend {
        name: name.to_string(),
        source: Box::new(e),
    })?;
    let launch = Launch {
        vfio_backend,
        name: name.to_string(),
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
        ovmf_vars: rd.ovmf_vars(),
        hotplug: profile.hotplug,
        plan,
        vsock: backend.clone(),
        cold,
        qmp_socket: rd.qmp_socket(),
        serial_log: rd.serial_log(),
        pid_file: rd.qemu_pid(),
        agent_token: agent.as_ref().map(|_| rd.token_file()),
        agent_exec: profile.agent_exec,
        extra: profile.qemu_args.clone(),
    };
    rec.argv = qemu_argv(&launch);
    rec.vfio_backend = vfio_backend;
    rec.accel = probe.accel;
    rec.ready = profile.ready.clone();
    rec.firmware = profile.firmware;
    rec.hotplug = profile.hotplug;
    rec.ports = launch.plan.ports.clone();
    rec.vsock = backend.clone();
    rec.agent = agent;
    Ok((launch, rec))
}

/// Start the VM and return once the guest is ready and the declared devices are plugged
/// and confirmed. On failure the processes are gone and the runtime directory is kept
/// (state `failed`, logs inside) until `vm down`.
pub async fn up(env: &Env, profile: &Profile) -> Result<VmRecord, VmError> {
    up_until(env, profile, std::future::pending()).await
}

/// [`up`] that gives up when `stop` completes (SIGINT/SIGTERM in the command line): the
/// processes it started are killed and reaped, the state says `failed`, and the error is
/// [`VmError::Interrupted`] (exit 130/143).
///
/// One `vm up`, `down`, `plug` or `unplug` per name at a time: a second `vm up` of the
/// same name fails at once with [`VmError::Busy`] naming the first.
pub async fn up_until(
    env: &Env,
    profile: &Profile,
    stop: impl Future<Output = Signal>,
) -> Result<VmRecord, VmError> {
    up_observed(env, profile, stop, &|_| {}).await
}

/// Where a booting VM is, as `vm up` observes it (for progress; the record keeps the
/// facts). Reported in this order; `Firmware` and `Kernel` only when seen (a kernel
/// that prints nothing on the serial console goes from `Qemu` to `Agent`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BootPhase {
    /// QEMU runs and answered on QMP.
    Qemu {
        /// QEMU's process id.
        pid: u32,
        /// QEMU's version from its QMP greeting.
        version: String,
    },
    /// The guest firmware runs (until the kernel prints).
    Firmware {
        /// Which firmware.
        firmware: ports::Firmware,
    },
    /// The kernel printed its banner on the serial console (`Linux version`).
    Kernel,
    /// The kernel started userspace; waiting for the guest agent (or the serial marker).
    Agent {
        /// What readiness waits for (the agent, or the serial marker).
        waiting_for: String,
    },
    /// Confirming a cold-plugged device or hot plugging one.
    Plug {
        /// The device's label.
        gpu: String,
    },
}

impl std::fmt::Display for BootPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootPhase::Qemu { pid, version } => write!(f, "QEMU {version} started (pid {pid})"),
            BootPhase::Firmware { firmware } => write!(f, "firmware ({firmware})"),
            BootPhase::Kernel => f.write_str("kernel booting"),
            BootPhase::Agent { waiting_for } => write!(f, "waiting for {waiting_for}"),
            BootPhase::Plug { gpu } => write!(f, "plugging {gpu}"),
        }
    }
}

/// The serial console lines that mark a phase: the kernel's banner, then the start of
/// userspace (`Run /init as init process`, or `Freeing unused kernel image` before it).
const KERNEL_BANNER: &str = "Linux version ";
const USERSPACE: [&str; 2] = ["Run /init as init process", "Freeing unused kernel"];

/// Watch the serial log for the kernel and userspace phases (never returns: run it
/// beside the wait). `reported` counts the phases already reported (0: none, 1: kernel,
/// 2: userspace).
async fn watch_serial(
    log: &Path,
    waiting_for: String,
    observe: &(dyn Fn(BootPhase) + Send + Sync),
) -> std::convert::Infallible {
    use std::io::{Read, Seek, SeekFrom};
    let mut reported = 0u8;
    let mut offset = 0u64;
    loop {
        if reported < 2 {
            // Read only what is new, with an overlap for a marker split across reads.
            let from = offset.saturating_sub(64);
            let mut text = Vec::new();
            if let Ok(mut f) = std::fs::File::open(log) {
                if f.seek(SeekFrom::Start(from)).is_ok() {
                    let _ = f.read_to_end(&mut text);
                }
            }
            offset = offset.max(from + text.len() as u64);
            let new = String::from_utf8_lossy(&text);
            if reported == 0 && new.contains(KERNEL_BANNER) {
                reported = 1;
                observe(BootPhase::Kernel);
            }
            if reported >= 1 && USERSPACE.iter().any(|m| new.contains(m)) {
                reported = 2;
                observe(BootPhase::Agent {
                    waiting_for: waiting_for.clone(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// [`up_until`], reporting each [`BootPhase`] to `observe` as it is reached (the command
/// line draws them as progress; `observe` must return quickly).
pub async fn up_observed(
    env: &Env,
    profile: &Profile,
    stop: impl Future<Output = Signal>,
    observe: &(dyn Fn(BootPhase) + Send + Sync),
) -> Result<VmRecord, VmError> {
    profile.validate()?;
    let name = VmName::new(&profile.name)?;
    let rd = env.run_dir(&name);
    let _lock = lock(&rd, "vm up")?;
    match rd.ownership() {
        Ownership::Absent => {}
        Ownership::Foreign(reason) => {
            return Err(VmError::NotOurs {
                name: name.to_string(),
                path: rd.path().into(),
                reason,
            })
        }
        Ownership::Ours => match load(env, &name) {
            Ok(r) if qemu_alive(&r) => {
                return Err(VmError::AlreadyRunning {
                    name: name.to_string(),
                    state: r.state.to_string(),
                    pid: r.pid.unwrap_or(0),
                })
            }
            // A leftover from a crash or a failed start: clean it up first.
            _ => {
                down_locked(env, &rd, Duration::ZERO).await?;
            }
        },
    }
    let (launch, mut rec) = prepare(env, profile)?;
    for w in &rec.warnings {
        // Carried in the record (the CLI prints them); logged for library users at info.
        tracing::info!("{w}");
    }
    rd.create().map_err(io_err(&name, "creating", rd.path()))?;
    rec.starter = Starter::me();
    let token =
        rd.write_token()
            .map_err(io_err(&name, "writing the agent secret", &rd.token_file()))?;
    rec.save()?;
    let booted = tokio::select! {
        r = boot(env, profile, &launch, &mut rec, &token, observe) => r,
        signal = stop => Err(VmError::Interrupted { name: name.to_string(), op: "vm up", signal }),
    };
    match booted {
        Ok(()) => {
            rec.starter = None;
            rec.save()?;
            Ok(rec)
        }
        Err(e) => {
            let left = process::kill_group(rec.pgid, &processes(&rec), Duration::from_secs(2));
            if !left.is_empty() {
                tracing::error!("vm {name}: processes {left:?} survived SIGKILL");
            }
            if rec.state != VmState::Crashed {
                let _ = rec.transition(VmState::Failed);
            }
            rec.starter = None;
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
    token: &Token,
    observe: &(dyn Fn(BootPhase) + Send + Sync),
) -> Result<(), VmError> {
    let name = rec.name.to_string();
    let rd = rec.rundir();
    let start = Instant::now();
    let deadline = start + Duration::from_secs(profile.boot_timeout);
    if launch.firmware == ports::Firmware::Ovmf {
        std::fs::copy(&profile.ovmf_vars, &launch.ovmf_vars).map_err(io_err(
            &rec.name,
            "copying OVMF vars",
            &profile.ovmf_vars,
        ))?;
    }
    // QEMU creates the serial log with the umask's mode; made first, it keeps 0600.
    {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&rec.serial_log)
            .map_err(io_err(&rec.name, "creating", &rec.serial_log))?;
    }
    rec.transition(VmState::Booting)?;
    let mut pgid = 0;
    if let Some(argv) = launch
        .vsock
        .backend_argv(&find_program(&profile.vhost_device_vsock))
    {
        let log = rd.vsock_log();
        let pid = process::spawn(&argv, 0, &log).map_err(|source| VmError::Spawn {
            name: name.clone(),
            program: argv[0].clone(),
            source,
        })?;
        rec.vsock_backend_pid = Some(pid);
        pgid = pid as i32;
        rec.pgid = Some(pgid);
        rec.save()?;
        let sock = rd.vhost_socket();
        // The backend creates its socket before QEMU may connect to it.
        while !sock.exists() {
            if !liveness::backend_alive(rec) {
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
        // vhost-device-vsock makes its sockets with the umask's mode: only root (and
        // QEMU, which runs as the same user) may connect to the guest through them.
        private_socket(&sock);
        private_socket(&rd.vsock_uds());
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
    rec.save()?;

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
                    return Err(VmError::Qmp {
                        name,
                        what: format!("connecting to {}", rec.qmp_socket.display()),
                        source: e,
                    });
                }
            }
        }
    };
    private_socket(&rec.qmp_socket);
    let v = &qmp.greeting().version;
    rec.qemu_version = Some(format!("{}.{}.{}", v.major, v.minor, v.micro));
    rec.save()?;
    observe(BootPhase::Qemu {
        pid,
        version: rec.qemu_version.clone().unwrap_or_default(),
    });
    observe(BootPhase::Firmware {
        firmware: launch.firmware,
    });

    let waiting_for = match (&profile.ready, &rec.agent) {
        (Ready::Serial(m), _) => format!("the serial marker {m:?}"),
        (Ready::Agent, Some(t)) => format!("the guest agent ({t})"),
        (Ready::Agent, None) => "the guest agent".into(),
    };
    let serial_log = rec.serial_log.clone();
    tokio::select! {
        r = wait_ready(profile, rec, token, deadline, start) => r?,
        never = watch_serial(&serial_log, waiting_for, observe) => match never {},
    }
    rec.boot_seconds = Some(start.elapsed().as_secs_f64());
    rec.transition(VmState::Ready)?;
    rec.save()?;

    // Cold-plugged devices were enumerated at boot: confirm them in the guest too.
    for c in &launch.cold {
        observe(BootPhase::Plug { gpu: c.gpu.label() });
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
        rec.save()?;
    }
    // Hot plug what the profile asks for, each onto the port sized for it.
    for (i, (gpu, when)) in profile.gpus()?.into_iter().enumerate() {
        if when == PlugWhen::Hot {
            observe(BootPhase::Plug { gpu: gpu.label() });
            let port = rec.ports[i].id.clone();
            plug::plug(env, rec, &qmp, &gpu, Some(&port)).await?;
        }
    }
    Ok(())
}

/// Narrow a unix socket QEMU or vhost-device-vsock made to 0600 (they follow the umask).
/// The run directory is 0700 already; this is the second wall.
fn private_socket(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if m.file_type().is_socket() {
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
    }
}

async fn wait_ready(
    profile: &Profile,
    rec: &mut VmRecord,
    token: &Token,
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
                    name: rec.name.to_string(),
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
                    name: rec.name.to_string(),
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
                let (tt, tok) = (t.clone(), token.clone());
                let r = tokio::task::spawn_blocking(move || AgentClient::connect(&tt, &tok, slice))
                    .await
                    .expect("agent connect task");
                match r {
                    Ok(c) => {
                        rec.guest = Some(c.hello_info().clone());
                        return Ok(());
                    }
                    // Not our protocol, or the secret refused: waiting will not help.
                    Err(
                        e @ (crate::agent::ClientError::Agent { .. }
                        | crate::agent::ClientError::Frame { .. }
                        | crate::agent::ClientError::Protocol { .. }),
                    ) => {
                        return Err(VmError::Agent {
                            name: rec.name.to_string(),
                            source: Box::new(e),
                        })
                    }
                    Err(e) => {
                        if !qemu_alive(rec) {
                            let _ = rec.transition(VmState::Crashed);
                            return Err(crashed(rec));
                        }
                        if Instant::now() >= deadline {
                            return Err(VmError::BootTimeout {
                                name: rec.name.to_string(),
                                secs: deadline.duration_since(start).as_secs(),
                                what: format!("the guest agent at {t} ({})", chain(&e)),
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
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct DownReport {
    /// The VM's name.
    pub name: String,
    /// State before `down` (`None`: there was no such VM, nothing to do).
    pub was: Option<VmState>,
    /// What was done, in order (`unplugged gpu0 (...)`, `guest powered off`, `quit`, ...).
    pub steps: Vec<String>,
}

/// Stop the VM: unplug hot-plugged devices, `system_powerdown` (waiting up to
/// `powerdown`), `quit`, then kill the process group; remove the runtime directory.
/// Idempotent: a VM that does not exist is already down. Only a run directory vfioctl
/// made (its marker, directly under the base, not a symlink) is ever removed; anything
/// else at that path is refused with [`VmError::NotOurs`].
pub async fn down(env: &Env, name: &VmName, powerdown: Duration) -> Result<DownReport, VmError> {
    let rd = env.run_dir(name);
    match rd.ownership() {
        Ownership::Absent => {
            return Ok(DownReport {
                name: name.to_string(),
                was: None,
                steps: vec!["not running".into()],
            })
        }
        Ownership::Foreign(reason) => {
            return Err(VmError::NotOurs {
                name: name.to_string(),
                path: rd.path().into(),
                reason,
            })
        }
        Ownership::Ours => {}
    }
    let _lock = lock(&rd, "vm down")?;
    down_locked(env, &rd, powerdown).await
}

/// [`down`] with the name's lock already held.
async fn down_locked(env: &Env, rd: &RunDir, powerdown: Duration) -> Result<DownReport, VmError> {
    let name = rd.name();
    let mut report = DownReport {
        name: name.to_string(),
        was: None,
        steps: Vec::new(),
    };
    let remove = |report: &mut DownReport| -> Result<(), VmError> {
        match rd.remove() {
            Ok(_) => {
                report
                    .steps
                    .push(format!("removed {}", rd.path().display()));
                Ok(())
            }
            Err(o) => Err(VmError::NotOurs {
                name: name.to_string(),
                path: rd.path().into(),
                reason: match o {
                    Ownership::Foreign(r) => r,
                    Ownership::Absent | Ownership::Ours => {
                        "it changed while vfioctl stopped the VM".into()
                    }
                },
            }),
        }
    };
    let mut rec = match load(env, name) {
        Ok(r) => r,
        Err(e) => {
            // Our directory without a readable state: nothing we started can be found.
            report
                .steps
                .push(format!("no readable state ({})", chain(&e)));
            remove(&mut report)?;
            return Ok(report);
        }
    };
    report.was = Some(rec.state);
    if !matches!(rec.state, VmState::Stopping | VmState::Stopped) {
        rec.transition(VmState::Stopping)?;
        rec.save()?;
    }
    if qemu_alive(&rec) {
        match Qmp::connect(&rec.qmp_socket, Duration::from_secs(5)).await {
            Ok(qmp) => {
                for p in rec.plugged.clone().iter().filter(|p| !p.cold) {
                    match plug::unplug(env, &mut rec, &qmp, &p.id).await {
                        Ok(_) => report.steps.push(format!("unplugged {} ({})", p.id, p.gpu)),
                        Err(e) => {
                            report
                                .steps
                                .push(format!("unplug {} failed: {}", p.id, chain(&e)))
                        }
                    }
                }
                if !powerdown.is_zero() && rec.ready == Ready::Agent {
                    if let Ok((t, token)) = guest::access(&rec) {
                        // The agent powers the guest off cleanly; with -no-reboot QEMU exits.
                        let asked = tokio::task::spawn_blocking(move || {
                            AgentClient::connect(&t, &token, Duration::from_secs(3))
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
            Err(e) => report
                .steps
                .push(format!("QMP unreachable ({}); killing", chain(&e))),
        }
    }
    let left = process::kill_group(rec.pgid, &processes(&rec), Duration::from_secs(3));
    if !left.is_empty() {
        return Err(VmError::Leftover {
            name: name.to_string(),
            pids: left,
        });
    }
    report.steps.push("no process left".into());
    if rec.state != VmState::Stopped {
        rec.transition(VmState::Stopped)?;
    }
    remove(&mut report)?;
    Ok(report)
}

/// What QMP says about a running VM: `vm status` does not report a VM `ready` on the word
/// of its state file alone.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Health {
    /// QEMU answered `query-status`: its run state (`running`, `paused`, ...).
    Answering {
        /// QEMU's run state, lower case.
        run_status: String,
    },
    /// QEMU's process is stopped (SIGSTOP or a debugger): it runs nothing, answers nothing.
    Frozen,
    /// The QMP socket is gone or refuses connections.
    QmpDead {
        /// The connection error.
        reason: String,
    },
    /// QMP accepted the connection but did not greet or answer in time.
    QmpSilent {
        /// What timed out or failed.
        reason: String,
    },
    /// No QEMU process.
    NotRunning,
}

impl Health {
    /// A VM in this health can be used.
    pub fn usable(&self) -> bool {
        matches!(self, Health::Answering { run_status } if run_status == "running")
    }
}

impl std::fmt::Display for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Health::Answering { run_status } => write!(f, "QMP answers: {run_status}"),
            Health::Frozen => f.write_str("QEMU is stopped (SIGSTOP): frozen"),
            Health::QmpDead { reason } => write!(f, "QMP socket dead: {reason}"),
            Health::QmpSilent { reason } => write!(f, "QMP does not answer: {reason}"),
            Health::NotRunning => f.write_str("no QEMU process"),
        }
    }
}

/// Ask QEMU how it is, within `limit` for the connection and again for the answer.
pub async fn health(rec: &VmRecord, limit: Duration) -> Health {
    if !qemu_alive(rec) {
        return Health::NotRunning;
    }
    if rec.pid.is_some_and(process::stopped) {
        return Health::Frozen;
    }
    let q = match tokio::time::timeout(limit * 2, Qmp::connect(&rec.qmp_socket, limit)).await {
        Err(_) => {
            return Health::QmpSilent {
                reason: format!("no greeting within {}s", (limit * 2).as_secs_f64()),
            }
        }
        Ok(Err(e @ QmpError::Connect { .. })) => return Health::QmpDead { reason: chain(&e) },
        Ok(Err(e)) => return Health::QmpSilent { reason: chain(&e) },
        Ok(Ok(q)) => q,
    };
    match q
        .execute_raw_timeout("query-status", None, limit)
        .await
        .and_then(|v| {
            serde_json::from_value::<qapi_qmp::StatusInfo>(v.clone()).map_err(|source| {
                QmpError::Decode {
                    command: "query-status".into(),
                    reply: v.to_string(),
                    source,
                }
            })
        }) {
        Ok(s) => Health::Answering {
            run_status: format!("{:?}", s.status).to_lowercase(),
        },
        Err(e) => Health::QmpSilent { reason: chain(&e) },
    }
}

/// `vm status` / `vm list` rows.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Status {
    /// The VM's name.
    pub name: String,
    /// Its lifecycle state (refreshed: a dead QEMU shows as crashed).
    pub state: VmState,
    /// QEMU's pid.
    pub pid: Option<u32>,
    /// The accelerator QEMU runs with.
    pub accel: Accel,
    /// QEMU's version (`9.0.2`).
    pub qemu_version: Option<String>,
    /// Seconds since QEMU started, while it runs.
    pub uptime_seconds: Option<f64>,
    /// Seconds from QEMU start to guest ready.
    pub boot_seconds: Option<f64>,
    /// QEMU's QMP socket.
    pub qmp_socket: PathBuf,
    /// How to reach the guest agent; `None` without vsock.
    pub agent: Option<vsock::AgentTransport>,
    /// QEMU's run state from `query-status` when it answered.
    pub run_status: Option<String>,
    /// What QMP says now (a `ready` VM that is frozen or has lost its QMP socket is not
    /// usable).
    pub health: Health,
    /// The VM's GPU root ports.
    pub ports: Vec<ports::PortPlan>,
    /// The devices vfioctl plugged into it.
    pub plugged: Vec<state::Plugged>,
    /// Warnings from its start-up.
    pub warnings: Vec<String>,
    /// Tail of QEMU's stderr and the serial log for a crashed VM.
    pub crash: Option<String>,
    /// QEMU's user-created objects (`qom-list /objects`: the iommufd backend, memory
    /// backends, ...) when QMP answers: what QEMU itself says it runs with.
    pub objects: Vec<QomObject>,
}

/// One of QEMU's user-created objects, as `qom-list /objects` names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct QomObject {
    /// The object's id (`iommufd0`).
    pub id: String,
    /// Its QOM type (`iommufd`, `memory-backend-ram`).
    pub qom_type: String,
}

/// `qom-list /objects` reply entries (pure): `child<TYPE>` properties are objects.
pub fn qom_objects(reply: &serde_json::Value) -> Vec<QomObject> {
    let mut v: Vec<QomObject> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let id = p.get("name")?.as_str()?;
            let t = p.get("type")?.as_str()?;
            let t = t.strip_prefix("child<")?.strip_suffix('>')?;
            Some(QomObject {
                id: id.to_string(),
                qom_type: t.to_string(),
            })
        })
        .collect();
    v.sort_by(|a, b| a.id.cmp(&b.id));
    v
}

/// QEMU's user-created objects (empty when QMP does not answer within `limit`).
async fn objects(rec: &VmRecord, limit: Duration) -> Vec<QomObject> {
    let Ok(Ok(q)) = tokio::time::timeout(limit * 2, Qmp::connect(&rec.qmp_socket, limit)).await
    else {
        return Vec::new();
    };
    q.execute_raw_timeout(
        "qom-list",
        Some(serde_json::json!({ "path": "/objects" })),
        limit,
    )
    .await
    .map(|v| qom_objects(&v))
    .unwrap_or_default()
}

impl Status {
    /// The VM is as it should be: a live VM answers and runs, a stopped one is not
    /// crashed, orphaned or failed.
    pub fn healthy(&self) -> bool {
        match self.state {
            VmState::Crashed | VmState::Orphaned | VmState::Failed => false,
            s if s.expects_running() => self.health.usable(),
            _ => true,
        }
    }
}

/// `vm status`: the VM's record (state refreshed) and what QMP says now.
pub async fn status(env: &Env, name: &VmName) -> Result<Status, VmError> {
    let rec = load(env, name)?;
    let alive = qemu_alive(&rec);
    let health = health(&rec, Duration::from_secs(2)).await;
    let run_status = match &health {
        Health::Answering { run_status } => Some(run_status.clone()),
        _ => None,
    };
    let objects = if run_status.is_some() {
        objects(&rec, Duration::from_secs(2)).await
    } else {
        Vec::new()
    };
    Ok(Status {
        name: rec.name.to_string(),
        state: rec.state,
        pid: rec.pid,
        accel: rec.accel,
        qemu_version: rec.qemu_version.clone(),
        uptime_seconds: rec.started_at.filter(|_| alive).map(|s| now_unix() - s),
        boot_seconds: rec.boot_seconds,
        qmp_socket: rec.qmp_socket.clone(),
        agent: rec.agent.clone(),
        run_status,
        health,
        ports: rec.ports.clone(),
        plugged: rec.plugged.clone(),
        warnings: rec.warnings.clone(),
        crash: (rec.state == VmState::Crashed).then(|| crashed(&rec).to_string()),
        objects,
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

/// The agent transport, its secret and the plugged devices of a VM, for `vfioctl
/// validate --vm NAME` and `regress`: read from its run directory.
pub fn agent_target(
    env: &Env,
    name: &VmName,
) -> Result<(vsock::AgentTransport, Token, Vec<state::Plugged>), VmError> {
    let rec = load(env, name)?;
    if rec.state == VmState::Crashed {
        return Err(crashed(&rec));
    }
    let (t, token) = guest::access(&rec)?;
    Ok((t, token, rec.plugged.clone()))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    #[test]
    fn qom_objects_are_the_child_properties_of_objects() {
        // QEMU 10's reply with -object iommufd,id=iommufd0
        let reply = serde_json::json!([
            {"name": "type", "type": "string"},
            {"name": "iommufd0", "type": "child<iommufd>"},
            {"name": "pc.ram", "type": "child<memory-backend-ram>"}
        ]);
        assert_eq!(
            super::qom_objects(&reply),
            [
                super::QomObject {
                    id: "iommufd0".into(),
                    qom_type: "iommufd".into()
                },
                super::QomObject {
                    id: "pc.ram".into(),
                    qom_type: "memory-backend-ram".into()
                }
            ]
        );
        assert!(super::qom_objects(&serde_json::json!({})).is_empty());
    }

    use super::*;

    #[tokio::test]
    async fn serial_log_phases_are_reported_once_in_order() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("serial.log");
        std::fs::write(&log, "SeaBIOS (version 1.16)\n").unwrap();
        let seen = Mutex::new(Vec::new());
        let observe = |p: BootPhase| seen.lock().unwrap().push(p);
        let writer = async {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let mut t = std::fs::read_to_string(&log).unwrap();
            t.push_str("[    0.000000] Linux version 6.1.0 (debian)\n");
            std::fs::write(&log, &t).unwrap();
            tokio::time::sleep(Duration::from_millis(250)).await;
            t.push_str("[    1.2] Linux version again\n[    1.3] Run /init as init process\n");
            std::fs::write(&log, &t).unwrap();
            tokio::time::sleep(Duration::from_millis(350)).await;
        };
        tokio::select! {
            _ = writer => {}
            never = watch_serial(&log, "the guest agent".into(), &observe) => match never {},
        }
        assert_eq!(
            *seen.lock().unwrap(),
            [
                BootPhase::Kernel,
                BootPhase::Agent {
                    waiting_for: "the guest agent".into()
                }
            ]
        );
        assert_eq!(
            BootPhase::Qemu {
                pid: 7,
                version: "8.2.2".into()
            }
            .to_string(),
            "QEMU 8.2.2 started (pid 7)"
        );
    }
}
