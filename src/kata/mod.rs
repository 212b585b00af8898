//! Kata Containers `configuration.toml` for GPU passthrough: generate a complete file or
//! patch a user's, for the Kata version and runtime in use.
//!
//! - [`version`]: Kata versions, runtimes, key schemes and the typed key table (pure data).
//! - [`host`]: the selected devices, their IOMMU groups, which functions take a port.
//! - [`plan`]: which keys to set and why (pure).
//! - [`template`]: the complete file used when no `--base` is given.
//! - [`patch`]: toml_edit patching that keeps everything else byte for byte.
//! - [`error`]: typed errors with the key and the fix.

#![warn(missing_docs)]

pub mod detect;
pub mod dropin;
pub mod error;
pub mod host;
pub mod patch;
pub mod plan;
pub mod template;
pub mod version;

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml_edit::DocumentMut;

pub use detect::Installed;
pub use error::KataError;
pub use host::{select, Selection};
pub use patch::Applied;
pub use plan::{Artefacts, Guest, Request, Topology};
pub use version::{KataVersion, PlugMode, Runtime, Target};

/// Container image and command for the try-it line.
const CUDA_IMAGE: &str = "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04";
const PLAIN_IMAGE: &str = "docker.io/library/busybox:latest";

/// The drop-in file name vfioctl writes into `config.d/` (Kata merges drop-ins in name
/// order, later files win).
pub const DROP_IN_NAME: &str = "90-vfioctl-gpu.toml";

/// Where the target came from, for --explain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TargetChoice {
    /// The Kata version and runtime the file is written for.
    pub target: Target,
    /// Where each came from (`--kata-version`, the installed Kata, the base file's keys...).
    pub how: String,
}

/// Pick the target. The runtime: --runtime, else the base file's runtime-rs keys, else
/// the installed Kata's, else Go. The version: --kata-version, else the Kata installed
/// on this host ([`detect::installed`], passed in by the caller); never guessed from a
/// file's keys (Kata 3.4.0's own NVIDIA template still carries 3.1's
/// `hotplug_vfio_on_root_bus`, and the generic templates of 3.1 - 4.1 have no VFIO keys).
pub fn choose_target(
    version: Option<KataVersion>,
    runtime: Option<Runtime>,
    base: Option<&DocumentMut>,
    installed: Option<&Installed>,
) -> Result<TargetChoice, KataError> {
    let file_rs = base.is_some_and(is_runtime_rs);
    let (r, r_how) = match (runtime, file_rs, installed.and_then(|i| i.runtime)) {
        (Some(r), _, _) => (r, "--runtime".to_string()),
        (None, true, _) => (
            Runtime::Rs,
            "runtime-rs keys in the base file ([runtime] hypervisor_name / [agent.kata] dial_timeout_ms)".to_string(),
        ),
        (None, false, Some(r)) => (r, "the installed Kata".to_string()),
        (None, false, None) => (Runtime::Go, "the Go runtime (default)".to_string()),
    };
    let (v, v_how) = match (version, installed) {
        (Some(v), _) => (v, "--kata-version".to_string()),
        (None, Some(i)) if i.runtime.is_none_or(|ir| ir == r) => (i.version, i.how.clone()),
        (None, _) => {
            let why = match base {
                Some(_) => "the base file's keys do not decide it (Kata 3.4.0's own NVIDIA template still carries 3.1's hotplug_vfio_on_root_bus; the stock generic templates of 3.1 - 4.1 have no VFIO keys at all), and no Kata was found on this host",
                None => "no --kata-version, and no Kata was found on this host (kata-runtime --version, kata-ctl version, the kata-containers package)",
            };
            return Err(KataError::VersionUnknown { why: why.into() });
        }
    };
    Ok(TargetChoice {
        target: Target::new(v, r)?,
        how: format!("version from {v_how}; runtime from {r_how}"),
    })
}

