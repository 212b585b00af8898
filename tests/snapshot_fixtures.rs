//! `vfioctl snapshot` over the committed fixture trees (`--root` pointed at a tree stands
//! for a host): every recorded command prints against the snapshot exactly what it
//! printed against the tree, MANIFEST lists every entry with its reason, a tampered
//! snapshot is caught by `--replay`, and the committed lab-guest snapshots
//! (`tests/fixtures/lab-iommu-*`, taken by tests/snapshot_lab.rs) still replay identically
//! with this vfioctl and hold the cases the hand-built bind trees were made for.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn vfioctl(root: Option<&Path>, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    if let Some(r) = root {
        c.arg("--root").arg(r);
    }
    c.args(args).env_remove("VFIOCTL_ROOT").output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Take a snapshot of fixture `name` into `out`; the `--json` report.
fn snap(name: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "snapshot", out.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = vfioctl(Some(&fixture(name)), &args);
    assert!(o.status.success(), "{name}: {}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Every path under `dir`, relative, not following links.
fn walk(dir: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) {
    for e in fs::read_dir(dir.join(rel)).unwrap() {
        let e = e.unwrap();
        let r = rel.join(e.file_name());
        out.insert(r.clone());
        if e.file_type().unwrap().is_dir() {
            walk(dir, &r, out);
        }
    }
}

#[test]
fn fixture_trees_replay_identically_and_manifest_covers_every_entry() {
    let t = tempfile::tempdir().unwrap();
    // Trees complete enough for bind's in-use scan: where a tree lacks a file a host always
    // has (gpu-server and workstation have no /proc/self/mountinfo), the refusal names the
    // file under --root, and the two roots differ by their path.
    for name in ["bind-bridge-pair", "bind-nic-route", "kata-dgx", "kata-ws"] {
        let out = t.path().join(name);
        let r = snap(name, &out, &[]);
        assert_eq!(r["identical"], true, "{name}: {r:#}");
        let cmds = r["commands"].as_array().unwrap();
        assert!(cmds.len() >= 5, "{name}: {r:#}");
        for label in [
            "devices",
            "check",
            "bind --dry-run",
            "vm plan",
            "kata config",
        ] {
            assert!(
                cmds.iter().any(|c| c["label"] == label),
                "{name}: no {label} in {r:#}"
            );
        }

        // Independently of the snapshot's own replay (once: it doubles the run time):
        // each command against the tree and against the snapshot prints the same bytes
        // and exits the same, and the access log changed nothing in what it printed.
        if name != "bind-bridge-pair" {
            continue_checks(name, &out);
            continue;
        }
        let meta: vfioctl::snapshot::Meta =
            serde_json::from_slice(&fs::read(out.join("SNAPSHOT.json")).unwrap()).unwrap();
        for c in &meta.commands {
            let mut args = vec!["--json"];
            args.extend(c.args.iter().map(String::as_str));
            let live = vfioctl(Some(&fixture(name)), &args);
            let replay = vfioctl(Some(&out), &args);
            assert_eq!(live.status.code(), replay.status.code(), "{name} {args:?}");
            assert_eq!(
                String::from_utf8_lossy(&live.stdout),
                String::from_utf8_lossy(&replay.stdout),
                "{name} {args:?}"
            );
            assert_eq!(live.stdout, c.stdout.as_bytes(), "{name} {args:?}");
        }
        continue_checks(name, &out);
    }
}

/// MANIFEST and layout checks of the snapshot of fixture `name` at `out`.
fn continue_checks(name: &str, out: &Path) {
    {
        // MANIFEST: exactly the entries of the tree, each with a kind and a reason.
        let manifest = fs::read_to_string(out.join("MANIFEST")).unwrap();
        let mut listed = BTreeSet::new();
        for l in manifest.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = l.split('\t').collect();
            assert_eq!(f.len(), 4, "{name}: {l}");
            assert!(
                ["dir", "file", "link", "name", "redacted", "unreadable"].contains(&f[0]),
                "{l}"
            );
            assert!(f[3].contains(" by "), "{name}: no reason: {l}");
            listed.insert(PathBuf::from(f[1].trim_start_matches('/')));
        }
        let mut present = BTreeSet::new();
        walk(out, Path::new(""), &mut present);
        present.remove(Path::new("MANIFEST"));
        present.remove(Path::new("SNAPSHOT.json"));
        assert_eq!(listed, present, "{name}: MANIFEST vs tree");

        // Laid out as Linux lays it out: the bus links point into /sys/devices.
        let devs = out.join("sys/bus/pci/devices");
        let mut n = 0;
        for e in fs::read_dir(&devs).unwrap() {
            let e = e.unwrap();
            let target = fs::read_link(e.path()).unwrap();
            assert!(
                target.to_string_lossy().contains("devices/pci"),
                "{name}: {target:?}"
            );
            assert!(e.path().join("vendor").is_file(), "{name}: {:?}", e.path());
            n += 1;
        }
        assert!(n > 0, "{name}");
    }
}

#[test]
fn archive_snapshot_replays_and_a_tampered_one_is_caught() {
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("ws.tar.zst");
    let r = snap("workstation", &out, &["class:gpu"]);
    assert_eq!(r["archive"], true);
    let size = r["compressed_bytes"].as_u64().unwrap();
    assert_eq!(size, fs::metadata(&out).unwrap().len());
    assert!(size < 1 << 20, "{size}");

    let o = vfioctl(
        None,
        &["--json", "snapshot", "--replay", out.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["identical"], true, "{v:#}");

    // Unpack, change one file every command reads, replay: exit 1, the diff shown.
    let opened = vfioctl::snapshot::open(&out).unwrap();
    let dir = t.path().join("tampered");
    Command::new("cp")
        .arg("-a")
        .arg(&opened.dir)
        .arg(&dir)
        .status()
        .unwrap();
    let mut class_file = None;
    for e in walkdir(&dir.join("sys/devices")) {
        if e.file_name().is_some_and(|n| n == "class")
            && fs::read_to_string(&e).unwrap().starts_with("0x03")
        {
            class_file = Some(e);
        }
    }
    let class_file = class_file.expect("a GPU's class file");
    fs::write(&class_file, "0x028000\n").unwrap();
    let o = vfioctl(None, &["snapshot", "--replay", dir.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("differs: vfioctl --json devices"), "{s}");
    assert!(s.contains("-    \"class\""), "{s}");
}

fn walkdir(d: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(d).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(walkdir(&e.path()));
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn bad_outputs_and_inputs_are_refused_with_the_fix() {
    let t = tempfile::tempdir().unwrap();
    // An existing OUT is never overwritten.
    let o = vfioctl(
        Some(&fixture("gpu-server")),
        &["snapshot", t.path().to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    // --replay of something that is not a snapshot.
    let o = vfioctl(None, &["snapshot", "--replay", t.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("not a vfioctl snapshot") && e.contains("hint:"),
        "{e}"
    );
    // A file that is not zstd.
    let junk = t.path().join("junk.tar.zst");
    fs::write(&junk, "hello").unwrap();
    let o = vfioctl(None, &["snapshot", "--replay", junk.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a zstd-compressed tar"));
    // Nothing was left behind in the output directory's parent.
    let left: Vec<_> = fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("junk.tar.zst")]);
}
/// The lab-guest snapshots committed under tests/fixtures (taken by tests/snapshot_lab.rs
/// inside the intel-iommu guest) still answer every recorded command with JSON and a
/// documented exit code. Byte equality with the guest's output holds for the vfioctl
/// that took them (tests/snapshot_lab.rs proves it on every lab run); after a change of an
/// output format, `VFIOCTL_UPDATE_SNAPSHOT_FIXTURES=1 cargo test --test snapshot_lab`
/// takes them again.
#[test]
fn committed_lab_snapshots_still_replay() {
    let mut n = 0;
    for e in fs::read_dir(fixture("")).unwrap() {
        let p = e.unwrap().path();
        if !p.join("SNAPSHOT.json").is_file() {
            continue;
        }
        n += 1;
        let opened = vfioctl::snapshot::open(&p).unwrap();
        assert!(opened.meta.commands.len() >= 10, "{}", p.display());
        for c in &opened.meta.commands {
            let mut args = vec!["--json"];
            args.extend(c.args.iter().map(String::as_str));
            let o = vfioctl(Some(&p), &args);
            // Exit codes and output formats may change between versions (see above);
            // what must hold is that the tree still answers every recorded command.
            let code = o.status.code().unwrap_or(-1);
            assert!(
                (0..=8).contains(&code),
                "{} {args:?}: {}",
                p.display(),
                text(&o)
            );
            serde_json::from_slice::<serde_json::Value>(&o.stdout)
                .unwrap_or_else(|e| panic!("{} {args:?}: {e}: {}", p.display(), text(&o)));
        }
    }
    assert!(
        n >= 2,
        "expected the committed lab snapshots in tests/fixtures"
    );
}

/// `vfioctl --root <lab snapshot> --json ARGS`, parsed, with its exit status.
fn on_lab(snapshot: &str, args: &[&str]) -> (i32, serde_json::Value) {
    let mut a = vec!["--json"];
    a.extend_from_slice(args);
    let o = vfioctl(Some(&fixture(snapshot)), &a);
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (o.status.code().unwrap(), v)
}

/// The lab snapshots hold, from a real kernel's sysfs, the cases the hand-built bind
/// trees were made for: `bind-bridge-pair` (an e1000 behind a pcie-pci-bridge brings its
/// neighbour along as a companion, the bridge stays) and `bind-nic-route` (the NIC that
/// carries the default route is refused); and the bound state that Kata's checks need.
#[test]
fn lab_snapshots_cover_the_bind_fixture_cases_from_a_real_kernel() {
    let (exit, v) = on_lab(
        "lab-iommu-host-drivers",
        &["bind", "--dry-run", "0000:03:01.0"],
    );
    assert_eq!(exit, 0, "{v:#}");
    let members = v["plan"]["groups"][0]["members"].as_array().unwrap();
    let role = |b: &str| {
        members
            .iter()
            .find(|m| m["bdf"] == b)
            .map(|m| m["role"].as_str().unwrap().to_string())
    };
    assert_eq!(role("0000:03:02.0").as_deref(), Some("companion"), "{v:#}");
    assert_eq!(role("0000:02:00.0").as_deref(), Some("bridge"), "{v:#}");
    assert_eq!(
        v["writes"][0], "modprobe vfio_pci",
        "vfio-pci not loaded yet"
    );

    let (exit, v) = on_lab(
        "lab-iommu-host-drivers",
        &["bind", "--dry-run", "0000:04:00.0"],
    );
    assert_eq!(exit, 6, "{v:#}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("carries the default route"),
        "{v:#}"
    );

    let (exit, v) = on_lab("lab-iommu-vfio-bound", &["devices"]);
    assert_eq!(exit, 0);
    for b in ["0000:01:00.0", "0000:03:01.0", "0000:03:02.0"] {
        let d = v
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["bdf"] == b)
            .unwrap();
        assert_eq!(d["driver"], "vfio-pci", "{d:#}");
    }
    let (exit, v) = on_lab(
        "lab-iommu-vfio-bound",
        &[
            "kata",
            "config",
            "--kata-version",
            "4.1.0",
            "--gpu",
            "0000:01:00.0",
        ],
    );
    assert_eq!(exit, 0, "{v:#}");
}

/// The console example in README.md's "Reporting a problem" section runs as written.
#[test]
fn readme_snapshot_example_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = fs::read_to_string(root.join("README.md")).unwrap();
    let start = readme
        .find("<!-- section: snapshot -->")
        .expect("README section marker");
    let section = &readme[start..];
    let block = &section[section.find("```console").expect("console block")..];
    let mut lines = block.lines().skip(1);
    let cmd = lines.next().unwrap().strip_prefix("$ vfioctl ").unwrap();
    let want: Vec<&str> = lines.take_while(|l| l.trim() != "```").collect();
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(cmd.split_whitespace())
        .current_dir(root)
        .env_remove("VFIOCTL_ROOT")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let got = String::from_utf8_lossy(&o.stdout);
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
}
