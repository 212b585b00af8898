//! The plan file: which scenarios a regression run executes and what each must show.
//!
//! ```toml
//! name = "lab"
//!
//! [defaults]
//! firmware = "seabios"                       # seabios | ovmf
//! kernel = "${VFIOCTL_LAB}/kernel/current/vmlinuz"
//! memory = "1G"
//! timeouts = { boot = 180, validate = 60 }   # seconds per step
//!
//! [history]                                  # regression detection
//! window = 5          # compare against the median of the last 5 runs
//! margin_pct = 50     # a step slower than median * 1.5 is a regression
//! min_samples = 3
//! min_delta_ms = 500
//!
//! [[scenario]]
//! name = "standin-8g-hot"
//! devices = ["emulated:8G"]                  # or 0000:41:00.0, 10de:20b9, class:gpu
//! plug = "hot"                               # hot | cold
//! vm = { pref64_reserve = "16G" }
//!
//! [[scenario]]
//! name = "no-reserve"                        # negative control
//! devices = ["emulated:8G"]
//! plug = "hot"
//! vm = { pref64_reserve = "none" }
//! expect = { outcome = "fail", step = "validate", match = "BAR" }
//! ```
//!
//! Parsing is two-stage: serde reads the raw TOML (unknown keys are errors, so typos do
//! not silently fall back to defaults), then [`Plan::from_raw`] checks meaning and names
//! the scenario and key of every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vfioctl_common::bdf::SelectorError;
use vfioctl_common::units::{Size, SizeError};
use vfioctl_common::Selector;

use super::step::Step;

/// Everything wrong with a plan file; each names the file, the scenario and the key.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The plan file cannot be read.
    #[error("cannot read plan {path}")]
    Read {
        /// The plan file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The plan file is not valid TOML, or has a key or value type the plan does not know.
    #[error("plan {path}: {message}")]
    Syntax {
        /// The plan file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A value the plan cannot use (bad name, device, size, step, duplicate...).
    #[error("plan {path}: {}: {reason}", where_(scenario.as_deref(), key))]
    Invalid {
        /// The plan file.
        path: PathBuf,
        /// The scenario it is in (None: a plan-level key).
        scenario: Option<String>,
        /// The key, e.g. `vm.memory`.
        key: String,
        /// What is wrong and what is accepted.
        reason: String,
    },
}

fn where_(scenario: Option<&str>, key: &str) -> String {
    match scenario {
        Some(s) => format!("scenario {s:?}, key `{key}`"),
        None => format!("key `{key}`"),
    }
}

impl crate::Diagnose for PlanError {
    fn exit(&self) -> crate::Exit {
        match self {
            PlanError::Read { .. } | PlanError::Syntax { .. } | PlanError::Invalid { .. } => {
                crate::Exit::Usage
            }
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            PlanError::Read { .. } => {
                Some("pass the path of a plan TOML file, e.g. scripts/lab-plan.toml".into())
            }
            PlanError::Syntax { .. } => Some(
                "see `vfioctl regress --help` and docs/commands/regress.md for the plan format"
                    .into(),
            ),
            PlanError::Invalid { .. } => None,
        }
    }
}

/// A device a scenario passes through.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DeviceSpec {
    /// A host device (or every device) matching a selector; bound to vfio-pci first.
    Host {
        /// The selector (`0000:41:00.0`, `10de:20b9`, `class:gpu`).
        selector: Selector,
    },
    /// An emulated stand-in: a device with one 64-bit prefetchable BAR of `bar` bytes
    /// (ivshmem-plain backed by RAM), for labs without a GPU. Nothing is bound on the host.
    Emulated {
        /// The BAR's size in bytes (a power of two).
        #[serde(serialize_with = "ser_size")]
        bar: Size,
    },
}

