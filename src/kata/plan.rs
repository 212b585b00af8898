//! Which keys to set, to what, and why: a pure function of the target Kata, the plug
//! mode, the checked host selection and the artefacts given.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::KataError;
use super::host::{Selection, LARGE_BAR};
use super::version::{
    port, KataVersion, KeyScheme, PlugMode, Runtime, Target, BLOCK_DRIVERS_GO, BLOCK_DRIVERS_RS,
};
use crate::vm::ports::{self, DeviceBars, Firmware, PhysBits};

/// The `[hypervisor.qemu]` table.
pub const HQ: &str = "hypervisor.qemu";
/// The `[agent.kata]` table.
pub const AGENT: &str = "agent.kata";
/// The `[runtime]` table.
pub const RT: &str = "runtime";

/// A TOML value as Kata reads it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(untagged)]
pub enum Val {
    /// A TOML boolean.
    Bool(bool),
    /// A TOML integer.
    Int(i64),
    /// A TOML string.
    Str(String),
}

impl Val {
    /// A string value.
    pub fn str(s: impl Into<String>) -> Self {
        Val::Str(s.into())
    }
    /// The value as toml_edit writes it.
    pub fn to_toml(&self) -> toml_edit::Value {
        match self {
            Val::Bool(b) => (*b).into(),
            Val::Int(i) => (*i).into(),
            Val::Str(s) => s.as_str().into(),
        }
    }
    /// A boolean, integer or string TOML value; None for any other type.
    pub fn from_toml(v: &toml_edit::Value) -> Option<Val> {
        match v {
            toml_edit::Value::Boolean(b) => Some(Val::Bool(*b.value())),
            toml_edit::Value::Integer(i) => Some(Val::Int(*i.value())),
            toml_edit::Value::String(s) => Some(Val::Str(s.value().clone())),
            _ => None,
        }
    }
}

impl fmt::Display for Val {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Val::Bool(b) => write!(f, "{b}"),
            Val::Int(i) => write!(f, "{i}"),
            Val::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// How a key is brought to what the setup needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(tag = "rule", content = "value", rename_all = "kebab-case")]
pub enum Rule {
    /// Exactly this value.
    Set(Val),
    /// An integer at least this large; a larger value already there is kept.
    AtLeast(i64),
    /// An integer in `min..=max`; a value already in range is kept.
    Range {
        /// The smallest value accepted.
        min: i64,
        /// The largest value accepted.
        max: i64,
    },
    /// A space-separated string that must contain these words; others are kept.
    Words(Vec<String>),
    /// Only if the key is present with another value: set it to this (Kata's default).
    /// Absent keys stay absent.
    Reset(Val),
    /// Only if the key is present with a value outside `allowed`: set it to `fallback`.
    OneOf {
        /// The values kept.
        allowed: Vec<String>,
        /// The value set instead of any other.
        fallback: Val,
    },
}

/// One key vfioctl wants, with its one-line reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Want {
    /// The TOML table, e.g. `hypervisor.qemu`.
    pub table: &'static str,
    /// The key within the table.
    pub key: &'static str,
    /// How the key is brought to the value wanted.
    pub rule: Rule,
    /// Why vfioctl wants it (one line, shown by --explain and in --json).
    pub reason: String,
}

/// Artefacts to point Kata at (absolute paths).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Artefacts {
    /// Guest kernel (`--kernel`), for `kernel`.
    pub kernel: Option<PathBuf>,
    /// Guest initrd (`--initrd`), for `initrd`.
    pub initrd: Option<PathBuf>,
    /// Guest disk image (`--image`), for `image`.
    pub image: Option<PathBuf>,
}

/// `[runtime] vfio_mode`: who binds the device in the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum VfioMode {
    /// The guest's own driver (nvidia) binds it: the generated file's choice.
    #[default]
    GuestKernel,
    /// The guest binds it to vfio-pci and the container sees /dev/vfio/N.
    Vfio,
}

/// Which guest image the containers boot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Guest {
    /// Kata's own (NVIDIA) guest: NVRC init, guest-side CDI, no OCI hooks directory.
    #[default]
    Kata,
    /// vfioctl's guest image (`vfioctl rootfs build`): OCI hooks in /usr/share/oci/hooks.
    Vfioctl,
}

