//! The mechanism end to end, through the environment a test runner sets: this test binary
//! runs its own ignored test `needs_a_missing_program` (a prerequisite that is never
//! installed) once plain and once under `VFIOCTL_REQUIRE_LAB=1`.

use std::process::Command;

use vfioctl_testkit::prereq::{self, SkipLine};

const STANDIN_ENV: &str = "VFIOCTL_REQUIRE_LAB_STANDIN";

/// Stands for a lab test whose prerequisite is missing; run only by the test below.
#[test]
#[ignore = "run by deliberately_missing_prerequisite_skips_or_fails"]
fn needs_a_missing_program() {
    // `scripts/test --nightly` runs ignored tests too: only the run below means it
    if std::env::var_os(STANDIN_ENV).is_none() {
        return;
    }
    let _p = vfioctl_testkit::require!(prereq::program(
        "vfioctl-deliberately-missing",
        prereq::SETUP
    ));
    panic!("the prerequisite is missing: this line is never reached");
}

fn run(require: Option<&str>, log: &std::path::Path) -> std::process::Output {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--ignored", "--exact", "needs_a_missing_program"])
        .env_remove(prereq::REQUIRE_ENV)
        .env(STANDIN_ENV, "1")
        .env(prereq::SKIP_LOG_ENV, log);
    if let Some(v) = require {
        c.env(prereq::REQUIRE_ENV, v);
    }
    c.output().unwrap()
}

#[test]
fn deliberately_missing_prerequisite_skips_or_fails() {
    let dir = std::env::temp_dir().join(format!("vfioctl-require-lab-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("skips.log");

    // Outside CI: the test returns (libtest says ok), the skip line is on stderr and in
    // the log.
    let o = run(None, &log);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("VFIOCTL-SKIP test=require_lab::needs_a_missing_program missing=vfioctl-deliberately-missing fix=scripts/setup"),
        "{stderr}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<_> = text.lines().filter_map(SkipLine::parse).collect();
    assert_eq!(lines.len(), 1, "{text}");
    assert_eq!(
        lines[0].get("missing"),
        Some("vfioctl-deliberately-missing")
    );

    // Under VFIOCTL_REQUIRE_LAB=1: a failure that names the prerequisite and its fix.
    let o = run(Some("1"), &log);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.contains("vfioctl-deliberately-missing is missing")
            && out.contains("provided by: scripts/setup"),
        "{out}"
    );
    // ... and no new skip line: it failed instead.
    assert_eq!(std::fs::read_to_string(&log).unwrap(), text);
    std::fs::remove_dir_all(&dir).unwrap();
}
