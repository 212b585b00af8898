//! `vfioctl vf` and `vfioctl mdev` over the `shared-gpus` fixture host (an A100 PCIe 40GB
//! with 16 SR-IOV VFs and NVIDIA's per-VF vGPU type files, a T4 mediated-device parent
//! with GRID types, an 82576 on igb with 7 VFs offered), and `check`'s SR-IOV, vGPU and
//! VFIO backend verdicts.
//!
//! A fixture tree is a kernel that accepts every write and creates nothing: the tests that
//! need the kernel's answer to a write (VFs appearing after `sriov_numvfs`, an mdev after
//! `create`) run a [`KernelStandIn`] thread that lays out what Linux lays out, the same
//! files and links the fixture generator writes. What the real kernel does is proven in
//! the lab (`tests/shared_lab.rs`).

mod schema_support;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use vfioctl::bind::{BindState, Entry, Ledger};
use vfioctl::{Bdf, SysRoot};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/shared-gpus")
}

/// A private, writable copy of the fixture (symlinks kept).
fn copy() -> tempfile::TempDir {
    vfioctl_testkit::fixture::copy("shared-gpus")
}

fn vfioctl(root: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(root)
        .args(args)
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn read(root: &Path, abs: &str) -> String {
    fs::read_to_string(root.join(abs.trim_start_matches('/')))
        .unwrap()
        .trim()
        .to_string()
}

const PF: &str = "0000:41:00.0";
const NIC: &str = "0000:18:00.0";
const T4: &str = "0000:3b:00.0";

// ---- vf list -----------------------------------------------------------------------------

#[test]
fn vf_list_shows_the_a100s_sixteen_vfs_with_index_group_and_driver() {
    let o = vfioctl(&fixture(), &["--json", "vf", "list", PF]);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    assert_eq!(v["pf"], PF);
    assert_eq!(v["total_vfs"], 16);
    assert_eq!(v["num_vfs"], 16);
    let vfs = v["vfs"].as_array().unwrap();
    assert_eq!(vfs.len(), 16);
    // NVIDIA's layout: offset 4, stride 1 under ARI: 41:00.4 .. 41:02.3.
    assert_eq!(vfs[0]["bdf"], "0000:41:00.4");
    assert_eq!(vfs[0]["index"], 0);
    assert_eq!(vfs[0]["iommu_group"], 42);
    assert_eq!(vfs[0]["driver"], "vfio-pci");
    assert_eq!(vfs[15]["bdf"], "0000:41:02.3");
    assert_eq!(vfs[15]["index"], 15);
    assert_eq!(vfs[15]["iommu_group"], 57);
    assert_eq!(vfs[15]["driver"], Value::Null);
    assert_eq!(vfs[3]["vgpu_type"], 0);
    // Every VF its own group.
    let mut groups: Vec<u64> = vfs
        .iter()
        .map(|x| x["iommu_group"].as_u64().unwrap())
        .collect();
    groups.dedup();
    assert_eq!(groups.len(), 16);

    let human = vfioctl(&fixture(), &["vf", "list", PF]);
    let s = String::from_utf8_lossy(&human.stdout);
    assert!(s.contains("16 of 16 VFs enabled"), "{s}");
    assert!(s.contains("0000:41:02.3  15     57"), "{s}");
}

#[test]
fn vf_list_without_a_pf_lists_every_sriov_function() {
    let v = json(&vfioctl(&fixture(), &["--json", "vf", "list"]));
    let pfs: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pf"].as_str().unwrap())
        .collect();
    assert_eq!(pfs, vec![NIC, PF]);
    assert_eq!(v[0]["total_vfs"], 7);
    assert_eq!(v[0]["num_vfs"], 0);
    assert_eq!(v[0]["vf_device"], "10ca");
    assert_eq!(v[0]["drivers_autoprobe"], true);
}

#[test]
fn a_vf_or_a_function_without_sriov_is_a_usage_error_naming_the_fix() {
    let o = vfioctl(&fixture(), &["vf", "list", "0000:41:01.3"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("virtual function 7 of 0000:41:00.0"), "{e}");
    assert!(e.contains("vfioctl vf create 0000:41:00.0"), "{e}");
    let o = vfioctl(&fixture(), &["vf", "create", T4, "--count", "1"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no SR-IOV capability"));
}

// ---- vf create / remove --------------------------------------------------------------------

#[test]
fn vf_create_refuses_a_count_beyond_totalvfs_and_vfs_someone_else_enabled() {
    let t = copy();
    let o = vfioctl(t.path(), &["vf", "create", NIC, "--count", "8"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("1 to 7 (sriov_totalvfs)"));
    let o = vfioctl(t.path(), &["vf", "create", PF, "--count", "2"]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("already has 16 VFs enabled (not by vfioctl)"),
        "{e}"
    );
    // Nothing written.
    assert_eq!(
        read(t.path(), &format!("/sys/bus/pci/devices/{PF}/sriov_numvfs")),
        "16"
    );
    let o = vfioctl(t.path(), &["vf", "remove", PF]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
}

#[test]
fn vf_create_dry_run_prints_autoprobe_off_then_numvfs() {
    let o = vfioctl(
        &fixture(),
        &["vf", "create", NIC, "--count", "2", "--dry-run"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "echo 0 > /sys/bus/pci/devices/0000:18:00.0/sriov_drivers_autoprobe\n\
         echo 2 > /sys/bus/pci/devices/0000:18:00.0/sriov_numvfs\n"
    );
}

#[test]
fn vfs_that_never_appear_are_disabled_again_and_leave_no_ledger_entry() {
    // The fixture kernel takes the writes and creates no VFs.
    let t = copy();
    let o = vfioctl(
        t.path(),
        &["vf", "create", NIC, "--count", "2", "--timeout", "1"],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("2 VFs asked for, 0 appeared"), "{e}");
    let dir = format!("/sys/bus/pci/devices/{NIC}");
    assert_eq!(read(t.path(), &format!("{dir}/sriov_numvfs")), "0");
    assert_eq!(
        read(t.path(), &format!("{dir}/sriov_drivers_autoprobe")),
        "1"
    );
    let l = Ledger::peek(&SysRoot::new(t.path())).unwrap().unwrap();
    assert!(l.sriov.is_empty(), "{l:?}");
}

/// Plays the kernel's part for writes the fixture cannot answer: `sriov_numvfs` of the
/// 82576 (VFs at 19:10.0, 19:10.2, ... as offset 0x180 / stride 2 place them, each in a
/// new IOMMU group, no driver while autoprobe is off) and `create` / `remove` of mdevs.
struct KernelStandIn {
    stop: Arc<AtomicBool>,
    h: Option<std::thread::JoinHandle<()>>,
}

impl KernelStandIn {
    fn start(root: &Path) -> KernelStandIn {
        let stop = Arc::new(AtomicBool::new(false));
        let (r, s) = (root.to_path_buf(), stop.clone());
        let h = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                sriov_tick(&r);
                mdev_tick(&r);
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        KernelStandIn { stop, h: Some(h) }
    }
}

impl Drop for KernelStandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.h.take() {
            let _ = h.join();
        }
    }
}

fn sriov_tick(root: &Path) {
    let p = |abs: &str| root.join(abs.trim_start_matches('/'));
    let pf_dir = p("/sys/devices/pci0000:17/0000:17:02.0/0000:18:00.0");
    let want: usize = fs::read_to_string(pf_dir.join("sriov_numvfs"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let have: Vec<PathBuf> = (0..7)
        .map(|i| pf_dir.join(format!("virtfn{i}")))
        .filter(|l| l.symlink_metadata().is_ok())
        .collect();
    if want > 0 && have.is_empty() {
        let autoprobe = fs::read_to_string(pf_dir.join("sriov_drivers_autoprobe")).unwrap();
        for i in 0..want {
            let vf = format!("0000:19:10.{}", 2 * i % 8);
            let vf = if i >= 4 {
                format!("0000:19:11.{}", 2 * (i - 4))
            } else {
                vf
            };
            let d = p(&format!("/sys/devices/pci0000:17/0000:17:02.0/{vf}"));
            fs::create_dir_all(&d).unwrap();
            for (f, v) in [
                ("vendor", "0x8086"),
                ("device", "0x10ca"),
                ("class", "0x020000"),
                ("driver_override", "(null)"),
                ("ari_enabled", "0"),
                ("enable", "0"),
            ] {
                fs::write(d.join(f), format!("{v}\n")).unwrap();
            }
            fs::write(
                d.join("resource"),
                "0x0000000000000000 0x0000000000000000 0x0000000000000000\n".repeat(13),
            )
            .unwrap();
            symlink("../0000:18:00.0", d.join("physfn")).unwrap();
            symlink(format!("../{vf}"), pf_dir.join(format!("virtfn{i}"))).unwrap();
            symlink(
                format!("../../../devices/pci0000:17/0000:17:02.0/{vf}"),
                p(&format!("/sys/bus/pci/devices/{vf}")),
            )
            .unwrap();
            let g = 100 + i;
            fs::create_dir_all(p(&format!("/sys/kernel/iommu_groups/{g}/devices"))).unwrap();
            symlink(
                format!("../../../../devices/pci0000:17/0000:17:02.0/{vf}"),
                p(&format!("/sys/kernel/iommu_groups/{g}/devices/{vf}")),
            )
            .unwrap();
            symlink(
                format!("../../../kernel/iommu_groups/{g}"),
                d.join("iommu_group"),
            )
            .unwrap();
            assert_eq!(
                autoprobe.trim(),
                "0",
                "VFs for vfio-pci are created with autoprobe off"
            );
        }
    } else if want == 0 && !have.is_empty() {
        for l in have {
            let vf = fs::read_link(&l).unwrap();
            let vf = vf.file_name().unwrap().to_string_lossy().into_owned();
            fs::remove_dir_all(p(&format!("/sys/devices/pci0000:17/0000:17:02.0/{vf}"))).unwrap();
            fs::remove_file(p(&format!("/sys/bus/pci/devices/{vf}"))).unwrap();
            fs::remove_file(&l).unwrap();
        }
    }
}

fn mdev_tick(root: &Path) {
    let p = |abs: &str| root.join(abs.trim_start_matches('/'));
    let parent = p("/sys/devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0");
    let Ok(types) = fs::read_dir(parent.join("mdev_supported_types")) else {
        return;
    };
    for t in types {
        let t = t.unwrap().path();
        let create = t.join("create");
        let uuid = fs::read_to_string(&create).unwrap_or_default();
        let uuid = uuid.trim();
        if uuid.is_empty() {
            continue;
        }
        fs::write(&create, "").unwrap();
        let d = parent.join(uuid);
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("remove"), "").unwrap();
        let tid = t.file_name().unwrap().to_string_lossy().into_owned();
        symlink(
            format!("../mdev_supported_types/{tid}"),
            d.join("mdev_type"),
        )
        .unwrap();
        fs::create_dir_all(t.join("devices")).unwrap();
        symlink(format!("../../{uuid}"), t.join("devices").join(uuid)).unwrap();
        fs::create_dir_all(p("/sys/kernel/iommu_groups/200/devices")).unwrap();
        symlink("../../../kernel/iommu_groups/200", d.join("iommu_group")).unwrap();
        // (git keeps no empty directories: the bus dir may be missing in a checkout)
        fs::create_dir_all(p("/sys/bus/mdev/devices")).unwrap();
        symlink(
            format!("../../../devices/pci0000:3a/0000:3a:00.0/0000:3b:00.0/{uuid}"),
            p(&format!("/sys/bus/mdev/devices/{uuid}")),
        )
        .unwrap();
    }
    let Ok(devs) = fs::read_dir(p("/sys/bus/mdev/devices")) else {
        return;
    };
    for l in devs {
        let l = l.unwrap().path();
        let d = parent.join(l.file_name().unwrap());
        if fs::read_to_string(d.join("remove"))
            .unwrap_or_default()
            .trim()
            == "1"
        {
            let tid = fs::read_link(d.join("mdev_type")).unwrap();
            let tdir = parent
                .join("mdev_supported_types")
                .join(tid.file_name().unwrap());
            let _ = fs::remove_file(tdir.join("devices").join(l.file_name().unwrap()));
            fs::remove_dir_all(&d).unwrap();
            fs::remove_file(&l).unwrap();
        }
    }
}

#[test]
fn vf_create_records_the_pf_and_restore_all_removes_the_vfs() {
    let t = copy();
    let _k = KernelStandIn::start(t.path());
    let o = vfioctl(t.path(), &["--json", "vf", "create", NIC, "--count", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    schema_support::assert_valid("vf-status", &v);
    assert_eq!(v["num_vfs"], 2);
    assert_eq!(v["created_by_vfioctl"], true);
    assert_eq!(v["drivers_autoprobe"], false);
    let vfs: Vec<(&str, u64)> = v["vfs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["bdf"].as_str().unwrap(),
                x["iommu_group"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(vfs, vec![("0000:19:10.0", 100), ("0000:19:10.2", 101)]);
    let root = SysRoot::new(t.path());
    let l = Ledger::peek(&root).unwrap().unwrap();
    let rec = &l.sriov[&NIC.parse::<Bdf>().unwrap()];
    assert_eq!(
        (rec.count, rec.original_autoprobe, rec.created),
        (2, Some(true), true)
    );

    // A VF still bound by vfioctl blocks its removal.
    {
        let mut l = Ledger::open(&root).unwrap();
        l.record(
            "0000:19:10.2".parse().unwrap(),
            Entry {
                original_driver: None,
                original_override: None,
                target_driver: "vfio-pci".into(),
                iommu_group: Some(101),
                module_loaded_by_vfioctl: false,
                sriov_numvfs: None,
                state: BindState::OnVfio,
                persisted: false,
                since: 0,
                plan: "test".into(),
            },
        );
        l.save().unwrap();
    }
    let o = vfioctl(t.path(), &["vf", "remove", NIC]);
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("0000:19:10.2 are still bound by vfioctl"));
    {
        let mut l = Ledger::open(&root).unwrap();
        l.remove(&"0000:19:10.2".parse().unwrap());
        l.save().unwrap();
    }

    let o = vfioctl(t.path(), &["--json", "restore", "--all"]);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    schema_support::assert_valid("restore", &v);
    assert_eq!(v["created"]["vfs_removed"], serde_json::json!([[NIC, 2]]));
    let dir = format!("/sys/bus/pci/devices/{NIC}");
    assert_eq!(read(t.path(), &format!("{dir}/sriov_numvfs")), "0");
    assert_eq!(
        read(t.path(), &format!("{dir}/sriov_drivers_autoprobe")),
        "1"
    );
    assert!(!t.path().join("sys/bus/pci/devices/0000:19:10.0").exists());
    assert!(Ledger::peek(&root).unwrap().unwrap().sriov.is_empty());
}

#[test]
fn vf_remove_of_vfs_vfioctl_created_reports_them() {
    let t = copy();
    let _k = KernelStandIn::start(t.path());
    let o = vfioctl(t.path(), &["vf", "create", NIC, "--count", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = vfioctl(t.path(), &["--json", "vf", "remove", NIC]);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    assert_eq!(v["removed"], 2);
    schema_support::assert_valid("vf-remove", &v);
}

// ---- mdev ----------------------------------------------------------------------------------

#[test]
fn mdev_types_of_the_t4_have_nvidias_fields() {
    let o = vfioctl(&fixture(), &["--json", "mdev", "types", T4]);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    let t = &v[0];
    assert_eq!(t["parent"], T4);
    assert_eq!(t["type_id"], "nvidia-222");
    assert_eq!(t["name"], "GRID T4-1B");
    assert_eq!(t["available_instances"], 16);
    assert_eq!(t["device_api"], "vfio-pci");
    assert!(t["description"]
        .as_str()
        .unwrap()
        .contains("framebuffer=1024M"));
    assert_eq!(v.as_array().unwrap().len(), 4);
    let o = vfioctl(&fixture(), &["mdev", "types", PF]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a mediated device parent"));
    let o = vfioctl(&fixture(), &["mdev", "types", "../../etc"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
}

#[test]
fn mdev_create_refuses_unknown_types_and_bad_uuids() {
    let t = copy();
    let o = vfioctl(t.path(), &["mdev", "create", T4, "nvidia-999"]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("nvidia-222, nvidia-228, nvidia-229, nvidia-231"),
        "{e}"
    );
    let o = vfioctl(
        t.path(),
        &["mdev", "create", T4, "nvidia-222", "--uuid", "not-a-uuid"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    // The fixture kernel creates nothing: the record is dropped again.
    let o = vfioctl(
        t.path(),
        &["mdev", "create", T4, "nvidia-222", "--timeout", "1"],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(Ledger::peek(&SysRoot::new(t.path()))
        .unwrap()
        .unwrap()
        .mdevs
        .is_empty());
}

#[test]
fn mdev_create_list_and_restore_all_removes_it() {
    let t = copy();
    let _k = KernelStandIn::start(t.path());
    let u = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001";
    let o = vfioctl(
        t.path(),
        &["--json", "mdev", "create", T4, "nvidia-228", "--uuid", u],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    schema_support::assert_valid("mdev-create", &v);
    assert_eq!(v["uuid"], u);
    assert_eq!(v["parent"], T4);
    assert_eq!(v["type_id"], "nvidia-228");
    assert_eq!(v["sysfsdev"], format!("/sys/bus/mdev/devices/{u}"));
    assert_eq!(
        read(
            t.path(),
            &format!("/sys/devices/pci0000:3a/0000:3a:00.0/{T4}/{u}/remove")
        ),
        ""
    );
    let l = json(&vfioctl(t.path(), &["--json", "mdev", "list"]));
    schema_support::assert_valid("mdev-list", &l);
    assert_eq!(l[0]["uuid"], u);
    assert_eq!(l[0]["created_by_vfioctl"], true);
    assert_eq!(l[0]["iommu_group"], 200);
    let o = vfioctl(
        t.path(),
        &["--json", "mdev", "create", T4, "nvidia-228", "--uuid", u],
    );
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));

    let o = vfioctl(t.path(), &["--json", "restore", "--all"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(json(&o)["created"]["mdevs_removed"], serde_json::json!([u]));
    schema_support::assert_valid("restore", &json(&o));
    assert!(!t.path().join(format!("sys/bus/mdev/devices/{u}")).exists());
    let l = json(&vfioctl(t.path(), &["--json", "mdev", "list"]));
    assert_eq!(l, serde_json::json!([]));

    // `mdev remove`: its --json report.
    let o = vfioctl(t.path(), &["mdev", "create", T4, "nvidia-228", "--uuid", u]);
    assert!(o.status.success(), "{}", text(&o));
    let o = vfioctl(t.path(), &["--json", "mdev", "remove", u]);
    assert!(o.status.success(), "{}", text(&o));
    let v = json(&o);
    assert_eq!(v, serde_json::json!({ "removed": u }));
    schema_support::assert_valid("mdev-remove", &v);
}

// ---- check ---------------------------------------------------------------------------------

#[test]
fn check_reports_sriov_readiness_vgpu_types_and_the_backend() {
    let o = vfioctl(&fixture(), &["--json", "check", PF, T4, NIC]);
    let v = json(&o);
    let find = |id: &str, dev: Option<&str>| -> Value {
        v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["id"] == id && c["device"].as_str() == dev)
            .cloned()
            .unwrap_or_else(|| panic!("no {id} for {dev:?}: {v}"))
    };
    let b = find("vfio-backend", None);
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("/dev/iommu and VFIO device cdevs"),
        "{b}"
    );
    assert_eq!(find("sriov-ari", Some(PF))["status"], "pass");
    let acs = find("sriov-acs", Some(PF));
    assert!(
        acs["message"]
            .as_str()
            .unwrap()
            .contains("each of the 16 VFs is alone"),
        "{acs}"
    );
    let vg = find("vgpu-types", Some(PF));
    assert!(
        vg["message"]
            .as_str()
            .unwrap()
            .contains("11 types (462 NVIDIA A100-4C"),
        "{vg}"
    );
    assert_eq!(
        find("sriov-acs", Some(NIC))["message"],
        "isolating ACS on every port above the PF"
    );
    assert!(find("mdev-types", Some(T4))["message"]
        .as_str()
        .unwrap()
        .contains("GRID T4-1B"));
}

#[test]
fn check_with_the_modern_qemu_says_which_backend_vm_up_takes() {
    // Any QEMU binary: the lab's QEMU 10 (iommufd) or the system's 7.2 (none).
    let q10 = vfioctl_testkit::require!(vfioctl_testkit::prereq::modern_qemu());
    let o = vfioctl(
        &fixture(),
        &["--json", "check", PF, "--qemu", q10.to_str().unwrap()],
    );
    let v = json(&o);
    let b = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == "vfio-backend")
        .unwrap()
        .clone();
    assert!(
        b["message"]
            .as_str()
            .unwrap()
            .contains("vm up uses iommufd"),
        "{b}"
    );
}

// ---- VFIO backend: bind verification, kata, vm up ------------------------------------------

#[test]
fn bind_verification_wants_the_cdev_on_a_kernel_with_vfio_cdevs() {
    let t = copy();
    let root = SysRoot::new(t.path());
    let vf0: Bdf = "0000:41:00.4".parse().unwrap();
    assert_eq!(
        vfioctl::shared::backend::verify_cdevs(&root, &[vf0]).unwrap(),
        vec!["/dev/vfio/devices/vfio0".to_string()]
    );
    fs::remove_file(t.path().join("dev/vfio/devices/vfio0")).unwrap();
    let e = vfioctl::shared::backend::verify_cdevs(&root, &[vf0]).unwrap_err();
    assert!(
        e.to_string()
            .contains("/dev/vfio/devices/vfio0 does not exist"),
        "{e}"
    );
    // A 6.1 host (no /sys/class/vfio-dev) checks groups only.
    let ws = SysRoot::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu-server"));
    assert!(
        vfioctl::shared::backend::verify_cdevs(&ws, &["0000:43:00.0".parse().unwrap()])
            .unwrap()
            .is_empty()
    );
}

#[test]
fn kata_config_names_the_device_node_of_the_backend() {
    let v = json(&vfioctl(
        &fixture(),
        &[
            "--json",
            "kata",
            "config",
            "--kata-version",
            "4.1.0",
            "--gpu",
            "0000:41:00.4",
            "--vfio-backend",
            "iommufd",
        ],
    ));
    assert_eq!(v["vfio_backend"], "iommufd");
    assert_eq!(
        v["device_nodes"],
        serde_json::json!(["/dev/vfio/devices/vfio0"])
    );
    assert!(
        v["try_commands"].as_array().unwrap().iter().any(|c| c
            .as_str()
            .unwrap()
            .contains("--device /dev/vfio/devices/vfio0")),
        "{v:#}"
    );
    let v = json(&vfioctl(
        &fixture(),
        &[
            "--json",
            "kata",
            "config",
            "--kata-version",
            "4.1.0",
            "--gpu",
            "0000:41:00.4",
        ],
    ));
    assert_eq!(v["device_nodes"], serde_json::json!(["/dev/vfio/42"]));
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu-server");
    let o = vfioctl(
        &ws,
        &[
            "kata",
            "config",
            "--kata-version",
            "4.1.0",
            "--gpu",
            "0000:43:00.0",
            "--vfio-backend",
            "iommufd",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no /dev/iommu"));
}

fn dry_run_argv(root: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "--json",
        "vm",
        "up",
        "--dry-run",
        "--vsock",
        "none",
        "--ready",
        "serial:X",
        "--cold",
        "vf:0000:41:00.4",
    ];
    args.extend_from_slice(extra);
    Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(root)
        .args(&args)
        .env("VFIOCTL_RUN_DIR", root.join("run"))
        .env("VFIOCTL_LAB", lab())
        .output()
        .unwrap()
}

fn lab() -> PathBuf {
    std::env::var_os("VFIOCTL_LAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".lab"))
}

#[test]
fn vm_up_takes_groups_with_the_system_qemu_and_refuses_iommufd_it_lacks() {
    let t = copy();
    let k = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml"); // any file: nothing boots
    let o = dry_run_argv(t.path(), &["--kernel", k]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("vfio-pci,id=gpu0,bus=rp0,addr=0x0,host=0000:41:00.4\""),
        "{s}"
    );
    assert!(!s.contains("iommufd"), "{s}");
    let o = dry_run_argv(t.path(), &["--kernel", k, "--vfio-backend", "iommufd"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("QEMU has no iommufd object"),
        "{}",
        text(&o)
    );
}

#[test]
fn vm_up_on_the_modern_stack_takes_iommufd_automatically() {
    if !lab()
        .join("stacks/qemu-10/usr/bin/qemu-system-x86_64")
        .is_file()
    {
        let why = format!("no QEMU 10 in {} (scripts/setup --modern)", lab().display());
        assert!(
            std::env::var("VFIOCTL_REQUIRE_LAB").as_deref() != Ok("1"),
            "VFIOCTL_REQUIRE_LAB=1: {why}"
        );
        println!("SKIPPED: {why}");
        return;
    }
    let t = copy();
    let o = dry_run_argv(t.path(), &["--stack", "modern"]);
    assert!(o.status.success(), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("\"iommufd,id=iommufd0\""), "{s}");
    assert!(s.contains("host=0000:41:00.4,iommufd=iommufd0"), "{s}");
    assert!(s.contains("stacks/qemu-10/usr/share/qemu"), "{s}");
    // The same stack on a 6.1 host (no /dev/iommu): groups.
    let ws = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gpu-server");
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(&ws)
        .args([
            "--json",
            "vm",
            "up",
            "--dry-run",
            "--vsock",
            "none",
            "--ready",
            "serial:X",
            "--cold",
            "0000:43:00.0",
            "--stack",
            "modern",
        ])
        .env("VFIOCTL_RUN_DIR", t.path().join("run2"))
        .env("VFIOCTL_LAB", lab())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(!String::from_utf8_lossy(&o.stdout).contains("iommufd"));
}

// ---- README ----------------------------------------------------------------------------------

/// The `$ vfioctl ...` examples of the README's "Sharing a GPU" section print exactly the
/// lines that follow them.
#[test]
fn readme_shared_examples_print_what_the_readme_shows() {
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/commands/shared.md"))
            .unwrap();
    let start = readme
        .find("<!-- section: shared -->")
        .expect("shared section");
    let section = &readme[start..];
    let section = &section[..section.find("## Exit codes").unwrap_or(section.len())];
    let mut lines = section.lines().peekable();
    let mut ran = 0;
    while let Some(l) = lines.next() {
        let Some(cmd) = l.strip_prefix("$ vfioctl ") else {
            continue;
        };
        let mut want = String::new();
        while let Some(n) = lines.peek() {
            if n.starts_with("$ ") || n.starts_with("```") {
                break;
            }
            want.push_str(n);
            want.push('\n');
            lines.next();
        }
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!("{} {cmd}", env!("CARGO_BIN_EXE_vfioctl")))
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout),
            want,
            "README: $ vfioctl {cmd}"
        );
        ran += 1;
    }
    assert_eq!(ran, 3);
}
