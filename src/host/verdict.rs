//! The verdicts: plain functions from [`HostFacts`] / [`DeviceFacts`] to [`Check`]s. No I/O
//! here, so every branch is unit-tested with hand-made facts.

use serde::Serialize;
use vfioctl_common::pci::device::is_vfio_driver;
use vfioctl_common::pci::{Bar, PciDevice};
use vfioctl_common::units;
use vfioctl_common::Bdf;

use super::facts::{CpuVendor, DeviceFacts, HostFacts, ModuleState};

/// How a check came out.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// All is as it should be.
    Pass,
    /// Works, but something is not as recommended; does not change the exit code.
    Warn,
    /// Something is wrong and must be fixed; `vfioctl check` exits 1.
    Fail,
    /// Not applicable here (no SR-IOV capability, IOMMU off so IR cannot be judged).
    Skip,
}

impl Status {
    /// The lower-case name, as in JSON: `pass`, `warn`, `fail`, `skip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
            Status::Skip => "skip",
        }
    }
}

/// One verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Check {
    /// Stable identifier (`iommu-kernel`, `bars-assigned`).
    pub id: &'static str,
    /// How it came out.
    pub status: Status,
    /// The device it concerns; `null` for host checks.
    pub device: Option<Bdf>,
    /// What was seen.
    pub message: String,
    /// The fix, when there is something to do.
    pub hint: Option<String>,
}

fn check(id: &'static str, status: Status, message: impl Into<String>) -> Check {
    Check::new(id, status, message)
}

impl Check {
    /// A host check (no device) without a hint; `hint` and `on` add them.
    pub(crate) fn new(id: &'static str, status: Status, message: impl Into<String>) -> Check {
        Check {
            id,
            status,
            device: None,
            message: message.into(),
            hint: None,
        }
    }

    /// The same check with the fix to print.
    pub(crate) fn hint(mut self, h: impl Into<String>) -> Self {
        self.hint = Some(h.into());
        self
    }
    fn on(mut self, bdf: Bdf) -> Self {
        self.device = Some(bdf);
        self
    }
}

const GRUB: &str = "(GRUB_CMDLINE_LINUX in /etc/default/grub, then update-grub and reboot)";

/// The host checks, in the order a person fixes them.
pub fn host_checks(h: &HostFacts, vm_memory: Option<u64>) -> Vec<Check> {
    vec![
        cpu_virt_check(h),
        kvm_check(h),
        iommu_firmware_check(h),
        iommu_kernel_check(h),
        iommu_groups_check(h),
        cmdline_check(h),
        interrupt_remapping_check(h),
        vfio_modules_check(h),
        dev_vfio_check(h),
        vhost_vsock_check(h),
        memlock_check(h, vm_memory),
        hugepages_check(h, vm_memory),
    ]
}

fn is_amd(h: &HostFacts) -> bool {
    h.cpu_vendor == Some(CpuVendor::Amd)
}

/// CPU virtualization: vmx or svm in the CPU flags.
fn cpu_virt_check(h: &HostFacts) -> Check {
    match &h.cpu_flags {
        None => check("cpu-virt", Status::Skip, "/proc/cpuinfo not readable"),
        Some(f) if f.contains("vmx") => check(
            "cpu-virt",
            Status::Pass,
            "vmx (Intel VT-x) in /proc/cpuinfo flags",
        ),
        Some(f) if f.contains("svm") => check(
            "cpu-virt",
            Status::Pass,
            "svm (AMD-V) in /proc/cpuinfo flags",
        ),
        Some(_) => check(
            "cpu-virt",
            Status::Fail,
            "neither vmx nor svm in /proc/cpuinfo flags: hardware virtualization is off or hidden",
        )
        .hint("enable Intel VT-x / AMD SVM in the firmware setup (in a VM: expose it with nested virtualization)"),
    }
}

/// /dev/kvm, and whether QEMU can run a KVM vCPU on it.
fn kvm_check(h: &HostFacts) -> Check {
    if h.dev_kvm {
        match &h.kvm_usable {
            None => check("kvm", Status::Pass, "/dev/kvm exists"),
            Some(Ok(())) => check(
                "kvm",
                Status::Pass,
                "/dev/kvm exists and QEMU runs a KVM vCPU (the probe vm up uses)",
            ),
            Some(Err(why)) => check(
                "kvm",
                Status::Fail,
                format!("/dev/kvm exists but QEMU cannot use it: {why}; vm up would fall back to TCG"),
            )
            .hint("on a VM host, expose VT-x/SVM to this machine (nested virtualization); check the kvm module's messages in dmesg"),
        }
    } else {
        check("kvm", Status::Fail, "no /dev/kvm: KVM is not available").hint(
            if is_amd(h) {
                "modprobe kvm_amd"
            } else {
                "modprobe kvm_intel (kvm_amd on AMD)"
            }
            .to_string()
                + "; if it fails, enable VT-x/SVM in the firmware setup",
        )
    }
}

/// How to turn the IOMMU on in the firmware setup, by CPU vendor.
fn iommu_firmware_hint(h: &HostFacts) -> &'static str {
    if is_amd(h) {
        "enable the IOMMU (AMD-Vi / \"IOMMU\") in the firmware setup"
    } else {
        "enable VT-d (Intel Virtualization Technology for Directed I/O) in the firmware setup"
    }
}

