//! The VM lifecycle as an explicit state machine, and the state file that other commands
//! (`vm status`, `vm plug`, `validate`, `regress`) load to find a VM's QMP socket and
//! agent transport. The run directory's layout is [`super::rundir`]'s.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vfioctl_common::StateMachine;

use super::accel::Accel;
use super::error::VmError;
use super::ports::{Firmware, PortPlan};
use super::profile::HotplugMode;
use super::rundir::{RunDir, VmName};
use super::vsock::{AgentTransport, VsockBackend};

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// Runtime directory made, nothing started.
    Created,
    /// QEMU started, guest not ready yet.
    Booting,
    /// The guest answered (agent, or the serial marker).
    Ready,
    /// At least one device hot- or cold-plugged and confirmed in the guest.
    DevicePlugged,
    /// `vm down` in progress.
    Stopping,
    /// QEMU and its helpers are gone.
    Stopped,
    /// Start-up failed (boot timeout, QEMU refused the command line); processes killed.
    Failed,
    /// QEMU died on its own.
    Crashed,
    /// The `vm up` that was starting it died (killed) before the guest was ready: nobody
    /// finishes the start; QEMU may still run. `vm down` cleans it up.
    Orphaned,
}

impl VmState {
    /// Every state, in lifecycle order.
    pub const ALL: [VmState; 9] = [
        VmState::Created,
        VmState::Booting,
        VmState::Ready,
        VmState::DevicePlugged,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Failed,
        VmState::Crashed,
        VmState::Orphaned,
    ];

    /// QEMU should be running in this state.
    pub fn expects_running(self) -> bool {
        use VmState::*;
        match self {
            Booting | Ready | DevicePlugged | Stopping => true,
            Created | Stopped | Failed | Crashed | Orphaned => false,
        }
    }

    /// A `vm up` is (or was) still working on the VM: its death leaves the VM orphaned.
    pub fn starting(self) -> bool {
        use VmState::*;
        match self {
            Created | Booting => true,
            Ready | DevicePlugged | Stopping | Stopped | Failed | Crashed | Orphaned => false,
        }
    }
}

/// The transitions the code may make; everything else is a bug and is refused.
impl StateMachine for VmState {
    const NAME: &'static str = "VM lifecycle";

    /// Where each state may go: an exhaustive match, so a new state does not compile until
    /// its transitions are decided.
    fn successors(self) -> &'static [VmState] {
        use VmState::*;
        match self {
            Created => &[Booting, Failed, Stopping, Orphaned],
            // DevicePlugged: cold-plugged devices confirmed with readiness.
            Booting => &[Ready, DevicePlugged, Failed, Crashed, Stopping, Orphaned],
            // Failed: `vm up --gpu`, the plug after boot failed.
            Ready => &[DevicePlugged, Stopping, Crashed, Failed],
            // Ready: the last device unplugged; Failed: a second declared device failed
            // during `vm up`.
            DevicePlugged => &[Ready, Stopping, Crashed, Failed],
            // Crashed: QEMU died instead of stopping; still cleaned up.
            Stopping => &[Stopped, Crashed],
            Stopped => &[],
            Failed => &[Stopping],
            Crashed => &[Stopping],
            Orphaned => &[Stopping],
        }
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// A device vfioctl plugged into the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Plugged {
    /// QEMU device id (`gpu0`).
    pub id: String,
    /// `0000:41:00.0` or `emulated:8G`.
    pub gpu: String,
    /// Root port (`rp0`).
    pub port: String,
    /// `object-add` id of the stand-in's memory backend.
    pub memdev: Option<String>,
    /// Plugged on QEMU's command line at start (`-device`), not hot-plugged; `vm down`
    /// does not unplug it.
    pub cold: bool,
    /// `vendor:device` the guest should see.
    pub id_pair: String,
    /// The guest's address for it, once the guest reported it.
    pub guest_bdf: Option<String>,
}

/// The process that runs `vm up` for a VM, identified beyond its pid (pids are recycled)
/// by its start time in clock ticks since boot (`/proc/PID/stat` field 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Starter {
    /// Its process id.
    pub pid: u32,
    /// Its start time, in clock ticks since boot.
    pub start_ticks: u64,
}

