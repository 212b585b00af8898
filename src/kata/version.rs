//! Kata versions, runtimes and the GPU/VFIO keys each one reads: pure data.
//!
//! The key history (from the Kata sources, see `shared/notes/kata.md` §1.5):
//!
//! | Kata | runtime | VFIO keys in `[hypervisor.qemu]` |
//! |---|---|---|
//! | 2.0 – 3.1 | Go | `hotplug_vfio_on_root_bus` (bool) + `pcie_root_port` (u32); hot plug only |
//! | 3.2 – 3.5 | Go | `hot_plug_vfio` / `cold_plug_vfio` (port enum); no `pcie_root_port`: one port per PCIe function known at sandbox creation |
//! | 3.6 + | Go | `hot_plug_vfio` / `cold_plug_vfio` + `pcie_root_port` / `pcie_switch_port` (u32) |
//! | 3.24 + | Go | `[runtime] pod_resource_api_sock` (cold plug asks the kubelet; 3.24 - 3.32 abort when its socket is missing, 4.0 falls back) |
//! | 3.6 + | runtime-rs | `pcie_root_port` only: devices are hot-plugged into the root ports; no `hot_plug_vfio` |
//! | 3.17 + | runtime-rs | `pcie_switch_port` (kata-types `DeviceInfo`) |
//! | 3.31 + | runtime-rs | `cold_plug_vfio` ("no-port" or "root-port") and `[runtime] pod_resource_api_sock`; older kata-types silently ignore both |

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

/// Which Kata shim reads the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Runtime {
    /// The Go runtime (`containerd-shim-kata-v2`, `src/runtime`).
    Go,
    /// runtime-rs (`src/runtime-rs`, kata-types `DeviceInfo`).
    Rs,
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Runtime::Go => "go",
            Runtime::Rs => "runtime-rs",
        })
    }
}

/// A Kata release, `major.minor[.patch]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KataVersion {
    /// Major version (2, 3, 4...).
    pub major: u32,
    /// Minor version.
    pub minor: u32,
    /// Patch release (0 when only `major.minor` was given).
    pub patch: u32,
}

impl KataVersion {
    /// The version `major.minor.patch`.
    pub const fn new(major: u32, minor: u32, patch: u32) -> Self {
        Self {
            major,
            minor,
            patch,
        }
    }
    /// The newest release this model was checked against (notes: commit 7c6ba40c54).
    pub const LATEST: KataVersion = KataVersion::new(4, 1, 0);
    /// `dd422ccb69`: hot_plug_vfio / cold_plug_vfio replace hotplug_vfio_on_root_bus.
    pub const PORT_KEYS: KataVersion = KataVersion::new(3, 2, 0);
    /// PR #8861: pcie_root_port comes back, with pcie_switch_port.
    pub const PORT_COUNT: KataVersion = KataVersion::new(3, 6, 0);
    /// Oldest Kata 2.x: older is Kata 1.x (`kata-runtime`, another repository).
    pub const OLDEST: KataVersion = KataVersion::new(2, 0, 0);
    /// PR #12087: Go cold plug asks the kubelet Pod Resources API (pod_resource_api_sock).
    pub const POD_RESOURCES: KataVersion = KataVersion::new(3, 24, 0);
    /// 4.0.0: Go falls back when the kubelet socket is missing instead of aborting.
    pub const POD_RESOURCES_FALLBACK: KataVersion = KataVersion::new(4, 0, 0);
    /// kata-types `DeviceInfo` gains `pcie_switch_port`.
    pub const RS_SWITCH_PORT: KataVersion = KataVersion::new(3, 17, 0);
    /// kata-types `DeviceInfo` gains `cold_plug_vfio` (and `[runtime] pod_resource_api_sock`).
    pub const RS_COLD_PLUG: KataVersion = KataVersion::new(3, 31, 0);
}

impl fmt::Display for KataVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl schemars::JsonSchema for KataVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "KataVersion".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A Kata release, `major.minor.patch`.",
            "type": "string",
            "pattern": "^[0-9]+\\.[0-9]+\\.[0-9]+$"
        })
    }
}

