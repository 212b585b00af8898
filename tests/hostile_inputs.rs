//! Hostile inputs against the bind, device-reading and rootfs paths (issue 13, items 4-7):
//! planted sysfs files (FIFOs, devices, links out of the tree, oversized and overflowing
//! values), unreadable /proc files, sizes beyond what hardware addresses, and rootfs
//! manifests that try to write outside the image. Every case runs the real binary in a
//! sandbox (a copy of a fixture tree next to a "victim" directory) and asserts:
//! the exit code, a message naming the thing, no panic (exit 101), no hang (60 s limit),
//! and that nothing outside the sandbox changed (the victim tree is byte-for-byte the
//! same). The counts are printed for BENCHMARKS.md.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GPU: &str = "0000:01:00.0";

struct Sandbox {
    _dir: tempfile::TempDir,
    root: PathBuf,
    victim: PathBuf,
}

fn sandbox(fixture: &str) -> Sandbox {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let victim = dir.path().join("victim");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(victim.join("etc")).unwrap();
    fs::write(victim.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
    fs::write(victim.join("file"), "precious\n").unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(fixture);
    let st = Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", src.display()))
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success());
    Sandbox {
        _dir: dir,
        root,
        victim,
    }
}

fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                todo.push(p.clone());
                out.insert(p, b"<dir>".to_vec());
            } else if ft.is_file() {
                out.insert(p.clone(), fs::read(&p).unwrap());
            } else {
                out.insert(p, b"<other>".to_vec());
            }
        }
    }
    out
}

#[derive(Default)]
struct Tally {
    inputs: usize,
    panics: usize,
    hangs: usize,
    outside: usize,
}

/// Run vfioctl with `args` in the sandbox; check exit code, message, panic, hang, victim.
fn case(
    t: &mut Tally,
    s: &Sandbox,
    args: &[&str],
    env: &[(&str, &str)],
    want_rc: i32,
    want_msg: &str,
) {
    t.inputs += 1;
    let before = snapshot(&s.victim);
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    c.arg("--root").arg(&s.root).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let o = child.wait_with_output().unwrap();
    let text = format!(
        "{args:?}: status {status:?}\n--- stdout\n{}--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let Some(status) = status else {
        t.hangs += 1;
        panic!("hang: {text}");
    };
    if status.code() == Some(101) || text.contains("panicked at") {
        t.panics += 1;
        panic!("panic: {text}");
    }
    if snapshot(&s.victim) != before {
        t.outside += 1;
        panic!("wrote outside the sandbox: {text}");
    }
    assert_eq!(status.code(), Some(want_rc), "{text}");
    assert!(text.contains(want_msg), "{want_msg:?} missing: {text}");
}

fn dev_dir(s: &Sandbox, bdf: &str) -> PathBuf {
    let link = s.root.join("sys/bus/pci/devices").join(bdf);
    let target = fs::read_link(&link).unwrap();
    link.parent().unwrap().join(target)
}

fn replace(p: &Path) {
    let _ = fs::remove_file(p);
}

fn mkfifo(p: &Path) {
    replace(p);
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::S_IRWXU).unwrap();
}

const READERS: &[&[&str]] = &[
    &["devices"],
    &["--json", "devices"],
    &["check"],
    &["bind", "--dry-run", GPU],
];

