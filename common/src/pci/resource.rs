//! The `/sys/bus/pci/devices/<bdf>/resource` file and the BARs it describes.
//!
//! One line per resource, `"0x%016llx 0x%016llx 0x%016llx\n"`: start, end, flags. Lines
//! 0-5 are BAR0-BAR5, 6 the expansion ROM, 7-12 SR-IOV VF BARs, 13-16 bridge windows.
//! A 64-bit BAR takes two registers; the line of its upper half is all zeros.

use serde::{Deserialize, Serialize};

use super::flags;

/// One parsed line of `resource`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ResourceLine {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub end: u64,
    /// `IORESOURCE_*` flags ([`crate::pci::flags`]).
    pub flags: u64,
}

impl ResourceLine {
    /// All three fields 0: no resource.
    pub fn is_zero(&self) -> bool {
        self.start == 0 && self.end == 0 && self.flags == 0
    }
    /// `end - start + 1`; 0 for an empty line, an inverted range, or a range of 2^64
    /// bytes (`0x0 0xffffffffffffffff`), which no address space holds.
    pub fn size(&self) -> u64 {
        if self.start == 0 && self.end == 0 {
            return 0;
        }
        self.end
            .checked_sub(self.start)
            .and_then(|d| d.checked_add(1))
            .unwrap_or(0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason} in {text:?}")]
/// A `resource` line that does not parse.
pub struct ResourceParseError {
    /// Line number (1-based).
    pub line: usize,
    /// The line as read.
    pub text: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn hex64(s: &str) -> Option<u64> {
    let h = s.strip_prefix("0x")?;
    if h.is_empty() || h.len() > 16 {
        return None;
    }
    u64::from_str_radix(h, 16).ok()
}

/// Parse the whole `resource` file.
pub fn parse(text: &str) -> Result<Vec<ResourceLine>, ResourceParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            let err = |reason| ResourceParseError {
                line: i + 1,
                text: l.to_string(),
                reason,
            };
            let mut it = l.split_whitespace();
            let mut next = || it.next().and_then(hex64);
            let start = next().ok_or_else(|| err("bad start"))?;
            let end = next().ok_or_else(|| err("bad end"))?;
            let flags = next().ok_or_else(|| err("bad flags"))?;
            Ok(ResourceLine { start, end, flags })
        })
        .collect()
}

/// What kind of address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BarKind {
    /// I/O ports.
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory.
    Mem64,
}

/// A base address register as vfioctl reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bar {
    /// BAR number (0-5).
    pub index: u8,
    /// Start address as the kernel shows it (0 when unassigned).
    pub start: u64,
    /// Size in bytes; `None` for a BAR that config space says exists but that was never
    /// assigned, whose size cannot be read without sizing the register.
    pub size: Option<u64>,
    /// The address space it decodes.
    pub kind: BarKind,
    /// A 64-bit memory BAR.
    pub is_64bit: bool,
    /// Prefetchable memory.
    pub prefetchable: bool,
    /// An I/O BAR.
    pub io: bool,
    /// The kernel assigned an address range to this BAR.
    pub assigned: bool,
    /// Assigned at or above 4 GiB.
    pub above_4g: bool,
    /// Raw `IORESOURCE_*` flags from `resource` (0 for unassigned BARs).
    pub flags: u64,
}

impl Bar {
    /// Build a BAR from its `resource` line; `None` for an empty line (no BAR, or the
    /// upper half of a 64-bit BAR, or a BAR whose assignment failed: see
    /// [`ConfigBar`](super::ConfigBar) for those).
    pub fn from_line(index: u8, line: &ResourceLine) -> Option<Bar> {
        if line.is_zero() {
            return None;
        }
        let io = line.flags & flags::IO != 0;
        let is_64bit = line.flags & flags::MEM_64 != 0;
        let unset = line.flags & (flags::UNSET | flags::DISABLED) != 0;
        let assigned = !(unset || (line.start == 0 && line.end != 0));
        let size = line.size();
        Some(Bar {
            index,
            start: if assigned { line.start } else { 0 },
            size: (size > 0).then_some(size),
            kind: if io {
                BarKind::Io
            } else if is_64bit {
                BarKind::Mem64
            } else {
                BarKind::Mem32
            },
            is_64bit,
            prefetchable: line.flags & flags::PREFETCH != 0,
            io,
            assigned,
            above_4g: assigned && line.start > 0xffff_ffff,
            flags: line.flags,
        })
    }

