//! The SR-IOV lab scenario (issue 16): L0 runs QEMU 10 (the `modern` stack) with an
//! emulated intel-iommu and an `igb` (82576, SR-IOV, VF id 8086:10ca) for an L1 guest on
//! kernel 6.12. Inside L1 the static vfioctl creates 2 VFs (`vf create`, autoprobe off),
//! binds VF 0 to vfio-pci with the group planner (`bind`), a QEMU 10 inside L1 starts an
//! L2 guest with the VF cold-plugged through `-device vfio-pci`, L2 lists its PCI devices,
//! and `restore --all` gives the VF back and removes both VFs, leaving L1 as it was.
//!
//! The pieces here are plain data and pure functions (QEMU arguments, the L1 script, the
//! verdict over what L1 and L2 printed); the gated test `tests/shared_lab.rs` boots it with
//! `vfioctl::vm` and the nested-passthrough machinery of [`crate::regress::nested`].

use crate::regress::nested::{at_field, l1_qemu_args_with, l2_run, ScenarioFailed, DRV_FN};

/// The PF in L1 (its own root port).
pub const L1_PF: &str = "0000:01:00.0";
/// What L2 must see: an 82576 virtual function.
pub const VF_ID: &str = "8086:10ca";
/// The PF's id (82576).
pub const PF_ID: &str = "8086:10c9";

/// QEMU arguments of the L1 guest on top of the VM module's q35 machine: the emulated
/// IOMMU and the igb on its own root port.
pub fn sriov_l1_qemu_args() -> Vec<String> {
    l1_qemu_args_with("igb,bus=nrp0,mac=52:54:00:00:06:00")
}

/// The L1 script, run through the agent's exec. Prints `@@ name key=value` lines; L2's
/// `/init` prints `@@ pci BDF ID DRIVER` and `@@ l2-done` (its serial log is cat'ed).
pub fn sriov_l1_script(l2_timeout_s: u64) -> String {
    let pf = L1_PF;
    let l2 = l2_run("$VF", l2_timeout_s);
    format!(
        r#"/bin/busybox --install -s /bin 2>/dev/null
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
P=/sys/bus/pci/devices/{pf}
{DRV_FN}nvf() {{ ls -d $P/virtfn* 2>/dev/null | wc -l; }}
echo "@@ before pf_driver=$(drv {pf}) total=$(cat $P/sriov_totalvfs) numvfs=$(cat $P/sriov_numvfs) autoprobe=$(cat $P/sriov_drivers_autoprobe) vfs=$(nvf)"
vfioctl vf create {pf} --count 2 2>&1; rc=$?
VF=$(basename $(readlink $P/virtfn0) 2>/dev/null)
VF1=$(basename $(readlink $P/virtfn1) 2>/dev/null)
echo "@@ create rc=$rc numvfs=$(cat $P/sriov_numvfs) autoprobe=$(cat $P/sriov_drivers_autoprobe) vf0=$VF vf0_id=$(cat /sys/bus/pci/devices/$VF/vendor 2>/dev/null | sed s/0x//):$(cat /sys/bus/pci/devices/$VF/device 2>/dev/null | sed s/0x//) vf0_driver=$(drv $VF) vf1=$VF1 vf1_driver=$(drv $VF1)"
vfioctl --json vf list {pf} 2>&1 | tr -d ' \n'; echo
vfioctl bind $VF 2>&1; rc=$?
echo "@@ bind rc=$rc vf=$VF driver=$(drv $VF) group=$(basename $(readlink /sys/bus/pci/devices/$VF/iommu_group))"
{l2}vfioctl restore --all 2>&1; rc=$?
echo "@@ restore rc=$rc pf_driver=$(drv {pf}) numvfs=$(cat $P/sriov_numvfs) autoprobe=$(cat $P/sriov_drivers_autoprobe) vfs=$(nvf)"
"#
    )
}

fn field(out: &str, name: &str, key: &str) -> Option<String> {
    at_field(out, name, key)
}

