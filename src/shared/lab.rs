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

use crate::regress::nested::{
    at_field, l1_qemu_args_with, l2_run, l2_vm, L2Seen, ScenarioFailed, DRV_FN,
};

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
    let hot = l2_vm("l2hot", "--gpu vf:$VF", l2_timeout_s);
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
{l2}{hot}vfioctl restore --all 2>&1; rc=$?
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
    let hot = L2Seen::parse(out, "l2hot");
    if let Some(why) = hot.missing("l2hot", VF_ID, true) {
        return Err(ScenarioFailed::from(why));
    }
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
        "L1 created 2 VFs on {L1_PF} ({} of {}), bound {} to vfio-pci (group {}); L2 lists {bdf} {VF_ID} among {} device(s) cold-plugged, and {} after vfioctl in L1 hot-plugged it over QMP ({} backend); restore --all left the PF on igb with no VFs",
        f("create", "numvfs"),
        f("before", "total"),
        f("bind", "vf"),
        f("bind", "group"),
        l2.len(),
        hot.lists(VF_ID, true).unwrap_or("?"),
        hot.backend().unwrap_or_else(|| "?".into())
    ))
}

/// The mdev parent of the mediated scenario: the kernel's mtty sample (a virtual device,
/// `/sys/class/mdev_bus/mtty`), built into vfioctl's own 6.12 kernel (`vfio-host` flavour).
pub const MDEV_PARENT: &str = "mtty";
/// The mdev type created: two serial ports.
pub const MDEV_TYPE: &str = "mtty-2";
/// What L2 must see: mtty's virtual PCI serial card.
pub const MTTY_ID: &str = "4348:3253";

/// The kernel of the mediated and iommufd scenarios' L1: vfioctl's own 6.12 build with
/// the emulated IOMMU and the VFIO-host options (iommufd, cdevs, mtty, igb, SR-IOV).
pub const OWN_KERNEL_SERIES: &str = "6.12";
/// Its flavours (`vfioctl kernel build --series 6.12 --flavour vfio-guest,vfio-host`).
pub const OWN_KERNEL_FLAVOURS: &[&str] = &["vfio-guest", "vfio-host"];

/// The shell prelude of every shared-GPU L1 script.
fn prelude() -> String {
    format!("/bin/busybox --install -s /bin 2>/dev/null\nexport PATH=/bin:/sbin:/usr/bin:/usr/sbin\n{DRV_FN}")
}

/// The mediated scenario's L1 script: `vfioctl mdev types` and `mdev create mtty mtty-2`,
/// L2 started by vfioctl with the mdev cold-plugged (`--cold mdev:UUID`, QEMU's
/// `vfio-pci,sysfsdev=`), a second L2 with it hot-plugged over QMP, then `restore --all`
/// removes the mdev. The VFIO backend is vfioctl's choice (`auto`).
pub fn mdev_l1_script(l2_timeout_s: u64) -> String {
    let cold = l2_vm("l2cold", "--cold mdev:$U", l2_timeout_s);
    let hot = l2_vm("l2hot", "--gpu mdev:$U", l2_timeout_s);
    format!(
        r#"{prelude}T=/sys/class/mdev_bus/{MDEV_PARENT}/mdev_supported_types/{MDEV_TYPE}
nmdev() {{ ls /sys/bus/mdev/devices 2>/dev/null | wc -l; }}
echo "@@ before parents=$(ls /sys/class/mdev_bus 2>/dev/null | tr '\n' ,) mdevs=$(nmdev) avail=$(cat $T/available_instances 2>/dev/null)"
echo "@@json types $(vfioctl --json mdev types {MDEV_PARENT} 2>&1 | tr -d '\n')"
vfioctl --json mdev create {MDEV_PARENT} {MDEV_TYPE} > /tmp/mc.json 2> /tmp/mc.err; rc=$?
sed 's/^/@@ create-err /' /tmp/mc.err
U=$(tr -d ' \n' < /tmp/mc.json | sed -n 's/.*"uuid":"\([0-9a-f-]*\)".*/\1/p')
echo "@@ create rc=$rc uuid=$U type=$(basename $(readlink /sys/bus/mdev/devices/$U/mdev_type) 2>/dev/null) avail=$(cat $T/available_instances) group=$(basename $(readlink /sys/bus/mdev/devices/$U/iommu_group) 2>/dev/null)"
{cold}{hot}vfioctl restore --all 2>&1; rc=$?
echo "@@ restore rc=$rc mdevs=$(nmdev) avail=$(cat $T/available_instances)"
"#,
        prelude = prelude()
    )
}