/// The fix when the kernel has no IOMMU: the kernel parameter when the firmware table is
/// there, else the firmware setup first, then the parameter.
fn iommu_kernel_hint(h: &HostFacts) -> String {
    let amd = is_amd(h);
    let disabled_on_cmdline = has_param(&h.cmdline, "amd_iommu", &["off"])
        || has_param(&h.cmdline, "iommu", &["off"])
        || has_param(&h.cmdline, "intel_iommu", &["off"]);
    let param_hint = if disabled_on_cmdline {
        format!("remove intel_iommu=off / amd_iommu=off / iommu=off from the kernel command line {GRUB}")
    } else if amd {
        "check dmesg for AMD-Vi errors (the AMD IOMMU needs no kernel parameter)".to_string()
    } else {
        format!("add intel_iommu=on to the kernel command line {GRUB}")
    };
    if h.dmar || h.ivrs {
        param_hint
    } else if amd && !disabled_on_cmdline {
        format!(
            "{} (the AMD IOMMU needs no kernel parameter)",
            iommu_firmware_hint(h)
        )
    } else {
        format!("{}, then {param_hint}", iommu_firmware_hint(h))
    }
}

/// IOMMU in the firmware: the ACPI DMAR (Intel) or IVRS (AMD) table.
fn iommu_firmware_check(h: &HostFacts) -> Check {
    if h.dmar {
        check(
            "iommu-firmware",
            Status::Pass,
            "ACPI DMAR table present (Intel VT-d)",
        )
    } else if h.ivrs {
        check(
            "iommu-firmware",
            Status::Pass,
            "ACPI IVRS table present (AMD-Vi)",
        )
    } else if !h.acpi_tables {
        check(
            "iommu-firmware",
            Status::Skip,
            "no /sys/firmware/acpi/tables: not an ACPI machine, the kernel checks below decide",
        )
    } else {
        check(
            "iommu-firmware",
            Status::Fail,
            "no ACPI DMAR or IVRS table: the IOMMU is disabled in the firmware or absent",
        )
        .hint(iommu_firmware_hint(h))
    }
}

/// IOMMU in the kernel: units under /sys/class/iommu.
fn iommu_kernel_check(h: &HostFacts) -> Check {
    if !h.iommu_units.is_empty() {
        check(
            "iommu-kernel",
            Status::Pass,
            format!(
                "IOMMU active: /sys/class/iommu has {}",
                h.iommu_units.join(", ")
            ),
        )
    } else {
        check(
            "iommu-kernel",
            Status::Fail,
            "/sys/class/iommu is empty: the kernel did not enable an IOMMU",
        )
        .hint(iommu_kernel_hint(h))
    }
}

/// IOMMU groups under /sys/kernel/iommu_groups.
fn iommu_groups_check(h: &HostFacts) -> Check {
    if h.iommu_groups > 0 {
        check(
            "iommu-groups",
            Status::Pass,
            format!(
                "{} IOMMU groups in /sys/kernel/iommu_groups",
                h.iommu_groups
            ),
        )
    } else {
        check(
            "iommu-groups",
            Status::Fail,
            "/sys/kernel/iommu_groups is empty: no device can be assigned to a VM",
        )
        .hint(iommu_kernel_hint(h))
    }
}

/// Interrupt remapping: IR- chips in /proc/interrupts, and allow_unsafe_interrupts.
fn interrupt_remapping_check(h: &HostFacts) -> Check {
    match (&h.interrupts, h.iommu_active()) {
        (None, _) => check(
            "interrupt-remapping",
            Status::Skip,
            "/proc/interrupts not readable",
        ),
        (_, false) => check(
            "interrupt-remapping",
            Status::Skip,
            "the IOMMU is off, so interrupts cannot be remapped (fix iommu-kernel first)",
        ),
        (Some(i), true) if i.remapped > 0 => {
            let c = check(
                "interrupt-remapping",
                Status::Pass,
                format!(
                    "interrupt remapping on: {} interrupt lines on IR- chips in /proc/interrupts",
                    i.remapped
                ),
            );
            if h.allow_unsafe_interrupts == Some(true) {
                Check {
                    status: Status::Warn,
                    message: format!(
                        "{}; but vfio_iommu_type1.allow_unsafe_interrupts=Y is set",
                        c.message
                    ),
                    ..c
                }
                .hint("remove allow_unsafe_interrupts: it is not needed here")
            } else {
                c
            }
        }
        (Some(_), true) => {
            let c = check(
                "interrupt-remapping",
                Status::Fail,
                "no IR- interrupt chips in /proc/interrupts: interrupt remapping is off, and vfio_iommu_type1 refuses to attach groups without it",
            )
            .hint("enable interrupt remapping / x2APIC in the firmware setup (do not boot with intremap=off); only as an unsafe last resort: vfio_iommu_type1.allow_unsafe_interrupts=1");
            if h.allow_unsafe_interrupts == Some(true) {
                Check {
                    status: Status::Warn,
                    message: "no IR- interrupt chips in /proc/interrupts; vfio_iommu_type1.allow_unsafe_interrupts=Y lets VFIO run without isolation from device MSI writes".into(),
                    ..c
                }
            } else {
                c
            }
        }
    }
}

/// The VFIO container node /dev/vfio/vfio.
fn dev_vfio_check(h: &HostFacts) -> Check {
    if h.dev_vfio {
        check("dev-vfio", Status::Pass, "/dev/vfio/vfio exists")
    } else if matches!(h.vfio, ModuleState::Available) {
        check(
            "dev-vfio",
            Status::Warn,
            "no /dev/vfio/vfio yet: it appears when the vfio module loads",
        )
        .hint("modprobe vfio-pci (vfioctl bind loads it)")
    } else {
        check("dev-vfio", Status::Fail, "no /dev/vfio/vfio: VFIO is not available in this kernel")
            .hint("boot a kernel with CONFIG_VFIO and CONFIG_VFIO_PCI (every distribution kernel has them)")
    }
}

