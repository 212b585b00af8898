//! NVIDIA GPU kernel modules built against a vfioctl guest kernel.
//!
//! Two sources:
//! - `open-535`: Debian bookworm's `nvidia-open-kernel-source` (contrib; prebuilt
//!   `nv-kernel.o_binary`, only the interface layer compiles), patched from
//!   `kernel-configs/patches/nvidia-535/`, plus `firmware-nvidia-gsp` (non-free-firmware).
//! - `run:FILE`: a user's `NVIDIA-Linux-x86_64-<ver>.run`: extracted (`--extract-only`),
//!   its `kernel-open/` built the same way, its `firmware/gsp_*.bin` installed. The
//!   `nvidia-installer -k <kver> --kernel-source-path ...` command is also built (for a
//!   chroot/host that already has that driver installed: `--kernel-module-only` requires
//!   it) and recorded, not run.
//!
//! Both need a fully built kernel tree: `Module.symvers` with vmlinux exports in `SYSOUT`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::cmd::Cmd;

/// `--nvidia open-535 | run:FILE`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NvidiaMode {
    /// A pinned Debian driver (`open-535`; key into `[nvidia.*]` of the pin manifest).
    Debian(String),
    /// A `.run` installer file.
    Run(PathBuf),
}

/// A `--nvidia` value that is neither `open-*` nor `run:FILE`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadNvidiaMode {
    /// `run:` without a file.
    #[error("run: needs a file: --nvidia run:NVIDIA-Linux-x86_64-<ver>.run")]
    RunWithoutFile,
    /// Anything else.
    #[error("`{input}`: expected open-535 or run:FILE")]
    Unknown {
        /// The `--nvidia` value given.
        input: String,
    },
}

impl FromStr for NvidiaMode {
    type Err = BadNvidiaMode;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(f) = s.strip_prefix("run:") {
            if f.is_empty() {
                return Err(BadNvidiaMode::RunWithoutFile);
            }
            return Ok(NvidiaMode::Run(PathBuf::from(f)));
        }
        if s.starts_with("open-") {
            return Ok(NvidiaMode::Debian(s.to_string()));
        }
        Err(BadNvidiaMode::Unknown { input: s.into() })
    }
}

impl std::fmt::Display for NvidiaMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NvidiaMode::Debian(k) => f.write_str(k),
            NvidiaMode::Run(p) => write!(f, "run:{}", p.display()),
        }
    }
}

/// The driver version in a `.run` file name (`NVIDIA-Linux-x86_64-535.261.03.run`).
pub fn run_version(file: &Path) -> Option<String> {
    let name = file.file_name()?.to_str()?;
    let v = name.strip_suffix(".run")?.rsplit('-').next()?;
    (v.split('.').count() >= 2 && v.split('.').all(|p| p.chars().all(|c| c.is_ascii_digit())))
        .then(|| v.to_string())
}

/// Inputs of one NVIDIA module build.
#[derive(Clone, Debug)]
pub struct ModuleBuild<'a> {
    /// The driver's kernel module source (`modules/nvidia-open-kernel` or `kernel-open`).
    pub nvsrc: &'a Path,
    /// Kernel source tree (`SYSSRC`).
    pub syssrc: &'a Path,
    /// Kernel build tree with `Module.symvers` (`SYSOUT`, the `O=` dir).
    pub sysout: &'a Path,
    /// Parallel make jobs (`-jN`).
    pub jobs: u32,
    /// Compiler (`gcc` or `ccache gcc`); NVIDIA's Makefile would otherwise take
    /// `CONFIG_CC_VERSION_TEXT`'s compiler.
    pub cc: &'a str,
}

impl ModuleBuild<'_> {
    /// `make -C NVSRC -jN modules SYSSRC=… SYSOUT=… CC=…` (not the nvidia-drm/peermem
    /// stubs: no DRM/InfiniBand in the guest).
    pub fn make_modules(&self) -> Cmd {
        Cmd::new("make").args([
            "-C".to_string(),
            self.nvsrc.display().to_string(),
            format!("-j{}", self.jobs),
            "modules".into(),
            format!("SYSSRC={}", self.syssrc.display()),
            format!("SYSOUT={}", self.sysout.display()),
            format!("CC={}", self.cc),
            "NV_EXCLUDE_KERNEL_MODULES=nvidia-drm nvidia-peermem".into(),
        ])
    }

    /// `make modules_install` into a staging root (stripped, `kernel/drivers/video`).
    pub fn make_modules_install(&self, staging: &Path) -> Cmd {
        Cmd::new("make").args([
            "-C".to_string(),
            self.nvsrc.display().to_string(),
            "modules_install".into(),
            format!("SYSSRC={}", self.syssrc.display()),
            format!("SYSOUT={}", self.sysout.display()),
            format!("INSTALL_MOD_PATH={}", staging.display()),
            "INSTALL_MOD_STRIP=1".into(),
            "NV_EXCLUDE_KERNEL_MODULES=nvidia-drm nvidia-peermem".into(),
            "DEPMOD=/bin/true".into(),
        ])
    }
}

