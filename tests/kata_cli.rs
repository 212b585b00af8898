//! `vfioctl kata config` as a user runs it: the real binary with --root on fixture sysfs
//! trees (kata-dgx: two H100 on vfio-pci + one on nvidia; kata-ws: GPU+HDA group 13 on
//! vfio-pci, group 14 with its HDA on snd_hda_intel, a T400 sharing group 15 with its
//! root port).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `vfioctl --root TREE kata config ARGS`, with `--kata-version 4.1.0` unless ARGS name a
/// version (a --root tree has no installed Kata to ask).
fn vfioctl(tree: &str, args: &[&str]) -> Output {
    let mut v: Vec<&str> = args.to_vec();
    if !v.contains(&"--kata-version") {
        v.extend(["--kata-version", "4.1.0"]);
    }
    vfioctl_raw(tree, &v)
}

fn vfioctl_raw(tree: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(fixture(tree))
        .arg("kata")
        .arg("config")
        .args(args)
        .env_remove("VFIOCTL_ROOT")
        .output()
        .expect("run vfioctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn generates_a_valid_file_on_stdout() {
    let o = vfioctl("kata-ws", &["--gpu", "0000:01:00.0"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    let v: toml::Value = toml::from_str(&out).expect("stdout is a TOML file");
    let q = &v["hypervisor"]["qemu"];
    assert_eq!(q["cold_plug_vfio"].as_str(), Some("root-port"));
    // Kata 4.1's NVIDIA template has 8 root ports: at least the 2 needed, kept.
    assert_eq!(q["pcie_root_port"].as_integer(), Some(8));
    assert_eq!(q["machine_type"].as_str(), Some("q35"));
    // Kata's guest (the default --guest kata) has no OCI hooks directory.
    assert_eq!(q["guest_hook_path"].as_str(), Some(""));
    // Without --explain nothing but the file is printed (so `> file` works).
    assert!(o.stderr.is_empty(), "{}", text(&o.stderr));
}

#[test]
fn explain_lists_reasons_and_the_ctr_command() {
    let o = vfioctl("kata-dgx", &["--explain", "--kata-version", "3.6.0"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    for want in [
        "cold_plug_vfio",
        "pcie_root_port",
        "2 PCIe functions in IOMMU group(s) 40, 52",
        "default_memory",
        "dial_timeout",
        "--runtime io.containerd.kata.v2",
        "--device /dev/vfio/40 --device /dev/vfio/52",
        "nvidia-smi",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    toml::from_str::<toml::Value>(&text(&o.stdout)).expect("the file is still on stdout");
}

#[test]
fn json_lists_every_key_with_a_reason() {
    let o = vfioctl("kata-dgx", &["--json", "--runtime", "rs"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let settings = v["settings"].as_array().unwrap();
    assert!(!settings.is_empty());
    for s in settings {
        for f in ["table", "key", "value", "reason"] {
            assert!(!s[f].is_null(), "{f} in {s}");
        }
        assert!(!s["reason"].as_str().unwrap().is_empty());
    }
    let find = |k: &str| settings.iter().find(|s| s["key"] == k).unwrap().clone();
    assert_eq!(find("cold_plug_vfio")["value"], "root-port");
    assert_eq!(
        find("pcie_root_port")["value"],
        8,
        "an integer, not a string (kept from Kata's template)"
    );
    assert_eq!(find("reconnect_timeout_ms")["table"], "agent.kata");
    assert_eq!(v["target"]["target"]["runtime"], "rs");
    assert_eq!(v["groups"], serde_json::json!([40, 52]));
    let cmds = v["try_commands"].as_array().unwrap();
    assert!(cmds
        .iter()
        .any(|c| c.as_str().unwrap().contains("/dev/vfio/40")));
    toml::from_str::<toml::Value>(v["config"].as_str().unwrap()).unwrap();
}

#[test]
fn base_with_out_writes_file_and_shows_diff() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("configuration.toml");
    let base = fixture("kata/configuration-qemu-3.4.toml");
    let o = vfioctl(
        "kata-dgx",
        &[
            "--base",
            base.to_str().unwrap(),
            "--gpu",
            "0000:1b:00.0",
            "--out",
            out.to_str().unwrap(),
            "--kata-version",
            "3.4.0",
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let stdout = text(&o.stdout);
    assert!(
        stdout.contains("-hot_plug_vfio = \"root-port\""),
        "{stdout}"
    );
    assert!(stdout.contains("+hot_plug_vfio = \"no-port\""), "{stdout}");
    assert!(
        stdout.contains("+cold_plug_vfio = \"root-port\""),
        "{stdout}"
    );
    assert!(stdout.contains(&format!(
        "sudo install -D -m 0644 {} /etc/kata-containers/configuration.toml",
        out.display()
    )));
    assert!(stdout.contains("--device /dev/vfio/40 "));
    let written = std::fs::read_to_string(&out).unwrap();
    assert!(written.contains("cold_plug_vfio = \"root-port\""));
    // Kata 3.4 has no pcie_root_port.
    assert!(!written.contains("pcie_root_port ="));
}

#[test]
fn base_piped_prints_the_patched_file() {
    let base = fixture("kata/configuration-qemu-nvidia-gpu-4.1.toml");
    let o = vfioctl("kata-dgx", &["--base", base.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    assert!(out.starts_with("# Copyright (c) 2017-2019 Intel Corporation\n"));
    assert!(
        out.contains("guest_hook_path = \"\"\n"),
        "--guest kata: no hooks"
    );
    let o = vfioctl(
        "kata-dgx",
        &["--base", base.to_str().unwrap(), "--guest", "vfioctl"],
    );
    assert!(text(&o.stdout).contains("guest_hook_path = \"/usr/share/oci/hooks\"\n"));
}

#[test]
fn artefacts_are_absolute_and_must_exist() {
    let dir = tempfile::tempdir().unwrap();
    let k = dir.path().join("vmlinuz");
    let i = dir.path().join("rootfs.ext4");
    std::fs::write(&k, b"kernel").unwrap();
    std::fs::write(&i, b"image").unwrap();
    let o = vfioctl(
        "kata-ws",
        &[
            "--gpu",
            "01:00.0",
            "--kernel",
            k.to_str().unwrap(),
            "--image",
            i.to_str().unwrap(),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: toml::Value = toml::from_str(&text(&o.stdout)).unwrap();
    let q = &v["hypervisor"]["qemu"];
    assert_eq!(
        q["kernel"].as_str(),
        Some(k.canonicalize().unwrap().to_str().unwrap())
    );
    assert_eq!(
        q["image"].as_str(),
        Some(i.canonicalize().unwrap().to_str().unwrap())
    );
    // Kata 4.1's NVIDIA template has no initrd line: none is added.
    assert_eq!(q.get("initrd").and_then(|v| v.as_str()).unwrap_or(""), "");
    assert_eq!(q["disable_image_nvdimm"].as_bool(), Some(true));
    assert_eq!(q["rootfs_type"].as_str(), Some("ext4"));

    let o = vfioctl(
        "kata-ws",
        &["--gpu", "01:00.0", "--kernel", "/nonexistent/vmlinuz"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("--kernel /nonexistent/vmlinuz"));
}

#[test]
fn both_plug_modes_is_a_usage_error_naming_the_keys() {
    let o = vfioctl("kata-ws", &["--gpu", "01:00.0", "--hotplug", "--coldplug"]);
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(err.contains("hot_plug_vfio and cold_plug_vfio"), "{err}");
    assert!(err.contains("hint: pass either --coldplug"), "{err}");
}

#[test]
fn coldplug_before_3_2_is_a_usage_error() {
    let o = vfioctl(
        "kata-ws",
        &["--gpu", "01:00.0", "--coldplug", "--kata-version", "3.1.0"],
    );
    assert_eq!(o.status.code(), Some(2));
    let err = text(&o.stderr);
    assert!(
        err.contains("cold_plug_vfio is not read by Kata 3.1.0"),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn initrd_and_image_together_is_a_usage_error() {
    let o = vfioctl("kata-ws", &["--initrd", "/a", "--image", "/b"]);
    assert_eq!(o.status.code(), Some(2));
}

/// Issue 14 fix 9: the file depends on the BARs and the IOMMU group, not on the driver
/// the GPU is on now: it is written, with a warning and the `vfioctl bind` command.
#[test]
fn device_not_on_vfio_pci_is_written_with_the_bind_command() {
    let o = vfioctl("kata-dgx", &["--gpu", "0000:52:00.0", "--explain"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("warning: 0000:52:00.0 (nvidia) is not on vfio-pci yet"),
        "{err}"
    );
    assert!(err.contains("sudo vfioctl bind 0000:52:00.0"), "{err}");
    let v: toml::Value = toml::from_str(&text(&o.stdout)).unwrap();
    assert_eq!(
        v["hypervisor"]["qemu"]["cold_plug_vfio"].as_str(),
        Some("root-port")
    );
}

#[test]
fn group_member_on_a_host_driver_is_a_warning() {
    let o = vfioctl("kata-ws", &["--gpu", "0000:02:00.0", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["groups"], serde_json::json!([14]));
    assert_eq!(v["ports"], 2, "GPU + HDA, one port each");
    let w = v["warnings"].to_string();
    assert!(w.contains("0000:02:00.1 (snd_hda_intel)"), "{w}");
    assert!(v["try_commands"][0]
        .as_str()
        .unwrap()
        .contains("sudo vfioctl bind 0000:02:00.0"));
}

#[test]
fn default_selection_checks_every_vfio_gpu() {
    // On the workstation the default picks both vfio-pci GPUs; group 14's HDA is on
    // snd_hda_intel: a warning, the file is written.
    let o = vfioctl("kata-ws", &[]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stderr).contains("0000:02:00.1"));
    // On the DGX box the H100 still on nvidia is not picked by default.
    let o = vfioctl("kata-dgx", &["--json"]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["groups"], serde_json::json!([40, 52]));
}

#[test]
fn bridge_in_the_group_takes_no_port() {
    let o = vfioctl("kata-ws", &["--gpu", "0000:05:00.0", "--json"]);
    assert!(o.status.success(), "{}", text(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ports"], 1);
    let fns = v["selection"]["groups"][0]["functions"].as_array().unwrap();
    assert_eq!(fns.len(), 2, "root port + GPU in group 15");
    assert!(v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("0000:00:1c.4")));
}

#[test]
fn unknown_selector_and_bad_version() {
    let o = vfioctl("kata-ws", &["--gpu", "0000:09:00.0"]);
    assert_eq!(o.status.code(), Some(2));
    let o = vfioctl("kata-ws", &["--gpu", "01:00.0", "--kata-version", "latest"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("invalid Kata version"));
    let o = vfioctl(
        "kata-ws",
        &[
            "--gpu",
            "01:00.0",
            "--runtime",
            "rs",
            "--kata-version",
            "3.4",
        ],
    );
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn base_that_is_not_qemu_or_not_toml() {
    let dir = tempfile::tempdir().unwrap();
    let clh = dir.path().join("configuration-clh.toml");
    std::fs::write(
        &clh,
        "[hypervisor.clh]\npath = \"/opt/kata/bin/cloud-hypervisor\"\n",
    )
    .unwrap();
    let o = vfioctl(
        "kata-ws",
        &["--gpu", "01:00.0", "--base", clh.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("no [hypervisor.qemu] table"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[hypervisor.qemu]\npath = \n").unwrap();
    let o = vfioctl(
        "kata-ws",
        &["--gpu", "01:00.0", "--base", bad.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(text(&o.stderr).contains("not valid TOML"));
}

/// The `$ vfioctl ...` examples of the README's kata section run as documented: exit 0
/// unless the line says `# exit N`; the ctr line shown is what --explain prints.
#[test]
fn readme_examples_run() {
    let readme = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/commands/kata.md"),
    )
    .unwrap();
    let start = readme.find("<!-- section: kata -->").expect("kata section");
    let rest = &readme[start + 1..];
    let section = &rest[..rest.find("<!-- section:").unwrap_or(rest.len())];
    let mut ran = 0;
    let mut explain_out = String::new();
    for line in section.lines() {
        let Some(cmd) = line.strip_prefix("$ vfioctl ") else {
            continue;
        };
        let (cmd, comment) = cmd.split_once('#').unwrap_or((cmd, ""));
        let want: i32 = comment
            .trim()
            .strip_prefix("exit ")
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .map(|s| s.parse().unwrap())
            .unwrap_or(0);
        let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
            .args(cmd.split_whitespace())
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_remove("VFIOCTL_ROOT")
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(want), "{cmd}: {}", text(&o.stderr));
        if cmd.contains("--kata-version 3.1.0 --explain") {
            explain_out = text(&o.stderr);
        }
        ran += 1;
    }
    assert!(ran >= 6, "only {ran} examples found");
    let ctr = section
        .lines()
        .find(|l| l.starts_with("sudo ctr run --rm -t --runtime io.containerd.kata.v2 --device"))
        .expect("ctr line in README");
    assert!(
        explain_out.contains(ctr),
        "README ctr line not in:\n{explain_out}"
    );
}

/// The foundation's fixture trees: a V100S server (two on vfio-pci), a desktop whose
/// GPU is on nvidia, a host with the IOMMU off, one with Above 4G Decoding off.
#[test]
fn foundation_fixture_trees() {
    let o = vfioctl("gpu-server", &["--json", "--kata-version", "3.6.0"]);
    assert!(o.status.success(), "{}", text(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["groups"], serde_json::json!([9, 11]));
    assert_eq!(v["ports"], 2);
    let keys: Vec<&str> = v["settings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["key"].as_str().unwrap())
        .collect();
    for k in [
        "default_memory",
        "dial_timeout",
        "kernel_params",
        "pcie_switch_port",
    ] {
        assert!(keys.contains(&k), "V100S 32G BARs: {k} in {keys:?}");
    }
    // The two V100S share the host switch 0000:41:00.0: switch ports, and why.
    assert_eq!(v["topology"], "switch");
    let w = v["warnings"].to_string();
    assert!(
        w.contains("0000:43:00.0 and 0000:44:00.0 share the host PCIe switch 0000:41:00.0"),
        "{w}"
    );

    let o = vfioctl("workstation", &["--gpu", "0000:01:00.0"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("not on vfio-pci yet"));

    let o = vfioctl("iommu-off", &["--gpu", "0000:01:00.0"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("no IOMMU group") && err.contains("intel_iommu=on"),
        "{err}"
    );
}

/// A GPU on vfio-pci whose 32G BAR the host firmware never placed (Above 4G Decoding
/// off): not viable, exit 1 with the firmware hint. Built from the foundation's
/// no-above-4g tree with the GPU moved to vfio-pci, as `vfioctl bind` would leave it.
#[test]
fn unassigned_bar_is_not_viable() {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(fixture("no-above-4g"))
        .arg(dir.path().join("t"))
        .status()
        .unwrap();
    assert!(st.success());
    let root = dir.path().join("t");
    let dev = root.join("sys/devices/pci0000:00/0000:00:03.0/0000:03:00.0");
    let _ = std::fs::remove_file(dev.join("driver"));
    std::os::unix::fs::symlink("../../../../bus/pci/drivers/vfio-pci", dev.join("driver")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(&root)
        .args([
            "kata",
            "config",
            "--gpu",
            "0000:03:00.0",
            "--kata-version",
            "4.1.0",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o.stderr));
    let err = text(&o.stderr);
    assert!(
        err.contains("0000:03:00.0: BAR1 was never assigned"),
        "{err}"
    );
    assert!(err.contains("Above 4G Decoding"), "{err}");
}

#[test]
fn vfio_mode_vfio_with_a_multifunction_group_is_not_viable() {
    let base = fixture("kata/configuration-hand-edited-3.6.toml");
    let o = vfioctl(
        "kata-ws",
        &["--gpu", "0000:01:00.0", "--base", base.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("vfio_mode = \"vfio\" with IOMMU group 13"),
        "{err}"
    );
    assert!(err.contains("vfio_mode = \"guest-kernel\""), "{err}");
    // Single-function groups are fine, and vfio mode then needs the guest IOMMU on.
    let o = vfioctl("kata-dgx", &["--json", "--base", base.to_str().unwrap()]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let s = v["settings"].as_array().unwrap();
    let iommu = s
        .iter()
        .find(|s| s["key"] == "enable_iommu")
        .expect("enable_iommu planned");
    assert_eq!(iommu["value"], true);
    assert_eq!(iommu["changed"], false, "the file already has it");
}

#[test]
fn kubelet_socket_in_a_4_1_base_is_explained() {
    let base = fixture("kata/configuration-qemu-nvidia-gpu-4.1.toml");
    let o = vfioctl("kata-dgx", &["--json", "--base", base.to_str().unwrap()]);
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["notes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n.as_str().unwrap().contains("pod_resource_api_sock")));
}

/// On a terminal, --base shows the diff instead of the file (util-linux `script` gives
/// the command a pty).
#[test]
fn base_on_a_terminal_shows_the_diff() {
    // util-linux's `script` gives the command a pty.
    vfioctl_testkit::require!(vfioctl_testkit::prereq::program(
        "script",
        "apt-get install bsdutils"
    ));
    let base = fixture("kata/configuration-qemu-3.4.toml");
    let cmd = format!(
        "{} --root {} kata config --kata-version 3.4.0 --base {}",
        env!("CARGO_BIN_EXE_vfioctl"),
        fixture("kata-dgx").display(),
        base.display()
    );
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stdout));
    let out = text(&o.stdout).replace("\r\n", "\n");
    assert!(
        out.starts_with(&format!("--- {}\n+++ ", base.display())),
        "{out}"
    );
    assert!(out.contains("+cold_plug_vfio = \"root-port\""), "{out}");
    assert!(out.contains("sudo ctr run"), "{out}");
    assert!(
        !out.contains("\n[runtime]\n"),
        "the whole file is not printed: {out}"
    );
}

/// A conventional PCI function in the group (256-byte config space, no link
/// attributes) takes no root port: Kata puts it behind a pci-bridge.
#[test]
fn conventional_pci_function_takes_no_port() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(fixture("kata-ws"))
        .arg(&root)
        .status()
        .unwrap()
        .success());
    let hda = root.join("sys/devices/pci0000:00/0000:00:01.0/0000:01:00.1");
    let cfg = std::fs::read(hda.join("config")).unwrap();
    std::fs::write(hda.join("config"), &cfg[..256]).unwrap();
    for f in [
        "current_link_speed",
        "current_link_width",
        "max_link_speed",
        "max_link_width",
    ] {
        std::fs::remove_file(hda.join(f)).unwrap();
    }
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(&root)
        .args([
            "--json",
            "kata",
            "config",
            "--gpu",
            "0000:01:00.0",
            "--kata-version",
            "4.1.0",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o.stdout));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ports"], 1);
    assert!(v["notes"].as_array().unwrap().iter().any(|n| n
        .as_str()
        .unwrap()
        .starts_with("0000:01:00.1 is conventional PCI")));
}
