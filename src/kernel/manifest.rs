//! The pin manifest (`kernel-configs/manifest.toml`) and the build manifest
//! (`build-manifest.json`, written next to the artefacts).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::KernelError;

/// `kernel-configs/manifest.toml`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct Pins {
    /// The `[kernel]` table: the pinned kernel series and how to build it.
    pub kernel: KernelPin,
    /// The `[nvidia.<key>]` tables: pinned NVIDIA driver packages by mode key (e.g. `open-535`).
    #[serde(default)]
    pub nvidia: BTreeMap<String, NvidiaPin>,
    /// The `[series."<x.y>"]` tables: further kernel series a build may select with
    /// `--series` (e.g. `6.12` for iommufd and VFIO device cdevs); `[kernel]` is the default.
    #[serde(default)]
    pub series: BTreeMap<String, KernelPin>,
}

/// The `[kernel]` table of `kernel-configs/manifest.toml`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct KernelPin {
    /// The upstream series every source must belong to (`6.1`); the exact version and
    /// checksum used are recorded in `kernel.lock` (see [`super::lock`]).
    pub series: String,
    /// The Debian package that ships the tarball.
    pub package: String,
    /// The source tarball the package installs (e.g. `/usr/src/linux-source-6.1.tar.xz`), used when `--source` is not given.
    pub tarball: PathBuf,
    /// The target architecture (`ARCH=`, e.g. `x86_64`).
    pub arch: String,
    /// The architecture directory under `arch/` for Kconfig (`x86` for `x86_64`).
    pub srcarch: String,
    /// The make target fragments are merged onto (e.g. `tinyconfig`).
    pub base: String,
    /// Flavours merged before the requested ones, in this order (e.g. `base`, `x86_64`).
    pub always: Vec<String>,
    /// Directory, relative to `kernel-configs/`, of `*.patch` files applied to the extracted tarball in name order.
    pub patches: PathBuf,
    /// The lock file inside `kernel-configs/` recording the exact source of this series
    /// (default `kernel.lock`; each further series has its own).
    #[serde(default = "default_lock_file")]
    pub lock: String,
}

fn default_lock_file() -> String {
    super::lock::LOCK_FILE.to_string()
}

/// A `[nvidia.<key>]` table: the Debian packages of one NVIDIA open-module driver version.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct NvidiaPin {
    /// The driver version (e.g. `535.261.03`); also names the GSP firmware directory.
    pub version: String,
    /// The Debian package with the open kernel module source.
    pub source_package: String,
    /// Its `.deb` file name (`<pkg>_<debver>_<arch>.deb`), fetched with `apt-get download`.
    pub source_deb: String,
    /// The pinned sha256 (hex) of `source_deb`.
    pub source_deb_sha256: String,
    /// The source tarball's path inside the `.deb`.
    pub source_tarball: PathBuf,
    /// The module source directory inside that tarball, once extracted.
    pub source_subdir: PathBuf,
    /// The Debian package with the GSP firmware.
    pub firmware_package: String,
    /// Its `.deb` file name, fetched with `apt-get download`.
    pub firmware_deb: String,
    /// The pinned sha256 (hex) of `firmware_deb`.
    pub firmware_deb_sha256: String,
    /// Directory, relative to `kernel-configs/`, of `*.patch` files applied to the module source.
    pub patches: PathBuf,
    /// Userland packages (same version) the rootfs builder installs with the modules.
    #[serde(default)]
    pub userland: Vec<String>,
}

impl Pins {
    /// Parse the manifest's TOML text.
    pub fn parse(text: &str) -> Result<Pins, toml::de::Error> {
        toml::from_str(text)
    }

    /// The series names this manifest pins, the default (`[kernel]`) first.
    pub fn series_names(&self) -> Vec<String> {
        std::iter::once(self.kernel.series.clone())
            .chain(self.series.keys().cloned())
            .collect()
    }

    /// These pins with `[kernel]` replaced by the requested series' table (`None`, or the
    /// default series' name, keeps `[kernel]`); `manifest` is the file they came from,
    /// for the error naming the series that are pinned.
    pub fn select(&self, series: Option<&str>, manifest: &Path) -> Result<Pins, KernelError> {
        let Some(want) = series.filter(|s| *s != self.kernel.series) else {
            return Ok(self.clone());
        };
        let pin = self
            .series
            .get(want)
            .ok_or_else(|| KernelError::UnknownSeries {
                name: want.to_string(),
                known: self.series_names().join(", "),
                manifest: manifest.to_path_buf(),
            })?;
        Ok(Pins {
            kernel: pin.clone(),
            nvidia: self.nvidia.clone(),
            series: self.series.clone(),
        })
    }
}