impl Serialize for KataVersion {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A Kata version string that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Kata version {input:?}: expected MAJOR.MINOR or MAJOR.MINOR.PATCH as `kata-runtime --version` prints it (e.g. 3.6.0)")]
pub struct VersionError {
    /// The string as given.
    pub input: String,
}

impl FromStr for KataVersion {
    type Err = VersionError;
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || VersionError {
            input: input.to_string(),
        };
        let s = input.trim().trim_start_matches('v');
        // "3.6.0-rc0", "3.6.0-alpha1": the prerelease belongs to that release line.
        let s = s.split(['-', '+']).next().unwrap_or(s);
        let parts: Vec<&str> = s.split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err(err());
        }
        let num = |p: &str| -> Result<u32, VersionError> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(err());
            }
            p.parse().map_err(|_| err())
        };
        Ok(KataVersion::new(
            num(parts[0])?,
            num(parts[1])?,
            if parts.len() == 3 { num(parts[2])? } else { 0 },
        ))
    }
}

/// How a Kata release names its VFIO keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyScheme {
    /// 2.0 – 3.1 (Go): `hotplug_vfio_on_root_bus` + `pcie_root_port`; devices are hot-plugged.
    RootBus,
    /// 3.2 – 3.5 (Go): `hot_plug_vfio` / `cold_plug_vfio`, no port count key.
    PortsImplicit,
    /// 3.6 + (Go): `hot_plug_vfio` / `cold_plug_vfio` + `pcie_root_port` / `pcie_switch_port`.
    Ports,
    /// runtime-rs: `cold_plug_vfio` + `pcie_root_port` / `pcie_switch_port`.
    RuntimeRs,
}

/// How the devices reach the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PlugMode {
    /// On the QEMU command line at boot (`-device vfio-pci,...,bus=rpN`).
    Cold,
    /// With QMP `device_add` after boot, into reserved root ports.
    Hot,
}

impl fmt::Display for PlugMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PlugMode::Cold => "cold plug",
            PlugMode::Hot => "hot plug",
        })
    }
}

/// Values of Go's `config.PCIePort` / runtime-rs `cold_plug_vfio` (the only strings Kata
/// accepts; "invalid-port" is internal).
pub mod port {
    /// A PCIe root port per device.
    pub const ROOT: &str = "root-port";
    /// A downstream port of a virtual PCIe switch per device.
    pub const SWITCH: &str = "switch-port";
    /// Behind a PCI bridge.
    pub const BRIDGE: &str = "bridge-port";
    /// No port: the mode is off.
    pub const NONE: &str = "no-port";
    /// Accepted by the Go parser.
    pub const GO_VALUES: [&str; 4] = [ROOT, SWITCH, BRIDGE, NONE];
    /// Accepted by runtime-rs `cold_plug_vfio`.
    pub const RS_VALUES: [&str; 2] = [NONE, ROOT];
}

/// Go `block_device_driver` values (`checkHypervisorConfig`: "supported drivers").
pub const BLOCK_DRIVERS_GO: [&str; 5] = [
    "virtio-scsi",
    "virtio-blk",
    "virtio-mmio",
    "nvdimm",
    "virtio-blk-ccw",
];
/// kata-types `block_device_driver` values (runtime-rs names the bus: `virtio-blk-pci`).
pub const BLOCK_DRIVERS_RS: [&str; 5] = [
    "virtio-blk-pci",
    "virtio-blk-ccw",
    "virtio-blk-mmio",
    "virtio-pmem",
    "virtio-scsi",
];

/// `maxPCIeRootPorts = 16` (config.go), `maxPCIeRootPort = 16 // Limitation from QEMU`
/// (qemu_arch_base.go): each port takes 4K of QEMU's ~54K I/O space (PR #4492).
pub const MAX_PCIE_PORTS: u32 = 16;

