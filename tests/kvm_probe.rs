//! One KVM probe, cached per QEMU binary and kernel boot, decides both `check`'s `kvm`
//! verdict and `vm up`'s accelerator: a host where /dev/kvm exists but QEMU cannot run a
//! vCPU (LAB.md fact 7: "failed to set MSR 0x10a") fails `check` and gets TCG with the
//! same reason in `vm up`.

use std::path::Path;
use std::process::Command;

use vfioctl::vm::accel::{probe_key, CachedProbe, PROBE_CACHE_DIR};
use vfioctl::SysRoot;

fn fixture_copy() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu-server");
    let ok = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(d.path())
        .status()
        .unwrap();
    assert!(ok.success());
    d
}

fn vfioctl(root: &Path, args: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(root)
        .arg("--json")
        .args(args)
        .env("XDG_RUNTIME_DIR", root)
        .output()
        .unwrap();
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&o.stderr)))
}

#[test]
fn check_and_vm_up_share_one_cached_probe_verdict() {
    vfioctl_testkit::require!(vfioctl_testkit::prereq::qemu());
    let t = fixture_copy();
    let root = SysRoot::new(t.path());
    let key = probe_key(&root, Path::new("qemu-system-x86_64")).expect("a probe key");
    let why = "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69";
    let dir = root.path(PROBE_CACHE_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let cached = CachedProbe {
        qemu: "qemu-system-x86_64".into(),
        verdict: Err(why.into()),
        provisional: false,
    };
    std::fs::write(
        dir.join(format!("{key}.json")),
        serde_json::to_vec(&cached).unwrap(),
    )
    .unwrap();

    let c = vfioctl(t.path(), &["check"]);
    let kvm = c["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "kvm")
        .unwrap();
    assert_eq!(kvm["status"], "fail", "{kvm}");
    assert!(
        kvm["message"].as_str().unwrap().contains("MSR 0x10a"),
        "{kvm}"
    );

    let up = vfioctl(t.path(), &["vm", "up", "--dry-run", "--kernel", "/bin/sh"]);
    let argv: Vec<&str> = up["argv"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(argv.contains(&"q35,accel=tcg"), "{argv:?}");
    let w = up["warnings"].to_string();
    assert!(w.contains("MSR 0x10a"), "the same reason: {w}");

    // A different kernel boot is probed anew: the key changes with the boot id.
    std::fs::write(
        t.path().join("proc/sys/kernel/random/boot_id"),
        "00000000-0000-0000-0000-000000000001\n",
    )
    .ok();
    if t.path().join("proc/sys/kernel/random/boot_id").is_file() {
        assert_ne!(
            probe_key(&root, Path::new("qemu-system-x86_64")).unwrap(),
            key
        );
    }
}

/// A snapshot of another host carries that host's verdict under its own key (its QEMU
/// binary is not this machine's): replayed, `check` prints that verdict, provisional ones
/// ("no guest kernel to prove KVM with") included, instead of passing on /dev/kvm alone.
#[test]
fn a_snapshot_replays_the_verdict_its_host_recorded() {
    let t = fixture_copy();
    let dir = SysRoot::new(t.path()).path(PROBE_CACHE_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let cached = CachedProbe {
        qemu: "qemu-system-x86_64".into(),
        verdict: Err("no guest kernel to prove KVM with".into()),
        provisional: true,
    };
    std::fs::write(
        dir.join("0123456789abcdef01234567.json"),
        serde_json::to_vec(&cached).unwrap(),
    )
    .unwrap();
    let c = vfioctl(t.path(), &["check"]);
    let kvm = c["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "kvm")
        .unwrap();
    assert_eq!(kvm["status"], "fail", "{kvm}");
    assert!(
        kvm["message"].as_str().unwrap().contains("no guest kernel"),
        "{kvm}"
    );
}
