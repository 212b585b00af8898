//! The merge/verify logic on a REAL Kconfig tree (Debian's pinned linux-source 6.1):
//! the Kconfig reader names the dependencies that `olddefconfig` silently dropped, and
//! every committed fragment lands. Needs linux-source (scripts/setup); skips loudly
//! without it (fails under `VFIOCTL_REQUIRE_LAB=1`). About 10-20 s per configure on 2 cores.

mod kernel_support;

use std::path::Path;

use kernel_support::*;
use vfioctl::kernel::{
    build::{configure, select_fragments},
    merge, verify,
    verify::{Cause, Fragment},
    Allowlist, DotConfig, KconfigTree,
};

fn configured(tree: &Path, frags: &[Fragment]) -> (tempfile::TempDir, DotConfig) {
    let obj = tempfile::tempdir().unwrap();
    let dot = configure(
        tree,
        obj.path(),
        "x86_64",
        "tinyconfig",
        &merge(frags),
        &obj.path().join("configure.log"),
    )
    .unwrap();
    let cfg = DotConfig::parse(&dot, &read(&dot)).unwrap();
    (obj, cfg)
}

#[test]
fn kconfig_reader_on_linux_6_1() {
    let tree = vfioctl_testkit::require!(kernel_tree());
    let t = KconfigTree::load(&tree, "x86").unwrap();
    assert!(t.files > 1000, "only {} Kconfig files read", t.files);
    assert!(t.symbols.len() > 10_000, "{} symbols", t.symbols.len());
    // inherited `if` blocks, across `source`
    let deps = |s: &str| -> Vec<String> {
        t.get(s).unwrap()[0]
            .deps
            .iter()
            .map(|d| d.text.clone())
            .collect()
    };
    assert!(deps("VIRTIO_PCI").contains(&"if VIRTIO_MENU".to_string()));
    assert!(
        deps("VSOCKETS").contains(&"if NET".to_string()),
        "{:?}",
        deps("VSOCKETS")
    );
    assert!(deps("EXT4_FS").contains(&"if BLOCK".to_string()));
    // hidden, select-only
    assert!(!t.is_visible("MMU_NOTIFIER"));
    let sel: Vec<&str> = t
        .selectors("MMU_NOTIFIER")
        .iter()
        .map(|s| s.by.as_str())
        .collect();
    assert!(
        sel.contains(&"INTEL_IOMMU_SVM") && sel.contains(&"KVM"),
        "{sel:?}"
    );
    assert!(t.is_visible("PCI_MMCONFIG"));
    // evaluation names the blocker
    let cfg = DotConfig::parse(Path::new("c"), "CONFIG_PCI=y\nCONFIG_X86_64=y\n").unwrap();
    let un = t.unmet("PCI_MMCONFIG", &cfg);
    assert!(
        un.iter().any(|(_, b)| b.contains(&"ACPI=n".to_string())),
        "{un:?}"
    );
}

