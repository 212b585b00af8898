//! What can go wrong with a VM ([`VmError`]) and with a hot plug or unplug
//! ([`PlugError`]), naming the VM, the device and the fix. Both live here, below the
//! modules that raise them, so `lifecycle`, `plug` and this file form no circle.

use std::path::PathBuf;

use vfioctl_common::Bdf;

use crate::interrupt::Signal;
use crate::qmp::QmpError;
use crate::{Diagnose, Exit};

/// What can go wrong with a VM: starting, stopping, reading its state, talking to QEMU
/// or the guest agent. Each variant names the VM; [`Diagnose`] gives the exit code and
/// the fix.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// The VM name is not valid.
    #[error(transparent)]
    Name(#[from] super::rundir::VmNameError),
    /// The profile could not be read or is invalid.
    #[error(transparent)]
    Profile(#[from] super::profile::ProfileError),
    /// The root ports could not be planned for the devices.
    #[error(transparent)]
    Plan(#[from] super::ports::PlanError),
    /// The VFIO backend asked for cannot be used (`--vfio-backend iommufd` on an old stack).
    #[error("VM {name}: choosing the VFIO backend")]
    Backend {
        /// The VM's name.
        name: String,
        /// Why the backend cannot be used.
        #[source]
        source: Box<crate::shared::SharedError>,
    },
    /// `--accel kvm` was asked for, but the KVM probe failed.
    #[error("KVM was requested but is not usable: {reason}")]
    KvmUnusable {
        /// What the probe saw (QEMU's first stderr line, or the probe's finding).
        reason: String,
    },
    /// The vsock transport for the guest agent could not be set up.
    #[error("VM {name}: vsock: {reason}")]
    Vsock {
        /// The VM's name.
        name: String,
        /// What failed (no vhost-vsock, the backend did not create its socket, ...).
        reason: String,
    },
    /// `vm up` for a name whose QEMU is still alive.
    #[error("VM {name} is already running (state {state}, QEMU pid {pid})")]
    AlreadyRunning {
        /// The VM's name.
        name: String,
        /// Its recorded lifecycle state.
        state: String,
        /// Its QEMU's process id (0 when none was recorded).
        pid: u32,
    },
    /// Another vfioctl process holds the VM's lock.
    #[error("VM {name} is busy: another vfioctl holds its lock ({holder})")]
    Busy {
        /// The VM's name.
        name: String,
        /// Who holds the lock, as written in the lock file (`pid 1234: vm up`).
        holder: String,
    },
    /// No run directory exists for this name.
    #[error("VM {name} does not exist (no {})", run_dir.display())]
    NoSuchVm {
        /// The VM's name.
        name: String,
        /// The run directory that was looked for.
        run_dir: PathBuf,
    },
    /// The run directory was not created by vfioctl (no marker, or not ours), so it is
    /// left alone.
    #[error("VM {name}: refusing to touch {}: {reason}", path.display())]
    NotOurs {
        /// The VM's name.
        name: String,
        /// The run directory.
        path: PathBuf,
        /// Why it is not considered vfioctl's.
        reason: String,
    },
    /// A unix socket path in the run directory is longer than the kernel allows.
    #[error("VM {name}: the socket path {} is {len} bytes; unix sockets allow 107", path.display())]
    SocketPathTooLong {
        /// The VM's name.
        name: String,
        /// The socket path.
        path: PathBuf,
        /// Its length in bytes.
        len: usize,
    },
    /// Reading or writing a file of the VM failed.
    #[error("VM {name}: {what} {}", path.display())]
    Io {
        /// The VM's name.
        name: String,
        /// The operation (`writing state`, `opening the lock`).
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A program (QEMU, the vsock backend) could not be started.
    #[error("VM {name}: starting {program}")]
    Spawn {
        /// The VM's name.
        name: String,
        /// The program, as given in the argument vector.
        program: String,
        /// Why it could not be started.
        #[source]
        source: std::io::Error,
    },
    /// A helper (the vhost-user vsock backend) exited while the VM was starting.
    #[error("VM {name}: {program} exited during start-up ({status})\n--- {program} output (tail) ---\n{log}")]
    HelperDied {
        /// The VM's name.
        name: String,
        /// The helper program.
        program: String,
        /// How it exited (exit status or signal).
        status: String,
        /// The last lines of its output.
        log: String,
    },
    /// QEMU is gone.
    #[error("VM {name}: QEMU exited ({status})\n--- QEMU stderr (tail) ---\n{stderr}\n--- serial log (tail) ---\n{serial}")]
    Crashed {
        /// The VM's name.
        name: String,
        /// How QEMU exited, or `no longer running` when unknown.
        status: String,
        /// The last lines of QEMU's stderr.
        stderr: String,
        /// The last lines of the serial console log.
        serial: String,
    },
    /// The guest did not become ready before the boot timeout.
    #[error("VM {name}: the guest was not ready within {secs}s (waiting for {what})\n--- serial log (tail) ---\n{serial}")]
    BootTimeout {
        /// The VM's name.
        name: String,
        /// The time waited, in seconds.
        secs: u64,
        /// What was waited for (the serial marker, the guest agent).
        what: String,
        /// The last lines of the serial console log.
        serial: String,
    },
    /// `what`: the operation and the socket (`connecting to /run/vfioctl/lab/qmp.sock`).
    #[error("VM {name}: QMP {what}")]
    Qmp {
        /// The VM's name.
        name: String,
        /// The operation and the socket.
        what: String,
        /// The QMP error.
        #[source]
        source: QmpError,
    },
    /// A hot plug or unplug failed.
    #[error(transparent)]
    Plug(Box<PlugError>),
    /// The VM's state does not allow the requested transition (a bug in vfioctl). The
    /// refusal is part of the message, not a source, like every machine's.
    #[error("VM {name}: {refused}")]
    Transition {
        /// The VM's name.
        name: String,
        /// The refused transition.
        refused: vfioctl_common::TransitionError<super::state::VmState>,
    },
    /// A host PCI device given to the VM could not be read.
    #[error("VM {name}: reading host device {bdf}")]
    HostDevice {
        /// The VM's name (empty when the VM is not known yet).
        name: String,
        /// The host PCI address.
        bdf: String,
        /// Why it could not be read.
        #[source]
        source: vfioctl_common::PciError,
    },
    /// Talking to the guest agent failed.
    #[error("VM {name}: guest agent")]
    Agent {
        /// The VM's name.
        name: String,
        /// The agent client's error.
        #[source]
        source: Box<crate::agent::ClientError>,
    },
    /// The guest agent's per-VM secret could not be read from the run directory.
    #[error("VM {name}: reading the agent secret {}", path.display())]
    Token {
        /// The VM's name.
        name: String,
        /// The secret's file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// Some of the VM's processes survived the kill.
    #[error("VM {name}: processes still alive after kill: {pids:?}")]
    Leftover {
        /// The VM's name.
        name: String,
        /// The process ids still alive.
        pids: Vec<u32>,
    },
    /// The profile waits for the guest agent (`ready = "agent"`) but this build has no
    /// agent client.
    #[error(
        "VM {name}: ready = \"agent\" needs the vfioctl guest agent client, which this build lacks"
    )]
    NoAgent {
        /// The VM's name.
        name: String,
    },
    /// SIGINT or SIGTERM arrived during the operation; the VM's processes were stopped.
    #[error("VM {name}: {op} stopped by {signal}; the VM's processes were stopped (state failed, logs kept)")]
    Interrupted {
        /// The VM's name.
        name: String,
        /// The interrupted operation (`vm up`).
        op: &'static str,
        /// The signal received.
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

/// What can go wrong with a hot plug or unplug: the device is not ready for
/// passthrough, no root port fits it, QEMU refused it, or the guest did not confirm it.
#[derive(Debug, thiserror::Error)]
pub enum PlugError {
    /// The host device is not bound to vfio-pci.
    #[error("{bdf} is bound to {}, not vfio-pci", driver.as_deref().unwrap_or("no driver"))]
    NotBound {
        /// The host PCI address.
        bdf: Bdf,
        /// The driver it is bound to; `None` for no driver.
        driver: Option<String>,
    },
    /// Other members of the device's IOMMU group are bound to host drivers that make the
    /// group unusable by VFIO.
    #[error("{bdf}: IOMMU group {group} is not viable: {}", members.iter().map(|(b, d)| format!("{b} ({})", d.as_deref().unwrap_or("no driver"))).collect::<Vec<_>>().join(", "))]
    GroupNotViable {
        /// The host PCI address.
        bdf: Bdf,
        /// The IOMMU group number.
        group: u32,
        /// Those members and their drivers.
        members: Vec<(Bdf, Option<String>)>,
    },
    /// The device has no IOMMU group (the IOMMU is off).
    #[error("{bdf}: no IOMMU group (is the IOMMU on?)")]
    NoGroup {
        /// The host PCI address.
        bdf: Bdf,
    },
    /// The group's `/dev/vfio/<group>` node is missing.
    #[error("{bdf}: /dev/vfio/{group} does not exist")]
    NoVfioNode {
        /// The host PCI address.
        bdf: Bdf,
        /// The IOMMU group number.
        group: u32,
    },
    /// No free root port has a 64-bit prefetchable window large enough for the device.
    #[error("no free root port fits {gpu} ({need} of 64-bit prefetchable BARs); ports: {ports}")]
    NoPort {
        /// The device's label (a BDF, `emulated:<size>`, `mdev:<uuid>`).
        gpu: String,
        /// The size needed, human-readable.
        need: String,
        /// The VM's ports, listed for the message.
        ports: String,
    },
    /// The port asked for does not exist in the VM.
    #[error("root port {port} does not exist in VM {name} (ports: {ports})")]
    UnknownPort {
        /// The VM's name.
        name: String,
        /// The port asked for.
        port: String,
        /// The VM's ports, listed for the message.
        ports: String,
    },
    /// The port asked for already holds a device.
    #[error("root port {port} already holds {id}")]
    PortBusy {
        /// The port asked for.
        port: String,
        /// The QEMU id of the device on it (`gpu0`).
        id: String,
    },
    /// QEMU refused the `device_add`.
    #[error("QEMU refused {gpu} on {port}: {desc}")]
    Qemu {
        /// The device's label.
        gpu: String,
        /// The root port it was plugged into.
        port: String,
        /// QEMU's error description.
        desc: String,
        /// The other members of the device's IOMMU group (for the hint).
        peers: Vec<Bdf>,
        /// The QMP error.
        #[source]
        source: Box<QmpError>,
    },
    /// The guest found the device but could not assign some BARs; the plug was rolled
    /// back.
    #[error("{gpu} on {port}: the guest found it at {bdf} but could not assign BAR {}: rolled back\n--- guest kernel ---\n{}", failed.iter().map(|(i, w)| format!("{i} ({w})")).collect::<Vec<_>>().join(", "), lines.join("\n"))]
    NotAssigned {
        /// The device's label.
        gpu: String,
        /// The root port it was plugged into.
        port: String,
        /// The device's address in the guest.
        bdf: String,
        /// Each unassigned BAR's index and the guest kernel's reason.
        failed: Vec<(u8, String)>,
        /// The guest kernel's lines about the device.
        lines: Vec<String>,
    },
    /// The guest did not report the device in time; the plug was rolled back.
    #[error("{gpu} on {port}: the guest did not report the device within {secs}s: rolled back\n--- guest log (tail) ---\n{log}")]
    NotSeen {
        /// The device's label.
        gpu: String,
        /// The root port it was plugged into.
        port: String,
        /// The time waited, in seconds.
        secs: u64,
        /// The last lines of the guest's kernel log or serial console.
        log: String,
    },
    /// No plugged device has this id.
    #[error("no device {id} plugged in VM {name}")]
    NotPlugged {
        /// The VM's name.
        name: String,
        /// The id asked for.
        id: String,
    },
    /// QEMU sent no `DEVICE_DELETED` in time: the guest did not release the device.
    #[error("{id}: no DEVICE_DELETED within {secs}s: the guest did not release the device\n--- guest log (tail) ---\n{log}")]
    UnplugTimeout {
        /// The device's QEMU id.
        id: String,
        /// The time waited, in seconds.
        secs: u64,
        /// The last lines of the guest's log.
        log: String,
    },
    /// The VM is not in a state that allows a plug (it must be ready).
    #[error("VM {name} is {state}: plug needs a ready VM")]
    NotReady {
        /// The VM's name.
        name: String,
        /// Its current lifecycle state.
        state: String,
    },
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
