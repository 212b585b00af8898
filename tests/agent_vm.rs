//! The agent as PID 1 of a real guest: Debian's lab kernel under QEMU (TCG here, KVM
//! where it works), the initramfs from `vfioctl rootfs build`, vsock through
//! vhost-device-vsock and the hybrid `CONNECT`/`OK` protocol (LAB.md fact 5).
//!
//! The launcher below is test scaffolding until `vfioctl vm up` lands in the library; the
//! readiness signal is the agent's own `hello`, never a sleep.

mod agent_support;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{lab_kernel, static_agent, which, workspace};
use vfioctl::agent::{AgentClient, Transport};
use vfioctl::rootfs::{build, BuildOptions};
use vfioctl_common::proto::{self, ErrorKind, Outcome, PowerAction};

struct Vm {
    dir: tempfile::TempDir,
    backend: Child,
    qemu: Child,
    serial: PathBuf,
    uds: PathBuf,
    ok: bool,
}

fn spawn_group(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null()).process_group(0).spawn().unwrap()
}

impl Vm {
    fn boot(initrd: &Path, kernel: &Path, extra: &[&str]) -> Vm {
        let dir = tempfile::tempdir().unwrap();
        let vhu = dir.path().join("vhu.sock");
        let uds = dir.path().join("vsock.uds");
        let serial = dir.path().join("serial.log");
        let backend = spawn_group(
            Command::new(which("vhost-device-vsock").unwrap())
                .arg("--guest-cid")
                .arg("3")
                .arg("--socket")
                .arg(&vhu)
                .arg("--uds-path")
                .arg(&uds)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.path().join("vhost.log")).unwrap()),
        );
        // The backend creates its socket before QEMU may connect to it.
        let t0 = Instant::now();
        while !vhu.exists() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "vhost-device-vsock did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args([
            "-machine",
            "q35,memory-backend=mem",
            "-accel",
            "tcg",
            "-m",
            "512",
        ])
        .args(["-object", "memory-backend-memfd,id=mem,size=512M,share=on"])
        .args(["-nodefaults", "-display", "none", "-no-reboot"])
        .arg("-serial")
        .arg(format!("file:{}", serial.display()))
        .arg("-kernel")
        .arg(kernel.join("vmlinuz"))
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", "console=ttyS0 panic=-1"])
        .arg("-chardev")
        .arg(format!("socket,id=vsk,path={}", vhu.display()))
        .args(["-device", "vhost-user-vsock-pci,chardev=vsk"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("qemu.stderr")).unwrap());
        let qemu = spawn_group(&mut cmd);
        Vm {
            dir,
            backend,
            qemu,
            serial,
            uds,
            ok: false,
        }
    }

    fn transport(&self) -> Transport {
        Transport::Hybrid {
            uds_path: self.uds.clone(),
            port: proto::DEFAULT_PORT,
        }
    }

    /// Wait for QEMU to exit (after a guest power-off).
    fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.qemu.try_wait().unwrap() {
                return Some(s);
            }
            if t0.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        for c in [&mut self.qemu, &mut self.backend] {
            // Each child leads its own process group: kill the group, then reap.
            // SAFETY: kill(2) on a process group this test created.
            unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            let _ = c.wait();
        }
        if !self.ok {
            let keep =
                std::env::temp_dir().join(format!("vfioctl-agent-vm-{}", std::process::id()));
            let _ = std::fs::create_dir_all(&keep);
            for f in ["serial.log", "qemu.stderr", "vhost.log"] {
                let _ = std::fs::copy(self.dir.path().join(f), keep.join(f));
            }
            eprintln!("guest logs kept in {}", keep.display());
            if let Ok(s) = std::fs::read_to_string(&self.serial) {
                let tail: Vec<&str> = s.lines().rev().take(30).collect();
                eprintln!(
                    "serial tail:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
        }
    }
}

fn prerequisites() -> Result<PathBuf, String> {
    let k = lab_kernel().ok_or("no lab kernel (run scripts/setup)")?;
    which("qemu-system-x86_64").ok_or("qemu-system-x86_64 missing")?;
    which("vhost-device-vsock").ok_or("vhost-device-vsock missing (scripts/setup)")?;
    Ok(k)
}

fn initramfs(dir: &Path, kernel: &Path) -> PathBuf {
    let out = dir.join("lab.cpio.gz");
    build(&BuildOptions {
        manifest: workspace().join("rootfs/lab.toml"),
        kernel_modules: Some(kernel.into()),
        out: out.clone(),
        agent: Some(static_agent()),
        exec: Some(true),
        ..Default::default()
    })
    .unwrap();
    out
}

