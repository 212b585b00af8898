//! What the checks look at, read through the [`SysRoot`] into plain data. The parsers for
//! `/proc` formats are pure functions with their own tests; [`HostFacts::gather`] and
//! [`DeviceFacts::gather`] only read files.

#![warn(missing_docs)]

use std::collections::BTreeSet;

use vfioctl_common::pci::{enumerate, PciDevice, PciError};
use vfioctl_common::{Bdf, SysRoot};

/// CPU vendor, from `/proc/cpuinfo` `vendor_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CpuVendor {
    /// `GenuineIntel`.
    Intel,
    /// `AuthenticAMD`.
    Amd,
    /// Any other vendor.
    Other,
}

/// Where a kernel module stands in the running kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ModuleState {
    /// In `/proc/modules`.
    Loaded,
    /// In `modules.builtin`.
    BuiltIn,
    /// In `modules.dep`: `modprobe` can load it.
    Available,
    /// Nowhere.
    #[default]
    Missing,
}

/// Host facts, as read.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// `None` when /proc/cpuinfo could not be read.
    pub cpu_flags: Option<BTreeSet<String>>,
    /// `vendor_id` of /proc/cpuinfo, `None` when unreadable or absent.
    pub cpu_vendor: Option<CpuVendor>,
    /// `/dev/kvm` exists.
    pub dev_kvm: bool,
    /// Whether QEMU can really run a KVM vCPU here: the probe `vm up` uses, cached per
    /// QEMU binary and kernel boot (`crate::vm::accel::kvm_verdict`); `None` when not
    /// known (no QEMU, or a fixture root without a cached verdict).
    pub kvm_usable: Option<Result<(), crate::vm::accel::KvmUnusable>>,
    /// `/sys/firmware/acpi/tables` exists at all.
    pub acpi_tables: bool,
    /// An ACPI DMAR table (Intel VT-d) exists.
    pub dmar: bool,
    /// An ACPI IVRS table (AMD-Vi) exists.
    pub ivrs: bool,
    /// DMAR flags bit 0 (INTR_REMAP) when the table could be read (root only).
    pub dmar_intr_remap: Option<bool>,
    /// Entries of `/sys/class/iommu` (`dmar0`, `ivhd0`).
    pub iommu_units: Vec<String>,
    /// How many IOMMU groups the kernel made.
    pub iommu_groups: usize,
    /// `/proc/cmdline`.
    pub cmdline: String,
    /// `None` when /proc/interrupts could not be read.
    pub interrupts: Option<InterruptFacts>,
    /// `allow_unsafe_interrupts` of vfio_iommu_type1, when readable.
    pub allow_unsafe_interrupts: Option<bool>,
    /// `uname -r` of the host (`/proc/sys/kernel/osrelease`).
    pub kernel: Option<String>,
    /// `/lib/modules/<kernel>/modules.dep` exists.
    pub modules_dir: bool,
    /// The `vfio` module.
    pub vfio: ModuleState,
    /// The `vfio_iommu_type1` module.
    pub vfio_iommu_type1: ModuleState,
    /// The `vfio-pci` module.
    pub vfio_pci: ModuleState,
    /// The `vhost_vsock` module.
    pub vhost_vsock_module: ModuleState,
    /// `/dev/vfio` exists.
    pub dev_vfio: bool,
    /// `/dev/vhost-vsock` exists.
    pub dev_vhost_vsock: bool,
    /// Soft `Max locked memory` in bytes; `Some(None)` = unlimited; `None` = unreadable.
    pub memlock: Option<Option<u64>>,
    /// 2 MiB huge pages reserved.
    pub hugepages_2m: u64,
    /// 1 GiB huge pages reserved.
    pub hugepages_1g: u64,
}

/// What `/proc/interrupts` shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptFacts {
    /// Chips named `IR-...` (`IR-PCI-MSI`, `IR-IO-APIC`): remapped interrupts.
    pub remapped: usize,
    /// MSI/IO-APIC lines without remapping.
    pub plain: usize,
}

/// Count remapped and plain interrupt lines in `/proc/interrupts`.
pub fn parse_interrupts(text: &str) -> InterruptFacts {
    let mut f = InterruptFacts::default();
    for line in text.lines().skip(1) {
        let mut remapped = false;
        let mut plain = false;
        for w in line.split_whitespace() {
            if w.starts_with("IR-") {
                remapped = true;
            } else if w.starts_with("PCI-MSI") || w == "IO-APIC" {
                plain = true;
            }
        }
        if remapped {
            f.remapped += 1;
        } else if plain {
            f.plain += 1;
        }
    }
    f
}

