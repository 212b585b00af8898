//! The bind planner, the in-use rules, the ledger and rollback bookkeeping over the
//! `tests/fixtures/bind-*` trees. Fixture writes land in plain files, so these tests prove
//! what vfioctl writes, records and puts back; what the kernel does with the writes is
//! proven by the lab test (`bind_lab.rs`) inside a guest with an emulated IOMMU.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Output};

use vfioctl::bind::{self, BindError, RefusalKind, Role};
use vfioctl::{Bdf, SysRoot};
use vfioctl_common::PciDevice;
use vfioctl_testkit::fixture::{copy, path as fixture};

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

fn plan_for(root: &SysRoot, sel: &[&str], no_companions: bool) -> Result<bind::Plan, BindError> {
    let sels: Vec<_> = sel.iter().map(|s| s.parse().unwrap()).collect();
    let selected = bind::select(root, &sels)?;
    let known = bind::neighbourhood(root, &selected)?;
    let bdfs: Vec<Bdf> = selected.iter().map(|d| d.bdf).collect();
    bind::plan(&bdfs, &known, &|_| "vfio-pci".to_string(), no_companions)
}

fn vfioctl(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    c.arg("--root").arg(root).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn override_of(root: &Path, b: &str) -> Option<String> {
    PciDevice::read(&SysRoot::new(root), bdf(b))
        .unwrap()
        .driver_override
}

fn ledger(root: &Path) -> BTreeMap<Bdf, bind::Entry> {
    bind::Ledger::peek(&SysRoot::new(root))
        .unwrap()
        .map(|l| l.devices)
        .unwrap_or_default()
}

// ---- planner ---------------------------------------------------------------------------

#[test]
fn two_endpoints_behind_a_conventional_bridge_are_one_plan() {
    let root = SysRoot::new(fixture("bind-bridge-pair"));
    let plan = plan_for(&root, &["0000:03:01.0"], false).unwrap();
    assert_eq!(plan.groups.len(), 1);
    let g = &plan.groups[0];
    assert_eq!(g.group, 4);
    let roles: Vec<(String, Role, Option<&str>)> = g
        .members
        .iter()
        .map(|m| (m.bdf.to_string(), m.role, m.target()))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("0000:03:01.0".into(), Role::Selected, Some("vfio-pci")),
            ("0000:03:02.0".into(), Role::Companion, Some("vfio-pci")),
            ("0000:02:00.0".into(), Role::Bridge, None),
        ]
    );
    let writes: Vec<String> = plan.writes().iter().map(|w| w.to_string()).collect();
    assert_eq!(
        writes,
        vec![
            "echo vfio-pci > /sys/bus/pci/devices/0000:03:01.0/driver_override",
            "echo 0000:03:01.0 > /sys/bus/pci/drivers/e1000/unbind",
            "echo 0000:03:01.0 > /sys/bus/pci/drivers_probe",
            "echo vfio-pci > /sys/bus/pci/devices/0000:03:02.0/driver_override",
            "echo 0000:03:02.0 > /sys/bus/pci/drivers/e1000/unbind",
            "echo 0000:03:02.0 > /sys/bus/pci/drivers_probe",
        ]
    );
}

#[test]
fn no_companions_fails_with_the_reason() {
    let root = SysRoot::new(fixture("bind-bridge-pair"));
    let e = plan_for(&root, &["0000:03:01.0"], true).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(e, BindError::CompanionsRequired { group: 4, .. }),
        "{msg}"
    );
    assert!(msg.contains("0000:03:02.0 (e1000)"), "{msg}");
    // Alone in its group, --no-companions is fine.
    plan_for(&root, &["0000:01:00.0"], true).unwrap();
}

#[test]
fn gpu_hda_companion_and_root_port_stays() {
    let root = SysRoot::new(fixture("bind-gpu-held"));
    let plan = plan_for(&root, &["01:00.0"], false).unwrap();
    let g = &plan.groups[0];
    let hda = g
        .members
        .iter()
        .find(|m| m.bdf == bdf("0000:01:00.1"))
        .unwrap();
    assert_eq!(hda.role, Role::Companion);
    assert_eq!(hda.driver.as_deref(), Some("snd_hda_intel"));
    assert!(
        hda.reason.contains("same IOMMU group 1") && hda.reason.contains("linked consumer"),
        "{}",
        hda.reason
    );
    let rp = g
        .members
        .iter()
        .find(|m| m.bdf == bdf("0000:00:01.0"))
        .unwrap();
    assert_eq!(rp.role, Role::Bridge);
    assert!(rp.target().is_none());
    assert!(rp.reason.contains("pcieport"));
}