/// runtime-rs files name the hypervisor and agent in [runtime] and time the agent in ms.
fn is_runtime_rs(doc: &DocumentMut) -> bool {
    let agent = patch::table(doc, "agent.kata");
    let agent_has = |k: &str| agent.is_some_and(|a| a.contains_key(k));
    patch::table(doc, "runtime").is_some_and(|r| r.contains_key("hypervisor_name"))
        || agent_has("dial_timeout_ms")
        || agent_has("reconnect_timeout_ms")
}

/// What the run asks for besides the target and the devices.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Options {
    /// `--hotplug` / `--coldplug`; None: the target's default ([`Target::default_mode`]).
    pub mode: Option<PlugMode>,
    /// Guest kernel, initrd and image to point Kata at.
    pub artefacts: Artefacts,
    /// Which guest image the containers boot (changes the hooks and kernel parameters planned).
    pub guest: Guest,
    /// For Kubernetes: keep `pod_resource_api_sock` on Go 3.24 - 3.32.
    pub kubernetes: bool,
}

/// Everything one run produced.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Outcome {
    /// The target Kata version and runtime, and how they were chosen.
    pub target: TargetChoice,
    /// How that Kata release names its VFIO keys.
    pub scheme: version::KeyScheme,
    /// Cold or hot plug, as asked or the target's default.
    pub mode: PlugMode,
    /// PCIe ports the passed functions need: one per non-bridge PCIe function.
    pub ports: u32,
    /// The IOMMU group numbers Kata will pass (`/dev/vfio/<group>`).
    pub groups: Vec<u32>,
    /// The selected devices, their groups and companions.
    pub selection: Selection,
    /// Root ports, or a virtual switch when the GPUs share a host switch.
    pub topology: Topology,
    /// The Kata template a generated file starts from (None when patching --base).
    pub template: Option<template::Chosen>,
    /// Every planned key with its final value and one-line reason.
    pub settings: Vec<Setting>,
    /// Things deliberately not set, and kept or cleared keys of the base, for --explain.
    pub notes: Vec<String>,
    /// Printed on every run (stderr when the file goes to stdout): devices still on a
    /// host driver, the port topology chosen and why, a borrowed template.
    pub warnings: Vec<String>,
    /// The resulting configuration.toml.
    pub config: String,
    /// Only the keys vfioctl changed, as a `config.d/` drop-in for the same base.
    pub drop_in: String,
    /// The unified diff against --base (None when generating).
    pub diff: Option<String>,
    /// Commands to try the file on a GPU host.
    pub try_commands: Vec<String>,
}

/// One key of the result as --json lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Setting {
    /// The TOML table, e.g. `hypervisor.qemu`.
    pub table: &'static str,
    /// The key within the table.
    pub key: &'static str,
    /// The value in the result.
    pub value: plan::Val,
    /// Why vfioctl wants this value (one line).
    pub reason: String,
    /// False when the file already had a suitable value.
    pub changed: bool,
    /// The value before (as written in the file), if the key was there.
    pub previous: Option<String>,
}

impl From<Applied> for Setting {
    fn from(a: Applied) -> Self {
        Setting {
            table: a.table,
            key: a.key,
            value: a.value,
            reason: a.reason,
            changed: a.changed,
            previous: a.previous,
        }
    }
}

/// A base file to patch.
pub struct Base<'a> {
    /// The file's path (for messages and the diff header).
    pub path: &'a Path,
    /// The file's text as read.
    pub text: &'a str,
    /// The parsed file; patched in place.
    pub doc: DocumentMut,
}

