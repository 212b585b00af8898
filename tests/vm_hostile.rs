//! Hostile input for the VM commands, without booting anything: names that are paths,
//! run directories vfioctl did not make, a `vm up` that died, fake QEMU processes and fake
//! QMP servers. Each case asserts the exit code, a clear message, and that nothing outside
//! the sandbox (or inside it, where vfioctl has no business) changed.
//! The reproducers of issue 13 (items 1, 10, 11, 12, 14) are named where they appear.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfioctl::vm::rundir::RunDir;
use vfioctl::vm::state::{Starter, VmRecord, VmState};
use vfioctl::vm::VmName;

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn vfioctl(base: &Path, args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .args(args)
        .env("VFIOCTL_RUN_DIR", base)
        .output()
        .unwrap();
    Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Every path under `dir` with its type and content: the "nothing changed" witness.
fn tree(dir: &Path) -> BTreeMap<PathBuf, String> {
    let mut m = BTreeMap::new();
    fn walk(d: &Path, m: &mut BTreeMap<PathBuf, String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let v = if meta.file_type().is_symlink() {
                format!("link {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                walk(&p, m);
                "dir".into()
            } else {
                format!(
                    "file {}",
                    String::from_utf8_lossy(&std::fs::read(&p).unwrap())
                )
            };
            m.insert(p, v);
        }
    }
    walk(dir, &mut m);
    m
}

/// A sandbox: a run base with a VM-looking directory that is not ours, and victims.
struct Sandbox {
    _t: tempfile::TempDir,
    root: PathBuf,
    base: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let t = tempfile::Builder::new()
            .prefix("vfh")
            .tempdir_in("/tmp")
            .unwrap();
        let root = t.path().to_path_buf();
        let base = root.join("base");
        for d in ["victims/a", "victims/b/deep", "base/foreign"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("victims/a/keep"), "precious").unwrap();
        std::fs::write(root.join("victims/b/deep/keep"), "precious").unwrap();
        // Looks like a run dir (a state file), but vfioctl never made it: no marker.
        std::fs::write(root.join("base/foreign/state.json"), "{}").unwrap();
        std::os::unix::fs::symlink(root.join("victims/a"), base.join("link")).unwrap();
        Sandbox { _t: t, root, base }
    }
}

#[test]
fn names_that_are_paths_are_refused_by_every_command() {
    // Reproducer (issue 13, 1): `VFIOCTL_RUN_DIR=B vfioctl vm down ../victims/a` and
    // `vm down /abs/dir` deleted those trees; `vm down ''` deleted the run base; `vm down
    // /` took the same path. status/plug/unplug and validate --vm took names unchecked.
    let s = Sandbox::new();
    let kernel = s.root.join("vmlinuz");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let before = tree(&s.root);
    let abs = s.root.join("victims/b").display().to_string();
    let names = [
        "../victims/a",
        abs.as_str(),
        "",
        "/",
        "..",
        ".",
        "a/b",
        "x\u{1b}[2J",
    ];
    let mut inputs = 0;
    for name in names {
        let kernel = kernel.to_str().unwrap();
        for args in [
            vec!["vm", "down", name],
            vec!["vm", "status", name],
            vec!["vm", "plug", name, "--gpu", "emulated:1G"],
            vec!["vm", "unplug", name, "--id", "gpu0"],
            vec![
                "vm", "up", "--name", name, "--kernel", kernel, "--vsock", "none",
            ],
            vec!["validate", "--vm", name],
        ] {
            inputs += 1;
            let o = vfioctl(&s.base, &args);
            assert_eq!(o.code, 2, "{args:?}: {}{}", o.stdout, o.stderr);
            assert!(
                o.stderr.contains("invalid VM name"),
                "{args:?}: {}",
                o.stderr
            );
            assert!(!o.stderr.contains('\u{1b}'), "escaped: {:?}", o.stderr);
        }
    }
    assert_eq!(tree(&s.root), before, "nothing changed");
    eprintln!("hostile names: {inputs} inputs, 0 writes outside, 0 panics");
}