    /// `BAR1 32G 64b pref @0x222800000000`.
    pub fn summary(&self) -> String {
        let size = self
            .size
            .map(crate::units::short)
            .unwrap_or_else(|| "?".into());
        let mut s = format!("BAR{} {}", self.index, size);
        if self.io {
            s.push_str(" io");
        } else {
            s.push_str(if self.is_64bit { " 64b" } else { " 32b" });
            if self.prefetchable {
                s.push_str(" pref");
            }
        }
        if self.assigned {
            s.push_str(&format!(" @{:#x}", self.start));
        } else {
            s.push_str(" UNASSIGNED");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An NVIDIA A100 40GB as a real host shows it (BAR0 16M, BAR1 64G? no: A100 40GB BAR1 is
    // 64G on some SKUs; this is the 32G layout of the fixture's H100-class card).
    const GPU: &str = "\
0x00000000d8000000 0x00000000d8ffffff 0x0000000000040200
0x0000222800000000 0x0000222fffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000223000000000 0x0000223001ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
";

    #[test]
    fn parses_gpu_bars() {
        let lines = parse(GPU).unwrap();
        assert_eq!(lines.len(), 7);
        let bars: Vec<Bar> = lines
            .iter()
            .enumerate()
            .take(6)
            .filter_map(|(i, l)| Bar::from_line(i as u8, l))
            .collect();
        assert_eq!(bars.len(), 3);
        assert_eq!(bars[0].size, Some(16 << 20));
        assert!(!bars[0].is_64bit && !bars[0].prefetchable && !bars[0].above_4g);
        assert_eq!(bars[1].index, 1);
        assert_eq!(bars[1].size, Some(32 << 30));
        assert!(bars[1].is_64bit && bars[1].prefetchable && bars[1].above_4g);
        assert_eq!(bars[1].summary(), "BAR1 32G 64b pref @0x222800000000");
        assert_eq!(bars[2].index, 3);
        assert_eq!(bars[2].size, Some(32 << 20));
    }

    #[test]
    fn io_bar_and_unset() {
        let l = parse("0x000000000000e000 0x000000000000e07f 0x0000000000040101\n").unwrap();
        let b = Bar::from_line(5, &l[0]).unwrap();
        assert!(b.io && b.assigned && b.kind == BarKind::Io);
        let unset = ResourceLine {
            start: 0,
            end: 0x7ff_ffff,
            flags: flags::MEM | flags::MEM_64 | flags::PREFETCH | flags::UNSET,
        };
        let b = Bar::from_line(1, &unset).unwrap();
        assert!(!b.assigned && !b.above_4g);
    }

    #[test]
    fn ranges_that_overflow_are_size_zero_not_a_panic() {
        let l = parse("0x0000000000000000 0xffffffffffffffff 0x0000000000040200\n").unwrap();
        assert_eq!(l[0].size(), 0);
        let b = Bar::from_line(0, &l[0]).unwrap();
        assert_eq!(b.size, None);
        let inv = parse("0x0000000000002000 0x0000000000001000 0x0000000000040200\n").unwrap();
        assert_eq!(inv[0].size(), 0);
        let top = parse("0xfffffffffffff000 0xffffffffffffffff 0x0000000000040200\n").unwrap();
        assert_eq!(top[0].size(), 4096);
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse("0x0 0x1\n").is_err());
        assert!(parse("12 34 56\n").is_err());
        assert!(parse("0x00000000000000000 0x0 0x0\n").is_err());
    }
}
