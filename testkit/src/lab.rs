//! The lab harness: what the tests that boot real guests under QEMU share.
//!
//! - [`Lab::get`] finds QEMU, a vsock backend, the lab kernel
//!   (`$VFIOCTL_LAB/kernel/current/vmlinuz`, fetched by scripts/setup) and builds a busybox
//!   initramfs; what is missing comes back as a [`Missing`] for
//!   [`require!`](crate::require) (a loud skip, or a failure under `VFIOCTL_REQUIRE_LAB=1`).
//! - [`Harness`] gives each test a private runtime base and owns cleanup: on drop every VM
//!   is taken down (process groups killed and reaped) and a test that leaves a process
//!   behind fails. On failure the serial logs and QEMU stderr are copied to
//!   `target/tmp/vm-logs/<test>/` and their tails printed.
//! - [`ProcessGroup`]: a child started in a process group of its own, killed (the whole
//!   group) and reaped on drop; [`boot`] runs a direct QEMU boot through it.
//! - [`initramfs`]: busybox initramfs images written through `vfioctl::rootfs::cpio` (no
//!   `cpio` command).
//! - The bind lab (docs/LAB.md fact 2), which `tests/bind_lab.rs` and
//!   `tests/snapshot_lab.rs` boot: [`bind_lab_topology`] and [`Lab::bind_lab_initramfs`].

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vfioctl::rootfs::cpio::{self, Entry, Kind};
use vfioctl::vm::lifecycle::{self, Env};
use vfioctl::vm::profile::{AccelChoice, Profile, Ready, VsockChoice};
use vfioctl::SysRoot;

use crate::build;
use crate::prereq::{self, Missing};

/// The line the busybox initramfs of [`Lab`] prints when it is up.
pub const READY_MARKER: &str = "VFIOCTL-READY";

/// Where a test's temporary outputs go (`target/tmp`, kept between runs).
pub fn target_tmp() -> PathBuf {
    prereq::repo().join("target/tmp")
}

/// The lab: the guest kernel and a busybox initramfs.
pub struct Lab {
    /// `$VFIOCTL_LAB/kernel/current/vmlinuz`.
    pub kernel: PathBuf,
    /// The busybox initramfs (serial marker readiness; no agent).
    pub initrd: PathBuf,
}

impl Lab {
    /// The lab, or the prerequisite that is missing.
    pub fn get() -> Result<Lab, Missing> {
        prereq::qemu()?;
        prereq::vsock_backend()?;
        let kernel = prereq::lab_kernel()?.join("vmlinuz");
        prereq::busybox()?;
        let initrd =
            marker_initramfs().unwrap_or_else(|e| panic!("building the busybox initramfs: {e}"));
        Ok(Lab { kernel, initrd })
    }

