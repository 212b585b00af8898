//! A simulated kernel for fixture trees (test-only: the `fault-injection` feature, and
//! `VFIOCTL_SIM_KERNEL=1` in the environment, and a `--root` other than `/`).
//!
//! A fixture tree's sysfs files accept every write and bind nothing, so a bind there
//! always ends in a rollback. To walk the success path (the second device's writes, the
//! final ledger save, `--persist`) under kill points in CI, this applies what the PCI core
//! does for the writes vfioctl makes, on the tree:
//!
//! - `drivers/<d>/unbind` with a bound device: removes its `driver` link (and `vfio-dev/`);
//! - `drivers_probe`: a driverless device goes to its `driver_override` when that driver is
//!   registered, else to the driver it had before its first unbind (the ID match);
//! - `drivers/<d>/bind`: binds a driverless device whose override is unset or `<d>`, else
//!   `ENODEV`, as `driver_match_device` refuses;
//! - binding to a vfio driver adds `vfio-dev/vfio0` and `/dev/vfio/<group>`;
//! - `VFIOCTL_SIM_REFUSE=<bdf>,...`: vfio drivers refuse those devices.
//!
//! The value is written to the file first, as on a plain fixture, so tests still see it.

use std::io;
use std::path::Path;

use vfioctl_common::pci::device::is_vfio_driver;
use vfioctl_common::{Bdf, PciDevice, SysRoot};

/// File in a device directory remembering the driver its id matches (`.sim-id-driver`).
const ID_DRIVER: &str = ".sim-id-driver";

fn enabled(root: &SysRoot) -> bool {
    !root.is_host() && std::env::var_os("VFIOCTL_SIM_KERNEL").is_some_and(|v| v == "1")
}

/// Handle a write when the simulation is on; `None` leaves it to the real path.
pub fn write(root: &SysRoot, abs: &str, value: &str) -> Option<io::Result<()>> {
    if !enabled(root) {
        return None;
    }
    Some(apply(root, abs, value))
}

fn dev_dir(root: &SysRoot, bdf: Bdf) -> io::Result<std::path::PathBuf> {
    let d = PciDevice::read(root, bdf).map_err(io::Error::other)?;
    Ok(root.path(&d.sysfs_path))
}

fn apply(root: &SysRoot, abs: &str, value: &str) -> io::Result<()> {
    root.write_attr(abs, value).map_err(|e| e.source)?;
    let bdf = || -> io::Result<Bdf> {
        value
            .trim()
            .parse()
            .map_err(|_| io::Error::from_raw_os_error(libc::ENODEV))
    };
    if abs == "/sys/bus/pci/drivers_probe" {
        let bdf = bdf()?;
        let d = PciDevice::read(root, bdf).map_err(io::Error::other)?;
        if d.driver.is_some() {
            return Ok(());
        }
        let dir = root.path(&d.sysfs_path);
        let want = match &d.driver_override {
            Some(o) => Some(o.clone()),
            None => std::fs::read_to_string(dir.join(ID_DRIVER))
                .ok()
                .map(|s| s.trim().to_string()),
        };
        if let Some(w) = want {
            if root.is_dir(format!("/sys/bus/pci/drivers/{w}")) {
                // drivers_probe reports success whether or not a driver took it.
                let _ = link(root, &d, &w);
            }
        }
        return Ok(());
    }
    let Some(rest) = abs.strip_prefix("/sys/bus/pci/drivers/") else {
        return Ok(());
    };
    let Some((drv, op)) = rest.split_once('/') else {
        return Ok(());
    };
    match op {
        "unbind" => {
            let bdf = bdf()?;
            let dir = dev_dir(root, bdf)?;
            let d = PciDevice::read(root, bdf).map_err(io::Error::other)?;
            if d.driver.as_deref() != Some(drv) {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            if !is_vfio_driver(drv) && !dir.join(ID_DRIVER).exists() {
                std::fs::write(dir.join(ID_DRIVER), drv)?;
            }
            std::fs::remove_file(dir.join("driver"))?;
            let _ = std::fs::remove_dir_all(dir.join("vfio-dev"));
            Ok(())
        }
        "bind" => {
            let bdf = bdf()?;
            let d = PciDevice::read(root, bdf).map_err(io::Error::other)?;
            if d.driver.is_some() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            if d.driver_override.as_deref().is_some_and(|o| o != drv) {
                return Err(io::Error::from_raw_os_error(libc::ENODEV));
            }
            link(root, &d, drv)
        }
        _ => Ok(()),
    }
}

/// Point the device's `driver` link at `drv`, as the kernel's relative link does.
/// `VFIOCTL_SIM_REFUSE=<bdf>[,<bdf>...]`: vfio drivers refuse those devices (their probe
/// fails, as vfio-pci's does for a device without an IOMMU group), to walk the rollback.
fn link(root: &SysRoot, d: &PciDevice, drv: &str) -> io::Result<()> {
    let refused = std::env::var("VFIOCTL_SIM_REFUSE").unwrap_or_default();
    if is_vfio_driver(drv) && refused.split(',').any(|b| b == d.bdf.to_string()) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let depth = d.sysfs_path.components().count().saturating_sub(2);
    let target = format!("{}bus/pci/drivers/{drv}", "../".repeat(depth));
    let dir = root.path(&d.sysfs_path);
    std::os::unix::fs::symlink(&target, dir.join("driver"))?;
    if is_vfio_driver(drv) {
        std::fs::create_dir_all(dir.join("vfio-dev/vfio0"))?;
        if let Some(g) = d.iommu_group {
            let node = root.path("/dev/vfio").join(g.to_string());
            std::fs::create_dir_all(node.parent().unwrap_or(Path::new("/")))?;
            std::fs::write(node, "")?;
        }
    }
    Ok(())
}