/// The Kata a file is written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Target {
    /// The Kata release.
    pub version: KataVersion,
    /// The Go runtime or runtime-rs.
    pub runtime: Runtime,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.runtime {
            Runtime::Go => write!(f, "Kata {} (Go runtime)", self.version),
            Runtime::Rs => write!(f, "Kata {} (runtime-rs)", self.version),
        }
    }
}

/// A target Kata cannot be configured for by this model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// Kata 1.x (older than 2.0): not modelled.
    #[error("Kata {version} is Kata 1.x (kata-runtime, kata-containers/runtime): its configuration is not modelled")]
    TooOld {
        /// The version asked for.
        version: KataVersion,
    },
    /// runtime-rs older than 3.6: its GPU keys are not modelled.
    #[error("runtime-rs GPU keys are modelled from Kata {min} on, not {version}")]
    RsTooOld {
        /// The version asked for.
        version: KataVersion,
        /// The oldest runtime-rs version modelled (3.6).
        min: KataVersion,
    },
}

impl Target {
    /// The target, if this model covers that version and runtime.
    pub fn new(version: KataVersion, runtime: Runtime) -> Result<Self, TargetError> {
        if version < KataVersion::OLDEST {
            return Err(TargetError::TooOld { version });
        }
        if runtime == Runtime::Rs && version < KataVersion::PORT_COUNT {
            return Err(TargetError::RsTooOld {
                version,
                min: KataVersion::PORT_COUNT,
            });
        }
        Ok(Self { version, runtime })
    }

    /// How this target names its VFIO keys (from the runtime and version).
    pub fn scheme(&self) -> KeyScheme {
        match self.runtime {
            Runtime::Rs => KeyScheme::RuntimeRs,
            Runtime::Go if self.version < KataVersion::PORT_KEYS => KeyScheme::RootBus,
            Runtime::Go if self.version < KataVersion::PORT_COUNT => KeyScheme::PortsImplicit,
            Runtime::Go => KeyScheme::Ports,
        }
    }

    /// The plug modes this target can do.
    pub fn supports(&self, mode: PlugMode) -> bool {
        match (self.scheme(), mode) {
            // ≤ 3.1 has no cold plug of VFIO devices (cold_plug_vfio arrives in 3.2, #6699).
            (KeyScheme::RootBus, PlugMode::Cold) => false,
            // kata-types reads cold_plug_vfio from 3.31 on; before, the key is ignored.
            (KeyScheme::RuntimeRs, PlugMode::Cold) => self.version >= KataVersion::RS_COLD_PLUG,
            _ => true,
        }
    }

    /// The first version of this runtime that cold-plugs VFIO devices.
    pub fn cold_plug_since(&self) -> KataVersion {
        match self.runtime {
            Runtime::Go => KataVersion::PORT_KEYS,
            Runtime::Rs => KataVersion::RS_COLD_PLUG,
        }
    }

    /// True when the runtime can put the devices behind a virtual PCIe switch
    /// (`pcie_switch_port`) in this plug mode: Go 3.6+ (hot and cold plug, "switch-port"),
    /// runtime-rs 3.17+ for hot plug only (its cold plug accepts only "root-port").
    pub fn supports_switch(&self, mode: PlugMode) -> bool {
        match self.runtime {
            Runtime::Go => self.version >= KataVersion::PORT_COUNT,
            Runtime::Rs => self.version >= KataVersion::RS_SWITCH_PORT && mode == PlugMode::Hot,
        }
    }

    /// Go 3.24 - 3.32: sandbox creation aborts when `pod_resource_api_sock` names a
    /// kubelet socket that does not exist (4.0.0 falls back).
    pub fn pod_resources_abort(&self) -> bool {
        self.runtime == Runtime::Go
            && self.version >= KataVersion::POD_RESOURCES
            && self.version < KataVersion::POD_RESOURCES_FALLBACK
    }

