//! QEMU's command line as a pure function of the resolved launch description: an argument
//! vector, never a shell string. Snapshot-tested.

use std::path::PathBuf;

use serde::Serialize;
use vfioctl_common::units;

use super::accel::Accel;
use super::devices::PlugSpec;
use super::ports::{Firmware, Plan};
use super::profile::HotplugMode;
use super::vsock::VsockBackend;

/// Everything `vm up` decided, ready to become argv.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Launch {
    /// The VM's name (QEMU's `-name vfioctl-NAME`).
    pub name: String,
    /// The QEMU binary (argv[0]).
    pub qemu: PathBuf,
    /// The accelerator the probe chose.
    pub accel: Accel,
    /// Number of virtual CPUs (`-smp`).
    pub vcpus: u32,
    /// Guest RAM in bytes (`-m`).
    pub memory: u64,
    /// Guest kernel (`-kernel`, with `cmdline` as `-append`).
    pub kernel: Option<PathBuf>,
    /// Initramfs (`-initrd`).
    pub initrd: Option<PathBuf>,
    /// Raw disk image, attached as virtio-blk.
    pub disk: Option<PathBuf>,
    /// Guest kernel command line (`-append`, only with a kernel).
    pub cmdline: String,
    /// Guest firmware; OVMF adds the two pflash drives.
    pub firmware: Firmware,
    /// OVMF's read-only code image.
    pub ovmf_code: PathBuf,
    /// The VM's private copy of OVMF_VARS.
    pub ovmf_vars: PathBuf,
    /// How the guest learns of hot-plugged devices (pinned with a `-global`).
    pub hotplug: HotplugMode,
    /// The root ports and the address-space settings they need.
    pub plan: Plan,
    /// The vsock device for the guest agent.
    pub vsock: VsockBackend,
    /// Devices plugged on the command line (`-device`), not over QMP.
    pub cold: Vec<PlugSpec>,
    /// QEMU's QMP socket (`-qmp unix:...,server=on,wait=off`).
    pub qmp_socket: PathBuf,
    /// The serial console's log file (`-serial file:...`).
    pub serial_log: PathBuf,
    /// QEMU's pid file (`-pidfile`).
    pub pid_file: PathBuf,
    /// The agent secret's file, handed to the guest as fw_cfg `opt/vfioctl/token`.
    pub agent_token: Option<PathBuf>,
    /// The VM asks the agent for `exec` (fw_cfg `opt/vfioctl/exec`); the image must allow
    /// it too.
    pub agent_exec: bool,
    /// Extra arguments from the profile's `qemu_args`, appended verbatim at the end.
    pub extra: Vec<String>,
    /// VFIO backend for host devices: with iommufd, `-object iommufd` and every
    /// vfio-pci device names it.
    pub vfio_backend: crate::shared::VfioBackend,
}

/// A path inside a QEMU option value: QEMU's option syntax doubles a comma.
fn p(x: &std::path::Path) -> String {
    x.display().to_string().replace(',', ",,")
}

