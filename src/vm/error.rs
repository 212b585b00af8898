//! What can go wrong with a VM ([`VmError`]) and with a hot plug or unplug
//! ([`PlugError`]), naming the VM, the device and the fix. Both live here, below the
//! modules that raise them, so `lifecycle`, `plug` and this file form no circle.

use std::path::PathBuf;

use vfioctl_common::Bdf;

use crate::interrupt::Signal;
use crate::qmp::QmpError;
use crate::{Diagnose, Exit};

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error(transparent)]
    Name(#[from] super::rundir::VmNameError),
    #[error(transparent)]
    Profile(#[from] super::profile::ProfileError),
    #[error(transparent)]
    Plan(#[from] super::ports::PlanError),
    /// The VFIO backend asked for cannot be used (`--vfio-backend iommufd` on an old stack).
    #[error("VM {name}: choosing the VFIO backend")]
    Backend {
        name: String,
        #[source]
        source: Box<crate::shared::SharedError>,
    },
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
    #[error("VM {name} is busy: another vfioctl holds its lock ({holder})")]
    Busy { name: String, holder: String },
    #[error("VM {name} does not exist (no {})", run_dir.display())]
    NoSuchVm { name: String, run_dir: PathBuf },
    #[error("VM {name}: refusing to touch {}: {reason}", path.display())]
    NotOurs {
        name: String,
        path: PathBuf,
        reason: String,
    },
    #[error("VM {name}: the socket path {} is {len} bytes; unix sockets allow 107", path.display())]
    SocketPathTooLong {
        name: String,
        path: PathBuf,
        len: usize,
    },
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
    /// `what`: the operation and the socket (`connecting to /run/vfioctl/lab/qmp.sock`).
    #[error("VM {name}: QMP {what}")]
    Qmp {
        name: String,
        what: String,
        #[source]
        source: QmpError,
    },
    #[error(transparent)]
    Plug(Box<PlugError>),
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
    #[error("VM {name}: reading the agent secret {}", path.display())]
    Token {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name}: processes still alive after kill: {pids:?}")]
    Leftover { name: String, pids: Vec<u32> },
    #[error(
        "VM {name}: ready = \"agent\" needs the vfioctl guest agent client, which this build lacks"
    )]
    NoAgent { name: String },
    #[error("VM {name}: {op} stopped by {signal}; the VM's processes were stopped (state failed, logs kept)")]
    Interrupted {
        name: String,
        op: &'static str,
        signal: Signal,
    },
}

impl Diagnose for VmError {
    fn hint(&self) -> Option<String> {
        match self {
            VmError::Name(e) => e.hint(),
            VmError::Profile(e) => e.hint(),
            VmError::Plan(e) => e.hint(),
            VmError::Plug(e) => e.hint(),
            VmError::Agent { source, .. } => source.hint(),
            VmError::Backend { source, .. } => source.hint(),
            VmError::KvmUnusable { .. } => Some("use --accel tcg (or auto), or fix /dev/kvm permissions and nested virtualization".into()),
            VmError::Vsock { .. } => Some("install vhost-device-vsock (scripts/setup) or `modprobe vhost_vsock`; --vsock none disables the agent".into()),
            VmError::AlreadyRunning { name, .. } => Some(format!("`vfioctl vm down {name}` first, or pick another --name")),
            VmError::Busy { .. } => Some("wait for that command to finish or stop it (Ctrl-C, or kill the pid above); each VM takes one vm up/down/plug/unplug at a time".into()),
            VmError::NoSuchVm { .. } => Some("`vfioctl vm list` shows the VMs; VFIOCTL_RUN_DIR selects another runtime base".into()),
            VmError::NotOurs { .. } => Some("vfioctl removes only run directories it created (they carry a .vfioctl-run-dir marker); if that one is yours, remove it yourself".into()),
            VmError::SocketPathTooLong { .. } => Some("use a shorter VFIOCTL_RUN_DIR or a shorter --name".into()),
            VmError::Crashed { .. } => Some("read the QEMU stderr above; `vfioctl vm down NAME` cleans up".into()),
            VmError::BootTimeout { .. } => Some("check the kernel/initrd pair and the serial log; raise --boot-timeout under TCG".into()),
            VmError::NoAgent { .. } => Some("use ready = \"serial:<marker>\" with an initramfs that prints it".into()),
            VmError::Spawn { program, .. } => Some(format!("install {program} (scripts/setup)")),
            VmError::Token { .. } => Some("the VM was started by an older vfioctl or its run directory was changed: `vfioctl vm down NAME` and start it again".into()),
            VmError::Interrupted { name, .. } => Some(format!("`vfioctl vm down {name}` removes what is left")),
            _ => None,
        }
    }
    fn exit(&self) -> Exit {
        match self {
            VmError::Name(e) => e.exit(),
            VmError::Profile(e) => e.exit(),
            VmError::Plan(e) => e.exit(),
            VmError::Plug(e) => e.exit(),
            VmError::NoSuchVm { .. }
            | VmError::AlreadyRunning { .. }
            | VmError::NoAgent { .. }
            | VmError::SocketPathTooLong { .. } => Exit::Usage,
            VmError::Busy { .. } | VmError::NotOurs { .. } => Exit::Refused,
            VmError::Backend { source, .. } => source.exit(),
            VmError::BootTimeout { .. } => Exit::BootTimeout,
            VmError::Interrupted { signal, .. } => signal.exit(),
            _ => Exit::Infrastructure,
        }
    }
}

