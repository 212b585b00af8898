//! Patching realistic Kata configuration files: only the planned keys change, every other
//! line (comments, blank lines, ordering, unrelated keys, line endings) survives byte for
//! byte, a changed key keeps its trailing comment, and patching twice changes nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use vfioctl::common::Selector;
use vfioctl::kata::{self, Base, Guest, Options, PlugMode, Runtime};
use vfioctl::SysRoot;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

struct Case {
    base: &'static str,
    version: Option<&'static str>,
    runtime: Option<Runtime>,
    mode: Option<PlugMode>,
    tree: &'static str,
    gpus: &'static [&'static str],
    guest: Guest,
}

fn patch(c: &Case) -> (String, kata::Outcome) {
    let path = fixture(&format!("kata/{}", c.base));
    let (text, doc) = kata::read_base(&path).unwrap();
    let choice = kata::choose_target(
        c.version.map(|v| v.parse().unwrap()),
        c.runtime,
        Some(&doc),
        None,
    )
    .unwrap();
    let sels: Vec<Selector> = c.gpus.iter().map(|s| s.parse().unwrap()).collect();
    let sel = kata::select(&SysRoot::new(fixture(c.tree)), &sels).unwrap();
    let out = kata::configure(
        choice,
        opts(c),
        sel,
        Some(Base {
            path: &path,
            text: &text,
            doc,
        }),
        &[],
        None,
    )
    .unwrap();
    (text, out)
}

fn opts(c: &Case) -> Options {
    Options {
        mode: c.mode,
        guest: c.guest,
        ..Options::default()
    }
}

/// Split keeping line terminators, so CRLF/LF differences count.
fn lines(s: &str) -> Vec<&str> {
    s.split_inclusive('\n').collect()
}

/// `key` if the line assigns a key (`key = value`, `key=value`).
fn assigned_key(line: &str) -> Option<&str> {
    let t = line.trim_start();
    if t.starts_with('#') || t.starts_with('[') {
        return None;
    }
    let (k, _) = t.split_once('=')?;
    let k = k.trim();
    (!k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')).then_some(k)
}

/// Drop the lines that assign one of `keys` (table, key) and tag every other line with
/// its table, so two files can be compared outside the changed keys.
fn outside<'a>(text: &'a str, keys: &BTreeSet<(String, String)>) -> Vec<(String, &'a str)> {
    let mut table = String::new();
    let mut out = Vec::new();
    for l in lines(text) {
        let t = l.trim();
        if t.starts_with('[') {
            table = t
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap()
                .trim()
                .to_string();
        }
        if let Some(k) = assigned_key(l) {
            if keys.contains(&(table.clone(), k.to_string())) {
                continue;
            }
        }
        out.push((table.clone(), l));
    }
    out
}

fn check_survives(c: &Case) -> kata::Outcome {
    let (base, out) = patch(c);
    let changed: BTreeSet<(String, String)> = out
        .settings
        .iter()
        .filter(|s| s.changed)
        .map(|s| (s.table.to_string(), s.key.to_string()))
        .collect();
    assert!(!changed.is_empty(), "{}: nothing changed", c.base);
    let a = outside(&base, &changed);
    let b = outside(&out.config, &changed);
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        assert_eq!(
            x,
            y,
            "{}: line {} differs outside the changed keys",
            c.base,
            i + 1
        );
    }
    assert_eq!(
        a.len(),
        b.len(),
        "{}: line count outside the changed keys",
        c.base
    );
    // Every changed key appears exactly once with its new value.
    let doc: toml_edit::DocumentMut = out.config.parse().unwrap();
    for s in out.settings.iter() {
        let t = kata::patch::table(&doc, s.table).unwrap();
        let v = t.get(s.key).and_then(|i| i.as_value()).unwrap();
        assert_eq!(
            kata::plan::Val::from_toml(v).as_ref(),
            Some(&s.value),
            "{}: {}",
            c.base,
            s.key
        );
    }
    // Patching the result again is a no-op.
    // A directory of its own: two tests may patch the same base at once.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join(c.base);
    std::fs::write(&path, &out.config).unwrap();
    let (text2, doc2) = kata::read_base(&path).unwrap();
    let choice = kata::choose_target(
        c.version.map(|v| v.parse().unwrap()),
        c.runtime,
        Some(&doc2),
        None,
    )
    .unwrap();
    let sels: Vec<Selector> = c.gpus.iter().map(|s| s.parse().unwrap()).collect();
    let sel = kata::select(&SysRoot::new(fixture(c.tree)), &sels).unwrap();
    let again = kata::configure(
        choice,
        opts(c),
        sel,
        Some(Base {
            path: &path,
            text: &text2,
            doc: doc2,
        }),
        &[],
        None,
    )
    .unwrap();
    assert_eq!(
        again.config, out.config,
        "{}: second patch changed the file",
        c.base
    );
    assert_eq!(again.diff.as_deref(), Some(""), "{}", c.base);
    assert!(again.settings.iter().all(|s| !s.changed), "{}", c.base);
    out
}

