//! Kata Containers `configuration.toml` for GPU passthrough: generate a complete file or
//! patch a user's, for the Kata version and runtime in use.
//!
//! - [`version`]: Kata versions, runtimes, key schemes and the typed key table (pure data).
//! - [`host`]: the selected devices, their IOMMU groups, which functions take a port.
//! - [`plan`]: which keys to set and why (pure).
//! - [`template`]: the complete file used when no `--base` is given.
//! - [`patch`]: toml_edit patching that keeps everything else byte for byte.
//! - [`error`]: typed errors with the key and the fix.

pub mod error;
pub mod host;
pub mod patch;
pub mod plan;
pub mod template;
pub mod version;

use std::path::{Path, PathBuf};

use serde::Serialize;
use toml_edit::DocumentMut;

pub use error::KataError;
pub use host::{select, Selection};
pub use patch::Applied;
pub use plan::{Artefacts, Request};
pub use version::{KataVersion, PlugMode, Runtime, Target};

use plan::HQ;

/// The default Kata when neither flag nor base file says: the newest modelled release.
pub const DEFAULT_VERSION: KataVersion = KataVersion::LATEST;

/// Container image and command for the try-it line.
const CUDA_IMAGE: &str = "docker.io/nvidia/cuda:12.4.1-base-ubuntu22.04";
const PLAIN_IMAGE: &str = "docker.io/library/busybox:latest";

/// Where the target came from, for --explain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TargetChoice {
    pub target: Target,
    pub how: String,
}

/// Pick the target: flags win; otherwise the base file's keys tell the era; otherwise
/// the newest release.
pub fn choose_target(
    version: Option<KataVersion>,
    runtime: Option<Runtime>,
    base: Option<&DocumentMut>,
) -> Result<TargetChoice, KataError> {
    let inferred = base.and_then(infer);
    let (v, r, how) = match (version, runtime, inferred) {
        (Some(v), Some(r), _) => (v, r, "--kata-version and --runtime".to_string()),
        (Some(v), None, _) => (v, Runtime::Go, "--kata-version (Go runtime)".to_string()),
        (None, Some(r), Some((iv, ir, why))) if ir == r => {
            (iv, r, format!("--runtime; version {why}"))
        }
        (None, Some(r), _) => (
            DEFAULT_VERSION,
            r,
            format!("--runtime; newest modelled version {DEFAULT_VERSION}"),
        ),
        (None, None, Some((v, r, why))) => (v, r, why),
        (None, None, None) => (
            DEFAULT_VERSION,
            Runtime::Go,
            format!("newest modelled release {DEFAULT_VERSION}; pass --kata-version for another"),
        ),
    };
    Ok(TargetChoice {
        target: Target::new(v, r)?,
        how,
    })
}

/// The era of a base file from the keys it has (not from comments).
fn infer(doc: &DocumentMut) -> Option<(KataVersion, Runtime, String)> {
    let hq = patch::table(doc, HQ)?;
    let agent = patch::table(doc, "agent.kata");
    let has = |k: &str| hq.contains_key(k);
    let agent_has = |k: &str| agent.is_some_and(|a| a.contains_key(k));
    let runtime_rs = patch::table(doc, "runtime")
        .is_some_and(|r| r.contains_key("hypervisor_name"))
        || agent_has("dial_timeout_ms")
        || agent_has("reconnect_timeout_ms");
    if runtime_rs {
        return Some((
            DEFAULT_VERSION,
            Runtime::Rs,
            format!("inferred from the base file: runtime-rs keys ([runtime] hypervisor_name / dial_timeout_ms); version {DEFAULT_VERSION} assumed"),
        ));
    }
    if has("hotplug_vfio_on_root_bus") && !has("hot_plug_vfio") && !has("cold_plug_vfio") {
        return Some((
            KataVersion::new(3, 1, 0),
            Runtime::Go,
            "inferred from the base file: hotplug_vfio_on_root_bus (Kata 3.1 or older)".into(),
        ));
    }
    if (has("hot_plug_vfio") || has("cold_plug_vfio")) && !has("pcie_root_port") {
        return Some((
            KataVersion::new(3, 5, 0),
            Runtime::Go,
            "inferred from the base file: hot_plug_vfio without pcie_root_port (Kata 3.2 - 3.5)"
                .into(),
        ));
    }
    None
}