impl From<PlugError> for VmError {
    fn from(e: PlugError) -> Self {
        VmError::Plug(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    #[error("{bdf} is bound to {}, not vfio-pci", driver.as_deref().unwrap_or("no driver"))]
    NotBound { bdf: Bdf, driver: Option<String> },
    #[error("{bdf}: IOMMU group {group} is not viable: {}", members.iter().map(|(b, d)| format!("{b} ({})", d.as_deref().unwrap_or("no driver"))).collect::<Vec<_>>().join(", "))]
    GroupNotViable {
        bdf: Bdf,
        group: u32,
        members: Vec<(Bdf, Option<String>)>,
    },
    #[error("{bdf}: no IOMMU group (is the IOMMU on?)")]
    NoGroup { bdf: Bdf },
    #[error("{bdf}: /dev/vfio/{group} does not exist")]
    NoVfioNode { bdf: Bdf, group: u32 },
    #[error("no free root port fits {gpu} ({need} of 64-bit prefetchable BARs); ports: {ports}")]
    NoPort {
        gpu: String,
        need: String,
        ports: String,
    },
    #[error("root port {port} does not exist in VM {name} (ports: {ports})")]
    UnknownPort {
        name: String,
        port: String,
        ports: String,
    },
    #[error("root port {port} already holds {id}")]
    PortBusy { port: String, id: String },
    #[error("QEMU refused {gpu} on {port}: {desc}")]
    Qemu {
        gpu: String,
        port: String,
        desc: String,
        peers: Vec<Bdf>,
        #[source]
        source: Box<QmpError>,
    },
    #[error("{gpu} on {port}: the guest found it at {bdf} but could not assign BAR {}: rolled back\n--- guest kernel ---\n{}", failed.iter().map(|(i, w)| format!("{i} ({w})")).collect::<Vec<_>>().join(", "), lines.join("\n"))]
    NotAssigned {
        gpu: String,
        port: String,
        bdf: String,
        failed: Vec<(u8, String)>,
        lines: Vec<String>,
    },
    #[error("{gpu} on {port}: the guest did not report the device within {secs}s: rolled back\n--- guest log (tail) ---\n{log}")]
    NotSeen {
        gpu: String,
        port: String,
        secs: u64,
        log: String,
    },
    #[error("no device {id} plugged in VM {name}")]
    NotPlugged { name: String, id: String },
    #[error("{id}: no DEVICE_DELETED within {secs}s: the guest did not release the device\n--- guest log (tail) ---\n{log}")]
    UnplugTimeout { id: String, secs: u64, log: String },
    #[error("VM {name} is {state}: plug needs a ready VM")]
    NotReady { name: String, state: String },
}

impl Diagnose for PlugError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            PlugError::NotBound { bdf, .. } => format!("`vfioctl bind {bdf}` first (or pass --bind)"),
            PlugError::GroupNotViable { members, .. } => format!(
                "bind every member of the group to vfio-pci: `vfioctl bind {}`",
                members.iter().map(|(b, _)| b.to_string()).collect::<Vec<_>>().join(" ")
            ),
            PlugError::NoGroup { .. } => "enable the IOMMU: intel_iommu=on or amd_iommu=on on the host kernel command line".into(),
            PlugError::NoVfioNode { .. } => "load vfio-pci and bind the device (`vfioctl bind`)".into(),
            PlugError::NoPort { .. } => "start the VM with a port sized for it: `vfioctl vm up --gpu DEVICE` (or --port-for DEVICE)".into(),
            PlugError::UnknownPort { .. } | PlugError::PortBusy { .. } => "`vfioctl vm status NAME` lists the ports and what they hold".into(),
            PlugError::Qemu { desc, peers, .. } => {
                if desc.contains("not viable") {
                    format!("bind the other members of the IOMMU group to vfio-pci too: {}", peers.iter().map(|b| b.to_string()).collect::<Vec<_>>().join(" "))
                } else if desc.contains("no such host device") {
                    "check the address with `vfioctl devices`".into()
                } else if desc.contains("vfio") && (desc.contains("Cannot allocate memory") || desc.contains("vfio_dma_map") || desc.contains("memlock")) {
                    "raise QEMU's locked-memory limit above the guest RAM (ulimit -l unlimited, or LimitMEMLOCK=infinity)".into()
                } else if desc.contains("failed to open /dev/vfio") {
                    "bind the device to vfio-pci and check /dev/vfio permissions".into()
                } else {
                    return None;
                }
            }
            PlugError::NotAssigned { .. } => "the port's window is too small for the BARs: plug onto a port vfioctl sized (`vfioctl vm plan`), or use --firmware ovmf".into(),
            PlugError::NotSeen { .. } => "the guest kernel needs hotplug support (CONFIG_HOTPLUG_PCI_PCIE / ACPI PCI hotplug)".into(),
            PlugError::NotPlugged { .. } => "`vfioctl vm status NAME` lists plugged devices".into(),
            PlugError::UnplugTimeout { .. } => "the guest may be stuck using the device; `vfioctl vm down` forces it off".into(),
            PlugError::NotReady { .. } => "`vfioctl vm up` first".into(),
        })
    }
    fn exit(&self) -> Exit {
        match self {
            PlugError::NotBound { .. }
            | PlugError::GroupNotViable { .. }
            | PlugError::NoGroup { .. }
            | PlugError::NoVfioNode { .. } => Exit::Refused,
            PlugError::NoPort { .. }
            | PlugError::UnknownPort { .. }
            | PlugError::PortBusy { .. }
            | PlugError::NotPlugged { .. }
            | PlugError::NotReady { .. } => Exit::Usage,
            PlugError::Qemu { .. }
            | PlugError::NotAssigned { .. }
            | PlugError::NotSeen { .. }
            | PlugError::UnplugTimeout { .. } => Exit::OperationFailed,
        }
    }
}
