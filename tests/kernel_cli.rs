//! `vfioctl kernel verify` through the real binary: exit codes, text and --json.
//! Needs no kernel tree (without --source the drops are listed, not analysed).

mod kernel_support;
mod schema_support;

use std::process::Command;

use kernel_support::*;

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let cfgs = d.path().join("configs");
    std::fs::create_dir_all(&cfgs).unwrap();
    std::fs::copy(configs().join("manifest.toml"), cfgs.join("manifest.toml")).unwrap();
    std::fs::write(
        cfgs.join("00-base.config"),
        "CONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\n# CONFIG_DRM_NOUVEAU is not set\nCONFIG_LOCALVERSION=\"-x\"\n",
    )
    .unwrap();
    std::fs::write(cfgs.join("10-x86_64.config"), "CONFIG_64BIT=y\n").unwrap();
    std::fs::write(cfgs.join("20-extra.config"), "CONFIG_NR_CPUS=0x40\n").unwrap();
    std::fs::write(cfgs.join("allowlist"), "# none\n").unwrap();
    (d, cfgs)
}

fn vfioctl(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
    )
}

#[test]
fn verify_passes_and_fails_with_documented_exit_codes() {
    let (d, cfgs) = setup();
    let good = d.path().join("good.config");
    std::fs::write(
        &good,
        "CONFIG_64BIT=y\nCONFIG_PCI=y\nCONFIG_VIRTIO_PCI=y\nCONFIG_LOCALVERSION=\"-x\"\nCONFIG_NR_CPUS=64\n",
    )
    .unwrap();
    let c = cfgs.to_str().unwrap();
    let (rc, out) = vfioctl(&[
        "kernel",
        "verify",
        "--configs",
        c,
        "--config",
        good.to_str().unwrap(),
        "--flavour",
        "extra",
    ]);
    assert_eq!(rc, 0, "{out}");
    assert!(
        out.contains("6 options requested, 6 landed, 0 dropped"),
        "{out}"
    );

    let bad = d.path().join("bad.config");
    std::fs::write(
        &bad,
        "CONFIG_64BIT=y\nCONFIG_PCI=y\nCONFIG_LOCALVERSION=\"\"\n",
    )
    .unwrap();
    let (rc, out) = vfioctl(&[
        "kernel",
        "verify",
        "--configs",
        c,
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("DROPPED CONFIG_VIRTIO_PCI=y"), "{out}");
    assert!(out.contains("DROPPED CONFIG_LOCALVERSION=\"-x\""), "{out}");

    let (rc, out) = vfioctl(&[
        "--json",
        "kernel",
        "verify",
        "--configs",
        c,
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_eq!(rc, 1);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["dropped"].as_array().unwrap().len(), 2);
    assert_eq!(v["dropped"][0]["symbol"], "LOCALVERSION");

    let (rc, out) = vfioctl(&[
        "kernel",
        "verify",
        "--configs",
        c,
        "--config",
        bad.to_str().unwrap(),
        "--flavour",
        "nope",
    ]);
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("unknown flavour `nope`"), "{out}");
}

/// A tiny "kernel source" tarball: `linux-<v>/Makefile` with that version, a Kconfig
/// and a file the test patch can touch.
fn fake_tarball(dir: &std::path::Path, version: &str, hello: &str) -> std::path::PathBuf {
    let mut parts = version.split('.');
    let (v, p, sub) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap_or("0"),
    );
    let top = dir.join(format!("src-{version}/linux-{version}"));
    std::fs::create_dir_all(&top).unwrap();
    std::fs::write(
        top.join("Makefile"),
        format!("VERSION = {v}\nPATCHLEVEL = {p}\nSUBLEVEL = {sub}\nEXTRAVERSION =\n"),
    )
    .unwrap();
    std::fs::write(top.join("Kconfig"), "# empty\n").unwrap();
    std::fs::write(top.join("hello.c"), hello).unwrap();
    let tar = dir.join(format!("linux-{version}.tar.xz"));
    let st = Command::new("tar")
        .arg("-cJf")
        .arg(&tar)
        .arg("-C")
        .arg(dir.join(format!("src-{version}")))
        .arg(format!("linux-{version}"))
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

fn build_with(
    cfgs: &std::path::Path,
    lab: &std::path::Path,
    src: &std::path::Path,
) -> (i32, String) {
    vfioctl(&[
        "kernel",
        "build",
        "--configs",
        cfgs.to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
        "--lab",
        lab.to_str().unwrap(),
    ])
}

#[test]
fn build_refuses_a_file_that_is_no_kernel_tarball() {
    let (d, cfgs) = setup();
    let fake = d.path().join("linux-fake.tar.xz");
    std::fs::write(&fake, b"not a kernel").unwrap();
    let (rc, out) = build_with(&cfgs, &d.path().join("lab"), &fake);
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("not a kernel source tarball"), "{out}");
    assert!(out.contains("linux-fake.tar.xz"), "{out}");
}

