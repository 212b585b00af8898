//! The bodies of the cargo-fuzz targets, shared with `tests/hostile_fuzz_replay.rs`, which
//! replays every committed corpus and crash input through them under `cargo test`.
//! Each takes arbitrary bytes and must neither panic nor hang nor allocate without bound.

use std::path::Path;

use vfioctl::common::pci::{config, device, resource};
use vfioctl::common::{proto, units, Bdf, PciDevice, Selector, SysRoot};

/// One fuzz target's body: arbitrary bytes in, no panic, no hang.
pub type Target = fn(&[u8]);

/// Every target by name, for the replay test and `scripts/fuzz`.
pub const ALL: &[(&str, Target)] = &[
    ("parsers", parsers),
    ("resource", resource_file),
    ("config", config_space),
    ("resize", resize),
    ("pci_device", pci_device),
    ("qmp", qmp),
    ("agent_request", agent_request),
    ("agent_reply", agent_reply),
    ("rootfs_manifest", rootfs_manifest),
    ("regress_plan", regress_plan),
    ("kata_patch", kata_patch),
];

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// BDFs, device selectors and sizes as a user types them.
pub fn parsers(data: &[u8]) {
    let s = text(data);
    for part in std::iter::once(s.as_str()).chain(s.split([' ', '\n', ','])) {
        if let Ok(b) = part.parse::<Bdf>() {
            // A parsed address prints back to something that parses to itself.
            assert_eq!(b.to_string().parse::<Bdf>().ok(), Some(b), "{part:?}");
            let _ = b.sysfs_path();
        }
        if let Ok(sel) = part.parse::<Selector>() {
            let _ = sel.matches("0000:01:00.0".parse().unwrap(), 0x10de, 0x20b9, 0x030200);
            let _ = sel.to_string();
        }
        if let Ok(n) = units::parse(part) {
            assert!(n <= units::MAX_ADDRESSABLE, "{part:?} -> {n}");
            let _ = units::short(n);
            let _ = units::human(n);
        }
    }
}

/// The `resource` file: parse, BARs from its lines, sizes and summaries.
pub fn resource_file(data: &[u8]) {
    if let Ok(lines) = resource::parse(&text(data)) {
        for (i, l) in lines.iter().enumerate() {
            let _ = l.size();
            if let Some(b) = resource::Bar::from_line((i % 256) as u8, l) {
                let _ = b.summary();
            }
        }
    }
}

/// Config space bytes.
pub fn config_space(data: &[u8]) {
    if let Ok(h) = config::parse(data) {
        assert!(h.bars.len() <= 6);
    }
}

/// `resourceN_resize`.
pub fn resize(data: &[u8]) {
    let sizes = device::resize_sizes(&text(data));
    assert!(sizes.windows(2).all(|w| w[0] < w[1]));
}

/// The generated tree: on tmpfs where there is one (the target rewrites a few files per
/// input; on ext4 the metadata journal made it 30x slower), with its fixed skeleton (the
/// device directory and its bus link) made once.
struct Tree {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    dev: std::path::PathBuf,
    /// Whether the previous input made `sys/kernel/iommu_groups/...`.
    groups: std::cell::Cell<bool>,
}

impl Tree {
    fn new() -> Tree {
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm).or_else(|_| tempfile::tempdir())
        } else {
            tempfile::tempdir()
        }
        .expect("temp dir");
        let root = dir.path().to_path_buf();
        let dev = root.join("sys/devices/pci0000:00/0000:01:00.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(root.join("sys/bus/pci/devices")).unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:00/0000:01:00.0",
            root.join("sys/bus/pci/devices/0000:01:00.0"),
        )
        .unwrap();
        Tree {
            _dir: dir,
            root,
            dev,
            groups: std::cell::Cell::new(false),
        }
    }
}

thread_local! {
    static TREE: Tree = Tree::new();
}