#[test]
fn a_bridge_cannot_be_selected() {
    let root = SysRoot::new(fixture("bind-bridge-pair"));
    let e = plan_for(&root, &["0000:02:00.0"], false).unwrap_err();
    assert!(matches!(e, BindError::Bridge { .. }), "{e}");
}

#[test]
fn pci_stub_and_driverless_companions_stay() {
    let t = copy("bind-bridge-pair");
    let dev = t
        .path()
        .join("sys/devices/pci0000:00/0000:00:02.1/0000:02:00.0/0000:03:02.0");
    fs::remove_file(dev.join("driver")).unwrap();
    let root = SysRoot::new(t.path());
    let plan = plan_for(&root, &["0000:03:01.0"], true).unwrap();
    let c = plan.groups[0]
        .members
        .iter()
        .find(|m| m.bdf == bdf("0000:03:02.0"))
        .unwrap();
    assert!(
        c.target().is_none() && c.reason.contains("no driver"),
        "{c:?}"
    );
    fs::create_dir_all(t.path().join("sys/bus/pci/drivers/pci-stub")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../bus/pci/drivers/pci-stub",
        dev.join("driver"),
    )
    .unwrap();
    let plan = plan_for(&root, &["0000:03:01.0"], true).unwrap();
    let c = plan.groups[0]
        .members
        .iter()
        .find(|m| m.bdf == bdf("0000:03:02.0"))
        .unwrap();
    assert!(
        c.target().is_none() && c.reason.contains("driver_managed_dma"),
        "{c:?}"
    );
}

#[test]
fn driver_auto_picks_the_variant_with_fewest_wildcards() {
    let t = copy("bind-bridge-pair");
    let o = vfioctl(
        t.path(),
        &[
            "--json",
            "bind",
            "--dry-run",
            "--driver",
            "auto",
            "0000:03:01.0",
        ],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let members = &v["plan"]["groups"][0]["members"];
    assert_eq!(members[0]["to"], "demo_e1000_vfio_pci", "{v}");
    let writes = v["writes"].as_array().unwrap();
    // The same line as on the host the tree stands for; the note that nothing is loaded
    // for another root goes to standard error.
    assert!(
        writes
            .iter()
            .any(|w| w.as_str().unwrap() == "modprobe demo_e1000_vfio_pci"),
        "{v}"
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("is not run for --root"),
        "{}",
        text(&o)
    );
}

// ---- in-use safety ---------------------------------------------------------------------

fn refusals(tree: &str, b: &str) -> Vec<bind::Refusal> {
    let root = SysRoot::new(fixture(tree));
    let d = PciDevice::read(&root, bdf(b)).unwrap();
    let u = bind::HostUse::scan(&root, &[&d]);
    bind::assess(&d, &u)
}

#[test]
fn nic_with_the_default_route_is_refused_the_idle_one_is_not() {
    let r = refusals("bind-nic-route", "0000:00:1f.6");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].kind, RefusalKind::NetworkRoute);
    assert!(
        r[0].reason.contains("enp0s31f6") && r[0].reason.contains("default route"),
        "{}",
        r[0].reason
    );
    assert!(r[0].forceable);
    assert!(refusals("bind-nic-route", "0000:02:00.0").is_empty());
}

#[test]
fn root_disk_is_never_unbound_and_mounted_disks_need_force() {
    let r = refusals("bind-nvme-root", "0000:02:00.0");
    let root_fs = r
        .iter()
        .find(|r| r.kind == RefusalKind::RootFilesystem)
        .expect("root fs refusal");
    assert!(!root_fs.forceable);
    assert!(root_fs.reason.contains("nvme0n1p2"), "{}", root_fs.reason);
    assert!(r
        .iter()
        .any(|r| r.kind == RefusalKind::MountedFilesystem && r.reason.contains("/boot/efi")));
    let data = refusals("bind-nvme-root", "0000:03:00.0");
    assert_eq!(data.len(), 1, "{data:?}");
    assert!(
        data[0].reason.contains("dm-0") && data[0].reason.contains("/data"),
        "{}",
        data[0].reason
    );
    assert!(data[0].release.contains("umount /data"));
    assert!(refusals("bind-nvme-root", "0000:04:00.0").is_empty());
}

