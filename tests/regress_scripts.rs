//! What `scripts/` ships for the nightly: the lab plan parses, and the systemd units run
//! command lines that vfioctl accepts (so the units cannot rot when flags change).

use std::path::Path;

use clap::Parser;
use vfioctl::cli::{Cli, Command};
use vfioctl::regress::{Kind, Plan, PlugMode};

fn repo(p: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

#[test]
fn lab_plan_has_the_scenarios_the_issue_asks_for() {
    let text = std::fs::read_to_string(repo("scripts/lab-plan.toml")).unwrap();
    let plan = Plan::parse(&text, &repo("scripts/lab-plan.toml"), &|k| {
        (k == "VFIOCTL_LAB").then(|| "/lab".to_string())
    })
    .unwrap();
    let hot = plan.scenario("standin-8g-hot").unwrap();
    let cold = plan.scenario("standin-8g-cold").unwrap();
    assert_eq!((hot.plug, cold.plug), (PlugMode::Hot, PlugMode::Cold));
    assert_eq!(hot.devices[0].to_string(), "emulated:8G");
    let neg = plan.scenario("no-reserve-negative").unwrap();
    assert!(!neg.expect.is_pass());
    assert_eq!(neg.vm.pref64_reserve, vfioctl::regress::Reserve::None);
    assert_eq!(
        plan.scenario("nested-passthrough").unwrap().kind,
        Kind::Nested
    );
}

fn unit_lines(path: &str, key: &str) -> Vec<String> {
    std::fs::read_to_string(repo(path))
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .collect()
}

#[test]
fn systemd_units_run_valid_vfioctl_command_lines() {
    let svc = "scripts/systemd/vfioctl-regress.service";
    let cmds: Vec<String> = unit_lines(svc, "ExecStartPre")
        .into_iter()
        .chain(unit_lines(svc, "ExecStart"))
        .collect();
    assert_eq!(cmds.len(), 2);
    for c in &cmds {
        let argv: Vec<&str> = c.split_whitespace().collect();
        assert!(argv[0].ends_with("/vfioctl"), "{c}");
        Cli::try_parse_from(&argv).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
    let cli = Cli::try_parse_from(cmds[1].split_whitespace()).unwrap();
    let Command::Regress(a) = cli.command else {
        panic!("ExecStart is not `vfioctl regress`")
    };
    assert!(a.history.is_some(), "the nightly must keep history");
    assert_eq!(unit_lines(svc, "Type"), ["oneshot"]);
    assert_eq!(unit_lines(svc, "KillMode"), ["control-group"]);

    let timer = "scripts/systemd/vfioctl-regress.timer";
    assert_eq!(unit_lines(timer, "Unit"), ["vfioctl-regress.service"]);
    assert_eq!(unit_lines(timer, "Persistent"), ["true"]);
    assert_eq!(unit_lines(timer, "OnCalendar").len(), 1);
}

/// The README's fleet example, run as written (minus the shell redirection).
#[test]
fn readme_emit_k8s_example_runs() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let section = readme
        .split("<!-- section: regress -->")
        .nth(1)
        .expect("README has a regress section");
    let line = section
        .lines()
        .find(|l| l.starts_with("vfioctl regress scripts/lab-plan.toml --emit k8s"))
        .expect("the --emit k8s example");
    let args: Vec<&str> = line
        .split(" > ")
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(&args)
        .current_dir(repo("."))
        .env("VFIOCTL_LAB", "/lab")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y = String::from_utf8(out.stdout).unwrap();
    assert_eq!(y.matches("kind: Job").count(), 2, "{y}");
    assert_eq!(y.matches("kind: ConfigMap").count(), 1);
    for n in ["gpu-a", "gpu-b"] {
        assert!(y.contains(&format!("name: vfioctl-regress-lab-{n}")), "{y}");
    }
}