/// What the run asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Request {
    /// The Kata version and runtime.
    pub target: Target,
    /// Cold or hot plug.
    pub mode: PlugMode,
    /// Guest kernel, initrd and image to point Kata at.
    pub artefacts: Artefacts,
    /// From the base file's `[runtime] vfio_mode` (guest-kernel when absent or generating).
    pub vfio_mode: VfioMode,
    /// Which guest image the containers boot.
    pub guest: Guest,
    /// The file is for Kubernetes: keep `pod_resource_api_sock`.
    pub kubernetes: bool,
}

/// The guest kernel parameters that let the guest reassign bridge windows for BARs the
/// firmware did not size (Kata's NVIDIA KERNELPARAMS_NV carries them too).
pub const REALLOC_PARAMS: [&str; 2] = ["pci=realloc", "pci=nocrs"];
/// Kata NVIDIA template: DEFAULTMEMORY_NV.
pub const NV_MEMORY_MIB: i64 = 8192;
/// Kata NVIDIA template: guest_hook_path "recommended value when enabling".
pub const GUEST_HOOK_PATH: &str = "/usr/share/oci/hooks";

fn gib(b: u64) -> String {
    vfioctl_common::units::short(b)
}

fn want(table: &'static str, key: &'static str, rule: Rule, reason: impl Into<String>) -> Want {
    Want {
        table,
        key,
        rule,
        reason: reason.into(),
    }
}

/// The guest boots from `key` (`initrd` or `image`) at `path`; Kata takes one of the two,
/// so `other` is reset to empty.
fn boot_image(
    w: &mut Vec<Want>,
    key: &'static str,
    other: &'static str,
    path: &Path,
    reason: &'static str,
) {
    w.push(want(
        HQ,
        key,
        Rule::Set(Val::str(path.display().to_string())),
        reason,
    ));
    w.push(want(
        HQ,
        other,
        Rule::Reset(Val::str("")),
        "Kata refuses an image and an initrd together",
    ));
}

