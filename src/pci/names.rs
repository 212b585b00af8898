//! Names from the pci.ids database (`/usr/share/misc/pci.ids`, Debian package `pci.ids`),
//! read through the [`SysRoot`]; numeric ids when it is not installed.
//!
//! The file is 1.3 MB and ~36,000 lines; vfioctl needs a handful of names per run, so the
//! parser is lazy: it walks the lines once, keeps names only for the vendors asked for
//! (and the small class section), and skips the device and subsystem lines of every
//! other vendor by looking at their first byte.

#![warn(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use vfioctl_common::SysRoot;

/// Where distributions install pci.ids, in the order tried.
pub const PCI_IDS_PATHS: [&str; 3] = [
    "/usr/share/misc/pci.ids",
    "/usr/share/hwdata/pci.ids",
    "/usr/share/pci.ids",
];

/// The names vfioctl looked up.
#[derive(Clone, Debug, Default)]
pub struct PciIds {
    vendors: HashMap<u16, String>,
    devices: HashMap<(u16, u16), String>,
    classes: HashMap<u8, String>,
    subclasses: HashMap<(u8, u8), String>,
    /// The file read (host-absolute), `None` when no pci.ids was found.
    pub source: Option<PathBuf>,
}

fn hex<T: TryFrom<u32>>(b: &[u8]) -> Option<T> {
    let mut v: u32 = 0;
    if b.is_empty() {
        return None;
    }
    for &c in b {
        let d = (c as char).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(d)?;
    }
    T::try_from(v).ok()
}

/// `"10de  NVIDIA Corporation"` -> (`10de`, `NVIDIA Corporation`).
fn split_entry(line: &[u8], id_len: usize) -> Option<(&[u8], &str)> {
    if line.len() < id_len + 2 {
        return None;
    }
    let (id, rest) = line.split_at(id_len);
    let name = std::str::from_utf8(rest).ok()?.trim();
    Some((id, name))
}

impl PciIds {
    /// No database: every lookup falls back to numeric ids.
    pub fn empty() -> Self {
        Self::default()
    }

    /// Read the first pci.ids found under `root`, keeping names for `vendors` only.
    /// A missing or unreadable file gives [`PciIds::empty`] (names are a convenience).
    pub fn load(root: &SysRoot, vendors: impl IntoIterator<Item = u16>) -> Self {
        let wanted: HashSet<u16> = vendors.into_iter().collect();
        for p in PCI_IDS_PATHS {
            if let Ok(bytes) = root.read_bytes(p) {
                let mut ids = Self::parse(&bytes, &wanted);
                ids.source = Some(PathBuf::from(p));
                return ids;
            }
        }
        tracing::debug!(
            "no pci.ids under {}; showing numeric ids",
            root.root().display()
        );
        Self::empty()
    }

    /// Parse pci.ids text, keeping vendor and device names for `vendors` and all classes.
    pub fn parse(text: &[u8], vendors: &HashSet<u16>) -> Self {
        let mut ids = Self::default();
        let mut cur_vendor: Option<u16> = None;
        let mut cur_class: Option<u8> = None;
        for raw in text.split(|&b| b == b'\n') {
            let line = raw.strip_suffix(b"\r").unwrap_or(raw);
            let Some(&first) = line.first() else { continue };
            match first {
                b'#' => {}
                b'\t' => {
                    if line.get(1) == Some(&b'\t') {
                        continue; // subsystem or prog-if line
                    }
                    if let Some(v) = cur_vendor {
                        if let Some((id, name)) = split_entry(&line[1..], 4) {
                            if let Some(d) = hex::<u16>(id) {
                                ids.devices.insert((v, d), name.to_string());
                            }
                        }
                    } else if let Some(c) = cur_class {
                        if let Some((id, name)) = split_entry(&line[1..], 2) {
                            if let Some(s) = hex::<u8>(id) {
                                ids.subclasses.insert((c, s), name.to_string());
                            }
                        }
                    }
                }
                b'C' if line.get(1) == Some(&b' ') => {
                    cur_vendor = None;
                    cur_class = split_entry(&line[2..], 2).and_then(|(id, name)| {
                        let c = hex::<u8>(id)?;
                        ids.classes.insert(c, name.to_string());
                        Some(c)
                    });
                }
                _ => {
                    cur_class = None;
                    cur_vendor = None;
                    // Vendor line: 4 hex digits, two spaces, name. Other sections
                    // (device types, "X" etc.) never match a wanted hex id.
                    if let Some((id, name)) = split_entry(line, 4) {
                        if let Some(v) = hex::<u16>(id) {
                            if vendors.contains(&v) {
                                ids.vendors.insert(v, name.to_string());
                                cur_vendor = Some(v);
                            }
                        }
                    }
                }
            }
        }
        ids
    }

