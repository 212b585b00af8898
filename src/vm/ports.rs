//! Root ports sized from the device: how big each `pcie-root-port`'s windows must be so
//! that the guest firmware reserves room for a device hot-plugged later, and what the
//! machine needs around them (`pci-hole64-size`, OVMF's `X-PciMmio64Mb`, CPU phys-bits).
//!
//! Pure functions over plain data: [`DeviceBars`] in (from a host `PciDevice` or an
//! emulated stand-in's declared size), a [`PortPlan`] out, with the reasoning in words so
//! that `vfioctl vm plan` can print it and the Kata helper can reuse it.
//!
//! The rules (measured on QEMU 7.2, SeaBIOS 1.16.2, OVMF 2022.11; see
//! shared/notes/qemu-qmp.md §2):
//! - An empty hot-plug port gets only the firmware default windows: SeaBIOS 2 MiB 32-bit
//!   prefetchable, OVMF no prefetchable window at all. A large BAR hot-plugged there gets
//!   `can't assign; no space`. The fix is QEMU's resource-reservation capability:
//!   `pref64-reserve` (64-bit prefetchable), `mem-reserve` (32-bit non-prefetchable).
//! - OVMF rounds each reservation up to a power of two and aligns it naturally, so the
//!   reserve is the next power of two of the function's 64-bit prefetchable BARs.
//! - SeaBIOS does not align the window to its size: it needs about twice the BAR (a
//!   32 GiB BAR failed in a 32 GiB window at 4 GiB and fit in a 64 GiB one) and
//!   `q35-pcihost.pci-hole64-size` large enough for every reserve (default 32 GiB).
//! - OVMF (2022.11+) places a dynamic 64-bit MMIO window of 1/8 of the physical address
//!   space (phys-bits clamped to 46); when the reserves do not fit, raise phys-bits where
//!   the CPU model allows it, else ask for a larger window with
//!   `-fw_cfg opt/ovmf/X-PciMmio64Mb` (classic placement: aligned to its size above RAM).
//! - `io-reserve=0`: PCIe GPUs work without I/O space, and the 64 KiB I/O space would
//!   otherwise run out after ~14 ports. Every (chassis, slot) is unique; every PCIe
//!   function gets its own port (function 0 of a port is the only one the guest scans
//!   behind a root port unless the device is plugged as multifunction).

use serde::{Deserialize, Serialize};
use vfioctl_common::units;
use vfioctl_common::{Bdf, PciDevice};

const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

/// Guest firmware.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Firmware {
    /// SeaBIOS (QEMU's default; direct kernel boot).
    Seabios,
    /// OVMF (UEFI, /usr/share/OVMF/OVMF_CODE.fd): aligned windows, the better choice for
    /// GPUs with very large BARs.
    Ovmf,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Seabios => "seabios",
            Firmware::Ovmf => "ovmf",
        })
    }
}

/// The BARs of one PCI function, as far as root-port sizing cares.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct DeviceBars {
    /// What the user named: `0000:41:00.0` or `emulated:8G`.
    pub label: String,
    /// Host address for a VFIO device.
    pub bdf: Option<Bdf>,
    /// Sizes of 64-bit prefetchable memory BARs.
    pub pref64: Vec<u64>,
    /// Sizes of the other memory BARs (32-bit, or 64-bit non-prefetchable): they go in
    /// the port's non-prefetchable window below 4 GiB.
    pub mem32: Vec<u64>,
    /// Sizes of I/O BARs (left unassigned: `io-reserve=0`).
    pub io: Vec<u64>,
}

impl DeviceBars {
    /// From a host device read through sysfs. BARs whose size is unknown (never assigned
    /// on the host) are left out and the caller is told in the plan's reasons.
    pub fn from_pci(dev: &PciDevice) -> Self {
        let mut out = DeviceBars {
            label: dev.bdf.to_string(),
            bdf: Some(dev.bdf),
            pref64: Vec::new(),
            mem32: Vec::new(),
            io: Vec::new(),
        };
        for b in &dev.bars {
            let Some(size) = b.size else { continue };
            if b.io {
                out.io.push(size);
            } else if b.is_64bit && b.prefetchable {
                out.pref64.push(size);
            } else {
                out.mem32.push(size);
            }
        }
        out
    }

