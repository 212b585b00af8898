//! Lab harness for tests that boot real guests under QEMU.
//!
//! - [`Lab::get`] finds QEMU, a vsock backend, the lab kernel (`$VFIOCTL_LAB/kernel/current/vmlinuz`,
//!   fetched by scripts/setup) and builds a busybox initramfs; what is missing comes back
//!   as a `vfioctl_testkit::Missing` for `vfioctl_testkit::require!` (a loud skip, or a
//!   failure under `VFIOCTL_REQUIRE_LAB=1`).
//! - [`Harness`] gives each test a private runtime base, owns cleanup: on drop every VM
//!   is taken down (process groups killed and reaped) and a test that leaves a process
//!   behind fails. On failure the serial logs and QEMU stderr are copied to
//!   `target/tmp/vm-logs/<test>/` and their tails printed.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vfioctl::vm::lifecycle::{self, Env};
use vfioctl::vm::profile::{AccelChoice, Profile, Ready, VsockChoice};
use vfioctl::SysRoot;
use vfioctl_testkit::{prereq, Missing};

pub const READY_MARKER: &str = "VFIOCTL-READY";

pub struct Lab {
    pub kernel: PathBuf,
    /// The busybox initramfs (serial marker readiness; no agent).
    pub initrd: PathBuf,
}

fn lab_dir() -> PathBuf {
    vfioctl_testkit::prereq::lab_dir()
}

impl Lab {
    /// The lab, or the prerequisite that is missing.
    pub fn get() -> Result<Lab, Missing> {
        prereq::qemu()?;
        prereq::vsock_backend()?;
        let kernel = prereq::lab_kernel()?.join("vmlinuz");
        prereq::busybox()?;
        prereq::program("cpio", prereq::SETUP)?;
        let initrd =
            busybox_initramfs().unwrap_or_else(|e| panic!("building the busybox initramfs: {e}"));
        Ok(Lab { kernel, initrd })
    }

    /// The lab initramfs of `rootfs/lab.toml`: the static vfioctl agent as /init plus the
    /// vsock modules, built by `vfioctl::rootfs` (the same code as `vfioctl rootfs build`).
    pub fn agent_initramfs(&self) -> PathBuf {
        static P: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
        let r = P.get_or_init(|| {
            let ws = Path::new(env!("CARGO_MANIFEST_DIR"));
            let agent = vfioctl::rootfs::agent_bin::build_static(ws).map_err(|e| e.to_string())?;
            let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lab-agent-initramfs.cpio.gz");
            vfioctl::rootfs::build(&vfioctl::rootfs::BuildOptions {
                manifest: ws.join("rootfs/lab.toml"),
                kernel_modules: Some(lab_dir().join("kernel/current")),
                out: out.clone(),
                agent: Some(agent),
                ..Default::default()
            })
            .map_err(|e| e.to_string())?;
            Ok(out)
        });
        r.clone()
            .unwrap_or_else(|e| panic!("building the agent initramfs: {e}"))
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
            // The lab is TCG (LAB.md fact 7): on these machines the KVM probe can pass
            // (`query-kvm` enabled, `cont` runs) while a guest never prints a line.
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
            // The lab is TCG (LAB.md fact 7): on these machines the KVM probe can pass
            // (`query-kvm` enabled, `cont` runs) while a guest never prints a line.
            accel: AccelChoice::Tcg,
            ..Profile::default()
        }
    }
}

/// A minimal busybox initramfs whose /init mounts proc/sys/dev and prints the marker.
/// Built once per target dir (atomically renamed into place).
pub fn busybox_initramfs() -> std::io::Result<PathBuf> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("lab-busybox-initramfs.cpio.gz");
    if out.is_file() {
        return Ok(out);
    }
    let work = tempfile::tempdir()?;
    let root = work.path().join("root");
    for d in ["bin", "proc", "sys", "dev"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sysfs /sys\nmount -t devtmpfs devtmpfs /dev\necho \"{READY_MARKER} $(cut -d' ' -f1 /proc/uptime)\"\nwhile :; do sleep 3600; done\n"
    );
    std::fs::write(root.join("init"), init)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))?;
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            tmp.display()
        ))
        .status()?;
    if !st.success() {
        return Err(std::io::Error::other("cpio failed"));
    }
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

pub struct Harness {
    pub test: String,
    pub env: Env,
    _base: tempfile::TempDir,
    /// Every pid the harness saw, with its liveness marker, checked at the end.
    seen: std::cell::RefCell<Vec<(u32, String)>>,
}

impl Harness {
    pub fn new(test: &str) -> Harness {
        // Short path: unix socket paths must stay under 108 bytes.
        let base = tempfile::Builder::new()
            .prefix("vfioctl-t")
            .tempdir_in("/tmp")
            .unwrap();
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
        let dest = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("vm-logs")
            .join(&self.test);
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
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
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
