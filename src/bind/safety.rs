//! In-use safety: what on this host would break if a device lost its driver.
//!
//! [`HostUse::scan`] reads, through the [`SysRoot`]: mounts (`/proc/self/mountinfo`), block
//! devices and their PCI parents (`/sys/block/*`, partitions, device-mapper `slaves/`),
//! network interfaces (`/sys/class/net/*/device`, `operstate`) and their routes
//! (`/proc/net/route`, `/proc/net/ipv6_route`), GPU device nodes (`/proc/driver/nvidia/gpus`,
//! `drm/`) and which processes have them open (`/proc/*/fd`). [`assess`] is pure: it turns
//! that snapshot into refusals for one device.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;

use serde::Serialize;
use vfioctl_common::{Bdf, PciDevice, SysRoot};

/// Why a device may not be unbound, and how to release it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Refusal {
    /// The device refused.
    pub bdf: Bdf,
    /// Which rule refused it.
    pub kind: RefusalKind,
    /// What holds the device ("/ (ext4 on nvme0n1p2)", "eth0 carries the default route").
    pub reason: String,
    /// How to release it.
    pub release: String,
    /// `--force` overrides it (never for the root filesystem's disk).
    pub forceable: bool,
}

/// Which in-use rule refused a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RefusalKind {
    /// It holds the root filesystem (never overridable, not even with `--force`).
    RootFilesystem,
    /// It holds a mounted filesystem.
    MountedFilesystem,
    /// A network interface on it is up and carries routes.
    NetworkRoute,
    /// Processes have its device nodes open (`/dev/nvidia*`, `/dev/dri/*`).
    OpenDeviceNode,
    /// It is the boot VGA device (the firmware console).
    BootVga,
    /// Something the in-use rules need could not be read: refused rather than assumed idle.
    Unreadable,
}

/// What an unreadable input leaves unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Concern {
    /// Mounts and block devices: storage controllers.
    Storage,
    /// Interfaces and routes: network controllers.
    Network,
    /// Device nodes and their openers: display controllers.
    Display,
}

/// A file or directory the scan could not read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Unreadable {
    /// The path under the root.
    pub path: String,
    /// The read error.
    pub error: String,
    /// What is unknown because of it.
    pub concern: Concern,
}

/// One mounted filesystem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Mount {
    /// Where it is mounted (octal escapes decoded).
    pub mountpoint: String,
    /// Filesystem type (e.g. `ext4`).
    pub fstype: String,
    /// The mount source (e.g. `/dev/nvme0n1p2`).
    pub source: String,
    /// The filesystem's `major:minor`.
    pub dev: String,
}

/// A process with a device node open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Opener {
    /// Process id.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`; `?` if unreadable).
    pub comm: String,
    /// The device node it has open.
    pub node: String,
}

/// What the host uses, keyed by the PCI device it hangs off.
#[derive(Clone, Debug, Default, Serialize, schemars::JsonSchema)]
pub struct HostUse {
    /// Block device names (disks, partitions, dm devices stacked on them) per PCI device.
    pub block: BTreeMap<Bdf, Vec<String>>,
    /// `major:minor` per block device name.
    pub block_dev: BTreeMap<String, String>,
    /// Every mounted filesystem (`/proc/self/mountinfo`).
    pub mounts: Vec<Mount>,
    /// Interface name, operstate, routes (destinations) per PCI device (the scanned
    /// devices only).
    pub net: BTreeMap<Bdf, Vec<NetIf>>,
    /// Device nodes per PCI device (`/dev/nvidia0`, `/dev/dri/card1`, `/dev/dri/renderD128`).
    pub nodes: BTreeMap<Bdf, Vec<String>>,
    /// Processes holding any node of interest.
    pub openers: Vec<Opener>,
    /// What could not be read; devices of the concerned classes are refused.
    pub unreadable: Vec<Unreadable>,
}