    /// Where the shim reads its configuration (after /etc, the packaged default).
    pub fn install_path(&self) -> &'static str {
        match self.runtime {
            Runtime::Go => "/etc/kata-containers/configuration.toml",
            Runtime::Rs => "/etc/kata-containers/runtime-rs/configuration.toml",
        }
    }

    /// The containerd shim that reads the file, as `ctr run --runtime` takes it:
    /// Go's `containerd-shim-kata-v2` on PATH, runtime-rs's as kata-deploy installs it.
    pub fn shim(&self) -> &'static str {
        match self.runtime {
            Runtime::Go => "io.containerd.kata.v2",
            Runtime::Rs => "/opt/kata/runtime-rs/bin/containerd-shim-kata-v2",
        }
    }

    /// Kata's supported mode: cold plug ("by design the only supported mode" for the
    /// NVIDIA stack) where the version has it, hot plug before 3.2.
    pub fn default_mode(&self) -> PlugMode {
        if self.supports(PlugMode::Cold) {
            PlugMode::Cold
        } else {
            PlugMode::Hot
        }
    }

    /// True when the version has a key for the number of ports.
    pub fn has_port_count(&self) -> bool {
        self.scheme() != KeyScheme::PortsImplicit
    }

    /// The most PCIe ports the runtime creates (16 on every version: QEMU's I/O space).
    pub fn max_ports(&self) -> u32 {
        MAX_PCIE_PORTS
    }

    /// The agent timeout key the NVIDIA template raises, and the value it uses:
    /// Go `dial_timeout` (s, DEFAULTTIMEOUT_NV = 1200), runtime-rs `reconnect_timeout_ms`
    /// (DEFRECONNECTTIMEOUTMS_NV = 1200000).
    pub fn agent_timeout(&self) -> (&'static str, i64) {
        match self.runtime {
            Runtime::Go => ("dial_timeout", 1200),
            Runtime::Rs => ("reconnect_timeout_ms", 1_200_000),
        }
    }
}

/// The TOML type Kata decodes a key into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum KeyType {
    /// A TOML boolean.
    Bool,
    /// An unsigned integer (Go uint32 / Rust u32 or u64).
    UInt,
    /// A TOML string.
    Str,
    /// One of a fixed set of strings.
    Enum(&'static [&'static str]),
    /// An array of strings.
    StrList,
}

/// One configuration key Kata reads, with the versions and runtimes that read it.
#[derive(Clone, Copy, Debug)]
pub struct KeyDef {
    /// The TOML table, e.g. `hypervisor.qemu`.
    pub table: &'static str,
    /// The key within the table.
    pub key: &'static str,
    /// The TOML type Kata decodes it into.
    pub ty: KeyType,
    /// First version that reads it (inclusive).
    pub since: KataVersion,
    /// First version that no longer reads it.
    pub until: Option<KataVersion>,
    /// The Go runtime reads it.
    pub go: bool,
    /// runtime-rs reads it.
    pub rs: bool,
}

const V2: KataVersion = KataVersion::OLDEST;
const HQ: &str = "hypervisor.qemu";
const AK: &str = "agent.kata";
const RT: &str = "runtime";

const fn key(table: &'static str, key: &'static str, ty: KeyType) -> KeyDef {
    KeyDef {
        table,
        key,
        ty,
        since: V2,
        until: None,
        go: true,
        rs: true,
    }
}
const fn go_only(mut k: KeyDef) -> KeyDef {
    k.rs = false;
    k
}
const fn rs_only(mut k: KeyDef) -> KeyDef {
    k.go = false;
    k
}
const fn since(mut k: KeyDef, v: KataVersion) -> KeyDef {
    k.since = v;
    k
}
const fn until(mut k: KeyDef, v: KataVersion) -> KeyDef {
    k.until = Some(v);
    k
}

