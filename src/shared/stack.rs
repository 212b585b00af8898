//! Lab stacks: which QEMU and guest kernel a VM or a regress scenario runs on.
//!
//! - `system`: the distribution's QEMU on `PATH` (bookworm: 7.2, no `igb`, no iommufd)
//!   and `$VFIOCTL_LAB/kernel/current` (Debian 6.1);
//! - `modern`: QEMU 10 from bookworm-backports unpacked by `scripts/setup --modern` into
//!   `$VFIOCTL_LAB/stacks/qemu-10` (run with `-L <dir>/usr/share/qemu`, its TCG and the
//!   lab's devices are built in) and `$VFIOCTL_LAB/kernel/modern` (6.12: iommufd, VFIO
//!   device cdevs).
//!
//! `vm up --stack NAME` (or `--qemu PATH`) and a regress scenario's `vm.stack` pick one;
//! [`versions`] is what every report records.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;

/// A resolved stack.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Stack {
    /// The stack's name (`system` or `modern`).
    pub name: String,
    /// The QEMU binary: a name looked up on `PATH`, or the lab's unpacked one.
    pub qemu: PathBuf,
    /// QEMU's firmware and option ROM directory (`-L`), for an unpacked QEMU.
    pub data_dir: Option<PathBuf>,
    /// The stack's guest kernel, when the lab has it.
    pub kernel: Option<PathBuf>,
    /// Where this QEMU's loadable modules (the TCG accelerator on Debian) are.
    pub module_dir: PathBuf,
}

/// The stack names [`resolve`] knows.
pub const NAMES: &[&str] = &["system", "modern"];

/// A stack name that is not known or not set up.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    /// The name is neither `system` nor `modern`.
    #[error("unknown stack {name:?} (known: system, modern)")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// A file the stack needs (its QEMU or kernel) is not in the lab directory.
    #[error("stack {name}: {} is missing", path.display())]
    Missing {
        /// The stack's name.
        name: String,
        /// The missing file.
        path: PathBuf,
    },
}

impl crate::Diagnose for StackError {
    fn hint(&self) -> Option<String> {
        Some(match self {
            StackError::Unknown { .. } => "use --stack system or --stack modern, or --qemu PATH".into(),
            StackError::Missing { .. } => "run scripts/setup --modern (QEMU 10 and kernel 6.12 from bookworm-backports into .lab/)".into(),
        })
    }
    fn exit(&self) -> crate::Exit {
        match self {
            StackError::Unknown { .. } => crate::Exit::Usage,
            StackError::Missing { .. } => crate::Exit::Infrastructure,
        }
    }
}

/// Resolve `name` against the lab directory `lab` (`$VFIOCTL_LAB`, default `.lab`).
pub fn resolve(name: &str, lab: &Path) -> Result<Stack, StackError> {
    match name {
        "system" => Ok(Stack {
            name: name.into(),
            qemu: "qemu-system-x86_64".into(),
            data_dir: None,
            kernel: Some(lab.join("kernel/current/vmlinuz")).filter(|k| k.is_file()),
            module_dir: PathBuf::from(crate::regress::nested::QEMU_MODULE_DIR),
        }),
        "modern" => {
            let dir = lab.join("stacks/qemu-10");
            let qemu = dir.join("usr/bin/qemu-system-x86_64");
            if !qemu.is_file() {
                return Err(StackError::Missing {
                    name: name.into(),
                    path: qemu,
                });
            }
            let kernel = lab.join("kernel/modern/vmlinuz");
            if !kernel.is_file() {
                return Err(StackError::Missing {
                    name: name.into(),
                    path: kernel,
                });
            }
            Ok(Stack {
                name: name.into(),
                qemu,
                data_dir: Some(dir.join("usr/share/qemu")),
                kernel: Some(kernel),
                module_dir: dir.join("usr/lib/x86_64-linux-gnu/qemu"),
            })
        }
        _ => Err(StackError::Unknown { name: name.into() }),
    }
}

