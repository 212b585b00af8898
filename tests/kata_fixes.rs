//! Issue 14's findings 1 - 9, one test each, plus the switch-port topology and drop-ins.
//! Where Kata's loaders can say it (shared/kata-loaders, root), the test also loads the
//! file with them; every test also checks the file itself, so it never passes on a skip.

use std::path::{Path, PathBuf};
use std::process::Command;

use vfioctl::common::Selector;
use vfioctl::kata::{
    self, template, Base, Guest, Installed, KataError, KataVersion, Options, PlugMode, Runtime,
    Target, Topology,
};
use vfioctl::SysRoot;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn target(v: &str, rt: Runtime) -> Target {
    Target::new(v.parse().unwrap(), rt).unwrap()
}

fn select(tree: &str, gpus: &[&str]) -> kata::Selection {
    let sels: Vec<Selector> = gpus.iter().map(|s| s.parse().unwrap()).collect();
    kata::select(&SysRoot::new(fixture(tree)), &sels).unwrap()
}

fn choice(t: Target) -> kata::TargetChoice {
    kata::choose_target(Some(t.version), Some(t.runtime), None, None).unwrap()
}

/// Generate for `t` on `tree` (no base).
fn generate(t: Target, opts: Options, tree: &str, gpus: &[&str]) -> kata::Outcome {
    kata::configure(choice(t), opts, select(tree, gpus), None, &[], None).unwrap()
}

/// Patch `text` for `t`.
fn patch(t: Target, opts: Options, text: &str, tree: &str) -> kata::Outcome {
    let path = Path::new("/tmp/base.toml");
    let doc: toml_edit::DocumentMut = text.parse().unwrap();
    kata::configure(
        choice(t),
        opts,
        select(tree, &[]),
        Some(Base { path, text, doc }),
        &[],
        None,
    )
    .unwrap()
}

fn qemu(config: &str) -> toml::Table {
    let v: toml::Table = toml::from_str(config).unwrap();
    v["hypervisor"]["qemu"].as_table().unwrap().clone()
}

fn stock(rt: Runtime, tag: &str, flavour: template::Flavour) -> &'static template::Stock {
    let tag: KataVersion = tag.parse().unwrap();
    template::STOCK
        .iter()
        .find(|s| s.runtime == rt && s.tag == tag && s.flavour == flavour)
        .unwrap()
}

/// Kata's loaders' `check`, when they and root are here (else None: the loader half is
/// logged as skipped, a failure under VFIOCTL_REQUIRE_LAB=1).
fn loaders() -> Option<PathBuf> {
    vfioctl_testkit::available!(vfioctl_testkit::prereq::kata_loaders())
}

/// `check --loader L` on one text: (verdict, detail).
fn load(check: &Path, loader: &str, text: &str) -> (String, String) {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("configuration.toml");
    std::fs::write(&f, text).unwrap();
    let o = Command::new(check)
        .args(["--loader", loader])
        .arg(&f)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let mut parts = out.trim_end().splitn(4, '\t').skip(2);
    (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    )
}

/// Finding 1: runtime-rs names the block driver by its bus (`virtio-blk-pci`); a Go name
/// in a runtime-rs file makes kata-types refuse the whole file.
#[test]
fn fix1_runtime_rs_block_driver() {
    for v in ["3.17.0", "4.1.0"] {
        let o = generate(target(v, Runtime::Rs), Options::default(), "kata-dgx", &[]);
        let d = qemu(&o.config)["block_device_driver"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            kata::version::BLOCK_DRIVERS_RS.contains(&d.as_str()),
            "{v}: {d}"
        );
    }
    let rs = stock(Runtime::Rs, "4.1.0", template::Flavour::NvidiaGpu);
    let broken = rs.text.replace(
        "block_device_driver = \"virtio-scsi\"",
        "block_device_driver = \"virtio-blk\"",
    );
    assert_ne!(broken, rs.text);
    let o = patch(
        target("4.1.0", Runtime::Rs),
        Options::default(),
        &broken,
        "kata-dgx",
    );
    assert_eq!(
        qemu(&o.config)["block_device_driver"].as_str(),
        Some("virtio-blk-pci")
    );
    let s = o
        .settings
        .iter()
        .find(|s| s.key == "block_device_driver")
        .unwrap();
    assert!(s.reason.contains("virtio-blk-pci"), "{}", s.reason);
    // The Go runtime's file keeps its Go name.
    let o = generate(
        target("4.1.0", Runtime::Go),
        Options::default(),
        "kata-dgx",
        &[],
    );
    assert!(!o.settings.iter().any(|s| s.key == "block_device_driver"));
    if let Some(check) = loaders() {
        let (v, d) = load(&check, "rs-4.1", &broken);
        assert_eq!(v, "REJECTED", "{d}");
        assert!(d.contains("virtio-blk"), "{d}");
        let (v, d) = load(&check, "rs-4.1", &o_rs_fixed(&broken));
        assert_eq!(v, "ACCEPTED", "{d}");
    }
}

