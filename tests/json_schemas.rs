//! JSON Schemas of every typed `--json` output, generated from the Rust types (schemars)
//! and kept in `schemas/`; each command's real output is validated against its schema
//! with a JSON Schema validator (the jsonschema crate).
//!
//! `UPDATE_SCHEMAS=1 cargo test --test json_schemas` rewrites `schemas/` after a change
//! of an output type.

mod agent_support;
mod schema_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use schema_support::{assert_valid, schema};
use serde_json::Value;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn schema_file(name: &str) -> PathBuf {
    repo("schemas").join(format!("{name}.schema.json"))
}

fn vfioctl(root: Option<&str>, args: &[&str]) -> (Option<i32>, Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    if let Some(r) = root {
        c.arg("--root").arg(repo("tests/fixtures").join(r));
    }
    let o = c.arg("--json").args(args).output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

#[test]
fn schemas_dir_matches_the_types() {
    let update = std::env::var("UPDATE_SCHEMAS").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (name, s) in vfioctl::output::json_schemas() {
        let text = serde_json::to_string_pretty(&s).unwrap() + "\n";
        let p = schema_file(name);
        if update {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &text).unwrap();
        } else if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
            stale.push(p.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas (run UPDATE_SCHEMAS=1 cargo test --test json_schemas): {stale:?}"
    );
}

#[test]
fn devices_and_check_output_match_their_schemas() {
    for root in ["gpu-server", "iommu-off", "kata-dgx"] {
        if !repo("tests/fixtures").join(root).is_dir() {
            continue;
        }
        let (_, d) = vfioctl(Some(root), &["devices"]);
        assert!(!d.as_array().unwrap().is_empty());
        assert_valid("devices", &d);
        let (_, c) = vfioctl(Some(root), &["check"]);
        assert_valid("check", &c);
    }
    // PCI identity: lower-case hex strings, as lspci -n prints them.
    let (_, d) = vfioctl(Some("gpu-server"), &["devices", "10de:*"]);
    assert_eq!(d[0]["vendor"], "10de");
    assert_eq!(d[0]["class"], "030200");
}

#[test]
fn error_output_matches_its_schema() {
    let (code, e) = vfioctl(None, &["devices", "nonsense:::"]);
    assert_eq!(code, Some(2));
    assert_valid("error", &e);
    // The schema is not vacuous: a wrong shape fails.
    let bad = serde_json::json!({"error": 1});
    let v = jsonschema::validator_for(&schema("error")).unwrap();
    assert!(!v.is_valid(&bad));
}

#[test]
fn regress_output_and_results_json_match_their_schema() {
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(
        &plan,
        "name = \"schema\"\n[[scenario]]\nname = \"absent\"\ndevices = [\"0000:99:00.0\"]\n[[scenario]]\nname = \"standin\"\ndevices = [\"emulated:8G\"]\nkernel = \"/nonexistent\"\ninitrd = \"/nonexistent\"\n",
    )
    .unwrap();
    let out = d.path().join("out");
    let (code, r) = vfioctl(
        Some("gpu-server"),
        &[
            "regress",
            plan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(5));
    assert_valid("regress", &r);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_valid("regress", &file);
}

#[test]
fn validate_output_matches_its_schema() {
    let agent = agent_support::LocalAgent::start(&[]);
    let token_file = agent.token_file.display().to_string();
    let (code, v) = vfioctl(
        None,
        &[
            "validate",
            "--token-file",
            &token_file,
            "--agent",
            &agent.transport().to_string(),
            "--gpu",
            "emulated:8G",
            "--wait",
            "1",
        ],
    );
    assert_eq!(code, Some(3));
    assert_valid("validate", &v);
    assert_eq!(v["target"]["vendor"], "1af4");
    assert_eq!(v["target"]["device"], "1110");
}

/// `vfioctl --root ROOT --json ARGS` with extra environment; exit code and parsed stdout.
fn vfioctl_at(root: &Path, args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    c.arg("--root").arg(root).arg("--json").args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c.output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

/// A private, writable copy of fixture `name` (bind writes into it, never into /sys).
fn copy(name: &str) -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", repo("tests/fixtures").join(name).display()))
        .arg(t.path())
        .status()
        .unwrap();
    assert!(st.success());
    t
}

#[test]
fn bind_unbind_and_restore_outputs_match_their_schemas() {
    // The fixture's kernel stand-in moves `driver` links on unbind/probe (test builds).
    let sim = [("VFIOCTL_SIM_KERNEL", "1")];
    let t = copy("bind-bridge-pair");
    let dev = "0000:03:01.0";
    let (code, v) = vfioctl_at(t.path(), &["bind", "--dry-run", dev], &sim);
    assert_eq!(code, Some(0), "{v}");
    assert!(!v["steps"].as_array().unwrap().is_empty(), "{v}");
    assert_valid("bind", &v);
    let (code, v) = vfioctl_at(t.path(), &["bind", dev], &sim);
    assert_eq!(code, Some(0), "{v}");
    assert!(v["result"]["devices"].as_array().is_some(), "{v}");
    assert_valid("bind", &v);
    // Nothing to do: every device already on vfio-pci.
    let (code, v) = vfioctl_at(t.path(), &["bind", dev], &sim);
    assert_eq!(code, Some(0), "{v}");
    assert_valid("bind", &v);
    let (code, v) = vfioctl_at(t.path(), &["unbind", dev], &sim);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["devices"].as_array().unwrap().len(), 2, "{v}");
    assert_valid("unbind", &v);
    let (code, _) = vfioctl_at(t.path(), &["bind", dev], &sim);
    assert_eq!(code, Some(0));
    let (code, v) = vfioctl_at(t.path(), &["restore", "--all"], &sim);
    assert_eq!(code, Some(0), "{v}");
    assert_valid("restore", &v);
    let (code, v) = vfioctl_at(t.path(), &["restore", "--all"], &sim);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["devices"], serde_json::json!([]));
    assert_valid("restore", &v);
    // The schemas are not vacuous.
    let bind = jsonschema::validator_for(&schema("bind")).unwrap();
    assert!(!bind.is_valid(&serde_json::json!({"plan": {"groups": []}})));
}