/// The kernel vsock backend /dev/vhost-vsock (the guest agent's transport).
fn vhost_vsock_check(h: &HostFacts) -> Check {
    if h.dev_vhost_vsock {
        check("vhost-vsock", Status::Pass, "/dev/vhost-vsock exists")
    } else {
        let hint = if matches!(h.vhost_vsock_module, ModuleState::Available) {
            "modprobe vhost_vsock; without it vfioctl uses vhost-device-vsock (user space) for the guest agent"
        } else {
            "vfioctl uses vhost-device-vsock (user space, installed by scripts/setup) for the guest agent"
        };
        check(
            "vhost-vsock",
            Status::Warn,
            "no /dev/vhost-vsock: the kernel vsock backend is not loaded",
        )
        .hint(hint)
    }
}

fn has_param(cmdline: &str, name: &str, values: &[&str]) -> bool {
    cmdline.split_whitespace().any(|w| match w.split_once('=') {
        Some((k, v)) => k == name && v.split(',').any(|x| values.contains(&x)),
        None => false,
    })
}

/// IOMMU parameters on the kernel command line.
fn cmdline_check(h: &HostFacts) -> Check {
    let intel = h.cpu_vendor == Some(CpuVendor::Intel);
    let amd = is_amd(h);
    let c = &h.cmdline;
    let id = "iommu-cmdline";
    if has_param(c, "intel_iommu", &["off"])
        || has_param(c, "amd_iommu", &["off"])
        || has_param(c, "iommu", &["off"])
    {
        return check(
            id,
            Status::Fail,
            format!("the kernel command line disables the IOMMU: {c}"),
        )
        .hint(format!(
            "remove intel_iommu=off / amd_iommu=off / iommu=off from the kernel command line {GRUB}"
        ));
    }
    if c.split_whitespace()
        .any(|w| w.starts_with("pcie_acs_override"))
    {
        return check(
            id,
            Status::Warn,
            "pcie_acs_override on the kernel command line: IOMMU groups are split by a patch, not by hardware isolation",
        )
        .hint("assigned devices may reach each other's DMA; use a slot whose root port has ACS instead");
    }
    let pt = has_param(c, "iommu", &["pt"]);
    let pt_note = if pt {
        "; iommu=pt: host devices use identity domains, assigned devices are still isolated"
    } else {
        ""
    };
    if intel {
        if has_param(c, "intel_iommu", &["on"]) {
            check(
                id,
                Status::Pass,
                format!("intel_iommu=on on the kernel command line{pt_note}"),
            )
        } else if h.iommu_active() {
            check(
                id,
                Status::Pass,
                format!("intel_iommu=on not given, but the kernel enabled the IOMMU (CONFIG_INTEL_IOMMU_DEFAULT_ON){pt_note}"),
            )
        } else {
            check(
                id,
                Status::Fail,
                "intel_iommu=on is not on the kernel command line",
            )
            .hint(format!(
                "add intel_iommu=on to the kernel command line {GRUB}"
            ))
        }
    } else if amd {
        check(
            id,
            Status::Pass,
            format!("AMD IOMMU needs no kernel parameter (amd_iommu is on by default){pt_note}"),
        )
    } else {
        check(
            id,
            Status::Skip,
            "CPU vendor unknown: no IOMMU parameter to judge",
        )
    }
}

fn vfio_modules_check(h: &HostFacts) -> Check {
    let mods = [
        ("vfio", h.vfio),
        ("vfio_iommu_type1", h.vfio_iommu_type1),
        ("vfio_pci", h.vfio_pci),
    ];
    let kernel = h.kernel.as_deref().unwrap_or("?");
    let missing: Vec<&str> = mods
        .iter()
        .filter(|(_, s)| *s == ModuleState::Missing)
        .map(|(n, _)| *n)
        .collect();
    let not_loaded: Vec<&str> = mods
        .iter()
        .filter(|(_, s)| *s == ModuleState::Available)
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        let where_ = if h.modules_dir {
            format!("not loaded, not built in, and not in /lib/modules/{kernel}/modules.dep")
        } else {
            format!("not loaded, and the running kernel {kernel} has no /lib/modules/{kernel}")
        };
        check(
            "vfio-modules",
            Status::Fail,
            format!("{}: {where_}", missing.join(", ")),
        )
        .hint("boot a kernel with CONFIG_VFIO, CONFIG_VFIO_IOMMU_TYPE1 and CONFIG_VFIO_PCI, and install its modules")
    } else if !not_loaded.is_empty() {
        check(
            "vfio-modules",
            Status::Warn,
            format!(
                "{} not loaded (available in /lib/modules/{kernel})",
                not_loaded.join(", ")
            ),
        )
        .hint("modprobe vfio-pci (vfioctl bind loads it)")
    } else {
        check(
            "vfio-modules",
            Status::Pass,
            "vfio, vfio_iommu_type1, vfio_pci loaded or built in",
        )
    }
}

const GIB: u64 = 1 << 30;

