//! `regress --agent PATH`: scenarios without an `initrd` get the lab initramfs built with
//! the given static agent; without one, regress says so instead of running cargo in
//! whatever source tree it sits in.

use std::path::Path;
use std::process::Command;

use vfioctl::regress::RunResults;

const PLAN: &str = r#"
name = "agent"
[[scenario]]
name = "standin"
devices = ["emulated:8G"]
kernel = "/bin/sh"
"#;

fn run(extra: &[&str]) -> (RunResults, String) {
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu-server"))
        .arg("regress")
        .arg(&plan)
        .arg("--out")
        .arg(d.path().join("out"))
        .arg("--json")
        .args(extra)
        .env_remove("VFIOCTL_AGENT")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    let r = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {stderr}"));
    (r, stderr)
}

#[test]
fn without_an_agent_regress_asks_for_one_and_runs_no_cargo() {
    let t = std::time::Instant::now();
    let (r, stderr) = run(&[]);
    let s = &r.scenarios[0];
    assert!(s.summary.contains("pass --agent PATH"), "{}", s.summary);
    assert!(
        stderr.contains("cargo build --profile agent"),
        "the hint: {stderr}"
    );
    // A cargo build of the agent takes far longer than reading a plan.
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn agent_path_is_used_and_checked() {
    let (r, _) = run(&["--agent", "/nonexistent/vfioctl-agent"]);
    assert!(
        r.scenarios[0]
            .summary
            .contains("/nonexistent/vfioctl-agent"),
        "{}",
        r.scenarios[0].summary
    );
    // A dynamic executable cannot be a guest's /init: the initramfs build refuses it.
    let (r, _) = run(&["--agent", "/bin/sh"]);
    let summary = &r.scenarios[0].summary;
    assert!(summary.contains("static"), "{summary}");
}
