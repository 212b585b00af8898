//! Generated configuration.toml: snapshots per Kata version/runtime, and a parse-back
//! check that the file is valid TOML with the key names and types Kata decodes.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use vfioctl::common::Selector;
use vfioctl::kata::{
    self, version::port, Artefacts, Guest, KataVersion, Options, PlugMode, Runtime, Target,
};
use vfioctl::SysRoot;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn selection(tree: &str, gpus: &[&str]) -> kata::Selection {
    let sels: Vec<Selector> = gpus.iter().map(|s| s.parse().unwrap()).collect();
    kata::select(&SysRoot::new(fixture(tree)), &sels).unwrap()
}

fn generate(
    v: &str,
    rt: Runtime,
    mode: Option<PlugMode>,
    tree: &str,
    gpus: &[&str],
) -> kata::Outcome {
    let choice = kata::choose_target(Some(v.parse().unwrap()), Some(rt), None, None).unwrap();
    // Artefact paths are fixed strings so snapshots do not depend on the checkout.
    let artefacts = Artefacts {
        kernel: Some("/var/lib/vfioctl/artefacts/vmlinuz-6.1.0-56-amd64".into()),
        initrd: Some("/var/lib/vfioctl/artefacts/initrd-vfioctl.img".into()),
        image: None,
    };
    kata::configure(
        choice,
        Options {
            mode,
            artefacts,
            guest: Guest::Vfioctl,
            kubernetes: false,
        },
        selection(tree, gpus),
        None,
        &[],
        Some(Path::new("/etc/kata-containers/configuration.toml")),
    )
    .unwrap()
}

/// Every supported version line, with the DGX fixture (two H100 on vfio-pci).
const CASES: &[(&str, &str, Runtime, Option<PlugMode>)] = &[
    ("go_3_1_hotplug", "3.1.0", Runtime::Go, None),
    ("go_3_4_coldplug", "3.4.0", Runtime::Go, None),
    ("go_3_4_hotplug", "3.4.0", Runtime::Go, Some(PlugMode::Hot)),
    ("go_3_6_coldplug", "3.6.0", Runtime::Go, None),
    ("go_3_30_coldplug", "3.30.0", Runtime::Go, None),
    ("go_4_1_hotplug", "4.1.0", Runtime::Go, Some(PlugMode::Hot)),
    ("rs_3_17_hotplug", "3.17.0", Runtime::Rs, None),
    ("rs_4_1_coldplug", "4.1.0", Runtime::Rs, None),
    ("rs_4_1_hotplug", "4.1.0", Runtime::Rs, Some(PlugMode::Hot)),
];

/// The generated file as a diff against the Kata template it starts from: only vfioctl's
/// header and the keys it must change differ from Kata's own file.
fn diff_from_template(o: &kata::Outcome) -> String {
    let t = o.template.as_ref().expect("generated from a template");
    similar::TextDiff::from_lines(t.stock.text, o.config.as_str())
        .unified_diff()
        .context_radius(1)
        .header(
            &format!("kata-{}/{}", t.stock.tag, t.stock.file),
            "generated",
        )
        .to_string()
}

#[test]
fn snapshots_per_version() {
    for (name, v, rt, mode) in CASES {
        let o = generate(v, *rt, *mode, "kata-dgx", &[]);
        insta::assert_snapshot!(format!("generated_{name}"), diff_from_template(&o));
        // Outside the header and the `# vfioctl:` lines, every removed line is a key
        // vfioctl set.
        let keys: Vec<&str> = o.settings.iter().map(|s| s.key).collect();
        for l in diff_from_template(&o).lines() {
            if let Some(old) = l.strip_prefix('-').filter(|l| !l.starts_with("--")) {
                let k = old.split('=').next().unwrap().trim();
                assert!(keys.contains(&k), "{name}: {old:?} changed but not planned");
            }
        }
    }
}

#[test]
fn snapshot_workstation_gpu_with_audio() {
    let o = generate("4.1.0", Runtime::Go, None, "kata-ws", &["0000:01:00.0"]);
    insta::assert_snapshot!("generated_ws_gpu_hda_4_1", diff_from_template(&o));
    let lines: Vec<String> = o
        .settings
        .iter()
        .map(|s| format!("[{}] {} = {} | {}", s.table, s.key, s.value, s.reason))
        .collect();
    insta::assert_snapshot!("explain_ws_gpu_hda_4_1", lines.join("\n"));
}