/// Plan and produce the file. No I/O: the selection, the base file and any existing
/// drop-ins were read by the caller ([`select`], [`read_base`], [`dropin::read_dir`]).
/// `drop_ins` are merged over the base (as Kata does) before planning, so the drop-in
/// vfioctl writes holds exactly what the effective configuration lacks.
pub fn configure(
    choice: TargetChoice,
    opts: Options,
    sel: Selection,
    base: Option<Base<'_>>,
    drop_ins: &[dropin::DropIn],
    config_path: Option<&Path>,
) -> Result<Outcome, KataError> {
    let target = choice.target;
    let mode = opts.mode.unwrap_or_else(|| target.default_mode());
    let (mut doc, annotate, path, old, chosen) = match base {
        Some(b) => (
            b.doc,
            false,
            b.path.to_path_buf(),
            Some((b.path, b.text)),
            None,
        ),
        None => {
            let (chosen, text) = template::base(&target)?;
            let doc: DocumentMut = text.parse().expect("stored templates are valid TOML");
            (doc, true, PathBuf::from("<template>"), None, Some(chosen))
        }
    };
    // What Kata will see: the base with the drop-ins merged over it.
    let mut effective = doc.clone();
    for d in drop_ins {
        dropin::merge(&mut effective, &d.doc);
    }
    let vfio_mode = match patch::table(&effective, "runtime")
        .and_then(|t| t.get("vfio_mode"))
        .and_then(|i| i.as_str())
    {
        Some("vfio") => plan::VfioMode::Vfio,
        _ => plan::VfioMode::GuestKernel,
    };
    let req = Request {
        target,
        mode,
        artefacts: opts.artefacts,
        vfio_mode,
        guest: opts.guest,
        kubernetes: opts.kubernetes,
    };
    let mut base_notes = Vec::new();
    if let Some(sock) = patch::table(&effective, "runtime")
        .and_then(|t| t.get("pod_resource_api_sock"))
        .and_then(|i| i.as_str())
        .filter(|s| !s.is_empty())
    {
        if mode == PlugMode::Cold && target.reads("runtime", "pod_resource_api_sock") {
            base_notes.push(if opts.kubernetes || !target.pod_resources_abort() {
                format!(
                    "pod_resource_api_sock = {sock:?} kept: from Kata 3.24 cold plug asks the kubelet which devices to plug (#12087); outside Kubernetes Kata 4.0+ falls back when the socket is missing"
                )
            } else {
                format!(
                    "pod_resource_api_sock = {sock:?} cleared: Kata {} aborts sandbox creation without the kubelet socket (pass --kubernetes to keep it)",
                    target.version
                )
            });
        }
    }
    plan::check(&req, &sel)?;
    let wants = plan::plan(&req, &sel);
    let (topology, topo_why) = plan::topology(&req, &sel);
    // Plan against the effective file; the drop-in gets what changed there.
    let applied_eff = patch::apply(&mut effective, &wants, false, &path)?;
    patch::check_result(&effective, &target)?;
    let drop_in = dropin::render(&target, &applied_eff);
    let applied = if drop_ins.is_empty() {
        let a = patch::apply(&mut doc, &wants, annotate, &path)?;
        patch::check_result(&doc, &target)?;
        a
    } else {
        // The shipped file stays as it is; the settings are those of the effective file.
        applied_eff
    };
    let mut config = doc.to_string();
    if let Some((_, text)) = old {
        config = match_line_endings(text, config);
    }
    let diff = old.map(|(p, text)| {
        let new_name = config_path.unwrap_or(p);
        similar::TextDiff::from_lines(text, config.as_str())
            .unified_diff()
            .context_radius(3)
            .header(&p.display().to_string(), &new_name.display().to_string())
            .to_string()
    });
    let mut notes = plan::notes(&req, &sel);
    notes.extend(base_notes);
    let mut warnings = Vec::new();
    for h in &sel.unbound {
        warnings.push(format!(
            "{h} is not on vfio-pci yet: the file does not depend on the driver, but Kata can only pass it once it is bound"
        ));
    }
    warnings.extend(topo_why);
    if let Some(c) = &chosen {
        if c.stock.tag != KataVersion::new(target.version.major, target.version.minor, 0) {
            warnings.push(format!("template: {}", c.how));
        }
    }
    let try_commands = try_commands(&target, &sel, config_path);
    Ok(Outcome {
        scheme: target.scheme(),
        target: choice,
        mode,
        ports: sel.ports_needed(),
        groups: sel.group_numbers(),
        topology,
        template: chosen,
        settings: applied.into_iter().map(Setting::from).collect(),
        notes,
        warnings,
        config,
        drop_in,
        diff,
        try_commands,
        selection: sel,
    })
}