/// One network interface of a PCI device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct NetIf {
    /// Interface name (e.g. `eth0`).
    pub name: String,
    /// `/sys/class/net/<if>/operstate` (e.g. `up`, `down`).
    pub operstate: String,
    /// IFF_UP from `/sys/class/net/<if>/flags`: configured up, whatever the carrier does.
    /// `None` when the attribute is missing (then `operstate` decides).
    pub admin_up: Option<bool>,
    /// Routes on this interface, as `default` or `dest/len`.
    pub routes: Vec<String>,
}

fn pci_of(root: &SysRoot, abs: &str) -> Option<Bdf> {
    // The nearest PCI address in the link's target (`../devices/pci0000:00/0000:00:1d.0/
    // 0000:02:00.0/nvme/nvme0/nvme0n1`) is the function that owns it. One readlink, not a
    // canonicalize: /sys/block and /sys/class/net entries are single links into
    // /sys/devices.
    let t = std::fs::read_link(root.path(abs)).ok()?;
    t.components()
        .rev()
        .find_map(|c| c.as_os_str().to_str()?.parse::<Bdf>().ok())
}

impl HostUse {
    /// Read everything the rules need for `devices` (interface states and node/opener
    /// scanning are limited to those devices, the rest is host-wide).
    pub fn scan(root: &SysRoot, devices: &[&PciDevice]) -> HostUse {
        let mut u = HostUse::default();
        u.scan_block(root);
        match read_mounts(root) {
            Ok(m) => u.mounts = m,
            Err(e) => u.note(&e, Concern::Storage),
        }
        let scanned: BTreeSet<Bdf> = devices.iter().map(|d| d.bdf).collect();
        u.scan_net(root, &scanned);
        for d in devices {
            let nodes = match device_nodes_checked(root, d) {
                Ok(n) => n,
                Err(e) => {
                    u.note(&e, Concern::Display);
                    Vec::new()
                }
            };
            if !nodes.is_empty() {
                u.nodes.insert(d.bdf, nodes);
            }
        }
        let wanted: BTreeSet<String> = u.nodes.values().flatten().cloned().collect();
        if !wanted.is_empty() {
            let (o, bad) = openers_checked(root, &wanted);
            u.openers = o;
            for e in bad {
                u.note(&e, Concern::Display);
            }
        }
        u
    }

    fn note(&mut self, e: &vfioctl_common::SysError, concern: Concern) {
        self.unreadable.push(Unreadable {
            path: e.path.display().to_string(),
            error: e.source.to_string(),
            concern,
        });
    }

    fn scan_block(&mut self, root: &SysRoot) {
        // A kernel without block devices has no /sys/block (NotFound is an empty list);
        // anything else unreadable leaves the storage rules blind.
        let names = match root.list_opt("/sys/block") {
            Ok(n) => n,
            Err(e) => {
                self.note(&e, Concern::Storage);
                Vec::new()
            }
        };
        let mut by_name: BTreeMap<String, Bdf> = BTreeMap::new();
        for n in &names {
            let dir = format!("/sys/block/{n}");
            match root.read_attr_opt(format!("{dir}/dev")) {
                Ok(Some(dev)) => {
                    self.block_dev.insert(n.clone(), dev);
                }
                Ok(None) => {}
                Err(e) => self.note(&e, Concern::Storage),
            }
            let parts: Vec<String> = root
                .list_opt(&dir)
                .unwrap_or_default()
                .into_iter()
                .filter(|p| {
                    p.starts_with(n.as_str()) && root.exists(format!("{dir}/{p}/partition"))
                })
                .collect();
            for p in &parts {
                if let Ok(Some(dev)) = root.read_attr_opt(format!("{dir}/{p}/dev")) {
                    self.block_dev.insert(p.clone(), dev);
                }
            }
            if let Some(bdf) = pci_of(root, &dir) {
                let e = self.block.entry(bdf).or_default();
                e.push(n.clone());
                e.extend(parts.iter().cloned());
                by_name.insert(n.clone(), bdf);
                for p in parts {
                    by_name.insert(p, bdf);
                }
            }
        }
        // Stacked devices (dm-crypt, LVM, md): /sys/block/dm-0/slaves/nvme0n1p3.
        for n in &names {
            let slaves = match root.list_opt(format!("/sys/block/{n}/slaves")) {
                Ok(v) => v,
                Err(e) => {
                    self.note(&e, Concern::Storage);
                    Vec::new()
                }
            };
            let owners: BTreeSet<Bdf> = slaves
                .iter()
                .filter_map(|s| by_name.get(s).copied())
                .collect();
            for bdf in owners {
                self.block.entry(bdf).or_default().push(n.clone());
            }
        }
    }

