//! `vfioctl rootfs build` with the real Debian lab kernel's modules: byte-identical
//! rebuilds, module dependency order, the NVIDIA flavour's missing-inputs report, ext4.

use std::path::Path;
use std::process::Command;

use vfioctl::rootfs::{build, BuildOptions};
use vfioctl_testkit::build::static_agent;
use vfioctl_testkit::prereq::repo as workspace;
use vfioctl_testkit::{prereq, require, Missing};

fn opts(manifest: &str, out: &Path) -> Result<BuildOptions, Missing> {
    let k = prereq::lab_kernel()?;
    Ok(BuildOptions {
        manifest: workspace().join("rootfs").join(manifest),
        kernel_modules: Some(k),
        out: out.into(),
        agent: Some(static_agent()),
        ..Default::default()
    })
}

fn list(archive: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("zcat {} | cpio -t --quiet", archive.display()))
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect()
}

fn extract(archive: &Path, file: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "zcat {} | cpio -i --quiet --to-stdout {file}",
            archive.display()
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn lab_initramfs_is_byte_identical_and_complete() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.cpio.gz"), dir.path().join("b.cpio.gz"));
    let oa = require!(opts("lab.toml", &a));
    let ra = build(&oa).unwrap();
    let rb = build(&opts("lab.toml", &b).unwrap()).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert_eq!(ra.sha256, rb.sha256);
    assert!(ra.bytes <= 8 << 20, "lab initramfs is {} bytes", ra.bytes);

    let names = list(&a);
    for want in [
        "init",
        "usr/bin/vfioctl-agent",
        "dev/console",
        "etc/vfioctl/agent.conf",
        "etc/vfioctl/modules.load",
    ] {
        assert!(
            names.iter().any(|n| n == want),
            "{want} missing from {names:?}"
        );
    }
    // Load order: every module after its dependencies.
    let load = extract(&a, "etc/vfioctl/modules.load");
    let order: Vec<&str> = load
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit('/').next().unwrap())
        .collect();
    let pos = |m: &str| {
        order
            .iter()
            .position(|x| *x == m)
            .unwrap_or_else(|| panic!("{m} not in {order:?}"))
    };
    assert!(pos("virtio.ko") < pos("virtio_pci.ko"));
    assert!(pos("vsock.ko") < pos("vmw_vsock_virtio_transport_common.ko"));
    assert!(pos("vmw_vsock_virtio_transport_common.ko") < pos("vmw_vsock_virtio_transport.ko"));
    // Each listed module is in the archive.
    for l in load.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            names.iter().any(|n| format!("/{n}") == l),
            "{l} not shipped"
        );
    }
    assert_eq!(
        extract(&a, "etc/vfioctl/agent.conf").lines().last(),
        Some("exec=0")
    );
}

#[test]
fn vfio_variant_has_busybox_vfio_modules_and_exec() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("v.cpio.gz");
    let mut o = require!(opts("lab-vfio.toml", &out));
    require!(prereq::busybox());
    o.extra = vec![(
        workspace().join("rootfs/lab.toml"),
        "/etc/extra.toml".into(),
    )];
    let r = build(&o).unwrap();
    let names = list(&out);
    assert!(names.iter().any(|n| n == "bin/busybox"));
    assert!(names.iter().any(|n| n == "bin/sh"));
    assert!(names.iter().any(|n| n == "etc/extra.toml"));
    let load = extract(&out, "etc/vfioctl/modules.load");
    let idx = |m: &str| {
        load.find(m)
            .unwrap_or_else(|| panic!("{m} not loaded: {load}"))
    };
    assert!(idx("irqbypass.ko") < idx("vfio-pci-core.ko"));
    assert!(idx("vfio-pci-core.ko") < idx("vfio-pci.ko"));
    assert!(idx("e1000e.ko") > 0);
    assert_eq!(
        extract(&out, "etc/vfioctl/agent.conf").lines().last(),
        Some("exec=1")
    );
    assert!(r
        .modules
        .iter()
        .any(|m| m.name == "vfio_pci" && m.loaded_at_boot));
}

#[test]
fn nvidia_flavour_reports_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("n.cpio.gz");
    let o = require!(opts("nvidia.toml", &out));
    require!(prereq::busybox());
    if std::env::var_os("NVIDIA_USERLAND").is_some() {
        require!(Err::<(), _>(
            Missing::new("NVIDIA_USERLAND unset", "unset NVIDIA_USERLAND")
                .detail("this test checks the report of what is missing without it")
        ));
    }
    let r = build(&o).unwrap();
    assert!(r
        .missing_optional
        .iter()
        .any(|m| m.contains("NVIDIA_USERLAND") && m.contains("nvidia-smi")));
    assert!(r
        .missing_optional
        .iter()
        .any(|m| m.contains("kernel module nvidia ")));
    assert_eq!(r.guest_hook_path.as_deref(), Some("/usr/share/oci/hooks"));
    let names = list(&out);
    assert!(names
        .iter()
        .any(|n| n == "usr/share/oci/hooks/prestart/nvidia-container-toolkit.sh"));
}

#[test]
fn ext4_image_through_mkfs_d() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("l.cpio.gz");
    let img = dir.path().join("l.ext4");
    let mut o = require!(opts("lab.toml", &out));
    if !Path::new("/sbin/mkfs.ext4").exists() {
        require!(prereq::program("mkfs.ext4", prereq::SETUP));
    }
    o.ext4 = Some(img.clone());
    build(&o).unwrap();
    let out = Command::new("debugfs")
        .args(["-R", "ls -l /usr/bin"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("vfioctl-agent"));
}

#[test]
fn cli_build_prints_json_report() {
    let k = require!(prereq::lab_kernel());
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("c.cpio.gz");
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(["--json", "rootfs", "build", "--manifest"])
        .arg(workspace().join("rootfs/lab.toml"))
        .arg("--kernel-modules")
        .arg(&k)
        .arg("--agent")
        .arg(static_agent())
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["manifest"], "lab");
    assert!(v["bytes"].as_u64().unwrap() > 0);
    // A module the kernel does not have is a usage error (exit 2) naming it.
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\n[modules]\nload = [\"no_such_module\"]\n",
    )
    .unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(["rootfs", "build", "--manifest"])
        .arg(&bad)
        .arg("--kernel-modules")
        .arg(&k)
        .arg("--agent")
        .arg(static_agent())
        .arg("--out")
        .arg(dir.path().join("bad.cpio.gz"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no_such_module"));
}

/// The README's `vfioctl rootfs build` example, run as written (from the source tree).
#[test]
fn readme_example_builds() {
    let kernel = require!(prereq::lab_kernel());
    let readme = std::fs::read_to_string(workspace().join("docs/commands/guest.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("vfioctl rootfs build --manifest rootfs/lab.toml"))
        .expect("README example");
    // Point the lab at this run's lab directory and the output at a private path.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("readme.cpio.gz");
    let mut args: Vec<String> = line.split_whitespace().skip(1).map(String::from).collect();
    for (flag, value) in [
        ("--kernel-modules", kernel.display().to_string()),
        ("--agent", static_agent().display().to_string()),
        ("--out", out.display().to_string()),
    ] {
        let i = args.iter().position(|a| a == flag).expect(flag);
        args[i + 1] = value;
    }
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .current_dir(workspace())
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
}
