//! Guest-side evidence read from the serial console: the kernel's own PCI messages.
//!
//! Used for readiness and plug confirmation when a guest runs without the vfioctl agent
//! (the agent is the primary source; this parser is the fallback and the diagnostics).
//! Linux 6.1 prints `pci 0000:01:00.0: BAR 2 [mem 0x200000000-0x3ffffffff 64bit pref]:
//! assigned`; older kernels `BAR 2: assigned [mem ...]`. A failure reads `can't assign;
//! no space` and `failed to assign`.

use serde::Serialize;

/// What the guest kernel said about one hot-plugged function.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PciEvidence {
    /// Guest address (`0000:01:00.0`).
    pub bdf: String,
    /// BAR index and the address range the guest assigned.
    pub assigned: Vec<(u8, String)>,
    /// BAR index and the failure text (`can't assign; no space`).
    pub failed: Vec<(u8, String)>,
    /// BARs the kernel listed when it found the device (`BAR n [mem ...]` / `reg 0x..`).
    pub found: Vec<u8>,
    /// The kernel lines, for error messages.
    pub lines: Vec<String>,
}

impl PciEvidence {
    /// Every BAR the kernel listed has an outcome.
    pub fn settled(&self) -> bool {
        !self.found.is_empty()
            && self.found.iter().all(|b| {
                self.assigned.iter().any(|a| a.0 == *b) || self.failed.iter().any(|f| f.0 == *b)
            })
    }
    /// Every BAR the kernel listed was assigned.
    pub fn all_assigned(&self) -> bool {
        self.settled() && self.failed.is_empty()
    }
    /// Some BAR was assigned an address at or above 4 GiB.
    pub fn above_4g(&self) -> bool {
        self.assigned.iter().any(|(_, r)| {
            r.trim_start_matches("mem ")
                .split('-')
                .next()
                .and_then(|s| u64::from_str_radix(s.trim_start_matches("0x"), 16).ok())
                .is_some_and(|a| a >= 1 << 32)
        })
    }
}

fn bar_index(rest: &str) -> Option<(u8, &str)> {
    let r = rest.strip_prefix("BAR ")?;
    let end = r.find(|c: char| !c.is_ascii_digit())?;
    Some((r[..end].parse().ok()?, &r[end..]))
}

/// A BAR range with a non-zero start (`mem 0xfe800000-0xfe803fff`, `io 0xc000-0xc007`):
/// the firmware placed it; a hot-plugged BAR is listed at 0 until the kernel assigns it.
fn placed(range: &str) -> bool {
    range
        .split_whitespace()
        .nth(1)
        .and_then(|r| r.split('-').next())
        .and_then(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16).ok())
        .is_some_and(|a| a != 0)
}

fn bracketed(s: &str) -> Option<String> {
    let a = s.find('[')?;
    let b = s[a..].find(']')? + a;
    Some(s[a + 1..b].to_string())
}

