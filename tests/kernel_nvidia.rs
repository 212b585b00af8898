//! The NVIDIA tier (CI): the guest kernel's `nvidia` flavour built with Debian's 535 open
//! modules (`vfioctl kernel build --nvidia open-535`, .debs from `scripts/setup --nvidia`):
//! `modinfo` checks, then `modprobe nvidia` in a TCG guest must fail only with
//! "NVRM: No NVIDIA GPU found" (no unresolved symbol, no version mismatch).

mod kernel_support;

use std::time::Duration;

use kernel_support::*;

fn prerequisites() -> Result<(), String> {
    if !have_build_tools() {
        return Err("make/gcc/flex/bison missing (scripts/setup)".into());
    }
    kernel_tree().map(|_| ())?;
    if !vfioctl::kernel::cmd::have("qemu-system-x86_64") {
        return Err("qemu-system-x86_64 missing (scripts/setup)".into());
    }
    Ok(())
}

#[test]
fn nvidia_open_535_modules_load_up_to_no_gpu() {
    if let Err(e) = prerequisites() {
        skip_kernel!("{e}");
    }
    let pins = pins();
    let nv = &pins.nvidia["open-535"];
    let debs = lab().join("nvidia/debs");
    if !debs.join(&nv.source_deb).is_file()
        && !std::path::Path::new("/etc/apt/sources.list.d/vfioctl-nvidia.sources").is_file()
    {
        skip_kernel!(
            "NVIDIA .debs not fetched and contrib/non-free not enabled: scripts/setup --nvidia"
        );
    }
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