fn value_line<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find(|l| assigned_key(l) == Some(key))
        .unwrap_or_else(|| panic!("no {key} line"))
}

#[test]
fn nvidia_template_4_1_only_gpu_keys_change() {
    let o = check_survives(&Case {
        base: "configuration-qemu-nvidia-gpu-4.1.toml",
        version: Some("4.1.0"),
        runtime: None,
        mode: None,
        tree: "kata-dgx",
        gpus: &[],
        guest: Guest::Vfioctl,
    });
    // The NVIDIA template already has cold plug, 8 ports (>= 2), 8192 MiB, 1200 s and
    // the realloc parameters: those are kept; only the hook path changes.
    let changed: Vec<&str> = o
        .settings
        .iter()
        .filter(|s| s.changed)
        .map(|s| s.key)
        .collect();
    assert_eq!(changed, vec!["guest_hook_path"]);
    let kept: Vec<&str> = o
        .settings
        .iter()
        .filter(|s| !s.changed)
        .map(|s| s.key)
        .collect();
    for k in [
        "cold_plug_vfio",
        "pcie_root_port",
        "default_memory",
        "dial_timeout",
        "kernel_params",
    ] {
        assert!(kept.contains(&k), "{k} kept: {kept:?}");
    }
    assert!(o
        .diff
        .as_deref()
        .unwrap()
        .contains("+guest_hook_path = \"/usr/share/oci/hooks\""));
}

#[test]
fn nvidia_template_4_1_hotplug_switches_keys() {
    let o = check_survives(&Case {
        base: "configuration-qemu-nvidia-gpu-4.1.toml",
        version: Some("4.1.0"),
        runtime: None,
        mode: Some(PlugMode::Hot),
        tree: "kata-ws",
        gpus: &["0000:01:00.0"],
        guest: Guest::Vfioctl,
    });
    assert!(o.config.contains("hot_plug_vfio = \"root-port\"\n"));
    assert!(o.config.contains("cold_plug_vfio = \"no-port\"\n"));
    // 8 ports >= the 2 the GPU + HDA need: kept.
    assert!(o.config.contains("pcie_root_port = 8\n"));
}

#[test]
fn go_3_1_root_bus_keys() {
    let o = check_survives(&Case {
        base: "configuration-qemu-3.1.toml",
        version: Some("3.1.0"),
        runtime: None,
        mode: None,
        tree: "kata-dgx",
        gpus: &[],
        guest: Guest::Vfioctl,
    });
    assert_eq!(o.target.target.version.to_string(), "3.1.0");
    assert!(o.config.contains("hotplug_vfio_on_root_bus = true\n"));
    assert!(o.config.contains("pcie_root_port = 2\n"));
    assert!(o.config.contains("dial_timeout = 1200\n"));
    assert!(!o.config.contains("hot_plug_vfio ="));
    assert!(!o.config.contains("cold_plug_vfio ="));
}

#[test]
fn go_3_4_patch() {
    let o = check_survives(&Case {
        base: "configuration-qemu-3.4.toml",
        version: Some("3.4.0"),
        runtime: None,
        mode: None,
        tree: "kata-dgx",
        gpus: &["0000:1b:00.0", "0000:43:00.0"],
        guest: Guest::Vfioctl,
    });
    assert_eq!(
        value_line(&o.config, "default_memory"),
        "default_memory = 8192    # raised by hand for the A100 box"
    );
    assert_eq!(
        value_line(&o.config, "dial_timeout"),
        "dial_timeout = 1200 # seconds"
    );
    // The extra spaces inside the user's kernel_params stay.
    assert_eq!(
        value_line(&o.config, "kernel_params"),
        "kernel_params = \"agent.log=debug    initcall_debug pci=realloc pci=nocrs\""
    );
    // The commented-out cold_plug_vfio stays a comment; the real key is added.
    assert!(o.config.contains("#cold_plug_vfio = \"root-port\"\n"));
    assert_eq!(
        value_line(&o.config, "cold_plug_vfio"),
        "cold_plug_vfio = \"root-port\""
    );
    assert_eq!(
        value_line(&o.config, "hot_plug_vfio"),
        "hot_plug_vfio = \"no-port\""
    );
    assert!(!o
        .config
        .lines()
        .any(|l| assigned_key(l) == Some("pcie_root_port")));
}

#[test]
fn runtime_rs_template() {
    let o = check_survives(&Case {
        base: "configuration-qemu-nvidia-gpu-runtime-rs.toml",
        version: Some("4.1.0"),
        runtime: None, // inferred from [runtime] hypervisor_name / dial_timeout_ms
        mode: Some(PlugMode::Hot),
        tree: "kata-dgx",
        gpus: &[],
        guest: Guest::Vfioctl,
    });
    assert_eq!(o.target.target.runtime, Runtime::Rs);
    assert_eq!(
        value_line(&o.config, "cold_plug_vfio"),
        "cold_plug_vfio = \"no-port\""
    );
    assert!(!o.config.contains("hot_plug_vfio"));
    assert!(o
        .settings
        .iter()
        .any(|s| s.key == "reconnect_timeout_ms" && !s.changed));
}

