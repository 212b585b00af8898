//! The first 64 bytes of PCI config space (`/sys/bus/pci/devices/<bdf>/config`), which
//! any user may read: header type and the raw BAR registers.
//!
//! The kernel zeroes the `resource` line of a BAR whose assignment failed, but the BAR
//! register keeps its read-only type bits. A register with type bits (or an address) and
//! a zero `resource` line is a BAR the device has and the firmware/kernel never placed:
//! what a host with Above 4G Decoding off looks like.

use serde::{Deserialize, Serialize};

/// The header fields vfioctl needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigHeader {
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Revision id.
    pub revision: u8,
    /// 0 = endpoint, 1 = PCI-to-PCI bridge, 2 = CardBus.
    pub header_type: u8,
    /// Header type bit 7: the device has more than one function.
    pub multifunction: bool,
    /// Status register bit 4: a capability list exists.
    pub has_capabilities: bool,
    /// The BAR registers (6 for endpoints, 2 for bridges; a 64-bit BAR takes two).
    pub bars: Vec<ConfigBar>,
}

/// One BAR register as config space shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigBar {
    /// BAR number (0-5).
    pub index: u8,
    /// An I/O space BAR.
    pub io: bool,
    /// A 64-bit memory BAR (it uses the next register too).
    pub is_64bit: bool,
    /// A prefetchable memory BAR.
    pub prefetchable: bool,
    /// The address bits programmed in the register (both halves for 64-bit BARs).
    pub address: u64,
}

fn le16(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}
fn le32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config space is {len} bytes, need at least 64")]
/// Config space shorter than the 64-byte header.
pub struct ConfigTooShort {
    /// How many bytes there were.
    pub len: usize,
}

/// The length of the standard header: all of config space that [`parse`] reads.
pub const HEADER_LEN: usize = 64;

/// Parse the standard header. Needs the first [`HEADER_LEN`] bytes.
pub fn parse(cfg: &[u8]) -> Result<ConfigHeader, ConfigTooShort> {
    if cfg.len() < HEADER_LEN {
        return Err(ConfigTooShort { len: cfg.len() });
    }
    let header_type = cfg[0x0e] & 0x7f;
    let nbars = match header_type {
        0 => 6,
        1 => 2,
        _ => 0,
    };
    let mut bars = Vec::new();
    let mut i = 0;
    while i < nbars {
        let reg = le32(cfg, 0x10 + 4 * i);
        if reg == 0 {
            i += 1;
            continue;
        }
        if reg & 1 == 1 {
            bars.push(ConfigBar {
                index: i as u8,
                io: true,
                is_64bit: false,
                prefetchable: false,
                address: u64::from(reg & !0x3),
            });
            i += 1;
            continue;
        }
        let is_64bit = (reg >> 1) & 0x3 == 0x2;
        let mut address = u64::from(reg & !0xf);
        if is_64bit && i + 1 < nbars {
            address |= u64::from(le32(cfg, 0x10 + 4 * (i + 1))) << 32;
        }
        bars.push(ConfigBar {
            index: i as u8,
            io: false,
            is_64bit,
            prefetchable: reg & 0x8 != 0,
            address,
        });
        i += if is_64bit { 2 } else { 1 };
    }
    Ok(ConfigHeader {
        vendor: le16(cfg, 0),
        device: le16(cfg, 2),
        class: le32(cfg, 0x08) >> 8,
        revision: cfg[0x08],
        header_type,
        multifunction: cfg[0x0e] & 0x80 != 0,
        has_capabilities: le16(cfg, 0x06) & 0x10 != 0,
        bars,
    })
}

/// Build a 64-byte type-0 header (for fixtures and tests): ids, class, and BAR registers.
pub fn build_header(
    vendor: u16,
    device: u16,
    class: u32,
    revision: u8,
    bars: &[u32; 6],
) -> [u8; 64] {
    let mut c = [0u8; 64];
    c[0..2].copy_from_slice(&vendor.to_le_bytes());
    c[2..4].copy_from_slice(&device.to_le_bytes());
    c[0x06..0x08].copy_from_slice(&0x0010u16.to_le_bytes());
    c[0x08] = revision;
    c[0x09..0x0c].copy_from_slice(&class.to_le_bytes()[0..3]);
    for (i, b) in bars.iter().enumerate() {
        c[0x10 + 4 * i..0x14 + 4 * i].copy_from_slice(&b.to_le_bytes());
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_with_unassigned_64bit_bar() {
        // BAR0 mem32 at 0xd8000000; BAR1 64-bit pref with only type bits (never placed);
        // BAR3 64-bit pref placed at 0x3000_0000_0000 (upper half in BAR4).
        let cfg = build_header(
            0x10de,
            0x2330,
            0x030200,
            0xa1,
            &[0xd800_0000, 0x0000_000c, 0, 0x0000_000c, 0x3000, 0],
        );
        let h = parse(&cfg).unwrap();
        assert_eq!(
            (h.vendor, h.device, h.class, h.revision),
            (0x10de, 0x2330, 0x030200, 0xa1)
        );
        assert_eq!(h.header_type, 0);
        assert_eq!(h.bars.len(), 3);
        assert_eq!(h.bars[0].address, 0xd800_0000);
        assert!(h.bars[1].is_64bit && h.bars[1].prefetchable && h.bars[1].address == 0);
        assert_eq!(h.bars[2].index, 3);
        assert_eq!(h.bars[2].address, 0x3000_0000_0000);
    }

    #[test]
    fn io_bar_and_short_config() {
        let cfg = build_header(0x8086, 0x10d3, 0x020000, 0, &[0, 0, 0, 0, 0, 0xe001]);
        let h = parse(&cfg).unwrap();
        assert_eq!(
            h.bars,
            vec![ConfigBar {
                index: 5,
                io: true,
                is_64bit: false,
                prefetchable: false,
                address: 0xe000
            }]
        );
        assert!(parse(&cfg[..32]).is_err());
    }
}
