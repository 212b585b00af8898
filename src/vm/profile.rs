//! The VM profile: what `vfioctl vm up` starts. TOML with built-in defaults; a
//! `--profile FILE` overrides the defaults, command-line flags override the file.
//!
//! ```toml
//! name = "lab"
//! vcpus = 2
//! memory = "1G"
//! kernel = ".lab/kernel/current/vmlinuz"
//! initrd = "target/lab/initramfs.cpio.gz"
//! cmdline = "console=ttyS0 panic=-1"   # with -no-reboot a guest panic ends QEMU
//! firmware = "seabios"        # or "ovmf"
//! hotplug = "acpi"            # or "native" (pciehp)
//! gpu_ports = 2               # root ports; ports beyond the devices are plain spares
//! accel = "auto"              # auto | kvm | tcg
//! vsock = "auto"              # auto | vhost | vhost-user | none
//! ready = "agent"             # or "serial:<marker>"
//! vfio_backend = "auto"       # auto | group | iommufd
//!
//! [[device]]
//! gpu = "emulated:8G"         # or a host BDF bound to vfio-pci, vf:<BDF>, mdev:<uuid>
//! plug = "hot"                # hot (QMP after boot) | cold (-device) | port (size a port only)
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vfioctl_common::{units, Bdf};

use super::ports::Firmware;

/// How the guest learns about hot-plugged PCIe devices on q35's cold-plugged root ports.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum HotplugMode {
    /// ACPI PCI hotplug (QEMU >= 6.1's q35 default): fast plug and unplug in Linux.
    Acpi,
    /// Native PCIe hotplug (pciehp): unplug takes ~6 s (the guest's attention-button wait).
    Native,
}

impl HotplugMode {
    /// The `-global` that pins it, so QEMU 7.2 and 9.x behave the same.
    pub fn global(self) -> String {
        format!(
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support={}",
            match self {
                HotplugMode::Acpi => "on",
                HotplugMode::Native => "off",
            }
        )
    }
}

/// The accelerator asked for (`accel =`, `--accel`); `vm up` probes what QEMU can use.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum AccelChoice {
    /// KVM when QEMU can really use /dev/kvm (probed), else TCG with a warning.
    Auto,
    /// KVM, or an error when the probe finds it unusable.
    Kvm,
    /// TCG software emulation, without probing KVM.
    Tcg,
}

/// The vsock device asked for (`vsock =`, `--vsock`), for the guest agent.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum VsockChoice {
    /// vhost-vsock-pci when /dev/vhost-vsock opens, else vhost-user-vsock-pci.
    Auto,
    /// vhost-vsock-pci, or an error when /dev/vhost-vsock cannot be opened.
    Vhost,
    /// vhost-user-vsock-pci served by a supervised vhost-device-vsock.
    VhostUser,
    /// No vsock device, so no guest agent.
    None,
}

/// When a declared device is plugged.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum PlugWhen {
    /// Over QMP after the guest is ready (`device_add`).
    Hot,
    /// On QEMU's command line (`-device`), Kata's supported mode for NVIDIA GPUs.
    Cold,
    /// Only size a root port for it; plug later with `vfioctl vm plug`.
    Port,
}

/// A device the VM should hold: a host GPU or an emulated stand-in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum GpuSpec {
    /// A host PCI function bound to vfio-pci.
    Vfio {
        /// The host PCI address.
        bdf: Bdf,
    },
    /// `ivshmem-plain` with a RAM-backed 64-bit prefetchable BAR of `size` bytes.
    Emulated {
        /// The BAR size in bytes (a power of two, at least 1 MiB).
        size: u64,
    },
    /// A mediated device (vGPU slice, mtty), passed as
    /// `vfio-pci,sysfsdev=/sys/bus/mdev/devices/<uuid>`.
    Mdev {
        /// The mediated device's UUID.
        uuid: crate::shared::MdevUuid,
    },
}