#[test]
fn hand_edited_crlf_file() {
    let o = check_survives(&Case {
        base: "configuration-hand-edited-3.6.toml",
        version: Some("3.6.0"),
        runtime: None,
        mode: None,
        tree: "kata-dgx",
        gpus: &[],
        guest: Guest::Vfioctl,
    });
    let c = &o.config;
    // One line-ending style: every line still ends in CRLF, the inserted one too.
    assert_eq!(c.matches("\r\n").count(), c.matches('\n').count());
    assert!(c.contains("dial_timeout = 1200\r\n"));
    // Both plug keys were set (Kata would refuse the file): hot goes back to no-port,
    // cold keeps its value and its comment.
    assert!(c.contains("hot_plug_vfio     = \"no-port\"\r\n"));
    assert!(c.contains("cold_plug_vfio    = \"root-port\"   # tried both, see ticket 4411\r\n"));
    // 24 ports is above Kata's 16: brought to what is needed; switch ports cleared.
    assert!(c.contains("pcie_root_port    = 2\r\n"));
    assert!(c.contains("pcie_switch_port  = 0\r\n"));
    // A hex default_memory below 8192 is raised (an integer either way).
    assert!(c.contains("default_memory    = 8192\r\n"));
    // A literal-string hook path with the right value is kept as written.
    assert!(c.contains("guest_hook_path   = '/usr/share/oci/hooks'\r\n"));
    assert!(c.contains("note = \"\"\"\r\nmulti-line\r\n  string\"\"\"\r\n"));
    assert!(c.contains("\t# tab-indented comment kept as is\r\n"));
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    /// Lines a person might add anywhere in [hypervisor.qemu]: comments (also ones that
    /// look like the keys vfioctl changes), unrelated keys with odd spacing, blank lines.
    fn junk_line() -> impl Strategy<Value = String> {
        prop_oneof![
            "[ \t]{0,3}# [a-zA-Z0-9 =\"._-]{0,40}".prop_map(|s| s),
            Just("#pcie_root_port = 4".to_string()),
            Just("# cold_plug_vfio = \"bridge-port\"".to_string()),
            Just(String::new()),
            ("[a-z]{3,12}", 0u32..100000, "[ ]{0,4}")
                .prop_map(|(k, v, sp)| format!("x_{k}{sp}={sp}{v}")),
            ("[a-z]{3,12}", "[a-zA-Z0-9 /._-]{0,30}")
                .prop_map(|(k, v)| format!("y_{k} = '{v}'   # note")),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn unrelated_lines_survive_anywhere(
            inserts in proptest::collection::vec((0usize..200, junk_line()), 1..12),
            crlf: bool,
        ) {
            let base = std::fs::read_to_string(fixture("kata/configuration-qemu-3.4.toml")).unwrap();
            let mut lines: Vec<String> = base.lines().map(String::from).collect();
            // Insert only inside [hypervisor.qemu] (between its header and [agent.kata]).
            let start = lines.iter().position(|l| l == "[hypervisor.qemu]").unwrap() + 1;
            let end = lines.iter().position(|l| l == "[agent.kata]").unwrap();
            let mut used = BTreeSet::new();
            for (pos, line) in inserts {
                // Unrelated keys must be unique to stay valid TOML.
                if (line.starts_with("x_") || line.starts_with("y_")) && !used.insert(line.split([' ', '=']).next().unwrap().to_string()) {
                    continue;
                }
                let at = start + pos % (end - start);
                lines.insert(at, line);
            }
            let eol = if crlf { "\r\n" } else { "\n" };
            let text = lines.join(eol) + eol;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("configuration.toml");
            std::fs::write(&path, &text).unwrap();
            let (text, doc) = kata::read_base(&path).unwrap();
            let choice = kata::choose_target(Some("3.4.0".parse().unwrap()), None, Some(&doc), None).unwrap();
            let sel = kata::select(&SysRoot::new(fixture("kata-dgx")), &[]).unwrap();
            let out = kata::configure(choice, Options::default(), sel, Some(Base { path: &path, text: &text, doc }), &[], None).unwrap();
            let changed: BTreeSet<(String, String)> = out.settings.iter().filter(|s| s.changed)
                .map(|s| (s.table.to_string(), s.key.to_string())).collect();
            prop_assert_eq!(outside(&text, &changed), outside(&out.config, &changed));
            if crlf {
                prop_assert_eq!(out.config.matches("\r\n").count(), out.config.matches('\n').count());
            }
        }
    }
}