#[test]
fn vf_and_mdev_listings_and_dry_runs_match_their_schemas() {
    // Creating and removing (with the kernel's answers) is validated in
    // tests/shared_fixtures.rs, which has the kernel stand-in for it.
    let root = repo("tests/fixtures/shared-gpus");
    let (code, v) = vfioctl_at(&root, &["vf", "list"], &[]);
    assert_eq!(code, Some(0), "{v}");
    assert!(v.as_array().unwrap().len() >= 2, "{v}");
    assert_valid("vf-list", &v);
    let (code, v) = vfioctl_at(&root, &["vf", "list", "0000:41:00.0"], &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["vendor"], "10de");
    assert_valid("vf-status", &v);
    let (code, v) = vfioctl_at(
        &root,
        &["vf", "create", "0000:18:00.0", "--count", "2", "--dry-run"],
        &[],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_valid("vf-create-dry-run", &v);
    let (code, v) = vfioctl_at(&root, &["mdev", "types"], &[]);
    assert_eq!(code, Some(0), "{v}");
    assert!(!v.as_array().unwrap().is_empty(), "{v}");
    assert_valid("mdev-types", &v);
    let (code, v) = vfioctl_at(&root, &["mdev", "list"], &[]);
    assert_eq!(code, Some(0), "{v}");
    assert_valid("mdev-list", &v);
    let (code, v) = vfioctl_at(
        &root,
        &["mdev", "create", "0000:3b:00.0", "nvidia-228", "--dry-run"],
        &[],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_valid("mdev-create-dry-run", &v);
}

/// `vfioctl --json vm ...` with its runtime directory under `run`.
fn vm(run: &Path, args: &[&str]) -> (Option<i32>, Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--json")
        .arg("vm")
        .args(args)
        .env("VFIOCTL_RUN_DIR", run)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

#[test]
fn vm_outputs_match_their_schemas() {
    use vfioctl::vm::rundir::RunDir;
    use vfioctl::vm::state::{Plugged, VmRecord, VmState};
    use vfioctl::vm::VmName;

    let d = tempfile::tempdir().unwrap();
    let run = d.path();
    let kernel = d.path().join("vmlinuz");
    let initrd = d.path().join("initrd");
    std::fs::write(&kernel, b"").unwrap();
    std::fs::write(&initrd, b"").unwrap();
    let (code, v) = vm(
        run,
        &[
            "plan",
            "--gpu",
            "emulated:8G",
            "--spare",
            "1",
            "--cpu",
            "tcg",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_valid("vm-plan", &v);
    let (code, v) = vm(
        run,
        &[
            "up",
            "--dry-run",
            "--name",
            "dry",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--accel",
            "tcg",
            "--gpu",
            "emulated:8G",
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert!(!v["argv"].as_array().unwrap().is_empty(), "{v}");
    assert_valid("vm-up-dry-run", &v);
    let (code, v) = vm(run, &["list"]);
    assert_eq!(code, Some(0), "{v}");
    assert_valid("vm-list", &v);

    // A VM whose QEMU is gone, as a crashed `vm up` leaves it, with a plugged device.
    let rd = RunDir::new(run, VmName::new("gone").unwrap());
    rd.create().unwrap();
    rd.write_token().unwrap();
    let mut r = VmRecord::new(&rd);
    r.state = VmState::Crashed;
    r.plugged.push(Plugged {
        id: "gpu0".into(),
        gpu: "emulated:8G".into(),
        port: "rp0".into(),
        memdev: None,
        cold: false,
        id_pair: "1af4:1110".into(),
        guest_bdf: Some("0000:01:00.0".into()),
    });
    r.save().unwrap();
    // `vm up` prints the record it saved.
    assert_valid("vm-up", &serde_json::to_value(&r).unwrap());
    let (code, v) = vm(run, &["list"]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v[0]["plugged"], serde_json::json!(["emulated:8G"]));
    assert_valid("vm-list", &v);
    let (code, v) = vm(run, &["status", "gone"]);
    assert_eq!(code, Some(8), "{v}");
    assert_valid("vm-status", &v);
    let (code, v) = vm(run, &["down", "gone"]);
    assert_eq!(code, Some(0), "{v}");
    assert_valid("vm-down", &v);
    let (code, v) = vm(run, &["down", "gone"]);
    assert_eq!(code, Some(0), "{v}");
    assert_valid("vm-down", &v);
    // `vm plug` and `vm unplug` need a running guest: their output is validated in
    // tests/vm_hotplug.rs (lab tier).
}

#[test]
fn kata_config_outputs_match_their_schemas() {
    for (root, extra) in [
        (
            "kata-dgx",
            &["--runtime", "rs", "--kata-version", "4.1.0"][..],
        ),
        (
            "kata-ws",
            &["--gpu", "0000:02:00.0", "--kata-version", "4.1.0"][..],
        ),
        ("gpu-server", &["--kata-version", "3.6.0"][..]),
    ] {
        let mut args = vec!["kata", "config"];
        args.extend(extra);
        let (code, v) = vfioctl(Some(root), &args);
        assert_eq!(code, Some(0), "{root}: {v}");
        assert!(v["device_nodes"].is_array(), "{v}");
        assert_valid("kata-config", &v);
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("configuration.toml");
    let (code, v) = vfioctl(
        Some("kata-dgx"),
        &[
            "kata",
            "config",
            "--kata-version",
            "4.1.0",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["out"], out.display().to_string());
    assert_valid("kata-config", &v);
    let dir = d.path().join("config.d");
    let (code, v) = vfioctl(
        Some("kata-dgx"),
        &[
            "kata",
            "config",
            "--kata-version",
            "4.1.0",
            "--drop-in",
            dir.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert!(v["drop_in"]
        .as_str()
        .unwrap()
        .starts_with(dir.to_str().unwrap()));
    assert_valid("kata-config-drop-in", &v);
}

#[test]
fn kernel_verify_and_lock_outputs_match_their_schemas() {
    // `kernel build` (a stand-in kbuild tree, built for real) is validated in
    // tests/kernel_cli.rs.
    let d = tempfile::tempdir().unwrap();
    let cfgs = d.path().join("configs");
    std::fs::create_dir_all(&cfgs).unwrap();
    std::fs::copy(
        repo("kernel-configs/manifest.toml"),
        cfgs.join("manifest.toml"),
    )
    .unwrap();
    std::fs::write(
        cfgs.join("00-base.config"),
        "CONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\n",
    )
    .unwrap();
    std::fs::write(cfgs.join("10-x86_64.config"), "CONFIG_64BIT=y\n").unwrap();
    std::fs::write(cfgs.join("allowlist"), "# none\n").unwrap();
    let good = d.path().join("good.config");
    std::fs::write(&good, "CONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_64BIT=y\n").unwrap();
    let bad = d.path().join("bad.config");
    std::fs::write(&bad, "CONFIG_PCI=y\n").unwrap();
    let c = cfgs.to_str().unwrap();
    for (config, want) in [(&good, 0), (&bad, 1)] {
        let (code, v) = vfioctl(
            None,
            &[
                "kernel",
                "verify",
                "--configs",
                c,
                "--config",
                config.to_str().unwrap(),
            ],
        );
        assert_eq!(code, Some(want), "{v}");
        assert_valid("kernel-verify", &v);
    }
    // `kernel lock` of a source tarball of the pinned series.
    let top = d.path().join("src/linux-6.1.999");
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(
        top.join("Makefile"),
        "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 999\nEXTRAVERSION =\n",
    )
    .unwrap();
    let tar = d.path().join("linux-6.1.999.tar.xz");
    assert!(Command::new("tar")
        .arg("-cJf")
        .arg(&tar)
        .arg("-C")
        .arg(d.path().join("src"))
        .arg("linux-6.1.999")
        .status()
        .unwrap()
        .success());
    let t = tar.to_str().unwrap();
    let (code, v) = vfioctl(
        None,
        &["kernel", "lock", "--configs", c, "--source", t, "--check"],
    );
    assert_eq!(code, Some(1), "{v}");
    assert_valid("kernel-lock", &v);
    let (code, v) = vfioctl(None, &["kernel", "lock", "--configs", c, "--source", t]);
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(v["written"], true);
    assert_valid("kernel-lock", &v);
}

#[test]
fn rootfs_build_output_matches_its_schema() {
    // busybox-static is a static ELF: it stands in for the agent binary.
    let busybox = vfioctl_testkit::require!(vfioctl_testkit::prereq::program(
        "busybox",
        "apt-get install busybox-static (scripts/setup)"
    ));
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("initrd.cpio.gz");
    let (code, v) = vfioctl(
        None,
        &[
            "rootfs",
            "build",
            "--manifest",
            repo("rootfs/lab.toml").to_str().unwrap(),
            "--no-modules",
            "--agent",
            busybox.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(0), "{v}");
    assert!(out.is_file());
    assert_valid("rootfs-build", &v);
}

#[test]
fn snapshot_and_replay_outputs_match_their_schemas() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("snap");
    let (code, v) = vfioctl(Some("gpu-server"), &["snapshot", out.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{v}");
    assert_valid("snapshot", &v);
    let (code, v) = vfioctl(None, &["snapshot", "--replay", out.to_str().unwrap()]);
    // gpu-server has no /proc: bind's refusals name the root, which differs on replay
    // (exit 1, with the diffs in the output: both shapes are covered).
    assert_eq!(code, Some(1), "{v}");
    assert_eq!(v["identical"], false);
    assert!(v["commands"][0]["identical"] == true);
    assert_valid("snapshot-replay", &v);
}
