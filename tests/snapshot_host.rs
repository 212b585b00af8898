//! `vfioctl snapshot` on this machine's real sysfs. READ-ONLY: a snapshot runs `devices`,
//! `check`, `bind --dry-run`, `vm plan --cpu tcg` and `kata config`, which only read; the
//! tests below run the same commands and nothing else (no bind, no unbind, no write under
//! /sys).
//!
//! Proves that every command the snapshot recorded prints, with `--root SNAPSHOT`, exactly
//! what the same command prints live on this machine (run again here, without the access
//! log), and that the machine's identifiers stay out of the snapshot.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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

/// `None` (after saying so) when this machine shows no PCI sysfs (a container without
/// /sys): nothing to snapshot. Under `VFIOCTL_REQUIRE_LAB=1` that is a failure.
fn pci_sysfs(test: &str) -> Option<()> {
    if Path::new("/sys/bus/pci/devices").is_dir() {
        return Some(());
    }
    let why = format!("{test}: this machine has no /sys/bus/pci/devices");
    if std::env::var("VFIOCTL_REQUIRE_LAB").as_deref() == Ok("1") {
        panic!("{why} (VFIOCTL_REQUIRE_LAB=1)");
    }
    println!("SKIPPED: {why}");
    eprintln!("SKIPPED: {why}");
    None
}

fn take(out: &Path) -> serde_json::Value {
    let o = vfioctl(None, &["--json", "snapshot", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn this_host_replays_exactly_what_it_prints_live() {
    if pci_sysfs("this_host_replays_exactly_what_it_prints_live").is_none() {
        return;
    }
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("this-host.tar.zst");
    let r = take(&out);
    assert_eq!(r["identical"], true, "{r:#}");
    let size = r["compressed_bytes"].as_u64().unwrap();
    println!(
        "snapshot of this machine: {size} bytes compressed, {} commands, entries {}",
        r["commands"].as_array().unwrap().len(),
        r["entries"]
    );
    assert!(size < 1 << 20, "{size} bytes");

    let opened = vfioctl::snapshot::open(&out).unwrap();
    let n_pci = fs::read_dir("/sys/bus/pci/devices").unwrap().count();
    let devices: serde_json::Value = serde_json::from_str(
        &opened
            .meta
            .commands
            .iter()
            .find(|c| c.args == ["devices"])
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(devices.as_array().unwrap().len(), n_pci);
    for c in &opened.meta.commands {
        let mut args = vec!["--json"];
        args.extend(c.args.iter().map(String::as_str));
        let live = vfioctl(None, &args);
        let replay = vfioctl(Some(&opened.dir), &args);
        assert_eq!(
            live.status.code(),
            replay.status.code(),
            "{args:?}\nlive: {}\nreplay: {}",
            text(&live),
            text(&replay)
        );
        assert_eq!(
            String::from_utf8_lossy(&live.stdout),
            String::from_utf8_lossy(&replay.stdout),
            "{args:?}"
        );
    }
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            out.extend(files(&e.path()));
        } else if ft.is_file() {
            out.push(e.path());
        }
    }
    out
}

#[test]
fn this_hosts_identifiers_stay_out() {
    if pci_sysfs("this_hosts_identifiers_stay_out").is_none() {
        return;
    }
    // What identifies this machine: MAC addresses, disk and board serials, the host name.
    let mut ids: Vec<String> = Vec::new();
    let read = |p: &Path| {
        fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    };
    for e in fs::read_dir("/sys/class/net").unwrap().flatten() {
        ids.push(read(&e.path().join("address")));
    }
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        for f in ["device/serial", "device/wwid", "serial", "wwid"] {
            ids.push(read(&e.path().join(f)));
        }
    }
    for f in [
        "product_serial",
        "board_serial",
        "chassis_serial",
        "product_uuid",
    ] {
        ids.push(read(&Path::new("/sys/class/dmi/id").join(f)));
    }
    let host = read(Path::new("/proc/sys/kernel/hostname"));
    // A short host name ("vm") is a word anywhere; a real one is checked.
    if host.len() >= 6 {
        ids.push(host);
    }
    ids.retain(|s| s.len() >= 6 && s != "00:00:00:00:00:00");

    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("this-host");
    take(&out);
    for f in files(&out) {
        let bytes = fs::read(&f).unwrap();
        let s = String::from_utf8_lossy(&bytes);
        for id in &ids {
            assert!(!s.contains(id.as_str()), "{} holds {id:?}", f.display());
        }
    }
    for p in ["proc/sys/kernel/hostname", "etc/hostname"] {
        if let Ok(s) = fs::read_to_string(out.join(p)) {
            assert_eq!(s, "snapshot-host\n", "{p}");
        }
    }
    // Device nodes are names only.
    for f in files(&out.join("dev")) {
        assert_eq!(fs::metadata(&f).unwrap().len(), 0, "{}", f.display());
    }
}
