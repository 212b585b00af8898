//! Kernel modules with their dependencies, from `modules.dep` and `modules.builtin`.

use std::collections::{BTreeMap, BTreeSet};

/// A module's canonical name: the file name without `.ko[.xz|.zst|.gz]`, `-` as `_`.
pub fn canonical(name_or_path: &str) -> String {
    let base = name_or_path.rsplit('/').next().unwrap_or(name_or_path);
    let base = base
        .strip_suffix(".xz")
        .or_else(|| base.strip_suffix(".zst"))
        .or_else(|| base.strip_suffix(".gz"))
        .unwrap_or(base);
    base.strip_suffix(".ko").unwrap_or(base).replace('-', "_")
}

/// `modules.dep` and `modules.builtin` of one kernel.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    /// path (relative to /lib/modules/KVER) -> dependency paths
    deps: BTreeMap<String, Vec<String>>,
    /// canonical name -> path
    by_name: BTreeMap<String, String>,
    builtin: BTreeSet<String>,
}

/// What a module name resolves to in a kernel ([`ModuleIndex::resolve`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolved {
    /// Module files to ship, dependencies first (load order).
    Modules(Vec<String>),
    /// Compiled into the kernel: nothing to load.
    Builtin,
}

impl ModuleIndex {
    /// The index of `modules.dep` and `modules.builtin` as read (either may be empty).
    pub fn parse(modules_dep: &str, modules_builtin: &str) -> Self {
        let mut idx = ModuleIndex::default();
        for line in modules_dep.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim().to_string();
            idx.by_name.insert(canonical(&path), path.clone());
            idx.deps
                .insert(path, deps.split_whitespace().map(String::from).collect());
        }
        idx.builtin = modules_builtin
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(canonical)
            .collect();
        idx
    }

    /// The `modules.dep` path (relative to `lib/modules/KVER`) of a module, by any
    /// spelling of its name (see [`canonical`]).
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.by_name.get(&canonical(name)).map(String::as_str)
    }

    /// The module and everything it needs, dependencies first; `None` when the kernel has
    /// no such module.
    pub fn resolve(&self, name: &str) -> Option<Resolved> {
        let c = canonical(name);
        if let Some(path) = self.by_name.get(&c) {
            let mut out = Vec::new();
            self.visit(path, &mut out, &mut BTreeSet::new());
            return Some(Resolved::Modules(out));
        }
        self.builtin.contains(&c).then_some(Resolved::Builtin)
    }

    fn visit(&self, path: &str, out: &mut Vec<String>, seen: &mut BTreeSet<String>) {
        if !seen.insert(path.to_string()) {
            return;
        }
        for d in self.deps.get(path).into_iter().flatten() {
            self.visit(d, out, seen);
        }
        if !out.iter().any(|p| p == path) {
            out.push(path.to_string());
        }
    }

    /// The `modules.dep` lines of `paths` (for busybox modprobe in the guest), with the
    /// compression suffix dropped as the builder decompresses modules.
    pub fn dep_lines(&self, paths: &[String]) -> String {
        let strip = |p: &str| {
            p.strip_suffix(".xz")
                .or_else(|| p.strip_suffix(".zst"))
                .or_else(|| p.strip_suffix(".gz"))
                .unwrap_or(p)
                .to_string()
        };
        let mut s = String::new();
        for p in paths {
            let deps: Vec<String> = self
                .deps
                .get(p)
                .into_iter()
                .flatten()
                .map(|d| strip(d))
                .collect();
            s.push_str(&format!("{}: {}\n", strip(p), deps.join(" ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The real lines of Debian's 6.1.0-56-amd64 modules.dep for these modules.
    const DEP: &str = "\
kernel/drivers/vfio/vfio.ko:
kernel/drivers/vfio/vfio_virqfd.ko:
kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko
kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio_virqfd.ko kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko
kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko kernel/drivers/vfio/vfio_virqfd.ko kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko
kernel/virt/lib/irqbypass.ko:
kernel/net/vmw_vsock/vsock.ko:
kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko: kernel/net/vmw_vsock/vsock.ko
kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko: kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko kernel/net/vmw_vsock/vsock.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/nvme/host/nvme.ko.xz: kernel/drivers/nvme/host/nvme-core.ko.xz
kernel/drivers/nvme/host/nvme-core.ko.xz:
";

    #[test]
    fn resolves_dependencies_first() {
        let idx = ModuleIndex::parse(DEP, "kernel/drivers/pci/hotplug/pciehp.ko\n");
        let Some(Resolved::Modules(v)) = idx.resolve("vfio-pci") else {
            panic!()
        };
        let names: Vec<String> = v.iter().map(|p| canonical(p)).collect();
        assert_eq!(
            names,
            [
                "vfio_virqfd",
                "vfio",
                "irqbypass",
                "vfio_pci_core",
                "vfio_pci"
            ]
        );
        let Some(Resolved::Modules(v)) = idx.resolve("vmw_vsock_virtio_transport") else {
            panic!()
        };
        assert_eq!(
            v.last().unwrap(),
            "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko"
        );
        assert_eq!(v.len(), 5);
        assert_eq!(idx.resolve("pciehp"), Some(Resolved::Builtin));
        assert_eq!(idx.resolve("nope"), None);
        let Some(Resolved::Modules(v)) = idx.resolve("nvme") else {
            panic!()
        };
        assert_eq!(
            v,
            [
                "kernel/drivers/nvme/host/nvme-core.ko.xz",
                "kernel/drivers/nvme/host/nvme.ko.xz"
            ]
        );
        assert_eq!(
            idx.dep_lines(&v),
            "kernel/drivers/nvme/host/nvme-core.ko: \nkernel/drivers/nvme/host/nvme.ko: kernel/drivers/nvme/host/nvme-core.ko\n"
        );
        assert_eq!(canonical("kernel/x/vfio-pci-core.ko.zst"), "vfio_pci_core");
    }
}