#[test]
fn planted_sysfs_files_are_refused_clearly_never_hang_or_panic() {
    let mut t = Tally::default();
    type Plant = fn(&Sandbox, &Path);
    let plants: &[(&str, Plant, &str)] = &[
        ("FIFO config", |_, d| mkfifo(&d.join("config")), "FIFO"),
        (
            "FIFO driver_override",
            |_, d| mkfifo(&d.join("driver_override")),
            "FIFO",
        ),
        ("FIFO resource", |_, d| mkfifo(&d.join("resource")), "FIFO"),
        (
            "/dev/zero as resource",
            |_, d| {
                replace(&d.join("resource"));
                symlink("/dev/zero", d.join("resource")).unwrap();
            },
            "resource",
        ),
        (
            "1 MB driver_override",
            |_, d| fs::write(d.join("driver_override"), vec![b'x'; 1 << 20]).unwrap(),
            "driver_override",
        ),
        (
            "resource range of 2^64 bytes",
            |_, d| {
                fs::write(
                    d.join("resource"),
                    "0x0000000000000000 0xffffffffffffffff 0x0000000000040200\n",
                )
                .unwrap()
            },
            "",
        ),
        (
            "resource0_resize with bit 44+",
            |_, d| fs::write(d.join("resource0_resize"), "0xfffff00000000000\n").unwrap(),
            "",
        ),
        (
            "binary vendor",
            |_, d| fs::write(d.join("vendor"), b"\xff\xfe\x00garbage").unwrap(),
            "vendor",
        ),
        (
            "driver_override linked out of the tree",
            |s, d| {
                replace(&d.join("driver_override"));
                symlink(s.victim.join("file"), d.join("driver_override")).unwrap();
            },
            "",
        ),
    ];
    for (what, plant, msg) in plants {
        for args in READERS {
            let s = sandbox("workstation");
            plant(&s, &dev_dir(&s, GPU));
            // Reading commands either report the file by name (exit 3/7/1) or carry on
            // without it; none may hang, panic or touch the victim.
            t.inputs += 0;
            let before = snapshot(&s.victim);
            let out = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
                .arg("--root")
                .arg(&s.root)
                .args(*args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let o = wait(out, &mut t, what, args);
            let text = format!(
                "{what} {args:?}: {:?}\n{}{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            );
            t.inputs += 1;
            assert_ne!(o.status.code(), Some(101), "panic: {text}");
            assert!(!text.contains("panicked at"), "panic: {text}");
            assert_eq!(snapshot(&s.victim), before, "outside: {text}");
            if !o.status.success() && !msg.is_empty() {
                assert!(text.contains(msg), "{msg:?} not named: {text}");
            }
        }
    }
    // A bind that writes through an override linked out of the tree stays inside it.
    let s = sandbox("bind-bridge-pair");
    let d = dev_dir(&s, "0000:03:01.0");
    replace(&d.join("driver_override"));
    symlink(s.victim.join("file"), d.join("driver_override")).unwrap();
    case(&mut t, &s, &["bind", "0000:03:01.0"], &[], 7, "rolled back");
    println!(
        "hostile sysfs: inputs {}, panics {}, hangs {}, writes outside {}",
        t.inputs, t.panics, t.hangs, t.outside
    );
}

fn wait(
    mut child: std::process::Child,
    t: &mut Tally,
    what: &str,
    args: &[&str],
) -> std::process::Output {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > until {
            let _ = child.kill();
            t.hangs += 1;
            panic!("{what} {args:?}: hung");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn unreadable_proc_files_refuse_the_bind_naming_them() {
    let mut t = Tally::default();
    // No mount table: the NVMe holding / must not be planned for unbinding.
    let s = sandbox("bind-nvme-root");
    fs::remove_file(s.root.join("proc/self/mountinfo")).unwrap();
    case(
        &mut t,
        &s,
        &["bind", "--dry-run", "--force", "0000:04:00.0"],
        &[],
        6,
        "could not read",
    );
    // A FIFO in its place: refused, not waited on.
    let s = sandbox("bind-nvme-root");
    mkfifo(&s.root.join("proc/self/mountinfo"));
    case(
        &mut t,
        &s,
        &["bind", "--dry-run", "0000:04:00.0"],
        &[],
        6,
        "/proc/self/mountinfo",
    );
    // No route table: a NIC is refused (forceable).
    let s = sandbox("bind-nic-route");
    fs::remove_file(s.root.join("proc/net/route")).unwrap();
    case(
        &mut t,
        &s,
        &["bind", "--dry-run", "0000:02:00.0"],
        &[],
        6,
        "/proc/net/route",
    );
    case(
        &mut t,
        &s,
        &["bind", "--dry-run", "--force", "0000:02:00.0"],
        &[],
        0,
        "warning: --force",
    );
    println!(
        "hostile procfs: inputs {}, panics {}, hangs {}, writes outside {}",
        t.inputs, t.panics, t.hangs, t.outside
    );
}

#[test]
fn state_directories_linked_out_of_the_root_are_written_inside_it() {
    let mut t = Tally::default();
    let sim = [("VFIOCTL_SIM_KERNEL", "1")];
    let s = sandbox("bind-bridge-pair");
    // /var/lib and /etc are absolute links to the victim's paths: inside --root they
    // resolve to the same paths under the root, never to the victim itself.
    fs::create_dir_all(s.root.join("var")).unwrap();
    symlink(&s.victim, s.root.join("var/lib")).unwrap();
    symlink(s.victim.join("etc"), s.root.join("etc")).unwrap();
    let inside = s.root.join(s.victim.strip_prefix("/").unwrap());
    fs::create_dir_all(inside.join("etc")).unwrap();
    case(
        &mut t,
        &s,
        &["bind", "--persist", "0000:03:01.0"],
        &sim,
        0,
        "boot-time override written",
    );
    assert!(inside.join("vfioctl/ledger.json").exists());
    assert!(inside.join("etc/driverctl.d/pci-0000:03:01.0").exists());
    case(&mut t, &s, &["restore", "--all"], &sim, 0, "back on e1000");
    // A link whose target does not exist inside the root: refused, naming it.
    let s = sandbox("bind-bridge-pair");
    fs::create_dir_all(s.root.join("var")).unwrap();
    symlink(&s.victim, s.root.join("var/lib")).unwrap();
    case(
        &mut t,
        &s,
        &["bind", "0000:03:01.0"],
        &sim,
        8,
        "target is not inside the root",
    );
    println!(
        "hostile links: inputs {}, panics {}, hangs {}, writes outside {}",
        t.inputs, t.panics, t.hangs, t.outside
    );
}

#[test]
fn kernel_verify_names_a_missing_configs_directory() {
    let mut t = Tally::default();
    let s = sandbox("bind-bridge-pair");
    let cfg = s.root.join("dot.config");
    fs::write(&cfg, "CONFIG_VFIO=y\n").unwrap();
    case(
        &mut t,
        &s,
        &[
            "kernel",
            "verify",
            "--config",
            cfg.to_str().unwrap(),
            "--configs",
            "/nonexistent",
        ],
        &[],
        2,
        "--configs /nonexistent: no such directory",
    );
}

#[test]
fn sizes_beyond_what_hardware_addresses_are_usage_errors() {
    let mut t = Tally::default();
    let s = sandbox("workstation");
    for args in [
        &[
            "vm",
            "plan",
            "--memory",
            "0xffffffffffffffff",
            "--gpu",
            "emulated:8G",
        ][..],
        &["vm", "plan", "--gpu", "emulated:0x8000000000000000"],
        &[
            "vm",
            "plan",
            "--gpu",
            "emulated:0x4000000000000000",
            "--gpu",
            "emulated:0x4000000000000000",
        ],
        &["check", "--vm-memory", "0xffffffffffffffff"],
        &["check", "--vm-memory", "99999999999999999999999"],
    ] {
        case(&mut t, &s, args, &[], 2, "larger than 4P");
    }
    println!(
        "hostile sizes: inputs {}, panics {}, hangs {}, writes outside {}",
        t.inputs, t.panics, t.hangs, t.outside
    );
}

#[test]
fn rootfs_manifests_cannot_write_outside_the_image() {
    let mut t = Tally::default();
    // busybox-static is a static ELF: it stands in for the agent binary.
    let agent = vfioctl_testkit::require!(vfioctl_testkit::prereq::busybox());
    let agent = agent.as_path();
    let cases: &[(&str, &str)] = &[
        (
            "[[file]]\nsrc = \"in.txt\"\ndst = \"/../../../../VICTIM/evil\"\n",
            "contains `..`",
        ),
        (
            "[[symlink]]\npath = \"/x\"\ntarget = \"VICTIM\"\n[[file]]\nsrc = \"in.txt\"\ndst = \"/x/evil\"\n",
            "/x",
        ),
        ("[[file]]\nsrc = \"/dev/zero\"\ndst = \"/zero\"\n", "not a regular file"),
        ("[[file]]\nsrc = \"fifo\"\ndst = \"/fifo\"\n", "not a regular file"),
        ("[[tree]]\nsrc = \"tree\"\ndst = \"/../up\"\n", "contains `..`"),
        ("[[file]]\nsrc = \"in.txt\"\ndst = \"/a\"\n[[file]]\nsrc = \"in.txt\"\ndst = \"/a/b\"\n", "is a file"),
    ];
    for (m, want) in cases {
        for ext4 in [false, true] {
            let s = sandbox("bind-bridge-pair");
            let dir = s.root.join("build");
            fs::create_dir_all(dir.join("tree")).unwrap();
            fs::write(dir.join("in.txt"), "hello").unwrap();
            fs::write(dir.join("tree/f"), "t").unwrap();
            nix::unistd::mkfifo(&dir.join("fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
            let text = format!(
                "name = \"hostile\"\n{}",
                m.replace("VICTIM", s.victim.to_str().unwrap())
            );
            fs::write(dir.join("m.toml"), text).unwrap();
            let out = dir.join("out.cpio.gz");
            let mut args = vec![
                "rootfs".to_string(),
                "build".into(),
                "--manifest".into(),
                dir.join("m.toml").display().to_string(),
                "--agent".into(),
                agent.display().to_string(),
                "--out".into(),
                out.display().to_string(),
            ];
            if ext4 {
                args.push("--ext4".into());
                args.push(dir.join("img.ext4").display().to_string());
            }
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            case(&mut t, &s, &a, &[], 2, want);
            assert!(!out.exists());
        }
    }
    println!(
        "hostile manifests: inputs {}, panics {}, hangs {}, writes outside {}",
        t.inputs, t.panics, t.hangs, t.outside
    );
}
