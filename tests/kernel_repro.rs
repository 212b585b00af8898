//! Reproducible guest kernels: two clean builds of the same inputs (same tarball, same
//! fragments) give a byte-identical bzImage. The build identity (`KBUILD_BUILD_TIMESTAMP`,
//! `_USER`, `_HOST`, `_VERSION`) is fixed by `vfioctl kernel build`; the second build runs
//! without ccache so it compiles every object again rather than replaying the first.
//! CI tier: about one clean kernel build on 2 cores (see BENCHMARKS.md).

mod kernel_support;

use kernel_support::*;

#[test]
#[ignore = "nightly tier (scripts/test --nightly): two clean kernel builds, one without ccache"]
fn two_clean_builds_of_the_same_inputs_give_the_same_bzimage() {
    vfioctl_testkit::require!(build_prerequisites());
    let dir = tempfile::tempdir().unwrap();
    let clean = |name: &str, ccache: bool| {
        let opts = vfioctl::kernel::BuildOptions {
            configs: configs(),
            source: None,
            flavours: Vec::new(),
            out: Some(dir.path().join(name)),
            lab: lab(),
            jobs: 2,
            nvidia: None,
            allow_unpinned: false,
            force: true,
            nice: 10,
            ccache,
            clean: true,
        };
        vfioctl::kernel::build(&opts, &mut |p| {
            if !matches!(p, vfioctl::kernel::build::Progress::Objects { .. }) {
                eprintln!("{name}: {p:?}")
            }
        })
        .unwrap_or_else(|e| panic!("clean build {name} failed: {e}"))
    };
    let a = clean("a", true);
    let b = clean("b", false);
    assert_eq!(a.manifest.input_key, b.manifest.input_key);
    assert_eq!(a.manifest.config_sha256, b.manifest.config_sha256);
    let (va, vb) = (
        std::fs::read(&a.manifest.artefacts.vmlinuz).unwrap(),
        std::fs::read(&b.manifest.artefacts.vmlinuz).unwrap(),
    );
    assert!(va.len() > 1_000_000);
    assert!(
        va == vb,
        "bzImage differs between two clean builds: {} ({} bytes) vs {} ({} bytes)",
        a.manifest.artefacts.vmlinuz.display(),
        va.len(),
        b.manifest.artefacts.vmlinuz.display(),
        vb.len()
    );
    // The source record names what was built.
    let src = &a.manifest.source;
    assert_eq!(src.package.as_deref(), Some("linux-source-6.1"));
    assert!(src.package_version.is_some());
    assert_eq!(src.sha256.as_ref().map(String::len), Some(64));
}
