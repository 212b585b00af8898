//! The command line against real QEMU (TCG, the busybox initramfs): Ctrl-C and SIGTERM
//! during `vm up`, `vm up` killed with SIGKILL, and two `vm up` of one name at once.
//! Reproducers of issue 13, items 10 and 11. Skips loudly without the lab (fails under
//! `VFIOCTL_REQUIRE_LAB=1`).

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use vfioctl::vm::state::VmRecord;
use vfioctl::vm::{rundir::RunDir, VmName};

fn cli(base: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    c.env("VFIOCTL_RUN_DIR", base)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// `vm up` of the busybox guest; `ready` is the serial marker it waits for.
fn up(lab: &common::Lab, base: &Path, name: &str, ready: &str) -> Child {
    cli(base)
        .args(["vm", "up", "--name", name, "--kernel"])
        .arg(&lab.kernel)
        .arg("--initrd")
        .arg(&lab.initrd)
        .args([
            "--ready",
            &format!("serial:{ready}"),
            "--boot-timeout",
            "300",
        ])
        // The lab is TCG (LAB.md fact 7).
        .args(["--accel", "tcg"])
        .spawn()
        .unwrap()
}

fn record(base: &Path, name: &str) -> Option<VmRecord> {
    VmRecord::load(&RunDir::new(base, VmName::new(name).unwrap())).ok()
}

/// Wait until QEMU of `name` has been started (its pid is in the state file).
fn wait_for_qemu(base: &Path, name: &str, child: &mut Child) -> VmRecord {
    let t = Instant::now();
    loop {
        if let Some(r) = record(base, name) {
            if r.pid.is_some() {
                return r;
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!("vm up ended early: {st}: {:?}", child_output(child));
        }
        assert!(t.elapsed() < Duration::from_secs(120), "QEMU never started");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn child_output(c: &mut Child) -> String {
    use std::io::Read;
    let mut s = String::new();
    if let Some(e) = c.stderr.as_mut() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

fn wait_exit(c: &mut Child, limit: Duration) -> i32 {
    let t = Instant::now();
    loop {
        if let Some(st) = c.try_wait().unwrap() {
            return st.code().unwrap_or(-1);
        }
        assert!(t.elapsed() < limit, "still running after {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every process of the VM is gone (killing leftovers so the test leaves none behind).
fn assert_gone(rec: &VmRecord) {
    let procs = vfioctl::vm::lifecycle::processes(rec);
    assert!(!procs.is_empty());
    let left: Vec<_> = procs
        .iter()
        .filter(|(p, m)| vfioctl::vm::process::alive(*p, m))
        .collect();
    for (p, _) in &left {
        let _ = kill(Pid::from_raw(*p as i32), Signal::SIGKILL);
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn sigint_and_sigterm_during_vm_up_tear_down_what_it_started() {
    let lab = vfioctl_testkit::require!(common::Lab::get());
    let base = tempfile::Builder::new()
        .prefix("vfs")
        .tempdir_in("/tmp")
        .unwrap();
    for (sig, code, name) in [(Signal::SIGINT, 130, "int"), (Signal::SIGTERM, 143, "term")] {
        let mut c = up(&lab, base.path(), name, "NEVER-PRINTED");
        let rec = wait_for_qemu(base.path(), name, &mut c);
        kill(Pid::from_raw(c.id() as i32), sig).unwrap();
        let got = wait_exit(&mut c, Duration::from_secs(60));
        let err = child_output(&mut c);
        assert_eq!(got, code, "{sig}: {err}");
        assert!(err.contains(&format!("stopped by {sig}")), "{err}");
        let rec2 = record(base.path(), name).expect("state kept for the logs");
        assert_eq!(rec2.state.to_string(), "failed");
        assert_gone(&rec);
        // vm down removes what is left.
        let o = cli(base.path())
            .args(["vm", "down", name])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0));
        assert!(!rec.run_dir.exists());
    }
}

#[test]
fn a_killed_vm_up_leaves_an_orphan_that_status_shows_and_down_cleans() {
    let lab = vfioctl_testkit::require!(common::Lab::get());
    let base = tempfile::Builder::new()
        .prefix("vfk")
        .tempdir_in("/tmp")
        .unwrap();
    let mut c = up(&lab, base.path(), "orph", "NEVER-PRINTED");
    let rec = wait_for_qemu(base.path(), "orph", &mut c);
    kill(Pid::from_raw(c.id() as i32), Signal::SIGKILL).unwrap();
    let _ = c.wait();
    let o = cli(base.path())
        .args(["--json", "vm", "status", "orph"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["state"], "orphaned", "{v:#}");
    assert_eq!(o.status.code(), Some(8));
    let o = cli(base.path())
        .args(["vm", "down", "orph"])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_gone(&rec);
    assert!(!rec.run_dir.exists());
}

#[test]
fn two_vm_up_of_one_name_at_once_one_wins_the_other_fails_at_once() {
    let lab = vfioctl_testkit::require!(common::Lab::get());
    let base = tempfile::Builder::new()
        .prefix("vfr")
        .tempdir_in("/tmp")
        .unwrap();
    let mut a = up(&lab, base.path(), "race", common::READY_MARKER);
    let mut b = up(&lab, base.path(), "race", common::READY_MARKER);
    let t = Instant::now();
    // The loser finishes first and fast, whichever it is.
    let (loser, winner) = loop {
        if a.try_wait().unwrap().is_some() {
            break (&mut a, &mut b);
        }
        if b.try_wait().unwrap().is_some() {
            break (&mut b, &mut a);
        }
        assert!(t.elapsed() < Duration::from_secs(60), "neither finished");
        std::thread::sleep(Duration::from_millis(20));
    };
    let lost = wait_exit(loser, Duration::from_secs(1));
    let err = child_output(loser);
    assert_eq!(lost, 6, "{err}");
    assert!(err.contains("is busy") && err.contains("vm up"), "{err}");
    let won = wait_exit(winner, Duration::from_secs(300));
    assert_eq!(won, 0, "{}", child_output(winner));
    let rec = record(base.path(), "race").unwrap();
    assert_eq!(rec.state.to_string(), "ready");
    // Issue 13, 13: the run directory 0700, every file and socket in it 0600.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&rec.run_dir), 0o700);
        for e in std::fs::read_dir(&rec.run_dir).unwrap().flatten() {
            assert_eq!(mode(&e.path()), 0o600, "{}", e.path().display());
        }
    }
    let o = cli(base.path())
        .args(["vm", "down", "race"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_gone(&rec);
}