#[test]
fn build_refuses_another_series_naming_the_pin_and_the_fix() {
    let (d, cfgs) = setup();
    let tar = fake_tarball(d.path(), "6.12.5", "int x;\n");
    let lab = d.path().join("lab");
    let (rc, out) = build_with(&cfgs, &lab, &tar);
    assert_eq!(rc, 2, "{out}");
    assert!(
        out.contains("version 6.12.5 is not in the pinned series 6.1"),
        "{out}"
    );
    assert!(out.contains("manifest.toml"), "{out}");
    assert!(out.contains("--allow-unpinned"), "{out}");
    // nothing half-extracted is left behind
    let left: Vec<_> = std::fs::read_dir(lab.join("kernel-src"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') && n != "checksums.json")
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn a_newer_source_of_the_series_builds_with_a_note_and_kernel_lock_records_it() {
    let (d, cfgs) = setup();
    let tar = fake_tarball(d.path(), "6.1.999", "int x;\n");
    let lab = d.path().join("lab");
    // A lock recording another tarball of the series (the 6.1.192-2 of the issue).
    std::fs::write(
        cfgs.join("kernel.lock"),
        "[kernel]\npackage = \"linux-source-6.1\"\npackage_version = \"6.1.192-2\"\nversion = \"6.1.192\"\nsha256 = \"4d415b3d364834fd818270e88813e90323bbfce4f519a0e6bd4940ddcd7df693\"\n",
    )
    .unwrap();
    let (_rc, out) = build_with(&cfgs, &lab, &tar);
    // The fake tree cannot be configured, but the source phase passed with its note.
    assert!(
        out.contains(
            "6.1.999 differs from kernel-configs/kernel.lock (linux-source-6.1 6.1.192-2)"
        ),
        "{out}"
    );
    assert!(
        out.contains("run `vfioctl kernel lock` to record it"),
        "{out}"
    );
    assert!(!out.contains("not in the pinned series"), "{out}");

    // `kernel lock --check` says it is stale (exit 1) and writes nothing ...
    let c = cfgs.to_str().unwrap();
    let t = tar.to_str().unwrap();
    let (rc, out) = vfioctl(&["kernel", "lock", "--configs", c, "--source", t, "--check"]);
    assert_eq!(rc, 1, "{out}");
    assert!(out.contains("out of date"), "{out}");
    assert!(out.contains("version: 6.1.192 -> 6.1.999"), "{out}");
    // ... `kernel lock` records it and prints what changed ...
    let (rc, out) = vfioctl(&["kernel", "lock", "--configs", c, "--source", t, "--json"]);
    assert_eq!(rc, 0, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["written"], true);
    assert_eq!(v["new"]["version"], "6.1.999");
    let lock = std::fs::read_to_string(cfgs.join("kernel.lock")).unwrap();
    assert!(lock.contains("version = \"6.1.999\""), "{lock}");
    // ... and the next build is on the lock.
    let (_rc, out) = build_with(&cfgs, &lab, &tar);
    assert!(out.contains("matches kernel-configs/kernel.lock"), "{out}");
    // another series is refused by `kernel lock` too
    let other = fake_tarball(d.path(), "5.10.7", "int x;\n");
    let (rc, out) = vfioctl(&[
        "kernel",
        "lock",
        "--configs",
        c,
        "--source",
        other.to_str().unwrap(),
    ]);
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("not in the pinned series 6.1"), "{out}");
}

#[test]
fn a_patch_that_no_longer_applies_stops_the_build_naming_the_patch() {
    let (d, cfgs) = setup();
    let pdir = cfgs.join("patches/linux-6.1");
    std::fs::create_dir_all(&pdir).unwrap();
    let patch = pdir.join("0001-hello.patch");
    std::fs::write(
        &patch,
        "--- a/hello.c\n+++ b/hello.c\n@@ -1 +1 @@\n-int x;\n+int y;\n",
    )
    .unwrap();
    // The patch applies to a tree with `int x;` (the build then fails later, in configure) ...
    let good = fake_tarball(d.path(), "6.1.200", "int x;\n");
    let (_rc, out) = build_with(&cfgs, &d.path().join("lab"), &good);
    assert!(!out.contains("no longer applies"), "{out}");
    // ... and stops the build, naming the patch and the fix, on one where the line moved on.
    let moved = fake_tarball(d.path(), "6.1.201", "long x;\n");
    let (rc, out) = build_with(&cfgs, &d.path().join("lab"), &moved);
    assert_eq!(rc, 2, "{out}");
    assert!(out.contains("0001-hello.patch no longer applies"), "{out}");
    assert!(out.contains("refresh"), "{out}");
}

/// A kernel tarball of the pinned series whose Makefile stands in for kbuild: the targets
/// `kernel build` runs (tinyconfig, olddefconfig, the compile, kernelrelease,
/// modules_install), printing kbuild's quiet `CC`/`AS`/`LD` lines, and producing the
/// files the install phase copies. A `Kbuild` file gives the object estimate 2 of the 4
/// objects the compile prints.
fn kbuild_stand_in(dir: &std::path::Path) -> std::path::PathBuf {
    let top = dir.join("src-kbuild/linux-6.1.999");
    std::fs::create_dir_all(&top).unwrap();
    let makefile = "VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 999\nEXTRAVERSION =\n\
        O ?= .\n\
        all:\n\
        \t@echo '  CC      init/main.o'\n\
        \t@echo '  CC [M]  drivers/x/x.o'\n\
        \t@echo '  HOSTCC  scripts/basic/fixdep'\n\
        \t@echo '  AS      arch/x86/entry/entry_64.o'\n\
        \t@echo '  LD      vmlinux.o'\n\
        \t@mkdir -p $(O)/arch/x86/boot\n\
        \t@echo bzImage > $(O)/arch/x86/boot/bzImage\n\
        \t@echo map > $(O)/System.map\n\
        \t@: > $(O)/Module.symvers\n\
        tinyconfig:\n\
        \t@mkdir -p $(O)\n\
        \t@echo '# stand-in tinyconfig' > $(O)/.config\n\
        olddefconfig:\n\
        \t@true\n\
        kernelrelease:\n\
        \t@echo 6.1.999\n\
        modules_install:\n\
        \t@mkdir -p $(INSTALL_MOD_PATH)/lib/modules/6.1.999\n";
    std::fs::write(top.join("Makefile"), makefile).unwrap();
    std::fs::write(
        top.join("Kbuild"),
        "obj-y += init/ drivers/\nobj-y += a.o b.o\n",
    )
    .unwrap();
    std::fs::write(top.join("Kconfig"), "# empty\n").unwrap();
    let tar = dir.join("linux-6.1.999.tar.xz");
    let st = Command::new("tar")
        .arg("-cJf")
        .arg(&tar)
        .arg("-C")
        .arg(dir.join("src-kbuild"))
        .arg("linux-6.1.999")
        .status()
        .unwrap();
    assert!(st.success());
    tar
}

/// `kernel build --json` end to end on the kbuild stand-in: the report matches its
/// schema, the compile's objects were counted from make's output (4 of them, against an
/// estimate of 2) and recorded as the next build's total; the second build is up to date.
#[test]
fn build_json_matches_its_schema_and_counts_the_compiled_objects() {
    let (d, cfgs) = setup();
    let tar = kbuild_stand_in(d.path());
    let lab = d.path().join("lab");
    let args = [
        "--json",
        "kernel",
        "build",
        "--configs",
        cfgs.to_str().unwrap(),
        "--source",
        tar.to_str().unwrap(),
        "--lab",
        lab.to_str().unwrap(),
        "--no-ccache",
    ];
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["up_to_date"], false, "{v}");
    assert_eq!(v["manifest"]["kernel_release"], "6.1.999", "{v}");
    schema_support::assert_valid("kernel-build", &v);
    // No progress drawn into a pipe: phase lines only.
    assert!(!err.contains("init/main.o") && !err.contains("[="), "{err}");
    let count = lab.join("kernel-build/obj/base/.vfioctl-objects");
    assert_eq!(
        std::fs::read_to_string(&count).unwrap_or_else(|e| panic!("{}: {e}", count.display())),
        "4\n"
    );
    // The log keeps make's output.
    let log = std::fs::read_to_string(lab.join("kernel/vfioctl-base/logs/compile.log")).unwrap();
    assert!(log.contains("  LD      vmlinux.o"), "{log}");

    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["up_to_date"], true, "{v}");
    schema_support::assert_valid("kernel-build", &v);
}