    /// The lab initramfs of `rootfs/lab.toml`: the static vfioctl agent as /init plus the
    /// vsock modules, built by `vfioctl::rootfs` (the same code as `vfioctl rootfs build`).
    pub fn agent_initramfs(&self) -> PathBuf {
        static P: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
        let r = P.get_or_init(|| {
            let out = target_tmp().join("lab-agent-initramfs.cpio.gz");
            std::fs::create_dir_all(target_tmp()).map_err(|e| e.to_string())?;
            vfioctl::rootfs::build(&vfioctl::rootfs::BuildOptions {
                manifest: prereq::repo().join("rootfs/lab.toml"),
                kernel_modules: Some(prereq::lab_dir().join("kernel/current")),
                out: out.clone(),
                agent: Some(build::static_agent()),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
            Ok(out)
        });
        r.clone()
            .unwrap_or_else(|e| panic!("building the agent initramfs: {e}"))
    }

    /// The bind lab's initramfs, written into `dir`: `tests/lab/lab-bind.toml` (the agent as
    /// /init with exec on, busybox, e1000/e1000e and the vfio modules of the lab kernel),
    /// the static vfioctl as `/bin/vfioctl` and `script` as `/lab.sh`.
    pub fn bind_lab_initramfs(&self, dir: &Path, script: &Path) -> PathBuf {
        let stem = script
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "bind-lab".into());
        let out = dir.join(format!("{stem}.cpio.gz"));
        let opts = vfioctl::rootfs::build::BuildOptions {
            manifest: prereq::repo().join("tests/lab/lab-bind.toml"),
            kernel_modules: Some(self.kernel.parent().unwrap().to_path_buf()),
            out: out.clone(),
            agent: Some(build::static_agent()),
            extra: vec![
                (build::static_vfioctl(), "/bin/vfioctl".into()),
                (script.to_path_buf(), "/lab.sh".into()),
            ],
            ..Default::default()
        };
        vfioctl::rootfs::build::build(&opts).unwrap_or_else(|e| {
            panic!(
                "building the bind lab initramfs with {}: {e:?}",
                script.display()
            )
        });
        out
    }

    /// A profile booting the lab kernel with the agent initramfs; ready when the agent
    /// answers over vsock.
    pub fn agent_profile(&self, name: &str, initrd: PathBuf) -> Profile {
        Profile {
            name: name.into(),
            kernel: Some(self.kernel.clone()),
            initrd: Some(initrd),
            ready: Ready::Agent,
            vsock: VsockChoice::Auto,
            boot_timeout: 300,
            // The lab is TCG (LAB.md fact 7): the KVM probe's verdict is tested on its
            // own (tests/kvm_probe.rs); lab guests do not pay for it.
            accel: AccelChoice::Tcg,
            ..Profile::default()
        }
    }

    /// A profile booting the lab kernel with the busybox initramfs; readiness from the
    /// serial marker the initramfs prints.
    pub fn profile(&self, name: &str) -> Profile {
        Profile {
            name: name.into(),
            kernel: Some(self.kernel.clone()),
            initrd: Some(self.initrd.clone()),
            ready: Ready::Serial(READY_MARKER.into()),
            vsock: VsockChoice::Auto,
            boot_timeout: 300,
            // The lab is TCG (LAB.md fact 7): the KVM probe's verdict is tested on its
            // own (tests/kvm_probe.rs); lab guests do not pay for it.
            accel: AccelChoice::Tcg,
            ..Profile::default()
        }
    }
}

/// The busybox initramfs of [`Lab`]: `/init` mounts proc/sys/dev, prints
/// [`READY_MARKER`] and sleeps. Built once per target dir (atomically renamed into place).
fn marker_initramfs() -> io::Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = target_tmp().join("lab-busybox-initramfs.cpio.gz");
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(target_tmp())?;
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    initramfs(
        &tmp,
        &format!(
            "echo \"{READY_MARKER} $(cut -d' ' -f1 /proc/uptime)\"\nwhile :; do sleep 3600; done"
        ),
        &[],
    )?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

/// Write a busybox initramfs (gzip, newc cpio through `vfioctl::rootfs::cpio`) to `out`:
/// `/init` installs the busybox applets, mounts proc, sysfs and devtmpfs, then runs
/// `script`. `extra` copies host files or trees into it (`(from, to)` with `to` relative
/// to the image root), e.g. built modules. No root needed: `/dev/console` is an entry of
/// the archive.
pub fn initramfs(out: &Path, script: &str, extra: &[(PathBuf, String)]) -> io::Result<()> {
    let bb =
        prereq::busybox().map_err(|m| io::Error::new(io::ErrorKind::NotFound, m.to_string()))?;
    let mut entries = Vec::new();
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib"] {
        entries.push(Entry {
            path: d.into(),
            mode: 0o755,
            kind: Kind::Dir,
        });
    }
    entries.push(Entry {
        path: "dev/console".into(),
        mode: 0o600,
        kind: Kind::CharDev { major: 5, minor: 1 },
    });
    entries.push(Entry {
        path: "bin/busybox".into(),
        mode: 0o755,
        kind: Kind::File(std::fs::read(&bb)?),
    });
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         {script}\n"
    );
    entries.push(Entry {
        path: "init".into(),
        mode: 0o755,
        kind: Kind::File(init.into_bytes()),
    });
    for (from, to) in extra {
        add_tree(&mut entries, from, to.trim_matches('/'))?;
    }
    // Parent directories of everything added, once each.
    let mut dirs = std::collections::BTreeSet::new();
    for e in &entries {
        let mut p = Path::new(&e.path).parent();
        while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
            dirs.insert(d.to_string_lossy().into_owned());
            p = d.parent();
        }
    }
    for d in dirs {
        if !entries.iter().any(|e| e.path == d) {
            entries.push(Entry {
                path: d,
                mode: 0o755,
                kind: Kind::Dir,
            });
        }
    }
    let f = std::fs::File::create(out)?;
    let mut gz = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
    cpio::write(&mut gz, &entries, 0)?;
    gz.finish()?;
    Ok(())
}

