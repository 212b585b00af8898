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
    // the shared-GPU scenarios, on the modern stack, with the kernels they need
    for (name, kind, kernel) in [
        ("sriov-vf", Kind::Sriov, "kernel/modern/vmlinuz"),
        (
            "mdev-mtty",
            Kind::Mdev,
            "vfioctl-6.12-vfio-guest+vfio-host/vmlinuz",
        ),
        (
            "iommufd-vf",
            Kind::Iommufd,
            "vfioctl-6.12-vfio-guest+vfio-host/vmlinuz",
        ),
    ] {
        let sc = plan.scenario(name).unwrap();
        assert_eq!(
            (sc.kind, sc.stack.as_deref()),
            (kind, Some("modern")),
            "{name}"
        );
        assert!(sc.kernel.as_ref().unwrap().ends_with(kernel), "{name}");
    }
    // the version matrix: QEMU 7.2 and 10.0, kernels 6.1, 6.12 and vfioctl's own
    for plug in ["hot", "cold"] {
        for st in ["system", "modern"] {
            for k in ["debian61", "debian612", "vfioctl61"] {
                let name = format!("v8g-{plug}-{st}-{k}");
                let sc = plan.scenario(&name).unwrap_or_else(|| panic!("{name}"));
                assert_eq!(sc.stack.as_deref(), Some(st));
                assert_eq!(sc.devices[0].to_string(), "emulated:8G");
            }
        }
    }
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
        assert_eq!(
            argv[..2],
            ["/usr/bin/env", "vfioctl"],
            "{c}: vfioctl through PATH"
        );
        Cli::try_parse_from(&argv[1..]).unwrap_or_else(|e| panic!("{c}: {e}"));
    }
    let cli = Cli::try_parse_from(cmds[1].split_whitespace().skip(1)).unwrap();
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

/// `systemd-analyze verify` accepts the units as shipped, whether or not vfioctl is
/// installed at a fixed path, and the unit's command finds vfioctl through its PATH
/// wherever it is (here: the build directory, on an empty fixture root).
#[test]
fn systemd_units_pass_systemd_analyze_verify_and_find_vfioctl_on_path() {
    let sa = vfioctl_testkit::require!(vfioctl_testkit::prereq::program(
        "systemd-analyze",
        "apt-get install systemd (scripts/setup)"
    ));
    let units = [
        repo("scripts/systemd/vfioctl-regress.service"),
        repo("scripts/systemd/vfioctl-regress.timer"),
    ];
    let out = std::process::Command::new(sa)
        .arg("verify")
        .args(&units)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ExecStartPre as systemd would run it, with the unit's PATH plus where this
    // vfioctl lives.
    let svc = "scripts/systemd/vfioctl-regress.service";
    let path = unit_lines(svc, "Environment")
        .iter()
        .find_map(|e| e.strip_prefix("PATH=").map(str::to_string))
        .expect("the unit sets PATH");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_vfioctl")).parent().unwrap();
    let pre = &unit_lines(svc, "ExecStartPre")[0];
    let argv: Vec<&str> = pre.split_whitespace().collect();
    let root = tempfile::tempdir().unwrap();
    let r = std::process::Command::new(argv[0])
        .args(&argv[1..])
        .env("PATH", format!("{path}:{}", bin_dir.display()))
        .env("VFIOCTL_ROOT", root.path())
        .output()
        .unwrap();
    assert!(r.status.success(), "{pre}: {r:?}");
}

