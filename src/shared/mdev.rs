//! Mediated devices (vGPU on pre-Ampere NVIDIA GPUs, the kernel's mtty/mdpy samples):
//! `vfioctl mdev types [PARENT]`, `mdev create PARENT TYPE [--uuid U]`, `mdev list`,
//! `mdev remove UUID`.
//!
//! The kernel's interface: a parent device registers with the mdev core and appears as
//! `/sys/class/mdev_bus/<parent>`; its types are directories
//! `mdev_supported_types/<type_id>/` with `name`, `description`, `available_instances`,
//! `device_api` (`vfio-pci` for a PCI-like device), a write-only `create` and a
//! `devices/` listing. Writing a UUID to `create` makes `/sys/bus/mdev/devices/<uuid>`
//! (a link into the parent's directory) with `mdev_type`, `iommu_group` and `remove`.
//! QEMU takes it as `-device vfio-pci,sysfsdev=/sys/bus/mdev/devices/<uuid>`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vfioctl_common::SysRoot;

use super::error::SharedError;
use super::ledger::MdevRecord;
use super::sriov::{wait_until, write};
use crate::bind::Ledger;

const BUS: &str = "/sys/class/mdev_bus";
const DEVICES: &str = "/sys/bus/mdev/devices";

/// A mediated device's UUID, validated and lower-cased (the kernel's form).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct MdevUuid(String);

impl schemars::JsonSchema for MdevUuid {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "MdevUuid".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A mediated device's UUID, lower-case (the kernel's form).",
            "type": "string",
            "pattern": "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
        })
    }
}

impl MdevUuid {
    /// A random (version 4) UUID.
    pub fn random() -> MdevUuid {
        let mut b = [0u8; 16];
        let mut filled = 0;
        while filled < b.len() {
            // SAFETY: the pointer and length describe the unfilled tail of `b`, which is
            // writable; getrandom writes at most that many bytes.
            let n =
                unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
            if n > 0 {
                filled += n as usize;
            } else if n < 0
                && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted
            {
                // No entropy source at all: fall back on time and pid (still unique enough
                // for a device name; this is not a secret).
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                b.copy_from_slice(&(t ^ (u128::from(std::process::id()) << 64)).to_le_bytes());
                break;
            }
        }
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        MdevUuid(format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        ))
    }

    /// The UUID as text (lower-case 8-4-4-4-12).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `/sys/bus/mdev/devices/<uuid>`: what QEMU's `sysfsdev=` takes.
    pub fn sysfsdev(&self) -> String {
        format!("{DEVICES}/{}", self.0)
    }
}

impl FromStr for MdevUuid {
    type Err = SharedError;
    fn from_str(s: &str) -> Result<Self, SharedError> {
        let bad = || SharedError::BadUuid { input: s.into() };
        let parts: Vec<&str> = s.split('-').collect();
        let lens = [8, 4, 4, 4, 12];
        if parts.len() != 5
            || parts
                .iter()
                .zip(lens)
                .any(|(p, l)| p.len() != l || !p.bytes().all(|c| c.is_ascii_hexdigit()))
        {
            return Err(bad());
        }
        Ok(MdevUuid(s.to_ascii_lowercase()))
    }
}

impl TryFrom<String> for MdevUuid {
    type Error = SharedError;
    fn try_from(s: String) -> Result<Self, SharedError> {
        s.parse()
    }
}

impl From<MdevUuid> for String {
    fn from(u: MdevUuid) -> String {
        u.0
    }
}

impl fmt::Display for MdevUuid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A parent's name as `/sys/class/mdev_bus` lists it: a PCI address (`0000:41:00.0`) or a
/// virtual device's name (`mtty`). One path component, so it cannot leave that directory.
fn check_parent(parent: &str) -> Result<(), SharedError> {
    let ok = !parent.is_empty()
        && parent != "."
        && parent != ".."
        && parent
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(SharedError::BadParent {
            input: parent.into(),
        })
    }
}

