//! The NVIDIA tier (CI): the guest kernel's `nvidia` flavour built with Debian's 535 open
//! modules (`vfioctl kernel build --nvidia open-535`, .debs from `scripts/setup --nvidia`):
//! `modinfo` checks, then `modprobe nvidia` in a TCG guest must fail only with
//! "NVRM: No NVIDIA GPU found" (no unresolved symbol, no version mismatch).

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

/// The NVIDIA 535 packages: fetched into the lab, or an apt source that serves them.
fn nvidia_debs(source_deb: &str) -> Result<(), vfioctl_testkit::Missing> {
    let deb = lab().join("nvidia/debs").join(source_deb);
    let apt = std::path::Path::new("/etc/apt/sources.list.d/vfioctl-nvidia.sources");
    if deb.is_file() || apt.is_file() {
        return Ok(());
    }
    Err(
        vfioctl_testkit::Missing::new("nvidia-535-debs", vfioctl_testkit::prereq::SETUP_NVIDIA)
            .detail(format!(
                "{} not fetched and {} not there",
                deb.display(),
                apt.display()
            )),
    )
}

#[test]
fn nvidia_open_535_modules_load_up_to_no_gpu() {
    vfioctl_testkit::require!(prerequisites());
    let pins = pins();
    let nv = &pins.nvidia["open-535"];
    vfioctl_testkit::require!(nvidia_debs(&nv.source_deb));
    let r =
        build(&["nvidia"], Some("open-535")).unwrap_or_else(|e| panic!("nvidia build failed: {e}"));
    let m = &r.manifest;
    let info = m.nvidia.as_ref().expect("nvidia info in the manifest");
    assert_eq!(info.version, nv.version);
    for k in [
        "kernel/drivers/video/nvidia.ko",
        "kernel/drivers/video/nvidia-uvm.ko",
        "kernel/drivers/video/nvidia-modeset.ko",
    ] {
        assert!(
            info.modules.contains_key(k),
            "{k} not installed: {:?}",
            info.modules
        );
    }
    assert!(
        info.vermagic
            .starts_with(&format!("{} SMP mod_unload", m.kernel_release)),
        "{}",
        info.vermagic
    );
    let ko = m
        .artefacts
        .modules_dir
        .join("kernel/drivers/video/nvidia.ko");
    let modinfo = |f: &str| {
        let o = std::process::Command::new("modinfo")
            .args(["-F", f])
            .arg(&ko)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(modinfo("version"), nv.version);
    assert_eq!(modinfo("license"), "Dual MIT/GPL");
    assert!(info.firmware.iter().any(|f| f.ends_with("gsp_ga10x.bin")));
    assert!(info
        .firmware
        .iter()
        .all(|f| f.starts_with(r.out.join("lib/firmware/nvidia").join(&nv.version))));

    let dir = tempfile::tempdir().unwrap();
    let rel = &m.kernel_release;
    let initrd = initramfs(
        dir.path(),
        "modprobe nvidia; echo \"VFIOCTL-MODPROBE-RC $?\"\ndmesg | grep -iE 'nvrm|nvidia|symbol|version magic'",
        &[(m.artefacts.modules_dir.clone(), &format!("lib/modules/{rel}"))],
    )
    .unwrap();
    let b = boot(&m.artefacts.vmlinuz, &initrd, "", Duration::from_secs(240)).unwrap();
    let s = &b.serial;
    assert!(
        s.contains("VFIOCTL-TEST-DONE"),
        "guest did not finish:\n{s}"
    );
    assert!(s.contains("NVRM: No NVIDIA GPU found"), "{s}");
    assert!(
        !s.contains("VFIOCTL-MODPROBE-RC 0"),
        "modprobe nvidia succeeded without a GPU?\n{s}"
    );
    for bad in [
        "Unknown symbol",
        "disagrees about version",
        "Invalid module format",
        "version magic",
    ] {
        assert!(!s.contains(bad), "`{bad}` in:\n{s}");
    }
}
