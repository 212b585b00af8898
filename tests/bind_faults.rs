//! Crash and race safety of `vfioctl bind`/`unbind`/`restore` on a simulated kernel
//! (issue 13, items 2, 3 and 14).
//!
//! The fixture tree `bind-bridge-pair` plus the simulated kernel of the `fault-injection`
//! feature (`VFIOCTL_SIM_KERNEL=1`: unbind, drivers_probe and bind move the `driver`
//! links as the PCI core does) lets a bind succeed, so every step of both devices of the
//! plan, the ledger saves, `--persist`, the rollback and `restore` can be killed with
//! `SIGKILL` (`VFIOCTL_FAULT_KILL_AFTER=#k`: the k-th fault point). After each kill,
//! `restore --all` must exit 0 and leave both devices on e1000 with their overrides unset,
//! an empty ledger and no boot-time override file.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use vfioctl::bind;
use vfioctl::{Bdf, SysRoot};
use vfioctl_common::PciDevice;
use vfioctl_testkit::fixture::copy;

const P1: &str = "0000:03:01.0";
const P2: &str = "0000:03:02.0";
const SIM: (&str, &str) = ("VFIOCTL_SIM_KERNEL", "1");

fn vfioctl(root: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    c.arg("--root").arg(root).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn dev(root: &Path, b: &str) -> PciDevice {
    PciDevice::read(&SysRoot::new(root), b.parse().unwrap()).unwrap()
}

fn ledger(root: &Path) -> BTreeMap<Bdf, bind::Entry> {
    bind::Ledger::peek(&SysRoot::new(root))
        .unwrap()
        .map(|l| l.devices)
        .unwrap_or_default()
}

fn persist_files(root: &Path) -> Vec<String> {
    fs::read_dir(root.join("etc/driverctl.d"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The fault points a run passes, from `VFIOCTL_FAULT_TRACE=1`.
fn trace(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("fault-point "))
        .map(|l| l.split_once(' ').map_or(l, |x| x.1).to_string())
        .collect()
}

/// Both devices back on e1000, overrides unset, ledger empty, no driverctl file.
fn assert_clean(root: &Path, ctx: &str) {
    for b in [P1, P2] {
        let d = dev(root, b);
        assert_eq!(d.driver.as_deref(), Some("e1000"), "{ctx}: {b} driver");
        assert_eq!(d.driver_override, None, "{ctx}: {b} override");
        assert!(!d.vfio_dev, "{ctx}: {b} vfio-dev left");
    }
    assert!(ledger(root).is_empty(), "{ctx}: ledger {:?}", ledger(root));
    assert!(
        persist_files(root).is_empty(),
        "{ctx}: boot-time overrides left: {:?}",
        persist_files(root)
    );
}

#[test]
fn the_simulated_kernel_binds_both_devices_and_restore_gives_them_back() {
    let t = copy("bind-bridge-pair");
    let o = vfioctl(t.path(), &["bind", "--persist", P1], &[SIM]);
    assert!(o.status.success(), "{}", text(&o));
    for b in [P1, P2] {
        let d = dev(t.path(), b);
        assert_eq!(d.driver.as_deref(), Some("vfio-pci"), "{}", text(&o));
        assert!(d.vfio_dev);
    }
    assert!(t.path().join("dev/vfio/4").exists());
    assert_eq!(persist_files(t.path()).len(), 2);
    let l = ledger(t.path());
    assert!(l
        .values()
        .all(|e| e.state == bind::BindState::OnVfio && e.persisted));
    let r = vfioctl(t.path(), &["unbind", P1], &[SIM]);
    assert!(r.status.success(), "{}", text(&r));
    assert_clean(t.path(), "unbind");
}

/// Every fault point of a successful `bind --persist` of two devices, then every fault
/// point of the `restore --all` that follows a kill.
#[test]
fn kill_at_every_step_of_every_device_then_restore_puts_everything_back() {
    let t = copy("bind-bridge-pair");
    let o = vfioctl(
        t.path(),
        &["bind", "--persist", P1],
        &[SIM, ("VFIOCTL_FAULT_TRACE", "1")],
    );
    assert!(o.status.success(), "{}", text(&o));
    let points = trace(&o);
    // Both devices' writes, the ledger before and after, both persist files.
    for want in [
        "ledger@1",
        "override@1",
        "unbind@1",
        "probe@1",
        "verify@1",
        "override@2",
        "unbind@2",
        "probe@2",
        "verify@2",
        "group-node@1",
        "persist@1",
        "persist@2",
        "ledger-done@1",
    ] {
        assert!(points.iter().any(|p| p == want), "{want} not in {points:?}");
    }
    let mut restore_points = 0;
    for k in 1..=points.len() {
        let t = copy("bind-bridge-pair");
        let kill = format!("#{k}");
        let o = vfioctl(
            t.path(),
            &["bind", "--persist", P1],
            &[SIM, ("VFIOCTL_FAULT_KILL_AFTER", &kill)],
        );
        let ctx = format!("kill after {} (#{k})", points[k - 1]);
        assert_eq!(o.status.signal(), Some(9), "{ctx}: {}", text(&o));
        assert!(
            !ledger(t.path()).is_empty(),
            "{ctx}: a killed bind must leave its intent in the ledger"
        );
        // The restore itself, killed at each of its points, then run again.
        let r = vfioctl(
            t.path(),
            &["restore", "--all"],
            &[SIM, ("VFIOCTL_FAULT_TRACE", "1")],
        );
        assert!(r.status.success(), "{ctx}: restore: {}", text(&r));
        assert_clean(t.path(), &ctx);
        // The restore's own kill points, after three representative bind kills (only the
        // ledger written, half way, everything done) to keep the test under a minute.
        let rp = if [1, points.len() / 2, points.len()].contains(&k) {
            trace(&r).len()
        } else {
            0
        };
        for j in 1..=rp {
            let t = copy("bind-bridge-pair");
            let o = vfioctl(
                t.path(),
                &["bind", "--persist", P1],
                &[SIM, ("VFIOCTL_FAULT_KILL_AFTER", &kill)],
            );
            assert_eq!(o.status.signal(), Some(9), "{ctx}: {}", text(&o));
            let kj = format!("#{j}");
            let r = vfioctl(
                t.path(),
                &["restore", "--all"],
                &[SIM, ("VFIOCTL_FAULT_KILL_AFTER", &kj)],
            );
            assert_eq!(
                r.status.signal(),
                Some(9),
                "{ctx}, restore #{j}: {}",
                text(&r)
            );
            let r = vfioctl(t.path(), &["restore", "--all"], &[SIM]);
            assert!(r.status.success(), "{ctx}, restore #{j}: {}", text(&r));
            assert_clean(t.path(), &format!("{ctx}, restore killed at #{j}"));
            restore_points += 1;
        }
    }
    println!(
        "kill points: bind {} (all passed), restore after each {restore_points}",
        points.len()
    );
}

/// The second device's vfio probe fails: the rollback of the first runs, and is killed
/// at each of its own points.
#[test]
fn kill_at_every_step_of_the_rollback() {
    let refuse = ("VFIOCTL_SIM_REFUSE", P2);
    let t = copy("bind-bridge-pair");
    let o = vfioctl(
        t.path(),
        &["bind", "--persist", P1],
        &[SIM, refuse, ("VFIOCTL_FAULT_TRACE", "1")],
    );
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("rolled back"),
        "{}",
        text(&o)
    );
    assert_clean(t.path(), "rollback");
    let points = trace(&o);
    assert!(
        points.iter().any(|p| p.starts_with("rollback-")),
        "{points:?}"
    );
    for k in 1..=points.len() {
        let t = copy("bind-bridge-pair");
        let kill = format!("#{k}");
        let o = vfioctl(
            t.path(),
            &["bind", "--persist", P1],
            &[SIM, refuse, ("VFIOCTL_FAULT_KILL_AFTER", &kill)],
        );
        let ctx = format!("kill after {} (#{k})", points[k - 1]);
        assert_eq!(o.status.signal(), Some(9), "{ctx}: {}", text(&o));
        let r = vfioctl(t.path(), &["restore", "--all"], &[SIM]);
        assert!(r.status.success(), "{ctx}: restore: {}", text(&r));
        assert_clean(t.path(), &ctx);
    }
    println!(
        "kill points: bind with rollback {} (all passed)",
        points.len()
    );
}

/// Issue 13 item 2: `bind --timeout 1` with an unbind that blocks 4 s. The helper child
/// is killed and reaped before the rollback reads the device, so the write never lands
/// after vfioctl reported; the device keeps its driver.
#[test]
fn a_timed_out_unbind_never_lands_after_the_rollback() {
    let t = copy("bind-gpu-held");
    let unbind = t.path().join("sys/bus/pci/drivers/nvidia/unbind");
    fs::remove_file(&unbind).unwrap();
    nix::unistd::mkfifo(&unbind, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let gpu = "0000:01:00.0";
    let dir = dev(t.path(), gpu).sysfs_path;
    let link = t.path().join(dir.strip_prefix("/").unwrap()).join("driver");
    // The "kernel": 4 s after the start, take whatever write is pending and apply it.
    let fifo = unbind.clone();
    let kernel = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(4));
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut got = String::new();
        let _ = f.read_to_string(&mut got);
        if !got.is_empty() {
            let _ = fs::remove_file(&link);
        }
        got
    });
    let started = Instant::now();
    let o = vfioctl(t.path(), &["bind", "--force", "--timeout", "1", gpu], &[]);
    let landed = kernel.join().unwrap();
    assert_eq!(o.status.code(), Some(7), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("did not finish within 1 s"),
        "{}",
        text(&o)
    );
    assert_eq!(landed, "", "the unbind landed after vfioctl reported");
    let d = dev(t.path(), gpu);
    assert_eq!(d.driver.as_deref(), Some("nvidia"));
    assert_eq!(d.driver_override, None);
    assert!(ledger(t.path()).is_empty());
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn an_empty_or_odd_driver_and_a_zero_timeout_are_usage_errors_before_any_write() {
    let t = copy("bind-bridge-pair");
    let before = fs::read(
        t.path()
            .join("sys/bus/pci/devices")
            .join(P1)
            .join("driver_override"),
    )
    .unwrap();
    for (args, want) in [
        (vec!["bind", "--driver", "", P1], "--driver \"\": empty"),
        (
            vec!["bind", "--driver", "../../../etc", P1],
            "only letters, digits",
        ),
        (vec!["bind", "--timeout", "0", P1], "--timeout 0"),
        (
            vec!["bind", "--timeout", "99999999", P1],
            "longer than a day",
        ),
    ] {
        let o = vfioctl(t.path(), &args, &[SIM]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", text(&o));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains(want),
            "{args:?}: {}",
            text(&o)
        );
    }
    assert_eq!(
        fs::read(
            t.path()
                .join("sys/bus/pci/devices")
                .join(P1)
                .join("driver_override")
        )
        .unwrap(),
        before
    );
    assert!(!t.path().join("var/lib/vfioctl/ledger.json").exists());
}

/// The loser of two concurrent binds: it planned while the winner held the ledger lock
/// and finished; it must say so, not "unfinished ledger entry".
#[test]
fn the_loser_of_a_concurrent_bind_says_another_run_bound_it() {
    let t = copy("bind-bridge-pair");
    let root = SysRoot::new(t.path());
    // The winner holds the lock ...
    let held = bind::Ledger::open(&root).unwrap();
    let loser = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--root")
        .arg(t.path())
        .args(["bind", P1])
        .env(SIM.0, SIM.1)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // ... until the loser waits on it (its ledger.lock is open).
    let fd_dir = PathBuf::from(format!("/proc/{}/fd", loser.id()));
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let waiting = fs::read_dir(&fd_dir)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| {
                fs::read_link(e.path()).is_ok_and(|l| l.ends_with("var/lib/vfioctl/ledger.lock"))
            });
        if waiting {
            break;
        }
        assert!(Instant::now() < until, "the loser never reached the lock");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The winner finishes its bind while holding the lock: P1 on vfio-pci, recorded.
    let mut held = held;
    let d1 = dev(t.path(), P1);
    held.record(
        P1.parse().unwrap(),
        bind::Entry {
            original_driver: Some("e1000".into()),
            original_override: None,
            target_driver: "vfio-pci".into(),
            iommu_group: d1.iommu_group,
            module_loaded_by_vfioctl: false,
            sriov_numvfs: None,
            state: bind::BindState::OnVfio,
            persisted: false,
            since: 0,
            plan: "winner".into(),
        },
    );
    held.save().unwrap();
    let dir = t.path().join(d1.sysfs_path.strip_prefix("/").unwrap());
    fs::write(dir.join("driver_override"), "vfio-pci\n").unwrap();
    fs::remove_file(dir.join("driver")).unwrap();
    std::os::unix::fs::symlink(
        "../../../../../bus/pci/drivers/vfio-pci",
        dir.join("driver"),
    )
    .unwrap();
    drop(held);
    let o = loser.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(6), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bound to vfio-pci by another vfioctl run (plan winner)")
            && !err.contains("unfinished"),
        "{err}"
    );
    assert_eq!(dev(t.path(), P1).driver.as_deref(), Some("vfio-pci"));
}