/// What the mediated scenario reported, judged (pure).
pub fn mdev_verdict(out: &str) -> Result<String, ScenarioFailed> {
    let f = |n: &str, k: &str| field(out, n, k).unwrap_or_else(|| "?".into());
    if !f("before", "parents").split(',').any(|p| p == MDEV_PARENT) {
        return Err(ScenarioFailed::from(format!(
            "L1 has no mdev parent `{MDEV_PARENT}` (parents: {}): its kernel lacks CONFIG_SAMPLE_VFIO_MDEV_MTTY",
            f("before", "parents")
        )));
    }
    let uuid = f("create", "uuid");
    if f("create", "rc") != "0" || uuid.is_empty() || f("create", "type") != MDEV_TYPE {
        let errs: Vec<&str> = out
            .lines()
            .filter_map(|l| l.trim().strip_prefix("@@ create-err "))
            .collect();
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl mdev create {MDEV_PARENT} {MDEV_TYPE} failed (rc {}, uuid `{uuid}`, type {}): {}",
            f("create", "rc"),
            f("create", "type"),
            errs.join(" / ")
        )));
    }
    let cold = L2Seen::parse(out, "l2cold");
    if let Some(why) = cold.missing("l2cold", MTTY_ID, false) {
        return Err(ScenarioFailed::from(why));
    }
    let hot = L2Seen::parse(out, "l2hot");
    if let Some(why) = hot.missing("l2hot", MTTY_ID, true) {
        return Err(ScenarioFailed::from(why));
    }
    if f("restore", "rc") != "0"
        || f("restore", "mdevs") != f("before", "mdevs")
        || f("restore", "avail") != f("before", "avail")
    {
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl restore --all left {} mdev(s) (before: {}), {} instance(s) of {MDEV_TYPE} available (before: {}), rc {}",
            f("restore", "mdevs"),
            f("before", "mdevs"),
            f("restore", "avail"),
            f("before", "avail"),
            f("restore", "rc")
        )));
    }
    Ok(format!(
        "L1 created {MDEV_TYPE} {uuid} on {MDEV_PARENT} (group {}); L2 lists {} {MTTY_ID} cold-plugged through sysfsdev= ({} backend) and {} after the QMP hotplug ({} backend); restore --all removed it ({} instance(s) available again)",
        f("create", "group"),
        cold.lists(MTTY_ID, false).unwrap_or("?"),
        cold.backend().unwrap_or_else(|| "?".into()),
        hot.lists(MTTY_ID, true).unwrap_or("?"),
        hot.backend().unwrap_or_else(|| "?".into()),
        f("restore", "avail")
    ))
}

/// QEMU arguments of the iommufd and mediated scenarios' L1 (the SR-IOV machine: an
/// emulated IOMMU and an igb on its own root port).
pub fn modern_l1_qemu_args() -> Vec<String> {
    sriov_l1_qemu_args()
}

/// The iommufd scenario's L1 script: one VF of the igb bound to vfio-pci, L2 started by
/// vfioctl with `--vfio-backend iommufd` and the VF cold-plugged (`-object iommufd` and
/// `iommufd=` on the device), then a second L2 with `auto` (which must pick iommufd on
/// this kernel and QEMU) and the VF hot-plugged over QMP; QEMU's object list and the
/// nodes it holds open show the backend; `restore --all` gives everything back.
pub fn iommufd_l1_script(l2_timeout_s: u64) -> String {
    let pf = L1_PF;
    let cold = l2_vm(
        "l2cold",
        "--cold vf:$VF --vfio-backend iommufd",
        l2_timeout_s,
    );
    let hot = l2_vm("l2hot", "--gpu vf:$VF --vfio-backend auto", l2_timeout_s);
    format!(
        r#"{prelude}P=/sys/bus/pci/devices/{pf}
echo "@@ before pf_driver=$(drv {pf}) iommu=$([ -c /dev/iommu ] && echo yes || echo no) vfs=$(ls -d $P/virtfn* 2>/dev/null | wc -l)"
vfioctl vf create {pf} --count 1 2>&1; rc=$?
VF=$(basename $(readlink $P/virtfn0) 2>/dev/null)
echo "@@ create rc=$rc vf0=$VF"
vfioctl bind $VF 2>&1; rc=$?
echo "@@ bind rc=$rc vf=$VF driver=$(drv $VF) group=$(basename $(readlink /sys/bus/pci/devices/$VF/iommu_group)) cdev=$(ls /sys/bus/pci/devices/$VF/vfio-dev 2>/dev/null)"
{cold}{hot}vfioctl restore --all 2>&1; rc=$?
echo "@@ restore rc=$rc pf_driver=$(drv {pf}) vfs=$(ls -d $P/virtfn* 2>/dev/null | wc -l)"
"#,
        prelude = prelude()
    )
}