/// The README's fleet example, run as written (minus the shell redirection), on a machine
/// without `VFIOCTL_LAB` (the plan's variables are resolved on the node); the manifests
/// pass kubernetes-validate (PyPI, offline schemas) and kubectl's own offline parser.
#[test]
fn readme_emit_k8s_example_runs() {
    let readme = std::fs::read_to_string(repo("docs/commands/regress.md")).unwrap();
    let section = readme
        .split("<!-- section: regress -->")
        .nth(1)
        .expect("README has a regress section");
    let line = section
        .lines()
        .find(|l| l.starts_with("vfioctl regress scripts/lab-plan.toml --emit k8s"))
        .expect("the --emit k8s example");
    let (cmd, redirect) = line.split_once(" > ").expect("the example writes a file");
    let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(&args)
        .current_dir(repo("."))
        .env_remove("VFIOCTL_LAB")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{line}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let y = String::from_utf8(out.stdout).unwrap();
    let docs: Vec<serde_json::Value> = y
        .split("---\n")
        .filter(|d| !d.trim().is_empty())
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    let kinds: Vec<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["ConfigMap", "Job", "Job"]);
    for (n, d) in ["gpu-a", "gpu-b"].iter().zip(&docs[1..]) {
        assert_eq!(d["metadata"]["name"], format!("vfioctl-regress-lab-{n}"));
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(pod["hostPID"], true);
        assert_eq!(pod["hostNetwork"], true);
        assert_eq!(pod["containers"][0]["securityContext"]["privileged"], true);
    }
    // The plan travels unexpanded: ${VFIOCTL_LAB} is resolved in the pod.
    assert!(docs[0]["data"]["plan.toml"]
        .as_str()
        .unwrap()
        .contains("${VFIOCTL_LAB}/kernel/current/vmlinuz"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(redirect.trim());
    std::fs::write(&file, &y).unwrap();
    let kv = vfioctl_testkit::require!(vfioctl_testkit::prereq::program(
        "kubernetes-validate",
        "pip install kubernetes-validate (scripts/setup)"
    ));
    let r = std::process::Command::new(kv)
        .arg("--strict")
        .arg(&file)
        .output()
        .unwrap();
    let report =
        String::from_utf8_lossy(&r.stdout).into_owned() + &String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "kubernetes-validate: {report}");
    assert_eq!(report.matches("passed for resource").count(), 3, "{report}");
}

/// kubectl reads the README example's manifests (Debian: kubernetes-client, installed by
/// scripts/setup when no kubectl is on PATH). `kubectl apply --dry-run=client
/// --validate=false` needs an API server even in client mode (it maps each kind through
/// the server's discovery), so it is run only to check that this is still so; the
/// offline check is `kubectl label --local`, which decodes every object with kubectl's
/// own scheme and writes each back. Schema validation is kubernetes-validate's (above).
#[test]
fn emit_k8s_manifests_pass_kubectl_offline() {
    let kubectl = vfioctl_testkit::require!(vfioctl_testkit::prereq::program(
        "kubectl",
        "apt-get install kubernetes-client (scripts/setup)"
    ));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args([
            "regress",
            "scripts/lab-plan.toml",
            "--emit",
            "k8s",
            "--nodes",
            "gpu-a,gpu-b",
        ])
        .current_dir(repo("."))
        .env_remove("VFIOCTL_LAB")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jobs.yaml");
    std::fs::write(&file, &out.stdout).unwrap();
    // No kubeconfig and an unroutable server: nothing leaves the machine.
    let kubectl_cmd = |args: &[&str]| {
        std::process::Command::new(&kubectl)
            .args([
                "--kubeconfig",
                "/dev/null",
                "--server",
                "http://127.0.0.1:9",
            ])
            .stdin(std::process::Stdio::null())
            .args(args)
            .arg("-f")
            .arg(&file)
            .output()
            .unwrap()
    };
    let r = kubectl_cmd(&["label", "--local", "-o", "json", "vfioctl.dev/checked=yes"]);
    assert!(
        r.status.success(),
        "kubectl label --local: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    // One object per document, kinds and names as emitted.
    let text = String::from_utf8_lossy(&r.stdout);
    let objs: Vec<serde_json::Value> = serde_json::Deserializer::from_str(&text)
        .into_iter()
        .map(|v| v.unwrap())
        .collect();
    let seen: Vec<(String, String)> = objs
        .iter()
        .map(|o| {
            assert_eq!(o["metadata"]["labels"]["vfioctl.dev/checked"], "yes", "{o}");
            (
                o["kind"].as_str().unwrap().to_string(),
                o["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("ConfigMap".into(), "vfioctl-regress-lab-plan".into()),
            ("Job".into(), "vfioctl-regress-lab-gpu-a".into()),
            ("Job".into(), "vfioctl-regress-lab-gpu-b".into()),
        ]
    );
    // `apply --dry-run=client` still asks a server (documented in docs/commands/regress.md):
    // if a kubectl ever manages without one, this test should run it instead.
    let r = kubectl_cmd(&["apply", "--dry-run=client", "--validate=false"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        !r.status.success() && err.contains("127.0.0.1:9"),
        "kubectl apply --dry-run=client worked offline: use it here\n{err}"
    );
}