fn o_rs_fixed(broken: &str) -> String {
    patch(
        target("4.1.0", Runtime::Rs),
        Options::default(),
        broken,
        "kata-dgx",
    )
    .config
}

/// Finding 2: the version is never guessed from a file's keys; it comes from the flag or
/// the installed Kata, and otherwise vfioctl asks.
#[test]
fn fix2_version_is_asked_for_not_guessed() {
    let nv34 = stock(Runtime::Go, "3.4.0", template::Flavour::NvidiaGpu);
    let files = [
        nv34.text,
        stock(Runtime::Go, "3.1.0", template::Flavour::Generic).text,
        stock(Runtime::Go, "3.4.0", template::Flavour::Generic).text,
    ];
    for text in files {
        let doc: toml_edit::DocumentMut = text.parse().unwrap();
        match kata::choose_target(None, None, Some(&doc), None) {
            Err(e @ KataError::VersionUnknown { .. }) => {
                assert!(e.to_string().contains("do not decide"), "{e}");
                let hint = vfioctl::Diagnose::hint(&e).unwrap();
                assert!(hint.contains("--kata-version"), "{hint}");
            }
            other => panic!("guessed: {other:?}"),
        }
    }
    assert!(matches!(
        kata::choose_target(None, None, None, None),
        Err(KataError::VersionUnknown { .. })
    ));
    // The installed Kata answers it.
    let installed = Installed {
        version: "3.4.0".parse().unwrap(),
        runtime: Some(Runtime::Go),
        how: "`kata-runtime --version` on this host".into(),
    };
    let doc: toml_edit::DocumentMut = nv34.text.parse().unwrap();
    let c = kata::choose_target(None, None, Some(&doc), Some(&installed)).unwrap();
    assert_eq!(c.target, target("3.4.0", Runtime::Go));
    assert!(c.how.contains("kata-runtime --version"), "{}", c.how);
    // Kata 3.4.0's own NVIDIA template, patched for 3.4: cold plug on root ports, the
    // 3.1 keys it still carries left alone (3.4 does not read them).
    let o = patch(
        target("3.4.0", Runtime::Go),
        Options::default(),
        nv34.text,
        "kata-dgx",
    );
    let q = qemu(&o.config);
    assert_eq!(q["cold_plug_vfio"].as_str(), Some("root-port"));
    assert!(!o
        .settings
        .iter()
        .any(|s| s.key == "hotplug_vfio_on_root_bus"));
    if let Some(check) = loaders() {
        let (v, d) = load(&check, "go-3.4", &o.config);
        assert_eq!(v, "ACCEPTED", "{d}");
        assert!(d.contains("cold_plug_vfio=root-port"), "{d}");
    }
    // The installed version parser.
    assert_eq!(
        kata::detect::parse_banner("kata-runtime  : 3.30.0\n   commit   : 86e5975\n"),
        Some(KataVersion::new(3, 30, 0))
    );
}

/// Finding 3: kata-types gains pcie_switch_port in 3.17, cold_plug_vfio and
/// pod_resource_api_sock in 3.31; runtime-rs ignores unknown [hypervisor.qemu] keys, so
/// "cold plug" before 3.31 would silently do nothing.
#[test]
fn fix3_runtime_rs_key_history() {
    let hq = "hypervisor.qemu";
    assert!(!target("3.16.0", Runtime::Rs).reads(hq, "pcie_switch_port"));
    assert!(target("3.17.0", Runtime::Rs).reads(hq, "pcie_switch_port"));
    assert!(!target("3.30.0", Runtime::Rs).reads(hq, "cold_plug_vfio"));
    assert!(target("3.31.0", Runtime::Rs).reads(hq, "cold_plug_vfio"));
    assert!(!target("3.30.0", Runtime::Rs).reads("runtime", "pod_resource_api_sock"));
    assert!(target("3.31.0", Runtime::Rs).reads("runtime", "pod_resource_api_sock"));
    let rs30 = target("3.30.0", Runtime::Rs);
    assert_eq!(rs30.default_mode(), PlugMode::Hot);
    let e = kata::configure(
        choice(rs30),
        Options {
            mode: Some(PlugMode::Cold),
            ..Options::default()
        },
        select("kata-dgx", &[]),
        None,
        &[],
        None,
    )
    .unwrap_err();
    assert!(
        matches!(e, KataError::ColdPlugUnsupported { since, .. } if since == KataVersion::new(3, 31, 0)),
        "{e}"
    );
    let o = generate(rs30, Options::default(), "kata-dgx", &[]);
    assert!(o.settings.iter().all(|s| s.key != "cold_plug_vfio"));
    assert!(o
        .settings
        .iter()
        .any(|s| s.key == "pcie_root_port" && s.value == kata::plan::Val::Int(2)));
}