impl Stack {
    /// QEMU arguments the stack needs (`-L <data dir>`).
    pub fn qemu_args(&self) -> Vec<String> {
        match &self.data_dir {
            Some(d) => vec!["-L".into(), d.display().to_string()],
            None => Vec::new(),
        }
    }
}

/// The versions a report records.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct Versions {
    /// `qemu-system-x86_64 --version`, first line.
    pub qemu: Option<String>,
    /// The guest kernel release (from its `lib/modules/<release>` next to the image, or
    /// the directory it sits in).
    pub kernel: Option<String>,
    /// The firmware QEMU boots (`seabios` with its package version, or the OVMF file).
    pub firmware: Option<String>,
    /// `tcg` or `kvm`.
    pub accelerator: Option<String>,
}

/// `qemu --version`, first line (`QEMU emulator version 10.0.2 (Debian ...)`).
pub fn qemu_version(qemu: &Path) -> Option<String> {
    let q = crate::vm::lifecycle::find_program(qemu);
    let o = Command::new(q)
        .arg("--version")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .next()
        .map(|l| l.trim().to_string())
}

/// The release of the kernel image `vmlinuz`: the only `lib/modules/<release>` beside it
/// (an unpacked Debian kernel), else the name of the directory it sits in.
pub fn kernel_release(vmlinuz: &Path) -> Option<String> {
    let dir = vmlinuz.canonicalize().ok()?.parent()?.to_path_buf();
    let mods: Vec<String> = std::fs::read_dir(dir.join("lib/modules"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    match mods.as_slice() {
        [one] => Some(one.clone()),
        _ => dir.file_name().map(|n| n.to_string_lossy().into_owned()),
    }
}

/// Versions of a VM's stack: QEMU, kernel, firmware, accelerator.
pub fn versions(qemu: &Path, kernel: Option<&Path>, firmware: &str, accelerator: &str) -> Versions {
    let firmware = match firmware {
        "seabios" => {
            // The package that ships bios-256k.bin on Debian.
            let v = Command::new("dpkg-query")
                .args(["-W", "-f=${Version}", "seabios"])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
            Some(match v {
                Some(v) if !v.is_empty() => format!("seabios {v}"),
                _ => "seabios".into(),
            })
        }
        other => Some(other.to_string()),
    };
    Versions {
        qemu: qemu_version(qemu),
        kernel: kernel.and_then(kernel_release),
        firmware,
        accelerator: Some(accelerator.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_missing_stacks_are_typed_errors() {
        let t = tempfile::tempdir().unwrap();
        assert!(matches!(
            resolve("ancient", t.path()),
            Err(StackError::Unknown { .. })
        ));
        let e = resolve("modern", t.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("stacks/qemu-10/usr/bin/qemu-system-x86_64 is missing"),
            "{e}"
        );
        let s = resolve("system", t.path()).unwrap();
        assert!(s.qemu_args().is_empty());
    }

    #[test]
    fn modern_stack_passes_its_data_dir() {
        let t = tempfile::tempdir().unwrap();
        let q = t.path().join("stacks/qemu-10/usr/bin");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("qemu-system-x86_64"), "").unwrap();
        std::fs::create_dir_all(
            t.path()
                .join("kernel/6.12.95+deb12-amd64/lib/modules/6.12.95+deb12-amd64"),
        )
        .unwrap();
        std::fs::write(t.path().join("kernel/6.12.95+deb12-amd64/vmlinuz"), "").unwrap();
        std::os::unix::fs::symlink("6.12.95+deb12-amd64", t.path().join("kernel/modern")).unwrap();
        let s = resolve("modern", t.path()).unwrap();
        assert_eq!(
            s.qemu_args(),
            vec![
                "-L".to_string(),
                t.path()
                    .join("stacks/qemu-10/usr/share/qemu")
                    .display()
                    .to_string()
            ]
        );
        assert_eq!(
            kernel_release(s.kernel.as_ref().unwrap()).as_deref(),
            Some("6.12.95+deb12-amd64")
        );
    }
}