/// Sizes print as people write them (`8G`); `Size` itself has no serde impl.
fn ser_size<S: serde::Serializer>(v: &Size, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// A plan's `devices` entry that names no device ([`DeviceSpec::parse`]).
#[derive(Debug, thiserror::Error)]
pub enum DeviceSpecError {
    /// `emulated:` with a size that does not parse.
    #[error(transparent)]
    Size(#[from] SizeError),
    /// `emulated:` with a size no BAR can have.
    #[error("emulated BAR size {size} must be a power of two (PCI BARs are), e.g. emulated:8G")]
    BarSize {
        /// The size as written.
        size: String,
    },
    /// Not a selector (the selector's parse error is part of the message).
    #[error("{error}; or an emulated stand-in such as emulated:8G")]
    Selector {
        /// Why it is not a selector.
        error: SelectorError,
    },
}

impl DeviceSpec {
    /// Parse a plan's `devices` entry: `emulated:<size>`, else a host selector.
    pub fn parse(s: &str) -> Result<Self, DeviceSpecError> {
        if let Some(size) = s.strip_prefix("emulated:") {
            let bar: Size = size.parse()?;
            if bar.0 == 0 || !bar.0.is_power_of_two() {
                return Err(DeviceSpecError::BarSize { size: size.into() });
            }
            return Ok(DeviceSpec::Emulated { bar });
        }
        s.parse::<Selector>()
            .map(|selector| DeviceSpec::Host { selector })
            .map_err(|error| DeviceSpecError::Selector { error })
    }

    /// A host device (bound to vfio-pci), not an emulated stand-in.
    pub fn is_host(&self) -> bool {
        matches!(self, DeviceSpec::Host { .. })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Host { selector } => write!(f, "{selector}"),
            DeviceSpec::Emulated { bar } => write!(f, "emulated:{bar}"),
        }
    }
}

/// When the device reaches the guest.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum PlugMode {
    /// On the QEMU command line: the guest finds it at boot.
    Cold,
    /// `device_add` over QMP after the guest agent answers (what Kata does).
    #[default]
    Hot,
}

/// The guest firmware.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Firmware {
    /// SeaBIOS (legacy BIOS): the default.
    #[default]
    Seabios,
    /// OVMF (UEFI).
    Ovmf,
}

/// Which scenario shape runs.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The device goes from the host (or QEMU's emulation) into one guest.
    #[default]
    Passthrough,
    /// A guest with an emulated intel-iommu binds an emulated device with vfioctl and
    /// passes it to a nested guest through vfio-pci.
    Nested,
    /// SR-IOV: a guest (kernel 6.12) creates virtual functions of QEMU 10's igb with
    /// `vfioctl vf create`, binds one and passes it to a nested guest, cold and hot.
    Sriov,
    /// Mediated devices: a guest on vfioctl's own 6.12 kernel creates an mtty instance
    /// with `vfioctl mdev create` and passes it to a nested guest, cold and hot.
    Mdev,
    /// iommufd: a guest on vfioctl's own 6.12 kernel passes a VF to a nested guest with
    /// `--vfio-backend iommufd` (cold) and `auto` (hot), shown by QEMU's objects and the
    /// cdev it holds.
    Iommufd,
}

impl Kind {
    /// Every kind, in declaration order.
    pub const ALL: [Kind; 5] = [
        Kind::Passthrough,
        Kind::Nested,
        Kind::Sriov,
        Kind::Mdev,
        Kind::Iommufd,
    ];

    /// The kind runs a nested guest inside an L1 guest that is itself a VFIO host (its
    /// devices are L1's emulated ones, never the host's).
    pub fn is_nested(self) -> bool {
        match self {
            Kind::Passthrough => false,
            Kind::Nested | Kind::Sriov | Kind::Mdev | Kind::Iommufd => true,
        }
    }

    /// The lab stack the kind needs, when it needs one: QEMU 10's igb (SR-IOV) and
    /// `-object iommufd` exist only in the `modern` stack.
    pub fn required_stack(self) -> Option<&'static str> {
        match self {
            Kind::Passthrough | Kind::Nested => None,
            Kind::Sriov | Kind::Mdev | Kind::Iommufd => Some("modern"),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Passthrough => "passthrough",
            Kind::Nested => "nested",
            Kind::Sriov => "sriov",
            Kind::Mdev => "mdev",
            Kind::Iommufd => "iommufd",
        })
    }
}

/// What a scenario must show for the run to count as expected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Expect {
    /// Every step must pass (the default).
    #[default]
    Pass,
    /// A negative control: it must fail, at `step` if given, with `pattern` in the error or
    /// log excerpt if given, and not for an infrastructure reason (QEMU missing, I/O).
    Fail {
        /// The step that must fail (None: any step).
        step: Option<Step>,
        /// Text that must occur in the error or a log excerpt (`match` in the plan).
        #[serde(rename = "match")]
        pattern: Option<String>,
    },
}

impl Expect {
    /// The scenario must pass.
    pub fn is_pass(&self) -> bool {
        matches!(self, Expect::Pass)
    }
}

/// Per-step time limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timeouts(pub BTreeMap<Step, Duration>);

impl Timeouts {
    /// The limit for `step`: the plan's, else the step's default.
    pub fn get(&self, step: Step) -> Duration {
        self.0
            .get(&step)
            .copied()
            .unwrap_or_else(|| step.default_timeout())
    }
    /// The longest the scenario can take: every step at its limit.
    pub fn total(&self) -> Duration {
        Step::ALL.iter().map(|s| self.get(*s)).sum()
    }
}

/// Root-port reservation for the device's port (`pref64-reserve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reserve {
    /// Sized from the devices' BARs by the VM module (the default).
    Auto,
    /// No reservation at all: the negative control for large BARs.
    None,
    /// An explicit size.
    Size(#[serde(serialize_with = "ser_size")] Size),
}