impl GpuSpec {
    /// `0000:41:00.0` / `41:00.0`, `vf:0000:41:00.4` (an SR-IOV VF: a PCI function like
    /// any other), `mdev:<uuid>` or `emulated:8G`.
    pub fn parse(s: &str) -> Result<GpuSpec, GpuSpecError> {
        if let Some(u) = s.strip_prefix("mdev:") {
            return u
                .parse()
                .map(|uuid| GpuSpec::Mdev { uuid })
                .map_err(GpuSpecError::Mdev);
        }
        if let Some(b) = s.strip_prefix("vf:") {
            return b
                .parse::<Bdf>()
                .map(|bdf| GpuSpec::Vfio { bdf })
                .map_err(|error| GpuSpecError::Vf {
                    input: b.into(),
                    error,
                });
        }
        if let Some(size) = s.strip_prefix("emulated:") {
            let size = units::parse(size)?;
            if !size.is_power_of_two() || size < (1 << 20) {
                return Err(GpuSpecError::BarSize { input: s.into() });
            }
            return Ok(GpuSpec::Emulated { size });
        }
        s.parse::<Bdf>()
            .map(|bdf| GpuSpec::Vfio { bdf })
            .map_err(|error| GpuSpecError::Bdf { error })
    }
    /// The device as people name it: the BDF, `emulated:<size>` or `mdev:<uuid>`.
    pub fn label(&self) -> String {
        match self {
            GpuSpec::Vfio { bdf } => bdf.to_string(),
            GpuSpec::Emulated { size } => format!("emulated:{}", units::short(*size)),
            GpuSpec::Mdev { uuid } => format!("mdev:{uuid}"),
        }
    }
}

impl std::str::FromStr for GpuSpec {
    type Err = GpuSpecError;
    fn from_str(s: &str) -> Result<Self, GpuSpecError> {
        GpuSpec::parse(s)
    }
}

/// A `--gpu` / `gpu =` value that names no device ([`GpuSpec::parse`]). The parse error of
/// the part after the prefix is part of the message (one line for clap and profiles), not
/// a separate cause.
#[derive(Debug, thiserror::Error)]
pub enum GpuSpecError {
    /// `mdev:` with something that is not a UUID.
    #[error(transparent)]
    Mdev(crate::shared::SharedError),
    /// `vf:` with something that is not a PCI address.
    #[error("vf:{input}: {error}")]
    Vf {
        /// The text after `vf:`.
        input: String,
        /// Why it is not a PCI address.
        error: vfioctl_common::BdfError,
    },
    /// `emulated:` with a size that does not parse.
    #[error(transparent)]
    Size(#[from] units::SizeError),
    /// `emulated:` with a size no BAR can have.
    #[error("emulated BAR size {input:?} must be a power of two of at least 1M (PCI BARs are)")]
    BarSize {
        /// The whole value as given.
        input: String,
    },
    /// Neither a prefix nor a PCI address.
    #[error("{error}; or emulated:<size> for the lab stand-in")]
    Bdf {
        /// Why it is not a PCI address.
        error: vfioctl_common::BdfError,
    },
}

/// One `[[device]]` of a profile.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// The device: a host BDF, `vf:<BDF>`, `mdev:<uuid>` or `emulated:<size>`.
    pub gpu: String,
    /// When it is plugged; default `hot`.
    #[serde(default = "default_plug")]
    pub plug: PlugWhen,
}

fn default_plug() -> PlugWhen {
    PlugWhen::Hot
}

/// How `vm up` knows the guest is ready.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Ready {
    #[default]
    /// The guest agent answers `hello` over vsock.
    Agent,
    /// A line on the serial console contains this marker.
    Serial(String),
}

impl Ready {
    /// `agent` or `serial:<marker>` (the marker not empty).
    pub fn parse(s: &str) -> Result<Ready, BadReady> {
        match s {
            "agent" => Ok(Ready::Agent),
            _ => match s.strip_prefix("serial:") {
                Some(m) if !m.is_empty() => Ok(Ready::Serial(m.into())),
                _ => Err(BadReady { input: s.into() }),
            },
        }
    }
}