/// Finding 4: Go 3.24 - 3.32 abort sandbox creation when pod_resource_api_sock names a
/// missing kubelet socket: outside Kubernetes it is emptied; --kubernetes keeps it.
#[test]
fn fix4_pod_resource_api_sock_outside_kubernetes() {
    let sock = |o: &kata::Outcome| {
        let v: toml::Table = toml::from_str(&o.config).unwrap();
        v["runtime"]
            .get("pod_resource_api_sock")
            .and_then(|s| s.as_str())
            .map(str::to_string)
    };
    for v in ["3.24.0", "3.30.0", "3.32.0"] {
        let t = target(v, Runtime::Go);
        assert!(t.pod_resources_abort());
        let o = generate(t, Options::default(), "kata-dgx", &[]);
        assert_eq!(sock(&o).as_deref(), Some(""), "{v}");
        let s = o
            .settings
            .iter()
            .find(|s| s.key == "pod_resource_api_sock")
            .unwrap();
        assert!(s.reason.contains("--kubernetes"), "{}", s.reason);
        let k = generate(
            t,
            Options {
                kubernetes: true,
                ..Options::default()
            },
            "kata-dgx",
            &[],
        );
        assert_eq!(
            sock(&k).as_deref(),
            Some("/var/lib/kubelet/pod-resources/kubelet.sock"),
            "{v}"
        );
    }
    for v in ["4.0.0", "4.1.0"] {
        let o = generate(target(v, Runtime::Go), Options::default(), "kata-dgx", &[]);
        assert_eq!(
            sock(&o).as_deref(),
            Some("/var/lib/kubelet/pod-resources/kubelet.sock"),
            "{v}: 4.0 falls back, kept"
        );
    }
}

/// Finding 5: runtime-rs reads /etc/kata-containers/runtime-rs/configuration.toml and
/// has its own shim; the try-it commands and the file header say so.
#[test]
fn fix5_install_path_and_shim_per_runtime() {
    let sel = select("kata-dgx", &[]);
    let out = Path::new("/tmp/configuration.toml");
    let rs = kata::try_commands(&target("4.1.0", Runtime::Rs), &sel, Some(out));
    let all = rs.join("\n");
    assert!(
        all.contains(
            "sudo install -D -m 0644 /tmp/configuration.toml /etc/kata-containers/runtime-rs/configuration.toml"
        ),
        "{all}"
    );
    assert!(
        all.contains("--runtime /opt/kata/runtime-rs/bin/containerd-shim-kata-v2"),
        "{all}"
    );
    let go = kata::try_commands(&target("4.1.0", Runtime::Go), &sel, Some(out)).join("\n");
    assert!(
        go.contains("/etc/kata-containers/configuration.toml")
            && go.contains("--runtime io.containerd.kata.v2"),
        "{go}"
    );
    let o = generate(
        target("4.1.0", Runtime::Rs),
        Options::default(),
        "kata-dgx",
        &[],
    );
    assert!(o
        .config
        .contains("/etc/kata-containers/runtime-rs/configuration.toml"));
}