    /// The lab's GPU stand-in, `ivshmem-plain` on a RAM backend of `size` bytes: BAR0 is
    /// 256 bytes of 32-bit registers, BAR2 the shared memory as a 64-bit prefetchable BAR.
    pub fn emulated(size: u64) -> Self {
        DeviceBars {
            label: format!("emulated:{}", units::short(size)),
            bdf: None,
            pref64: vec![size],
            mem32: vec![256],
            io: Vec::new(),
        }
    }

    /// Sum of the 64-bit prefetchable BAR sizes, in bytes.
    pub fn pref64_total(&self) -> u64 {
        self.pref64.iter().sum()
    }
    /// Sum of the 32-bit memory BAR sizes, in bytes.
    pub fn mem32_total(&self) -> u64 {
        self.mem32.iter().sum()
    }
}

/// The CPU's physical address width as the guest will see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PhysBits {
    /// Bits the guest gets by default (`-cpu host`: the host's; `qemu64`: 40).
    pub bits: u8,
    /// Highest value vfioctl may set with `phys-bits=` (TCG: 52); `None` when fixed
    /// (KVM `-cpu host` uses the host's width, and going above it breaks DMA).
    pub max: Option<u8>,
}

impl PhysBits {
    /// TCG with a named model: 40 by default, adjustable.
    pub const TCG: PhysBits = PhysBits {
        bits: 40,
        max: Some(52),
    };
    /// KVM `-cpu host` on a host with `bits` physical address bits.
    pub fn host(bits: u8) -> Self {
        PhysBits { bits, max: None }
    }
}

/// One planned `pcie-root-port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct PortPlan {
    /// QEMU id and bus name for `device_add ... bus=`: `rp0`, `rp1`, ...
    pub id: String,
    /// PCIe `chassis=` number; (chassis, slot) is unique per port.
    pub chassis: u8,
    /// PCIe `slot=` number.
    pub slot: u16,
    /// Address on pcie.0: eight ports share one slot as functions 0-7.
    pub addr: String,
    /// `multifunction=on`: set on function 0 of a slot that holds more ports.
    pub multifunction: bool,
    /// `pref64-reserve` in bytes; `None` leaves the firmware default.
    pub pref64_reserve: Option<u64>,
    /// `mem-reserve` in bytes; `None` leaves the firmware default.
    pub mem_reserve: Option<u64>,
    /// `io-reserve` in bytes (0: GPU ports need no I/O space, which runs out otherwise).
    pub io_reserve: u64,
    /// The device this port was sized for (`None`: a plain spare port).
    pub sized_for: Option<String>,
    /// Largest 64-bit prefetchable total a device may have to fit this port.
    pub fits_pref64: u64,
}

impl PortPlan {
    /// The `-device` value for QEMU.
    pub fn qemu_device(&self) -> String {
        let mut s = format!(
            "pcie-root-port,id={},bus=pcie.0,addr={},chassis={},slot={},io-reserve={}",
            self.id, self.addr, self.chassis, self.slot, self.io_reserve
        );
        if self.multifunction {
            s.push_str(",multifunction=on");
        }
        if let Some(m) = self.mem_reserve {
            s.push_str(&format!(",mem-reserve={}", units::short(m)));
        }
        if let Some(p) = self.pref64_reserve {
            s.push_str(&format!(",pref64-reserve={}", units::short(p)));
        }
        s
    }
}

/// Ports plus what the machine needs around them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Plan {
    /// The firmware the plan was made for (its window rules differ).
    pub firmware: Firmware,
    /// The root ports, in order (`rp0`, `rp1`, ...).
    pub ports: Vec<PortPlan>,
    /// `-global q35-pcihost.pci-hole64-size=` (SeaBIOS), when above QEMU's 32 GiB default.
    pub pci_hole64_size: Option<u64>,
    /// `-fw_cfg name=opt/ovmf/X-PciMmio64Mb,string=` (OVMF), in MiB.
    pub ovmf_mmio64_mb: Option<u64>,
    /// `phys-bits=` to set on a named CPU model; `None`: the default is enough.
    pub phys_bits: Option<u8>,
    /// The 64-bit MMIO window the reserves need, in bytes.
    pub window64: u64,
    /// Why each number is what it is, in order.
    pub reasons: Vec<String>,
}

