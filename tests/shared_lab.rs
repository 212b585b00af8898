//! Shared GPUs proven on real kernels (issue 16), nightly tier: the shared-GPU scenarios of
//! `scripts/lab-plan.toml`, run by `vfioctl regress` as a nightly run would:
//!
//! - `sriov-vf`: L0 runs QEMU 10 (the `modern` stack) with an emulated intel-iommu and an
//!   `igb` (82576) for an L1 guest on Debian's 6.12; inside L1 the static vfioctl runs `vf
//!   create 0000:01:00.0 --count 2` (autoprobe off) and binds VF 0; L2 lists 8086:10ca
//!   cold-plugged by a QEMU 10 inside L1 and again after vfioctl inside L1 (`vm up --gpu
//!   vf:BDF`) hot-plugged it over QMP; `restore --all` removes both VFs.
//! - `mdev-mtty`: L1 on vfioctl's own 6.12 (`--series 6.12 --flavour vfio-guest,vfio-host`,
//!   built here through the library when missing, cached after) creates an mtty-2 instance
//!   with `vfioctl mdev create`; L2 lists 4348:3253 through `vfio-pci,sysfsdev=` cold and
//!   hot; `restore --all` removes the mdev.
//! - `iommufd-vf`: the same own kernel; a VF passed with `--vfio-backend iommufd` (cold) and
//!   `auto` (hot, which must choose iommufd), shown by QEMU's `iommufd` object (`vm status`)
//!   and by `/dev/iommu` + `/dev/vfio/devices/vfioN` held open by QEMU.
//!
//! Each is several minutes of nested TCG: the `nested` tier (`scripts/test --nightly`, or
//! `cargo test --test shared_lab -- --ignored --nocapture`). A missing prerequisite (QEMU 10
//! / kernel 6.12 in $VFIOCTL_LAB, linux-source-6.12, vhost-device-vsock, busybox) is a loud
//! skip, and a failure under VFIOCTL_REQUIRE_LAB=1: it never counts as a pass.

use std::path::{Path, PathBuf};
use std::process::Command;

use vfioctl::regress::results::ScenarioResult;
use vfioctl::regress::Outcome;
use vfioctl_testkit::prereq::{self, Missing};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The modern stack (QEMU 10 + Debian's 6.12) and what every nested run needs.
fn modern_prerequisites() -> Result<(), Missing> {
    prereq::modern_qemu()?;
    prereq::vsock_backend()?;
    prereq::busybox()?;
    let k = prereq::lab_dir().join("kernel/modern/vmlinuz");
    if !k.is_file() {
        return Err(
            Missing::new("the modern stack's kernel 6.12", "scripts/setup --modern")
                .detail(format!("{} is missing", k.display())),
        );
    }
    Ok(())
}

/// vfioctl's own 6.12 kernel with the VFIO-host options, built through the library (the
/// same as `vfioctl kernel build --series 6.12 --flavour vfio-guest,vfio-host`); instant
/// when its inputs are unchanged.
fn own_modern_kernel() -> Result<PathBuf, Missing> {
    prereq::kernel_build_tools()?;
    let configs = repo().join("kernel-configs");
    let pins = vfioctl::kernel::manifest::Pins::parse(
        &std::fs::read_to_string(configs.join("manifest.toml")).unwrap(),
    )
    .unwrap()
    .select(
        Some(vfioctl::shared::lab::OWN_KERNEL_SERIES),
        &configs.join("manifest.toml"),
    )
    .unwrap();
    if !pins.kernel.tarball.is_file() {
        return Err(Missing::new(
            format!("the {} kernel source", pins.kernel.package),
            "scripts/setup --modern",
        )
        .detail(format!("{} is missing", pins.kernel.tarball.display())));
    }
    let opts = vfioctl::kernel::BuildOptions {
        series: Some(vfioctl::shared::lab::OWN_KERNEL_SERIES.into()),
        flavours: vfioctl::shared::lab::OWN_KERNEL_FLAVOURS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..vfioctl::kernel::BuildOptions::defaults(configs, prereq::lab_dir())
    };
    let r = vfioctl::kernel::build(&opts, &mut |p| {
        if !matches!(p, vfioctl::kernel::build::Progress::Objects { .. }) {
            eprintln!("own 6.12 kernel: {p:?}");
        }
    })
    .unwrap_or_else(|e| panic!("vfioctl kernel build --series 6.12: {e}"));
    Ok(r.manifest.artefacts.vmlinuz)
}

/// `vfioctl regress scripts/lab-plan.toml --only NAME`: the scenario's result and what the
/// run printed on stderr.
fn regress(name: &str) -> (ScenarioResult, String) {
    let run = vfioctl_testkit::lab::regress_lab_plan(
        env!("CARGO_BIN_EXE_vfioctl"),
        &[name.to_string()],
        true,
        &[],
    );
    let sc = run.scenario(name).clone();
    let keep = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("shared-lab-{name}"));
    let _ = std::fs::remove_dir_all(&keep);
    let _ = Command::new("cp")
        .arg("-a")
        .arg(run.out.path().join("out"))
        .arg(&keep)
        .status();
    (sc, run.stderr)
}

fn assert_passed(name: &str, wants: &[&str]) {
    let (sc, stderr) = regress(name);
    let json = serde_json::to_string_pretty(&sc).unwrap();
    assert_eq!(
        sc.outcome,
        Outcome::Passed,
        "{}\n{json}\nstderr:\n{stderr}",
        sc.summary
    );
    for w in wants {
        assert!(
            json.contains(w),
            "{name}: the validate note lacks {w:?}:\n{json}"
        );
    }
    eprintln!(
        "shared_lab::{name}: PASS in {:.0} s on {:?}",
        sc.wall_ms as f64 / 1000.0,
        sc.stack
    );
}

#[test]
#[ignore = "nightly tier (scripts/test --nightly): SR-IOV through two levels of TCG, about 10 minutes"]
fn sriov_vf_created_in_l1_reaches_l2_cold_and_hot_and_restore_removes_it() {
    vfioctl_testkit::require!(modern_prerequisites());
    assert_passed(
        "sriov-vf",
        &[
            "L2 lists 0000:01:00.0 8086:10ca",
            "after vfioctl in L1 hot-plugged it over QMP",
            "restore --all left the PF on igb with no VFs",
        ],
    );
}

#[test]
#[ignore = "nightly tier (scripts/test --nightly): an mdev through two levels of TCG"]
fn mdev_created_in_l1_reaches_l2_cold_and_hot_and_restore_removes_it() {
    vfioctl_testkit::require!(modern_prerequisites());
    vfioctl_testkit::require!(own_modern_kernel());
    assert_passed(
        "mdev-mtty",
        &[
            "4348:3253 cold-plugged through sysfsdev=",
            "after the QMP hotplug",
            "restore --all removed it",
        ],
    );
}

#[test]
#[ignore = "nightly tier (scripts/test --nightly): iommufd through two levels of TCG"]
fn iommufd_backend_is_used_cold_and_chosen_by_auto_for_hotplug() {
    vfioctl_testkit::require!(modern_prerequisites());
    vfioctl_testkit::require!(own_modern_kernel());
    assert_passed(
        "iommufd-vf",
        &[
            "cold-plugged, QEMU object iommufd",
            "after the QMP hotplug (auto chose iommufd)",
            "restore --all left the PF on igb with no VFs",
        ],
    );
}