impl Starter {
    /// This process.
    pub fn me() -> Option<Starter> {
        let pid = std::process::id();
        super::process::start_ticks(pid).map(|start_ticks| Starter { pid, start_ticks })
    }

    /// Still the same process, still running.
    pub fn alive(&self) -> bool {
        super::process::start_ticks(self.pid) == Some(self.start_ticks)
    }
}

/// Everything about one VM, as `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct VmRecord {
    /// The VM's name.
    pub name: VmName,
    /// Where the VM is in its life.
    pub state: VmState,
    /// The `vm up` process while it is starting the VM.
    #[serde(default)]
    pub starter: Option<Starter>,
    /// The VM's run directory.
    pub run_dir: PathBuf,
    /// QEMU's QMP socket.
    pub qmp_socket: PathBuf,
    /// The guest's serial console log.
    pub serial_log: PathBuf,
    /// QEMU's stderr, as a file.
    pub qemu_stderr: PathBuf,
    /// QEMU's pid.
    pub pid: Option<u32>,
    /// The process group holding QEMU and vhost-device-vsock.
    pub pgid: Option<i32>,
    /// vhost-device-vsock's pid (vhost-user vsock only).
    pub vsock_backend_pid: Option<u32>,
    /// The vsock device the VM got.
    pub vsock: VsockBackend,
    /// How to reach the guest agent; `None` without vsock.
    pub agent: Option<AgentTransport>,
    /// The accelerator QEMU runs with.
    pub accel: Accel,
    /// How readiness and plugs are confirmed: the agent, or the serial console.
    #[serde(default)]
    pub ready: super::profile::Ready,
    /// The agent's `hello` at readiness (guest kernel, uptime), when the agent answered.
    #[serde(default)]
    pub guest: Option<vfioctl_common::proto::HelloReply>,
    /// The guest firmware.
    pub firmware: Firmware,
    /// How the guest learns of hot-plugged devices.
    pub hotplug: HotplugMode,
    /// The VM's GPU root ports, as planned.
    pub ports: Vec<PortPlan>,
    /// The devices vfioctl plugged into it, hot or cold.
    pub plugged: Vec<Plugged>,
    /// Unix time QEMU was started.
    pub started_at: Option<f64>,
    /// Seconds from QEMU start to guest ready.
    pub boot_seconds: Option<f64>,
    /// QEMU's version from its QMP greeting (`9.0.2`).
    pub qemu_version: Option<String>,
    /// Warnings from the start-up for the user (KVM not usable, so TCG).
    pub warnings: Vec<String>,
    /// The exact QEMU argv (no shell involved).
    pub argv: Vec<String>,
    /// The VFIO backend the VM was started with (hotplug follows it).
    #[serde(default = "group_backend")]
    pub vfio_backend: crate::shared::VfioBackend,
}

fn group_backend() -> crate::shared::VfioBackend {
    crate::shared::VfioBackend::Group
}

impl VmRecord {
    /// A fresh record for `rd`, in state `created`, nothing started.
    pub fn new(rd: &RunDir) -> Self {
        VmRecord {
            name: rd.name().clone(),
            state: VmState::Created,
            starter: None,
            run_dir: rd.path().into(),
            qmp_socket: rd.qmp_socket(),
            serial_log: rd.serial_log(),
            qemu_stderr: rd.qemu_stderr(),
            pid: None,
            pgid: None,
            vsock_backend_pid: None,
            vsock: VsockBackend::None,
            agent: None,
            accel: Accel::Tcg,
            ready: super::profile::Ready::Agent,
            guest: None,
            firmware: Firmware::Seabios,
            hotplug: HotplugMode::Acpi,
            ports: Vec::new(),
            plugged: Vec::new(),
            started_at: None,
            boot_seconds: None,
            qemu_version: None,
            warnings: Vec::new(),
            argv: Vec::new(),
            vfio_backend: crate::shared::VfioBackend::Group,
        }
    }

