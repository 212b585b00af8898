//! Shared helpers of the kernel test files: where the lab, the fragments and a real
//! kernel tree are. Missing prerequisites come back as `vfioctl_testkit::Missing` for
//! `vfioctl_testkit::require!`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use vfioctl::kernel::{self, manifest::Pins};
use vfioctl_testkit::{lab as kit_lab, prereq, Missing};

pub fn repo() -> PathBuf {
    prereq::repo()
}

pub fn configs() -> PathBuf {
    repo().join("kernel-configs")
}

pub fn lab() -> PathBuf {
    prereq::lab_dir()
}

pub fn pins() -> Pins {
    Pins::parse(&std::fs::read_to_string(configs().join("manifest.toml")).unwrap()).unwrap()
}

/// The pinned linux-source tree, extracted once into the lab (the same code path
/// `vfioctl kernel build` uses). Missing when the tarball is not installed; a tarball
/// that is there but cannot be prepared (a pin it does not match, a patch that does not
/// apply) is a failure of the project, not a missing prerequisite: it panics.
pub fn kernel_tree() -> Result<PathBuf, Missing> {
    let pins = pins();
    if !pins.kernel.tarball.is_file() {
        return Err(Missing::new("linux-source", prereq::SETUP)
            .detail(format!("{} not installed", pins.kernel.tarball.display())));
    }
    let logdir = lab().join("kernel-build/test-logs");
    std::fs::create_dir_all(&logdir).unwrap_or_else(|e| panic!("{}: {e}", logdir.display()));
    let t = kernel::source::prepare(
        &kernel::source::SourceRequest {
            given: None,
            pin: &pins.kernel,
            configs: &configs(),
            cache: &lab().join("kernel-src"),
            allow_unpinned: false,
        },
        &logdir.join("source.log"),
    )
    .unwrap_or_else(|e| panic!("preparing the pinned kernel source: {}", chain(&e)));
    Ok(t.dir)
}

/// What a kernel configure or build needs here: make, gcc, flex, bison and the pinned
/// kernel tree.
pub fn build_prerequisites() -> Result<PathBuf, Missing> {
    prereq::kernel_build_tools()?;
    kernel_tree()
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A busybox initramfs whose `/init` runs `script` after mounting proc/sys/devtmpfs,
/// then prints `VFIOCTL-TEST-DONE` and powers off (written by the test kit through
/// `vfioctl::rootfs::cpio`). `extra` copies host trees into it (`(from, to-relative)`),
/// e.g. the built modules.
pub fn initramfs(dir: &Path, script: &str, extra: &[(PathBuf, &str)]) -> Result<PathBuf, String> {
    let out = dir.join("initramfs.cpio.gz");
    let extra: Vec<(PathBuf, String)> = extra
        .iter()
        .map(|(from, to)| (from.clone(), to.to_string()))
        .collect();
    kit_lab::initramfs(
        &out,
        &format!("{script}\necho VFIOCTL-TEST-DONE\npoweroff -f"),
        &extra,
    )
    .map_err(|e| e.to_string())?;
    Ok(out)
}

#[allow(unused_imports)]
pub use kit_lab::{boot, Boot};

/// `vfioctl kernel build` of `flavours` into the lab's default output (cached by input
/// hash, so a second run is instant), printing phases.
pub fn build(flavours: &[&str], nvidia: Option<&str>) -> Result<kernel::BuildResult, String> {
    let opts = kernel::BuildOptions {
        flavours: flavours.iter().map(|s| s.to_string()).collect(),
        nvidia: nvidia.map(|n| n.parse().unwrap()),
        ..kernel::BuildOptions::defaults(configs(), lab())
    };
    kernel::build(&opts, &mut |p| {
        if !matches!(p, kernel::build::Progress::Objects { .. }) {
            eprintln!("{p:?}")
        }
    })
    .map_err(|e| chain(&e))
}
