//! `vfioctl regress` against the foundation's realistic sysfs trees: device selectors
//! resolve to IOMMU groups, scenarios sharing a group never run together, and the
//! fleet manifests come out of the real command.

use std::path::{Path, PathBuf};
use std::process::Command;

use vfioctl::regress::lab::{keys_for, resolve};
use vfioctl::regress::schedule::{conflicts, simulate, Job};
use vfioctl::regress::Plan;
use vfioctl::SysRoot;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

const PLAN: &str = r#"
name = "gpu-server"
[[scenario]]
name = "c3-hot"
devices = ["0000:c3:00.0"]
[[scenario]]
name = "c3-cold"
devices = ["c3:00.0"]
plug = "cold"
[[scenario]]
name = "c4-hot"
devices = ["0000:c4:00.0"]
[[scenario]]
name = "every-gpu"
devices = ["class:gpu"]
[[scenario]]
name = "standin"
devices = ["emulated:8G"]
[[scenario]]
name = "absent"
devices = ["0000:99:00.0"]
"#;

#[test]
fn selectors_resolve_to_iommu_groups_and_conflicts_follow() {
    let root = SysRoot::new(fixture("gpu-server"));
    let plan = Plan::parse(PLAN, Path::new("p.toml"), &|_| None).unwrap();
    let jobs: Vec<Job> = plan.scenarios[..5]
        .iter()
        .map(|s| Job {
            keys: keys_for(&resolve(&root, s).unwrap()),
            weight_ms: 0,
        })
        .collect();
    assert_eq!(jobs[0].keys.iter().collect::<Vec<_>>(), ["iommu-group:15"]);
    assert_eq!(jobs[2].keys.iter().collect::<Vec<_>>(), ["iommu-group:17"]);
    assert!(jobs[4].keys.is_empty(), "stand-ins hold no host device");
    assert!(conflicts(&jobs[0], &jobs[1]), "same GPU twice");
    assert!(!conflicts(&jobs[0], &jobs[2]), "different GPUs");
    assert!(conflicts(&jobs[3], &jobs[0]) && conflicts(&jobs[3], &jobs[2]));
    // With 5 slots and equal durations: c3-hot|c4-hot|standin first, then c3-cold, then
    // every-gpu (which needs all GPUs) -> three rounds.
    let d = [10; 5];
    assert_eq!(simulate(&jobs, 5, &d).makespan_ms, 30);
    let e = resolve(&root, &plan.scenarios[5]).unwrap_err().to_string();
    assert!(e.contains("0000:99:00.0"), "{e}");
}

#[test]
fn emit_k8s_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("lab.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(["regress"])
        .arg(&plan)
        .args([
            "--emit",
            "k8s",
            "--nodes",
            "gpu-a,gpu-b",
            "--image",
            "reg/vfioctl:1",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y = String::from_utf8(out.stdout).unwrap();
    // JSON manifests (kubectl reads them as it reads YAML)
    assert_eq!(y.matches("\"kind\": \"Job\"").count(), 2, "{y}");
    assert!(
        y.contains("\"gpu-b\"") && y.contains("\"image\": \"reg/vfioctl:1\""),
        "{y}"
    );

    // No nodes anywhere: a usage error with a hint.
    let out = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(["regress"])
        .arg(&plan)
        .args(["--emit", "k8s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--nodes"));
}

#[test]
fn bad_plans_exit_2_naming_scenario_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("bad.toml");
    std::fs::write(
        &plan,
        "[[scenario]]\nname = \"x\"\ndevices = [\"emulated:3G\"]\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("regress")
        .arg(&plan)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("scenario \"x\", key `devices[0]`"), "{e}");
}
