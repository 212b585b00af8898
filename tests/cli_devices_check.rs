//! `vfioctl devices` and `vfioctl check` as a user runs them: the real binary with
//! `--root` on each fixture tree. Statuses, messages and hints are asserted, and the
//! human output is kept as snapshots (tests/snapshots/) so a change in wording is seen in
//! review.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn vfioctl(root: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(fixture(root))
        .args(args)
        .env_remove("VFIOCTL_ROOT")
        .env_remove("RUST_LOG")
        .output()
        .expect("run vfioctl")
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn find<'a>(report: &'a Value, id: &str, device: Option<&str>) -> &'a Value {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id && c["device"].as_str() == device)
        .unwrap_or_else(|| panic!("no check {id} for {device:?} in {report:#}"))
}

fn status<'a>(report: &'a Value, id: &str, device: Option<&str>) -> &'a str {
    find(report, id, device)["status"].as_str().unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn check_gpu_server_is_ready() {
    let out = vfioctl("gpu-server", &["check", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let r = json(&out);
    assert_eq!(r["summary"]["fail"], 0);
    assert_eq!(r["summary"]["ok"], true);
    let devs: Vec<&str> = r["summary"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert_eq!(
        devs,
        [
            "0000:02:00.0",
            "0000:43:00.0",
            "0000:44:00.0",
            "0000:c3:00.0",
            "0000:c4:00.0"
        ]
    );
    for id in [
        "cpu-virt",
        "kvm",
        "iommu-firmware",
        "iommu-kernel",
        "iommu-groups",
        "interrupt-remapping",
        "vfio-modules",
        "dev-vfio",
        "memlock",
    ] {
        assert_eq!(status(&r, id, None), "pass", "{id}");
    }
    assert!(find(&r, "iommu-firmware", None)["message"]
        .as_str()
        .unwrap()
        .contains("IVRS"));
    let above = find(&r, "bars-above-4g", Some("0000:44:00.0"));
    assert_eq!(above["status"], "pass");
    assert_eq!(
        above["message"],
        "BAR1 32G above 4G @0x222800000000, BAR3 32M above 4G @0x223000000000"
    );
    assert_eq!(status(&r, "iommu-group", Some("0000:44:00.0")), "pass");
    assert_eq!(
        find(&r, "driver", Some("0000:44:00.0"))["message"],
        "bound to vfio-pci (/dev/vfio/11)"
    );
    let nv = find(&r, "driver", Some("0000:c3:00.0"));
    assert_eq!(nv["status"], "warn");
    assert!(nv["hint"].as_str().unwrap().contains("nvidia-persistenced"));
    // The BMC's VGA is the boot VGA device.
    assert_eq!(status(&r, "boot-vga", Some("0000:02:00.0")), "warn");
    insta::assert_snapshot!("check_gpu_server", text(&vfioctl("gpu-server", &["check"])));
}

#[test]
fn check_workstation_names_the_hda_companion() {
    let out = vfioctl("workstation", &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    let g = find(&r, "iommu-group", Some("0000:01:00.0"));
    assert_eq!(g["status"], "fail");
    let msg = g["message"].as_str().unwrap();
    assert!(msg.contains("IOMMU group 1 is not viable"), "{msg}");
    assert!(
        msg.contains(
            "0000:01:00.1 (this GPU's HDMI/DP audio function, class 040300, on snd_hda_intel)"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("fine: 0000:00:01.0 (pcieport, bridge)"),
        "{msg}"
    );
    assert!(g["hint"]
        .as_str()
        .unwrap()
        .contains("vfioctl bind 0000:01:00.0 0000:01:00.1"));
    assert_eq!(status(&r, "boot-vga", Some("0000:01:00.0")), "warn");
    assert_eq!(status(&r, "driver", Some("0000:01:00.0")), "warn");
    assert_eq!(status(&r, "vfio-modules", None), "warn");
    assert_eq!(status(&r, "memlock", None), "warn");
    assert_eq!(r["summary"]["fail"], 1);
    insta::assert_snapshot!(
        "check_workstation",
        text(&vfioctl("workstation", &["check"]))
    );
}

#[test]
fn check_vm_memory_against_memlock() {
    let out = vfioctl("workstation", &["check", "--vm-memory", "16G", "--json"]);
    let r = json(&out);
    let m = find(&r, "memlock", None);
    assert_eq!(m["status"], "fail");
    assert_eq!(
        m["message"],
        "memlock limit 8M is below the 17G a 16G VM with VFIO pins (RAM + 1G, libvirt's rule)"
    );
    let out = vfioctl("gpu-server", &["check", "--vm-memory", "64G", "--json"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(status(&json(&out), "memlock", None), "pass");
    assert_eq!(status(&json(&out), "hugepages", None), "pass");
}

#[test]
fn check_no_above_4g_fails_the_bar() {
    let out = vfioctl("no-above-4g", &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    let b = find(&r, "bars-assigned", Some("0000:03:00.0"));
    assert_eq!(b["status"], "fail");
    assert!(b["message"]
        .as_str()
        .unwrap()
        .starts_with("BAR1 (64-bit prefetchable, size unknown) never assigned"));
    assert!(b["hint"].as_str().unwrap().contains("Above 4G Decoding"));
    assert!(b["hint"].as_str().unwrap().contains("pci=realloc"));
    assert_eq!(r["summary"]["fail"], 1, "only the BAR fails: {r:#}");
    insta::assert_snapshot!(
        "check_no_above_4g",
        text(&vfioctl("no-above-4g", &["check"]))
    );
}

#[test]
fn check_iommu_off() {
    let out = vfioctl("iommu-off", &["check", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let r = json(&out);
    for id in [
        "iommu-firmware",
        "iommu-kernel",
        "iommu-groups",
        "iommu-cmdline",
    ] {
        assert_eq!(status(&r, id, None), "fail", "{id}");
    }
    assert!(find(&r, "iommu-cmdline", None)["hint"]
        .as_str()
        .unwrap()
        .starts_with("add intel_iommu=on to the kernel command line"));
    assert!(find(&r, "iommu-firmware", None)["hint"]
        .as_str()
        .unwrap()
        .contains("VT-d"));
    assert_eq!(status(&r, "interrupt-remapping", None), "skip");
    assert_eq!(status(&r, "iommu-group", Some("0000:01:00.0")), "fail");
    let d = find(&r, "driver", Some("0000:01:00.0"));
    assert_eq!(d["message"], "bound to nouveau: the host driver holds it");
    insta::assert_snapshot!("check_iommu_off", text(&vfioctl("iommu-off", &["check"])));
}

#[test]
fn check_selectors_and_classes() {
    // An explicit device: only its checks (plus the host's).
    let r = json(&vfioctl("gpu-server", &["check", "0000:82:00.0", "--json"]));
    assert_eq!(r["summary"]["devices"], serde_json::json!(["0000:82:00.0"]));
    assert_eq!(status(&r, "sriov", Some("0000:82:00.0")), "pass");
    // By id, by class.
    let r = json(&vfioctl("gpu-server", &["check", "10de:1df6", "--json"]));
    assert_eq!(r["summary"]["devices"].as_array().unwrap().len(), 4);
    let r = json(&vfioctl(
        "workstation",
        &["check", "--class", "audio", "--json"],
    ));
    assert_eq!(
        r["summary"]["devices"],
        serde_json::json!(["0000:00:1f.3", "0000:01:00.1"])
    );
}

#[test]
fn usage_errors_exit_2() {
    for args in [
        &["check", "0000:01:00.9"][..],
        &["check", "0000:09:00.0"],
        &["check", "10de:ffff"],
        &["check", "--vm-memory", "12X"],
        &["check", "--class", "toaster"],
        &["devices", "../0000:01:00.0"],
        &["devices", "0000:09:00.0"],
    ] {
        let out = vfioctl("workstation", args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = vfioctl("workstation", &["check", "10de:ffff", "--json"]);
    let e = json(&out);
    assert_eq!(e["error"], "no PCI device matches 10de:ffff");
    assert_eq!(e["exit_code"], 2);
}

#[test]
fn devices_json_fields() {
    let out = vfioctl("gpu-server", &["devices", "--json", "0000:44:00.0"]);
    assert_eq!(out.status.code(), Some(0));
    let v = json(&out);
    let d = &v[0];
    assert_eq!(d["bdf"], "0000:44:00.0");
    assert_eq!(d["vendor"], "10de");
    assert_eq!(d["device"], "1df6");
    assert_eq!(d["device_name"], "GV100GL [Tesla V100S PCIe 32GB]");
    assert_eq!(d["class"], "030200");
    assert_eq!(d["driver"], "vfio-pci");
    assert_eq!(d["iommu_group"], 11);
    assert_eq!(
        d["bars"][1],
        serde_json::json!({
            "index": 1, "start": "0x222800000000", "size": 34359738368u64,
            "size_human": "32G", "is_64bit": true, "prefetchable": true, "io": false,
            "assigned": true, "above_4g": true, "summary": "BAR1 32G 64b pref @0x222800000000"
        })
    );
    let v = json(&vfioctl(
        "no-above-4g",
        &["devices", "--json", "--class", "gpu"],
    ));
    let b1 = &v[0]["bars"][1];
    assert_eq!(b1["assigned"], false);
    assert_eq!(b1["start"], Value::Null);
    assert_eq!(b1["size"], Value::Null);
    // Every device of the server tree, sorted.
    let all = json(&vfioctl("gpu-server", &["devices", "--json"]));
    assert_eq!(all.as_array().unwrap().len(), 28);
}

#[test]
fn devices_table() {
    insta::assert_snapshot!(
        "devices_workstation",
        text(&vfioctl("workstation", &["devices"]))
    );
    insta::assert_snapshot!(
        "devices_server_gpus",
        text(&vfioctl("gpu-server", &["devices", "--class", "gpu"]))
    );
}