/// The argument vector (argv[0] is the QEMU binary).
pub fn qemu_argv(l: &Launch) -> Vec<String> {
    let mut a: Vec<String> = vec![p(&l.qemu)];
    let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
    push(&["-name", &format!("vfioctl-{},debug-threads=on", l.name)]);
    let shared_mem = matches!(l.vsock, VsockBackend::VhostUser { .. });
    let mut machine = format!("q35,accel={}", l.accel);
    if shared_mem {
        machine.push_str(",memory-backend=mem0");
    }
    push(&["-machine", &machine]);
    let cpu = match (l.accel, l.plan.phys_bits) {
        (Accel::Kvm, _) => "host".to_string(),
        (Accel::Tcg, Some(b)) => format!("qemu64,phys-bits={b}"),
        (Accel::Tcg, None) => "qemu64".to_string(),
    };
    push(&["-cpu", &cpu]);
    push(&["-smp", &l.vcpus.to_string()]);
    push(&["-m", &units::short(l.memory)]);
    if shared_mem {
        // vhost-user needs guest RAM the backend can map.
        push(&[
            "-object",
            &format!(
                "memory-backend-memfd,id=mem0,size={},share=on",
                units::short(l.memory)
            ),
        ]);
    }
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]);
    push(&["-serial", &format!("file:{}", p(&l.serial_log))]);
    push(&[
        "-qmp",
        &format!("unix:{},server=on,wait=off", p(&l.qmp_socket)),
    ]);
    push(&["-pidfile", &p(&l.pid_file)]);
    if l.firmware == Firmware::Ovmf {
        push(&[
            "-drive",
            &format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                p(&l.ovmf_code)
            ),
        ]);
        push(&[
            "-drive",
            &format!("if=pflash,format=raw,unit=1,file={}", p(&l.ovmf_vars)),
        ]);
    }
    if let Some(k) = &l.kernel {
        push(&["-kernel", &p(k)]);
        push(&["-append", &l.cmdline]);
    }
    if let Some(i) = &l.initrd {
        push(&["-initrd", &p(i)]);
    }
    if let Some(d) = &l.disk {
        push(&["-drive", &format!("file={},if=virtio,format=raw", p(d))]);
    }
    push(&["-global", &l.hotplug.global()]);
    if let Some(h) = l.plan.pci_hole64_size {
        push(&[
            "-global",
            &format!("q35-pcihost.pci-hole64-size={}", units::short(h)),
        ]);
    }
    if let Some(mb) = l.plan.ovmf_mmio64_mb {
        push(&[
            "-fw_cfg",
            &format!("name=opt/ovmf/X-PciMmio64Mb,string={mb}"),
        ]);
    }
    if let Some(t) = &l.agent_token {
        push(&[
            "-fw_cfg",
            &format!("name={},file={}", vfioctl_common::proto::TOKEN_FW_CFG, p(t)),
        ]);
    }
    if l.agent_exec {
        push(&[
            "-fw_cfg",
            &format!("name={},string=1", vfioctl_common::proto::EXEC_FW_CFG),
        ]);
    }
    for port in &l.plan.ports {
        push(&["-device", &port.qemu_device()]);
    }
    match &l.vsock {
        VsockBackend::None => {}
        VsockBackend::Vhost { cid } => push(&[
            "-device",
            &format!("vhost-vsock-pci,id=vsock0,guest-cid={cid}"),
        ]),
        VsockBackend::VhostUser { socket, .. } => {
            push(&[
                "-chardev",
                &format!("socket,id=vsock0chr,path={}", p(socket)),
            ]);
            push(&[
                "-device",
                "vhost-user-vsock-pci,id=vsock0,chardev=vsock0chr",
            ]);
        }
    }
    if l.vfio_backend == crate::shared::VfioBackend::Iommufd {
        // One iommufd context for the VM's VFIO devices, cold and hot.
        a.push("-object".into());
        a.push(format!("iommufd,id={}", super::devices::IOMMUFD_ID));
    }
    for c in &l.cold {
        let args = c.cli_args_for(l.vfio_backend);
        a.extend(args);
    }
    a.extend(l.extra.iter().cloned());
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::ports::{self, DeviceBars, PhysBits};
    use crate::vm::profile::GpuSpec;

    fn launch(
        firmware: Firmware,
        accel: Accel,
        vsock: VsockBackend,
        devs: &[DeviceBars],
    ) -> Launch {
        let plan = ports::plan(
            devs,
            1,
            firmware,
            1 << 30,
            if accel == Accel::Kvm {
                PhysBits::host(46)
            } else {
                PhysBits::TCG
            },
        )
        .unwrap();
        Launch {
            name: "lab".into(),
            qemu: "qemu-system-x86_64".into(),
            accel,
            vcpus: 2,
            memory: 1 << 30,
            kernel: Some("/lab/vmlinuz".into()),
            initrd: Some("/lab/initrd.gz".into()),
            disk: None,
            cmdline: "console=ttyS0 quiet".into(),
            firmware,
            ovmf_code: "/usr/share/OVMF/OVMF_CODE.fd".into(),
            ovmf_vars: "/run/vfioctl/lab/OVMF_VARS.fd".into(),
            hotplug: HotplugMode::Acpi,
            plan,
            vsock,
            cold: Vec::new(),
            qmp_socket: "/run/vfioctl/lab/qmp.sock".into(),
            serial_log: "/run/vfioctl/lab/serial.log".into(),
            pid_file: "/run/vfioctl/lab/qemu.pid".into(),
            agent_token: Some("/run/vfioctl/lab/agent.token".into()),
            agent_exec: false,
            extra: Vec::new(),
            vfio_backend: crate::shared::VfioBackend::Group,
        }
    }

    #[test]
    fn tcg_lab_with_vhost_user_vsock() {
        let l = launch(
            Firmware::Seabios,
            Accel::Tcg,
            VsockBackend::VhostUser {
                cid: 3,
                socket: "/run/vfioctl/lab/vhost-vsock.sock".into(),
                uds_path: "/run/vfioctl/lab/vsock.uds".into(),
            },
            &[DeviceBars::emulated(8 << 30)],
        );
        insta::assert_snapshot!(qemu_argv(&l).join("\n"));
    }

    #[test]
    fn kvm_ovmf_vhost_vsock_cold_plugged_gpu() {
        let gpu = DeviceBars {
            label: "0000:41:00.0".into(),
            bdf: "0000:41:00.0".parse().ok(),
            pref64: vec![128 << 30, 32 << 20],
            mem32: vec![16 << 20],
            io: vec![],
        };
        let mut l = launch(
            Firmware::Ovmf,
            Accel::Kvm,
            VsockBackend::Vhost { cid: 3 },
            &[gpu],
        );
        l.hotplug = HotplugMode::Native;
        l.agent_exec = true;
        l.cold.push(PlugSpec {
            id: "gpu0".into(),
            port: "rp0".into(),
            gpu: GpuSpec::Vfio {
                bdf: "0000:41:00.0".parse().unwrap(),
            },
        });
        insta::assert_snapshot!(qemu_argv(&l).join("\n"));
    }

    #[test]
    fn commas_in_paths_are_doubled_for_qemu() {
        let mut l = launch(Firmware::Seabios, Accel::Tcg, VsockBackend::None, &[]);
        l.agent_token = Some("/run/a,b/lab/agent.token".into());
        l.qmp_socket = "/run/a,b/lab/qmp.sock".into();
        let a = qemu_argv(&l);
        assert!(
            a.contains(&"name=opt/vfioctl/token,file=/run/a,,b/lab/agent.token".to_string()),
            "{a:?}"
        );
        assert!(
            a.contains(&"unix:/run/a,,b/lab/qmp.sock,server=on,wait=off".to_string()),
            "{a:?}"
        );
        assert!(!a.iter().any(|x| x.contains("opt/vfioctl/exec")));
    }

    /// TCG, two ports: a VF (by address) on rp0 and an mdev (by UUID) on rp1, cold-plugged.
    fn tcg_with_a_vf_and_an_mdev() -> Launch {
        let mut l = launch(
            Firmware::Seabios,
            Accel::Tcg,
            VsockBackend::None,
            &[DeviceBars::emulated(8 << 20), DeviceBars::emulated(8 << 20)],
        );
        l.cold.push(PlugSpec {
            id: "gpu0".into(),
            port: "rp0".into(),
            gpu: GpuSpec::parse("vf:0000:41:00.4").unwrap(),
        });
        l.cold.push(PlugSpec {
            id: "gpu1".into(),
            port: "rp1".into(),
            gpu: GpuSpec::parse("mdev:83b8f4f2-509f-382f-3c1e-e6bfe0fa1001").unwrap(),
        });
        l
    }

    /// The iommufd backend: one `-object iommufd`, and every vfio-pci device (a VF by
    /// address, an mdev by sysfsdev) names it.
    #[test]
    fn tcg_iommufd_backend_with_a_vf_and_an_mdev() {
        let mut l = tcg_with_a_vf_and_an_mdev();
        l.vfio_backend = crate::shared::VfioBackend::Iommufd;
        insta::assert_snapshot!(qemu_argv(&l).join("\n"));
    }

    /// The same devices on the group backend: no iommufd object, no iommufd= property.
    #[test]
    fn tcg_group_backend_with_a_vf_and_an_mdev() {
        let l = tcg_with_a_vf_and_an_mdev();
        let a = qemu_argv(&l);
        assert!(!a.iter().any(|x| x.contains("iommufd")), "{a:?}");
        assert!(a.contains(&"vfio-pci,id=gpu1,bus=rp1,addr=0x0,sysfsdev=/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001".to_string()), "{a:?}");
    }
}