fn check_type(type_id: &str) -> Result<(), SharedError> {
    check_parent(type_id).map_err(|_| SharedError::BadParent {
        input: type_id.into(),
    })
}

/// One mdev type of one parent (`vfioctl mdev types --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MdevType {
    /// The parent device (`/sys/class/mdev_bus/<parent>`).
    pub parent: String,
    /// The type id (directory name under `mdev_supported_types/`).
    pub type_id: String,
    /// The type's `name` attribute, when it has one.
    pub name: Option<String>,
    /// The type's `description` attribute, when it has one.
    pub description: Option<String>,
    /// `available_instances`: how many more instances can be created now.
    pub available_instances: Option<u32>,
    /// `vfio-pci` for a device QEMU passes as PCI.
    pub device_api: Option<String>,
    /// UUIDs of existing instances (`devices/`).
    pub instances: Vec<String>,
}

/// One mediated device (`vfioctl mdev list --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct MdevDevice {
    /// The mediated device's UUID.
    pub uuid: String,
    /// The parent device (the directory above it once its sysfs path is resolved).
    pub parent: Option<String>,
    /// The mdev type id (`mdev_type` link).
    pub type_id: Option<String>,
    /// The IOMMU group (`iommu_group` link).
    pub iommu_group: Option<u32>,
    /// The driver it is bound to (`driver` link), if any.
    pub driver: Option<String>,
    /// What QEMU's `sysfsdev=` takes.
    pub sysfsdev: String,
    /// vfioctl created it (the ledger records it).
    pub created_by_vfioctl: bool,
}

/// Parents registered with the mdev core, sorted.
pub fn parents(root: &SysRoot) -> Result<Vec<String>, SharedError> {
    Ok(root.list_opt(BUS)?)
}

/// The types of `parent` (every parent's when `None`).
pub fn types(root: &SysRoot, parent: Option<&str>) -> Result<Vec<MdevType>, SharedError> {
    let ps = match parent {
        Some(p) => {
            check_parent(p)?;
            if !root.exists(format!("{BUS}/{p}")) {
                return Err(SharedError::NoMdevParent { parent: p.into() });
            }
            vec![p.to_string()]
        }
        None => parents(root)?,
    };
    let mut out = Vec::new();
    for p in ps {
        let base = format!("{BUS}/{p}/mdev_supported_types");
        for t in root.list_opt(&base)? {
            let d = format!("{base}/{t}");
            let attr = |n: &str| root.read_attr_opt(format!("{d}/{n}"));
            out.push(MdevType {
                parent: p.clone(),
                type_id: t.clone(),
                name: attr("name")?,
                description: attr("description")?,
                available_instances: attr("available_instances")?.and_then(|s| s.parse().ok()),
                device_api: attr("device_api")?,
                instances: root.list_opt(format!("{d}/devices"))?,
            });
        }
    }
    Ok(out)
}

fn device(root: &SysRoot, uuid: &str, ours: bool) -> Result<MdevDevice, SharedError> {
    let d = format!("{DEVICES}/{uuid}");
    let parent = root.canonicalize(&d).ok().and_then(|p| {
        p.parent()
            .and_then(|x| x.file_name())
            .map(|n| n.to_string_lossy().into_owned())
    });
    Ok(MdevDevice {
        uuid: uuid.into(),
        parent,
        type_id: root.link_name(format!("{d}/mdev_type"))?,
        iommu_group: root
            .link_name(format!("{d}/iommu_group"))?
            .and_then(|g| g.parse().ok()),
        driver: root.link_name(format!("{d}/driver"))?,
        sysfsdev: d,
        created_by_vfioctl: ours,
    })
}

/// Every mediated device, by UUID.
pub fn list(root: &SysRoot) -> Result<Vec<MdevDevice>, SharedError> {
    let ours = Ledger::peek(root)?.map(|l| l.mdevs).unwrap_or_default();
    root.list_opt(DEVICES)?
        .iter()
        .filter(|u| u.parse::<MdevUuid>().is_ok())
        .map(|u| device(root, u, ours.contains_key(u.as_str())))
        .collect()
}