// The parse-back structs mirror the Go runtime's `hypervisor`/`agent`/`runtime` TOML
// structs (src/runtime/pkg/katautils/config.go) and kata-types for runtime-rs: integer
// keys are u32, strings String, flags bool. A wrong type fails to deserialize.
#[derive(Debug, Deserialize)]
struct File {
    hypervisor: Hypervisors,
    agent: Agents,
    runtime: RuntimeTable,
}
#[derive(Debug, Deserialize)]
struct Hypervisors {
    qemu: Qemu,
}
#[derive(Debug, Deserialize)]
struct Qemu {
    path: String,
    kernel: String,
    image: Option<String>,
    initrd: Option<String>,
    machine_type: String,
    kernel_params: String,
    default_memory: u32,
    default_vcpus: u32,
    default_bridges: Option<u32>,
    enable_iommu: Option<bool>,
    guest_hook_path: Option<String>,
    hotplug_vfio_on_root_bus: Option<bool>,
    hot_plug_vfio: Option<String>,
    cold_plug_vfio: Option<String>,
    pcie_root_port: Option<u32>,
    pcie_switch_port: Option<u32>,
}
#[derive(Debug, Deserialize)]
struct Agents {
    kata: AgentKata,
}
#[derive(Debug, Deserialize)]
struct AgentKata {
    dial_timeout: Option<u32>,
    dial_timeout_ms: Option<u32>,
    reconnect_timeout_ms: Option<u64>,
    kernel_modules: Option<Vec<String>>,
}
#[derive(Debug, Deserialize)]
struct RuntimeTable {
    vfio_mode: String,
    name: Option<String>,
    hypervisor_name: Option<String>,
}