/// A `ready =` / `--ready` value that is neither `agent` nor `serial:<marker>`.
#[derive(Debug, thiserror::Error)]
#[error("ready = {input:?}: expected \"agent\" or \"serial:<marker>\"")]
pub struct BadReady {
    /// The value as given.
    pub input: String,
}

impl Serialize for Ready {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Ready::Agent => s.serialize_str("agent"),
            Ready::Serial(m) => s.serialize_str(&format!("serial:{m}")),
        }
    }
}

impl schemars::JsonSchema for Ready {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Ready".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "How `vm up` knows the guest is ready: `agent` or `serial:<marker>`.",
            "type": "string",
            "pattern": "^(agent|serial:.+)$"
        })
    }
}

impl<'de> Deserialize<'de> for Ready {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ready::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A VM profile. Every field has a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Profile {
    /// The VM's name (names its run directory and sockets); default `lab`.
    pub name: String,
    /// Number of virtual CPUs (1 to 255); default 2.
    pub vcpus: u32,
    /// RAM as people write it: `1G`, `512M`.
    pub memory: String,
    /// Guest kernel; default `$VFIOCTL_LAB/kernel/current/vmlinuz`.
    pub kernel: Option<PathBuf>,
    /// Initramfs given to QEMU's `-initrd`.
    pub initrd: Option<PathBuf>,
    /// A raw disk image attached as virtio-blk.
    pub disk: Option<PathBuf>,
    /// Guest kernel command line; default `console=ttyS0 panic=-1`.
    pub cmdline: String,
    /// Guest firmware; default SeaBIOS.
    pub firmware: Firmware,
    /// Firmware code image for OVMF.
    pub ovmf_code: PathBuf,
    /// OVMF variable store template; each VM gets its own copy.
    pub ovmf_vars: PathBuf,
    /// GPU root ports; at least one per declared device, extra ones are plain spares.
    pub gpu_ports: usize,
    /// How the guest learns of hot-plugged devices; default `acpi`.
    pub hotplug: HotplugMode,
    /// Accelerator; default `auto`.
    pub accel: AccelChoice,
    /// vsock device for the guest agent; default `auto`.
    pub vsock: VsockChoice,
    /// Guest port the agent listens on.
    pub agent_port: u32,
    /// Ask the guest agent to allow `exec` (fw_cfg `opt/vfioctl/exec`). The image must
    /// allow it too (`exec = true` in its rootfs manifest); either alone is not enough.
    pub agent_exec: bool,
    /// How `vm up` knows the guest is ready; default `agent`.
    pub ready: Ready,
    /// Seconds from QEMU start until the guest must be ready.
    pub boot_timeout: u64,
    /// The QEMU binary; default `qemu-system-x86_64` (looked up in `PATH`).
    pub qemu: PathBuf,
    /// The vhost-device-vsock binary, for the vhost-user vsock backend.
    pub vhost_device_vsock: PathBuf,
    /// Extra QEMU arguments, appended verbatim (one argument per element).
    pub qemu_args: Vec<String>,
    /// VFIO backend for host devices: `auto` (iommufd when the kernel and QEMU both have
    /// it), `group` or `iommufd`.
    pub vfio_backend: crate::shared::BackendChoice,
    /// The devices to give the VM (`[[device]]` tables).
    #[serde(rename = "device")]
    pub devices: Vec<DeviceEntry>,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            name: "lab".into(),
            vcpus: 2,
            memory: "1G".into(),
            kernel: None,
            initrd: None,
            disk: None,
            cmdline: "console=ttyS0 panic=-1".into(),
            firmware: Firmware::Seabios,
            ovmf_code: "/usr/share/OVMF/OVMF_CODE.fd".into(),
            ovmf_vars: "/usr/share/OVMF/OVMF_VARS.fd".into(),
            gpu_ports: 0,
            hotplug: HotplugMode::Acpi,
            accel: AccelChoice::Auto,
            vsock: VsockChoice::Auto,
            agent_port: 1024,
            agent_exec: false,
            ready: Ready::Agent,
            boot_timeout: 180,
            qemu: "qemu-system-x86_64".into(),
            vhost_device_vsock: "vhost-device-vsock".into(),
            qemu_args: Vec::new(),
            vfio_backend: crate::shared::BackendChoice::Auto,
            devices: Vec::new(),
        }
    }
}

