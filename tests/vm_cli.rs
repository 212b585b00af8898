//! The `vfioctl vm` command line without booting: plan output (the README's example),
//! idempotent down, errors with exit codes.

use std::process::Command;

fn vfioctl(run_dir: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(args)
        .env("VFIOCTL_RUN_DIR", run_dir)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn plan_for_the_8g_stand_in() {
    let d = tempfile::tempdir().unwrap();
    let (code, out, err) = vfioctl(
        d.path(),
        &[
            "vm",
            "plan",
            "--gpu",
            "emulated:8G",
            "--spare",
            "1",
            "--cpu",
            "tcg",
        ],
    );
    assert_eq!(code, 0, "{err}");
    insta::assert_snapshot!(out);
    let (code, out, _) = vfioctl(
        d.path(),
        &[
            "--json",
            "vm",
            "plan",
            "--gpu",
            "emulated:128G",
            "--firmware",
            "ovmf",
            "--cpu",
            "host:40",
        ],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ports"][0]["pref64_reserve"], 128u64 << 30);
    assert_eq!(
        v["ovmf_mmio64_mb"],
        serde_json::Value::Null,
        "128G fits the 40-bit dynamic window"
    );
    let (code, _, err) = vfioctl(
        d.path(),
        &[
            "vm",
            "plan",
            "--gpu",
            "emulated:512G",
            "--firmware",
            "ovmf",
            "--cpu",
            "host:39",
        ],
    );
    assert_eq!(code, 2, "refused early: {err}");
    assert!(err.contains("physical address bits"), "{err}");
}

#[test]
fn down_is_idempotent_and_status_names_the_fix() {
    let d = tempfile::tempdir().unwrap();
    let (code, out, _) = vfioctl(d.path(), &["vm", "down", "nope"]);
    assert_eq!(code, 0);
    assert!(out.contains("not running"), "{out}");
    let (code, _, err) = vfioctl(d.path(), &["vm", "status", "nope"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("does not exist") && err.contains("hint"),
        "{err}"
    );
    let (code, out, _) = vfioctl(d.path(), &["--json", "vm", "list"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]");
    let (code, _, err) = vfioctl(d.path(), &["vm", "plug", "--gpu", "emulated:3G"]);
    assert_eq!(code, 2, "{err}");
}