/// The soft `Max locked memory` limit from a `/proc/<pid>/limits` file: `Some(None)` for
/// unlimited, `Some(Some(bytes))`, `None` when the line is missing or malformed.
pub fn parse_memlock(limits: &str) -> Option<Option<u64>> {
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max locked memory"))?;
    let soft = line["Max locked memory".len()..]
        .split_whitespace()
        .next()?;
    if soft == "unlimited" {
        Some(None)
    } else {
        soft.parse().ok().map(Some)
    }
}

/// `HugePages_Total` from /proc/meminfo (2M pages on x86).
pub fn parse_hugepages_total(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Total:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Loaded module names from /proc/modules.
pub fn parse_proc_modules(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Module names (`vfio_pci`, `-` normalised to `_`) listed by a `modules.dep` or
/// `modules.builtin` file: the basename of each path without `.ko[.xz|.zst|.gz]`.
pub fn parse_module_paths(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.split(':').next())
        .filter_map(|p| p.trim().rsplit('/').next())
        .filter_map(|base| base.split(".ko").next())
        .filter(|n| !n.is_empty())
        .map(|n| n.replace('-', "_"))
        .collect()
}

/// The CPU vendor and flags of the first processor in /proc/cpuinfo.
pub fn parse_cpuinfo(text: &str) -> (Option<CpuVendor>, BTreeSet<String>) {
    let mut vendor = None;
    let mut flags = BTreeSet::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "vendor_id" if vendor.is_none() => {
                vendor = Some(match v.trim() {
                    "GenuineIntel" => CpuVendor::Intel,
                    "AuthenticAMD" | "HygonGenuine" => CpuVendor::Amd,
                    _ => CpuVendor::Other,
                });
            }
            "flags" if flags.is_empty() => {
                flags = v.split_whitespace().map(String::from).collect();
            }
            _ => {}
        }
    }
    (vendor, flags)
}

fn module_state(
    name: &str,
    loaded: &BTreeSet<String>,
    builtin: &BTreeSet<String>,
    available: &BTreeSet<String>,
) -> ModuleState {
    if loaded.contains(name) {
        ModuleState::Loaded
    } else if builtin.contains(name) {
        ModuleState::BuiltIn
    } else if available.contains(name) {
        ModuleState::Available
    } else {
        ModuleState::Missing
    }
}

impl HostFacts {
    /// Read everything the host checks need. Missing files are facts, not errors.
    pub fn gather(root: &SysRoot) -> Self {
        let read = |p: &str| root.read_string(p).ok();
        let mut f = HostFacts::default();
        if let Some(text) = read("/proc/cpuinfo") {
            let (vendor, flags) = parse_cpuinfo(&text);
            f.cpu_vendor = vendor;
            f.cpu_flags = Some(flags);
        }
        f.dev_kvm = root.exists("/dev/kvm");
        if f.dev_kvm {
            f.kvm_usable = crate::vm::accel::kvm_verdict(
                root,
                std::path::Path::new("qemu-system-x86_64"),
                None,
            );
        }
        f.acpi_tables = root.is_dir("/sys/firmware/acpi/tables");
        f.dmar = root.exists("/sys/firmware/acpi/tables/DMAR");
        f.ivrs = root.exists("/sys/firmware/acpi/tables/IVRS");
        if f.dmar {
            // Readable by root only; offset 37 holds the flags byte.
            f.dmar_intr_remap = root
                .read_bytes("/sys/firmware/acpi/tables/DMAR")
                .ok()
                .and_then(|b| b.get(37).map(|flags| flags & 1 == 1));
        }
        f.iommu_units = root.list_opt("/sys/class/iommu").unwrap_or_default();
        f.iommu_groups = root
            .list_opt("/sys/kernel/iommu_groups")
            .unwrap_or_default()
            .len();
        f.cmdline = read("/proc/cmdline").unwrap_or_default().trim().to_string();
        f.interrupts = read("/proc/interrupts").map(|t| parse_interrupts(&t));
        f.allow_unsafe_interrupts = root
            .read_attr_opt("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts")
            .ok()
            .flatten()
            .map(|v| v == "Y" || v == "1");
        f.kernel = root
            .read_attr_opt("/proc/sys/kernel/osrelease")
            .ok()
            .flatten();
        let loaded = read("/proc/modules")
            .map(|t| parse_proc_modules(&t))
            .unwrap_or_default();
        let (mut builtin, mut available) = (BTreeSet::new(), BTreeSet::new());
        if let Some(k) = &f.kernel {
            if let Some(dep) = read(&format!("/lib/modules/{k}/modules.dep")) {
                f.modules_dir = true;
                available = parse_module_paths(&dep);
            }
            if let Some(b) = read(&format!("/lib/modules/{k}/modules.builtin")) {
                builtin = parse_module_paths(&b);
            }
        }
        let st = |n: &str| module_state(n, &loaded, &builtin, &available);
        f.vfio = st("vfio");
        f.vfio_iommu_type1 = st("vfio_iommu_type1");
        f.vfio_pci = st("vfio_pci");
        f.vhost_vsock_module = st("vhost_vsock");
        f.dev_vfio = root.exists("/dev/vfio/vfio");
        f.dev_vhost_vsock = root.exists("/dev/vhost-vsock");
        f.memlock = read("/proc/self/limits").and_then(|t| parse_memlock(&t));
        f.hugepages_2m = read("/proc/meminfo")
            .map(|t| parse_hugepages_total(&t))
            .unwrap_or(0);
        f.hugepages_1g = root
            .read_attr_opt("/sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages")
            .ok()
            .flatten()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        f.log();
        f
    }