/// A ledger entry whose device was hot-removed is cleared by `restore`, not kept forever.
#[test]
fn a_hot_removed_device_leaves_no_entry_behind() {
    let t = copy("bind-bridge-pair");
    let o = vfioctl(t.path(), &["bind", "--persist", P1], &[SIM]);
    assert!(o.status.success(), "{}", text(&o));
    // Hot removal of the second function: its sysfs directory and bus link go away.
    let d2 = dev(t.path(), P2).sysfs_path;
    fs::remove_dir_all(t.path().join(d2.strip_prefix("/").unwrap())).unwrap();
    fs::remove_file(t.path().join("sys/bus/pci/devices").join(P2)).unwrap();
    let r = vfioctl(t.path(), &["restore", "--all"], &[SIM]);
    assert!(r.status.success(), "{}", text(&r));
    assert!(
        String::from_utf8_lossy(&r.stdout).contains(&format!("{P2}: no longer on the bus")),
        "{}",
        text(&r)
    );
    assert!(ledger(t.path()).is_empty());
    assert!(persist_files(t.path()).is_empty());
    assert_eq!(dev(t.path(), P1).driver.as_deref(), Some("e1000"));
}

/// The dry run lists exactly the steps the bind runs (issue 12).
#[test]
fn the_dry_run_is_the_step_list_execute_runs() {
    let t = copy("bind-bridge-pair");
    let o = vfioctl(
        t.path(),
        &["--json", "bind", "--dry-run", "--persist", P1],
        &[SIM],
    );
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let dry: Vec<String> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap().to_string())
        .collect();
    let o = vfioctl(
        t.path(),
        &["bind", "--persist", P1],
        &[SIM, ("VFIOCTL_FAULT_TRACE", "1")],
    );
    assert!(o.status.success(), "{}", text(&o));
    let ran: Vec<String> = trace(&o)
        .iter()
        .map(|p| p.split('@').next().unwrap().to_string())
        .collect();
    let names: Vec<String> = dry
        .iter()
        .map(|s| match s.as_str() {
            "record-ledger" => "ledger".to_string(),
            "bind-direct" => "bind".to_string(),
            "load-module" => "modprobe".to_string(),
            other => other.to_string(),
        })
        .collect();
    assert_eq!(names, ran);
}