    /// Routes host-wide; the interfaces of `devices` with their state (the rules ask
    /// about no other interface, and each state is two sysfs reads).
    fn scan_net(&mut self, root: &SysRoot, devices: &BTreeSet<Bdf>) {
        let mut routes: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let v4 = root.read_string("/proc/net/route");
        if let Err(e) = &v4 {
            self.note(e, Concern::Network);
        }
        if let Ok(text) = v4 {
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 8 {
                    continue;
                }
                let dest = u32::from_str_radix(f[1], 16).unwrap_or(1);
                let mask = u32::from_str_radix(f[7], 16).unwrap_or(0);
                let r = if dest == 0 && mask == 0 {
                    "default".to_string()
                } else {
                    let d = dest.to_le_bytes();
                    format!("{}.{}.{}.{}/{}", d[0], d[1], d[2], d[3], mask.count_ones())
                };
                routes.entry(f[0].to_string()).or_default().push(r);
            }
        }
        // No ipv6_route: IPv6 is disabled (ipv6.disable=1), so there are no IPv6 routes.
        let v6 = root.read_string("/proc/net/ipv6_route");
        if let Err(e) = v6.as_ref().map(|_| ()) {
            if !e.is_not_found() {
                self.note(e, Concern::Network);
            }
        }
        if let Ok(text) = v6 {
            for line in text.lines() {
                let f: Vec<&str> = line.split_whitespace().collect();
                if f.len() < 10 {
                    continue;
                }
                let r = if f[0].bytes().all(|b| b == b'0') && f[1] == "00" {
                    "default (IPv6)".to_string()
                } else {
                    format!("{}/{}", f[0], u8::from_str_radix(f[1], 16).unwrap_or(0))
                };
                // Link-local and multicast routes exist on every up interface; they carry
                // no traffic anyone depends on.
                if f[0].starts_with("fe80") || f[0].starts_with("ff") {
                    continue;
                }
                routes.entry(f[9].to_string()).or_default().push(r);
            }
        }
        let ifs = match root.list_opt("/sys/class/net") {
            Ok(v) => v,
            Err(e) => {
                self.note(&e, Concern::Network);
                Vec::new()
            }
        };
        for n in ifs {
            let Some(bdf) = pci_of(root, &format!("/sys/class/net/{n}")) else {
                continue;
            };
            if !devices.contains(&bdf) {
                continue;
            }
            let operstate = root
                .read_attr_opt(format!("/sys/class/net/{n}/operstate"))
                .ok()
                .flatten()
                .unwrap_or_else(|| "unknown".into());
            let admin_up = root
                .read_attr_opt(format!("/sys/class/net/{n}/flags"))
                .ok()
                .flatten()
                .and_then(|f| u32::from_str_radix(f.trim_start_matches("0x"), 16).ok())
                .map(|f| f & 0x1 != 0);
            self.net.entry(bdf).or_default().push(NetIf {
                admin_up,
                routes: routes.get(&n).cloned().unwrap_or_default(),
                name: n,
                operstate,
            });
        }
    }
}

/// `/proc/self/mountinfo`: `id parent major:minor root mountpoint opts ... - fstype source sopts`.
/// An unreadable (or absent: procfs not mounted) mountinfo is an error, never "nothing
/// mounted".
pub fn read_mounts(root: &SysRoot) -> Result<Vec<Mount>, vfioctl_common::SysError> {
    let text = root.read_string("/proc/self/mountinfo")?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (a, b) = l.split_once(" - ")?;
            let a: Vec<&str> = a.split_whitespace().collect();
            let b: Vec<&str> = b.split_whitespace().collect();
            Some(Mount {
                dev: a.get(2)?.to_string(),
                mountpoint: unescape(a.get(4)?),
                fstype: b.first()?.to_string(),
                source: b.get(1).map(|s| unescape(s)).unwrap_or_default(),
            })
        })
        .collect())
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}

