//! What a snapshot never carries as read: machine identifiers, and the parts of large
//! databases no command looks at.
//!
//! - MAC addresses (`address`, `perm_addr` of network interfaces) become
//!   `02:00:00:00:00:00` unless `--keep-identifiers`.
//! - Serial numbers and unique ids (`serial`, `wwid`, `vpd_pg80`, `vpd_pg83`, `eui`,
//!   `nguid`, `uuid`, DMI's `*_serial` and `product_uuid`) become `redacted` unless
//!   `--keep-identifiers`; so does the Device Serial Number capability in PCI `config`
//!   (its 8 bytes zeroed: many NICs derive it from their MAC).
//! - The host name (`/proc/sys/kernel/hostname`, `/etc/hostname`) is always replaced.
//! - `pci.ids` keeps the lines naming the vendors and devices present, and the class
//!   list: vfioctl only looks up names of devices it found (the replay proves it).

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// The redacted MAC address.
pub const MAC: &str = "02:00:00:00:00:00";
/// What the host name becomes.
pub const HOST: &str = "snapshot-host";

const ID_FILES: [&str; 11] = [
    "serial",
    "wwid",
    "vpd_pg80",
    "vpd_pg83",
    "eui",
    "nguid",
    "uuid",
    "product_serial",
    "board_serial",
    "chassis_serial",
    "product_uuid",
];

/// The redaction rules for one snapshot.
#[derive(Clone, Debug, Default)]
pub struct Redactor {
    /// `--keep-identifiers`: MAC addresses and serial numbers are kept as read.
    pub keep_identifiers: bool,
    /// PCI (vendor, device) ids present (`pci.ids` keeps their names).
    pub ids: BTreeSet<(u16, u16)>,
}

impl Redactor {
    /// Apply the rules to the contents of `abs`; the note says what changed.
    pub fn apply(&self, abs: &Path, bytes: Vec<u8>) -> (Vec<u8>, Option<String>) {
        let name = abs.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if abs == Path::new("/proc/sys/kernel/hostname") || abs == Path::new("/etc/hostname") {
            return (
                format!("{HOST}\n").into_bytes(),
                Some("host name replaced".into()),
            );
        }
        if name == "pci.ids" && abs.starts_with("/usr/share") {
            let kept = trim_pci_ids(&bytes, &self.ids);
            let note = format!(
                "pci.ids trimmed to the {} device id(s) present and the class list ({} of {} bytes)",
                self.ids.len(),
                kept.len(),
                bytes.len()
            );
            return (kept, Some(note));
        }
        if self.keep_identifiers || !abs.starts_with("/sys") {
            return (bytes, None);
        }
        let in_net = abs
            .parent()
            .and_then(|p| p.parent())
            .and_then(|p| p.file_name())
            .is_some_and(|n| n == "net");
        if in_net && (name == "address" || name == "perm_addr") {
            return (
                format!("{MAC}\n").into_bytes(),
                Some("MAC address replaced (--keep-identifiers keeps it)".into()),
            );
        }
        if ID_FILES.contains(&name) {
            return (
                b"redacted\n".to_vec(),
                Some("identifier replaced (--keep-identifiers keeps it)".into()),
            );
        }
        if name == "config" && abs.starts_with("/sys/devices") {
            let mut b = bytes;
            if zero_dsn(&mut b) {
                return (
                    b,
                    Some(
                        "Device Serial Number capability zeroed (--keep-identifiers keeps it)"
                            .into(),
                    ),
                );
            }
            return (b, None);
        }
        (bytes, None)
    }
}

/// Zero the serial number of a PCIe Device Serial Number extended capability (id 0x0003)
/// in a config space image; true when there was one.
pub fn zero_dsn(cfg: &mut [u8]) -> bool {
    let mut off = 0x100usize;
    let mut seen = BTreeSet::new();
    let mut found = false;
    while off >= 0x100 && off + 12 <= cfg.len() && seen.insert(off) {
        let h = u32::from_le_bytes([cfg[off], cfg[off + 1], cfg[off + 2], cfg[off + 3]]);
        if h == 0 || h == u32::MAX {
            break;
        }
        if h & 0xffff == 0x0003 {
            cfg[off + 4..off + 12].fill(0);
            found = true;
        }
        off = ((h >> 20) & 0xffc) as usize;
    }
    found
}

/// Keep the lines of `pci.ids` that name the `ids` present: each vendor line with the
/// device lines of its present devices, and every class (`C xx`) block. Subsystem lines
/// (two tabs), other vendors and devices, and comments go; the parser reads what is left
/// in the same order and so gives the same names for these ids.
pub fn trim_pci_ids(text: &[u8], ids: &BTreeSet<(u16, u16)>) -> Vec<u8> {
    let hex4 = |b: Option<&[u8]>| {
        b.and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u16::from_str_radix(h, 16).ok())
    };
    let mut out = Vec::with_capacity(16 << 10);
    // The vendor whose block we are in (kept), or a class block (`u32::MAX`).
    let mut block: Option<u32> = None;
    for line in text.split_inclusive(|&b| b == b'\n') {
        match line.first() {
            Some(b'#') | None => {}
            Some(b'\t') => match block {
                Some(u32::MAX) if line.get(1) != Some(&b'\t') => out.extend_from_slice(line),
                Some(v) if line.get(1) != Some(&b'\t') => {
                    let d = hex4(line.get(1..5));
                    if d.is_some_and(|d| ids.contains(&(v as u16, d))) {
                        out.extend_from_slice(line);
                    }
                }
                _ => {}
            },
            Some(b'C') if line.get(1) == Some(&b' ') => {
                block = Some(u32::MAX);
                out.extend_from_slice(line);
            }
            Some(_) => {
                block = hex4(line.get(..4))
                    .filter(|v| line.get(4..6) == Some(b"  ") && ids.iter().any(|(iv, _)| iv == v))
                    .map(u32::from);
                if block.is_some() {
                    out.extend_from_slice(line);
                }
            }
        }
    }
    out
}

