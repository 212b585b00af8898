//! Shared helpers of the kernel test files: where the lab, the fragments and a real
//! kernel tree are. Missing prerequisites come back as `vfioctl_testkit::Missing` for
//! `vfioctl_testkit::require!`.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use vfioctl::kernel::{self, manifest::Pins};
use vfioctl_testkit::{prereq, Missing};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn configs() -> PathBuf {
    repo().join("kernel-configs")
}

pub fn lab() -> PathBuf {
    prereq::lab_dir()
}

pub fn pins() -> Pins {
    Pins::parse(&std::fs::read_to_string(configs().join("manifest.toml")).unwrap()).unwrap()
}

/// The pinned linux-source tree, extracted once into the lab (the same code path
/// `vfioctl kernel build` uses). Missing when the tarball is not installed; a tarball
/// that is there but cannot be prepared (a pin it does not match, a patch that does not
/// apply) is a failure of the project, not a missing prerequisite: it panics.
pub fn kernel_tree() -> Result<PathBuf, Missing> {
    let pins = pins();
    if !pins.kernel.tarball.is_file() {
        return Err(Missing::new("linux-source", prereq::SETUP)
            .detail(format!("{} not installed", pins.kernel.tarball.display())));
    }
    let logdir = lab().join("kernel-build/test-logs");
    std::fs::create_dir_all(&logdir).unwrap_or_else(|e| panic!("{}: {e}", logdir.display()));
    let t = kernel::source::prepare(
        &kernel::source::SourceRequest {
            given: None,
            pin: &pins.kernel,
            configs: &configs(),
            cache: &lab().join("kernel-src"),
            allow_unpinned: false,
        },
        &logdir.join("source.log"),
    )
    .unwrap_or_else(|e| panic!("preparing the pinned kernel source: {}", chain(&e)));
    Ok(t.dir)
}

/// What a kernel configure or build needs here: make, gcc, flex, bison and the pinned
/// kernel tree.
pub fn build_prerequisites() -> Result<PathBuf, Missing> {
    prereq::kernel_build_tools()?;
    kernel_tree()
}

/// An error and its sources, `: `-separated.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(&format!(": {c}"));
        src = c.source();
    }
    s
}

pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A busybox initramfs (gzip newc cpio) whose `/init` runs `script` after mounting
/// proc/sys/devtmpfs, then powers off. `extra` copies host trees into it
/// (`(from, to-relative)`), e.g. the built modules. Uses busybox-static + cpio from
/// scripts/setup; no root needed (the kernel's built-in cpio provides /dev/console).
pub fn initramfs(dir: &Path, script: &str, extra: &[(PathBuf, &str)]) -> Result<PathBuf, String> {
    let root = dir.join("root");
    for d in ["bin", "dev", "proc", "sys", "tmp", "lib"] {
        std::fs::create_dir_all(root.join(d)).map_err(|e| e.to_string())?;
    }
    let bb = prereq::busybox().map_err(|m| m.to_string())?;
    std::fs::copy(&bb, root.join("bin/busybox")).map_err(|e| e.to_string())?;
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nexport PATH=/bin\n\
         mount -t proc proc /proc\nmount -t sysfs sys /sys\nmount -t devtmpfs dev /dev\n\
         {script}\necho VFIOCTL-TEST-DONE\npoweroff -f\n"
    );
    std::fs::write(root.join("init"), init).map_err(|e| e.to_string())?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(root.join("init"), std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    for (from, to) in extra {
        let dst = root.join(to);
        std::fs::create_dir_all(dst.parent().unwrap()).map_err(|e| e.to_string())?;
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(&dst)
            .status()
            .map_err(|e| e.to_string())?;
        if !st.success() {
            return Err(format!("cp -a {} failed", from.display()));
        }
    }
    let out = dir.join("initramfs.cpio.gz");
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cd '{}' && find . | sort | cpio -o -H newc --quiet | gzip -1 > '{}'",
            root.display(),
            out.display()
        ))
        .status()
        .map_err(|e| e.to_string())?;
    if !st.success() {
        return Err("cpio failed (scripts/setup installs cpio)".into());
    }
    Ok(out)
}

/// What one TCG boot printed.
pub struct Boot {
    pub serial: String,
    pub seconds: f64,
    pub exited: bool,
}

/// Boot `kernel` + `initrd` on q35 under TCG (a PCIe root port, virtio-rng), reading the
/// serial console until the guest prints `VFIOCTL-TEST-DONE` and powers off, or until
/// `timeout` passes (then QEMU is killed). Readiness comes from the guest's output.
pub fn boot(
    kernel: &Path,
    initrd: &Path,
    append: &str,
    timeout: std::time::Duration,
) -> Result<Boot, String> {
    use std::io::Read;
    let qemu = prereq::qemu().map_err(|m| m.to_string())?;
    let start = std::time::Instant::now();
    let mut child = std::process::Command::new(&qemu)
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
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut stdout = child.stdout.take().unwrap();
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
        match rx.recv_timeout(std::time::Duration::from_millis(200)) {
            Ok(chunk) => serial.extend(chunk),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) => {}
        }
        if let Ok(Some(_)) = child.try_wait() {
            exited = true;
            // drain what is left
            while let Ok(chunk) = rx.recv_timeout(std::time::Duration::from_millis(100)) {
                serial.extend(chunk);
            }
            break;
        }
    }
    // the console closed: QEMU is exiting; give it a moment to be reaped
    let grace = std::time::Instant::now();
    while !exited && grace.elapsed() < std::time::Duration::from_secs(5) {
        match child.try_wait() {
            Ok(Some(_)) => exited = true,
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    if !exited {
        // kill our own process group (QEMU only), then reap
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &format!("-{}", child.id())])
            .status();
    }
    let _ = child.wait();
    let _ = reader.join();
    Ok(Boot {
        serial: String::from_utf8_lossy(&serial).into_owned(),
        seconds,
        exited,
    })
}

/// `vfioctl kernel build` of `flavours` into the lab's default output (cached by input
/// hash, so a second run is instant), printing phases.
pub fn build(flavours: &[&str], nvidia: Option<&str>) -> Result<kernel::BuildResult, String> {
    let opts = kernel::BuildOptions {
        configs: configs(),
        source: None,
        flavours: flavours.iter().map(|s| s.to_string()).collect(),
        out: None,
        lab: lab(),
        jobs: 2,
        nvidia: nvidia.map(|n| n.parse().unwrap()),
        allow_unpinned: false,
        force: false,
        nice: 10,
        ccache: true,
        clean: false,
    };
    kernel::build(&opts, &mut |p| eprintln!("{p:?}")).map_err(|e| chain(&e))
}
