//! The VM lifecycle as an explicit state machine, and the state file that other commands
//! (`vm status`, `vm plug`, `validate`, `regress`) load to find a VM's QMP socket and
//! agent transport.
//!
//! Runtime directory per VM (mode 0700), under the base from [`run_base`]:
//! `qmp.sock`, `serial.log`, `qemu.stderr`, `qemu.pid`, `state.json`, and for
//! vhost-user vsock `vhost-vsock.sock`, `vsock.uds`, `vhost-device-vsock.log`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::accel::Accel;
use super::ports::{Firmware, PortPlan};
use super::profile::HotplugMode;
use super::vsock::{AgentTransport, VsockBackend};

/// Where a VM is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

impl VmState {
    pub const ALL: [VmState; 8] = [
        VmState::Created,
        VmState::Booting,
        VmState::Ready,
        VmState::DevicePlugged,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Failed,
        VmState::Crashed,
    ];

    /// The transitions the code may make. Everything else is a bug and is refused.
    pub fn valid_transition(self, to: VmState) -> bool {
        use VmState::*;
        matches!(
            (self, to),
            (Created, Booting)
                | (Created, Failed)
                | (Created, Stopping)
                | (Booting, Ready)
                | (Booting, DevicePlugged) // cold-plugged devices confirmed with readiness
                | (Booting, Failed)
                | (Booting, Crashed)
                | (Booting, Stopping)
                | (Ready, DevicePlugged)
                | (Ready, Stopping)
                | (Ready, Crashed)
                | (Ready, Failed) // `vm up --gpu`: the plug after boot failed
                | (DevicePlugged, Ready) // last device unplugged
                | (DevicePlugged, Stopping)
                | (DevicePlugged, Crashed)
                | (DevicePlugged, Failed) // a second declared device failed during `vm up`
                | (Stopping, Stopped)
                | (Stopping, Crashed) // QEMU died instead of stopping: still cleaned up
                | (Failed, Stopping)
                | (Crashed, Stopping)
        )
    }

    /// QEMU should be running in this state.
    pub fn expects_running(self) -> bool {
        matches!(
            self,
            VmState::Booting | VmState::Ready | VmState::DevicePlugged | VmState::Stopping
        )
    }
}

impl std::fmt::Display for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = serde_json::to_value(self).ok();
        f.write_str(s.as_ref().and_then(|v| v.as_str()).unwrap_or("?"))
    }
}

/// A device vfioctl plugged into the VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plugged {
    /// QEMU device id (`gpu0`).
    pub id: String,
    /// `0000:41:00.0` or `emulated:8G`.
    pub gpu: String,
    /// Root port (`rp0`).
    pub port: String,
    /// `object-add` id of the stand-in's memory backend.
    pub memdev: Option<String>,
    pub cold: bool,
    /// `vendor:device` the guest should see.
    pub id_pair: String,
    /// The guest's address for it, once the guest reported it.
    pub guest_bdf: Option<String>,
}

/// Everything about one VM, as `state.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub name: String,
    pub state: VmState,
    pub run_dir: PathBuf,
    pub qmp_socket: PathBuf,
    pub serial_log: PathBuf,
    pub qemu_stderr: PathBuf,
    /// QEMU's pid.
    pub pid: Option<u32>,
    /// The process group holding QEMU and vhost-device-vsock.
    pub pgid: Option<i32>,
    /// vhost-device-vsock's pid (vhost-user vsock only).
    pub vsock_backend_pid: Option<u32>,
    pub vsock: VsockBackend,
    /// How to reach the guest agent; `None` without vsock.
    pub agent: Option<AgentTransport>,
    pub accel: Accel,
    /// How readiness and plugs are confirmed: the agent, or the serial console.
    #[serde(default)]
    pub ready: super::profile::Ready,
    /// The agent's `hello` at readiness (guest kernel, uptime), when the agent answered.
    #[serde(default)]
    pub guest: Option<vfioctl_common::proto::HelloReply>,
    pub firmware: Firmware,
    pub hotplug: HotplugMode,
    pub ports: Vec<PortPlan>,
    pub plugged: Vec<Plugged>,
    /// Unix time QEMU was started.
    pub started_at: Option<f64>,
    /// Seconds from QEMU start to guest ready.
    pub boot_seconds: Option<f64>,
    pub qemu_version: Option<String>,
    pub warnings: Vec<String>,
    /// The exact QEMU argv (no shell involved).
    pub argv: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("VM {name}: invalid state transition {from} -> {to}")]
pub struct TransitionError {
    pub name: String,
    pub from: VmState,
    pub to: VmState,
}

impl VmRecord {
    pub fn new(name: &str, run_dir: &Path) -> Self {
        VmRecord {
            name: name.into(),
            state: VmState::Created,
            run_dir: run_dir.into(),
            qmp_socket: run_dir.join("qmp.sock"),
            serial_log: run_dir.join("serial.log"),
            qemu_stderr: run_dir.join("qemu.stderr"),
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
        }
    }

    pub fn state_file(&self) -> PathBuf {
        self.run_dir.join(STATE_FILE)
    }

    /// Move to `to` if the machine allows it.
    pub fn transition(&mut self, to: VmState) -> Result<(), TransitionError> {
        if self.state == to {
            return Ok(());
        }
        if !self.state.valid_transition(to) {
            return Err(TransitionError {
                name: self.name.clone(),
                from: self.state,
                to,
            });
        }
        tracing::info!("vm {}: {} -> {}", self.name, self.state, to);
        self.state = to;
        Ok(())
    }

    /// Write `state.json` atomically (temp file + rename).
    pub fn save(&self) -> std::io::Result<()> {
        let tmp = self.run_dir.join(".state.json.tmp");
        let data = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, data)?;
        std::fs::rename(&tmp, self.state_file())
    }

    pub fn load(run_dir: &Path) -> std::io::Result<VmRecord> {
        let data = std::fs::read(run_dir.join(STATE_FILE))?;
        serde_json::from_slice(&data).map_err(std::io::Error::other)
    }
}

pub const STATE_FILE: &str = "state.json";

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

/// Create `dir` (and the base) with mode 0700.
pub fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Every VM record under `base`, by name.
pub fn list_records(base: &Path) -> Vec<VmRecord> {
    let mut out: Vec<VmRecord> = std::fs::read_dir(base)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| VmRecord::load(&e.path()).ok())
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
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
        ];
        let mut n = 0;
        for from in VmState::ALL {
            for to in VmState::ALL {
                let want = allowed.contains(&(from, to));
                assert_eq!(from.valid_transition(to), want, "{from} -> {to}");
                n += 1;
            }
        }
        assert_eq!(n, 64);
        // Stopped is terminal.
        assert!(VmState::ALL.iter().all(|t| !Stopped.valid_transition(*t)));
    }

    #[test]
    fn record_refuses_invalid_moves_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = VmRecord::new("lab", dir.path());
        assert!(r.transition(Ready).is_err());
        r.transition(Booting).unwrap();
        r.transition(Booting).unwrap(); // same state: no-op
        r.transition(Ready).unwrap();
        r.save().unwrap();
        let back = VmRecord::load(dir.path()).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.state.to_string(), "ready");
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

    #[test]
    fn private_dirs_are_0700() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("base/vm");
        make_private_dir(&d).unwrap();
        assert_eq!(
            std::fs::metadata(&d).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}