/// Per-scenario VM knobs passed to `vfioctl::vm`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VmKnobs {
    /// Guest memory (`vm.memory`, default 1G, at least 128M).
    #[serde(serialize_with = "ser_size")]
    pub memory: Size,
    /// Guest vCPUs (`vm.cpus`, default 1).
    pub cpus: u32,
    /// Root-port reservation for the device's port (`vm.pref64_reserve`).
    pub pref64_reserve: Reserve,
    /// Extra kernel command line for the guest.
    pub append: Option<String>,
}

/// A validated scenario.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Scenario {
    /// The scenario's name (unique in the plan; names its directory in the run's output).
    pub name: String,
    /// Passthrough into one guest, or nested passthrough.
    pub kind: Kind,
    /// The devices it passes through (`devices`).
    pub devices: Vec<DeviceSpec>,
    /// Cold or hot plug (`plug`, default hot).
    pub plug: PlugMode,
    /// The guest firmware (`firmware`, default SeaBIOS).
    pub firmware: Firmware,
    /// The guest kernel (`kernel`: a name from the plan's `[kernels]` table or a path,
    /// `${VAR}` and `~` expanded); None: the stack's, else the lab's current kernel.
    pub kernel: Option<PathBuf>,
    /// The lab stack (`stack`: `system` or `modern`, see [`crate::shared::stack`]): the
    /// QEMU that runs the guest (and its firmware directory) and the default kernel. None:
    /// QEMU from `PATH`.
    pub stack: Option<String>,
    /// The guest initrd (`initrd`, expanded like `kernel`).
    pub initrd: Option<PathBuf>,
    /// What the scenario must show (`expect`, default pass).
    pub expect: Expect,
    /// Per-step time limits (`timeouts`, seconds in the file).
    pub timeouts: Timeouts,
    /// VM sizing knobs (`vm`).
    pub vm: VmKnobs,
    /// Extra exclusivity tokens: scenarios sharing one never run at the same time.
    pub locks: Vec<String>,
    /// The scenario's `description`, shown in reports.
    pub description: Option<String>,
}

/// Settings for regression detection against the history directory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryCfg {
    /// How many past runs the step-time median is taken over.
    pub window: usize,
    /// A step is slower when it takes more than median * (1 + margin_pct/100).
    pub margin_pct: u32,
    /// Fewer past samples than this: no timing verdict.
    pub min_samples: usize,
    /// Differences below this many milliseconds are noise, whatever the ratio.
    pub min_delta_ms: u64,
    /// How many past runs the HTML trend charts show.
    pub chart_runs: usize,
}

impl Default for HistoryCfg {
    fn default() -> Self {
        Self {
            window: 5,
            margin_pct: 50,
            min_samples: 3,
            min_delta_ms: 500,
            chart_runs: 20,
        }
    }
}

/// Fleet defaults for `--emit k8s`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetCfg {
    /// The nodes to emit one Job for (overridden by the command line).
    pub nodes: Vec<String>,
    /// The container image the Jobs run (overridden by the command line; default [`super::k8s::DEFAULT_IMAGE`]).
    pub image: Option<String>,
    /// The Kubernetes namespace of the Jobs (overridden by the command line).
    pub namespace: Option<String>,
}

/// A validated plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The plan's `name`, else its file name (lower-case letters, digits and `-`; names files and Jobs).
    pub name: String,
    /// The file it came from (relative paths in it are relative to its directory).
    pub path: PathBuf,
    /// The scenarios, in file order.
    pub scenarios: Vec<Scenario>,
    /// Regression detection settings (`[history]`).
    pub history: HistoryCfg,
    /// Kubernetes fleet defaults (`[fleet]`).
    pub fleet: FleetCfg,
}

// ---- raw TOML ---------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPlan {
    name: Option<String>,
    #[serde(default)]
    defaults: RawCommon,
    #[serde(default)]
    history: HistoryCfg,
    #[serde(default)]
    fleet: FleetCfg,
    #[serde(default, rename = "scenario")]
    scenarios: Vec<RawScenario>,
    /// Named guest kernels (`name = "path"`), for `kernel = "name"` and matrices.
    #[serde(default)]
    kernels: BTreeMap<String, String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCommon {
    stack: Option<String>,
    firmware: Option<Firmware>,
    plug: Option<PlugMode>,
    kernel: Option<String>,
    initrd: Option<String>,
    memory: Option<String>,
    cpus: Option<u32>,
    #[serde(default)]
    timeouts: BTreeMap<String, u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    name: Option<String>,
    description: Option<String>,
    kind: Option<Kind>,
    stack: Option<String>,
    matrix: Option<RawMatrix>,
    #[serde(default)]
    devices: Vec<String>,
    firmware: Option<Firmware>,
    plug: Option<PlugMode>,
    kernel: Option<String>,
    initrd: Option<String>,
    expect: Option<RawExpect>,
    #[serde(default)]
    timeouts: BTreeMap<String, u64>,
    #[serde(default)]
    vm: RawVm,
    #[serde(default)]
    locks: Vec<String>,
}

