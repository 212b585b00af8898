//! What QEMU gets for one GPU: `vfio-pci` for a host device, `ivshmem-plain` on a RAM
//! backend for the lab's stand-in. The same description gives `-device` arguments
//! (cold plug) and QMP arguments (hot plug).

use serde::Serialize;
use serde_json::{json, Value};
use vfioctl_common::units;

use super::profile::GpuSpec;
use crate::shared::VfioBackend;

/// Id of the `iommufd` object a VM on the iommufd backend gets (`-object iommufd,id=...`).
pub const IOMMUFD_ID: &str = "iommufd0";

/// PCI ids of QEMU's ivshmem (Red Hat, Inc. Inter-VM shared memory).
pub const IVSHMEM_ID: &str = "1af4:1110";

/// One device on one root port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PlugSpec {
    /// QEMU device id (`gpu0`).
    pub id: String,
    /// Root port id (`rp0`).
    pub port: String,
    /// The device.
    pub gpu: GpuSpec,
}

impl PlugSpec {
    /// Id of the memory backend object (stand-in only).
    pub fn memdev_id(&self) -> Option<String> {
        match self.gpu {
            GpuSpec::Emulated { .. } => Some(format!("{}-mem", self.id)),
            GpuSpec::Vfio { .. } | GpuSpec::Mdev { .. } => None,
        }
    }

    /// `object-add` arguments for the stand-in's backend.
    pub fn object_add_args(&self) -> Option<Value> {
        match self.gpu {
            // reserve=off (MAP_NORESERVE): a BAR stand-in never touches most of its
            // memory, and a 32G backend must not need 32G of commit on the host.
            GpuSpec::Emulated { size } => Some(json!({
                "qom-type": "memory-backend-ram",
                "id": self.memdev_id(),
                "size": size,
                "reserve": false,
            })),
            GpuSpec::Vfio { .. } | GpuSpec::Mdev { .. } => None,
        }
    }

    /// `device_add` arguments. Always `addr=0x0`: a second device on a root port without
    /// it lands on slot 1, which the guest never scans.
    pub fn device_add(&self) -> qapi_qmp::device_add {
        self.device_add_for(VfioBackend::Group)
    }

    /// [`device_add`](Self::device_add) for a VM on `backend`: with iommufd, a vfio-pci
    /// device names the VM's `iommufd` object.
    pub fn device_add_for(&self, backend: VfioBackend) -> qapi_qmp::device_add {
        let mut props = vec![("addr".to_string(), json!("0x0"))];
        let driver = match &self.gpu {
            GpuSpec::Vfio { bdf } => {
                props.push(("host".into(), json!(bdf.to_string())));
                "vfio-pci"
            }
            GpuSpec::Mdev { uuid } => {
                props.push(("sysfsdev".into(), json!(uuid.sysfsdev())));
                "vfio-pci"
            }
            GpuSpec::Emulated { .. } => {
                props.push(("memdev".into(), json!(self.memdev_id())));
                "ivshmem-plain"
            }
        };
        if driver == "vfio-pci" && backend == VfioBackend::Iommufd {
            props.push(("iommufd".into(), json!(IOMMUFD_ID)));
        }
        qapi_qmp::device_add::new(
            driver,
            Some(self.id.clone()),
            Some(self.port.clone()),
            props,
        )
    }

    /// `-object`/`-device` arguments for cold plug.
    pub fn cli_args(&self) -> Vec<String> {
        self.cli_args_for(VfioBackend::Group)
    }

    /// [`cli_args`](Self::cli_args) for a VM on `backend`.
    pub fn cli_args_for(&self, backend: VfioBackend) -> Vec<String> {
        let mut out = Vec::new();
        if let GpuSpec::Emulated { size } = self.gpu {
            out.push("-object".into());
            out.push(format!(
                "memory-backend-ram,id={},size={},reserve=off",
                self.memdev_id().unwrap_or_default(),
                units::short(size)
            ));
        }
        let d = self.device_add_for(backend);
        let mut s = format!("{},id={},bus={}", d.driver, self.id, self.port);
        for (k, v) in &d.arguments {
            let v = v
                .as_str()
                .map(String::from)
                .unwrap_or_else(|| v.to_string());
            s.push_str(&format!(",{k}={v}"));
        }
        out.push("-device".into());
        out.push(s);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stand_in_and_vfio_arguments() {
        let e = PlugSpec {
            id: "gpu0".into(),
            port: "rp0".into(),
            gpu: GpuSpec::Emulated { size: 8 << 30 },
        };
        assert_eq!(
            e.object_add_args().unwrap(),
            json!({"qom-type": "memory-backend-ram", "id": "gpu0-mem", "size": 8u64 << 30, "reserve": false})
        );
        assert_eq!(
            serde_json::to_value(e.device_add()).unwrap(),
            json!({"driver": "ivshmem-plain", "id": "gpu0", "bus": "rp0", "addr": "0x0", "memdev": "gpu0-mem"})
        );
        assert_eq!(
            e.cli_args(),
            vec![
                "-object",
                "memory-backend-ram,id=gpu0-mem,size=8G,reserve=off",
                "-device",
                "ivshmem-plain,id=gpu0,bus=rp0,addr=0x0,memdev=gpu0-mem"
            ]
        );
        let v = PlugSpec {
            id: "gpu1".into(),
            port: "rp3".into(),
            gpu: GpuSpec::Vfio {
                bdf: "41:00.0".parse().unwrap(),
            },
        };
        assert_eq!(v.object_add_args(), None);
        assert_eq!(
            serde_json::to_value(v.device_add()).unwrap(),
            json!({"driver": "vfio-pci", "id": "gpu1", "bus": "rp3", "addr": "0x0", "host": "0000:41:00.0"})
        );
    }
}