/// A path for one MANIFEST column: tabs, newlines and backslashes escaped.
pub fn escape(p: &Path) -> String {
    let mut s = String::new();
    for ch in String::from_utf8_lossy(p.as_os_str().as_bytes()).chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '\t' => s.push_str("\\t"),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::names::PciIds;
    use std::collections::HashSet;

    const IDS: &str = "# comment\n8086  Intel Corporation\n\t10d3  82574L Gigabit Network Connection\n\t10fb  82599ES 10-Gigabit\n\t\t8086 0001  subsys\n10de  NVIDIA Corporation\n\t2330  GH100 [H100 SXM5 80GB]\n1af4  Red Hat, Inc.\n\t1000  Virtio network device\nC 02  Network controller\n\t00  Ethernet controller\nC 03  Display controller\n\t02  3D controller\n";

    #[test]
    fn trimmed_pci_ids_parse_the_same_for_present_vendors() {
        let ids: BTreeSet<(u16, u16)> = [(0x8086, 0x10d3), (0x1af4, 0x1000)].into();
        let t = trim_pci_ids(IDS.as_bytes(), &ids);
        let text = String::from_utf8(t.clone()).unwrap();
        assert!(!text.contains("NVIDIA") && !text.contains("subsys") && !text.contains('#'));
        assert!(
            !text.contains("82599"),
            "other devices of a present vendor go"
        );
        let want: HashSet<u16> = ids.iter().map(|(v, _)| *v).collect();
        let a = PciIds::parse(IDS.as_bytes(), &want);
        let b = PciIds::parse(&t, &want);
        for (v, d) in [(0x8086, 0x10d3), (0x1af4, 0x1000)] {
            assert_eq!(a.vendor_name(v), b.vendor_name(v));
            assert_eq!(a.device_name(v, d), b.device_name(v, d));
            assert!(b.device_name(v, d).is_some());
        }
        for c in [0x020000, 0x030200] {
            assert_eq!(a.class_name(c), b.class_name(c));
            assert!(b.class_name(c).is_some());
        }
    }

    #[test]
    fn identifiers_go_unless_kept() {
        let r = Redactor::default();
        let mac = Path::new("/sys/devices/pci0000:00/0000:00:02.0/net/eth0/address");
        let (b, n) = r.apply(mac, b"52:54:00:12:34:56\n".to_vec());
        assert_eq!(b, b"02:00:00:00:00:00\n");
        assert!(n.is_some());
        let (b, _) = r.apply(
            Path::new("/sys/block/nvme0n1/device/serial"),
            b"S4X9NF0M\n".to_vec(),
        );
        assert_eq!(b, b"redacted\n");
        let (b, _) = r.apply(
            Path::new("/proc/sys/kernel/hostname"),
            b"gpu-07.corp\n".to_vec(),
        );
        assert_eq!(b, b"snapshot-host\n");
        // Other files untouched.
        let (b, n) = r.apply(Path::new("/sys/class/net/eth0/operstate"), b"up\n".to_vec());
        assert_eq!((b.as_slice(), n), (&b"up\n"[..], None));

        let keep = Redactor {
            keep_identifiers: true,
            ..Default::default()
        };
        let (b, n) = keep.apply(mac, b"52:54:00:12:34:56\n".to_vec());
        assert_eq!((b.as_slice(), n), (&b"52:54:00:12:34:56\n"[..], None));
        let (b, _) = keep.apply(Path::new("/etc/hostname"), b"gpu-07\n".to_vec());
        assert_eq!(b, b"snapshot-host\n", "the host name is always replaced");
    }

    #[test]
    fn dsn_capability_is_zeroed_in_the_chain() {
        let mut cfg = vec![0u8; 4096];
        // 0x100: AER (id 1) -> 0x140: DSN (id 3) -> end.
        cfg[0x100..0x104].copy_from_slice(&(0x0001u32 | 1 << 16 | 0x140 << 20).to_le_bytes());
        cfg[0x140..0x144].copy_from_slice(&(0x0003u32 | 1 << 16).to_le_bytes());
        cfg[0x144..0x14c].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(zero_dsn(&mut cfg));
        assert_eq!(&cfg[0x144..0x14c], &[0; 8]);
        assert_eq!(cfg[0x140], 3, "the header stays");
        // A loop in the chain ends.
        let mut l = vec![0u8; 4096];
        l[0x100..0x104].copy_from_slice(&(0x0001u32 | 0x100 << 20).to_le_bytes());
        assert!(!zero_dsn(&mut l));
        assert!(!zero_dsn(&mut [0u8; 64]));
    }
}
