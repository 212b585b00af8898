//! Reproducible guest kernels: two clean builds of the same inputs (same tarball, same
//! fragments) give a byte-identical bzImage. The build identity (`KBUILD_BUILD_TIMESTAMP`,
//! `_USER`, `_HOST`, `_VERSION`) is fixed by `vfioctl kernel build`; the second build runs
//! without ccache so it compiles every object again rather than replaying the first.
//! Nightly tier (`scripts/test --nightly`): a ccache replay plus one clean compile, about
//! 18 minutes on 2 cores (BENCHMARKS.md, section kernel).

mod kernel_support;

use kernel_support::*;

#[test]
#[ignore = "nightly tier (scripts/test --nightly): two clean kernel builds, one without ccache, about 18 min on 2 cores: over CI's hour with the other tiers"]
fn two_clean_builds_of_the_same_inputs_give_the_same_bzimage() {
    vfioctl_testkit::require!(build_prerequisites());
    let dir = tempfile::tempdir().unwrap();
    let clean = |name: &str, ccache: bool| {
        let opts = vfioctl::kernel::BuildOptions {
            out: Some(dir.path().join(name)),
            force: true,
            ccache,
            clean: true,
            ..vfioctl::kernel::BuildOptions::defaults(configs(), lab())
        };
        vfioctl::kernel::build(&opts, &mut |p| {
            if !matches!(p, vfioctl::kernel::build::Progress::Objects { .. }) {
                eprintln!("{name}: {p:?}")
            }
        })
        .unwrap_or_else(|e| panic!("clean build {name} failed: {e}"))
    };
    let a = clean("a", true);
    // Both builds use the same O= tree: keep A's uncompressed vmlinux and System.map, so a
    // difference can be located (bzImage is compressed: one changed byte moves everything).
    let keep = |name: &str, r: &vfioctl::kernel::BuildResult| {
        let o = &r.manifest.artefacts.objdir;
        for f in ["vmlinux", "System.map"] {
            let _ = std::fs::copy(o.join(f), dir.path().join(format!("{name}.{f}")));
        }
    };
    keep("a", &a);
    let b = clean("b", false);
    keep("b", &b);
    assert_eq!(a.manifest.input_key, b.manifest.input_key);
    assert_eq!(a.manifest.config_sha256, b.manifest.config_sha256);
    let (va, vb) = (
        std::fs::read(&a.manifest.artefacts.vmlinuz).unwrap(),
        std::fs::read(&b.manifest.artefacts.vmlinuz).unwrap(),
    );
    assert!(va.len() > 1_000_000);
    let kept = if va != vb {
        let d = dir.keep();
        first_difference(&d)
    } else {
        String::new()
    };
    assert!(
        va == vb,
        "bzImage differs between two clean builds: {} ({} bytes) vs {} ({} bytes); vmlinux: {}",
        a.manifest.artefacts.vmlinuz.display(),
        va.len(),
        b.manifest.artefacts.vmlinuz.display(),
        vb.len(),
        kept
    );
    // The source record names what was built.
    let src = &a.manifest.source;
    assert_eq!(src.package.as_deref(), Some("linux-source-6.1"));
    assert!(src.package_version.is_some());
    assert_eq!(src.sha256.as_ref().map(String::len), Some(64));
}

/// Where the two kept vmlinux files first differ: the byte offset and, from A's System.map
/// and the ELF section table (read with `readelf -S`), the section and nearest symbol.
fn first_difference(dir: &std::path::Path) -> String {
    let (Ok(a), Ok(b)) = (
        std::fs::read(dir.join("a.vmlinux")),
        std::fs::read(dir.join("b.vmlinux")),
    ) else {
        return "not kept".into();
    };
    let Some(off) = a.iter().zip(&b).position(|(x, y)| x != y) else {
        return format!("identical except length ({} vs {} bytes)", a.len(), b.len());
    };
    let differing = a.iter().zip(&b).filter(|(x, y)| x != y).count();
    let sections = std::process::Command::new("readelf")
        .args(["-S", "-W"])
        .arg(dir.join("a.vmlinux"))
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // [Nr] Name Type Address Off Size ...
    let mut where_ = String::from("?");
    for l in sections.lines() {
        let f: Vec<&str> = l
            .split(|c: char| c == ']' || c.is_whitespace())
            .filter(|x| !x.is_empty())
            .collect();
        if f.len() < 6 || !l.trim_start().starts_with('[') {
            continue;
        }
        let (Ok(addr), Ok(foff), Ok(size)) = (
            u64::from_str_radix(f[3], 16),
            u64::from_str_radix(f[4], 16),
            u64::from_str_radix(f[5], 16),
        ) else {
            continue;
        };
        let off = off as u64;
        if off >= foff && off < foff + size {
            let va = addr + (off - foff);
            let map = std::fs::read_to_string(dir.join("a.System.map")).unwrap_or_default();
            let sym = map
                .lines()
                .filter_map(|l| {
                    let mut it = l.split_whitespace();
                    let a = u64::from_str_radix(it.next()?, 16).ok()?;
                    let _t = it.next()?;
                    Some((a, it.next()?.to_string()))
                })
                .filter(|(a, _)| *a <= va)
                .max_by_key(|(a, _)| *a)
                .map(|(a, n)| format!("{n}+{:#x}", va - a))
                .unwrap_or_default();
            where_ = format!("section {} at {va:#x} ({sym})", f[1]);
            break;
        }
    }
    format!(
        "first difference at offset {off:#x} in {where_}; {differing} bytes differ; kept in {}",
        dir.display()
    )
}
