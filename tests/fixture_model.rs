//! The shared PCI model (`PciDevice::read`) against the fixture trees: what the checks and
//! the bind logic rest on.

use std::path::Path;

use vfioctl::common::pci::{enumerate, PciDevice};
use vfioctl::{Bdf, SysRoot};

fn root(name: &str) -> SysRoot {
    SysRoot::new(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name),
    )
}

fn dev(r: &SysRoot, bdf: &str) -> PciDevice {
    PciDevice::read(r, bdf.parse().unwrap()).unwrap()
}

#[test]
fn every_device_of_every_tree_reads() {
    for name in ["gpu-server", "workstation", "no-above-4g", "iommu-off"] {
        let r = root(name);
        let all = enumerate(&r).unwrap();
        assert!(!all.is_empty(), "{name}");
        for bdf in all {
            PciDevice::read(&r, bdf).unwrap_or_else(|e| panic!("{name} {bdf}: {e:?}"));
        }
    }
}

#[test]
fn server_gpu_bars_above_4g_and_parents() {
    let r = root("gpu-server");
    let g = dev(&r, "0000:44:00.0");
    assert_eq!((g.vendor, g.device, g.class), (0x10de, 0x1df6, 0x030200));
    assert_eq!(g.driver.as_deref(), Some("vfio-pci"));
    assert!(g.vfio_dev);
    assert!(g.iommu_group_peers.is_empty());
    let s: Vec<String> = g.bars.iter().map(|b| b.summary()).collect();
    assert_eq!(
        s,
        [
            "BAR0 16M 32b @0xb5000000",
            "BAR1 32G 64b pref @0x222800000000",
            "BAR3 32M 64b pref @0x223000000000"
        ]
    );
    let parents: Vec<String> = g.parents.iter().map(Bdf::to_string).collect();
    assert_eq!(parents, ["0000:42:10.0", "0000:41:00.0", "0000:40:01.1"]);
    assert_eq!(
        g.reset_methods.as_deref(),
        Some(&["flr".to_string(), "bus".to_string()][..])
    );
    assert_eq!(g.numa_node, Some(0));
    let nic = dev(&r, "0000:82:00.0");
    let sr = nic.sriov.unwrap();
    assert_eq!((sr.total_vfs, sr.num_vfs), (64, 0));
}

#[test]
fn workstation_group_and_companion() {
    let r = root("workstation");
    let g = dev(&r, "0000:01:00.0");
    assert_eq!(g.iommu_group, Some(1));
    let peers: Vec<String> = g.iommu_group_peers.iter().map(Bdf::to_string).collect();
    assert_eq!(peers, ["0000:00:01.0", "0000:01:00.1"]);
    assert_eq!(g.boot_vga, Some(true));
    assert_eq!(g.consumers, vec!["0000:01:00.1".parse::<Bdf>().unwrap()]);
    assert_eq!(g.resizable_bars[0].index, 1);
    assert_eq!(g.resizable_bars[0].sizes.first(), Some(&(64 << 20)));
    assert_eq!(g.resizable_bars[0].sizes.last(), Some(&(16 << 30)));
    let l = g.link.unwrap();
    assert!(l.degraded());
    let rp = dev(&r, "0000:00:01.0");
    assert!(rp.is_bridge && rp.is_vfio_safe());
    assert!(!dev(&r, "0000:01:00.1").is_vfio_safe());
}

#[test]
fn unassigned_bar_from_config() {
    let r = root("no-above-4g");
    let g = dev(&r, "0000:03:00.0");
    let un: Vec<u8> = g.unassigned_bars().map(|b| b.index).collect();
    assert_eq!(un, [1]);
    let b1 = g.bars.iter().find(|b| b.index == 1).unwrap();
    assert!(b1.is_64bit && b1.prefetchable && b1.size.is_none());
    assert_eq!(g.driver, None);
}

#[test]
fn iommu_off_has_no_groups() {
    let r = root("iommu-off");
    let g = dev(&r, "0000:01:00.0");
    assert_eq!(g.iommu_group, None);
    assert_eq!(g.driver.as_deref(), Some("nouveau"));
}
