//! Boot-time overrides (`bind --persist`), in driverctl's format.
//!
//! vfioctl writes `/etc/driverctl.d/pci-<bdf>` containing the driver name, exactly what
//! `driverctl set-override <bdf> <driver>` saves. driverctl's early udev rule
//! (`05-driverctl.rules`) and `driverctl@.service` apply it when the device appears at boot,
//! before the host driver can claim it, and `driverctl list-overrides` shows it. This was
//! chosen over a modprobe.d `vfio-pci ids=` line because that claims every device with the
//! same vendor:device (all GPUs of a multi-GPU server), and over a hand-written udev rule
//! because driverctl already orders itself before the drivers load. Without driverctl
//! installed the file does nothing; vfioctl warns.

use std::fs;
use std::io::Write;

use vfioctl_common::{Bdf, SysRoot};

use super::error::BindError;

pub const DIR: &str = "/etc/driverctl.d";

pub fn path(bdf: Bdf) -> String {
    format!("{DIR}/pci-{bdf}")
}

fn io(p: &std::path::Path) -> impl FnOnce(std::io::Error) -> BindError + '_ {
    move |source| BindError::Ledger {
        path: p.to_path_buf(),
        source,
    }
}

/// Write the override file atomically; returns its host path.
pub fn write(root: &SysRoot, bdf: Bdf, driver: &str) -> Result<String, BindError> {
    let dir = root.path(DIR);
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let abs = path(bdf);
    let full = root.path(&abs);
    let tmp = dir.join(format!(".pci-{bdf}.tmp"));
    {
        let mut f = fs::File::create(&tmp).map_err(io(&tmp))?;
        writeln!(f, "{driver}").map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    fs::rename(&tmp, &full).map_err(io(&full))?;
    Ok(abs)
}

/// Remove it; `Some(path)` when there was one.
pub fn remove(root: &SysRoot, bdf: Bdf) -> Result<Option<String>, BindError> {
    let abs = path(bdf);
    let full = root.path(&abs);
    match fs::remove_file(&full) {
        Ok(()) => Ok(Some(abs)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&full)(e)),
    }
}

/// A warning when nothing will apply the file at boot.
pub fn warning(root: &SysRoot) -> Option<String> {
    let rules = [
        "/usr/lib/udev/rules.d/05-driverctl.rules",
        "/lib/udev/rules.d/05-driverctl.rules",
        "/etc/udev/rules.d/05-driverctl.rules",
    ];
    if rules.iter().any(|r| root.exists(r)) {
        None
    } else {
        Some("driverctl is not installed (no 05-driverctl.rules): the /etc/driverctl.d override is saved but nothing applies it at boot; install driverctl".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driverctl_format_roundtrip() {
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        let bdf: Bdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(
            write(&root, bdf, "vfio-pci").unwrap(),
            "/etc/driverctl.d/pci-0000:01:00.0"
        );
        assert_eq!(
            fs::read_to_string(t.path().join("etc/driverctl.d/pci-0000:01:00.0")).unwrap(),
            "vfio-pci\n"
        );
        assert!(warning(&root).is_some());
        assert_eq!(
            remove(&root, bdf).unwrap().as_deref(),
            Some("/etc/driverctl.d/pci-0000:01:00.0")
        );
        assert_eq!(remove(&root, bdf).unwrap(), None);
    }
}
