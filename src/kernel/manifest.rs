//! The pin manifest (`kernel-configs/manifest.toml`) and the build manifest
//! (`build-manifest.json`, written next to the artefacts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `kernel-configs/manifest.toml`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Pins {
    pub kernel: KernelPin,
    #[serde(default)]
    pub nvidia: BTreeMap<String, NvidiaPin>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct KernelPin {
    /// The upstream series every source must belong to (`6.1`); the exact version and
    /// checksum used are recorded in `kernel.lock` (see [`super::lock`]).
    pub series: String,
    /// The Debian package that ships the tarball.
    pub package: String,
    pub tarball: PathBuf,
    pub arch: String,
    pub srcarch: String,
    pub base: String,
    pub always: Vec<String>,
    pub patches: PathBuf,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct NvidiaPin {
    pub version: String,
    pub source_package: String,
    pub source_deb: String,
    pub source_deb_sha256: String,
    pub source_tarball: PathBuf,
    pub source_subdir: PathBuf,
    pub firmware_package: String,
    pub firmware_deb: String,
    pub firmware_deb_sha256: String,
    pub patches: PathBuf,
    #[serde(default)]
    pub userland: Vec<String>,
}

impl Pins {
    pub fn parse(text: &str) -> Result<Pins, toml::de::Error> {
        toml::from_str(text)
    }
}

/// How long one phase took.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct PhaseTime {
    pub phase: String,
    pub seconds: f64,
    /// Skipped because its result was already there (cache).
    pub skipped: bool,
}

/// `build-manifest.json`: what was built from what.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct BuildManifest {
    pub schema: u32,
    pub vfioctl_version: String,
    /// Hash over every input (pins, source checksum, fragments, allowlist, patches, NVIDIA mode).
    pub input_key: String,
    /// sha256 of the final .config.
    pub config_sha256: String,
    pub kernel_version: String,
    /// `uname -r` of the built kernel (`make kernelrelease`).
    pub kernel_release: String,
    pub source: SourceInfo,
    pub flavours: Vec<String>,
    pub fragments: Vec<FragmentInfo>,
    pub allowlist_sha256: String,
    pub verify: VerifySummary,
    pub toolchain: Toolchain,
    pub jobs: u32,
    pub phases: Vec<PhaseTime>,
    pub artefacts: Artefacts,
    pub nvidia: Option<NvidiaInfo>,
    /// Unix seconds.
    pub started: u64,
    pub finished: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct SourceInfo {
    /// What `--source` named (tarball or directory).
    pub given: PathBuf,
    /// The tree that was built.
    pub tree: PathBuf,
    /// sha256 of the tarball (None for a directory source).
    pub sha256: Option<String>,
    /// The Debian package the tarball came from and its exact version, when it is the
    /// pinned package's tarball.
    pub package: Option<String>,
    pub package_version: Option<String>,
    /// How it relates to `kernel-configs/kernel.lock`.
    pub lock: super::lock::LockState,
    pub patches: Vec<FragmentInfo>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct FragmentInfo {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VerifySummary {
    pub requested: usize,
    pub dropped: usize,
    pub allowed: usize,
    pub symbols_y: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Toolchain {
    pub cc: String,
    /// `CONFIG_CC_VERSION_TEXT` of the build.
    pub cc_version: String,
    pub ccache: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Artefacts {
    /// bzImage, copied as `vmlinuz` (same layout as the lab's Debian kernel).
    pub vmlinuz: PathBuf,
    pub vmlinuz_bytes: u64,
    pub config: PathBuf,
    pub system_map: PathBuf,
    pub module_symvers: PathBuf,
    /// `lib/modules/<release>` under the staging dir (modules_install + depmod).
    pub modules_dir: PathBuf,
    /// The `O=` tree: what out-of-tree module builds need (`SYSOUT=`, `M=`), also linked
    /// as `lib/modules/<release>/build`.
    pub objdir: PathBuf,
    pub logs: PathBuf,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct NvidiaInfo {
    /// `open-535` or `run:<file>`.
    pub mode: String,
    pub version: String,
    pub patches: Vec<FragmentInfo>,
    /// Installed `.ko` files (relative to the modules dir) and their sizes.
    pub modules: BTreeMap<String, u64>,
    /// `modinfo -F vermagic` of nvidia.ko.
    pub vermagic: String,
    /// GSP firmware files installed under `lib/firmware/nvidia/<version>/`.
    pub firmware: Vec<PathBuf>,
    /// For `run:` installers: the nvidia-installer command for hosts/chroots that already
    /// have that driver installed (not run by vfioctl).
    pub installer_command: Option<Vec<String>>,
}

impl BuildManifest {
    pub fn read(path: &Path) -> Option<BuildManifest> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_manifest_parses() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs/manifest.toml");
        let pins = Pins::parse(&std::fs::read_to_string(p).unwrap()).unwrap();
        assert_eq!(pins.kernel.arch, "x86_64");
        assert_eq!(pins.kernel.always, vec!["base", "x86_64"]);
        let nv = &pins.nvidia["open-535"];
        assert!(nv.source_deb.contains(&nv.version));
        assert!(nv.firmware_deb.contains(&nv.version));
        assert_eq!(nv.source_deb_sha256.len(), 64);
    }
}