/// `matrix = { stack = [...], kernel = [...] }`: the scenario once per combination, named
/// `<name>-<stack>-<kernel>`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatrix {
    #[serde(default)]
    stack: Vec<String>,
    #[serde(default)]
    kernel: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawExpect {
    Word(String),
    Table(RawExpectTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawExpectTable {
    outcome: String,
    step: Option<String>,
    #[serde(rename = "match")]
    pattern: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    memory: Option<String>,
    cpus: Option<u32>,
    pref64_reserve: Option<String>,
    append: Option<String>,
}

/// A plan path that cannot be expanded ([`expand_path`]).
#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    /// `${` without its `}`.
    #[error("unterminated ${{ in {raw:?}")]
    Unterminated {
        /// The path as written.
        raw: String,
    },
    /// `${VAR}` with VAR not in the environment.
    #[error("{raw:?} uses ${{{var}}}, which is not set in the environment")]
    Unset {
        /// The path as written.
        raw: String,
        /// The variable that is not set.
        var: String,
    },
    /// A leading `~/` without `HOME`.
    #[error("{raw:?} uses ~ but HOME is not set")]
    NoHome {
        /// The path as written.
        raw: String,
    },
}

/// Expand `${VAR}` and a leading `~/` in a path string; relative results are taken
/// relative to `base`. `env` is injected so tests do not depend on the environment.
pub fn expand_path(
    raw: &str,
    base: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<PathBuf, ExpandError> {
    let mut out = String::new();
    let mut rest = raw;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| ExpandError::Unterminated { raw: raw.into() })?;
        let var = &after[..end];
        let val = env(var).ok_or_else(|| ExpandError::Unset {
            raw: raw.into(),
            var: var.into(),
        })?;
        out.push_str(&val);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    if let Some(home_rel) = out.strip_prefix("~/") {
        let home = env("HOME").ok_or_else(|| ExpandError::NoHome { raw: raw.into() })?;
        out = format!("{home}/{home_rel}");
    }
    let p = PathBuf::from(out);
    Ok(if p.is_absolute() { p } else { base.join(p) })
}

fn timeouts(
    defaults: &BTreeMap<String, u64>,
    own: &BTreeMap<String, u64>,
    err: &dyn Fn(String, String) -> PlanError,
) -> Result<Timeouts, PlanError> {
    let mut out = BTreeMap::new();
    for (prefix, map) in [("defaults.timeouts", defaults), ("timeouts", own)] {
        for (k, v) in map {
            let step: Step = k.parse().map_err(|e: super::step::UnknownStep| {
                err(format!("{prefix}.{k}"), e.to_string())
            })?;
            if *v == 0 {
                return Err(err(
                    format!("{prefix}.{k}"),
                    "a timeout of 0 s would fail every run; give seconds > 0".into(),
                ));
            }
            out.insert(step, Duration::from_secs(*v));
        }
    }
    Ok(Timeouts(out))
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl Plan {
    /// Read and validate a plan file, expanding `${VAR}` from the process environment.
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Plan::parse(&text, path, &|k| std::env::var(k).ok())
    }

    /// Parse plan text as if read from `path`.
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, PlanError> {
        let raw: RawPlan = toml::from_str(text).map_err(|e| PlanError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        Plan::from_raw(raw, path, env)
    }

    fn from_raw(
        raw: RawPlan,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Plan, PlanError> {
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let plan_err = |key: &str, reason: String| PlanError::Invalid {
            path: path.to_path_buf(),
            scenario: None,
            key: key.to_string(),
            reason,
        };
        let name = raw.name.clone().unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().to_lowercase().replace(['_', '.'], "-"))
                .unwrap_or_else(|| "plan".into())
        });
        if !is_name(&name) {
            return Err(plan_err(
                "name",
                format!("{name:?} must be lower-case letters, digits and '-' (at most 63), as it names files and Kubernetes Jobs"),
            ));
        }
        if raw.scenarios.is_empty() {
            return Err(plan_err(
                "scenario",
                "the plan has no [[scenario]] tables".into(),
            ));
        }
        if raw.history.window == 0 {
            return Err(plan_err("history.window", "must be at least 1".into()));
        }
        for k in raw.kernels.keys() {
            if !is_name(k) {
                return Err(plan_err(
                    &format!("kernels.{k}"),
                    "kernel names are lower-case letters, digits and '-' (they name matrix scenarios)".into(),
                ));
            }
        }
        let d = &raw.defaults;
        let mut seen = BTreeSet::new();
        let mut scenarios = Vec::new();
        let expanded = expand_matrices(raw.scenarios, &raw.kernels, &plan_err)?;
        for (i, s) in expanded.into_iter().enumerate() {
            let label = s.name.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let err = |key: String, reason: String| PlanError::Invalid {
                path: path.to_path_buf(),
                scenario: Some(label.clone()),
                key,
                reason,
            };
            let name = s
                .name
                .clone()
                .ok_or_else(|| err("name".into(), "every scenario needs a name".into()))?;
            if !is_name(&name) {
                return Err(err(
                    "name".into(),
                    format!("{name:?} must be lower-case letters, digits and '-' (at most 63)"),
                ));
            }
            if !seen.insert(name.clone()) {
                return Err(err(
                    "name".into(),
                    "two scenarios have this name; names must be unique".into(),
                ));
            }
            let kind = s.kind.unwrap_or_default();
            if s.devices.is_empty() {
                return Err(err(
                    "devices".into(),
                    "list at least one device: a selector (0000:41:00.0, 10de:20b9, class:gpu) or an emulated stand-in (emulated:8G)".into(),
                ));
            }
            let devices = s
                .devices
                .iter()
                .enumerate()
                .map(|(j, d)| {
                    DeviceSpec::parse(d).map_err(|r| err(format!("devices[{j}]"), r.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            if kind.is_nested() && devices.iter().any(DeviceSpec::is_host) {
                return Err(err(
                    "devices".into(),
                    "a nested scenario passes an emulated device through an emulated IOMMU; host selectors do not apply".into(),
                ));
            }
            let path_of = |key: &str, v: &Option<String>, dv: &Option<String>| {
                v.as_ref()
                    .or(dv.as_ref())
                    .map(|p| expand_path(p, &base, env).map_err(|r| err(key.into(), r.to_string())))
                    .transpose()
            };
            let named = |v: &Option<String>| {
                v.as_ref()
                    .map(|k| raw.kernels.get(k).cloned().unwrap_or_else(|| k.clone()))
            };
            let kernel = path_of("kernel", &named(&s.kernel), &named(&d.kernel))?;
            let stack = s.stack.clone().or(d.stack.clone());
            if let Some(st) = &stack {
                if !crate::shared::stack::NAMES.contains(&st.as_str()) {
                    return Err(err(
                        "stack".into(),
                        format!(
                            "unknown stack {st:?}; known: {}",
                            crate::shared::stack::NAMES.join(", ")
                        ),
                    ));
                }
            }
            let stack = match (kind.required_stack(), stack) {
                (Some(need), Some(st)) if st != need => {
                    return Err(err(
                        "stack".into(),
                        format!("a {kind} scenario needs the {need} stack (QEMU 10: igb with SR-IOV, -object iommufd), not {st}"),
                    ))
                }
                (Some(need), None) => Some(need.to_string()),
                (_, st) => st,
            };
            let initrd = path_of("initrd", &s.initrd, &d.initrd)?;
            let expect = match s.expect {
                None => Expect::Pass,
                Some(RawExpect::Word(w)) => parse_outcome(&w, None, None)
                    .map_err(|r| err("expect".into(), r.to_string()))?,
                Some(RawExpect::Table(t)) => {
                    parse_outcome(&t.outcome, t.step.as_deref(), t.pattern)
                        .map_err(|r| err("expect".into(), r.to_string()))?
                }
            };
            let timeouts = timeouts(&d.timeouts, &s.timeouts, &err)?;
            let size = |key: &str, v: Option<&String>, default: &str| -> Result<Size, PlanError> {
                v.map(String::as_str)
                    .unwrap_or(default)
                    .parse::<Size>()
                    .map_err(|e| err(key.into(), e.to_string()))
            };
            let memory = size(
                "vm.memory",
                s.vm.memory.as_ref().or(d.memory.as_ref()),
                "1G",
            )?;
            if memory.0 < (128 << 20) {
                return Err(err(
                    "vm.memory".into(),
                    format!("{memory} is too small for a guest; give at least 128M"),
                ));
            }
            let pref64_reserve = match s.vm.pref64_reserve.as_deref() {
                None | Some("auto") => Reserve::Auto,
                Some("none") => Reserve::None,
                Some(v) => Reserve::Size(v.parse::<Size>().map_err(|e| {
                    err(
                        "vm.pref64_reserve".into(),
                        format!("{e}, or \"auto\" / \"none\""),
                    )
                })?),
            };
            let cpus = s.vm.cpus.or(d.cpus).unwrap_or(1);
            if cpus == 0 {
                return Err(err("vm.cpus".into(), "must be at least 1".into()));
            }
            scenarios.push(Scenario {
                name,
                kind,
                devices,
                plug: s.plug.or(d.plug).unwrap_or_default(),
                firmware: s.firmware.or(d.firmware).unwrap_or_default(),
                kernel,
                stack,
                initrd,
                expect,
                timeouts,
                vm: VmKnobs {
                    memory,
                    cpus,
                    pref64_reserve,
                    append: s.vm.append,
                },
                locks: s.locks,
                description: s.description,
            });
        }
        Ok(Plan {
            name,
            path: path.to_path_buf(),
            scenarios,
            history: raw.history,
            fleet: raw.fleet,
        })
    }

    /// The scenario named `name`, if the plan has it.
    pub fn scenario(&self, name: &str) -> Option<&Scenario> {
        self.scenarios.iter().find(|s| s.name == name)
    }
}

/// Scenarios with a `matrix`, once per (stack, kernel) combination, named
/// `<name>-<stack>-<kernel>`; the others as they are. Matrix kernels must be names from
/// `[kernels]`.
fn expand_matrices(
    raw: Vec<RawScenario>,
    kernels: &BTreeMap<String, String>,
    plan_err: &dyn Fn(&str, String) -> PlanError,
) -> Result<Vec<RawScenario>, PlanError> {
    let mut out = Vec::new();
    for s in raw {
        let Some(m) = s.matrix.clone() else {
            out.push(s);
            continue;
        };
        let label = s.name.clone().unwrap_or_default();
        let key = |k: &str| format!("scenario {label:?} matrix.{k}");
        if m.stack.is_empty() && m.kernel.is_empty() {
            return Err(plan_err(
                &key("stack"),
                "a matrix needs a `stack` or a `kernel` list".into(),
            ));
        }
        for k in &m.kernel {
            if !kernels.contains_key(k) {
                return Err(plan_err(
                    &key("kernel"),
                    format!(
                        "{k:?} is not in [kernels] (known: {})",
                        kernels.keys().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        let stacks: Vec<Option<String>> = if m.stack.is_empty() {
            vec![None]
        } else {
            m.stack.iter().cloned().map(Some).collect()
        };
        let ks: Vec<Option<String>> = if m.kernel.is_empty() {
            vec![None]
        } else {
            m.kernel.iter().cloned().map(Some).collect()
        };
        for st in &stacks {
            for k in &ks {
                let mut one = s.clone();
                one.matrix = None;
                let mut name = label.clone();
                if let Some(st) = st {
                    name = format!("{name}-{st}");
                    one.stack = Some(st.clone());
                }
                if let Some(k) = k {
                    name = format!("{name}-{k}");
                    one.kernel = Some(k.clone());
                }
                one.name = Some(name);
                out.push(one);
            }
        }
    }
    Ok(out)
}

/// A scenario's `expect` that is not an outcome ([`parse_outcome`]).
#[derive(Debug, thiserror::Error)]
enum OutcomeError {
    #[error("`step` and `match` only apply to outcome = \"fail\"")]
    DetailOnPass,
    #[error(transparent)]
    Step(#[from] super::step::UnknownStep),
    #[error("outcome {word:?} is neither \"pass\" nor \"fail\" (a negative control)")]
    Unknown { word: String },
}

fn parse_outcome(
    word: &str,
    step: Option<&str>,
    pattern: Option<String>,
) -> Result<Expect, OutcomeError> {
    match word {
        "pass" => {
            if step.is_some() || pattern.is_some() {
                return Err(OutcomeError::DetailOnPass);
            }
            Ok(Expect::Pass)
        }
        "fail" => Ok(Expect::Fail {
            step: step.map(str::parse).transpose()?,
            pattern,
        }),
        other => Err(OutcomeError::Unknown { word: other.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(k: &str) -> Option<String> {
        match k {
            "VFIOCTL_LAB" => Some("/lab".into()),
            "HOME" => Some("/home/u".into()),
            _ => None,
        }
    }

    fn parse(text: &str) -> Result<Plan, PlanError> {
        Plan::parse(text, Path::new("/plans/lab.toml"), &env)
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    const GOOD: &str = r#"
name = "lab"
[defaults]
kernel = "${VFIOCTL_LAB}/kernel/current/vmlinuz"
timeouts = { boot = 200 }

[[scenario]]
name = "hot"
devices = ["emulated:8G"]
vm = { pref64_reserve = "16G" }

[[scenario]]
name = "neg"
devices = ["emulated:8G"]
plug = "cold"
firmware = "ovmf"
initrd = "rootfs/initrd.img"
vm = { pref64_reserve = "none", memory = "2G", cpus = 2 }
expect = { outcome = "fail", step = "validate", match = "no space" }
timeouts = { validate = 10 }
locks = ["big"]

[[scenario]]
name = "gpu"
devices = ["0000:41:00.0", "10de:*", "class:gpu"]
expect = "pass"
"#;

    #[test]
    fn good_plan_parses_with_defaults_applied() {
        let p = parse(GOOD).unwrap();
        assert_eq!(p.name, "lab");
        assert_eq!(p.scenarios.len(), 3);
        let hot = &p.scenarios[0];
        assert_eq!(hot.plug, PlugMode::Hot);
        assert_eq!(hot.firmware, Firmware::Seabios);
        assert_eq!(
            hot.kernel,
            Some(PathBuf::from("/lab/kernel/current/vmlinuz"))
        );
        assert_eq!(
            hot.devices,
            vec![DeviceSpec::Emulated { bar: Size(8 << 30) }]
        );
        assert_eq!(hot.vm.pref64_reserve, Reserve::Size(Size(16 << 30)));
        assert_eq!(hot.timeouts.get(Step::VmUp), Duration::from_secs(200));
        assert_eq!(hot.timeouts.get(Step::Plug), Step::Plug.default_timeout());
        let neg = &p.scenarios[1];
        assert_eq!(neg.plug, PlugMode::Cold);
        assert_eq!(neg.firmware, Firmware::Ovmf);
        assert_eq!(neg.initrd, Some(PathBuf::from("/plans/rootfs/initrd.img")));
        assert_eq!(neg.vm.pref64_reserve, Reserve::None);
        assert_eq!(neg.vm.memory, Size(2 << 30));
        assert_eq!(neg.vm.cpus, 2);
        assert_eq!(
            neg.expect,
            Expect::Fail {
                step: Some(Step::Validate),
                pattern: Some("no space".into())
            }
        );
        assert_eq!(neg.timeouts.get(Step::Validate), Duration::from_secs(10));
        assert_eq!(neg.locks, vec!["big".to_string()]);
        assert_eq!(p.scenarios[2].devices.len(), 3);
        assert!(p.scenarios[2].devices.iter().all(DeviceSpec::is_host));
        assert_eq!(p.history, HistoryCfg::default());
    }

    #[test]
    fn errors_name_the_scenario_and_key() {
        let e = err("[[scenario]]\nname = \"a\"\ndevices = [\"emulated:3G\"]\n");
        assert!(e.contains("scenario \"a\", key `devices[0]`"), "{e}");
        assert!(e.contains("power of two"), "{e}");

        let e = err("[[scenario]]\nname = \"a\"\ndevices = [\"zz:yy\"]\n");
        assert!(
            e.contains("key `devices[0]`") && e.contains("emulated:8G"),
            "{e}"
        );

        let e = err("[[scenario]]\nname = \"a\"\ndevices = []\n");
        assert!(e.contains("scenario \"a\", key `devices`"), "{e}");

        let e = err("[[scenario]]\ndevices = [\"emulated:8G\"]\n");
        assert!(e.contains("scenario \"#1\", key `name`"), "{e}");

        let e = err("[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\n[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\n");
        assert!(e.contains("unique"), "{e}");

        let e = err(
            "[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\ntimeouts = { bogus = 3 }\n",
        );
        assert!(
            e.contains("key `timeouts.bogus`") && e.contains("vm-up"),
            "{e}"
        );

        let e = err(
            "[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\ntimeouts = { plug = 0 }\n",
        );
        assert!(e.contains("key `timeouts.plug`"), "{e}");

        let e =
            err("[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\nexpect = \"maybe\"\n");
        assert!(e.contains("key `expect`") && e.contains("maybe"), "{e}");

        let e = err("[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\nexpect = { outcome = \"fail\", step = \"boot2\" }\n");
        assert!(e.contains("key `expect`") && e.contains("boot2"), "{e}");

        let e = err("[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\nkernel = \"${NOPE}/vmlinuz\"\n");
        assert!(e.contains("key `kernel`") && e.contains("NOPE"), "{e}");

        let e = err("[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\nvm = { pref64_reserve = \"lots\" }\n");
        assert!(e.contains("key `vm.pref64_reserve`"), "{e}");

        let e = err(
            "[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\nvm = { memory = \"64M\" }\n",
        );
        assert!(e.contains("key `vm.memory`"), "{e}");

        let e = err("[[scenario]]\nname = \"Big One\"\ndevices = [\"emulated:8G\"]\n");
        assert!(e.contains("key `name`"), "{e}");

        let e =
            err("[[scenario]]\nname = \"n\"\nkind = \"nested\"\ndevices = [\"0000:01:00.0\"]\n");
        assert!(e.contains("scenario \"n\", key `devices`"), "{e}");

        let e = err("name = \"x\"\n");
        assert!(e.contains("no [[scenario]]"), "{e}");
    }

    #[test]
    fn unknown_keys_are_syntax_errors_with_location() {
        let e = err("[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\nplugg = \"hot\"\n");
        assert!(e.contains("plugg") && e.contains("/plans/lab.toml"), "{e}");
        let e = err("[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\nplug = \"warm\"\n");
        assert!(e.contains("warm"), "{e}");
    }

    #[test]
    fn plan_name_defaults_to_file_stem() {
        let p = Plan::parse(
            "[[scenario]]\nname = \"a\"\ndevices = [\"emulated:8G\"]\n",
            Path::new("/x/My_Plan.toml"),
            &env,
        )
        .unwrap();
        assert_eq!(p.name, "my-plan");
    }

    #[test]
    fn expand_path_cases() {
        let b = Path::new("/base");
        assert_eq!(
            expand_path("a/b", b, &env).unwrap(),
            PathBuf::from("/base/a/b")
        );
        assert_eq!(expand_path("/a", b, &env).unwrap(), PathBuf::from("/a"));
        assert_eq!(
            expand_path("~/k", b, &env).unwrap(),
            PathBuf::from("/home/u/k")
        );
        assert_eq!(
            expand_path("${VFIOCTL_LAB}/k", b, &env).unwrap(),
            PathBuf::from("/lab/k")
        );
        assert!(expand_path("${VFIOCTL_LAB/k", b, &env).is_err());
    }

    #[test]
    fn device_specs_round_trip_through_display() {
        for s in ["emulated:8G", "0000:41:00.0", "10de:20b9", "10de:*"] {
            assert_eq!(DeviceSpec::parse(s).unwrap().to_string(), s);
        }
    }

    const MATRIX: &str = r#"
name = "m"
[kernels]
debian61 = "${VFIOCTL_LAB}/kernel/current/vmlinuz"
vfioctl612 = "${VFIOCTL_LAB}/kernel/vfioctl-6.12-vfio-guest+vfio-host/vmlinuz"

[[scenario]]
name = "hot"
devices = ["emulated:8G"]
matrix = { stack = ["system", "modern"], kernel = ["debian61", "vfioctl612"] }

[[scenario]]
name = "mdev"
kind = "mdev"
kernel = "vfioctl612"
devices = ["emulated:16M"]
"#;

    #[test]
    fn a_matrix_expands_into_one_scenario_per_stack_and_kernel() {
        let p = parse(MATRIX).unwrap();
        let names: Vec<&str> = p.scenarios.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "hot-system-debian61",
                "hot-system-vfioctl612",
                "hot-modern-debian61",
                "hot-modern-vfioctl612",
                "mdev"
            ]
        );
        let s = p.scenario("hot-modern-vfioctl612").unwrap();
        assert_eq!(s.stack.as_deref(), Some("modern"));
        assert_eq!(
            s.kernel.as_deref(),
            Some(Path::new(
                "/lab/kernel/vfioctl-6.12-vfio-guest+vfio-host/vmlinuz"
            ))
        );
        // a shared-GPU kind gets the modern stack it needs; a named kernel is resolved
        let m = p.scenario("mdev").unwrap();
        assert_eq!((m.kind, m.stack.as_deref()), (Kind::Mdev, Some("modern")));
        assert!(m.kernel.as_ref().unwrap().ends_with("vmlinuz"));
    }

    #[test]
    fn matrix_and_stack_mistakes_name_the_key_and_the_choices() {
        let e = err(&MATRIX.replace("\"vfioctl612\"]", "\"vfioctl999\"]"));
        assert!(
            e.contains("matrix.kernel")
                && e.contains("\"vfioctl999\" is not in [kernels] (known: debian61, vfioctl612)"),
            "{e}"
        );
        let e = err(&MATRIX.replace("\"system\", \"modern\"", "\"ancient\""));
        assert!(
            e.contains("unknown stack \"ancient\"; known: system, modern"),
            "{e}"
        );
        let e = err(&MATRIX.replace("kind = \"mdev\"", "kind = \"mdev\"\nstack = \"system\""));
        assert!(e.contains("a mdev scenario needs the modern stack"), "{e}");
        let e = err(&MATRIX.replace("matrix = { stack = [\"system\", \"modern\"], kernel = [\"debian61\", \"vfioctl612\"] }", "matrix = {}"));
        assert!(
            e.contains("a matrix needs a `stack` or a `kernel` list"),
            "{e}"
        );
        let e = err(&MATRIX.replace("debian61 =", "Debian61 ="));
        assert!(e.contains("kernels.Debian61"), "{e}");
    }

    #[test]
    fn the_nested_kinds_are_the_ones_with_an_l1_host() {
        for k in Kind::ALL {
            assert_eq!(k.is_nested(), k != Kind::Passthrough, "{k}");
            assert_eq!(
                k.required_stack().is_some(),
                matches!(k, Kind::Sriov | Kind::Mdev | Kind::Iommufd),
                "{k}"
            );
        }
    }
}