#[test]
fn parse_back_has_kata_key_names_and_types() {
    for (name, v, rt, mode) in CASES {
        let o = generate(v, *rt, *mode, "kata-dgx", &[]);
        let target = Target::new(v.parse::<KataVersion>().unwrap(), *rt).unwrap();
        // A second, independent parser (toml, not toml_edit) with Kata's types.
        let f: File = toml::from_str(&o.config).unwrap_or_else(|e| panic!("{name}: {e}"));
        let q = &f.hypervisor.qemu;
        assert_eq!(q.machine_type, "q35", "{name}");
        assert_eq!(
            q.kernel,
            "/var/lib/vfioctl/artefacts/vmlinuz-6.1.0-56-amd64"
        );
        assert_eq!(
            q.initrd.as_deref(),
            Some("/var/lib/vfioctl/artefacts/initrd-vfioctl.img")
        );
        assert_eq!(
            q.image.as_deref().unwrap_or(""),
            "",
            "{name}: image and initrd never both"
        );
        assert!(q.path.starts_with('/'));
        assert!(q.default_memory >= 8192, "{name}: large GPUs raise memory");
        let _ = (q.default_vcpus, q.default_bridges);
        assert_ne!(
            q.enable_iommu,
            Some(true),
            "{name}: guest-kernel mode needs no vIOMMU"
        );
        assert_eq!(
            q.guest_hook_path.as_deref(),
            Some("/usr/share/oci/hooks"),
            "{name}: --guest vfioctl"
        );
        for w in ["pci=realloc", "pci=nocrs"] {
            assert!(q.kernel_params.split(' ').any(|p| p == w), "{name}: {w}");
        }
        assert_eq!(f.runtime.vfio_mode, "guest-kernel");
        assert!(f.agent.kata.kernel_modules.unwrap_or_default().is_empty());
        let plug_ok = |v: &Option<String>, allowed: &[&str]| {
            v.as_deref().is_none_or(|s| allowed.contains(&s))
        };
        match target.scheme() {
            kata::version::KeyScheme::RootBus => {
                assert_eq!(q.hotplug_vfio_on_root_bus, Some(true), "{name}");
                assert!(
                    q.pcie_root_port.is_some_and(|n| (2..=16).contains(&n)),
                    "{name}"
                );
                assert!(
                    q.hot_plug_vfio.is_none() && q.cold_plug_vfio.is_none(),
                    "{name}"
                );
                assert!(q.pcie_switch_port.is_none());
                assert_eq!(f.agent.kata.dial_timeout, Some(1200));
            }
            kata::version::KeyScheme::PortsImplicit | kata::version::KeyScheme::Ports => {
                // Kata 3.4.0's own NVIDIA template still carries hotplug_vfio_on_root_bus
                // (unread from 3.2): vfioctl leaves Kata's lines alone and never sets it.
                assert!(
                    q.hotplug_vfio_on_root_bus.is_none()
                        || !o
                            .settings
                            .iter()
                            .any(|s| s.key == "hotplug_vfio_on_root_bus"),
                    "{name}"
                );
                assert!(plug_ok(&q.hot_plug_vfio, &port::GO_VALUES), "{name}");
                assert!(plug_ok(&q.cold_plug_vfio, &port::GO_VALUES), "{name}");
                let (want, other) = match mode.unwrap_or(PlugMode::Cold) {
                    PlugMode::Cold => (&q.cold_plug_vfio, &q.hot_plug_vfio),
                    PlugMode::Hot => (&q.hot_plug_vfio, &q.cold_plug_vfio),
                };
                assert_eq!(want.as_deref(), Some(port::ROOT), "{name}");
                // Absent is Kata's default, no-port.
                assert_eq!(
                    other.as_deref().unwrap_or(port::NONE),
                    port::NONE,
                    "{name}: never both"
                );
                if target.scheme() == kata::version::KeyScheme::Ports {
                    assert!(
                        q.pcie_root_port.is_some_and(|n| (2..=16).contains(&n)),
                        "{name}"
                    );
                    assert_eq!(q.pcie_switch_port.unwrap_or(0), 0, "{name}");
                } else {
                    assert!(
                        !o.settings.iter().any(|s| s.key == "pcie_root_port"),
                        "{name}: 3.2-3.5 have no pcie_root_port"
                    );
                }
                assert_eq!(f.agent.kata.dial_timeout, Some(1200));
            }
            kata::version::KeyScheme::RuntimeRs => {
                assert!(
                    q.hot_plug_vfio.is_none(),
                    "{name}: runtime-rs has no hot_plug_vfio"
                );
                assert!(plug_ok(&q.cold_plug_vfio, &port::RS_VALUES), "{name}");
                // Before 3.31 kata-types has no cold_plug_vfio: vfioctl writes none and
                // the default mode is hot plug.
                let want = match o.mode {
                    PlugMode::Cold => port::ROOT,
                    PlugMode::Hot => port::NONE,
                };
                assert_eq!(
                    q.cold_plug_vfio.as_deref().unwrap_or(port::NONE),
                    want,
                    "{name}"
                );
                if !target.reads("hypervisor.qemu", "cold_plug_vfio") {
                    assert_eq!(o.mode, PlugMode::Hot, "{name}");
                    assert!(!o.settings.iter().any(|s| s.key == "cold_plug_vfio"));
                }
                assert!(
                    q.pcie_root_port.is_some_and(|n| (2..=16).contains(&n)),
                    "{name}"
                );
                assert_eq!(q.pcie_switch_port.unwrap_or(0), 0, "{name}");
                assert_eq!(f.agent.kata.reconnect_timeout_ms, Some(1_200_000));
                assert!(f.agent.kata.dial_timeout.is_none());
                assert!(
                    f.agent.kata.dial_timeout_ms.is_none_or(|ms| ms > 0),
                    "{name}: runtime-rs times the agent in ms"
                );
                assert_eq!(f.runtime.name.as_deref(), Some("virt_container"));
                assert_eq!(f.runtime.hypervisor_name.as_deref(), Some("qemu"));
            }
        }
        // Every key the target reads has the type in the model's key table.
        let doc: toml_edit::DocumentMut = o.config.parse().unwrap();
        let bad = kata::patch::schema_violations(&doc, &target);
        assert!(bad.is_empty(), "{name}: {bad:?}");
        // Every key set by vfioctl is one the target reads.
        for s in &o.settings {
            assert!(
                target.reads(s.table, s.key),
                "{name}: {}.{} not read by {target}",
                s.table,
                s.key
            );
            assert!(!s.reason.is_empty());
        }
    }
}

#[test]
fn small_gpu_gets_no_large_gpu_settings() {
    // T400 (256M BAR) behind a root port that shares its group: one port, no memory or
    // timeout raise, no kernel parameters in cold plug.
    let o = generate("4.1.0", Runtime::Go, None, "kata-ws", &["0000:05:00.0"]);
    assert_eq!(o.ports, 1);
    assert_eq!(o.groups, vec![15]);
    let keys: Vec<&str> = o.settings.iter().map(|s| s.key).collect();
    assert!(!keys.contains(&"default_memory"), "{keys:?}");
    assert!(!keys.contains(&"dial_timeout"), "{keys:?}");
    assert!(!keys.contains(&"kernel_params"), "{keys:?}");
    assert!(o
        .notes
        .iter()
        .any(|n| n.contains("0000:00:1c.4") && n.contains("bridge")));
    // Hot plug of the same device does need the guest to reassign windows.
    let o = generate(
        "4.1.0",
        Runtime::Go,
        Some(PlugMode::Hot),
        "kata-ws",
        &["0000:05:00.0"],
    );
    assert!(o.settings.iter().any(|s| s.key == "kernel_params"));
}