/// What L1 and L2 reported, judged (pure): `Ok(note)` when L1 created 2 driverless VFs,
/// bound VF 0 to vfio-pci, L2 listed a device with [`VF_ID`], and `restore --all` left
/// the PF on igb with no VFs and autoprobe as before; else `Err(reason)`.
pub fn sriov_verdict(out: &str) -> Result<String, ScenarioFailed> {
    let f = |n: &str, k: &str| field(out, n, k).unwrap_or_else(|| "?".into());
    if f("before", "pf_driver") != "igb" || f("before", "vfs") != "0" {
        return Err(ScenarioFailed::from(format!(
            "L1 did not start with {L1_PF} on igb and no VFs (driver {}, {} VFs)",
            f("before", "pf_driver"),
            f("before", "vfs")
        )));
    }
    if f("create", "rc") != "0" || f("create", "numvfs") != "2" {
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl vf create {L1_PF} --count 2 failed (rc {}, sriov_numvfs {})",
            f("create", "rc"),
            f("create", "numvfs")
        )));
    }
    if f("create", "vf0_id") != VF_ID || f("create", "vf0_driver") != "none" {
        return Err(ScenarioFailed::from(format!(
            "L1: VF 0 is {} on {}, expected a driverless {VF_ID} (autoprobe off)",
            f("create", "vf0_id"),
            f("create", "vf0_driver")
        )));
    }
    if f("bind", "rc") != "0" || f("bind", "driver") != "vfio-pci" {
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl bind {} did not leave it on vfio-pci (rc {}, driver {})",
            f("bind", "vf"),
            f("bind", "rc"),
            f("bind", "driver")
        )));
    }
    if !out.lines().any(|l| l.trim() == "@@ l2-done") {
        return Err(ScenarioFailed::from(format!(
            "L2 did not finish its device listing (QEMU rc {})",
            f("l2", "rc")
        )));
    }
    let l2: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| {
            let mut x = l.trim().strip_prefix("@@ pci ")?.split_whitespace();
            Some((x.next()?, x.next()?))
        })
        .collect();
    let Some((bdf, _)) = l2.iter().find(|(_, id)| *id == VF_ID) else {
        return Err(ScenarioFailed::from(format!(
            "L2 lists no {VF_ID}: {}",
            l2.iter()
                .map(|(b, id)| format!("{b} {id}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    if f("restore", "rc") != "0"
        || f("restore", "pf_driver") != "igb"
        || f("restore", "numvfs") != "0"
        || f("restore", "vfs") != "0"
        || f("restore", "autoprobe") != f("before", "autoprobe")
    {
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl restore --all left {L1_PF} on {} with {} VFs (sriov_numvfs {}, autoprobe {} -> {}), rc {}",
            f("restore", "pf_driver"),
            f("restore", "vfs"),
            f("restore", "numvfs"),
            f("before", "autoprobe"),
            f("restore", "autoprobe"),
            f("restore", "rc")
        )));
    }
    Ok(format!(
        "L1 created 2 VFs on {L1_PF} ({} of {}), bound {} to vfio-pci (group {}); L2 lists {bdf} {VF_ID} among {} device(s); restore --all left the PF on igb with no VFs",
        f("create", "numvfs"),
        f("before", "total"),
        f("bind", "vf"),
        f("bind", "group"),
        l2.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "@@ before pf_driver=igb total=7 numvfs=0 autoprobe=1 vfs=0\n\
@@ create rc=0 numvfs=2 autoprobe=0 vf0=0000:01:10.0 vf0_id=8086:10ca vf0_driver=none vf1=0000:01:10.2 vf1_driver=none\n\
@@ bind rc=0 vf=0000:01:10.0 driver=vfio-pci group=4\n\
@@ l2 rc=0\n@@ pci 0000:00:00.0 8086:29c0 none\n@@ pci 0000:01:00.0 8086:10ca none\n@@ l2-done\n\
@@ restore rc=0 pf_driver=igb numvfs=0 autoprobe=1 vfs=0\n";

    #[test]
    fn verdict_passes_when_l2_lists_the_vf_and_l1_is_restored() {
        let v = sriov_verdict(GOOD).unwrap();
        assert!(v.contains("L2 lists 0000:01:00.0 8086:10ca"), "{v}");
        assert!(
            v.contains("bound 0000:01:10.0 to vfio-pci (group 4)"),
            "{v}"
        );
    }

    #[test]
    fn verdict_names_each_missing_piece() {
        let cases = [
            ("create rc=0 numvfs=2", "create rc=1 numvfs=0", "vf create"),
            ("vf0_driver=none", "vf0_driver=igbvf", "autoprobe off"),
            (
                "bind rc=0 vf=0000:01:10.0 driver=vfio-pci",
                "bind rc=6 vf=0000:01:10.0 driver=none",
                "did not leave",
            ),
            ("@@ l2-done\n", "", "did not finish"),
            (
                "01:00.0 8086:10ca",
                "01:00.0 8086:10c9",
                "lists no 8086:10ca",
            ),
            (
                "restore rc=0 pf_driver=igb numvfs=0 autoprobe=1 vfs=0",
                "restore rc=7 pf_driver=igb numvfs=2 autoprobe=0 vfs=2",
                "restore --all left",
            ),
        ];
        for (from, to, want) in cases {
            let e = sriov_verdict(&GOOD.replace(from, to)).unwrap_err();
            assert!(e.reason.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn script_creates_binds_runs_l2_and_restores_in_that_order() {
        let s = sriov_l1_script(300);
        let pos = |x: &str| s.find(x).unwrap_or_else(|| panic!("{x}"));
        assert!(pos("vfioctl vf create 0000:01:00.0 --count 2") < pos("vfioctl bind $VF"));
        assert!(pos("vfioctl bind $VF") < pos("-device vfio-pci,host=$VF"));
        assert!(pos("-device vfio-pci,host=$VF") < pos("vfioctl restore --all"));
    }
}
