//! The guest kernel for Kata's NVIDIA path (issue 14): the options added to the nvidia
//! fragment after comparing it with Kata's GPU kernel fragments, and the optional rdma
//! flavour (GPUDirect RDMA), land in the final .config of the pinned kernel: configured
//! from tinyconfig with the real Kconfig tree (linux-source, scripts/setup) and checked by
//! the same verifier as `vfioctl kernel verify`. Every option has its reason above it.
//! Without linux-source or the build tools it is skipped loudly, and fails under
//! VFIOCTL_REQUIRE_LAB=1.

mod kernel_support;

use kernel_support::{build_prerequisites, configs, pins, read};
use vfioctl::kernel::{
    build::{configure, select_fragments},
    merge, verify, Allowlist, DotConfig, KconfigTree, Value,
};

/// Every `CONFIG_` line sits in a block whose first line is a `#` comment (its reason).
fn reasons(text: &str) -> Vec<String> {
    let mut bad = Vec::new();
    let mut commented = false;
    for l in text.lines() {
        let t = l.trim();
        if t.is_empty() {
            commented = false;
        } else if t.starts_with("# CONFIG_") && t.ends_with(" is not set") {
            if !commented {
                bad.push(t.to_string());
            }
        } else if t.starts_with('#') {
            commented = true;
        } else if t.starts_with("CONFIG_") && !commented {
            bad.push(t.to_string());
        }
    }
    bad
}

const NVIDIA_ADDED: &[&str] = &[
    "CRYPTO_ECC",
    "CRYPTO_ECDH",
    "CRYPTO_ECDSA",
    "NUMA",
    "X86_64_ACPI_NUMA",
    "VIRTIO_IOMMU",
    "HOTPLUG_PCI_SHPC",
    "X86_X2APIC",
    "PCI_QUIRKS",
    "PCIEASPM",
    "ZONE_DEVICE",
];

const RDMA: &[&str] = &[
    "MLX5_CORE",
    "MLX5_CORE_EN",
    "INFINIBAND",
    "INFINIBAND_USER_ACCESS",
    "MLX5_INFINIBAND",
    "DMA_SHARED_BUFFER",
    "PCI_P2PDMA",
];

#[test]
fn nvidia_and_rdma_fragments_have_a_reason_per_option() {
    for f in ["20-nvidia.config", "25-rdma.config"] {
        let text = read(&configs().join(f));
        let bad = reasons(&text);
        assert!(bad.is_empty(), "{f}: options without a reason: {bad:?}");
        if f == "20-nvidia.config" {
            for s in NVIDIA_ADDED {
                assert!(text.contains(&format!("CONFIG_{s}=y\n")), "{f}: {s}");
            }
        }
    }
}

#[test]
fn nvidia_and_rdma_options_land_on_the_pinned_kernel() {
    let tree = vfioctl_testkit::require!(build_prerequisites());
    let pins = pins();
    let t = KconfigTree::load(&tree, &pins.kernel.srcarch).unwrap();
    let allow_path = configs().join("allowlist");
    let allow = Allowlist::parse(&allow_path, &read(&allow_path)).unwrap();
    for (flavours, want) in [
        (vec!["nvidia"], NVIDIA_ADDED.to_vec()),
        (vec!["rdma"], RDMA.to_vec()),
        (
            vec!["nvidia", "rdma"],
            NVIDIA_ADDED.iter().chain(RDMA).copied().collect(),
        ),
    ] {
        let fl: Vec<String> = flavours.iter().map(|s| s.to_string()).collect();
        let frags = select_fragments(&configs(), &pins.kernel.always, &fl).unwrap();
        let obj = tempfile::tempdir().unwrap();
        let dot = configure(
            &tree,
            obj.path(),
            "x86_64",
            "tinyconfig",
            &merge(&frags),
            &obj.path().join("configure.log"),
        )
        .unwrap();
        let cfg = DotConfig::parse(&dot, &read(&dot)).unwrap();
        let r = verify(&merge(&frags), &cfg, Some(&t), &allow);
        assert!(r.ok(), "flavours {flavours:?}:\n{}", r.render());
        for s in want {
            assert_eq!(cfg.get(s), Some(&Value::Y), "{flavours:?}: CONFIG_{s}");
        }
    }
}