/// Scan serial output for the first function with `vendor:device` (lower-case hex, as
/// the kernel prints `[1af4:1110]`) and collect what happened to its BARs.
pub fn scan(text: &str, id_pair: &str) -> Option<PciEvidence> {
    let needle = format!("[{id_pair}]");
    let mut ev: Option<PciEvidence> = None;
    for line in text.lines() {
        let Some(pos) = line.find("pci ") else {
            continue;
        };
        let rest = &line[pos + 4..];
        let Some((bdf, msg)) = rest.split_once(": ") else {
            continue;
        };
        match &mut ev {
            None => {
                if msg.starts_with(&needle) {
                    ev = Some(PciEvidence {
                        bdf: bdf.to_string(),
                        lines: vec![line.trim().to_string()],
                        ..Default::default()
                    });
                }
            }
            Some(e) if e.bdf == bdf => {
                e.lines.push(line.trim().to_string());
                if let Some((i, tail)) = bar_index(msg) {
                    if tail.contains("can't assign") || tail.contains("failed to assign") {
                        if !e.failed.iter().any(|f| f.0 == i) {
                            let why = tail.rsplit(": ").next().unwrap_or(tail).to_string();
                            e.failed.push((i, why));
                        }
                    } else if tail.contains("assigned") {
                        if let Some(r) = bracketed(tail) {
                            e.assigned.push((i, r));
                        }
                    } else if !e.found.contains(&i) {
                        e.found.push(i);
                        // A cold-plugged device's BARs were placed by the firmware: the
                        // kernel lists them at their address and prints no "assigned".
                        if let Some(r) = bracketed(tail).filter(|r| placed(r)) {
                            e.assigned.push((i, r));
                        }
                    }
                } else if let Some(r) = msg.strip_prefix("reg 0x") {
                    // Older kernels: `reg 0x18: [mem ...]` -> BAR (reg - 0x10) / 4.
                    if let Some(off) = r.get(..2).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        if (0x10..=0x24).contains(&off) {
                            let i = (off - 0x10) / 4;
                            if !e.found.contains(&i) {
                                e.found.push(i);
                            }
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
    ev
}

/// The last `n` lines of a text, for error messages.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Recorded: Debian 6.1.0-56 under QEMU 7.2, ACPI hotplug of ivshmem-plain (8G) onto
    // a port with pref64-reserve=16G (rp0) and onto one without (rp1).
    const LOG: &str = "\
VFIOCTL-READY 2.10
[    2.333262] pci 0000:01:00.0: [1af4:1110] type 00 class 0x050000
[    2.333532] pci 0000:01:00.0: BAR 0 [mem 0x00000000-0x000000ff]
[    2.333744] pci 0000:01:00.0: BAR 2 [mem 0x00000000-0x1ffffffff 64bit pref]
[    2.338996] pci 0000:01:00.0: BAR 2 [mem 0x200000000-0x3ffffffff 64bit pref]: assigned
[    2.339850] pci 0000:01:00.0: BAR 0 [mem 0xfe800000-0xfe8000ff]: assigned
";
    const NO_SPACE: &str = "\
[    4.335876] pci 0000:02:00.0: [1af4:1110] type 00 class 0x050000
[    4.336098] pci 0000:02:00.0: BAR 0 [mem 0x00000000-0x000000ff]
[    4.336261] pci 0000:02:00.0: BAR 2 [mem 0x00000000-0x1ffffffff 64bit pref]
[    4.339841] pci 0000:02:00.0: BAR 2 [mem size 0x200000000 64bit pref]: can't assign; no space
[    4.340133] pci 0000:02:00.0: BAR 2 [mem size 0x200000000 64bit pref]: failed to assign
[    4.340353] pci 0000:02:00.0: BAR 0 [mem 0xfe600000-0xfe6000ff]: assigned
";

    #[test]
    fn assigned_above_4g() {
        let e = scan(LOG, "1af4:1110").unwrap();
        assert_eq!(e.bdf, "0000:01:00.0");
        assert_eq!(e.found, vec![0, 2]);
        assert!(e.all_assigned());
        assert!(e.above_4g());
        assert_eq!(
            e.assigned[0],
            (2, "mem 0x200000000-0x3ffffffff 64bit pref".into())
        );
    }

    #[test]
    fn a_cold_plugged_device_with_firmware_placed_bars_is_settled() {
        // The form 6.12 prints at boot for a device whose BARs SeaBIOS placed (an igb VF
        // cold-plugged through vfio-pci in the iommufd lab): listed, never "assigned".
        let log = "\
[    9.1] pci 0000:01:00.0: [8086:10ca] type 00 class 0x020000 PCIe Endpoint
[    9.1] pci 0000:01:00.0: BAR 0 [mem 0xfe800000-0xfe803fff 64bit]
[    9.1] pci 0000:01:00.0: BAR 3 [mem 0xfe804000-0xfe807fff 64bit]
";
        let e = scan(log, "8086:10ca").unwrap();
        assert_eq!(e.found, vec![0, 3]);
        assert!(e.all_assigned(), "{e:?}");
        assert!(!placed("mem 0x00000000-0x000000ff"));
        assert!(placed("io 0xc000-0xc007"));
    }

    #[test]
    fn no_space_is_settled_but_not_assigned() {
        let e = scan(NO_SPACE, "1af4:1110").unwrap();
        assert!(e.settled());
        assert!(!e.all_assigned());
        assert_eq!(e.failed, vec![(2, "can't assign; no space".into())]);
        assert!(!e.above_4g());
    }

    #[test]
    fn partial_output_is_not_settled_and_old_format_parses() {
        let partial: String = LOG.lines().take(4).collect::<Vec<_>>().join("\n");
        assert!(!scan(&partial, "1af4:1110").unwrap().settled());
        assert!(scan(LOG, "10de:2330").is_none());
        let old = "\
[    1.0] pci 0000:05:00.0: [10de:1db6] type 00 class 0x030200
[    1.0] pci 0000:05:00.0: reg 0x10: [mem 0xfd000000-0xfdffffff]
[    1.0] pci 0000:05:00.0: reg 0x14: [mem 0x00000000-0x7ffffffff 64bit pref]
[    1.1] pci 0000:05:00.0: BAR 1: assigned [mem 0x800000000-0xfffffffff 64bit pref]
[    1.1] pci 0000:05:00.0: BAR 0: assigned [mem 0xfd000000-0xfdffffff]
";
        let e = scan(old, "10de:1db6").unwrap();
        assert_eq!(e.found, vec![0, 1]);
        assert!(e.all_assigned() && e.above_4g());
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
    }
}