/// Check the request against the target (plug mode, port count).
pub fn check(req: &Request, sel: &Selection) -> Result<(), KataError> {
    let t = req.target;
    if !t.supports(req.mode) {
        return Err(KataError::ColdPlugUnsupported {
            key: "cold_plug_vfio",
            version: t.version,
            runtime: t.runtime,
            since: t.cold_plug_since(),
        });
    }
    if req.vfio_mode == VfioMode::Vfio {
        if let Some(g) = sel
            .groups
            .iter()
            .find(|g| g.functions.iter().filter(|f| f.takes_port()).count() > 1)
        {
            return Err(KataError::VfioModeSplitsGroup {
                group: g.number,
                functions: g
                    .functions
                    .iter()
                    .filter(|f| f.takes_port())
                    .map(|f| f.bdf.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    let needed = sel.ports_needed();
    if needed > t.max_ports() {
        let key = match t.scheme() {
            KeyScheme::PortsImplicit => match req.mode {
                PlugMode::Cold => "cold_plug_vfio",
                PlugMode::Hot => "hot_plug_vfio",
            },
            _ => "pcie_root_port",
        };
        return Err(KataError::TooManyPorts {
            key,
            needed,
            max: t.max_ports(),
            version: t.version,
            functions: sel.describe_ports(),
        });
    }
    Ok(())
}

/// How the plan lays out the PCIe ports in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// One root port per PCIe function (`pcie_root_port`, bus rpN).
    RootPorts,
    /// One virtual switch with a downstream port per function (`pcie_switch_port`, bus
    /// swdpN): the GPUs share a switch on the host and talk peer-to-peer through it.
    Switch,
}

/// The port layout for `req` on `sel`, with the reason (printed on every run).
pub fn topology(req: &Request, sel: &Selection) -> (Topology, Option<String>) {
    let shared = sel.shared_switches();
    if shared.is_empty() {
        return (Topology::RootPorts, None);
    }
    let which = shared
        .iter()
        .map(|s| {
            format!(
                "{} share the host PCIe switch {}",
                s.functions
                    .iter()
                    .map(|b| b.to_string())
                    .collect::<Vec<_>>()
                    .join(" and "),
                s.upstream
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let t = req.target;
    if t.supports_switch(req.mode) {
        (
            Topology::Switch,
            Some(format!(
                "{which} (peer-to-peer): {t} puts them behind one virtual PCIe switch (pcie_switch_port), so the guest sees them under a common switch as on the host"
            )),
        )
    } else {
        let why = match (t.runtime, req.mode) {
            (Runtime::Rs, PlugMode::Cold) if t.version >= KataVersion::RS_SWITCH_PORT => {
                "runtime-rs cold plug supports root ports only"
            }
            (Runtime::Rs, _) => "runtime-rs reads pcie_switch_port from 3.17",
            (Runtime::Go, _) => "the Go runtime reads pcie_switch_port from 3.6",
        };
        (
            Topology::RootPorts,
            Some(format!(
                "{which} (peer-to-peer), but {t} gets root ports: {why}"
            )),
        )
    }
}

/// The keys to set for `req` on the host `sel`. Call [`check`] first.
pub fn plan(req: &Request, sel: &Selection) -> Vec<Want> {
    let t = req.target;
    let mut w = Vec::new();
    let n = sel.ports_needed();
    let groups = sel
        .group_numbers()
        .iter()
        .map(|g| g.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let fn_word = if n == 1 { "function" } else { "functions" };
    let (topo, topo_why) = topology(req, sel);
    let (count_key, zero_key, port_value, port_word) = match topo {
        Topology::RootPorts => (
            "pcie_root_port",
            "pcie_switch_port",
            port::ROOT,
            "root port",
        ),
        Topology::Switch => (
            "pcie_switch_port",
            "pcie_root_port",
            port::SWITCH,
            "switch downstream port",
        ),
    };
    let ports_why = match &topo_why {
        Some(why) if topo == Topology::Switch => format!(
            "{n} PCIe {fn_word} in IOMMU group(s) {groups} ({}), one {port_word} each; {why}",
            sel.describe_ports()
        ),
        _ => format!(
            "{n} PCIe {fn_word} in IOMMU group(s) {groups} ({}), one {port_word} each",
            sel.describe_ports()
        ),
    };

    let ports_rule = Rule::Range {
        min: n.into(),
        max: t.max_ports().into(),
    };
    w.push(want(
        HQ,
        "machine_type",
        Rule::Set(Val::str("q35")),
        "PCIe root ports (pcie-root-port) exist only on the q35 machine",
    ));

    let plug_value = Val::str(port_value);
    let none = Val::str(port::NONE);
    match (t.scheme(), req.mode) {
        (KeyScheme::RootBus, _) => {
            w.push(want(
                HQ,
                "hotplug_vfio_on_root_bus",
                Rule::Set(Val::Bool(true)),
                format!("Kata {} hot-plugs PCIe devices on root ports only with this on (bridges cannot hold large BARs)", t.version),
            ));
            w.push(want(
                HQ,
                "pcie_root_port",
                ports_rule.clone(),
                ports_why.clone(),
            ));
        }
        (KeyScheme::PortsImplicit | KeyScheme::Ports, mode) => {
            // The two plug keys mirror each other: set the one for the mode, reset the other.
            let (set, reset, mut why) = match mode {
                PlugMode::Cold => (
                    "cold_plug_vfio",
                    "hot_plug_vfio",
                    String::from(
                        "cold plug: QEMU gets the devices on its command line (Kata's supported NVIDIA mode)",
                    ),
                ),
                PlugMode::Hot => (
                    "hot_plug_vfio",
                    "cold_plug_vfio",
                    format!("hot plug: devices are added over QMP after boot into {port_word}s"),
                ),
            };
            if t.scheme() == KeyScheme::PortsImplicit {
                why.push_str(&match mode {
                    PlugMode::Cold => format!(
                        "; Kata {} adds one root port per PCIe function ({n} here)",
                        t.version
                    ),
                    PlugMode::Hot => format!(
                        "; Kata {} reserves ports only for devices known at sandbox creation (ctr --device is; Kubernetes hotplug is not, #9401)",
                        t.version
                    ),
                });
            }
            w.push(want(HQ, set, Rule::Set(plug_value), why));
            w.push(want(
                HQ,
                reset,
                Rule::Reset(none),
                "only one of hot_plug_vfio and cold_plug_vfio may be set",
            ));
            if t.scheme() == KeyScheme::Ports {
                w.push(want(HQ, count_key, ports_rule.clone(), ports_why.clone()));
            }
        }
        (KeyScheme::RuntimeRs, PlugMode::Cold) => {
            w.push(want(
                HQ,
                "cold_plug_vfio",
                Rule::Set(Val::str(port::ROOT)),
                "cold plug: runtime-rs puts each device on a root port at boot",
            ));
            w.push(want(HQ, count_key, ports_rule.clone(), ports_why.clone()));
        }
        (KeyScheme::RuntimeRs, PlugMode::Hot) => {
            w.push(want(
                HQ,
                "cold_plug_vfio",
                Rule::Reset(none),
                format!("hot plug: runtime-rs has no hot_plug_vfio; it hot-plugs into the {count_key} ports"),
            ));
            w.push(want(
                HQ,
                count_key,
                ports_rule.clone(),
                format!(
                    "{ports_why}; runtime-rs hot-plugs into these ports (no hot_plug_vfio key)"
                ),
            ));
        }
    }
    if t.scheme() != KeyScheme::RootBus {
        w.push(want(
            HQ,
            zero_key,
            Rule::Reset(Val::Int(0)),
            match topo {
                Topology::RootPorts => "root ports are used; Kata rejects pcie_root_port and pcie_switch_port both above 0",
                Topology::Switch => "switch ports are used; Kata rejects pcie_root_port and pcie_switch_port both above 0",
            },
        ));
    }

    // The block driver name differs between the runtimes: a Go name in a runtime-rs file
    // (or the reverse) makes the loader refuse the file.
    let (drivers, fallback): (&[&str], &str) = match t.runtime {
        Runtime::Go => (&BLOCK_DRIVERS_GO, "virtio-blk"),
        Runtime::Rs => (&BLOCK_DRIVERS_RS, "virtio-blk-pci"),
    };
    w.push(want(
        HQ,
        "block_device_driver",
        Rule::OneOf {
            allowed: drivers.iter().map(|d| d.to_string()).collect(),
            fallback: Val::str(fallback),
        },
        format!(
            "{} reads only {}: the other runtime's name makes it refuse the file",
            match t.runtime {
                Runtime::Go => "the Go runtime",
                Runtime::Rs => "runtime-rs (kata-types)",
            },
            drivers.join(", ")
        ),
    ));

    if t.pod_resources_abort() && !req.kubernetes {
        w.push(want(
            RT,
            "pod_resource_api_sock",
            Rule::Reset(Val::str("")),
            format!(
                "Kata {} aborts sandbox creation when the kubelet socket is missing (the fallback came in 4.0.0): outside Kubernetes it stays empty (pass --kubernetes to keep it)",
                t.version
            ),
        ));
    }

    // Artefacts.
    if let Some(k) = &req.artefacts.kernel {
        w.push(want(
            HQ,
            "kernel",
            Rule::Set(Val::str(k.display().to_string())),
            "guest kernel given with --kernel",
        ));
    }
    if let Some(i) = &req.artefacts.initrd {
        boot_image(
            &mut w,
            "initrd",
            "image",
            i,
            "guest initrd given with --initrd",
        );
    }
    if let Some(i) = &req.artefacts.image {
        boot_image(
            &mut w,
            "image",
            "initrd",
            i,
            "guest disk image given with --image",
        );
        w.push(want(
            HQ,
            "disable_image_nvdimm",
            Rule::Set(Val::Bool(true)),
            "the image is a plain ext4 disk without Kata's DAX header: attach it as virtio-blk, not NVDIMM",
        ));
        if t.reads(HQ, "rootfs_type") {
            w.push(want(
                HQ,
                "rootfs_type",
                Rule::Reset(Val::str("ext4")),
                "vfioctl images are ext4 (the NVIDIA template says erofs)",
            ));
        }
    }

    if req.vfio_mode == VfioMode::Vfio {
        w.push(want(
            HQ,
            "enable_iommu",
            Rule::Set(Val::Bool(true)),
            "vfio_mode = \"vfio\" (base file): the guest binds the devices to vfio-pci, which needs IOMMU groups in the guest",
        ));
    }

    // GPU flavour: only vfioctl's own guest image runs OCI hooks; Kata's NVIDIA guest
    // (NVRC init, guest-side CDI) has no hooks directory.
    if sel.has_nvidia_gpu() && req.guest == Guest::Vfioctl {
        w.push(want(
            HQ,
            "guest_hook_path",
            Rule::Set(Val::str(GUEST_HOOK_PATH)),
            "NVIDIA GPU with vfioctl's guest image (--guest vfioctl): its OCI hooks (nvidia-container-toolkit) inject the driver into the container",
        ));
    }
    let large = sel.large_gpus();
    if !large.is_empty() {
        let which = large
            .iter()
            .map(|f| format!("{} BAR {}", f.bdf, gib(f.largest_bar)))
            .collect::<Vec<_>>()
            .join(", ");
        w.push(want(
            HQ,
            "default_memory",
            Rule::AtLeast(NV_MEMORY_MIB),
            format!("large GPU ({which}): the guest driver needs memory, as Kata's NVIDIA template sets (8192 MiB)"),
        ));
        let (key, secs) = t.agent_timeout();
        w.push(want(
            AGENT,
            key,
            Rule::AtLeast(secs),
            format!("large GPU ({which}): mapping large BARs delays the agent's first answer (#8846, #7567); Kata's NVIDIA template value"),
        ));
    }
    let large_bars = sel.large_bar_functions();
    if req.mode == PlugMode::Hot || !large_bars.is_empty() {
        let why = if !large_bars.is_empty() {
            format!(
                "BARs of {} or more ({}) need the guest to reassign bridge windows",
                gib(LARGE_BAR),
                large_bars
                    .iter()
                    .map(|f| f.bdf.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "hot plug: Kata's root ports reserve no memory window, so the guest must reassign them (#835)".into()
        };
        let why = match (req.mode, reserves(sel)) {
            (PlugMode::Hot, Some(r)) => format!("{why}; Kata's ports reserve nothing where {r}"),
            _ => why,
        };
        w.push(want(
            HQ,
            "kernel_params",
            Rule::Words(REALLOC_PARAMS.iter().map(|s| s.to_string()).collect()),
            why,
        ));
    }
    // A key the target does not read would be ignored (Go) or refused (runtime-rs
    // [agent.kata]): never write one.
    w.retain(|x| t.reads(x.table, x.key));
    w
}

/// What `vfioctl vm` would reserve on each port (its BAR-sized root ports), to show
/// what Kata's reserve-less ports are missing: `0000:1b:00.0 needs pref64-reserve=128G`.
fn reserves(sel: &Selection) -> Option<String> {
    let devs: Vec<DeviceBars> = sel
        .port_functions()
        .iter()
        .map(|f| f.bars.clone())
        .collect();
    let p = vm_ports(&devs)?;
    let v: Vec<String> = p
        .ports
        .iter()
        .filter_map(|port| {
            Some(format!(
                "{} needs pref64-reserve={}",
                port.sized_for.as_ref()?,
                vfioctl_common::units::short(port.pref64_reserve?)
            ))
        })
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

const MIB: u64 = 1 << 20;
/// A host CPU with 46 physical address bits (what OVMF clamps to): the window needed
/// is then bounded by the BARs, not by the CPU.
const WIDE_CPU: PhysBits = PhysBits {
    bits: 46,
    max: None,
};

/// The root ports `vfioctl vm` would give `devs` in a guest like Kata's NVIDIA template
/// (OVMF, its memory, a wide CPU).
fn vm_ports(devs: &[DeviceBars]) -> Option<ports::Plan> {
    ports::plan(
        devs,
        0,
        Firmware::Ovmf,
        NV_MEMORY_MIB as u64 * MIB,
        WIDE_CPU,
    )
    .ok()
}

/// The 64-bit MMIO window the guest needs for the large BARs, as `vfioctl vm` sizes it.
fn window_note(sel: &Selection) -> Option<String> {
    let large = sel.large_bar_functions();
    if large.is_empty() {
        return None;
    }
    let devs: Vec<DeviceBars> = large.iter().map(|f| f.bars.clone()).collect();
    let p = vm_ports(&devs)?;
    Some(format!(
        "the large BARs need a {} 64-bit MMIO window in the guest (vfioctl vm's root-port sizing): Kata's NVIDIA template boots OVMF (firmware = \"/opt/kata/share/ovmf/OVMF.fd\"), which sizes it; with SeaBIOS (firmware = \"\") QEMU's default 32G hole is too small and the guest depends on pci=realloc pci=nocrs",
        vfioctl_common::units::short(p.window64)
    ))
}

/// Things deliberately not set, for --explain.
pub fn notes(req: &Request, sel: &Selection) -> Vec<String> {
    let mut v = Vec::new();
    if req.vfio_mode == VfioMode::GuestKernel {
        v.push("enable_iommu left alone: with vfio_mode = \"guest-kernel\" the guest driver binds directly; only vfio_mode = \"vfio\" needs a guest IOMMU".to_string());
    }
    for f in sel.non_pcie() {
        v.push(format!(
            "{} is conventional PCI: Kata puts it behind a pci-bridge (default_bridges), it takes no root port",
            f.bdf
        ));
    }
    for g in &sel.groups {
        for f in g.functions.iter().filter(|f| f.bridge) {
            v.push(format!(
                "{} (bridge, {}) in group {} stays on the host: Kata skips bridges",
                f.bdf,
                f.driver.as_deref().unwrap_or("no driver"),
                g.number
            ));
        }
    }
    if let Some(n) = window_note(sel) {
        v.push(n);
    }
    if req.target.scheme() == KeyScheme::PortsImplicit {
        v.push(format!(
            "Kata {} has no pcie_root_port: the port count follows the devices at sandbox creation",
            req.target.version
        ));
    }
    if sel
        .groups
        .iter()
        .any(|g| g.functions.iter().filter(|f| f.takes_port()).count() > 1)
    {
        v.push("a group with several functions gets one root port per function (e.g. GPU + HDA); vfio_mode = \"vfio\" would need them in one guest group (#2900)".into());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kata::host::{Function, Group};
    use crate::kata::version::{KataVersion, Runtime};
    use vfioctl_common::Bdf;

    fn gpu(bus: u8, func: u8, class: u32, bar: u64) -> Function {
        Function {
            bdf: Bdf::new(0, bus, 0, func),
            id: "10de:2330".into(),
            vendor: 0x10de,
            class,
            driver: Some("vfio-pci".into()),
            selected: func == 0,
            pcie: true,
            bridge: false,
            pref64_bytes: bar,
            largest_bar: bar,
            bars: DeviceBars {
                label: format!("0000:{bus:02x}:00.{func}"),
                bdf: None,
                pref64: if bar > 0 { vec![bar] } else { vec![] },
                mem32: vec![16 << 20],
                io: vec![],
            },
            switch: None,
        }
    }

    /// `n` groups, each a GPU plus its HDA function (the RTX layout of #4211).
    fn sel(n: u8, bar: u64) -> Selection {
        Selection {
            groups: (0..n)
                .map(|i| Group {
                    number: 100 + u32::from(i),
                    functions: vec![gpu(i + 1, 0, 0x030000, bar), gpu(i + 1, 1, 0x040300, 0)],
                })
                .collect(),
            unbound: vec![],
        }
    }

    fn req(v: &str, rt: Runtime, mode: PlugMode) -> Request {
        Request {
            target: Target::new(v.parse::<KataVersion>().unwrap(), rt).unwrap(),
            mode,
            artefacts: Artefacts::default(),
            vfio_mode: VfioMode::GuestKernel,
            guest: Guest::Kata,
            kubernetes: false,
        }
    }

    #[test]
    fn sixteen_ports_is_the_limit_on_every_version() {
        for (v, rt, mode, key) in [
            ("3.1.0", Runtime::Go, PlugMode::Hot, "pcie_root_port"),
            ("3.4.0", Runtime::Go, PlugMode::Cold, "cold_plug_vfio"),
            ("3.4.0", Runtime::Go, PlugMode::Hot, "hot_plug_vfio"),
            ("3.6.0", Runtime::Go, PlugMode::Cold, "pcie_root_port"),
            ("4.1.0", Runtime::Rs, PlugMode::Cold, "pcie_root_port"),
        ] {
            let r = req(v, rt, mode);
            assert!(
                check(&r, &sel(8, 0)).is_ok(),
                "8 GPUs + 8 HDA = 16 ports fit"
            );
            match check(&r, &sel(9, 0)) {
                Err(KataError::TooManyPorts {
                    key: k,
                    needed: 18,
                    max: 16,
                    ..
                }) => assert_eq!(k, key, "{v}"),
                other => panic!("{v}: {other:?}"),
            }
        }
    }

    #[test]
    fn plug_keys_per_scheme_never_both() {
        let s = sel(1, 0);
        let get = |w: &[Want], k: &str| w.iter().find(|x| x.key == k).map(|x| x.rule.clone());
        let w = plan(&req("3.6.0", Runtime::Go, PlugMode::Cold), &s);
        assert_eq!(
            get(&w, "cold_plug_vfio"),
            Some(Rule::Set(Val::str("root-port")))
        );
        assert_eq!(
            get(&w, "hot_plug_vfio"),
            Some(Rule::Reset(Val::str("no-port")))
        );
        assert_eq!(
            get(&w, "pcie_root_port"),
            Some(Rule::Range { min: 2, max: 16 })
        );
        let w = plan(&req("3.6.0", Runtime::Go, PlugMode::Hot), &s);
        assert_eq!(
            get(&w, "hot_plug_vfio"),
            Some(Rule::Set(Val::str("root-port")))
        );
        assert_eq!(
            get(&w, "cold_plug_vfio"),
            Some(Rule::Reset(Val::str("no-port")))
        );
        let w = plan(&req("3.3.0", Runtime::Go, PlugMode::Cold), &s);
        assert_eq!(get(&w, "pcie_root_port"), None);
        assert_eq!(get(&w, "pcie_switch_port"), None);
        let w = plan(&req("3.1.0", Runtime::Go, PlugMode::Hot), &s);
        assert_eq!(
            get(&w, "hotplug_vfio_on_root_bus"),
            Some(Rule::Set(Val::Bool(true)))
        );
        assert_eq!(get(&w, "hot_plug_vfio"), None);
        assert_eq!(get(&w, "cold_plug_vfio"), None);
        let w = plan(&req("4.1.0", Runtime::Rs, PlugMode::Hot), &s);
        assert_eq!(get(&w, "hot_plug_vfio"), None);
        assert_eq!(
            get(&w, "cold_plug_vfio"),
            Some(Rule::Reset(Val::str("no-port")))
        );
        assert!(check(&req("3.1.0", Runtime::Go, PlugMode::Cold), &s).is_err());
        // vfio_mode = "vfio" with GPU + HDA: one root port each, two guest groups.
        let mut r = req("3.6.0", Runtime::Go, PlugMode::Cold);
        r.vfio_mode = VfioMode::Vfio;
        assert!(matches!(
            check(&r, &s),
            Err(KataError::VfioModeSplitsGroup { group: 100, .. })
        ));
        let single = Selection {
            groups: vec![Group {
                number: 7,
                functions: vec![gpu(1, 0, 0x030200, 0)],
            }],
            unbound: vec![],
        };
        assert!(check(&r, &single).is_ok());
        let w = plan(&r, &single);
        assert_eq!(get(&w, "enable_iommu"), Some(Rule::Set(Val::Bool(true))));
    }

    #[test]
    fn large_gpus_raise_memory_and_agent_timeout() {
        let small = plan(
            &req("4.1.0", Runtime::Go, PlugMode::Cold),
            &sel(1, 256 << 20),
        );
        assert!(!small
            .iter()
            .any(|w| w.key == "default_memory" || w.key == "kernel_params"));
        let big = plan(
            &req("4.1.0", Runtime::Go, PlugMode::Cold),
            &sel(1, 32 << 30),
        );
        let keys: Vec<&str> = big.iter().map(|w| w.key).collect();
        for k in ["default_memory", "dial_timeout", "kernel_params"] {
            assert!(keys.contains(&k), "{k}: {keys:?}");
        }
        let rs = plan(
            &req("4.1.0", Runtime::Rs, PlugMode::Cold),
            &sel(1, 32 << 30),
        );
        assert!(rs
            .iter()
            .any(|w| w.key == "reconnect_timeout_ms" && w.rule == Rule::AtLeast(1_200_000)));
        assert!(big.iter().all(|w| !w.reason.is_empty()));
    }
}