#[test]
fn run_dirs_vfioctl_did_not_make_are_never_removed() {
    let s = Sandbox::new();
    let before = tree(&s.root);
    for (name, why) in [
        ("foreign", "no .vfioctl-run-dir marker"),
        ("link", "symbolic link"),
    ] {
        let o = vfioctl(&s.base, &["vm", "down", name]);
        assert_eq!(o.code, 6, "{name}: {}{}", o.stdout, o.stderr);
        assert!(
            o.stderr.contains("refusing to touch") && o.stderr.contains(why),
            "{name}: {}",
            o.stderr
        );
        assert!(o.stderr.contains("hint:"), "{}", o.stderr);
        let o = vfioctl(&s.base, &["vm", "status", name]);
        assert_eq!(o.code, 6, "{name}: {}", o.stderr);
    }
    // A marker written for another name does not make a directory ours either.
    let forged = s.base.join("forged");
    std::fs::create_dir(&forged).unwrap();
    std::fs::write(
        forged.join(".vfioctl-run-dir"),
        "vfioctl run directory of VM other\n",
    )
    .unwrap();
    assert_eq!(vfioctl(&s.base, &["vm", "down", "forged"]).code, 6);
    assert!(forged.exists());
    std::fs::remove_dir_all(&forged).unwrap();
    assert_eq!(tree(&s.root), before);
    // `vm list` shows none of them.
    let o = vfioctl(&s.base, &["--json", "vm", "list"]);
    assert_eq!((o.code, o.stdout.trim()), (0, "[]"));
}

/// A stand-in QEMU: a process whose command line carries `vfioctl-NAME,` (what liveness
/// looks for), in a process group of its own; killed on drop.
struct FakeQemu(Child);