/// The device nodes a GPU is reached through: `/dev/nvidiaN` (minor from
/// `/proc/driver/nvidia/gpus/<bdf>/information`) and the DRM nodes under `drm/`.
pub fn device_nodes(root: &SysRoot, d: &PciDevice) -> Vec<String> {
    device_nodes_checked(root, d).unwrap_or_default()
}

/// [`device_nodes`], with what could not be read as an error (absent files are fine: a
/// device without the nvidia driver or DRM has no such nodes).
pub fn device_nodes_checked(
    root: &SysRoot,
    d: &PciDevice,
) -> Result<Vec<String>, vfioctl_common::SysError> {
    let mut out = Vec::new();
    let info = format!("/proc/driver/nvidia/gpus/{}/information", d.bdf);
    match root.read_string(&info) {
        Ok(text) => {
            for l in text.lines() {
                if let Some(v) = l.strip_prefix("Device Minor:") {
                    if let Ok(n) = v.trim().parse::<u32>() {
                        out.push(format!("/dev/nvidia{n}"));
                    }
                }
            }
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e),
    }
    for n in root.list_opt(format!("{}/drm", d.bdf.sysfs_path()))? {
        if n.starts_with("card") || n.starts_with("renderD") {
            out.push(format!("/dev/dri/{n}"));
        }
    }
    Ok(out)
}

/// Processes with any of `nodes` open, from `/proc/<pid>/fd/*` (named by `comm`).
pub fn openers(root: &SysRoot, nodes: &BTreeSet<String>) -> Vec<Opener> {
    openers_checked(root, nodes).0
}

/// [`openers`], with the `/proc` entries that could not be read (a process that exits
/// during the scan is not one of them).
pub fn openers_checked(
    root: &SysRoot,
    nodes: &BTreeSet<String>,
) -> (Vec<Opener>, Vec<vfioctl_common::SysError>) {
    let mut out = Vec::new();
    let mut bad = Vec::new();
    let me = std::process::id();
    let pids = match root.list("/proc") {
        Ok(p) => p,
        Err(e) => {
            bad.push(e);
            return (out, bad);
        }
    };
    for p in pids {
        let Ok(pid) = p.parse::<u32>() else { continue };
        if root.is_host() && pid == me {
            continue;
        }
        let abs = format!("/proc/{pid}/fd");
        let rd = match fs::read_dir(root.path(&abs)) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                bad.push(vfioctl_common::SysError {
                    op: "list",
                    path: abs.into(),
                    source,
                });
                continue;
            }
        };
        let mut seen = BTreeSet::new();
        for e in rd.flatten() {
            let Ok(t) = fs::read_link(e.path()) else {
                continue;
            };
            let t = t.to_string_lossy().into_owned();
            if nodes.contains(&t) && seen.insert(t.clone()) {
                let comm = root
                    .read_attr_opt(format!("/proc/{pid}/comm"))
                    .ok()
                    .flatten()
                    .unwrap_or_else(|| "?".into());
                out.push(Opener { pid, comm, node: t });
            }
        }
    }
    (out, bad)
}