/// Finding 6: a generated file is Kata's template of that release with only the keys
/// vfioctl must change: every other key of every table is the template's.
#[test]
fn fix6_generated_file_is_kata_template_plus_vfioctl_keys() {
    fn flat(prefix: &str, t: &toml::Table, out: &mut Vec<(String, toml::Value)>) {
        for (k, v) in t {
            let name = format!("{prefix}{k}");
            match v {
                toml::Value::Table(sub) => flat(&format!("{name}."), sub, out),
                _ => out.push((name, v.clone())),
            }
        }
    }
    for (v, rt) in [
        ("3.1.0", Runtime::Go),
        ("3.4.0", Runtime::Go),
        ("3.6.0", Runtime::Go),
        ("3.24.0", Runtime::Go),
        ("3.30.0", Runtime::Go),
        ("4.1.0", Runtime::Go),
        ("3.17.0", Runtime::Rs),
        ("4.1.0", Runtime::Rs),
    ] {
        let t = target(v, rt);
        let o = generate(t, Options::default(), "kata-dgx", &[]);
        let tpl = o.template.as_ref().unwrap();
        assert_eq!(tpl.stock.tag, t.version, "{t}: its own template");
        let mut a = Vec::new();
        flat("", &toml::from_str(tpl.stock.text).unwrap(), &mut a);
        let mut b = Vec::new();
        flat("", &toml::from_str(&o.config).unwrap(), &mut b);
        let planned: Vec<String> = o
            .settings
            .iter()
            .map(|s| format!("{}.{}", s.table, s.key))
            .collect();
        for (k, val) in &a {
            let now = b.iter().find(|(n, _)| n == k).map(|(_, v)| v);
            if now != Some(val) {
                assert!(planned.contains(k), "{t}: {k} changed but not planned");
            }
        }
        for (k, _) in &b {
            assert!(
                a.iter().any(|(n, _)| n == k) || planned.contains(k),
                "{t}: {k} added but not planned"
            );
        }
    }
    // The NVIDIA template's firmware is OVMF, and stays.
    let o = generate(
        target("4.1.0", Runtime::Go),
        Options::default(),
        "kata-dgx",
        &[],
    );
    assert_eq!(
        qemu(&o.config)["firmware"].as_str(),
        Some("/opt/kata/share/ovmf/OVMF.fd")
    );
}

/// Finding 7: guest_hook_path only for vfioctl's own guest image; Kata's NVIDIA guest
/// (NVRC init, guest-side CDI) has no hooks directory.
#[test]
fn fix7_guest_hooks_only_for_vfioctl_image() {
    let t = target("4.1.0", Runtime::Go);
    let o = generate(t, Options::default(), "kata-dgx", &[]);
    assert_eq!(qemu(&o.config)["guest_hook_path"].as_str(), Some(""));
    assert!(o.settings.iter().all(|s| s.key != "guest_hook_path"));
    let o = generate(
        t,
        Options {
            guest: Guest::Vfioctl,
            ..Options::default()
        },
        "kata-dgx",
        &[],
    );
    assert_eq!(
        qemu(&o.config)["guest_hook_path"].as_str(),
        Some("/usr/share/oci/hooks")
    );
}

/// Finding 8: the key table's versions.
#[test]
fn fix8_key_table_versions() {
    let go = |v: &str| target(v, Runtime::Go);
    for (key, table, first) in [
        ("dial_timeout", "agent.kata", "2.1.0"),
        ("vfio_mode", "runtime", "2.3.0"),
        ("static_sandbox_resource_mgmt", "runtime", "2.4.0"),
        ("rootfs_type", "hypervisor.qemu", "3.1.0"),
    ] {
        let v: KataVersion = first.parse().unwrap();
        let before = KataVersion::new(v.major, v.minor - 1, 0);
        assert!(go(first).reads(table, key), "{key} read from {first}");
        assert!(
            !Target::new(before, Runtime::Go).unwrap().reads(table, key),
            "{key} not before {first}"
        );
    }
    assert!(target("4.1.0", Runtime::Rs).reads("runtime", "internetworking_model"));
}

/// Finding 9: a GPU still on its host driver gets its file (the configuration depends on
/// the BARs and the IOMMU group), with a warning and the bind command.
#[test]
fn fix9_gpu_on_host_driver_is_configured_with_a_warning() {
    let o = generate(
        target("4.1.0", Runtime::Go),
        Options::default(),
        "kata-dgx",
        &["0000:52:00.0"],
    );
    assert_eq!(o.ports, 1);
    assert!(o
        .warnings
        .iter()
        .any(|w| w.contains("0000:52:00.0 (nvidia) is not on vfio-pci yet")));
    assert_eq!(o.try_commands[0], "sudo vfioctl bind 0000:52:00.0");
    assert_eq!(
        qemu(&o.config)["cold_plug_vfio"].as_str(),
        Some("root-port")
    );
}