/// The keys vfioctl writes (or that the generated file carries), with their types.
/// The parse-back tests check every key of every generated file against this table.
pub const KEYS: &[KeyDef] = &[
    key(HQ, "path", KeyType::Str),
    key(HQ, "kernel", KeyType::Str),
    key(HQ, "image", KeyType::Str),
    key(HQ, "initrd", KeyType::Str),
    key(HQ, "machine_type", KeyType::Str),
    // Go: `rootfs_type` arrives in 3.1.0 (3.1.0's configuration-qemu.toml.in has it).
    since(
        key(HQ, "rootfs_type", KeyType::Str),
        KataVersion::new(3, 1, 0),
    ),
    key(HQ, "kernel_params", KeyType::Str),
    key(HQ, "firmware", KeyType::Str),
    key(HQ, "default_vcpus", KeyType::UInt),
    key(HQ, "default_maxvcpus", KeyType::UInt),
    key(HQ, "default_memory", KeyType::UInt),
    key(HQ, "default_bridges", KeyType::UInt),
    key(HQ, "disable_image_nvdimm", KeyType::Bool),
    go_only(key(
        HQ,
        "block_device_driver",
        KeyType::Enum(&BLOCK_DRIVERS_GO),
    )),
    rs_only(key(
        HQ,
        "block_device_driver",
        KeyType::Enum(&BLOCK_DRIVERS_RS),
    )),
    key(HQ, "shared_fs", KeyType::Str),
    key(HQ, "virtio_fs_daemon", KeyType::Str),
    key(HQ, "valid_virtio_fs_daemon_paths", KeyType::StrList),
    key(HQ, "virtio_fs_cache", KeyType::Str),
    key(HQ, "valid_hypervisor_paths", KeyType::StrList),
    key(HQ, "enable_annotations", KeyType::StrList),
    key(HQ, "enable_iommu", KeyType::Bool),
    key(HQ, "enable_iommu_platform", KeyType::Bool),
    key(HQ, "guest_hook_path", KeyType::Str),
    go_only(until(
        key(HQ, "hotplug_vfio_on_root_bus", KeyType::Bool),
        KataVersion::PORT_KEYS,
    )),
    // ≤ 3.1: valid only with hotplug_vfio_on_root_bus on q35; gone in 3.2 – 3.5.
    go_only(until(
        key(HQ, "pcie_root_port", KeyType::UInt),
        KataVersion::PORT_KEYS,
    )),
    since(
        key(HQ, "pcie_root_port", KeyType::UInt),
        KataVersion::PORT_COUNT,
    ),
    go_only(since(
        key(HQ, "pcie_switch_port", KeyType::UInt),
        KataVersion::PORT_COUNT,
    )),
    rs_only(since(
        key(HQ, "pcie_switch_port", KeyType::UInt),
        KataVersion::RS_SWITCH_PORT,
    )),
    go_only(since(
        key(HQ, "hot_plug_vfio", KeyType::Enum(&port::GO_VALUES)),
        KataVersion::PORT_KEYS,
    )),
    go_only(since(
        key(HQ, "cold_plug_vfio", KeyType::Enum(&port::GO_VALUES)),
        KataVersion::PORT_KEYS,
    )),
    rs_only(since(
        key(HQ, "cold_plug_vfio", KeyType::Enum(&port::RS_VALUES)),
        KataVersion::RS_COLD_PLUG,
    )),
    go_only(since(
        key(AK, "dial_timeout", KeyType::UInt),
        KataVersion::new(2, 1, 0),
    )),
    rs_only(key(AK, "dial_timeout_ms", KeyType::UInt)),
    rs_only(key(AK, "reconnect_timeout_ms", KeyType::UInt)),
    key(AK, "kernel_modules", KeyType::StrList),
    key(AK, "enable_debug", KeyType::Bool),
    rs_only(key(RT, "name", KeyType::Str)),
    rs_only(key(RT, "hypervisor_name", KeyType::Str)),
    rs_only(key(RT, "agent_name", KeyType::Str)),
    key(RT, "internetworking_model", KeyType::Str),
    key(RT, "disable_guest_seccomp", KeyType::Bool),
    key(RT, "sandbox_cgroup_only", KeyType::Bool),
    since(
        key(RT, "static_sandbox_resource_mgmt", KeyType::Bool),
        KataVersion::new(2, 4, 0),
    ),
    since(
        key(RT, "vfio_mode", KeyType::Enum(&["guest-kernel", "vfio"])),
        KataVersion::new(2, 3, 0),
    ),
    go_only(since(
        key(RT, "pod_resource_api_sock", KeyType::Str),
        KataVersion::POD_RESOURCES,
    )),
    rs_only(since(
        key(RT, "pod_resource_api_sock", KeyType::Str),
        KataVersion::RS_COLD_PLUG,
    )),
    key(RT, "experimental", KeyType::StrList),
];