/// Everything one run produced.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub target: TargetChoice,
    pub scheme: version::KeyScheme,
    pub mode: PlugMode,
    pub ports: u32,
    pub groups: Vec<u32>,
    pub selection: Selection,
    /// Every planned key with its final value and one-line reason.
    pub settings: Vec<Setting>,
    pub notes: Vec<String>,
    /// The resulting configuration.toml.
    pub config: String,
    /// The unified diff against --base (None when generating).
    pub diff: Option<String>,
    /// Commands to try the file on a GPU host.
    pub try_commands: Vec<String>,
}

/// One key of the result as --json lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Setting {
    pub table: &'static str,
    pub key: &'static str,
    pub value: plan::Val,
    pub reason: String,
    /// False when the file already had a suitable value.
    pub changed: bool,
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
    pub path: &'a Path,
    pub text: &'a str,
    pub doc: DocumentMut,
}

/// Plan and produce the file. No I/O: the selection and the base file were read by the
/// caller ([`select`], [`read_base`]).
pub fn configure(
    choice: TargetChoice,
    mode: Option<PlugMode>,
    artefacts: Artefacts,
    sel: Selection,
    base: Option<Base<'_>>,
    config_path: Option<&Path>,
) -> Result<Outcome, KataError> {
    let target = choice.target;
    let mode = mode.unwrap_or_else(|| target.default_mode());
    let vfio_mode = match base
        .as_ref()
        .and_then(|b| patch::table(&b.doc, "runtime"))
        .and_then(|t| t.get("vfio_mode"))
        .and_then(|i| i.as_str())
    {
        Some("vfio") => plan::VfioMode::Vfio,
        _ => plan::VfioMode::GuestKernel,
    };
    let req = Request {
        target,
        mode,
        artefacts,
        vfio_mode,
    };
    let mut base_notes = Vec::new();
    if let Some(sock) = base
        .as_ref()
        .and_then(|b| patch::table(&b.doc, "runtime"))
        .and_then(|t| t.get("pod_resource_api_sock"))
        .and_then(|i| i.as_str())
        .filter(|s| !s.is_empty())
    {
        if mode == PlugMode::Cold && target.version >= KataVersion::new(3, 24, 0) {
            base_notes.push(format!(
                "pod_resource_api_sock = {sock:?} left as is: from Kata 3.24 cold plug asks the kubelet which devices to plug (#12087); with \"\" it needs a CDI annotation instead. A plain `ctr run --device` against such a release is not verified here"
            ));
        }
    }
    plan::check(&req, &sel)?;
    let wants = plan::plan(&req, &sel);
    let (mut doc, annotate, path, old) = match base {
        Some(b) => (b.doc, false, b.path.to_path_buf(), Some((b.path, b.text))),
        None => {
            let text = template::base(&target);
            let doc: DocumentMut = text.parse().expect("the template is valid TOML");
            (doc, true, PathBuf::from("<template>"), None)
        }
    };
    let applied = patch::apply(&mut doc, &wants, annotate, &path)?;
    patch::check_result(&doc, &target)?;
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
    let try_commands = try_commands(&sel, config_path);
    Ok(Outcome {
        scheme: target.scheme(),
        target: choice,
        mode,
        ports: sel.ports_needed(),
        groups: sel.group_numbers(),
        settings: applied.into_iter().map(Setting::from).collect(),
        notes,
        config,
        diff,
        try_commands,
        selection: sel,
    })
}

/// `ctr` commands that start a Kata container with the groups' /dev/vfio nodes.
pub fn try_commands(sel: &Selection, config_path: Option<&Path>) -> Vec<String> {
    let (image, cmd) = if sel.has_nvidia_gpu() {
        (CUDA_IMAGE, "nvidia-smi")
    } else {
        (PLAIN_IMAGE, "ls /sys/bus/pci/devices")
    };
    let cfg = config_path
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| "/etc/kata-containers/configuration.toml".into());
    let devices: String = sel
        .group_numbers()
        .iter()
        .map(|g| format!(" --device /dev/vfio/{g}"))
        .collect();
    vec![
        format!("sudo ctr image pull {image}"),
        format!(
            "sudo ctr run --rm -t --runtime io.containerd.kata.v2 --runtime-config-path {cfg}{devices} {image} vfioctl-gpu {cmd}"
        ),
    ]
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
