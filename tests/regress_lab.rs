//! The lab plan for real: `vfioctl regress scripts/lab-plan.toml` boots real guests under
//! QEMU (TCG here), plugs the 8 GiB stand-in hot and cold, runs the negative control, and
//! the report must say the stand-in passed and the control failed as expected.
//!
//! CI tier: the three stand-in scenarios with --jobs 3. Nested passthrough is nightly.

mod junit_support;

use std::path::Path;
use std::process::Command;

use vfioctl::regress::{Outcome, RunResults};

const CI_SCENARIOS: &str = "standin-8g-hot,standin-8g-cold,no-reserve-negative";

fn lab() -> std::path::PathBuf {
    vfioctl_testkit::prereq::lab_dir()
}

/// QEMU processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) && !c.contains("regress_lab") {
                v.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    v
}

#[test]
fn lab_plan_standin_passes_and_negative_control_fails_as_expected() {
    vfioctl_testkit::require!(vfioctl_testkit::prereq::qemu());
    vfioctl_testkit::require!(vfioctl_testkit::prereq::lab_kernel());
    let out = tempfile::tempdir().unwrap();
    let hist = out.path().join("history");
    let child = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("regress")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/lab-plan.toml"))
        .arg("--agent")
        .arg(vfioctl_testkit::build::static_agent())
        .args(["--only", CI_SCENARIOS, "--jobs", "3", "--history"])
        .arg(&hist)
        .arg("--json")
        .env("VFIOCTL_LAB", lab())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The VMs' runtime directories are named after the regress process.
    let run_base = format!("vfioctl-regress-{}", child.id());
    let res = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&res.stderr);
    let r: RunResults = serde_json::from_slice(&res.stdout)
        .unwrap_or_else(|e| panic!("no results JSON ({e}); stderr:\n{stderr}"));
    let get = |n: &str| r.scenarios.iter().find(|s| s.name == n).unwrap();
    assert_eq!(get("standin-8g-hot").outcome, Outcome::Passed, "{stderr}");
    assert_eq!(get("standin-8g-cold").outcome, Outcome::Passed, "{stderr}");
    assert_eq!(
        get("no-reserve-negative").outcome,
        Outcome::ExpectedFailure,
        "{}\n{stderr}",
        get("no-reserve-negative").summary
    );
    assert_eq!(res.status.code(), Some(0), "{stderr}");
    // The report a person reads says the same.
    let run_dir = hist.join(&r.run_id);
    let html = std::fs::read_to_string(run_dir.join("report.html")).unwrap();
    assert!(html.contains("all scenarios as expected (exit 0)"));
    assert!(html.contains("failed as expected"));
    let junit = std::fs::read_to_string(run_dir.join("junit.xml")).unwrap();
    assert!(junit.contains("failures=\"0\" errors=\"0\""), "{junit}");
    junit_support::assert_valid_junit(&run_dir.join("junit.xml"));
    // Nothing left running.
    let left = processes_mentioning(&run_base);
    assert!(left.is_empty(), "left behind: {left:?}");
}