fn memlock_check(h: &HostFacts, vm_memory: Option<u64>) -> Check {
    let id = "memlock";
    let hint = "raise it: `ulimit -l unlimited` in the shell that starts the VM, LimitMEMLOCK=infinity for a systemd service, or run QEMU with CAP_IPC_LOCK";
    match (h.memlock, vm_memory) {
        (None, _) => check(id, Status::Skip, "/proc/self/limits not readable"),
        (Some(None), Some(m)) => check(
            id,
            Status::Pass,
            format!("memlock unlimited: enough for a {} VM", units::short(m)),
        ),
        (Some(None), None) => check(id, Status::Pass, "memlock unlimited"),
        (Some(Some(limit)), Some(m)) => {
            let need = m + GIB;
            if limit >= need {
                check(
                    id,
                    Status::Pass,
                    format!(
                        "memlock limit {} covers a {} VM (RAM + 1G = {})",
                        units::human(limit),
                        units::short(m),
                        units::short(need)
                    ),
                )
            } else {
                check(
                    id,
                    Status::Fail,
                    format!(
                        "memlock limit {} is below the {} a {} VM with VFIO pins (RAM + 1G, libvirt's rule)",
                        units::human(limit),
                        units::short(need),
                        units::short(m)
                    ),
                )
                .hint(hint)
            }
        }
        (Some(Some(limit)), None) => check(
            id,
            Status::Warn,
            format!(
                "memlock limit {}: VFIO pins all guest RAM, a VM needs RAM + 1G (unless QEMU has CAP_IPC_LOCK)",
                units::human(limit)
            ),
        )
        .hint(format!("check against your VM with --vm-memory SIZE; {hint}")),
    }
}

fn hugepages_check(h: &HostFacts, vm_memory: Option<u64>) -> Check {
    let id = "hugepages";
    let total = h.hugepages_2m * (2 << 20) + h.hugepages_1g * GIB;
    let what = format!(
        "{} x 2M + {} x 1G hugepages reserved ({})",
        h.hugepages_2m,
        h.hugepages_1g,
        units::short(total)
    );
    match vm_memory {
        _ if total == 0 => check(
            id,
            Status::Pass,
            format!("{what}: optional; guest RAM uses 4K pages"),
        ),
        Some(m) if total >= m => check(id, Status::Pass, format!("{what}: enough to back a {} VM", units::short(m))),
        Some(m) => check(
            id,
            Status::Warn,
            format!("{what}: not enough to back a {} VM with hugepages (4K pages work, with more IOMMU mappings)", units::short(m)),
        )
        .hint(format!(
            "reserve 1G pages at boot: add hugepagesz=1G hugepages={} to the kernel command line",
            m.div_ceil(GIB)
        )),
        None => check(id, Status::Pass, what),
    }
}

fn driver_kind(d: &PciDevice) -> String {
    match &d.driver {
        Some(drv) if d.is_bridge => format!("{drv}, bridge"),
        Some(drv) => drv.clone(),
        None => "no driver".into(),
    }
}

/// Bar sizes for messages: `BAR1 (64-bit prefetchable, size unknown)`.
fn bar_words(b: &Bar) -> String {
    let kind = if b.io {
        "I/O".to_string()
    } else {
        format!(
            "{}{}",
            if b.is_64bit { "64-bit" } else { "32-bit" },
            if b.prefetchable { " prefetchable" } else { "" }
        )
    };
    let size = b
        .size
        .map(units::short)
        .unwrap_or_else(|| "size unknown".into());
    format!("BAR{} ({kind}, {size})", b.index)
}

/// The checks for one device.
pub fn device_checks(f: &DeviceFacts, host: &HostFacts) -> Vec<Check> {
    let d = &f.dev;
    let v = vec![
        bars_assigned_check(d),
        bars_above_4g_check(d),
        iommu_group_check(f, host),
        boot_vga_check(d),
        reset_check(f),
        driver_check(d),
        sriov_check(d),
        power_check(d),
    ];
    v.into_iter().map(|c| c.on(d.bdf)).collect()
}

/// Every BAR assigned (a resource line for each BAR config space shows).
fn bars_assigned_check(d: &PciDevice) -> Check {
    let unassigned: Vec<&Bar> = d.unassigned_bars().collect();
    if d.bars.is_empty() {
        check("bars-assigned", Status::Skip, "the device has no BARs")
    } else if unassigned.is_empty() {
        let list: Vec<String> = d.bars.iter().map(Bar::summary).collect();
        check(
            "bars-assigned",
            Status::Pass,
            format!("every BAR assigned: {}", list.join(", ")),
        )
    } else {
        let names: Vec<String> = unassigned.iter().map(|b| bar_words(b)).collect();
        let large64 = unassigned.iter().any(|b| b.is_64bit);
        check(
            "bars-assigned",
            Status::Fail,
            format!(
                "{} never assigned: the resource line is empty while config space shows the BAR (firmware left no room for it){}",
                names.join(", "),
                if large64 { "; typical of Above 4G Decoding being off" } else { "" }
            ),
        )
        .hint("enable \"Above 4G Decoding\" (and Resizable BAR if offered) in the firmware setup; or boot with pci=realloc to let Linux place it")
    }
}

/// Large 64-bit BARs above 4 GiB.
fn bars_above_4g_check(d: &PciDevice) -> Check {
    let mem64: Vec<&Bar> = d.bars.iter().filter(|b| b.is_64bit && !b.io).collect();
    let resize_max = |idx: u8| {
        d.resizable_bars
            .iter()
            .find(|r| r.index == idx)
            .and_then(|r| r.sizes.last().copied())
    };
    if mem64.is_empty() {
        return check("bars-above-4g", Status::Skip, "no 64-bit memory BARs");
    }
    let mut low_large = Vec::new();
    let mut notes = Vec::new();
    let mut placed = Vec::new();
    for b in &mem64 {
        if !b.assigned {
            notes.push(format!("BAR{} unassigned (see bars-assigned)", b.index));
            continue;
        }
        let size = b.size.unwrap_or(0);
        let where_ = if b.above_4g { "above 4G" } else { "below 4G" };
        let mut s = format!(
            "BAR{} {} {where_} @{:#x}",
            b.index,
            units::short(size),
            b.start
        );
        if let Some(max) = resize_max(b.index).filter(|m| *m > size) {
            s.push_str(&format!(" (resizable up to {})", units::short(max)));
        }
        if !b.above_4g && size >= GIB {
            low_large.push(s.clone());
        }
        placed.push(s);
    }
    if !low_large.is_empty() {
        check(
            "bars-above-4g",
            Status::Warn,
            format!("large 64-bit BARs below 4 GiB: {}", low_large.join(", ")),
        )
        .hint("enable \"Above 4G Decoding\" in the firmware setup so large BARs move above 4 GiB")
    } else if placed.is_empty() {
        check("bars-above-4g", Status::Skip, notes.join("; "))
    } else {
        let mut msg = placed.join(", ");
        if !notes.is_empty() {
            msg.push_str("; ");
            msg.push_str(&notes.join("; "));
        }
        check("bars-above-4g", Status::Pass, msg)
    }
}