    /// The vendor's name in pci.ids.
    pub fn vendor_name(&self, vendor: u16) -> Option<&str> {
        self.vendors.get(&vendor).map(String::as_str)
    }

    /// The device's name in pci.ids.
    pub fn device_name(&self, vendor: u16, device: u16) -> Option<&str> {
        self.devices.get(&(vendor, device)).map(String::as_str)
    }

    /// The subclass name (`3D controller`), else the base class name.
    pub fn class_name(&self, class: u32) -> Option<&str> {
        let base = (class >> 16) as u8;
        let sub = (class >> 8) as u8;
        self.subclasses
            .get(&(base, sub))
            .or_else(|| self.classes.get(&base))
            .map(String::as_str)
    }

    /// `NVIDIA Corporation`, or `10de` without a database entry.
    pub fn vendor_label(&self, vendor: u16) -> String {
        self.vendor_name(vendor)
            .map(String::from)
            .unwrap_or_else(|| format!("{vendor:04x}"))
    }

    /// `GA102 [GeForce RTX 3080]`, or `Device 2206` as lspci prints unknown devices.
    pub fn device_label(&self, vendor: u16, device: u16) -> String {
        self.device_name(vendor, device)
            .map(String::from)
            .unwrap_or_else(|| format!("Device {device:04x}"))
    }

    /// `3D controller`, or `Class 0302`.
    pub fn class_label(&self, class: u32) -> String {
        self.class_name(class)
            .map(String::from)
            .unwrap_or_else(|| format!("Class {:04x}", class >> 8))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# comment
10de  NVIDIA Corporation
\t2206  GA102 [GeForce RTX 3080]
\t\t1043 87b0  TUF RTX 3080
\t1aef  GA102 High Definition Audio Controller
10df  Emulex Corporation
\tf100  Saturn-X
8086  Intel Corporation
\t1901  6th-10th Gen Core Processor PCIe Controller (x16)
C 03  Display controller
\t00  VGA compatible controller
\t\t00  VGA controller
\t02  3D controller
C 04  Multimedia controller
\t03  Audio device
";

    #[test]
    fn keeps_only_wanted_vendors() {
        let ids = PciIds::parse(SAMPLE.as_bytes(), &HashSet::from([0x10de]));
        assert_eq!(ids.vendor_name(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(
            ids.device_name(0x10de, 0x2206),
            Some("GA102 [GeForce RTX 3080]")
        );
        assert_eq!(ids.device_name(0x10df, 0xf100), None);
        assert_eq!(ids.vendor_label(0x8086), "8086");
        assert_eq!(ids.device_label(0x10de, 0x1234), "Device 1234");
        assert_eq!(ids.class_name(0x030200), Some("3D controller"));
        assert_eq!(ids.class_name(0x030000), Some("VGA compatible controller"));
        assert_eq!(ids.class_name(0x038000), Some("Display controller"));
        assert_eq!(ids.class_label(0x0b4000), "Class 0b40");
        assert_eq!(ids.class_name(0x040300), Some("Audio device"));
    }

    #[test]
    fn absent_database_is_numeric() {
        let root = SysRoot::new(tempfile::tempdir().unwrap().path());
        let ids = PciIds::load(&root, [0x10de]);
        assert!(ids.source.is_none());
        assert_eq!(ids.vendor_label(0x10de), "10de");
        assert_eq!(ids.class_label(0x030200), "Class 0302");
    }

    #[test]
    fn garbage_does_not_panic() {
        let ids = PciIds::parse(
            b"\t\n\tzz\nC \nC zz  x\nzzzz  y\n\xff\xfe  z\n",
            &HashSet::from([0]),
        );
        assert!(ids.vendors.is_empty());
    }
}