/// The commands that put the file in place and start a Kata container with the
/// groups' /dev/vfio nodes: `vfioctl bind` for what is still on a host driver, the
/// install into the path the target's shim reads, and `ctr run` with that shim.
pub fn try_commands(target: &Target, sel: &Selection, config_path: Option<&Path>) -> Vec<String> {
    let nodes: Vec<String> = sel
        .group_numbers()
        .iter()
        .map(|g| format!("/dev/vfio/{g}"))
        .collect();
    try_commands_with(target, sel, config_path, &nodes)
}

/// The device nodes a container needs for `sel` on `backend`: each group's
/// `/dev/vfio/<group>`, or on iommufd each non-bridge function's `/dev/vfio/devices/vfioN`
/// (from its `vfio-dev/`; a function without one is named by its group node).
pub fn device_nodes(
    root: &vfioctl_common::SysRoot,
    sel: &Selection,
    backend: crate::shared::VfioBackend,
) -> Vec<String> {
    match backend {
        crate::shared::VfioBackend::Group => sel
            .group_numbers()
            .iter()
            .map(|g| format!("/dev/vfio/{g}"))
            .collect(),
        crate::shared::VfioBackend::Iommufd => sel
            .functions()
            .filter(|f| !f.bridge)
            .filter_map(|f| crate::shared::backend::device_node(root, f.bdf, backend))
            .collect(),
    }
}

/// [`try_commands`] with the device nodes given (`/dev/vfio/N` or `/dev/vfio/devices/vfioN`).
pub fn try_commands_with(
    target: &Target,
    sel: &Selection,
    config_path: Option<&Path>,
    nodes: &[String],
) -> Vec<String> {
    let (image, cmd) = if sel.has_nvidia_gpu() {
        (CUDA_IMAGE, "nvidia-smi")
    } else {
        (PLAIN_IMAGE, "ls /sys/bus/pci/devices")
    };
    let install = target.install_path();
    let devices: String = nodes.iter().map(|n| format!(" --device {n}")).collect();
    let mut v = sel.bind_commands();
    if let Some(p) = config_path.filter(|p| *p != Path::new(install)) {
        v.push(format!("sudo install -D -m 0644 {} {install}", p.display()));
    }
    v.push(format!("sudo ctr image pull {image}"));
    v.push(format!(
        "sudo ctr run --rm -t --runtime {}{devices} {image} vfioctl-gpu {cmd}",
        target.shim()
    ));
    v
}

/// Read a base file from disk.
pub fn read_base(path: &Path) -> Result<(String, DocumentMut), KataError> {
    let text = std::fs::read_to_string(path).map_err(|source| KataError::BaseRead {
        path: path.to_path_buf(),
        source,
    })?;
    let doc = patch::parse(&text, path)?;
    Ok((text, doc))
}

/// An artefact path made absolute (Kata needs absolute paths); it must exist.
pub fn artefact(flag: &'static str, p: &Path) -> Result<PathBuf, KataError> {
    std::fs::canonicalize(p).map_err(|_| KataError::Artefact {
        flag,
        path: p.to_path_buf(),
    })
}

/// Keys toml_edit inserts end in `\n`; in a file saved with CRLF throughout, give them
/// CRLF too so the file keeps one line-ending style.
fn match_line_endings(base: &str, out: String) -> String {
    let crlf = base.matches("\r\n").count();
    if crlf == 0 || crlf != base.matches('\n').count() {
        return out;
    }
    out.replace("\r\n", "\n").replace('\n', "\r\n")
}
