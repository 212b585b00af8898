//! Every JUnit file vfioctl writes passes the Jenkins schema (`xmllint --schema` against
//! `tests/data/junit/junit-10.xsd`) and reads back the same through a second parser:
//! `regress`'s junit.xml, `regress collect`'s (two runs of one node must not duplicate a
//! test case), and `validate --junit` against a real agent. The lab tests
//! (tests/regress_lab.rs, tests/agent_vm.rs) run their JUnit files through the same check.

mod junit_support;

use std::path::Path;
use std::process::Command;

use junit_support::assert_valid_junit;
use vfioctl::regress::RunResults;

const PLAN: &str = r#"
name = "fixture"
[defaults]
kernel = "/nonexistent/vmlinuz"
initrd = "/nonexistent/initrd.gz"
[[scenario]]
name = "absent"
description = "A device this host does not have: skipped, never passed"
devices = ["0000:99:00.0"]
[[scenario]]
name = "standin"
description = "Fails its check step: the kernel is missing"
devices = ["emulated:8G"]
"#;

fn vfioctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu-server"))
        .args(args)
        .output()
        .unwrap()
}

fn results(dir: &Path) -> RunResults {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).unwrap()).unwrap()
}

#[test]
fn regress_and_collect_junit_pass_the_jenkins_schema() {
    vfioctl_testkit::require!(junit_support::xmllint());
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(&plan, PLAN).unwrap();
    let mut runs = Vec::new();
    for i in 0..2 {
        let out = d.path().join(format!("run{i}"));
        let o = vfioctl(&[
            "regress",
            plan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--node",
            "gpu-a",
        ]);
        assert_eq!(o.status.code(), Some(5), "{o:?}");
        let r = assert_valid_junit(&out.join("junit.xml"));
        assert_eq!((r.tests, r.failures, r.skipped), (2, 1, 1));
        // The message a CI reporter shows is the summary, line breaks and all.
        let res = results(&out);
        let standin = res.scenarios.iter().find(|s| s.name == "standin").unwrap();
        assert_eq!(
            r.messages,
            [("standin".to_string(), standin.summary.clone())]
        );
        runs.push(out);
        // Two different run ids.
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let merged = d.path().join("merged");
    let o = vfioctl(&[
        "regress",
        "collect",
        runs[0].to_str().unwrap(),
        runs[1].to_str().unwrap(),
        "--out",
        merged.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(5), "{o:?}");
    let r = assert_valid_junit(&merged.join("junit.xml"));
    assert_eq!(
        r.case_names,
        ["absent", "standin"],
        "two runs of one node: each scenario once"
    );
    assert_eq!(results(&merged).scenarios.len(), 2);
}

#[test]
fn validate_junit_passes_the_jenkins_schema() {
    vfioctl_testkit::require!(junit_support::xmllint());
    let agent = vfioctl_testkit::lab::LocalAgent::start(&[]);
    let d = tempfile::tempdir().unwrap();
    let junit = d.path().join("validate.xml");
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(["validate", "--agent"])
        .arg(agent.transport().to_string())
        .arg("--token-file")
        .arg(&agent.token_file)
        .args(["--gpu", "emulated:8G", "--wait", "1", "--junit"])
        .arg(&junit)
        .output()
        .unwrap();
    // This machine has no ivshmem device: validation fails, with evidence.
    assert_eq!(o.status.code(), Some(3), "{o:?}");
    let r = assert_valid_junit(&junit);
    assert_eq!(r.tests, 10);
    assert!(r.failures >= 1, "{r:?}");
    assert!(
        r.messages.iter().any(|(n, _)| n == "device-present"),
        "{r:?}"
    );
}

#[test]
fn a_broken_file_is_refused_by_the_validator() {
    vfioctl_testkit::require!(junit_support::xmllint());
    // The check itself must be able to fail: the old writer's shape (skipped on
    // testsuites, properties inside a testcase) is not Jenkins JUnit.
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bad.xml");
    std::fs::write(
        &p,
        "<testsuites skipped=\"1\"><testsuite name=\"s\" tests=\"1\" failures=\"0\" errors=\"0\"><testcase name=\"c\"><properties/></testcase></testsuite></testsuites>",
    )
    .unwrap();
    let out = Command::new("xmllint")
        .arg("--noout")
        .arg("--schema")
        .arg(junit_support::xsd())
        .arg(&p)
        .output()
        .expect("xmllint (libxml2-utils)");
    assert!(!out.status.success());
}