    /// What was read, one line per fact, for `-v` (each check's verdict is logged by
    /// [`crate::host::run_checks`]).
    fn log(&self) {
        use tracing::{debug, info};
        match &self.cpu_flags {
            Some(flags) => info!(
                "/proc/cpuinfo: vendor {:?}, vmx {}, svm {}",
                self.cpu_vendor,
                flags.contains("vmx"),
                flags.contains("svm")
            ),
            None => info!("/proc/cpuinfo: unreadable"),
        }
        info!(
            "/dev/kvm: {}; QEMU KVM probe: {:?}",
            present(self.dev_kvm),
            self.kvm_usable
        );
        info!(
            "/sys/firmware/acpi/tables: {}; DMAR {}, IVRS {}, DMAR interrupt remapping flag {:?}",
            present(self.acpi_tables),
            present(self.dmar),
            present(self.ivrs),
            self.dmar_intr_remap
        );
        info!(
            "/sys/class/iommu: {:?}; /sys/kernel/iommu_groups: {} groups -> IOMMU {}",
            self.iommu_units,
            self.iommu_groups,
            if self.iommu_active() {
                "active"
            } else {
                "not active"
            }
        );
        info!("/proc/cmdline: {:?}", self.cmdline);
        match &self.interrupts {
            Some(i) => info!(
                "/proc/interrupts: {} remapped (IR-*) and {} plain MSI/IO-APIC lines",
                i.remapped, i.plain
            ),
            None => info!("/proc/interrupts: unreadable"),
        }
        info!(
            "/proc/sys/kernel/osrelease: {:?}; /lib/modules/<kernel>/modules.dep {}",
            self.kernel,
            present(self.modules_dir)
        );
        info!(
            "modules (/proc/modules, modules.builtin, modules.dep): vfio {:?}, vfio_iommu_type1 {:?}, vfio_pci {:?}, vhost_vsock {:?}",
            self.vfio, self.vfio_iommu_type1, self.vfio_pci, self.vhost_vsock_module
        );
        info!(
            "/dev/vfio/vfio: {}; /dev/vhost-vsock: {}",
            present(self.dev_vfio),
            present(self.dev_vhost_vsock)
        );
        debug!(
            "/proc/self/limits memlock: {:?}; hugepages 2M {} 1G {}; allow_unsafe_interrupts {:?}",
            self.memlock, self.hugepages_2m, self.hugepages_1g, self.allow_unsafe_interrupts
        );
    }

    /// The IOMMU is in use by the kernel.
    pub fn iommu_active(&self) -> bool {
        !self.iommu_units.is_empty() || self.iommu_groups > 0
    }
}

fn present(b: bool) -> &'static str {
    if b {
        "present"
    } else {
        "absent"
    }
}