    /// The run directory this record lives in (its layout).
    pub fn rundir(&self) -> RunDir {
        RunDir::new(
            self.run_dir.parent().unwrap_or(Path::new("/")),
            self.name.clone(),
        )
    }

    /// Its `state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.rundir().state_file()
    }

    /// Move to `to` if the machine allows it (staying in the same state is a no-op); a
    /// refusal ([`VmError::Transition`]) changes nothing.
    pub fn transition(&mut self, to: VmState) -> Result<(), VmError> {
        if self.state == to {
            return Ok(());
        }
        self.state
            .check(to)
            .map_err(|refused| VmError::Transition {
                name: self.name.to_string(),
                refused,
            })?;
        tracing::info!("vm {}: {} -> {}", self.name, self.state, to);
        self.state = to;
        Ok(())
    }

    /// Write `state.json` atomically (a new 0600 temp file + rename); the error names the
    /// VM and the state file.
    pub fn save(&self) -> Result<(), VmError> {
        self.write_state().map_err(|source| VmError::Io {
            name: self.name.to_string(),
            what: "writing state",
            path: self.state_file(),
            source,
        })
    }

    fn write_state(&self) -> std::io::Result<()> {
        let rd = self.rundir();
        let tmp = rd.path().join(".state.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(&data)?;
        drop(f);
        std::fs::rename(&tmp, rd.state_file())
    }

    /// Read `state.json` of `rd`. The paths in the file are not trusted: they are
    /// rebuilt from the run directory, and the name must be the directory's.
    pub fn load(rd: &RunDir) -> std::io::Result<VmRecord> {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(rd.state_file())?;
        let mut data = Vec::new();
        use std::io::Read;
        (&mut f).take(16 << 20).read_to_end(&mut data)?;
        let mut r: VmRecord = serde_json::from_slice(&data).map_err(std::io::Error::other)?;
        if &r.name != rd.name() {
            return Err(std::io::Error::other(format!(
                "state.json names VM {}, not {}",
                r.name,
                rd.name()
            )));
        }
        r.run_dir = rd.path().into();
        r.qmp_socket = rd.qmp_socket();
        r.serial_log = rd.serial_log();
        r.qemu_stderr = rd.qemu_stderr();
        Ok(r)
    }
}

/// The base directory for VM runtime directories:
/// `$VFIOCTL_RUN_DIR`, else `/run/vfioctl` as root, else `$XDG_RUNTIME_DIR/vfioctl`,
/// else `/tmp/vfioctl-<uid>`.
pub fn run_base() -> PathBuf {
    run_base_from(
        std::env::var_os("VFIOCTL_RUN_DIR").map(PathBuf::from),
        nix::unistd::geteuid().is_root(),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        nix::unistd::geteuid().as_raw(),
    )
}

/// [`run_base`] as a pure function.
pub fn run_base_from(env: Option<PathBuf>, root: bool, xdg: Option<PathBuf>, uid: u32) -> PathBuf {
    if let Some(p) = env.filter(|p| !p.as_os_str().is_empty()) {
        return p;
    }
    if root {
        return PathBuf::from("/run/vfioctl");
    }
    if let Some(x) = xdg.filter(|p| !p.as_os_str().is_empty()) {
        return x.join("vfioctl");
    }
    PathBuf::from(format!("/tmp/vfioctl-{uid}"))
}