/// `from` (a file, a symlink or a directory tree on the host) as entries at `to`.
fn add_tree(entries: &mut Vec<Entry>, from: &Path, to: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(from)?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() {
        let t = std::fs::read_link(from)?;
        entries.push(Entry {
            path: to.into(),
            mode,
            kind: Kind::Symlink(t.to_string_lossy().into_owned()),
        });
    } else if meta.is_dir() {
        entries.push(Entry {
            path: to.into(),
            mode,
            kind: Kind::Dir,
        });
        let mut children: Vec<_> = std::fs::read_dir(from)?.collect::<Result<_, _>>()?;
        children.sort_by_key(|e| e.file_name());
        for c in children {
            let name = c.file_name().to_string_lossy().into_owned();
            add_tree(entries, &c.path(), &format!("{to}/{name}"))?;
        }
    } else {
        entries.push(Entry {
            path: to.into(),
            mode,
            kind: Kind::File(std::fs::read(from)?),
        });
    }
    Ok(())
}

/// The bind lab's QEMU devices on top of the VM module's q35 machine (the same machine as
/// scripts/lab-bind): an emulated intel-iommu, an e1000e alone on root port brp0 (its own
/// IOMMU group), two e1000 behind a pcie-pci-bridge on brp1 (one group: a conventional bus
/// has no requester-id isolation), and an e1000e with a user-mode network on brp2 (the
/// default route of the route test).
pub fn bind_lab_topology() -> Vec<String> {
    [
        "-machine",
        "kernel-irqchip=split",
        "-device",
        "intel-iommu,intremap=on,caching-mode=on",
        "-device",
        "pcie-root-port,id=brp0,bus=pcie.0,chassis=21",
        "-device",
        "pcie-root-port,id=brp1,bus=pcie.0,chassis=22",
        "-device",
        "pcie-root-port,id=brp2,bus=pcie.0,chassis=23",
        "-device",
        "e1000e,bus=brp0,mac=52:54:00:00:01:00",
        "-device",
        "pcie-pci-bridge,id=bpb,bus=brp1",
        "-device",
        "e1000,bus=bpb,addr=0x1.0,mac=52:54:00:00:03:01",
        "-device",
        "e1000,bus=bpb,addr=0x2.0,mac=52:54:00:00:03:02",
        "-netdev",
        "user,id=bn0,restrict=on",
        "-device",
        "e1000e,bus=brp2,netdev=bn0,mac=52:54:00:00:04:00",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A child in a process group of its own: on drop the whole group is killed and the
/// child reaped, so nothing a test started outlives it.
pub struct ProcessGroup {
    /// The child (its pid is the group's id).
    pub child: Child,
}

impl ProcessGroup {
    /// Start `cmd` as the leader of a new process group.
    pub fn spawn(cmd: &mut Command) -> io::Result<ProcessGroup> {
        let child = cmd.process_group(0).spawn()?;
        Ok(ProcessGroup { child })
    }

    /// Kill every process of the group (SIGKILL) and reap the leader.
    pub fn kill(&mut self) {
        let pgid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one direct TCG boot printed.
pub struct Boot {
    /// The serial console, as text.
    pub serial: String,
    /// Wall time from start to exit (or to the timeout).
    pub seconds: f64,
    /// QEMU exited on its own (the guest powered off).
    pub exited: bool,
}

/// Boot `kernel` + `initrd` on q35 under TCG (a PCIe root port, virtio-rng), reading the
/// serial console until the guest powers off or `timeout` passes (then QEMU's process
/// group is killed). Readiness comes from the guest's output, never a sleep.
pub fn boot(kernel: &Path, initrd: &Path, append: &str, timeout: Duration) -> Result<Boot, String> {
    let qemu = prereq::qemu().map_err(|m| m.to_string())?;
    let start = Instant::now();
    let mut pg = ProcessGroup::spawn(
        Command::new(&qemu)
            .args([
                "-machine", "q35", "-accel", "tcg", "-cpu", "max", "-m", "512", "-smp", "1",
            ])
            .args([
                "-nographic",
                "-no-reboot",
                "-nodefaults",
                "-serial",
                "stdio",
            ])
            .arg("-kernel")
            .arg(kernel)
            .arg("-initrd")
            .arg(initrd)
            .arg("-append")
            .arg(format!("console=ttyS0 panic=-1 {append}"))
            .args(["-device", "pcie-root-port,id=rp0,chassis=1,slot=1"])
            .args(["-device", "virtio-rng-pci"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(|e| format!("{}: {e}", qemu.display()))?;
    let mut stdout = pg.child.stdout.take().ok_or("no stdout")?;
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut serial = Vec::new();
    let mut exited = false;
    while start.elapsed() < timeout {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(chunk) => serial.extend(chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) => {}
        }
        if let Ok(Some(_)) = pg.child.try_wait() {
            exited = true;
            while let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
                serial.extend(chunk);
            }
            break;
        }
    }
    // The console closed: QEMU is exiting; give it a moment to be reaped.
    let grace = Instant::now();
    while !exited && grace.elapsed() < Duration::from_secs(5) {
        match pg.child.try_wait() {
            Ok(Some(_)) => exited = true,
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    drop(pg);
    let _ = reader.join();
    Ok(Boot {
        serial: String::from_utf8_lossy(&serial).into_owned(),
        seconds,
        exited,
    })
}

/// A test's VMs: a private runtime base, every VM process remembered, all of them taken
/// down on drop; logs kept when the test fails.
pub struct Harness {
    /// The test's name (the log directory's name).
    pub test: String,
    /// The environment `vfioctl::vm::lifecycle` runs VMs in.
    pub env: Env,
    _base: tempfile::TempDir,
    /// Every pid the harness saw, with its liveness marker, checked at the end.
    seen: std::cell::RefCell<Vec<(u32, String)>>,
}

impl Harness {
    /// A harness for `test`, with a private runtime base under /tmp.
    pub fn new(test: &str) -> Harness {
        // Short path: unix socket paths must stay under 108 bytes.
        let base = tempfile::Builder::new()
            .prefix("vfioctl-t")
            .tempdir_in("/tmp")
            .expect("a runtime base in /tmp");
        Harness {
            test: test.into(),
            env: Env {
                root: SysRoot::host(),
                base: base.path().to_path_buf(),
            },
            _base: base,
            seen: Default::default(),
        }
    }

    /// Remember a VM's processes so the end-of-test check covers them.
    pub fn track(&self, rec: &vfioctl::vm::VmRecord) {
        self.seen.borrow_mut().extend(lifecycle::processes(rec));
    }

    /// Copy logs out and print their tails (called on failure).
    pub fn keep_logs(&self) {
        let dest = target_tmp().join("vm-logs").join(&self.test);
        let _ = std::fs::create_dir_all(&dest);
        for e in std::fs::read_dir(&self.env.base)
            .into_iter()
            .flatten()
            .flatten()
        {
            for f in [
                "serial.log",
                "qemu.stderr",
                "vhost-device-vsock.log",
                "state.json",
            ] {
                let src = e.path().join(f);
                if src.exists() {
                    let name = format!("{}-{f}", e.file_name().to_string_lossy());
                    let _ = std::fs::copy(&src, dest.join(&name));
                    let text = std::fs::read_to_string(&src).unwrap_or_default();
                    eprintln!(
                        "--- {name} (tail) ---\n{}",
                        vfioctl::vm::evidence::tail(&text, 30)
                    );
                }
            }
        }
        eprintln!("logs kept in {}", dest.display());
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let failing = std::thread::panicking();
        if failing {
            self.keep_logs();
        }
        for r in lifecycle::list(&self.env) {
            self.seen.borrow_mut().extend(lifecycle::processes(&r));
        }
        // Drop may run inside the test's tokio runtime: clean up on a thread of its own.
        let env = self.env.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            for r in vfioctl::vm::state::list_records(&env.base) {
                let _ = rt.block_on(lifecycle::down(&env, &r.name, Duration::ZERO));
            }
        })
        .join();
        let left: Vec<u32> = self
            .seen
            .borrow()
            .iter()
            .filter(|(p, m)| vfioctl::vm::process::alive(*p, m))
            .map(|(p, _)| *p)
            .collect();
        if !left.is_empty() {
            for p in &left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(*p as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            if !failing {
                panic!("{}: processes left behind: {left:?}", self.test);
            }
        }
    }
}

/// The static agent as a local process on a unix socket (no guest); killed and reaped on
/// drop.
pub struct LocalAgent {
    /// The agent process.
    pub child: Child,
    /// Its socket.
    pub socket: PathBuf,
    /// Its secret (`--token-file`): every request must carry it.
    pub token: vfioctl_common::proto::Token,
    /// The file the secret is in.
    pub token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalAgent {
    /// Start the static agent listening on a private socket, with `extra` arguments.
    pub fn start(extra: &[&str]) -> LocalAgent {
        let dir = tempfile::tempdir().expect("a private directory");
        let socket = dir.path().join("agent.sock");
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (std::process::id() as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8 * 7);
        }
        let token = vfioctl_common::proto::Token::from_bytes(&b);
        let token_file = dir.path().join("agent.token");
        std::fs::write(&token_file, token.as_str()).expect("write the agent secret");
        let child = Command::new(build::static_agent())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--token-file")
            .arg(&token_file)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        // Raw connections (no retry) must find the socket.
        for _ in 0..2000 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        LocalAgent {
            child,
            socket,
            token,
            token_file,
            _dir: dir,
        }
    }

    /// Connect with the right secret.
    pub fn client(&self, t: std::time::Duration) -> vfioctl::agent::AgentClient {
        vfioctl::agent::AgentClient::connect(&self.transport(), &self.token, t)
            .expect("agent answers")
    }

    /// How to reach it.
    pub fn transport(&self) -> vfioctl::agent::Transport {
        vfioctl::agent::Transport::Unix {
            path: self.socket.clone(),
        }
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What `vfioctl regress scripts/lab-plan.toml --only ... --json` returned: the parsed
/// results, its stderr, and the `--out` directory (removed when this is dropped).
pub struct RegressRun {
    /// The results JSON the command printed.
    pub results: vfioctl::regress::RunResults,
    /// Everything the command printed on stderr (progress, the per-scenario lines).
    pub stderr: String,
    /// The command's exit status.
    pub status: std::process::ExitStatus,
    /// The `--out` directory: reports and each scenario's logs.
    pub out: tempfile::TempDir,
}

impl RegressRun {
    /// The result of scenario `name`; panics with stderr when it did not run.
    pub fn scenario(&self, name: &str) -> &vfioctl::regress::results::ScenarioResult {
        self.results
            .scenarios
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} did not run; stderr:\n{}", self.stderr))
    }
}

/// Run the real binary on the lab plan, the way the nightly does: `vfioctl regress
/// scripts/lab-plan.toml --only ONLY --json` with the static guest agent, and with
/// `--static-vfioctl` when `nested` (the scenarios that run vfioctl inside an L1 guest),
/// against `$VFIOCTL_LAB` and with `~/.cargo/bin` on PATH (vhost-device-vsock). `extra`
/// is appended (`--jobs 3`). `bin` is the test's `env!("CARGO_BIN_EXE_vfioctl")`.
/// Panics with stderr when no results JSON came back.
pub fn regress_lab_plan(bin: &str, only: &[String], nested: bool, extra: &[&str]) -> RegressRun {
    let out = tempfile::tempdir().expect("temp dir");
    let path = format!(
        "{}/.cargo/bin:{}",
        std::env::var("HOME").unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(bin);
    cmd.arg("regress")
        .arg(prereq::repo().join("scripts/lab-plan.toml"))
        .arg("--agent")
        .arg(build::static_agent());
    if nested {
        cmd.arg("--static-vfioctl").arg(build::static_vfioctl());
    }
    let res = cmd
        .args(["--only", &only.join(",")])
        .args(extra)
        .arg("--out")
        .arg(out.path().join("out"))
        .arg("--json")
        .env("VFIOCTL_LAB", prereq::lab_dir())
        .env("PATH", path)
        .output()
        .expect("run vfioctl regress");
    let stderr = String::from_utf8_lossy(&res.stderr).into_owned();
    let results = serde_json::from_slice(&res.stdout)
        .unwrap_or_else(|e| panic!("no results JSON ({e}); stderr:\n{stderr}"));
    RegressRun {
        results,
        stderr,
        status: res.status,
        out,
    }
}