/// The measured failure: a naive list on tinyconfig loses options, `olddefconfig`
/// exits 0; our verifier catches each one and names why.
#[test]
fn naive_fragment_drops_are_caught_and_explained() {
    let tree = vfioctl_testkit::require!(build_prerequisites());
    let naive = Fragment::parse(
        Path::new("naive.config"),
        "CONFIG_64BIT=y\nCONFIG_PCI=y\nCONFIG_PCI_MMCONFIG=y\nCONFIG_HOTPLUG_PCI_PCIE=y\n\
         CONFIG_VIRTIO_PCI=y\nCONFIG_VSOCKETS=y\nCONFIG_VIRTIO_VSOCKETS=y\nCONFIG_EXT4_FS=y\n\
         CONFIG_MMU_NOTIFIER=y\nCONFIG_NO_SUCH_OPTION=y\nCONFIG_LOG_BUF_SHIFT=17\n\
         CONFIG_LOCALVERSION=\"-t\"\n",
    )
    .unwrap();
    // A second fragment: EXT4 with its BLOCK dependency, and a request to turn off
    // JBD2, which EXT4_FS selects.
    let forced = Fragment::parse(
        Path::new("forced.config"),
        "CONFIG_BLOCK=y\nCONFIG_EXT4_FS=y\n# CONFIG_JBD2 is not set\n",
    )
    .unwrap();
    let frags = vec![naive, forced];
    let (_obj, cfg) = configured(&tree, &frags);
    let t = KconfigTree::load(&tree, "x86").unwrap();
    let r = verify(&merge(&frags), &cfg, Some(&t), &Allowlist::default());
    let got: Vec<(&str, &Cause)> = r
        .dropped
        .iter()
        .map(|f| (f.symbol.as_str(), &f.cause))
        .collect();
    assert_eq!(
        got,
        vec![
            ("HOTPLUG_PCI_PCIE", &Cause::UnmetDependency),
            ("JBD2", &Cause::ForcedBySelect),
            // an int: tinyconfig turns PRINTK off
            ("LOG_BUF_SHIFT", &Cause::UnmetDependency),
            ("MMU_NOTIFIER", &Cause::HiddenNotSelected),
            ("NO_SUCH_OPTION", &Cause::UnknownSymbol),
            ("PCI_MMCONFIG", &Cause::UnmetDependency),
            ("VIRTIO_PCI", &Cause::UnmetDependency),
            ("VIRTIO_VSOCKETS", &Cause::UnmetDependency),
            ("VSOCKETS", &Cause::UnmetDependency),
        ],
        "{}",
        r.render()
    );
    let text = r.render();
    for needle in [
        "ACPI=n",
        "HOTPLUG_PCI=n, PCIEPORTBUS=n",
        "VIRTIO_MENU=n",
        "NET=n",
        "PRINTK=n",
        "INTEL_IOMMU_SVM=n",
        "forced on by `select` from: EXT4_FS=y",
    ] {
        assert!(text.contains(needle), "missing `{needle}` in:\n{text}");
    }
    // EXT4_FS repeated with the same value: a repeat, not a conflict.
    assert_eq!(r.repeats, 1);
    assert!(r.conflicts.is_empty());
    // The allowlist excuses exactly what it names.
    let allow = Allowlist::parse(Path::new("allowlist"), "CONFIG_NO_SUCH_OPTION  test\n").unwrap();
    let r2 = verify(&merge(&frags), &cfg, Some(&t), &allow);
    assert_eq!(r2.dropped.len(), 8);
    assert_eq!(r2.allowed.len(), 1);
}

/// Every committed fragment lands, alone (base) and with every flavour at once.
#[test]
fn committed_fragments_land_on_tinyconfig() {
    let tree = vfioctl_testkit::require!(build_prerequisites());
    let pins = pins();
    let t = KconfigTree::load(&tree, &pins.kernel.srcarch).unwrap();
    let allow_text = read(&configs().join("allowlist"));
    let allow = Allowlist::parse(&configs().join("allowlist"), &allow_text).unwrap();
    for flavours in [
        vec![],
        vec!["nvidia".to_string(), "vfio-guest".into(), "debug".into()],
    ] {
        let frags = select_fragments(&configs(), &pins.kernel.always, &flavours).unwrap();
        let (_obj, cfg) = configured(&tree, &frags);
        let r = verify(&merge(&frags), &cfg, Some(&t), &allow);
        assert!(r.ok(), "flavours {flavours:?}:\n{}", r.render());
        assert!(r.requested > 50);
        // what the guest agent and the VM rely on
        for s in [
            "VIRTIO_VSOCKETS",
            "DEVTMPFS",
            "RD_GZIP",
            "RD_ZSTD",
            "UNIX",
            "PRINTK",
            "64BIT",
        ] {
            assert_eq!(cfg.get(s), Some(&vfioctl::kernel::Value::Y), "{s}");
        }
    }
}