/// A generated device directory: the input is split at 0xff bytes into the contents of
/// `config`, `resource`, `resource0_resize`, `driver_override`, `vendor`, `class`,
/// `numa_node`, `sriov_totalvfs` and the `iommu_group` and `driver` link names (an
/// attribute with no part is absent); then the device is read the way every command reads
/// it.
pub fn pci_device(data: &[u8]) {
    TREE.with(|t| {
        let (root, dev) = (t.root.as_path(), t.dev.as_path());
        // What the previous input left beyond the skeleton.
        let _ = std::fs::remove_file(dev.join("iommu_group"));
        let _ = std::fs::remove_file(dev.join("driver"));
        if t.groups.replace(false) {
            let _ = std::fs::remove_dir_all(root.join("sys/kernel"));
        }
        let bdf: Bdf = "0000:01:00.0".parse().unwrap();
        let names = [
            "config",
            "resource",
            "resource0_resize",
            "driver_override",
            "vendor",
            "class",
            "numa_node",
            "sriov_totalvfs",
        ];
        let mut parts = data.split(|b| *b == 0xff);
        for n in names {
            match parts.next() {
                Some(p) => std::fs::write(dev.join(n), p).unwrap(),
                None => {
                    let _ = std::fs::remove_file(dev.join(n));
                }
            }
        }
        let name = |p: &[u8]| {
            let s = text(p);
            (!s.is_empty() && !s.contains('/') && !s.contains('\0') && s.len() < 64).then_some(s)
        };
        if let Some(g) = parts.next().and_then(name) {
            let gdir = root
                .join("sys/kernel/iommu_groups")
                .join(&g)
                .join("devices");
            t.groups.set(true);
            if std::fs::create_dir_all(&gdir).is_ok() {
                let _ = std::os::unix::fs::symlink(
                    format!("../../../kernel/iommu_groups/{g}"),
                    dev.join("iommu_group"),
                );
            }
        }
        if let Some(d) = parts.next().and_then(name) {
            let _ = std::os::unix::fs::symlink(
                format!("../../../bus/pci/drivers/{d}"),
                dev.join("driver"),
            );
        }
        let sys = SysRoot::new(root);
        if let Ok(d) = PciDevice::read(&sys, bdf) {
            let _ = d.bar_totals();
            let _ = d.id();
            for b in &d.bars {
                let _ = b.summary();
            }
        }
    });
}

/// QMP lines from a (hostile) QEMU.
pub fn qmp(data: &[u8]) {
    for line in text(data).lines() {
        let _ = vfioctl::qmp::message::parse_line(line);
    }
}

/// The guest agent's request decoder (frames, then requests).
pub fn agent_request(data: &[u8]) {
    let mut r = data;
    while let Ok(p) = proto::read_frame(&mut r, proto::MAX_REQUEST) {
        let _ = proto::decode_request(&p);
        let _ = proto::salvage_id(&p);
    }
    let _ = proto::decode_request(data);
}

/// The host's reply decoder (frames from the guest, then replies).
pub fn agent_reply(data: &[u8]) {
    let mut r = data;
    while let Ok(p) = proto::read_frame(&mut r, proto::MAX_REPLY) {
        let _ = proto::decode_response(&p);
    }
    let _ = proto::decode_response(data);
}

/// A rootfs manifest: parse, then every destination through the containment rule.
pub fn rootfs_manifest(data: &[u8]) {
    use vfioctl::rootfs::{build::guest_path, cpio::is_safe_name, Manifest};
    if let Ok(m) = Manifest::parse(&text(data)) {
        for f in m.files.iter().chain(&m.trees) {
            if let Ok(p) = guest_path(&f.dst) {
                assert!(p.is_empty() || is_safe_name(&p), "{:?} -> {p:?}", f.dst);
            }
        }
        for s in &m.symlinks {
            if let Ok(p) = guest_path(&s.path) {
                assert!(p.is_empty() || is_safe_name(&p), "{:?} -> {p:?}", s.path);
            }
        }
    }
}

/// A regress plan file.
pub fn regress_plan(data: &[u8]) {
    let _ =
        vfioctl::regress::plan::Plan::parse(&text(data), Path::new("/fuzz/plan.toml"), &|_| None);
}

/// A Kata base configuration through the patcher (target chosen from the file, GPUs of
/// the `kata-ws` fixture).
pub fn kata_patch(data: &[u8]) {
    use vfioctl::kata;
    let s = text(data);
    let path = Path::new("/fuzz/configuration.toml");
    let Ok(doc) = kata::patch::parse(&s, path) else {
        return;
    };
    let Ok(choice) = kata::choose_target(None, None, Some(&doc), None) else {
        return;
    };
    // The fixture's selection does not depend on the input: read it once, not per input.
    static SELECTION: std::sync::OnceLock<Option<kata::Selection>> = std::sync::OnceLock::new();
    let sel = SELECTION.get_or_init(|| {
        let tree = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kata-ws");
        let tree = if tree.exists() {
            tree
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/kata-ws")
        };
        kata::select(&SysRoot::new(tree), &["class:gpu".parse().unwrap()]).ok()
    });
    let Some(sel) = sel.clone() else {
        return;
    };
    let _ = kata::configure(
        choice,
        kata::Options::default(),
        sel,
        Some(kata::Base {
            path,
            text: &s,
            doc,
        }),
        &[],
        None,
    );
}
