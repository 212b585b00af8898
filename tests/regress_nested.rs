//! Nested passthrough for real (nightly tier, docs/LAB.md facts 2 and 3): `vfioctl regress
//! scripts/lab-plan.toml --only nested-passthrough` boots an L1 guest with an emulated
//! intel-iommu, binds its e1000e to vfio-pci with the static vfioctl inside it, starts an L2
//! guest with a second QEMU inside L1 and the device cold-plugged through vfio-pci, then a
//! second L2 started by the static vfioctl inside L1 (`vfioctl vm up --gpu 0000:01:00.0`:
//! hot-plugged over QMP), and passes only when both L2 guests list 0000:01:00.0
//! (8086:10d3) and L1 restored the device.
//!
//! About 8 minutes under TCG (two L2 boots; 456 s on the 2-core build machine): the
//! `nested` tier of scripts/test (CI). Without QEMU or the
//! lab kernel it skips loudly (fails under `VFIOCTL_REQUIRE_LAB=1`).

use vfioctl::regress::Outcome;

#[test]
fn nested_guest_lists_the_device_passed_through_by_l1() {
    vfioctl_testkit::require!(vfioctl_testkit::prereq::qemu());
    vfioctl_testkit::require!(vfioctl_testkit::prereq::lab_kernel());
    let run = vfioctl_testkit::lab::regress_lab_plan(
        env!("CARGO_BIN_EXE_vfioctl"),
        &["nested-passthrough".to_string()],
        true,
        &[],
    );
    let (sc, stderr) = (run.scenario("nested-passthrough"), &run.stderr);
    assert_eq!(
        sc.outcome,
        Outcome::Passed,
        "{}\n{}\nstderr:\n{stderr}",
        sc.summary,
        serde_json::to_string_pretty(sc).unwrap()
    );
    // The verdict came from L2: the validate step's note names the device it listed.
    let json = serde_json::to_string(sc).unwrap();
    assert!(
        json.contains("L2 lists 0000:01:00.0 8086:10d3"),
        "validate note: {json}"
    );
    assert!(
        json.contains("after vfioctl in L1 hot-plugged it over QMP (group backend)"),
        "validate note: {json}"
    );
    assert!(run.status.success(), "exit {:?}; {stderr}", run.status);
}