impl FakeQemu {
    fn start(name: &str) -> FakeQemu {
        let c = Command::new("sh")
            .args([
                "-c",
                "sleep 120; :",
                &format!("vfioctl-{name},debug-threads=on"),
            ])
            .process_group(0)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        FakeQemu(c)
    }
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for FakeQemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A run directory as `vm up` leaves it, for a fake QEMU.
fn fake_vm(base: &Path, name: &str, state: VmState, qemu: Option<&FakeQemu>) -> VmRecord {
    let rd = RunDir::new(base, VmName::new(name).unwrap());
    rd.create().unwrap();
    rd.write_token().unwrap();
    let mut r = VmRecord::new(&rd);
    r.state = state;
    r.pid = qemu.map(FakeQemu::pid);
    r.pgid = qemu.map(|q| q.pid() as i32);
    r.save().unwrap();
    r
}

fn json(o: &Out) -> serde_json::Value {
    serde_json::from_str(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}{}", o.stdout, o.stderr))
}

#[test]
fn a_vm_whose_vm_up_died_is_orphaned_and_vm_down_cleans_it() {
    // Reproducer (issue 13, 10): kill -9 of `vm up` left `vm status` saying `booting`
    // while the guest ran.
    let s = Sandbox::new();
    let qemu = FakeQemu::start("orph");
    let mut r = fake_vm(&s.base, "orph", VmState::Booting, Some(&qemu));
    // The starter: a process that has exited (its pid and start time no longer match).
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap();
    r.starter = Some(Starter {
        pid,
        start_ticks: 1,
    });
    r.save().unwrap();

    let o = vfioctl(&s.base, &["--json", "vm", "status", "orph"]);
    assert_eq!(o.code, 8, "{}", o.stderr);
    let v = json(&o);
    assert_eq!(v["state"], "orphaned");
    let o = vfioctl(&s.base, &["vm", "list"]);
    assert!(o.stdout.contains("orphaned"), "{}", o.stdout);

    let o = vfioctl(&s.base, &["--json", "vm", "down", "orph"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v = json(&o);
    assert_eq!(v["was"], "orphaned");
    let steps = v["steps"].to_string();
    // Reproducer (issue 14): `vm down` said only "...: QMP". The OS error is named.
    assert!(
        steps.contains("QMP unreachable") && steps.contains("No such file or directory"),
        "{steps}"
    );
    assert!(!s.base.join("orph").exists());
    // The fake QEMU was killed and reaped by vm down (its group got SIGTERM).
    let mut q = qemu;
    let t = Instant::now();
    while q.0.try_wait().unwrap().is_none() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "fake QEMU still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A fake QMP server on `path`: `greet` false accepts and says nothing (a frozen QEMU's
/// listen backlog); true greets and answers query-status with `running`.
fn fake_qmp(path: &Path, greet: bool) {
    let l = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            std::thread::spawn(move || {
                if !greet {
                    std::thread::sleep(Duration::from_secs(60));
                    return;
                }
                let _ = c.write_all(b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, \"package\": \"\"}, \"capabilities\": []}}\n");
                let rd = BufReader::new(c.try_clone().unwrap());
                for line in rd.lines() {
                    let Ok(line) = line else { return };
                    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                    let id = v["id"].clone();
                    let ret = match v["execute"].as_str() {
                        Some("query-status") => {
                            serde_json::json!({"status": "running", "singlestep": false, "running": true})
                        }
                        _ => serde_json::json!({}),
                    };
                    let _ = c.write_all(
                        format!("{}\n", serde_json::json!({"return": ret, "id": id})).as_bytes(),
                    );
                }
            });
        }
    });
}

#[test]
fn vm_status_asks_qmp_and_does_not_call_a_frozen_or_deaf_vm_ready() {
    // Reproducer (issue 13, 12): `vm status` reported `ready` for a frozen VM or a dead
    // QMP socket.
    let s = Sandbox::new();
    let qemu = FakeQemu::start("st");
    let r = fake_vm(&s.base, "st", VmState::Ready, Some(&qemu));
    // No socket at all: dead.
    let o = vfioctl(&s.base, &["--json", "vm", "status", "st"]);
    assert_eq!(o.code, 8, "{}", o.stderr);
    let v = json(&o);
    assert_eq!(
        (v["state"].as_str(), v["health"]["kind"].as_str()),
        (Some("ready"), Some("qmp-dead"))
    );
    // A socket that accepts and never greets: silent, reported within seconds.
    fake_qmp(&r.qmp_socket, false);
    let t = Instant::now();
    let o = vfioctl(&s.base, &["--json", "vm", "status", "st"]);
    assert_eq!(o.code, 8, "{}", o.stderr);
    assert_eq!(json(&o)["health"]["kind"], "qmp-silent");
    assert!(t.elapsed() < Duration::from_secs(20));
    // Human output says so too.
    let o = vfioctl(&s.base, &["vm", "status", "st"]);
    assert!(o.stdout.contains("QMP does not answer"), "{}", o.stdout);
    // A QMP that answers: healthy.
    std::fs::remove_file(&r.qmp_socket).unwrap();
    fake_qmp(&r.qmp_socket, true);
    let o = vfioctl(&s.base, &["--json", "vm", "status", "st"]);
    assert_eq!(o.code, 0, "{}{}", o.stdout, o.stderr);
    let v = json(&o);
    assert_eq!(v["health"]["kind"], "answering");
    assert_eq!(v["run_status"], "running");
    // The same QEMU stopped (SIGSTOP): frozen, whatever its socket does.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu.pid() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let o = vfioctl(&s.base, &["--json", "vm", "status", "st"]);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(qemu.pid() as i32),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert_eq!(o.code, 8);
    assert_eq!(json(&o)["health"]["kind"], "frozen");
    // vm down: QMP answers, quit has no effect on the fake, so it is killed.
    let o = vfioctl(&s.base, &["--json", "vm", "down", "st", "--timeout", "0"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!r.run_dir.exists());
}

#[test]
fn one_command_per_name_at_a_time() {
    // Reproducer (issue 13, 11): two `vm up --name X` at once raced. The loser now fails
    // at once, naming the holder; other names are not affected.
    let s = Sandbox::new();
    let kernel = s.root.join("vmlinuz");
    std::fs::write(&kernel, "not a kernel").unwrap();
    let rd = RunDir::new(&s.base, VmName::new("busy").unwrap());
    let held = rd.lock("vm up (test)").unwrap();
    let t = Instant::now();
    let o = vfioctl(
        &s.base,
        &[
            "vm",
            "up",
            "--name",
            "busy",
            "--kernel",
            kernel.to_str().unwrap(),
            "--vsock",
            "none",
            "--ready",
            "serial:x",
        ],
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    assert_eq!(o.code, 6, "{}", o.stderr);
    assert!(
        o.stderr.contains("busy")
            && o.stderr
                .contains(&format!("pid {}: vm up (test)", std::process::id())),
        "{}",
        o.stderr
    );
    assert!(!rd.path().exists(), "the loser made nothing");
    // down/plug/unplug of an existing VM wait for nobody either.
    let _r = fake_vm(&s.base, "busy", VmState::Failed, None);
    for args in [
        vec!["vm", "down", "busy"],
        vec!["vm", "plug", "busy", "--gpu", "emulated:1G"],
        vec!["vm", "unplug", "busy", "--id", "gpu0"],
    ] {
        let o = vfioctl(&s.base, &args);
        assert_eq!(o.code, 6, "{args:?}: {}", o.stderr);
        assert!(o.stderr.contains("busy"), "{}", o.stderr);
    }
    assert!(rd.path().exists());
    drop(held);
    let o = vfioctl(&s.base, &["vm", "down", "busy"]);
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(!rd.path().exists());
}
