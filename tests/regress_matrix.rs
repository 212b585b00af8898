//! The version matrix of `scripts/lab-plan.toml` (issue 16), nightly tier: the 8 GiB
//! stand-in, hot and cold, on QEMU 7.2 (`system`) and QEMU 10.0 (`modern`) with guest
//! kernels Debian 6.1, Debian 6.12 and vfioctl's own 6.1 (`v8g-hot-<stack>-<kernel>`,
//! `v8g-cold-...`: twelve scenarios), run by `vfioctl regress` as the nightly timer does.
//! Every scenario must pass and record the QEMU and guest kernel it ran on, and each
//! combination must really differ (two QEMU versions, three kernel releases).
//!
//! About 10 minutes of TCG with --jobs 3: `scripts/test --nightly`, or `cargo test --test
//! regress_matrix -- --ignored --nocapture`. Missing stacks or kernels skip loudly (fail
//! under VFIOCTL_REQUIRE_LAB=1).

use std::collections::BTreeSet;
use std::path::PathBuf;

use vfioctl::regress::Outcome;
use vfioctl_testkit::prereq::{self, Missing};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The matrix's kernels: Debian's two and vfioctl's own base build (built through the
/// library when missing; cached after).
fn kernels() -> Result<(), Missing> {
    let lab = prereq::lab_dir();
    for (k, fix) in [
        ("kernel/current/vmlinuz", "scripts/setup"),
        ("kernel/modern/vmlinuz", "scripts/setup --modern"),
    ] {
        if !lab.join(k).is_file() {
            return Err(Missing::new(format!("guest kernel {k}"), fix));
        }
    }
    if !lab.join("kernel/vfioctl-base/vmlinuz").is_file() {
        prereq::kernel_build_tools()?;
        let opts =
            vfioctl::kernel::BuildOptions::defaults(repo().join("kernel-configs"), lab.clone());
        vfioctl::kernel::build(&opts, &mut |_| {}).map_err(|e| {
            Missing::new("vfioctl's own 6.1 kernel", "vfioctl kernel build").detail(e.to_string())
        })?;
    }
    Ok(())
}

#[test]
#[ignore = "nightly tier (scripts/test --nightly): twelve stand-in scenarios under TCG, about 10 minutes"]
fn the_8g_standin_passes_on_every_qemu_and_guest_kernel() {
    vfioctl_testkit::require!(prereq::qemu());
    vfioctl_testkit::require!(prereq::modern_qemu());
    vfioctl_testkit::require!(prereq::vsock_backend());
    vfioctl_testkit::require!(kernels());
    let names: Vec<String> = ["hot", "cold"]
        .iter()
        .flat_map(|p| {
            ["system", "modern"].iter().flat_map(move |st| {
                ["debian61", "debian612", "vfioctl61"]
                    .iter()
                    .map(move |k| format!("v8g-{p}-{st}-{k}"))
            })
        })
        .collect();
    let run = vfioctl_testkit::lab::regress_lab_plan(
        env!("CARGO_BIN_EXE_vfioctl"),
        &names,
        false,
        &["--jobs", "3"],
    );
    let (r, stderr) = (&run.results, &run.stderr);
    assert_eq!(r.scenarios.len(), 12, "stderr:\n{stderr}");
    let mut qemus = BTreeSet::new();
    let mut kernels = BTreeSet::new();
    for sc in &r.scenarios {
        assert_eq!(
            sc.outcome,
            Outcome::Passed,
            "{}: {}\n{}",
            sc.name,
            sc.summary,
            serde_json::to_string_pretty(sc).unwrap()
        );
        let q = sc.stack.get("qemu").cloned().unwrap_or_default();
        let k = sc.stack.get("guest-kernel").cloned().unwrap_or_default();
        eprintln!("{}: {q} / {k} ({} ms)", sc.name, sc.wall_ms);
        qemus.insert(q);
        kernels.insert(k);
    }
    assert_eq!(qemus.len(), 2, "two QEMU versions: {qemus:?}");
    assert_eq!(kernels.len(), 3, "three guest kernels: {kernels:?}");
    assert!(run.status.success(), "exit {:?}; {stderr}", run.status);
}
