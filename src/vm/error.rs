//! What can go wrong with a VM, naming the VM, the device and the fix.

use std::path::PathBuf;

use crate::qmp::QmpError;
use crate::{Diagnose, Exit};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Profile(#[from] super::profile::ProfileError),
    #[error(transparent)]
    Plan(#[from] super::ports::PlanError),
    #[error("KVM was requested but is not usable: {reason}")]
    KvmUnusable { reason: String },
    #[error("VM {name}: vsock: {reason}")]
    Vsock { name: String, reason: String },
    #[error("VM {name} is already running (state {state}, QEMU pid {pid})")]
    AlreadyRunning {
        name: String,
        state: String,
        pid: u32,
    },
    #[error("VM {name} does not exist (no {})", run_dir.display())]
    NoSuchVm { name: String, run_dir: PathBuf },
    #[error("VM {name}: {what} {}", path.display())]
    Io {
        name: String,
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name}: starting {program}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name}: {program} exited during start-up ({status})\n--- {program} output (tail) ---\n{log}")]
    HelperDied {
        name: String,
        program: String,
        status: String,
        log: String,
    },
    #[error("VM {name}: QEMU exited ({status})\n--- QEMU stderr (tail) ---\n{stderr}\n--- serial log (tail) ---\n{serial}")]
    Crashed {
        name: String,
        status: String,
        stderr: String,
        serial: String,
    },
    #[error("VM {name}: the guest was not ready within {secs}s (waiting for {what})\n--- serial log (tail) ---\n{serial}")]
    BootTimeout {
        name: String,
        secs: u64,
        what: String,
        serial: String,
    },
    #[error("VM {name}: QMP")]
    Qmp {
        name: String,
        #[source]
        source: QmpError,
    },
    #[error(transparent)]
    Plug(Box<super::plug::PlugError>),
    #[error(transparent)]
    Transition(#[from] super::state::TransitionError),
    #[error("VM {name}: reading host device {bdf}")]
    HostDevice {
        name: String,
        bdf: String,
        #[source]
        source: vfioctl_common::PciError,
    },
    #[error("VM {name}: guest agent")]
    Agent {
        name: String,
        #[source]
        source: Box<crate::agent::ClientError>,
    },
    #[error("VM {name}: processes still alive after kill: {pids:?}")]
    Leftover { name: String, pids: Vec<u32> },
    #[error(
        "VM {name}: ready = \"agent\" needs the vfioctl guest agent client, which this build lacks"
    )]
    NoAgent { name: String },
}

impl Diagnose for VmError {
    fn hint(&self) -> Option<String> {
        match self {
            VmError::Profile(e) => e.hint(),
            VmError::Plan(e) => e.hint(),
            VmError::Plug(e) => e.hint(),
            VmError::KvmUnusable { .. } => Some("use --accel tcg (or auto), or fix /dev/kvm permissions and nested virtualization".into()),
            VmError::Vsock { .. } => Some("install vhost-device-vsock (scripts/setup) or `modprobe vhost_vsock`; --vsock none disables the agent".into()),
            VmError::AlreadyRunning { name, .. } => Some(format!("`vfioctl vm down {name}` first, or pick another --name")),
            VmError::NoSuchVm { .. } => Some("`vfioctl vm list` shows the VMs; VFIOCTL_RUN_DIR selects another runtime base".into()),
            VmError::Crashed { .. } => Some("read the QEMU stderr above; `vfioctl vm down NAME` cleans up".into()),
            VmError::BootTimeout { .. } => Some("check the kernel/initrd pair and the serial log; raise --boot-timeout under TCG".into()),
            VmError::NoAgent { .. } => Some("use ready = \"serial:<marker>\" with an initramfs that prints it".into()),
            VmError::Spawn { program, .. } => Some(format!("install {program} (scripts/setup)")),
            _ => None,
        }
    }
    fn exit(&self) -> Exit {
        match self {
            VmError::Profile(e) => e.exit(),
            VmError::Plan(e) => e.exit(),
            VmError::Plug(e) => e.exit(),
            VmError::NoSuchVm { .. } | VmError::AlreadyRunning { .. } | VmError::NoAgent { .. } => {
                Exit::Usage
            }
            VmError::BootTimeout { .. } => Exit::BootTimeout,
            _ => Exit::Infrastructure,
        }
    }
}

impl From<super::plug::PlugError> for VmError {
    fn from(e: super::plug::PlugError) -> Self {
        VmError::Plug(Box::new(e))
    }
}