/// Every VM record under `base` (run directories vfioctl made), by name.
pub fn list_records(base: &Path) -> Vec<VmRecord> {
    super::rundir::names(base)
        .into_iter()
        .filter_map(|n| VmRecord::load(&RunDir::new(base, n)).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfioctl_common::state_machine::refusals;
    use VmState::*;

    #[test]
    fn every_transition_pair() {
        // The whole table, written out: (from, to) pairs that are allowed.
        let allowed = [
            (Created, Booting),
            (Created, Failed),
            (Created, Stopping),
            (Booting, Ready),
            (Booting, DevicePlugged),
            (Booting, Failed),
            (Booting, Crashed),
            (Booting, Stopping),
            (Ready, DevicePlugged),
            (Ready, Stopping),
            (Ready, Crashed),
            (Ready, Failed),
            (DevicePlugged, Ready),
            (DevicePlugged, Stopping),
            (DevicePlugged, Crashed),
            (DevicePlugged, Failed),
            (Stopping, Stopped),
            (Stopping, Crashed),
            (Failed, Stopping),
            (Crashed, Stopping),
            (Created, Orphaned),
            (Booting, Orphaned),
            (Orphaned, Stopping),
        ];
        let mut n = 0;
        for from in VmState::ALL {
            for to in VmState::ALL {
                let want = allowed.contains(&(from, to));
                assert_eq!(from.valid_transition(to), want, "{from} -> {to}");
                n += 1;
            }
        }
        assert_eq!(n, 81);
        // Stopped is terminal.
        assert!(VmState::ALL.iter().all(|t| !Stopped.valid_transition(*t)));
    }

    #[test]
    fn record_refuses_invalid_moves_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path(), VmName::new("lab").unwrap());
        rd.create().unwrap();
        let mut r = VmRecord::new(&rd);
        assert!(r.transition(Ready).is_err());
        r.transition(Booting).unwrap();
        r.transition(Booting).unwrap(); // same state: no-op
        r.transition(Ready).unwrap();
        r.save().unwrap();
        let back = VmRecord::load(&rd).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.state.to_string(), "ready");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(rd.state_file())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        // A tampered state file cannot point the paths elsewhere or rename the VM.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(rd.state_file()).unwrap()).unwrap();
        v["run_dir"] = "/etc".into();
        v["qmp_socket"] = "/etc/passwd".into();
        std::fs::write(rd.state_file(), v.to_string()).unwrap();
        let back = VmRecord::load(&rd).unwrap();
        assert_eq!(back.run_dir, rd.path());
        assert_eq!(back.qmp_socket, rd.qmp_socket());
        v["name"] = "other".into();
        std::fs::write(rd.state_file(), v.to_string()).unwrap();
        assert!(VmRecord::load(&rd).is_err());
        v["name"] = "../x".into();
        std::fs::write(rd.state_file(), v.to_string()).unwrap();
        assert!(VmRecord::load(&rd).is_err());
    }

    #[test]
    fn refusals_are_one_error_shape() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path(), VmName::new("lab").unwrap());
        let mut r = VmRecord::new(&rd);
        for to in VmState::ALL {
            let mut c = r.clone();
            match c.transition(to) {
                Ok(()) => assert!(to == Created || Created.valid_transition(to)),
                Err(VmError::Transition { name, refused }) => {
                    assert_eq!(name, "lab");
                    assert_eq!((refused.from, refused.to), (Created, to));
                    assert_eq!(
                        VmError::Transition { name, refused }.to_string(),
                        format!("VM lab: VM lifecycle: cannot go from created to {to}")
                    );
                    assert_eq!(c.state, Created, "a refused move changes nothing");
                }
                Err(e) => panic!("not a transition error: {e}"),
            }
        }
        r.state = Stopped;
        assert!(r.transition(Booting).is_err());
    }

    #[test]
    fn every_pair_outside_the_table_is_refused() {
        let refused = refusals(&VmState::ALL);
        // 81 pairs, 23 of them allowed.
        assert_eq!(refused.len(), 81 - 23);
        for e in refused {
            assert_eq!(
                e.to_string(),
                format!("VM lifecycle: cannot go from {} to {}", e.from, e.to)
            );
        }
    }

    #[test]
    fn run_base_choice() {
        assert_eq!(
            run_base_from(Some("/x".into()), true, None, 0),
            PathBuf::from("/x")
        );
        assert_eq!(
            run_base_from(None, true, Some("/run/user/0".into()), 0),
            PathBuf::from("/run/vfioctl")
        );
        assert_eq!(
            run_base_from(None, false, Some("/run/user/1000".into()), 1000),
            PathBuf::from("/run/user/1000/vfioctl")
        );
        assert_eq!(
            run_base_from(None, false, None, 1000),
            PathBuf::from("/tmp/vfioctl-1000")
        );
    }
}