/// The plan cannot be met.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The 64-bit MMIO window needs more physical address bits than the guest CPU has
    /// and vfioctl may give it.
    #[error("the 64-bit MMIO window for these devices needs {need} physical address bits, but the guest CPU has {have}{}", if *fixed { " (host width, fixed under KVM)" } else { " and vfioctl may not go higher" })]
    WindowTooLarge {
        /// Physical address bits the window needs.
        need: u8,
        /// Physical address bits the guest CPU has by default.
        have: u8,
        /// The width is the host's and cannot be raised (KVM `-cpu host`).
        fixed: bool,
    },
    /// More root ports than vfioctl supports.
    #[error(
        "{ports} root ports requested: at most {max} (QEMU/Kata limit, and the 64 KiB I/O space)"
    )]
    TooManyPorts {
        /// The number of ports requested.
        ports: usize,
        /// The most allowed ([`MAX_PORTS`]).
        max: usize,
    },
}

impl crate::Diagnose for PlanError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            PlanError::WindowTooLarge { fixed: true, .. } => "use a host with more physical address bits, or plug fewer/smaller GPUs; with SeaBIOS try --firmware ovmf".into(),
            PlanError::WindowTooLarge { .. } => "use --firmware ovmf (aligned windows need about half the space) or fewer GPU ports".into(),
            PlanError::TooManyPorts { .. } => "use fewer --gpu devices or a smaller gpu_ports".into(),
        })
    }
    fn exit(&self) -> crate::Exit {
        crate::Exit::Usage
    }
}

/// At most this many GPU root ports (Kata's `maxPCIeRootPorts`, and I/O space).
pub const MAX_PORTS: usize = 16;
/// Slot on pcie.0 where GPU ports start (8 ports per slot as functions).
pub const FIRST_PORT_SLOT: u8 = 0x10;

fn pow2(x: u64) -> u64 {
    x.max(1).next_power_of_two()
}

fn bits_for(end: u64) -> u8 {
    // Smallest n with 2^n >= end.
    (64 - (end.max(1) - 1).leading_zeros()) as u8
}

/// Where RAM ends in the guest physical map on q35: RAM up to 2 GiB (or all of it when
/// below 2.75 GiB) sits below 4 GiB, the rest from 4 GiB up.
pub fn q35_ram_top(memory: u64) -> u64 {
    let low = if memory >= 0xb000_0000 {
        2 * GIB
    } else {
        memory
    };
    4 * GIB + (memory - low)
}