/// One selected device with what its checks need from around it.
#[derive(Clone, Debug)]
pub struct DeviceFacts {
    /// The device.
    pub dev: PciDevice,
    /// The other members of its IOMMU group, read.
    pub group: Vec<PciDevice>,
    /// Other functions on the same bus that are not in this device's slot (a secondary
    /// bus reset resets them too).
    pub bus_mates: Vec<Bdf>,
}

impl DeviceFacts {
    /// Read what the checks of `dev` need: its group's members and bus mates among `all`.
    pub fn gather(root: &SysRoot, dev: PciDevice, all: &[Bdf]) -> Result<Self, PciError> {
        let group = dev
            .iommu_group_peers
            .iter()
            .map(|b| PciDevice::read(root, *b))
            .collect::<Result<Vec<_>, _>>()?;
        let bus_mates = all
            .iter()
            .filter(|b| {
                b.domain == dev.bdf.domain && b.bus == dev.bdf.bus && b.device != dev.bdf.device
            })
            .copied()
            .collect();
        tracing::info!(
            "{}: {:04x}:{:04x} class {:06x}, driver {:?}, IOMMU group {:?} with {:?}, {} BARs, bus mates {:?}",
            dev.bdf,
            dev.vendor,
            dev.device,
            dev.class,
            dev.driver,
            dev.iommu_group,
            dev.iommu_group_peers,
            dev.bars.len(),
            bus_mates
        );
        Ok(Self {
            dev,
            group,
            bus_mates,
        })
    }
}

/// All BDFs (for bus mates); an unreadable device list is an error.
pub fn all_bdfs(root: &SysRoot) -> Result<Vec<Bdf>, PciError> {
    enumerate(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupts() {
        let t = "           CPU0       CPU1\n  0:         44          0   IO-APIC   2-edge      timer\n 24:          0          0  IR-PCI-MSI 512000-edge      ahci\n 25:          3          0  IR-PCI-MSIX-0000:01:00.0    0-edge      nvidia\nNMI:          0          0   Non-maskable interrupts\n";
        assert_eq!(
            parse_interrupts(t),
            InterruptFacts {
                remapped: 2,
                plain: 1
            }
        );
        let plain = "  CPU0\n 24:  1  PCI-MSI 512000-edge ahci\n";
        assert_eq!(parse_interrupts(plain).remapped, 0);
    }

    #[test]
    fn memlock() {
        let l = "Limit                     Soft Limit           Hard Limit           Units     \nMax locked memory         8388608              8388608              bytes     \n";
        assert_eq!(parse_memlock(l), Some(Some(8 << 20)));
        let u = "Max locked memory         unlimited            unlimited            bytes     \n";
        assert_eq!(parse_memlock(u), Some(None));
        assert_eq!(parse_memlock("Max open files 1024 4096 files\n"), None);
    }

    #[test]
    fn modules() {
        let dep = "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/vfio.ko\nkernel/drivers/vfio/vfio.ko.xz:\nupdates/dkms/nvidia.ko.zst:\n";
        let m = parse_module_paths(dep);
        assert!(m.contains("vfio_pci") && m.contains("vfio") && m.contains("nvidia"));
        let loaded =
            parse_proc_modules("vfio_pci 16384 0 - Live 0x0\nkvm 1146880 1 kvm_intel, Live 0x0\n");
        assert!(loaded.contains("vfio_pci") && loaded.contains("kvm"));
        let none = BTreeSet::new();
        assert_eq!(
            module_state("vfio", &loaded, &none, &m),
            ModuleState::Available
        );
        assert_eq!(
            module_state("vfio_pci", &loaded, &none, &m),
            ModuleState::Loaded
        );
        assert_eq!(module_state("x", &loaded, &none, &m), ModuleState::Missing);
    }

    #[test]
    fn cpuinfo() {
        let (v, f) = parse_cpuinfo("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm npt\n\nprocessor\t: 1\nflags\t\t: other\n");
        assert_eq!(v, Some(CpuVendor::Amd));
        assert!(f.contains("svm") && !f.contains("other"));
    }

    #[test]
    fn hugepages() {
        assert_eq!(
            parse_hugepages_total("MemTotal: 1 kB\nHugePages_Total:     512\n"),
            512
        );
        assert_eq!(parse_hugepages_total(""), 0);
    }
}