/// One mediated device.
pub fn get(root: &SysRoot, uuid: &MdevUuid) -> Result<MdevDevice, SharedError> {
    if !root.exists(uuid.sysfsdev()) {
        return Err(SharedError::MdevNotFound {
            uuid: uuid.to_string(),
        });
    }
    let ours = Ledger::peek(root)?.is_some_and(|l| l.mdevs.contains_key(uuid.as_str()));
    device(root, uuid.as_str(), ours)
}

/// The write `create` makes (for the dry run and the docs).
pub fn create_write(parent: &str, type_id: &str, uuid: &MdevUuid) -> String {
    format!("echo {uuid} > {BUS}/{parent}/mdev_supported_types/{type_id}/create")
}

/// Create one `type_id` instance on `parent`. Recorded in the ledger before the write;
/// when the device does not appear in time the record is dropped again
/// ([`SharedError::MdevDidNotAppear`]).
pub fn create(
    root: &SysRoot,
    parent: &str,
    type_id: &str,
    uuid: Option<MdevUuid>,
    timeout: Duration,
) -> Result<MdevDevice, SharedError> {
    check_parent(parent)?;
    check_type(type_id)?;
    let all = types(root, Some(parent))?;
    let Some(t) = all.iter().find(|t| t.type_id == type_id) else {
        return Err(SharedError::UnknownMdevType {
            parent: parent.into(),
            type_id: type_id.into(),
            known: all.iter().map(|t| t.type_id.clone()).collect(),
        });
    };
    if t.available_instances == Some(0) {
        return Err(SharedError::NoInstances {
            parent: parent.into(),
            type_id: type_id.into(),
        });
    }
    let uuid = uuid.unwrap_or_else(MdevUuid::random);
    if root.exists_nofollow(uuid.sysfsdev()) {
        return Err(SharedError::MdevExists {
            uuid: uuid.to_string(),
        });
    }
    let mut ledger = Ledger::open(root)?;
    ledger.data.mdevs.insert(
        uuid.to_string(),
        MdevRecord {
            parent: parent.into(),
            type_id: type_id.into(),
            created: false,
            since: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        },
    );
    ledger.save()?;
    let create = format!("{BUS}/{parent}/mdev_supported_types/{type_id}/create");
    let r = write(root, &create, uuid.as_str(), timeout).and_then(|()| {
        let (ok, ()) = wait_until(timeout, || Ok(()), |()| root.exists(uuid.sysfsdev()))?;
        if ok {
            Ok(())
        } else {
            Err(SharedError::MdevDidNotAppear {
                uuid: uuid.to_string(),
                secs: timeout.as_secs(),
            })
        }
    });
    match r {
        Ok(()) => {
            if let Some(rec) = ledger.data.mdevs.get_mut(uuid.as_str()) {
                rec.created = true;
            }
            ledger.save()?;
            drop(ledger);
            get(root, &uuid)
        }
        Err(e) => {
            ledger.data.mdevs.remove(uuid.as_str());
            ledger.save()?;
            Err(e)
        }
    }
}

/// Remove a mediated device vfioctl created (any with `force`).
pub fn remove(
    root: &SysRoot,
    uuid: &MdevUuid,
    timeout: Duration,
    force: bool,
) -> Result<(), SharedError> {
    let mut ledger = Ledger::open(root)?;
    remove_locked(root, &mut ledger, uuid.as_str(), timeout, force)
}