/// IOMMU group viability: every other member is safe to leave with the VM.
fn iommu_group_check(f: &DeviceFacts, host: &HostFacts) -> Check {
    let bdf = f.dev.bdf;
    match f.dev.iommu_group {
        None => {
            let c = check(
                "iommu-group",
                Status::Fail,
                "no IOMMU group: the IOMMU is off, the device cannot be assigned",
            );
            if host.dmar || host.ivrs {
                c.hint("enable the IOMMU in the kernel (see iommu-kernel / iommu-cmdline)")
            } else {
                c.hint("enable VT-d / AMD-Vi in the firmware setup, then the IOMMU in the kernel (see iommu-kernel)")
            }
        }
        Some(g) => {
            let blockers: Vec<&PciDevice> = f.group.iter().filter(|p| !p.is_vfio_safe()).collect();
            let fine: Vec<String> = f
                .group
                .iter()
                .filter(|p| p.is_vfio_safe())
                .map(|p| format!("{} ({})", p.bdf, driver_kind(p)))
                .collect();
            if blockers.is_empty() {
                if f.group.is_empty() {
                    check(
                        "iommu-group",
                        Status::Pass,
                        format!("IOMMU group {g} holds only this device"),
                    )
                } else {
                    check(
                        "iommu-group",
                        Status::Pass,
                        format!(
                            "IOMMU group {g} is viable: the other members are fine ({})",
                            fine.join(", ")
                        ),
                    )
                }
            } else {
                let names: Vec<String> = blockers
                    .iter()
                    .map(|p| {
                        let what = if p.class >> 8 == 0x0403 && p.bdf.slot() == bdf.slot() {
                            "this GPU's HDMI/DP audio function, "
                        } else {
                            ""
                        };
                        format!(
                            "{} ({what}class {:06x}, on {})",
                            p.bdf,
                            p.class,
                            driver_kind(p)
                        )
                    })
                    .collect();
                let mut msg = format!(
                    "IOMMU group {g} is not viable: {} also in the group and bound to a host driver",
                    names.join(", ")
                );
                if !fine.is_empty() {
                    msg.push_str(&format!("; fine: {}", fine.join(", ")));
                }
                let endpoints: Vec<String> = blockers
                    .iter()
                    .filter(|p| !p.is_bridge)
                    .map(|p| p.bdf.to_string())
                    .collect();
                let hint = if endpoints.is_empty() {
                    "a bridge in the group is on a host driver other than pcieport; unbind it or use another slot".to_string()
                } else {
                    format!(
                        "pass the whole group: `vfioctl bind {bdf} {}` moves them all to vfio-pci (or unbind {} from its driver)",
                        endpoints.join(" "),
                        endpoints.join(", ")
                    )
                };
                check("iommu-group", Status::Fail, msg).hint(hint)
            }
        }
    }
}

/// Boot VGA: the host console's framebuffer is on this device.
fn boot_vga_check(d: &PciDevice) -> Check {
    match d.boot_vga {
        Some(true) => check(
            "boot-vga",
            Status::Warn,
            "boot VGA device: the firmware framebuffer (efifb/simpledrm) and the host console use it",
        )
        .hint("give the host console another GPU, or boot with video=efifb:off / initcall_blacklist=sysfb_init; unbinding it blanks the console"),
        Some(false) => check("boot-vga", Status::Pass, "not the boot VGA device (boot_vga=0)"),
        None => check("boot-vga", Status::Pass, "not a VGA-class device (no boot_vga)"),
    }
}

/// Reset: a function-level method, or a bus reset that touches no other device.
fn reset_check(f: &DeviceFacts) -> Check {
    let bdf = f.dev.bdf;
    match &f.dev.reset_methods {
        None => check(
            "reset",
            Status::Fail,
            "no reset method (no reset_method file): the device cannot be reset between VMs",
        )
        .hint("a host reboot is the only reset; for AMD GPUs see vendor-reset (reset_method=device_specific)"),
        Some(m) if m.is_empty() => check("reset", Status::Fail, "reset_method is empty: every reset method is disabled")
            .hint(format!("re-enable: echo default > /sys/bus/pci/devices/{bdf}/reset_method")),
        Some(m) if m.iter().any(|x| x == "flr" || x == "device_specific" || x == "af" || x == "pm") => {
            check("reset", Status::Pass, format!("reset_method: {}", m.join(" ")))
        }
        Some(m) => {
            if f.bus_mates.is_empty() {
                check(
                    "reset",
                    Status::Pass,
                    format!(
                        "reset_method: {} (secondary bus reset; bus {:02x} holds only this slot's functions)",
                        m.join(" "),
                        bdf.bus
                    ),
                )
            } else {
                let mates: Vec<String> = f.bus_mates.iter().map(Bdf::to_string).collect();
                check(
                    "reset",
                    Status::Warn,
                    format!(
                        "reset_method: {} only; a bus reset would also reset {}",
                        m.join(" "),
                        mates.join(", ")
                    ),
                )
                .hint("pass every device on that bus to the same VM, or use a slot of its own")
            }
        }
    }
}