/// A profile that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The profile file could not be read.
    #[error("profile {}: reading", path.display())]
    Read {
        /// The profile file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid profile (TOML syntax, unknown key, wrong type).
    #[error("profile {}: {message}", path.display())]
    Parse {
        /// The profile file.
        path: PathBuf,
        /// The TOML parser's message.
        message: String,
    },
    /// A value is out of range or inconsistent (bad name, memory, devices, ...).
    #[error("profile {name}: {message}")]
    Invalid {
        /// The profile's `name`.
        name: String,
        /// What is wrong, and what is allowed.
        message: String,
    },
}

impl crate::Diagnose for ProfileError {
    fn exit(&self) -> crate::Exit {
        crate::Exit::Usage
    }
    fn hint(&self) -> Option<String> {
        match self {
            ProfileError::Invalid { message, .. } if message.contains("kernel") => Some(
                "run scripts/setup (fetches the lab kernel into .lab/) or pass --kernel".into(),
            ),
            _ => Some("see `vfioctl vm up --help` and docs/commands/vm.md".into()),
        }
    }
}

impl Profile {
    /// Parse profile TOML; `path` only names the file in errors.
    pub fn from_toml(text: &str, path: &Path) -> Result<Profile, ProfileError> {
        toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }

    /// Read and parse a profile file; relative `kernel`, `initrd` and `disk` paths are
    /// taken relative to the file's directory.
    pub fn load(path: &Path) -> Result<Profile, ProfileError> {
        let text = std::fs::read_to_string(path).map_err(|source| ProfileError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut p = Self::from_toml(&text, path)?;
        // Relative paths in a profile are relative to the profile's directory.
        let base = path.parent().unwrap_or(Path::new("."));
        for f in [&mut p.kernel, &mut p.initrd, &mut p.disk]
            .into_iter()
            .flatten()
        {
            if f.is_relative() {
                *f = base.join(&*f);
            }
        }
        Ok(p)
    }

    /// A [`ProfileError::Invalid`] for this profile with `message`.
    pub fn invalid(&self, message: impl Into<String>) -> ProfileError {
        ProfileError::Invalid {
            name: self.name.clone(),
            message: message.into(),
        }
    }

    /// RAM in bytes.
    pub fn memory_bytes(&self) -> Result<u64, ProfileError> {
        let m = units::parse(&self.memory).map_err(|e| self.invalid(e.to_string()))?;
        if m < 128 << 20 || m % (1 << 20) != 0 {
            return Err(self.invalid(format!(
                "memory = {:?}: at least 128M, in whole MiB",
                self.memory
            )));
        }
        Ok(m)
    }

    /// The declared devices, parsed.
    pub fn gpus(&self) -> Result<Vec<(GpuSpec, PlugWhen)>, ProfileError> {
        self.devices
            .iter()
            .map(|d| {
                GpuSpec::parse(&d.gpu)
                    .map(|g| (g, d.plug))
                    .map_err(|e| self.invalid(e.to_string()))
            })
            .collect()
    }

    /// Check names and numbers that would otherwise fail deep inside QEMU.
    pub fn validate(&self) -> Result<(), ProfileError> {
        if let Err(e) = super::rundir::VmName::new(&self.name) {
            return Err(self.invalid(format!(
                "name: {}; 1-32 letters, digits, - and _, starting with a letter or digit (it names a directory and sockets)",
                e.reason
            )));
        }
        if self.vcpus == 0 || self.vcpus > 255 {
            return Err(self.invalid("vcpus: 1 to 255"));
        }
        self.memory_bytes()?;
        let gpus = self.gpus()?;
        if self.gpu_ports > super::ports::MAX_PORTS || gpus.len() > super::ports::MAX_PORTS {
            return Err(self.invalid(format!(
                "at most {} GPU root ports",
                super::ports::MAX_PORTS
            )));
        }
        if self.kernel.is_none() && self.disk.is_none() {
            return Err(self.invalid("no kernel and no disk: set kernel (or run scripts/setup)"));
        }
        if let Some(k) = &self.kernel {
            if !k.is_file() {
                return Err(self.invalid(format!("kernel {} does not exist", k.display())));
            }
        }
        if let Some(i) = &self.initrd {
            if !i.is_file() {
                return Err(self.invalid(format!("initrd {} does not exist", i.display())));
            }
        }
        if self.ready == Ready::Agent && self.vsock == VsockChoice::None {
            return Err(self.invalid("ready = \"agent\" needs vsock (not \"none\")"));
        }
        Ok(())
    }

    /// Number of root ports: the larger of `gpu_ports` and the declared devices.
    pub fn port_count(&self) -> usize {
        self.gpu_ports.max(self.devices.len())
    }
}

/// The lab cache: `$VFIOCTL_LAB`, else `.lab` in the current directory.
pub fn lab_dir() -> PathBuf {
    std::env::var_os("VFIOCTL_LAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(".lab"))
}

/// The lab guest kernel, `<lab>/kernel/current/vmlinuz`, when it exists.
pub fn lab_kernel() -> Option<PathBuf> {
    let k = lab_dir().join("kernel/current/vmlinuz");
    k.is_file().then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides_from_toml() {
        let p = Profile::from_toml(
            r#"
name = "gpu1"
memory = "4G"
firmware = "ovmf"
hotplug = "native"
ready = "serial:READY"
[[device]]
gpu = "emulated:8G"
[[device]]
gpu = "0000:41:00.0"
plug = "cold"
"#,
            Path::new("p.toml"),
        )
        .unwrap();
        assert_eq!(p.vcpus, 2);
        assert_eq!(p.memory_bytes().unwrap(), 4 << 30);
        assert_eq!(p.firmware, Firmware::Ovmf);
        assert_eq!(p.hotplug, HotplugMode::Native);
        assert_eq!(p.ready, Ready::Serial("READY".into()));
        let g = p.gpus().unwrap();
        assert_eq!(g[0], (GpuSpec::Emulated { size: 8 << 30 }, PlugWhen::Hot));
        assert_eq!(
            g[1],
            (
                GpuSpec::Vfio {
                    bdf: "0000:41:00.0".parse().unwrap()
                },
                PlugWhen::Cold
            )
        );
        assert_eq!(p.port_count(), 2);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors() {
        assert!(Profile::from_toml("nmae = \"x\"", Path::new("p")).is_err());
        assert!(Profile::from_toml("hotplug = \"sometimes\"", Path::new("p")).is_err());
        assert!(Profile::from_toml("ready = \"serial:\"", Path::new("p")).is_err());
        let p = Profile {
            name: "bad name".into(),
            ..Profile::default()
        };
        assert!(p.validate().unwrap_err().to_string().contains("name"));
        let p = Profile {
            memory: "100M".into(),
            ..Profile::default()
        };
        assert!(p.memory_bytes().is_err());
    }

    #[test]
    fn gpu_specs() {
        assert_eq!(
            GpuSpec::parse("emulated:8G").unwrap(),
            GpuSpec::Emulated { size: 8 << 30 }
        );
        assert_eq!(
            GpuSpec::parse("emulated:8G").unwrap().label(),
            "emulated:8G"
        );
        assert!(GpuSpec::parse("emulated:3G").is_err());
        assert_eq!(GpuSpec::parse("41:00.0").unwrap().label(), "0000:41:00.0");
        assert!(GpuSpec::parse("gpu0").is_err());
    }

    #[test]
    fn hotplug_globals() {
        assert_eq!(
            HotplugMode::Acpi.global(),
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=on"
        );
        assert_eq!(
            HotplugMode::Native.global(),
            "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"
        );
    }
}