/// GPUs behind one host PCIe switch go behind a virtual switch where the release can
/// (Go 3.6+, runtime-rs 3.17+ hot plug), with the reason; elsewhere root ports, and why.
#[test]
fn gpus_sharing_a_host_switch_get_switch_ports() {
    let o = generate(
        target("3.30.0", Runtime::Go),
        Options::default(),
        "gpu-server",
        &[],
    );
    assert_eq!(o.topology, Topology::Switch);
    let q = qemu(&o.config);
    assert_eq!(q["cold_plug_vfio"].as_str(), Some("switch-port"));
    assert_eq!(q["pcie_switch_port"].as_integer(), Some(2));
    assert_eq!(q["pcie_root_port"].as_integer(), Some(0), "Kata's 8 reset");
    assert!(o.warnings.iter().any(
        |w| w.contains("0000:43:00.0 and 0000:44:00.0 share the host PCIe switch 0000:41:00.0")
    ));
    let hot = generate(
        target("4.1.0", Runtime::Rs),
        Options {
            mode: Some(PlugMode::Hot),
            ..Options::default()
        },
        "gpu-server",
        &[],
    );
    assert_eq!(hot.topology, Topology::Switch);
    assert_eq!(qemu(&hot.config)["pcie_switch_port"].as_integer(), Some(2));
    for (t, mode, why) in [
        (
            target("4.1.0", Runtime::Rs),
            PlugMode::Cold,
            "cold plug supports root ports only",
        ),
        (target("3.16.0", Runtime::Rs), PlugMode::Hot, "from 3.17"),
        (target("3.4.0", Runtime::Go), PlugMode::Cold, "from 3.6"),
    ] {
        let o = generate(
            t,
            Options {
                mode: Some(mode),
                ..Options::default()
            },
            "gpu-server",
            &[],
        );
        assert_eq!(o.topology, Topology::RootPorts, "{t}");
        assert!(
            o.warnings.iter().any(|w| w.contains(why)),
            "{t}: {:?}",
            o.warnings
        );
    }
    // Separate switches (the DGX tree): root ports, nothing to say.
    let o = generate(
        target("4.1.0", Runtime::Go),
        Options::default(),
        "kata-dgx",
        &[],
    );
    assert_eq!(o.topology, Topology::RootPorts);
    if let Some(check) = loaders() {
        let cfg = generate(
            target("3.30.0", Runtime::Go),
            Options::default(),
            "gpu-server",
            &[],
        )
        .config;
        let (v, d) = load(&check, "go-3.30", &cfg);
        assert_eq!(v, "ACCEPTED", "{d}");
        assert!(
            d.contains("cold_plug_vfio=switch-port") && d.contains("pcie_switch_port=2"),
            "{d}"
        );
    }
}

/// `--drop-in DIR` writes only vfioctl's keys; the shipped file is untouched.
#[test]
fn drop_in_holds_only_vfioctl_keys() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("configuration.toml");
    let nv = stock(Runtime::Go, "3.30.0", template::Flavour::NvidiaGpu);
    std::fs::write(&base, nv.text).unwrap();
    let confd = dir.path().join("config.d");
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(fixture("gpu-server"))
        .args(["kata", "config", "--kata-version", "3.30.0", "--base"])
        .arg(&base)
        .arg("--drop-in")
        .arg(&confd)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(std::fs::read_to_string(&base).unwrap(), nv.text);
    let d = std::fs::read_to_string(confd.join(kata::DROP_IN_NAME)).unwrap();
    let v: toml::Table = toml::from_str(&d).unwrap();
    let q = v["hypervisor"]["qemu"].as_table().unwrap();
    let keys: Vec<&str> = q.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "cold_plug_vfio",
            "kernel_params",
            "pcie_root_port",
            "pcie_switch_port"
        ]
        .iter()
        .copied()
        .filter(|k| q.contains_key(*k))
        .collect::<Vec<_>>()
    );
    assert_eq!(q["cold_plug_vfio"].as_str(), Some("switch-port"));
    assert_eq!(
        v["runtime"]["pod_resource_api_sock"].as_str(),
        Some(""),
        "3.30 outside Kubernetes"
    );
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("wrote "), "{stdout}");
    assert!(stdout.contains("share the host PCIe switch"), "{stdout}");
    // A drop-in directory not named config.d is warned about.
    let other = dir.path().join("dropins");
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(fixture("kata-dgx"))
        .args(["kata", "config", "--kata-version", "4.1.0", "--drop-in"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("is not named config.d"));
    if let Some(check) = loaders() {
        let o = Command::new(&check)
            .args(["--loader", "go-3.30"])
            .arg(&base)
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("\tACCEPTED\t"), "{out}");
        assert!(out.contains("cold_plug_vfio=switch-port"), "{out}");
        assert!(out.contains("pcie_root_port=0 pcie_switch_port=2"), "{out}");
    }
}
