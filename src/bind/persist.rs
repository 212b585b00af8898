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

use vfioctl_common::{Bdf, SysRoot};

use super::error::BindError;

/// driverctl's override directory.
pub const DIR: &str = "/etc/driverctl.d";

/// The override file of `bdf`: `/etc/driverctl.d/pci-<bdf>`.
pub fn path(bdf: Bdf) -> String {
    format!("{DIR}/pci-{bdf}")
}

fn io(p: std::path::PathBuf) -> impl FnOnce(std::io::Error) -> BindError {
    move |source| BindError::Ledger { path: p, source }
}

/// Write the override file atomically; returns its host path. The directory and the file
/// are resolved inside the root and never through a symlink.
pub fn write(root: &SysRoot, bdf: Bdf, driver: &str) -> Result<String, BindError> {
    let dir = root
        .create_dir_all_in(DIR)
        .map_err(|e| io(root.path(DIR))(e.source))?;
    let abs = path(bdf);
    dir.write_atomic(
        &format!("pci-{bdf}"),
        format!("{driver}\n").as_bytes(),
        0o644,
    )
    .map_err(io(root.path(&abs)))?;
    Ok(abs)
}

/// Remove it; `Some(path)` when there was one.
pub fn remove(root: &SysRoot, bdf: Bdf) -> Result<Option<String>, BindError> {
    let abs = path(bdf);
    let dir = match root.open_in_root(DIR, libc::O_RDONLY | libc::O_DIRECTORY, 0) {
        Ok(_) => root
            .create_dir_all_in(DIR)
            .map_err(|e| io(root.path(DIR))(e.source))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(root.path(DIR))(e)),
    };
    let gone = dir
        .remove(&format!("pci-{bdf}"))
        .map_err(io(root.path(&abs)))?;
    if gone {
        dir.sync().map_err(io(root.path(DIR)))?;
    }
    Ok(gone.then_some(abs))
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
    use std::fs;

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