#[test]
fn gpu_held_open_names_the_processes_and_boot_vga_is_refused() {
    let r = refusals("bind-gpu-held", "0000:01:00.0");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].kind, RefusalKind::OpenDeviceNode);
    for want in [
        "nvidia-persistenced (pid 1234) has /dev/nvidia0",
        "python3 (pid 4242) has /dev/nvidia0",
        "python3 (pid 4242) has /dev/dri/renderD128",
    ] {
        assert!(
            r[0].reason.contains(want),
            "{want} missing from {}",
            r[0].reason
        );
    }
    let igd = refusals("bind-gpu-held", "0000:00:02.0");
    assert!(igd.iter().any(|r| r.kind == RefusalKind::BootVga));
    assert!(igd
        .iter()
        .any(|r| r.reason.contains("Xorg (pid 777) has /dev/dri/card0")));
}

#[test]
fn cli_refusals_exit_6_and_force_never_covers_the_root_disk() {
    let t = copy("bind-nic-route");
    let o = vfioctl(t.path(), &["bind", "0000:00:1f.6"], &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("enp0s31f6 is up and carries the default route"),
        "{err}"
    );
    assert!(
        err.contains("hint:") && err.contains("ip link set enp0s31f6 down"),
        "{err}"
    );
    assert!(ledger(t.path()).is_empty());

    let t = copy("bind-nvme-root");
    let o = vfioctl(t.path(), &["bind", "--force", "0000:02:00.0"], &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("root filesystem"),
        "{}",
        text(&o)
    );
    assert_eq!(override_of(t.path(), "0000:02:00.0"), None);

    let t = copy("bind-gpu-held");
    let o = vfioctl(t.path(), &["--json", "bind", "0000:01:00.0"], &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["exit_code"], 6);
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("nvidia-persistenced (pid 1234)"),
        "{v}"
    );
}

// ---- dry run, ledger, rollback -----------------------------------------------------------

#[test]
fn dry_run_prints_every_write_and_changes_nothing() {
    let t = copy("bind-bridge-pair");
    let before = fs::read_to_string(
        t.path()
            .join("sys/bus/pci/devices/0000:03:01.0/driver_override"),
    )
    .unwrap();
    let o = vfioctl(t.path(), &["bind", "--dry-run", "0000:03:01.0"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "IOMMU group 4",
        "0000:03:02.0",
        "companion: same IOMMU group 4",
        "echo vfio-pci > /sys/bus/pci/devices/0000:03:01.0/driver_override",
        "echo 0000:03:02.0 > /sys/bus/pci/drivers/e1000/unbind",
        "echo 0000:03:02.0 > /sys/bus/pci/drivers_probe",
        "ledger.json",
    ] {
        assert!(out.contains(want), "{want:?} missing:\n{out}");
    }
    assert_eq!(
        fs::read_to_string(
            t.path()
                .join("sys/bus/pci/devices/0000:03:01.0/driver_override")
        )
        .unwrap(),
        before
    );
    assert!(!t.path().join("var/lib/vfioctl/ledger.json").exists());
    assert_eq!(
        fs::read_to_string(t.path().join("sys/bus/pci/drivers_probe")).unwrap(),
        ""
    );
}

#[test]
fn a_probe_that_binds_nothing_is_an_error_and_the_plan_is_rolled_back() {
    // A fixture tree is a kernel that accepts every write and binds nothing: exactly the
    // `drivers_probe` "success" the notes warn about.
    let t = copy("bind-bridge-pair");
    let o = vfioctl(t.path(), &["bind", "0000:03:01.0"], &[]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("rolled back") && err.contains("is on e1000 instead of vfio-pci"),
        "{err}"
    );
    // The writes were made ...
    assert_eq!(
        fs::read_to_string(t.path().join("sys/bus/pci/drivers/e1000/unbind")).unwrap(),
        "0000:03:01.0"
    );
    assert_eq!(
        fs::read_to_string(t.path().join("sys/bus/pci/drivers_probe")).unwrap(),
        "0000:03:01.0"
    );
    // ... and undone: override cleared, ledger empty, the companion never touched.
    assert_eq!(override_of(t.path(), "0000:03:01.0"), None);
    assert_eq!(override_of(t.path(), "0000:03:02.0"), None);
    assert!(ledger(t.path()).is_empty());
}

#[test]
fn rollback_restores_an_original_override_exactly() {
    let t = copy("bind-bridge-pair");
    let f = t
        .path()
        .join("sys/bus/pci/devices/0000:03:01.0/driver_override");
    fs::write(&f, "e1000\n").unwrap();
    let o = vfioctl(t.path(), &["bind", "0000:03:01.0"], &[]);
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert_eq!(
        override_of(t.path(), "0000:03:01.0").as_deref(),
        Some("e1000")
    );
}

#[test]
fn kill_9_after_each_step_then_restore_puts_everything_back() {
    for step in ["override", "unbind", "probe"] {
        let t = copy("bind-bridge-pair");
        let o = vfioctl(
            t.path(),
            &["bind", "0000:03:01.0"],
            &[("VFIOCTL_FAULT_KILL_AFTER", step)],
        );
        assert_eq!(o.status.signal(), Some(9), "step {step}: {}", text(&o));
        let l = ledger(t.path());
        assert_eq!(
            l.len(),
            2,
            "step {step}: both group members recorded before the first write: {l:?}"
        );
        let e = &l[&bdf("0000:03:01.0")];
        assert_eq!(e.original_driver.as_deref(), Some("e1000"));
        assert_eq!(e.original_override, None);
        assert_eq!(
            override_of(t.path(), "0000:03:01.0").as_deref(),
            Some("vfio-pci")
        );

        // A second bind refuses to run over the unfinished one.
        let again = vfioctl(t.path(), &["bind", "0000:03:01.0"], &[]);
        assert_eq!(
            again.status.code(),
            Some(6),
            "step {step}: {}",
            text(&again)
        );
        assert!(String::from_utf8_lossy(&again.stderr).contains("vfioctl restore"));

        let r = vfioctl(t.path(), &["restore", "--all"], &[]);
        assert!(r.status.success(), "step {step}: {}", text(&r));
        assert_eq!(override_of(t.path(), "0000:03:01.0"), None, "step {step}");
        assert_eq!(override_of(t.path(), "0000:03:02.0"), None, "step {step}");
        assert!(ledger(t.path()).is_empty(), "step {step}");
        let out = String::from_utf8_lossy(&r.stdout);
        assert!(out.contains("0000:03:01.0: back on e1000"), "{out}");
    }
}

#[test]
fn a_blocking_unbind_times_out_names_the_holders_and_rolls_back() {
    let t = copy("bind-gpu-held");
    let unbind = t.path().join("sys/bus/pci/drivers/nvidia/unbind");
    fs::remove_file(&unbind).unwrap();
    nix::unistd::mkfifo(&unbind, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let o = vfioctl(
        t.path(),
        &["bind", "--force", "--timeout", "1", "0000:01:00.0"],
        &[],
    );
    // The helper child blocked on the FIFO was killed and reaped before vfioctl rolled
    // back (issue 13 item 2): no writer is left on it.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&unbind)
            .unwrap();
        let mut s = String::new();
        use std::io::Read;
        let _ = f.read_to_string(&mut s);
        assert_eq!(s, "", "a write was still pending");
    }
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("did not finish within 1 s"), "{err}");
    assert!(
        err.contains("nvidia-persistenced (pid 1234) has /dev/nvidia0"),
        "{err}"
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("warning: --force"),
        "{}",
        text(&o)
    );
    assert_eq!(override_of(t.path(), "0000:01:00.0"), None);
    assert!(ledger(t.path()).is_empty());
}