/// How long one phase took.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct PhaseTime {
    /// The phase name (e.g. `configure`, `compile`, `nvidia`).
    pub phase: String,
    /// Wall-clock duration in seconds.
    pub seconds: f64,
    /// Skipped because its result was already there (cache).
    pub skipped: bool,
}

/// `build-manifest.json`: what was built from what.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct BuildManifest {
    /// Format version of this file ([`super::build::MANIFEST_SCHEMA`]); a cached build of another schema is rebuilt.
    pub schema: u32,
    /// The vfioctl version that wrote it.
    pub vfioctl_version: String,
    /// Hash over every input (pins, source checksum, fragments, allowlist, patches, NVIDIA mode).
    pub input_key: String,
    /// sha256 of the final .config.
    pub config_sha256: String,
    /// The source's kernel version (from its Makefile, e.g. `6.1.192`).
    pub kernel_version: String,
    /// `uname -r` of the built kernel (`make kernelrelease`).
    pub kernel_release: String,
    /// The kernel source that was built.
    pub source: SourceInfo,
    /// The flavours merged, in merge order (the always-merged ones first).
    pub flavours: Vec<String>,
    /// The config fragments merged, in merge order, with their hashes.
    pub fragments: Vec<FragmentInfo>,
    /// sha256 of `kernel-configs/allowlist` as read.
    pub allowlist_sha256: String,
    /// Counts from verifying the final `.config` against the requests.
    pub verify: VerifySummary,
    /// The compiler used.
    pub toolchain: Toolchain,
    /// Parallel make jobs (`-j`).
    pub jobs: u32,
    /// Each phase's duration, in order.
    pub phases: Vec<PhaseTime>,
    /// Where the outputs are.
    pub artefacts: Artefacts,
    /// The NVIDIA modules built, if `--nvidia` was given.
    pub nvidia: Option<NvidiaInfo>,
    /// Unix seconds.
    pub started: u64,
    /// Unix seconds when the build finished.
    pub finished: u64,
}

/// The kernel source a build used.
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
    /// The installed Debian version of that package.
    pub package_version: Option<String>,
    /// How it relates to `kernel-configs/kernel.lock`.
    pub lock: super::lock::LockState,
    /// Patches applied to the tree, in order, with their hashes.
    pub patches: Vec<FragmentInfo>,
}

/// A config fragment or patch file and its hash.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct FragmentInfo {
    /// Flavour name for a fragment, file name for a patch.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// sha256 (hex) of its contents.
    pub sha256: String,
}

/// Counts from verifying the final `.config` ([`super::verify::Report`]).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct VerifySummary {
    /// Options the fragments requested.
    pub requested: usize,
    /// Requests that did not land (0 in a successful build).
    pub dropped: usize,
    /// Requests that did not land but are allowlisted.
    pub allowed: usize,
    /// Symbols set to `y` in the final `.config`.
    pub symbols_y: usize,
}

/// The compiler a build used.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Toolchain {
    /// The `CC` used (e.g. `gcc` or `ccache gcc`).
    pub cc: String,
    /// `CONFIG_CC_VERSION_TEXT` of the build.
    pub cc_version: String,
    /// Whether `CC` went through ccache.
    pub ccache: bool,
}

/// Where a build's outputs are (in the output directory unless noted).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct Artefacts {
    /// bzImage, copied as `vmlinuz` (same layout as the lab's Debian kernel).
    pub vmlinuz: PathBuf,
    /// Size of `vmlinuz` in bytes.
    pub vmlinuz_bytes: u64,
    /// The final `.config`, copied as `config`.
    pub config: PathBuf,
    /// `System.map`.
    pub system_map: PathBuf,
    /// `Module.symvers`.
    pub module_symvers: PathBuf,
    /// `lib/modules/<release>` under the staging dir (modules_install + depmod).
    pub modules_dir: PathBuf,
    /// The `O=` tree: what out-of-tree module builds need (`SYSOUT=`, `M=`), also linked
    /// as `lib/modules/<release>/build`.
    pub objdir: PathBuf,
    /// The directory of per-phase logs.
    pub logs: PathBuf,
}

/// The NVIDIA modules a build installed.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, schemars::JsonSchema)]
pub struct NvidiaInfo {
    /// `open-535` or `run:<file>`.
    pub mode: String,
    /// The driver version.
    pub version: String,
    /// Patches applied to the module source, in order, with their hashes.
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
    /// Read a `build-manifest.json`; `None` if missing or not parseable.
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