/// What the iommufd scenario reported, judged (pure): both L2 runs used the iommufd
/// backend (`vm up`'s choice, QEMU's `iommufd` object, `/dev/iommu` and the VF's cdev held
/// open, no group node), L2 listed the VF cold and hot, and restore gave it all back.
pub fn iommufd_verdict(out: &str) -> Result<String, ScenarioFailed> {
    let f = |n: &str, k: &str| field(out, n, k).unwrap_or_else(|| "?".into());
    if f("before", "iommu") != "yes" {
        return Err(ScenarioFailed::from(
            "L1 has no /dev/iommu: its kernel lacks CONFIG_IOMMUFD".to_string(),
        ));
    }
    if f("bind", "rc") != "0" || f("bind", "driver") != "vfio-pci" {
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl bind {} did not leave it on vfio-pci (rc {}, driver {})",
            f("bind", "vf"),
            f("bind", "rc"),
            f("bind", "driver")
        )));
    }
    let cdev = f("bind", "cdev");
    if !cdev.starts_with("vfio") {
        return Err(ScenarioFailed::from(format!(
            "L1: {} on vfio-pci has no VFIO cdev (vfio-dev/): the kernel lacks CONFIG_VFIO_DEVICE_CDEV",
            f("bind", "vf")
        )));
    }
    let mut notes = Vec::new();
    for (name, hot) in [("l2cold", false), ("l2hot", true)] {
        let l2 = L2Seen::parse(out, name);
        if let Some(why) = l2.missing(name, VF_ID, hot) {
            return Err(ScenarioFailed::from(why));
        }
        let backend = l2.backend().unwrap_or_else(|| "?".into());
        if backend != "iommufd" {
            return Err(ScenarioFailed::from(format!(
                "L1: vfioctl vm up --name {name} chose the {backend} backend, expected iommufd"
            )));
        }
        let objs = l2.objects("iommufd");
        if objs.is_empty() {
            return Err(ScenarioFailed::from(format!(
                "QEMU in L1 (`{name}`) lists no iommufd object (qom-list /objects)"
            )));
        }
        let want = format!("/dev/vfio/devices/{cdev}");
        let has = |n: &str| l2.nodes.iter().any(|x| x == n);
        if !has("/dev/iommu") || !has(&want) || l2.nodes.iter().any(|n| n == "/dev/vfio/vfio") {
            return Err(ScenarioFailed::from(format!(
                "QEMU in L1 (`{name}`) holds {} open: expected /dev/iommu and {want}, and no VFIO container",
                l2.nodes.join(", ")
            )));
        }
        notes.push(format!(
            "{name}: L2 lists {} {VF_ID} {}, QEMU object {} and {want} open",
            l2.lists(VF_ID, hot).unwrap_or("?"),
            if hot {
                "after the QMP hotplug (auto chose iommufd)"
            } else {
                "cold-plugged"
            },
            objs.join(",")
        ));
    }
    if f("restore", "rc") != "0" || f("restore", "pf_driver") != "igb" || f("restore", "vfs") != "0"
    {
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl restore --all left {L1_PF} on {} with {} VFs, rc {}",
            f("restore", "pf_driver"),
            f("restore", "vfs"),
            f("restore", "rc")
        )));
    }
    Ok(format!(
        "L1 bound VF {} (cdev {cdev}); {}; restore --all left the PF on igb with no VFs",
        f("bind", "vf"),
        notes.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "@@ before pf_driver=igb total=7 numvfs=0 autoprobe=1 vfs=0\n\
@@ create rc=0 numvfs=2 autoprobe=0 vf0=0000:01:10.0 vf0_id=8086:10ca vf0_driver=none vf1=0000:01:10.2 vf1_driver=none\n\
@@ bind rc=0 vf=0000:01:10.0 driver=vfio-pci group=4\n\
@@ l2 rc=0\n@@ pci 0000:00:00.0 8086:29c0 none\n@@ pci 0000:01:00.0 8086:10ca none\n@@ l2-done\n\
@@ l2hot up rc=0\n@@json l2hot-up {\"vfio_backend\":\"group\"}\n@@ l2hot.hot 0000:01:00.0 8086:10ca none\n\
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
                "@@ l2hot.hot 0000:01:00.0 8086:10ca none\n",
                "",
                "lists no 8086:10ca after the hotplug",
            ),
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
        assert!(pos("-device vfio-pci,host=$VF") < pos("--gpu vf:$VF"));
        assert!(pos("--gpu vf:$VF") < pos("vfioctl restore --all"));
    }

    const MDEV_GOOD: &str = "@@ before parents=mtty, mdevs=0 avail=12\n\
@@ create rc=0 uuid=0f2b4c1e-1111-4222-8333-444455556666 type=mtty-2 avail=11 group=5\n\
@@ l2cold up rc=0\n@@json l2cold-up {\"vfio_backend\":\"iommufd\"}\n@@ l2cold.pci 0000:01:00.0 4348:3253 none\n\
@@ l2hot up rc=0\n@@json l2hot-up {\"vfio_backend\":\"iommufd\"}\n@@ l2hot.hot 0000:01:00.0 4348:3253 none\n\
@@ restore rc=0 mdevs=0 avail=12\n";

    #[test]
    fn mdev_verdict_passes_and_names_each_missing_piece() {
        let v = mdev_verdict(MDEV_GOOD).unwrap();
        assert!(
            v.contains("L2 lists 0000:01:00.0 4348:3253 cold-plugged"),
            "{v}"
        );
        let cases = [
            ("parents=mtty,", "parents=", "CONFIG_SAMPLE_VFIO_MDEV_MTTY"),
            (
                "create rc=0",
                "create rc=2",
                "mdev create mtty mtty-2 failed",
            ),
            (
                "@@ l2cold.pci 0000:01:00.0 4348:3253 none\n",
                "",
                "`l2cold` lists no 4348:3253 at boot",
            ),
            (
                "l2hot up rc=0",
                "l2hot up rc=1",
                "vm up --name l2hot failed",
            ),
            (
                "restore rc=0 mdevs=0 avail=12",
                "restore rc=0 mdevs=1 avail=11",
                "restore --all left 1 mdev",
            ),
        ];
        for (from, to, want) in cases {
            let e = mdev_verdict(&MDEV_GOOD.replace(from, to)).unwrap_err();
            assert!(e.reason.contains(want), "{want}: {e}");
        }
    }

    const IOMMUFD_GOOD: &str = "@@ before pf_driver=igb iommu=yes vfs=0\n@@ create rc=0 vf0=0000:01:10.0\n\
@@ bind rc=0 vf=0000:01:10.0 driver=vfio-pci group=7 cdev=vfio0\n\
@@ l2cold up rc=0\n@@json l2cold-up {\"vfio_backend\":\"iommufd\"}\n@@json l2cold-status {\"objects\":[{\"id\":\"iommufd0\",\"qom_type\":\"iommufd\"}]}\n\
@@ l2cold fds pid=50 nodes=/dev/iommu,/dev/vfio/devices/vfio0,\n@@ l2cold.pci 0000:01:00.0 8086:10ca igbvf\n\
@@ l2hot up rc=0\n@@json l2hot-up {\"vfio_backend\":\"iommufd\"}\n@@json l2hot-status {\"objects\":[{\"id\":\"iommufd0\",\"qom_type\":\"iommufd\"}]}\n\
@@ l2hot fds pid=60 nodes=/dev/iommu,/dev/vfio/devices/vfio0,\n@@ l2hot.hot 0000:01:00.0 8086:10ca none\n\
@@ restore rc=0 pf_driver=igb vfs=0\n";

    #[test]
    fn iommufd_verdict_passes_and_names_each_missing_piece() {
        let v = iommufd_verdict(IOMMUFD_GOOD).unwrap();
        assert!(v.contains("auto chose iommufd"), "{v}");
        let cases = [
            ("iommu=yes", "iommu=no", "CONFIG_IOMMUFD"),
            ("cdev=vfio0", "cdev=", "CONFIG_VFIO_DEVICE_CDEV"),
            (
                "@@json l2hot-up {\"vfio_backend\":\"iommufd\"}",
                "@@json l2hot-up {\"vfio_backend\":\"group\"}",
                "chose the group backend",
            ),
            (
                "@@json l2cold-status {\"objects\":[{\"id\":\"iommufd0\",\"qom_type\":\"iommufd\"}]}",
                "@@json l2cold-status {\"objects\":[]}",
                "lists no iommufd object",
            ),
            (
                "pid=60 nodes=/dev/iommu,/dev/vfio/devices/vfio0,",
                "pid=60 nodes=/dev/vfio/7,/dev/vfio/vfio,",
                "expected /dev/iommu and /dev/vfio/devices/vfio0",
            ),
            ("restore rc=0 pf_driver=igb vfs=0", "restore rc=0 pf_driver=igb vfs=1", "restore --all left"),
        ];
        for (from, to, want) in cases {
            let e = iommufd_verdict(&IOMMUFD_GOOD.replace(from, to)).unwrap_err();
            assert!(e.reason.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn iommufd_script_asks_for_iommufd_cold_and_auto_hot() {
        let s = iommufd_l1_script(300);
        assert!(s.contains("--cold vf:$VF --vfio-backend iommufd"));
        assert!(s.contains("--gpu vf:$VF --vfio-backend auto"));
        let m = mdev_l1_script(300);
        assert!(m.contains("vfioctl --json mdev create mtty mtty-2"));
        assert!(m.find("--cold mdev:$U").unwrap() < m.find("--gpu mdev:$U").unwrap());
    }
}