pub(crate) fn remove_locked(
    root: &SysRoot,
    ledger: &mut Ledger,
    uuid: &str,
    timeout: Duration,
    force: bool,
) -> Result<(), SharedError> {
    let uuid: MdevUuid = uuid.parse()?;
    let ours = ledger.data.mdevs.contains_key(uuid.as_str());
    if !ours && !force {
        return Err(SharedError::MdevNotOurs {
            uuid: uuid.to_string(),
        });
    }
    if root.exists(uuid.sysfsdev()) {
        write(root, &format!("{}/remove", uuid.sysfsdev()), "1", timeout)?;
        let (ok, ()) = wait_until(timeout, || Ok(()), |()| !root.exists(uuid.sysfsdev()))?;
        if !ok {
            return Err(SharedError::MdevDidNotGo {
                uuid: uuid.to_string(),
                secs: timeout.as_secs(),
            });
        }
    } else if !ours {
        return Err(SharedError::MdevNotFound {
            uuid: uuid.to_string(),
        });
    }
    ledger.data.mdevs.remove(uuid.as_str());
    ledger.save()?;
    Ok(())
}

/// The PCI ids a guest sees for an mdev of the kernel's sample types (mtty's serial
/// card, mdpy's and mbochs' displays); `None` for vendor types (an NVIDIA vGPU's ids are
/// the vGPU manager's choice).
pub fn sample_guest_ids(type_id: &str) -> Option<(u16, u16)> {
    if type_id.starts_with("mtty") {
        Some((0x4348, 0x3253))
    } else if type_id.starts_with("mdpy") {
        Some((0x1b36, 0x000f))
    } else if type_id.starts_with("mbochs") {
        Some((0x1234, 0x1111))
    } else {
        None
    }
}

/// The ids the guest will see for mediated device `uuid`, when its type is known to
/// vfioctl ([`sample_guest_ids`]).
pub fn guest_ids(root: &SysRoot, uuid: &MdevUuid) -> Option<(u16, u16)> {
    let t = root
        .link_name(format!("{}/mdev_type", uuid.sysfsdev()))
        .ok()??;
    sample_guest_ids(&t)
}

/// What `validate` looks for in the guest for mediated device `uuid`: the sample types'
/// ids (their BARs are I/O or driver-defined, so none are compared); `None` for a type
/// whose guest ids vfioctl does not know.
pub fn expected(root: &SysRoot, uuid: &MdevUuid) -> Option<crate::agent::validate::Expected> {
    let (vendor, device) = guest_ids(root, uuid)?;
    Some(crate::agent::validate::Expected {
        label: format!("mdev:{uuid}"),
        vendor,
        device,
        bars: Vec::new(),
        guest_bdf: None,
        driver: None,
    })
}

/// Root-port sizing for an mdev: its BARs are the parent driver's emulation and cannot
/// be read from sysfs, so the port gets the firmware's default windows (a vGPU's BARs are
/// small: 16M + 256M on NVIDIA's types).
pub fn device_bars(uuid: &MdevUuid) -> crate::vm::ports::DeviceBars {
    crate::vm::ports::DeviceBars {
        label: format!("mdev:{uuid}"),
        bdf: None,
        pref64: Vec::new(),
        mem32: Vec::new(),
        io: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_parse_lowercase_and_random_ones_are_v4() {
        let u: MdevUuid = "83B8F4F2-509F-382F-3C1E-E6BFE0FA1001".parse().unwrap();
        assert_eq!(u.as_str(), "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001");
        assert_eq!(
            u.sysfsdev(),
            "/sys/bus/mdev/devices/83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
        );
        for bad in [
            "",
            "x",
            "83b8f4f2-509f-382f-3c1e-e6bfe0fa100",
            "../../../etc/passwd-aaaa-aaaa-aaaa-aaaaaaaaaaaa",
            "83b8f4f2-509f-382f-3c1e-e6bfe0fa100g",
        ] {
            assert!(bad.parse::<MdevUuid>().is_err(), "{bad}");
        }
        let r = MdevUuid::random();
        assert!(r.as_str().parse::<MdevUuid>().is_ok());
        assert_eq!(&r.as_str()[14..15], "4");
        assert_ne!(r, MdevUuid::random());
    }

    #[test]
    fn parent_names_stay_one_component() {
        for ok in ["0000:41:00.0", "mtty", "mbochs"] {
            assert!(check_parent(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "../x", "mtty\n"] {
            assert!(check_parent(bad).is_err(), "{bad:?}");
        }
    }
}