/// `sh FILE --extract-only --target DIR` (makeself; no root, nothing installed).
pub fn run_extract(file: &Path, target: &Path) -> Cmd {
    Cmd::new("sh").args([
        file.display().to_string(),
        "--extract-only".into(),
        "--target".into(),
        target.display().to_string(),
    ])
}

/// The nvidia-installer command that builds and installs only the open kernel modules of
/// an extracted `.run` for a kernel that is not running. `--kernel-module-only` needs
/// the same driver version already installed (NVIDIA's help text), so vfioctl records
/// this for a rootfs chroot instead of running it on the build host.
pub fn installer_command(
    extracted: &Path,
    kernel_release: &str,
    syssrc: &Path,
    sysout: &Path,
    staging: &Path,
) -> Vec<String> {
    vec![
        extracted.join("nvidia-installer").display().to_string(),
        "--silent".into(),
        "--kernel-module-only".into(),
        "--kernel-module-type=open".into(),
        format!("--kernel-name={kernel_release}"),
        format!("--kernel-source-path={}", syssrc.display()),
        format!("--kernel-output-path={}", sysout.display()),
        format!(
            "--kernel-install-path={}",
            staging
                .join("lib/modules")
                .join(kernel_release)
                .join("kernel/drivers/video")
                .display()
        ),
        "--no-x-check".into(),
        "--no-nouveau-check".into(),
        "--no-rebuild-initramfs".into(),
        "--skip-module-load".into(),
        "--no-dkms".into(),
        "--no-drm".into(),
        "--no-peermem".into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!(
            "open-535".parse::<NvidiaMode>().unwrap(),
            NvidiaMode::Debian("open-535".into())
        );
        assert_eq!(
            "run:/x/NVIDIA-Linux-x86_64-550.1.2.run"
                .parse::<NvidiaMode>()
                .unwrap(),
            NvidiaMode::Run("/x/NVIDIA-Linux-x86_64-550.1.2.run".into())
        );
        assert!("run:".parse::<NvidiaMode>().is_err());
        assert!("proprietary".parse::<NvidiaMode>().is_err());
        assert_eq!(
            run_version(Path::new("/d/NVIDIA-Linux-x86_64-535.261.03.run")).as_deref(),
            Some("535.261.03")
        );
        assert_eq!(run_version(Path::new("driver.run")), None);
    }

    #[test]
    fn make_and_installer_commands() {
        let b = ModuleBuild {
            nvsrc: Path::new("/w/nv"),
            syssrc: Path::new("/s"),
            sysout: Path::new("/o"),
            jobs: 2,
            cc: "ccache gcc",
        };
        assert_eq!(
            b.make_modules().render(),
            "make -C /w/nv -j2 modules SYSSRC=/s SYSOUT=/o 'CC=ccache gcc' 'NV_EXCLUDE_KERNEL_MODULES=nvidia-drm nvidia-peermem'"
        );
        assert!(b
            .make_modules_install(Path::new("/out"))
            .render()
            .contains("INSTALL_MOD_PATH=/out INSTALL_MOD_STRIP=1"));
        let c = installer_command(
            Path::new("/x/NVIDIA-Linux-x86_64-550.1.2"),
            "6.1.192-vfioctl",
            Path::new("/s"),
            Path::new("/o"),
            Path::new("/out"),
        );
        assert_eq!(c[0], "/x/NVIDIA-Linux-x86_64-550.1.2/nvidia-installer");
        assert!(c.contains(&"--kernel-name=6.1.192-vfioctl".to_string()));
        assert!(c.contains(&"--kernel-source-path=/s".to_string()));
        assert!(c.contains(&"--kernel-output-path=/o".to_string()));
        assert!(c.contains(
            &"--kernel-install-path=/out/lib/modules/6.1.192-vfioctl/kernel/drivers/video"
                .to_string()
        ));
        assert_eq!(
            run_extract(Path::new("/d/a.run"), Path::new("/w/x")).render(),
            "sh /d/a.run --extract-only --target /w/x"
        );
    }
}