/// The driver in use: none or vfio-pci pass, a host driver warns with the bind command.
fn driver_check(d: &PciDevice) -> Check {
    let bdf = d.bdf;
    let id = "driver";
    match d.driver.as_deref() {
        None => check(id, Status::Pass, "no driver bound: ready for vfio-pci"),
        Some(drv) if is_vfio_driver(drv) || d.vfio_dev => {
            let node = d
                .iommu_group
                .map(|g| format!(" (/dev/vfio/{g})"))
                .unwrap_or_default();
            check(id, Status::Pass, format!("bound to {drv}{node}"))
        }
        Some("nvidia") => check(id, Status::Warn, "bound to nvidia: the host driver holds it")
            .hint(format!(
                "`vfioctl bind {bdf}` moves it to vfio-pci; first stop nvidia-persistenced (nvidia-smi -pm 0) and every process using /dev/nvidia*"
            )),
        Some("nouveau") => check(id, Status::Warn, "bound to nouveau: the host driver holds it")
            .hint(format!(
                "`vfioctl bind {bdf}` moves it to vfio-pci; to keep nouveau off at boot: blacklist nouveau, or `softdep nouveau pre: vfio-pci` with vfio-pci ids in /etc/modprobe.d"
            )),
        Some(drv) => check(id, Status::Warn, format!("bound to the host driver {drv}"))
            .hint(format!("`vfioctl bind {bdf}` moves it to vfio-pci")),
    }
}

/// SR-IOV: enabled VFs keep the PF from being passed whole.
fn sriov_check(d: &PciDevice) -> Check {
    let bdf = d.bdf;
    match &d.sriov {
        None => check("sriov", Status::Skip, "no SR-IOV capability"),
        Some(s) if s.num_vfs == 0 => check(
            "sriov",
            Status::Pass,
            format!("SR-IOV capable ({} VFs), none enabled: the whole function can be passed", s.total_vfs),
        ),
        Some(s) => check(
            "sriov",
            Status::Warn,
            format!("SR-IOV: {} of {} VFs enabled", s.num_vfs, s.total_vfs),
        )
        .hint(format!(
            "pass VFs, or disable them before passing the PF: echo 0 > /sys/bus/pci/devices/{bdf}/sriov_numvfs"
        )),
    }
}

