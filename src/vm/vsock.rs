//! vsock for the guest agent: the kernel's vhost-vsock when it is there, else a
//! supervised `vhost-device-vsock` behind `vhost-user-vsock-pci` (shared memfd RAM).
//! Both end in one host-side [`AgentTransport`] stored in the VM's state file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vfioctl_common::SysRoot;

use super::profile::VsockChoice;
use super::rundir::RunDir;

/// How the host reaches a guest vsock port: the agent module's transport (AF_VSOCK
/// `cid:port`, or the hybrid unix-socket `CONNECT <port>` protocol).
pub use crate::agent::Transport as AgentTransport;

/// The vsock device the VM gets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VsockBackend {
    /// No vsock device: no guest agent (`--vsock none`).
    None,
    /// `-device vhost-vsock-pci,guest-cid=N`.
    Vhost {
        /// The guest's context id; host-global, so unique among running VMs.
        cid: u32,
    },
    /// `vhost-device-vsock --vm guest-cid=N,socket=S,uds-path=U` plus
    /// `-device vhost-user-vsock-pci,chardev=...`.
    VhostUser {
        /// The guest's context id (private to this backend: always 3).
        cid: u32,
        /// The vhost-user socket QEMU's chardev connects to.
        socket: PathBuf,
        /// The unix socket the host connects to for guest ports (`CONNECT <port>`).
        uds_path: PathBuf,
    },
}

impl VsockBackend {
    /// How the host reaches guest vsock `port` through this device; `None` without one.
    pub fn transport(&self, port: u32) -> Option<AgentTransport> {
        match self {
            VsockBackend::None => None,
            VsockBackend::Vhost { cid } => Some(AgentTransport::Vsock { cid: *cid, port }),
            VsockBackend::VhostUser { uds_path, .. } => Some(AgentTransport::Hybrid {
                uds_path: uds_path.clone(),
                port,
            }),
        }
    }

    /// The backend's own command line (vhost-user only).
    pub fn backend_argv(&self, program: &Path) -> Option<Vec<String>> {
        match self {
            VsockBackend::VhostUser {
                cid,
                socket,
                uds_path,
            } => Some(vec![
                program.display().to_string(),
                "--vm".into(),
                format!(
                    "guest-cid={cid},socket={},uds-path={}",
                    socket.display(),
                    uds_path.display()
                ),
            ]),
            _ => None,
        }
    }
}

/// True when `/dev/vhost-vsock` opens read-write.
pub fn vhost_vsock_usable(root: &SysRoot) -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.path("/dev/vhost-vsock"))
        .is_ok()
}

/// `--vsock vhost` on a host without a usable `/dev/vhost-vsock`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("/dev/vhost-vsock is missing or cannot be opened (modprobe vhost_vsock)")]
pub struct NoVhostVsock;

/// Pick the backend. `used_cids`: CIDs of other running VMs (vhost-vsock CIDs are
/// host-global; vhost-user CIDs are private to each backend, so 3 is always fine).
pub fn choose(
    choice: VsockChoice,
    vhost_ok: bool,
    rd: &RunDir,
    used_cids: &[u32],
) -> Result<VsockBackend, NoVhostVsock> {
    let user = || VsockBackend::VhostUser {
        cid: 3,
        socket: rd.vhost_socket(),
        uds_path: rd.vsock_uds(),
    };
    let vhost = || {
        let cid = (3u32..).find(|c| !used_cids.contains(c)).unwrap_or(3);
        VsockBackend::Vhost { cid }
    };
    match choice {
        VsockChoice::None => Ok(VsockBackend::None),
        VsockChoice::VhostUser => Ok(user()),
        VsockChoice::Vhost if vhost_ok => Ok(vhost()),
        VsockChoice::Vhost => Err(NoVhostVsock),
        VsockChoice::Auto if vhost_ok => Ok(vhost()),
        VsockChoice::Auto => Ok(user()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_picks_by_probe_and_both_give_a_transport() {
        let rd = RunDir::new(
            Path::new("/run/vfioctl"),
            crate::vm::rundir::VmName::new("lab").unwrap(),
        );
        let d = &rd;
        let v = choose(VsockChoice::Auto, true, d, &[3, 4]).unwrap();
        assert_eq!(v, VsockBackend::Vhost { cid: 5 });
        assert_eq!(
            v.transport(1024),
            Some(AgentTransport::Vsock { cid: 5, port: 1024 })
        );
        let u = choose(VsockChoice::Auto, false, d, &[]).unwrap();
        assert_eq!(
            u.transport(1024),
            Some(AgentTransport::Hybrid {
                uds_path: rd.vsock_uds(),
                port: 1024
            })
        );
        assert_eq!(
            u.backend_argv(Path::new("vhost-device-vsock")).unwrap(),
            vec![
                "vhost-device-vsock",
                "--vm",
                "guest-cid=3,socket=/run/vfioctl/lab/vhost-vsock.sock,uds-path=/run/vfioctl/lab/vsock.uds"
            ]
        );
        assert!(choose(VsockChoice::Vhost, false, d, &[]).is_err());
        assert_eq!(
            choose(VsockChoice::None, true, d, &[])
                .unwrap()
                .transport(1),
            None
        );
    }

    #[test]
    fn transport_json_shape() {
        let t = AgentTransport::Hybrid {
            uds_path: "/r/vsock.uds".into(),
            port: 1024,
        };
        assert_eq!(
            serde_json::to_value(&t).unwrap(),
            serde_json::json!({"kind": "hybrid", "uds_path": "/r/vsock.uds", "port": 1024})
        );
    }
}