/// The refusals for unbinding `d` from its driver. Pure.
pub fn assess(d: &PciDevice, u: &HostUse) -> Vec<Refusal> {
    let mut out = Vec::new();
    let refuse = |kind, reason: String, release: String, forceable| Refusal {
        bdf: d.bdf,
        kind,
        reason,
        release,
        forceable,
    };
    if let Some(names) = u.block.get(&d.bdf) {
        let devs: BTreeMap<&str, &str> = names
            .iter()
            .filter_map(|n| Some((u.block_dev.get(n)?.as_str(), n.as_str())))
            .collect();
        for m in &u.mounts {
            let by_dev = devs.get(m.dev.as_str()).copied();
            let by_src = m
                .source
                .strip_prefix("/dev/")
                .and_then(|s| names.iter().find(|n| n.as_str() == s).map(String::as_str));
            let Some(name) = by_dev.or(by_src) else {
                continue;
            };
            if m.mountpoint == "/" {
                out.push(refuse(
                    RefusalKind::RootFilesystem,
                    format!("{name} holds the root filesystem / ({})", m.fstype),
                    "the root filesystem's disk is never unbound, not even with --force".into(),
                    false,
                ));
            } else {
                out.push(refuse(
                    RefusalKind::MountedFilesystem,
                    format!("{name} is mounted on {} ({})", m.mountpoint, m.fstype),
                    format!("umount {}", m.mountpoint),
                    true,
                ));
            }
        }
    }
    for nif in u.net.get(&d.bdf).into_iter().flatten() {
        // Configured up (IFF_UP) counts even while the carrier is down: a link that blips,
        // or an emulated NIC whose carrier comes up a moment after `ip link set up`, still
        // carries the host's routes. operstate alone raced in the lab guest.
        let up = nif.admin_up.unwrap_or(false) || nif.operstate == "up";
        if up && !nif.routes.is_empty() {
            let what = if nif.routes.iter().any(|r| r.starts_with("default")) {
                "carries the default route".to_string()
            } else {
                format!("carries routes {}", nif.routes.join(", "))
            };
            out.push(refuse(
                RefusalKind::NetworkRoute,
                format!("network interface {} is up and {what}", nif.name),
                format!(
                    "move the traffic elsewhere, then `ip link set {} down`",
                    nif.name
                ),
                true,
            ));
        }
    }
    if let Some(nodes) = u.nodes.get(&d.bdf) {
        let holders: Vec<&Opener> = u
            .openers
            .iter()
            .filter(|o| nodes.contains(&o.node))
            .collect();
        if !holders.is_empty() {
            out.push(refuse(
                RefusalKind::OpenDeviceNode,
                format!("device nodes open in {}", describe_openers(&holders)),
                "stop these processes (nvidia-persistenced: `nvidia-smi -pm 0`; the display manager; CUDA jobs)".into(),
                true,
            ));
        }
    }
    let concern = match d.class >> 16 {
        0x01 => Some(Concern::Storage),
        0x02 => Some(Concern::Network),
        0x03 => Some(Concern::Display),
        _ => None,
    };
    for un in u.unreadable.iter().filter(|x| Some(x.concern) == concern) {
        let what = match un.concern {
            Concern::Storage => "whether its disks are mounted",
            Concern::Network => "whether its interfaces carry routes",
            Concern::Display => "which processes have its device nodes open",
        };
        out.push(refuse(
            RefusalKind::Unreadable,
            format!(
                "could not read {} ({}), so {what} is unknown",
                un.path, un.error
            ),
            format!(
                "make {} readable (run as root, with /proc and /sys mounted)",
                un.path
            ),
            // The root filesystem's disk could be behind an unreadable mount table.
            un.concern != Concern::Storage,
        ));
    }
    if d.boot_vga == Some(true) {
        out.push(refuse(
            RefusalKind::BootVga,
            "boot VGA device: the firmware console and display manager may be on it".into(),
            "use another GPU for the console, or pass --force (the console goes dark; add video=efifb:off on kernels before 6.0)".into(),
            true,
        ));
    }
    out
}

/// `comm (pid N) has NODE`, comma-separated.
pub fn describe_openers(o: &[&Opener]) -> String {
    o.iter()
        .map(|o| format!("{} (pid {}) has {}", o.comm, o.pid, o.node))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Who holds `d` right now (for a timed-out unbind): processes with its nodes open.
pub fn holders_of(root: &SysRoot, d: &PciDevice) -> Vec<String> {
    let mut nodes: BTreeSet<String> = device_nodes(root, d).into_iter().collect();
    // On vfio-pci, the group node is what QEMU holds (a vfio unbind waits for it).
    if let Some(g) = d.iommu_group {
        nodes.insert(format!("/dev/vfio/{g}"));
    }
    if nodes.is_empty() {
        return Vec::new();
    }
    openers(root, &nodes)
        .iter()
        .map(|o| format!("{} (pid {}) has {}", o.comm, o.pid, o.node))
        .collect()
}