#[test]
fn unbind_and_restore_need_a_ledger_entry() {
    let t = copy("bind-bridge-pair");
    let o = vfioctl(t.path(), &["unbind", "0000:03:01.0"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not in the ledger"));
    let o = vfioctl(t.path(), &["restore"], &[]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let o = vfioctl(t.path(), &["restore", "--all"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("nothing to restore"));
}

#[test]
fn unbind_refuses_while_a_vm_holds_the_group_and_restores_when_released() {
    let t = copy("bind-bridge-pair");
    // What a completed bind leaves: the override, the ledger entry, QEMU holding the group.
    fs::write(
        t.path()
            .join("sys/bus/pci/devices/0000:01:00.0/driver_override"),
        "vfio-pci\n",
    )
    .unwrap();
    fs::create_dir_all(t.path().join("var/lib/vfioctl")).unwrap();
    let entry = serde_json::json!({
        "version": 1,
        "devices": {"0000:01:00.0": {
            "original_driver": "e1000e", "original_override": null, "target_driver": "vfio-pci",
            "iommu_group": 2, "module_loaded_by_vfioctl": false, "sriov_numvfs": null,
            "state": "on-vfio", "persisted": false, "since": 0, "plan": "t"}}
    });
    fs::write(
        t.path().join("var/lib/vfioctl/ledger.json"),
        entry.to_string(),
    )
    .unwrap();
    let fd = t.path().join("proc/4711/fd");
    fs::create_dir_all(&fd).unwrap();
    fs::write(t.path().join("proc/4711/comm"), "qemu-system-x86\n").unwrap();
    std::os::unix::fs::symlink("/dev/vfio/2", fd.join("23")).unwrap();

    let o = vfioctl(t.path(), &["unbind", "0000:01:00.0"], &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("qemu-system-x86 (pid 4711) has /dev/vfio/2 open"),
        "{err}"
    );
    assert_eq!(ledger(t.path()).len(), 1);

    fs::remove_file(fd.join("23")).unwrap();
    let o = vfioctl(t.path(), &["--json", "unbind", "0000:01:00.0"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["devices"][0]["driver"], "e1000e", "{v}");
    assert_eq!(v["devices"][0]["state"], "restored", "{v}");
    assert_eq!(override_of(t.path(), "0000:01:00.0"), None);
    assert!(ledger(t.path()).is_empty());
}

// ---- the foundation's machine snapshots ---------------------------------------------------

#[test]
fn workstation_gpu_goes_with_its_hda_and_the_boot_vga_needs_force() {
    let root = SysRoot::new(fixture("workstation"));
    let plan = plan_for(&root, &["0000:01:00.0"], false).unwrap();
    let g = &plan.groups[0];
    let got: Vec<(String, Role, Option<&str>)> = g
        .members
        .iter()
        .map(|m| (m.bdf.to_string(), m.role, m.target()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("0000:01:00.0".into(), Role::Selected, Some("vfio-pci")),
            ("0000:01:00.1".into(), Role::Companion, Some("vfio-pci")),
            ("0000:00:01.0".into(), Role::Bridge, None),
        ]
    );
    let t = copy("workstation");
    let o = vfioctl(t.path(), &["bind", "--dry-run", "0000:01:00.0"], &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("boot VGA"),
        "{}",
        text(&o)
    );
    let o = vfioctl(
        t.path(),
        &["bind", "--dry-run", "--force", "0000:01:00.0"],
        &[],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .contains("echo 0000:01:00.1 > /sys/bus/pci/drivers/snd_hda_intel/unbind"),
        "{}",
        text(&o)
    );
}

#[test]
fn gpu_server_class_selection_keeps_gpus_already_on_vfio() {
    let root = SysRoot::new(fixture("gpu-server"));
    let plan = plan_for(&root, &["10de:1df6"], false).unwrap();
    let moves: Vec<String> = plan.to_bind().map(|m| m.bdf.to_string()).collect();
    assert_eq!(moves, vec!["0000:c3:00.0", "0000:c4:00.0"]);
    let kept: Vec<String> = plan
        .groups
        .iter()
        .flat_map(|g| &g.members)
        .filter(|m| m.target().is_none())
        .map(|m| format!("{} {}", m.bdf, m.reason))
        .collect();
    assert_eq!(
        kept,
        vec![
            "0000:43:00.0 already on vfio-pci",
            "0000:44:00.0 already on vfio-pci"
        ]
    );
}

#[test]
fn iommu_off_host_says_how_to_turn_it_on() {
    let t = copy("iommu-off");
    let o = vfioctl(t.path(), &["bind", "--dry-run", "0000:01:00.0"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no IOMMU group") && err.contains("intel_iommu=on"),
        "{err}"
    );
}

#[test]
fn readme_bind_example_is_what_vfioctl_prints() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/commands/bind.md"))
            .unwrap();
    let block = readme
        .split("<!-- bind-example -->\n```console\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("README has the bind example");
    let (cmd, want) = block.split_once('\n').unwrap();
    let args: Vec<&str> = cmd
        .trim_start_matches("$ vfioctl ")
        .split_whitespace()
        .collect();
    assert_eq!(args[0], "--root");
    let t = copy(args[1].trim_start_matches("tests/fixtures/"));
    let o = vfioctl(t.path(), &args[2..], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim_end(),
        want.trim_end()
    );
}

#[test]
fn routed_nic_is_refused_while_its_carrier_is_down() {
    // Configured up (IFF_UP in `flags`) with the default route, carrier not (yet) up:
    // still the host's network. The lab guest's e1000e sits in this state for a moment
    // after `ip link set up`, and a rule on operstate alone let the bind through.
    let t = copy("bind-nic-route");
    let netdir = t
        .path()
        .join("sys/devices/pci0000:00/0000:00:1f.6/net/enp0s31f6");
    std::fs::write(netdir.join("operstate"), "down\n").unwrap();
    std::fs::write(netdir.join("carrier"), "0\n").unwrap();
    let o = vfioctl(t.path(), &["bind", "0000:00:1f.6"], &[]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(
        text(&o).contains("enp0s31f6 is up and carries the default route"),
        "{}",
        text(&o)
    );
    // Configured down as well: nothing depends on it, the bind is not refused for routes.
    std::fs::write(netdir.join("flags"), "0x1002\n").unwrap();
    let o = vfioctl(t.path(), &["bind", "--dry-run", "0000:00:1f.6"], &[]);
    assert!(
        !text(&o).contains("carries the default route"),
        "{}",
        text(&o)
    );
}
