//! Is a VM's QEMU (and its vsock helper, and the `vm up` starting it) still there: the
//! answers every other VM module asks, kept apart from `lifecycle` so that `plug` can ask
//! them without depending on the lifecycle that depends on it.

use super::error::VmError;
use super::process;
use super::state::{VmRecord, VmState};

/// The marker QEMU's command line carries (`-name vfioctl-NAME,`), to recognise our pid.
pub fn qemu_marker(rec: &VmRecord) -> String {
    format!("vfioctl-{},", rec.name)
}

fn backend_marker(rec: &VmRecord) -> String {
    rec.rundir().vhost_socket().display().to_string()
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

/// The VM's QEMU is running (its pid, with the VM's marker in its command line).
pub fn qemu_alive(rec: &VmRecord) -> bool {
    rec.pid
        .is_some_and(|p| process::alive(p, &qemu_marker(rec)))
}

/// vhost-device-vsock is running.
pub fn backend_alive(rec: &VmRecord) -> bool {
    rec.vsock_backend_pid
        .is_some_and(|p| process::alive(p, &backend_marker(rec)))
}

/// The crash report for a VM whose QEMU is gone.
pub fn crashed(rec: &VmRecord) -> VmError {
    let status = rec
        .pid
        .and_then(process::exit_status)
        .unwrap_or_else(|| "no longer running".into());
    VmError::Crashed {
        name: rec.name.to_string(),
        status,
        stderr: process::tail_file(&rec.qemu_stderr, 20),
        serial: process::tail_file(&rec.serial_log, 30),
    }
}

/// Bring a loaded record up to date with the processes: a `vm up` that died while the VM
/// was starting leaves it `orphaned`; a QEMU that died on its own makes it `crashed`.
/// Returns whether the state changed.
pub fn refresh(rec: &mut VmRecord) -> Result<bool, VmError> {
    if rec.state.starting() && !rec.starter.is_some_and(|s| s.alive()) {
        rec.transition(VmState::Orphaned)?;
        return Ok(true);
    }
    if rec.state.expects_running() && !qemu_alive(rec) {
        rec.transition(VmState::Crashed)?;
        return Ok(true);
    }
    Ok(false)
}
