//! The complete configuration.toml vfioctl starts from when no `--base` is given: Kata's
//! QEMU GPU template for the target's key scheme, with the template's defaults (paths as
//! kata-deploy installs them under /opt/kata). The plan is then applied to it with the
//! same code that patches a user's file.

use std::fmt::Write;

use super::plan::{AGENT, HQ};
use super::version::{port, KeyScheme, Runtime, Target};

/// kata-deploy's install prefix.
pub const PREFIX: &str = "/opt/kata";

struct Writer<'a> {
    out: String,
    target: &'a Target,
}

impl Writer<'_> {
    fn header(&mut self, table: &str, comment: &[&str]) {
        if !self.out.ends_with("\n\n") {
            self.out.push('\n');
        }
        for c in comment {
            let _ = writeln!(self.out, "# {c}");
        }
        let _ = writeln!(self.out, "[{table}]");
    }

    /// A key with its comment, written only when the target reads it.
    fn key(&mut self, table: &str, key: &str, raw: &str, comment: &[&str]) {
        if !self.target.reads(table, key) {
            return;
        }
        for c in comment {
            if c.is_empty() {
                self.out.push_str("#\n");
            } else {
                let _ = writeln!(self.out, "# {c}");
            }
        }
        let _ = writeln!(self.out, "{key} = {raw}");
        self.out.push('\n');
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

/// The starting file for `target`.
pub fn base(target: &Target) -> String {
    let rs = target.runtime == Runtime::Rs;
    let scheme = target.scheme();
    let mut w = Writer {
        out: String::new(),
        target,
    };
    let _ = writeln!(
        w.out,
        "# Kata Containers configuration for QEMU with VFIO GPU passthrough, written by\n\
         # `vfioctl kata config` for {target}.\n\
         #\n\
         # Lines marked \"vfioctl:\" were derived from this host; the other values are the\n\
         # defaults of Kata's QEMU NVIDIA GPU template ({}).\n\
         # Install: sudo install -D -m 0644 <this file> /etc/kata-containers/configuration.toml",
        if rs {
            "src/runtime-rs/config/configuration-qemu-nvidia-gpu-runtime-rs.toml.in"
        } else {
            "src/runtime/config/configuration-qemu-nvidia-gpu.toml.in"
        }
    );
    w.header(HQ, &[]);
    let qemu = format!("{PREFIX}/bin/qemu-system-x86_64");
    w.key(HQ, "path", &q(&qemu), &[]);
    w.key(
        HQ,
        "kernel",
        &q(&format!(
            "{PREFIX}/share/kata-containers/vmlinuz-nvidia-gpu.container"
        )),
        &["Guest kernel; it needs CONFIG_HOTPLUG_PCI_PCIE and CONFIG_PCI_MMCONFIG for large BARs."],
    );
    w.key(
        HQ,
        "image",
        &q(&format!(
            "{PREFIX}/share/kata-containers/kata-containers-nvidia-gpu.img"
        )),
        &["Guest root filesystem image. Set either image or initrd, never both."],
    );
    w.key(HQ, "initrd", &q(""), &[]);
    w.key(
        HQ,
        "machine_type",
        &q("q35"),
        &["Machine type: PCIe root ports need q35."],
    );
    w.key(
        HQ,
        "rootfs_type",
        &q("erofs"),
        &["Filesystem of the image: ext4, xfs or erofs."],
    );
    w.key(
        HQ,
        "kernel_params",
        &q(""),
        &["Extra guest kernel parameters, separated by spaces."],
    );
    w.key(
        HQ,
        "firmware",
        &q(""),
        &["Firmware image; empty uses QEMU's default (SeaBIOS)."],
    );
    w.key(HQ, "default_vcpus", "1", &["vCPUs at boot."]);
    w.key(
        HQ,
        "default_maxvcpus",
        "0",
        &["Maximum vCPUs; 0 means the host's CPU count."],
    );
    w.key(HQ, "default_memory", "2048", &["Memory at boot, in MiB."]);
    w.key(
        HQ,
        "default_bridges",
        "1",
        &["PCI bridges for devices that are not PCIe."],
    );
    w.key(
        HQ,
        "disable_image_nvdimm",
        "true",
        &["Attach the image as virtio-blk instead of an NVDIMM (no DAX)."],
    );
    w.key(HQ, "block_device_driver", &q("virtio-blk"), &[]);
    w.key(HQ, "shared_fs", &q("virtio-fs"), &[]);
    w.key(
        HQ,
        "virtio_fs_daemon",
        &q(&format!("{PREFIX}/libexec/virtiofsd")),
        &[],
    );
    w.key(
        HQ,
        "valid_virtio_fs_daemon_paths",
        &format!("[{}]", q(&format!("{PREFIX}/libexec/virtiofsd"))),
        &[],
    );
    w.key(HQ, "virtio_fs_cache", &q("auto"), &[]);
    w.key(
        HQ,
        "valid_hypervisor_paths",
        &format!("[{}]", q(&qemu)),
        &[],
    );
    w.key(
        HQ,
        "enable_annotations",
        r#"["enable_iommu", "kernel_params"]"#,
        &["Pod annotations allowed to override these keys."],
    );
    w.key(
        HQ,
        "enable_iommu",
        "false",
        &[
            "Give the guest a vIOMMU (intel_iommu=on,iommu=pt); needed only for",
            "vfio_mode = \"vfio\".",
        ],
    );
    w.key(HQ, "enable_iommu_platform", "false", &[]);
    match scheme {
        KeyScheme::RootBus => {
            w.key(
                HQ,
                "hotplug_vfio_on_root_bus",
                "false",
                &[
                    "Hot-plug VFIO devices on a PCIe root port instead of a PCI bridge;",
                    "devices with large BARs need it. Valid on q35 only.",
                ],
            );
            w.key(
                HQ,
                "pcie_root_port",
                "0",
                &["Root ports to create; only used with hotplug_vfio_on_root_bus."],
            );
        }
        KeyScheme::PortsImplicit | KeyScheme::Ports => {
            w.key(
                HQ,
                "hot_plug_vfio",
                &q(port::NONE),
                &[
                    "Where VFIO devices are hot-plugged: \"bridge-port\", \"root-port\",",
                    "\"switch-port\" or \"no-port\" (disabled). Only one of hot_plug_vfio",
                    "and cold_plug_vfio may be set.",
                ],
            );
            w.key(
                HQ,
                "cold_plug_vfio",
                &q(port::NONE),
                &[
                    "Where VFIO devices are cold-plugged at boot: \"bridge-port\",",
                    "\"root-port\", \"switch-port\" or \"no-port\" (disabled).",
                ],
            );
        }
        KeyScheme::RuntimeRs => {
            w.key(
                HQ,
                "cold_plug_vfio",
                &q(port::NONE),
                &["Cold plug of VFIO devices: \"no-port\" (disabled) or \"root-port\"."],
            );
        }
    }
    if scheme != KeyScheme::RootBus {
        w.key(
            HQ,
            "pcie_root_port",
            "0",
            &[
                "PCIe root ports to create, for large PCI BAR devices such as NVIDIA GPUs",
                "(at most 16). Root ports and switch ports cannot both be set.",
            ],
        );
    }
    w.key(
        HQ,
        "pcie_switch_port",
        "0",
        &["PCIe switch ports to create."],
    );
    w.key(
        HQ,
        "guest_hook_path",
        &q(""),
        &["OCI hooks in the guest; recommended value when enabling: /usr/share/oci/hooks."],
    );

    w.header(AGENT, &[]);
    w.key(AGENT, "enable_debug", "false", &[]);
    w.key(
        AGENT,
        "kernel_modules",
        "[]",
        &["Modules the agent loads at boot."],
    );
    if rs {
        w.key(
            AGENT,
            "dial_timeout_ms",
            "1000",
            &["Per-attempt timeout connecting to the agent, in ms."],
        );
    }

    w.header("runtime", &[]);
    if rs {
        w.key("runtime", "name", &q("virt_container"), &[]);
        w.key("runtime", "hypervisor_name", &q("qemu"), &[]);
        w.key("runtime", "agent_name", &q("kata"), &[]);
    }
    w.key("runtime", "internetworking_model", &q("tcfilter"), &[]);
    w.key("runtime", "disable_guest_seccomp", "true", &[]);
    w.key("runtime", "sandbox_cgroup_only", "true", &[]);
    w.key("runtime", "static_sandbox_resource_mgmt", "true", &[]);
    w.key(
        "runtime",
        "vfio_mode",
        &q("guest-kernel"),
        &[
            "\"guest-kernel\": the guest's own driver binds the device;",
            "\"vfio\": the guest binds it to vfio-pci (needs enable_iommu).",
        ],
    );
    w.key("runtime", "experimental", "[]", &[]);
    // One trailing newline, as an editor saves it.
    while w.out.ends_with("\n\n") {
        w.out.pop();
    }
    w.out
}