/// Size the ports for `devices` (one port per function, in order), plus `spare` plain
/// ports, for a guest with `memory` bytes of RAM.
pub fn plan(
    devices: &[DeviceBars],
    spare: usize,
    firmware: Firmware,
    memory: u64,
    cpu: PhysBits,
) -> Result<Plan, PlanError> {
    let n = devices.len() + spare;
    if n > MAX_PORTS {
        return Err(PlanError::TooManyPorts {
            ports: n,
            max: MAX_PORTS,
        });
    }
    let mut reasons = Vec::new();
    let mut ports = Vec::new();
    for i in 0..n {
        let slot_fn = (i % 8) as u8;
        let id = format!("rp{i}");
        let mut p = PortPlan {
            id: id.clone(),
            chassis: 1,
            slot: i as u16 + 1,
            addr: format!("{:#04x}.{}", FIRST_PORT_SLOT + (i / 8) as u8, slot_fn),
            multifunction: slot_fn == 0 && i + 1 < n && (i / 8) == ((i + 1) / 8),
            pref64_reserve: None,
            mem_reserve: None,
            io_reserve: 0,
            sized_for: None,
            fits_pref64: 0,
        };
        if let Some(d) = devices.get(i) {
            let pref = d.pref64_total();
            let mem = d.mem32_total();
            let list = |v: &[u64]| {
                v.iter()
                    .map(|s| units::human(*s))
                    .collect::<Vec<_>>()
                    .join(" + ")
            };
            let (pref_res, mem_res) = match firmware {
                Firmware::Ovmf => (pow2(pref), pow2(mem).max(2 * MIB)),
                Firmware::Seabios => (2 * pow2(pref), (2 * pow2(mem)).max(2 * MIB)),
            };
            if pref > 0 {
                p.pref64_reserve = Some(pref_res);
                p.fits_pref64 = match firmware {
                    Firmware::Ovmf => pref_res,
                    Firmware::Seabios => pref_res / 2,
                };
                reasons.push(match firmware {
                    Firmware::Ovmf => format!(
                        "{id} for {}: 64-bit prefetchable BARs {} = {}; OVMF rounds to a power of two and aligns: pref64-reserve={}",
                        d.label, list(&d.pref64), units::human(pref), units::short(pref_res)
                    ),
                    Firmware::Seabios => format!(
                        "{id} for {}: 64-bit prefetchable BARs {} = {}; SeaBIOS does not align the window to its size, so twice the next power of two: pref64-reserve={}",
                        d.label, list(&d.pref64), units::human(pref), units::short(pref_res)
                    ),
                });
            } else {
                reasons.push(format!(
                    "{id} for {}: no 64-bit prefetchable BARs, no pref64-reserve",
                    d.label
                ));
            }
            p.mem_reserve = Some(mem_res);
            reasons.push(format!(
                "{id}: other memory BARs {} -> mem-reserve={} (at least 2M, the firmware default)",
                if d.mem32.is_empty() {
                    "none".to_string()
                } else {
                    list(&d.mem32)
                },
                units::short(mem_res)
            ));
            if !d.io.is_empty() {
                reasons.push(format!(
                    "{id}: I/O BARs ({}) stay unassigned with io-reserve=0; GPU drivers do not use them and I/O space fits only ~14 ports",
                    list(&d.io)
                ));
            }
            p.sized_for = Some(d.label.clone());
        } else {
            reasons.push(format!(
                "{id}: spare port without a declared device: firmware default windows ({}); a large BAR plugged here gets `no space`",
                match firmware {
                    Firmware::Seabios => "SeaBIOS: 2M 32-bit prefetchable",
                    Firmware::Ovmf => "OVMF: no prefetchable window",
                }
            ));
        }
        ports.push(p);
    }
    reasons.push(
        "each port: unique chassis/slot, io-reserve=0, eight ports per pcie.0 slot as functions"
            .into(),
    );

    // The 64-bit window: the power-of-two reserves pack without holes when placed
    // largest first, so their sum, rounded up to a power of two, is enough.
    let sum: u64 = ports.iter().filter_map(|p| p.pref64_reserve).sum();
    let ram_top = q35_ram_top(memory);
    let mut out = Plan {
        firmware,
        ports,
        pci_hole64_size: None,
        ovmf_mmio64_mb: None,
        phys_bits: None,
        window64: 0,
        reasons,
    };
    if sum == 0 {
        return Ok(out);
    }
    let need_bits;
    match firmware {
        Firmware::Seabios => {
            let hole = (2 * pow2(sum)).max(32 * GIB);
            out.window64 = hole;
            if hole > 32 * GIB {
                out.pci_hole64_size = Some(hole);
                out.reasons.push(format!(
                    "reserves total {}; SeaBIOS places them inside QEMU's pci-hole64 from the top of RAM ({}): pci-hole64-size={} (twice the next power of two, default 32G)",
                    units::short(sum), units::human(ram_top), units::short(hole)
                ));
            } else {
                out.reasons.push(format!(
                    "reserves total {}: they fit QEMU's default 32G pci-hole64",
                    units::short(sum)
                ));
            }
            need_bits = bits_for(ram_top + hole);
        }
        Firmware::Ovmf => {
            let w = pow2(sum);
            out.window64 = w;
            let dynamic = |bits: u8| 1u64 << (bits.min(46) - 3);
            if w <= dynamic(cpu.bits) {
                out.reasons.push(format!(
                    "reserves total {}: OVMF's dynamic 64-bit window with {} phys-bits is {} (1/8 of the address space): fits",
                    units::short(sum), cpu.bits, units::short(dynamic(cpu.bits))
                ));
                return Ok(out);
            }
            // Raise phys-bits where the CPU model allows it.
            if let Some(max) = cpu.max {
                if let Some(b) = (cpu.bits + 1..=max.min(46)).find(|b| w <= dynamic(*b)) {
                    out.phys_bits = Some(b);
                    out.reasons.push(format!(
                        "reserves total {}: more than OVMF's dynamic window at {} phys-bits ({}); phys-bits={b} gives {}",
                        units::short(sum), cpu.bits, units::short(dynamic(cpu.bits)), units::short(dynamic(b))
                    ));
                    return Ok(out);
                }
            }
            out.ovmf_mmio64_mb = Some(w / MIB);
            let base = ram_top.div_ceil(GIB) * GIB;
            let base = base.div_ceil(w) * w;
            out.reasons.push(format!(
                "reserves total {}: more than OVMF's dynamic window ({}); X-PciMmio64Mb={} asks for a {} window, placed aligned at {}",
                units::short(sum), units::short(dynamic(cpu.bits)), w / MIB, units::short(w), units::human(base)
            ));
            need_bits = bits_for(base + w);
        }
    }
    if need_bits > cpu.bits {
        match cpu.max {
            Some(max) if need_bits <= max => {
                out.phys_bits = Some(need_bits);
                out.reasons.push(format!(
                    "the window ends beyond 2^{} (the CPU model's default): phys-bits={need_bits}",
                    cpu.bits
                ));
            }
            _ => {
                return Err(PlanError::WindowTooLarge {
                    need: need_bits,
                    have: cpu.bits,
                    fixed: cpu.max.is_none(),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    const KIB: u64 = 1 << 10;

    fn gpu(label: &str, pref: &[u64], mem: &[u64]) -> DeviceBars {
        DeviceBars {
            label: label.into(),
            bdf: label.parse().ok(),
            pref64: pref.to_vec(),
            mem32: mem.to_vec(),
            io: vec![128],
        }
    }

    #[test]
    fn bar_16m_and_256m() {
        // A small GPU: 16M BAR0 registers, 256M BAR1 + 32M BAR3 prefetchable.
        let d = gpu("0000:01:00.0", &[256 * MIB, 32 * MIB], &[16 * MIB]);
        let p = plan(
            std::slice::from_ref(&d),
            0,
            Firmware::Ovmf,
            GIB,
            PhysBits::TCG,
        )
        .unwrap();
        let rp = &p.ports[0];
        assert_eq!(rp.pref64_reserve, Some(512 * MIB));
        assert_eq!(rp.mem_reserve, Some(16 * MIB));
        assert_eq!(rp.io_reserve, 0);
        assert_eq!(
            (p.ovmf_mmio64_mb, p.phys_bits, p.pci_hole64_size),
            (None, None, None)
        );
        let s = plan(&[d], 0, Firmware::Seabios, GIB, PhysBits::TCG).unwrap();
        assert_eq!(s.ports[0].pref64_reserve, Some(GIB));
        assert_eq!(s.ports[0].mem_reserve, Some(32 * MIB));
        assert_eq!(s.pci_hole64_size, None);
        // 16M alone (a BAR0-only device) gets a mem window and no pref window.
        let r = plan(
            &[gpu("0000:02:00.0", &[], &[16 * MIB])],
            0,
            Firmware::Ovmf,
            GIB,
            PhysBits::TCG,
        )
        .unwrap();
        assert_eq!(r.ports[0].pref64_reserve, None);
        assert_eq!(r.ports[0].mem_reserve, Some(16 * MIB));
    }

    #[test]
    fn bar_8g_stand_in_matches_the_lab_measurement() {
        let p = plan(
            &[DeviceBars::emulated(8 * GIB)],
            1,
            Firmware::Seabios,
            GIB,
            PhysBits::TCG,
        )
        .unwrap();
        assert_eq!(p.ports[0].pref64_reserve, Some(16 * GIB));
        assert_eq!(p.ports[0].mem_reserve, Some(2 * MIB));
        assert_eq!(p.ports[0].fits_pref64, 8 * GIB);
        assert_eq!(p.pci_hole64_size, None, "16G fits the default 32G hole");
        assert_eq!(p.ports[1].pref64_reserve, None);
        assert_eq!(
            p.ports[0].qemu_device(),
            "pcie-root-port,id=rp0,bus=pcie.0,addr=0x10.0,chassis=1,slot=1,io-reserve=0,multifunction=on,mem-reserve=2M,pref64-reserve=16G"
        );
        assert_eq!(
            p.ports[1].qemu_device(),
            "pcie-root-port,id=rp1,bus=pcie.0,addr=0x10.1,chassis=1,slot=2,io-reserve=0"
        );
    }

    #[test]
    fn bar_32g() {
        // Measured: SeaBIOS needs pref64-reserve=64G and pci-hole64-size=128G for a 32G BAR.
        let d = gpu("0000:41:00.0", &[32 * GIB], &[16 * MIB]);
        let s = plan(
            std::slice::from_ref(&d),
            0,
            Firmware::Seabios,
            GIB,
            PhysBits::TCG,
        )
        .unwrap();
        assert_eq!(s.ports[0].pref64_reserve, Some(64 * GIB));
        assert_eq!(s.pci_hole64_size, Some(128 * GIB));
        assert_eq!(s.phys_bits, None);
        // OVMF: 32G in the 128G dynamic window of a 40-bit CPU (assigned at 0xE0_0000_0000).
        let o = plan(&[d], 0, Firmware::Ovmf, GIB, PhysBits::TCG).unwrap();
        assert_eq!(o.ports[0].pref64_reserve, Some(32 * GIB));
        assert_eq!((o.ovmf_mmio64_mb, o.phys_bits), (None, None));
    }

    #[test]
    fn bar_128g_with_the_nvidia_bar3() {
        let d = gpu("0000:41:00.0", &[128 * GIB, 32 * MIB], &[16 * MIB]);
        // TCG: 128G+32M -> 256G reserve, more than 40 bits' 128G window: raise phys-bits.
        let o = plan(
            std::slice::from_ref(&d),
            0,
            Firmware::Ovmf,
            GIB,
            PhysBits::TCG,
        )
        .unwrap();
        assert_eq!(o.ports[0].pref64_reserve, Some(256 * GIB));
        assert_eq!(o.phys_bits, Some(41), "2^41 / 8 = 256G");
        assert_eq!(o.ovmf_mmio64_mb, None);
        // KVM on a 40-bit host: fixed width, so X-PciMmio64Mb; 256G aligned at 256G ends at 512G.
        let k = plan(
            std::slice::from_ref(&d),
            0,
            Firmware::Ovmf,
            GIB,
            PhysBits::host(40),
        )
        .unwrap();
        assert_eq!(k.ovmf_mmio64_mb, Some(256 * 1024));
        assert_eq!(k.phys_bits, None);
        // On a 38-bit host the aligned window ends at 512G > 2^38: refused up front.
        let e = plan(
            std::slice::from_ref(&d),
            0,
            Firmware::Ovmf,
            GIB,
            PhysBits::host(38),
        )
        .unwrap_err();
        assert_eq!(
            e,
            PlanError::WindowTooLarge {
                need: 39,
                have: 38,
                fixed: true
            }
        );
        // A 46-bit host: the dynamic window (8T) holds it.
        let big = plan(
            std::slice::from_ref(&d),
            0,
            Firmware::Ovmf,
            GIB,
            PhysBits::host(46),
        )
        .unwrap();
        assert_eq!((big.ovmf_mmio64_mb, big.phys_bits), (None, None));
        // SeaBIOS: 512G reserve, 1T hole: needs 41 bits.
        let s = plan(&[d], 0, Firmware::Seabios, GIB, PhysBits::TCG).unwrap();
        assert_eq!(s.ports[0].pref64_reserve, Some(512 * GIB));
        assert_eq!(s.pci_hole64_size, Some(1024 * GIB));
        assert_eq!(s.phys_bits, Some(41));
    }

    #[test]
    fn multi_gpu_host_one_port_per_function() {
        // Four 32G GPUs, each with an HDA function (16K BAR0).
        let mut devs = Vec::new();
        for bus in [0x41, 0x61, 0x81, 0xa1] {
            devs.push(gpu(
                &format!("0000:{bus:02x}:00.0"),
                &[32 * GIB, 32 * MIB],
                &[16 * MIB],
            ));
            devs.push(gpu(&format!("0000:{bus:02x}:00.1"), &[], &[16 * KIB]));
        }
        let o = plan(&devs, 2, Firmware::Ovmf, 16 * GIB, PhysBits::host(46)).unwrap();
        assert_eq!(o.ports.len(), 10);
        let mut pairs: Vec<_> = o.ports.iter().map(|p| (p.chassis, p.slot)).collect();
        pairs.sort();
        pairs.dedup();
        assert_eq!(pairs.len(), 10, "chassis/slot unique");
        assert_eq!(o.ports[8].addr, "0x11.0");
        assert!(o.ports[0].multifunction && !o.ports[1].multifunction && o.ports[8].multifunction);
        assert!(!o.ports[9].multifunction);
        assert_eq!(o.ports[0].pref64_reserve, Some(64 * GIB));
        assert_eq!(o.ports[1].pref64_reserve, None);
        assert_eq!(o.window64, 256 * GIB);
        assert_eq!(o.ovmf_mmio64_mb, None, "46 bits: 8T dynamic window");
        // Same host on a 40-bit KVM CPU: X-PciMmio64Mb=256G, window at 256G..512G.
        let k = plan(&devs, 0, Firmware::Ovmf, 16 * GIB, PhysBits::host(40)).unwrap();
        assert_eq!(k.ovmf_mmio64_mb, Some(262144));
        // SeaBIOS: 4 x 128G reserves, 1T hole above 18G of RAM top: 41 bits, fixed 40: refused.
        let e = plan(&devs, 0, Firmware::Seabios, 16 * GIB, PhysBits::host(40)).unwrap_err();
        assert!(matches!(
            e,
            PlanError::WindowTooLarge {
                need: 41,
                have: 40,
                fixed: true
            }
        ));
        assert!(
            plan(&devs, 9, Firmware::Ovmf, GIB, PhysBits::TCG).is_err(),
            "17 ports"
        );
    }

    #[test]
    fn from_pci_splits_bars() {
        use vfioctl_common::{Bar, BarKind};
        let bar = |index, size, kind, is_64bit, prefetchable, io| Bar {
            index,
            start: 0,
            size: Some(size),
            kind,
            is_64bit,
            prefetchable,
            io,
            assigned: true,
            above_4g: false,
            flags: 0,
        };
        let bars = vec![
            bar(0, 16 * MIB, BarKind::Mem32, false, false, false),
            bar(1, 32 * GIB, BarKind::Mem64, true, true, false),
            bar(3, 32 * MIB, BarKind::Mem64, true, true, false),
            bar(5, 128, BarKind::Io, false, false, true),
        ];
        let json = serde_json::json!({
            "bdf": "0000:41:00.0", "vendor": 0x10de, "device": 0x2330, "subsystem_vendor": null,
            "subsystem_device": null, "class": 0x030200, "revision": null, "driver": "vfio-pci",
            "driver_override": null, "iommu_group": 40, "iommu_group_peers": [], "parents": [],
            "sysfs_path": "/sys/devices/pci0000:40/0000:40:01.1/0000:41:00.0", "is_pcie": true,
            "is_bridge": false, "multifunction": false, "link": null, "numa_node": null,
            "reset_methods": null, "boot_vga": null, "sriov": null, "power_state": null,
            "d3cold_allowed": null, "resizable_bars": [], "bars": bars, "vfio_dev": true, "consumers": []
        });
        let dev: PciDevice = serde_json::from_value(json).unwrap();
        let d = DeviceBars::from_pci(&dev);
        assert_eq!(d.pref64, vec![32 * GIB, 32 * MIB]);
        assert_eq!(d.mem32, vec![16 * MIB]);
        assert_eq!(d.io, vec![128]);
    }

    #[test]
    fn helpers() {
        assert_eq!(bits_for(1 << 40), 40);
        assert_eq!(bits_for((1 << 40) + 1), 41);
        assert_eq!(q35_ram_top(GIB), 4 * GIB);
        assert_eq!(q35_ram_top(16 * GIB), 18 * GIB);
    }
}