fn validate(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .arg("--json")
        .arg("validate")
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "validate printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

fn verdict(v: &serde_json::Value, name: &str) -> String {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .map(|c| c["verdict"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// One boot covers the agent as init, the protocol over real vsock, garbage, exec,
/// `validate` against a cold-plugged 8 GiB stand-in, and power-off.
#[test]
fn agent_as_init_in_a_tcg_guest() {
    let kernel = match prerequisites() {
        Ok(k) => k,
        Err(why) => skip!("{why}"),
    };
    let work = tempfile::tempdir().unwrap();
    let initrd = initramfs(work.path(), &kernel);
    // The 8 GiB stand-in (ivshmem-plain) on a root port with a 16 GiB prefetchable
    // reserve, cold-plugged.
    let mut vm = Vm::boot(
        &initrd,
        &kernel,
        &[
            "-device",
            "pcie-root-port,id=rp0,bus=pcie.0,chassis=1,slot=1,pref64-reserve=16G,io-reserve=0",
            "-object",
            "memory-backend-memfd,id=bar,size=8G,share=on",
            "-device",
            "ivshmem-plain,memdev=bar,bus=rp0,addr=0x0",
        ],
    );
    let tr = vm.transport();
    let mut c = AgentClient::connect(&tr, Duration::from_secs(240)).expect("agent answers");

    let h = c.hello().unwrap();
    assert!(h.pid1, "the agent is the guest's init");
    assert!(h.exec_enabled);
    let kver = std::fs::read_link(agent_support::lab().join("kernel/current")).unwrap();
    assert_eq!(h.kernel, kver.to_string_lossy());
    assert!(
        h.modules.iter().all(|m| m.result == "loaded"),
        "{:?}",
        h.modules
    );

    // Devices as the guest sees them: the vsock device bound to virtio-pci, the stand-in
    // with its 8 GiB BAR above 4 GiB.
    let d = c.list_devices().unwrap();
    assert!(d.devices.iter().any(|x| x.vendor == 0x1af4
        && x.device == 0x1053
        && x.driver.as_deref() == Some("virtio-pci")));
    let w = c
        .wait_device(&"1af4:1110".parse().unwrap(), Duration::from_secs(30), true)
        .unwrap();
    assert!(w.ready);
    let bar2 = w
        .device
        .as_ref()
        .unwrap()
        .bars
        .iter()
        .find(|b| b.index == 2)
        .unwrap()
        .clone();
    assert_eq!(bar2.size, Some(8 << 30));
    assert!(bar2.above_4g);

    // Garbage on a fresh vsock connection: an error reply, the agent goes on.
    let mut raw = tr.open(Duration::from_secs(30)).unwrap();
    raw.set_timeout(Some(Duration::from_secs(30))).unwrap();
    raw.write_all(b"\x00\x01garbage that is not a frame\n")
        .unwrap();
    let reply = proto::read_frame(&mut raw, proto::MAX_REPLY).unwrap();
    match proto::decode_response(&reply).unwrap().result {
        Outcome::Err(e) => assert_eq!(e.kind, ErrorKind::BadFrame),
        other => panic!("{other:?}"),
    }
    let mut rest = Vec::new();
    let _ = raw.read_to_end(&mut rest);
    assert!(c.hello().is_ok());
    let mut c2 = AgentClient::connect(&tr, Duration::from_secs(30)).unwrap();
    assert!(c2.list_devices().is_ok());

    // Exec (enabled for this image) and the kernel log with its classified lines.
    let r = c
        .exec(
            &["/usr/bin/vfioctl-agent", "--version"],
            Duration::from_secs(30),
            4096,
        )
        .unwrap();
    assert!(
        r.success() && r.stdout.starts_with("vfioctl-agent"),
        "{r:?}"
    );
    let k = c.kernel_log(None, None).unwrap();
    assert!(k
        .records
        .iter()
        .any(|r| r.text.contains("Run /init as init process")));

    // validate: passes on the stand-in; a wrong expected size fails with exit 3.
    let addr = tr.to_string();
    let junit = work.path().join("junit.xml");
    let (code, v) = validate(&[
        "--agent",
        &addr,
        "--gpu",
        "emulated:8G",
        "--junit",
        junit.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{v:#}");
    for name in [
        "agent",
        "device-present",
        "bars-assigned",
        "bars-above-4g",
        "kernel-log",
    ] {
        assert_eq!(verdict(&v, name), "pass", "{name}: {v:#}");
    }
    assert!(std::fs::read_to_string(&junit)
        .unwrap()
        .contains("<testsuite"));
    let (code, v) = validate(&["--agent", &addr, "--gpu", "emulated:16G"]);
    assert_eq!(code, Some(3), "{v:#}");
    assert_eq!(verdict(&v, "bars-assigned"), "fail");

    // Power off: QEMU exits by itself.
    c.shutdown(PowerAction::Poweroff).unwrap();
    let status = vm
        .wait_exit(Duration::from_secs(120))
        .expect("QEMU exits after power-off");
    assert!(status.success(), "{status:?}");
    vm.ok = true;
}