impl Target {
    /// The definition of `table.key` as this target reads it, if it reads it at all.
    pub fn key_def(&self, table: &str, name: &str) -> Option<&'static KeyDef> {
        KEYS.iter().find(|k| {
            k.table == table
                && k.key == name
                && self.version >= k.since
                && k.until.is_none_or(|u| self.version < u)
                && match self.runtime {
                    Runtime::Go => k.go,
                    Runtime::Rs => k.rs,
                }
        })
    }

    /// True when this target reads `table.key`.
    pub fn reads(&self, table: &str, name: &str) -> bool {
        self.key_def(table, name).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &str, r: Runtime) -> Target {
        Target::new(v.parse().unwrap(), r).unwrap()
    }

    #[test]
    fn parses_versions() {
        assert_eq!(
            "3.6".parse::<KataVersion>().unwrap(),
            KataVersion::new(3, 6, 0)
        );
        assert_eq!(
            "v3.2.0-rc0".parse::<KataVersion>().unwrap(),
            KataVersion::new(3, 2, 0)
        );
        for bad in ["", "3", "3.x", "3.6.0.1", "latest", "3..1"] {
            assert!(bad.parse::<KataVersion>().is_err(), "{bad}");
        }
    }

    #[test]
    fn schemes_follow_the_key_history() {
        assert_eq!(t("2.5.0", Runtime::Go).scheme(), KeyScheme::RootBus);
        assert_eq!(t("3.1.3", Runtime::Go).scheme(), KeyScheme::RootBus);
        assert_eq!(t("3.2.0", Runtime::Go).scheme(), KeyScheme::PortsImplicit);
        assert_eq!(t("3.5.0", Runtime::Go).scheme(), KeyScheme::PortsImplicit);
        assert_eq!(t("3.6.0", Runtime::Go).scheme(), KeyScheme::Ports);
        assert_eq!(t("4.1.0", Runtime::Go).scheme(), KeyScheme::Ports);
        assert_eq!(t("4.1.0", Runtime::Rs).scheme(), KeyScheme::RuntimeRs);
        assert!(Target::new("1.11.0".parse().unwrap(), Runtime::Go).is_err());
        assert!(Target::new("3.5.0".parse().unwrap(), Runtime::Rs).is_err());
    }

    #[test]
    fn key_presence_per_version() {
        let old = t("3.1.0", Runtime::Go);
        let mid = t("3.4.0", Runtime::Go);
        let new = t("3.6.0", Runtime::Go);
        let rs = t("4.1.0", Runtime::Rs);
        assert!(old.reads("hypervisor.qemu", "hotplug_vfio_on_root_bus"));
        assert!(old.reads("hypervisor.qemu", "pcie_root_port"));
        assert!(!old.reads("hypervisor.qemu", "cold_plug_vfio"));
        assert!(!mid.reads("hypervisor.qemu", "pcie_root_port"));
        assert!(mid.reads("hypervisor.qemu", "hot_plug_vfio"));
        assert!(!mid.reads("hypervisor.qemu", "hotplug_vfio_on_root_bus"));
        assert!(new.reads("hypervisor.qemu", "pcie_switch_port"));
        assert!(!rs.reads("hypervisor.qemu", "hot_plug_vfio"));
        assert_eq!(
            rs.key_def("hypervisor.qemu", "cold_plug_vfio").unwrap().ty,
            KeyType::Enum(&port::RS_VALUES)
        );
        assert!(!old.supports(PlugMode::Cold));
        assert_eq!(old.default_mode(), PlugMode::Hot);
        assert_eq!(new.default_mode(), PlugMode::Cold);
        assert!(!mid.has_port_count());
    }
}
