//! VM profiles, QEMU command lines, root-port sizing, lifecycle, hotplug.
//!
//! | file | what |
//! |---|---|
//! | [`profile`] | the TOML profile and its defaults |
//! | [`ports`] | root ports sized from a device's BARs and the firmware's rules (pure) |
//! | [`accel`] | KVM-or-TCG probe, host phys-bits |
//! | [`vsock`] | vhost-vsock vs vhost-user-vsock and the agent transport |
//! | [`argv`] | QEMU's argument vector (pure, snapshot-tested) |
//! | [`devices`] | vfio-pci / ivshmem stand-in as `-device` and QMP arguments |
//! | [`rundir`] | validated VM names, the run directory's layout, marker and per-name lock |
//! | [`state`] | the lifecycle state machine and the state file |
//! | [`process`] | process groups, liveness, kill and reap |
//! | [`liveness`] | is the VM's QEMU (and its `vm up`) still there; crashed / orphaned |
//! | [`guest`] | the agent's transport and per-VM secret |
//! | [`lifecycle`] | `vm up/down/status/list` |
//! | [`plug`] | hot plug/unplug over QMP, confirmed in the guest |
//! | [`evidence`] | the guest kernel's PCI messages from the serial console |

#![warn(missing_docs)]

pub mod accel;
pub mod argv;
pub mod devices;
pub mod error;
pub mod evidence;
pub mod guest;
pub mod lifecycle;
pub mod liveness;
pub mod plug;
pub mod ports;
pub mod process;
pub mod profile;
pub mod rundir;
pub mod state;
pub mod vsock;

pub use error::{PlugError, VmError};
pub use lifecycle::{down, list, status, up};
pub use ports::{DeviceBars, Firmware, PhysBits, Plan, PortPlan};
pub use profile::{GpuSpec, Profile};
pub use rundir::{Env, VmName};
pub use state::{VmRecord, VmState};