/// Power: a device in D3cold has unreachable config space.
fn power_check(d: &PciDevice) -> Check {
    let bdf = d.bdf;
    match d.power_state.as_deref() {
        Some("D3cold") => check("power", Status::Warn, "in D3cold: config space is unreachable until it wakes")
            .hint(format!(
                "keep it awake: echo on > /sys/bus/pci/devices/{bdf}/power/control, or vfio-pci disable_idle_d3=1"
            )),
        Some(s) => {
            let d3 = match d.d3cold_allowed {
                Some(true) => "; d3cold_allowed=1",
                Some(false) => "; d3cold_allowed=0",
                None => "",
            };
            check("power", Status::Pass, format!("power state {s}{d3}"))
        }
        None => check("power", Status::Skip, "no power_state file (kernel older than 5.19)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::facts::InterruptFacts;
    use std::collections::BTreeSet;
    use std::path::PathBuf;
    use vfioctl_common::pci::{BarKind, Sriov};

    fn good_host() -> HostFacts {
        HostFacts {
            cpu_flags: Some(BTreeSet::from(["vmx".to_string()])),
            cpu_vendor: Some(CpuVendor::Intel),
            dev_kvm: true,
            kvm_usable: None,
            acpi_tables: true,
            dmar: true,
            ivrs: false,
            dmar_intr_remap: Some(true),
            iommu_units: vec!["dmar0".into()],
            iommu_groups: 12,
            cmdline: "ro quiet intel_iommu=on".into(),
            interrupts: Some(InterruptFacts {
                remapped: 10,
                plain: 0,
            }),
            allow_unsafe_interrupts: Some(false),
            kernel: Some("6.1.0-56-amd64".into()),
            modules_dir: true,
            vfio: ModuleState::Loaded,
            vfio_iommu_type1: ModuleState::Loaded,
            vfio_pci: ModuleState::Loaded,
            vhost_vsock_module: ModuleState::Loaded,
            dev_vfio: true,
            dev_vhost_vsock: true,
            memlock: Some(None),
            hugepages_2m: 0,
            hugepages_1g: 0,
        }
    }

    fn status(checks: &[Check], id: &str) -> Status {
        checks.iter().find(|c| c.id == id).unwrap().status
    }

    #[test]
    fn kvm_verdict_follows_the_qemu_probe() {
        let mut h = good_host();
        h.kvm_usable = Some(Err(crate::vm::accel::KvmUnusable::new(
            "failed to set MSR 0x10a",
        )));
        let v = host_checks(&h, None);
        assert_eq!(status(&v, "kvm"), Status::Fail);
        h.kvm_usable = Some(Ok(()));
        assert_eq!(status(&host_checks(&h, None), "kvm"), Status::Pass);
    }

    #[test]
    fn good_host_passes() {
        let c = host_checks(&good_host(), Some(16 * GIB));
        let bad: Vec<_> = c.iter().filter(|c| c.status != Status::Pass).collect();
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn iommu_off_in_firmware() {
        let mut h = good_host();
        h.dmar = false;
        h.iommu_units.clear();
        h.iommu_groups = 0;
        h.cmdline = "ro quiet".into();
        let c = host_checks(&h, None);
        for id in [
            "iommu-firmware",
            "iommu-kernel",
            "iommu-groups",
            "iommu-cmdline",
        ] {
            assert_eq!(status(&c, id), Status::Fail, "{id}");
        }
        let k = c.iter().find(|c| c.id == "iommu-kernel").unwrap();
        let hint = k.hint.as_deref().unwrap();
        assert!(
            hint.contains("VT-d") && hint.contains("intel_iommu=on"),
            "{hint}"
        );
        assert_eq!(status(&c, "interrupt-remapping"), Status::Skip);
    }

    #[test]
    fn cmdline_variants() {
        let mut h = good_host();
        h.cmdline = "ro intel_iommu=off".into();
        assert_eq!(
            status(&host_checks(&h, None), "iommu-cmdline"),
            Status::Fail
        );
        h.cmdline = "ro".into();
        // Kernel enabled it anyway (CONFIG_INTEL_IOMMU_DEFAULT_ON).
        assert_eq!(
            status(&host_checks(&h, None), "iommu-cmdline"),
            Status::Pass
        );
        h.cmdline = "ro intel_iommu=on pcie_acs_override=downstream".into();
        assert_eq!(
            status(&host_checks(&h, None), "iommu-cmdline"),
            Status::Warn
        );
        h.cpu_vendor = Some(CpuVendor::Amd);
        h.cmdline = "ro iommu=pt".into();
        let c = host_checks(&h, None);
        let m = &c.iter().find(|c| c.id == "iommu-cmdline").unwrap().message;
        assert!(m.contains("iommu=pt"), "{m}");
        assert!(has_param(
            "a intel_iommu=on,sm_on b",
            "intel_iommu",
            &["on"]
        ));
        assert!(!has_param("a xintel_iommu=on", "intel_iommu", &["on"]));
    }

    #[test]
    fn interrupt_remapping_off() {
        let mut h = good_host();
        h.interrupts = Some(InterruptFacts {
            remapped: 0,
            plain: 5,
        });
        assert_eq!(
            status(&host_checks(&h, None), "interrupt-remapping"),
            Status::Fail
        );
        h.allow_unsafe_interrupts = Some(true);
        assert_eq!(
            status(&host_checks(&h, None), "interrupt-remapping"),
            Status::Warn
        );
    }

    #[test]
    fn modules_and_nodes() {
        let mut h = good_host();
        h.vfio_pci = ModuleState::Available;
        h.vfio = ModuleState::Available;
        h.dev_vfio = false;
        let c = host_checks(&h, None);
        assert_eq!(status(&c, "vfio-modules"), Status::Warn);
        assert_eq!(status(&c, "dev-vfio"), Status::Warn);
        h.vfio = ModuleState::Missing;
        h.modules_dir = false;
        let c = host_checks(&h, None);
        assert_eq!(status(&c, "vfio-modules"), Status::Fail);
        assert!(c.iter().any(
            |c| c.id == "vfio-modules" && c.message.contains("no /lib/modules/6.1.0-56-amd64")
        ));
        assert_eq!(status(&c, "dev-vfio"), Status::Fail);
        h.dev_vhost_vsock = false;
        assert_eq!(status(&host_checks(&h, None), "vhost-vsock"), Status::Warn);
        h.cpu_flags = Some(BTreeSet::new());
        h.dev_kvm = false;
        let c = host_checks(&h, None);
        assert_eq!(status(&c, "cpu-virt"), Status::Fail);
        assert_eq!(status(&c, "kvm"), Status::Fail);
    }

    #[test]
    fn memlock_rule() {
        let mut h = good_host();
        h.memlock = Some(Some(8 << 20));
        let c = host_checks(&h, Some(16 * GIB));
        let m = c.iter().find(|c| c.id == "memlock").unwrap();
        assert_eq!(m.status, Status::Fail);
        assert!(
            m.message.contains("8M") && m.message.contains("17G"),
            "{}",
            m.message
        );
        assert_eq!(status(&host_checks(&h, None), "memlock"), Status::Warn);
        h.memlock = Some(Some(17 * GIB));
        assert_eq!(
            status(&host_checks(&h, Some(16 * GIB)), "memlock"),
            Status::Pass
        );
        h.memlock = None;
        assert_eq!(status(&host_checks(&h, None), "memlock"), Status::Skip);
    }

    #[test]
    fn hugepages_rule() {
        let mut h = good_host();
        h.hugepages_1g = 8;
        assert_eq!(
            status(&host_checks(&h, Some(16 * GIB)), "hugepages"),
            Status::Warn
        );
        assert_eq!(
            status(&host_checks(&h, Some(8 * GIB)), "hugepages"),
            Status::Pass
        );
        assert_eq!(status(&host_checks(&h, None), "hugepages"), Status::Pass);
    }

    fn bar(index: u8, start: u64, size: Option<u64>, is_64bit: bool, assigned: bool) -> Bar {
        Bar {
            index,
            start,
            size,
            kind: if is_64bit {
                BarKind::Mem64
            } else {
                BarKind::Mem32
            },
            is_64bit,
            prefetchable: is_64bit,
            io: false,
            assigned,
            above_4g: assigned && start > 0xffff_ffff,
            flags: 0,
        }
    }

    fn gpu(bdf: &str) -> PciDevice {
        PciDevice {
            bdf: bdf.parse().unwrap(),
            vendor: 0x10de,
            device: 0x2206,
            subsystem_vendor: None,
            subsystem_device: None,
            class: 0x030000,
            revision: None,
            driver: None,
            driver_override: None,
            iommu_group: Some(1),
            iommu_group_peers: vec![],
            parents: vec![],
            sysfs_path: PathBuf::new(),
            is_pcie: true,
            is_bridge: false,
            multifunction: true,
            link: None,
            numa_node: None,
            reset_methods: Some(vec!["flr".into()]),
            boot_vga: Some(false),
            sriov: None,
            power_state: Some("D0".into()),
            d3cold_allowed: Some(true),
            resizable_bars: vec![],
            bars: vec![
                bar(0, 0xf600_0000, Some(16 << 20), false, true),
                bar(1, 0x40_0000_0000, Some(16 * GIB), true, true),
            ],
            vfio_dev: false,
            consumers: vec![],
        }
    }

    fn facts(dev: PciDevice) -> DeviceFacts {
        DeviceFacts {
            dev,
            group: vec![],
            bus_mates: vec![],
        }
    }

    fn dstatus(f: &DeviceFacts, id: &str) -> Check {
        device_checks(f, &good_host())
            .into_iter()
            .find(|c| c.id == id)
            .unwrap()
    }

    #[test]
    fn good_gpu_passes() {
        let f = facts(gpu("0000:01:00.0"));
        let c = device_checks(&f, &good_host());
        assert!(c.iter().all(|c| c.device == Some(f.dev.bdf)));
        let bad: Vec<_> = c
            .iter()
            .filter(|c| !matches!(c.status, Status::Pass | Status::Skip))
            .collect();
        assert!(bad.is_empty(), "{bad:#?}");
    }

    #[test]
    fn unassigned_and_low_bars() {
        let mut d = gpu("0000:01:00.0");
        d.bars[1] = bar(1, 0, None, true, false);
        let f = facts(d);
        let c = dstatus(&f, "bars-assigned");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.message
                .contains("BAR1 (64-bit prefetchable, size unknown)"),
            "{}",
            c.message
        );
        assert!(c.hint.unwrap().contains("Above 4G Decoding"));
        assert_eq!(dstatus(&f, "bars-above-4g").status, Status::Skip);

        let mut d = gpu("0000:01:00.0");
        d.bars[1] = bar(1, 0xc000_0000, Some(GIB), true, true);
        assert_eq!(
            dstatus(&facts(d.clone()), "bars-above-4g").status,
            Status::Warn
        );
        d.bars[1] = bar(1, 0xe000_0000, Some(256 << 20), true, true);
        d.resizable_bars = vec![vfioctl_common::pci::ResizableBar {
            index: 1,
            sizes: vec![256 << 20, 16 * GIB],
        }];
        let c = dstatus(&facts(d), "bars-above-4g");
        assert_eq!(c.status, Status::Pass);
        assert!(c.message.contains("resizable up to 16G"), "{}", c.message);
    }

    #[test]
    fn group_with_hda_fails_and_bridge_is_fine() {
        let mut hda = gpu("0000:01:00.1");
        hda.class = 0x040300;
        hda.driver = Some("snd_hda_intel".into());
        let mut rp = gpu("0000:00:01.0");
        rp.is_bridge = true;
        rp.class = 0x060400;
        rp.driver = Some("pcieport".into());
        let mut f = facts(gpu("0000:01:00.0"));
        f.group = vec![rp.clone(), hda.clone()];
        let c = dstatus(&f, "iommu-group");
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.message.contains(
                "0000:01:00.1 (this GPU's HDMI/DP audio function, class 040300, on snd_hda_intel)"
            ),
            "{}",
            c.message
        );
        assert!(
            c.message.contains("fine: 0000:00:01.0 (pcieport, bridge)"),
            "{}",
            c.message
        );
        assert_eq!(
            c.hint.as_deref(),
            Some("pass the whole group: `vfioctl bind 0000:01:00.0 0000:01:00.1` moves them all to vfio-pci (or unbind 0000:01:00.1 from its driver)")
        );
        hda.driver = Some("vfio-pci".into());
        f.group = vec![rp, hda];
        assert_eq!(dstatus(&f, "iommu-group").status, Status::Pass);
        let mut d = gpu("0000:01:00.0");
        d.iommu_group = None;
        assert_eq!(dstatus(&facts(d), "iommu-group").status, Status::Fail);
    }

    #[test]
    fn boot_vga_reset_driver_sriov_power() {
        let mut d = gpu("0000:01:00.0");
        d.boot_vga = Some(true);
        d.reset_methods = Some(vec!["bus".into()]);
        d.driver = Some("nouveau".into());
        d.sriov = Some(Sriov {
            total_vfs: 16,
            num_vfs: 4,
        });
        d.power_state = Some("D3cold".into());
        let mut f = facts(d);
        assert_eq!(dstatus(&f, "boot-vga").status, Status::Warn);
        assert_eq!(dstatus(&f, "reset").status, Status::Pass);
        f.bus_mates = vec!["0000:01:01.0".parse().unwrap()];
        let r = dstatus(&f, "reset");
        assert_eq!(r.status, Status::Warn);
        assert!(r.message.contains("0000:01:01.0"));
        let drv = dstatus(&f, "driver");
        assert_eq!(drv.status, Status::Warn);
        assert!(drv.hint.unwrap().contains("blacklist nouveau"));
        assert_eq!(dstatus(&f, "sriov").status, Status::Warn);
        assert_eq!(dstatus(&f, "power").status, Status::Warn);
        f.dev.reset_methods = None;
        assert_eq!(dstatus(&f, "reset").status, Status::Fail);
        f.dev.driver = Some("nvidia".into());
        assert!(dstatus(&f, "driver")
            .hint
            .unwrap()
            .contains("nvidia-persistenced"));
        f.dev.driver = Some("vfio-pci".into());
        assert_eq!(
            dstatus(&f, "driver").message,
            "bound to vfio-pci (/dev/vfio/1)"
        );
    }
}
