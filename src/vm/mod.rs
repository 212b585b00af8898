//! VM profiles, QEMU command lines, root-port sizing, lifecycle, hotplug.
pub mod accel;
pub mod argv;
pub mod devices;
pub mod ports;
pub mod profile;
pub mod state;
pub mod vsock;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("KVM was requested but is not usable: {reason}")]
    KvmUnusable { reason: String },
}
impl crate::Diagnose for VmError {}
