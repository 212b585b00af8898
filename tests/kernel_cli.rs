//! `vfioctl kernel verify` through the real binary: exit codes, text and --json.
//! Needs no kernel tree (without --source the drops are listed, not analysed).

mod kernel_support;

use std::process::Command;

use kernel_support::*;

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let cfgs = d.path().join("configs");
    std::fs::create_dir_all(&cfgs).unwrap();
    std::fs::copy(configs().join("manifest.toml"), cfgs.join("manifest.toml")).unwrap();
    std::fs::write(
        cfgs.join("00-base.config"),
        "CONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\n# CONFIG_DRM_NOUVEAU is not set\nCONFIG_LOCALVERSION=\"-x\"\n",
    )
    .unwrap();
    std::fs::write(cfgs.join("10-x86_64.config"), "CONFIG_64BIT=y\n").unwrap();
    std::fs::write(cfgs.join("20-extra.config"), "CONFIG_NR_CPUS=0x40\n").unwrap();
    std::fs::write(cfgs.join("allowlist"), "# none\n").unwrap();
    (d, cfgs)
}

fn vfioctl(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn verify_passes_and_fails_with_documented_exit_codes() {
    let (d, cfgs) = setup();
    let good = d.path().join("good.config");
    std::fs::write(
        &good,
        "CONFIG_64BIT=y\nCONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_LOCALVERSION=\"-x\"\nCONFIG_NR_CPUS=64\n",
    )
    .unwrap();
    let c = cfgs.to_str().unwrap();
    let (rc, out) = vfioctl(&[
        "kernel",
        "verify",
        "--configs",
        c,
        "--config",
        good.to_str().unwrap(),
        "--flavour",
        "extra",
    ]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("6 options requested, 6 landed, 0 dropped"),
        "{out}"
    );

    let bad = d.path().join("bad.config");
    std::fs::write(
        &bad,
        "CONFIG_64BIT=y\nCONFIG_PCI=y\nCONFIG_LOCALVERSION=\"\"\n",
    )
    .unwrap();
    let (rc, out) = vfioctl(&[
        "kernel",
        "verify",
        "--configs",
        c,
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("DROPPED CONFIG_VIRTIO_PCI=y"), "{out}");
    assert!(out.contains("DROPPED CONFIG_LOCALVERSION=\"-x\""), "{out}");

    let (rc, out) = vfioctl(&[
        "--json",
        "kernel",
        "verify",
        "--configs",
        c,
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(rc, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dropped"].as_array().unwrap().len(), 2);
    assert_eq!(v["dropped"][0]["symbol"], "LOCALVERSION");

    let (rc, out) = vfioctl(&[
        "kernel",
        "verify",
        "--configs",
        c,
        "--config",
        bad.to_str().unwrap(),
        "--flavour",
        "nope",
    ]);
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("unknown flavour `nope`"), "{out}");
}

#[test]
fn build_refuses_an_unpinned_tarball() {
    let (d, cfgs) = setup();
    let fake = d.path().join("linux-fake.tar.xz");
    std::fs::write(&fake, b"not a kernel").unwrap();
    let lab = d.path().join("lab");
    let (rc, out) = vfioctl(&[
        "kernel",
        "build",
        "--configs",
        cfgs.to_str().unwrap(),
        "--source",
        fake.to_str().unwrap(),
        "--lab",
        lab.to_str().unwrap(),
    ]);
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("does not match the pinned"), "{out}");
    assert!(out.contains("--allow-unpinned"), "{out}");
}
