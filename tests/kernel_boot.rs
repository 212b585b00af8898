//! Built kernels boot. Two tiers:
//! - CI: `vfioctl kernel build` of the base flavour from the pinned linux-source
//!   (about 3-5 min clean on 2 cores; instant when the lab cache has it) and a TCG boot
//!   to a busybox `/init` that reports what the guest agent relies on (AF_VSOCK,
//!   /dev/vsock, /dev/kmsg, devtmpfs, PCIe port + virtio-pci drivers, ext4).
//! - nvidia (tests/kernel_nvidia.rs): the NVIDIA flavour with Debian's 535 open modules.
//!
//! Interim: the guest is booted with a direct `qemu-system-x86_64 -kernel -initrd`
//! and a busybox `/init`; once `vfioctl vm up` and the agent image land, these boots move
//! onto them. Readiness comes from the guest's serial output, never a sleep.

mod kernel_support;

use std::time::Duration;

use kernel_support::*;

/// make/gcc/flex/bison, the pinned kernel tree, QEMU and busybox.
fn prerequisites() -> Result<(), vfioctl_testkit::Missing> {
    build_prerequisites()?;
    vfioctl_testkit::prereq::qemu()?;
    vfioctl_testkit::prereq::busybox()?;
    Ok(())
}

#[test]
fn base_kernel_builds_and_boots_under_tcg() {
    vfioctl_testkit::require!(prerequisites());
    let r = build(&[], None).unwrap_or_else(|e| panic!("kernel build failed: {e}"));
    let m = &r.manifest;
    assert_eq!(m.verify.dropped, 0);
    assert!(
        m.kernel_release.ends_with("-vfioctl"),
        "{}",
        m.kernel_release
    );
    for p in [
        &m.artefacts.vmlinuz,
        &m.artefacts.config,
        &m.artefacts.module_symvers,
        &m.artefacts.system_map,
    ] {
        assert!(p.is_file(), "{} missing", p.display());
    }
    assert!(m.artefacts.modules_dir.join("modules.dep").is_file());
    assert!(
        m.artefacts
            .modules_dir
            .join("build/Module.symvers")
            .is_file(),
        "build link"
    );
    assert!(m.artefacts.vmlinuz_bytes > 1_000_000);

    let dir = tempfile::tempdir().unwrap();
    let initrd = initramfs(
        dir.path(),
        "echo \"VFIOCTL-UNAME $(uname -r)\"\n\
         [ -c /dev/vsock ] && echo VFIOCTL-DEV-VSOCK\n\
         [ -c /dev/kmsg ] && echo VFIOCTL-DEV-KMSG\n\
         dmesg | grep -q 'PF_VSOCK' && echo VFIOCTL-AF-VSOCK\n\
         grep -qw ext4 /proc/filesystems && echo VFIOCTL-EXT4\n\
         for d in /sys/bus/pci/devices/*; do drv=$(readlink $d/driver); echo \"VFIOCTL-PCI ${d##*/} ${drv##*/}\"; done",
        &[],
    )
    .unwrap();
    let b = boot(&m.artefacts.vmlinuz, &initrd, "", Duration::from_secs(180)).unwrap();
    let s = &b.serial;
    assert!(
        s.contains("VFIOCTL-TEST-DONE"),
        "guest did not finish ({:.1} s):\n{s}",
        b.seconds
    );
    assert!(
        s.contains(&format!("VFIOCTL-UNAME {}", m.kernel_release)),
        "{s}"
    );
    for marker in [
        "VFIOCTL-DEV-VSOCK",
        "VFIOCTL-DEV-KMSG",
        "VFIOCTL-AF-VSOCK",
        "VFIOCTL-EXT4",
    ] {
        assert!(s.contains(marker), "missing {marker}:\n{s}");
    }
    assert!(
        s.lines()
            .any(|l| l.starts_with("VFIOCTL-PCI") && l.trim_end().ends_with("pcieport")),
        "{s}"
    );
    assert!(
        s.lines()
            .any(|l| l.starts_with("VFIOCTL-PCI") && l.trim_end().ends_with("virtio-pci")),
        "{s}"
    );
    assert!(b.exited, "QEMU did not power off");
    eprintln!("boot to poweroff: {:.2} s", b.seconds);
}
