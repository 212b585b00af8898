//! The nested-passthrough scenario (`kind = "nested"`, docs/LAB.md facts 2 and 3).
//!
//! An L1 guest with an emulated intel-iommu (interrupt remapping, caching mode) is a real
//! VFIO host: an emulated e1000e on a pcie-root-port (`0000:01:00.0` in L1) is bound to
//! vfio-pci by the static vfioctl inside it, a second QEMU (the host's binary with its
//! shared libraries, found with `ldd` when the initramfs is built) starts an L2 guest with
//! the device cold-plugged through `-device vfio-pci`, and the L2 guest's `/init` lists its
//! PCI devices on its serial console. The verdict comes from what L2 reported: the device
//! (8086:10d3) is there. `vfioctl restore --all` gives it back to e1000e in L1.
//!
//! Everything in L1 runs through the guest agent's exec (`rootfs/lab-nested.toml`: the agent
//! as /init with exec on); the L2 initramfs is `rootfs/lab-nested-l2.toml`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::rootfs::{self, BuildOptions};

/// The device L1 binds and passes on (its own root port, its own IOMMU group).
pub const L1_DEVICE: &str = "0000:01:00.0";
/// What L2 must see: the e1000e (82574L).
pub const EXPECTED_ID: &str = "8086:10d3";

/// QEMU arguments of the L1 guest on top of the VM module's q35 machine.
pub fn l1_qemu_args() -> Vec<String> {
    l1_qemu_args_with("e1000e,bus=nrp0,mac=52:54:00:00:05:00")
}

/// QEMU arguments of an L1 guest with an emulated IOMMU and `device` (a `-device` value
/// on `bus=nrp0`) alone on root port nrp0: the nested and SR-IOV lab machines.
pub fn l1_qemu_args_with(device: &str) -> Vec<String> {
    [
        "-machine",
        "kernel-irqchip=split",
        "-device",
        "intel-iommu,intremap=on,caching-mode=on",
        "-device",
        "pcie-root-port,id=nrp0,bus=pcie.0,chassis=31",
        "-device",
        device,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The value of `key` on the first `@@ name key=value ...` line of a lab guest's output.
pub fn at_field(out: &str, name: &str, key: &str) -> Option<String> {
    out.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("@@ ")?;
        let mut f = rest.split_whitespace();
        (f.next()? == name).then_some(())?;
        f.filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    })
}

/// The L1 kernel command line. `no_timer_check`: a loaded TCG host otherwise panics with
/// "timer doesn't work through Interrupt-remapped IO-APIC".
pub fn l1_cmdline(extra: Option<&str>) -> String {
    let mut c = "console=ttyS0 panic=-1 intel_iommu=on no_timer_check".to_string();
    if let Some(a) = extra {
        c.push(' ');
        c.push_str(a);
    }
    c
}

/// Shared libraries named by `ldd` output (pure): `name => /path (addr)` and the loader's
/// `/path (addr)`; virtual objects (linux-vdso) have no path and are skipped.
pub fn parse_ldd(out: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = out
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let p = match l.split_once("=>") {
                Some((_, rhs)) => rhs.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            p.starts_with('/').then(|| PathBuf::from(p))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

fn ldd(bin: &Path) -> Result<Vec<PathBuf>, NestedError> {
    let out = Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|e| NestedError::Ldd {
            bin: bin.into(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NestedError::Ldd {
            bin: bin.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Building the nested scenario's initramfs images failed. The detail (an I/O or rootfs
/// error) is part of the message, not a separate cause: a regress step failure is one line.
#[derive(Debug, thiserror::Error)]
pub enum NestedError {
    /// `ldd` could not list a binary's libraries.
    #[error("ldd {}: {reason}", bin.display())]
    Ldd {
        /// The binary.
        bin: PathBuf,
        /// Why: ldd's stderr, or why it could not run.
        reason: String,
    },
    /// A file of the payload could not be resolved.
    #[error("{}: {error}", path.display())]
    Resolve {
        /// The file (canonicalizing it failed).
        path: PathBuf,
        /// The I/O error.
        error: std::io::Error,
    },
    /// A QEMU firmware blob is nowhere to be found.
    #[error("{blob} not found in {}", BLOB_DIRS.join(", "))]
    NoBlob {
        /// The blob's file name.
        blob: String,
    },
    /// An initramfs build failed (`level`: L1 or L2).
    #[error("{level} initramfs: {error}")]
    Initramfs {
        /// `L1` or `L2`.
        level: &'static str,
        /// The rootfs build error.
        error: rootfs::RootfsError,
    },
}

/// Why the nested (or SR-IOV) lab scenario failed, judged from the `@@` lines its guests
/// printed ([`verdict`], `shared::lab::sriov_verdict`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ScenarioFailed {
    /// What went wrong, naming the level (L1, L2) and the device.
    pub reason: String,
}

impl From<String> for ScenarioFailed {
    fn from(reason: String) -> Self {
        Self { reason }
    }
}

fn canonical(p: &Path) -> Result<PathBuf, NestedError> {
    p.canonicalize().map_err(|error| NestedError::Resolve {
        path: p.into(),
        error,
    })
}

/// A host file shipped at the same path in the guest (symlinks resolved on the host side).
fn same_path(p: &Path) -> Result<(PathBuf, String), NestedError> {
    let src = canonical(p)?;
    Ok((src, p.display().to_string()))
}

/// Where QEMU keeps its loadable modules on Debian.
pub const QEMU_MODULE_DIR: &str = "/usr/lib/x86_64-linux-gnu/qemu";
/// The firmware an L2 q35 guest booted with `-kernel` needs (`-L /usr/share/qemu` in L1).
pub const QEMU_BLOBS: &[&str] = &["bios-256k.bin", "kvmvapic.bin", "linuxboot_dma.bin"];
const BLOB_DIRS: &[&str] = &["/usr/share/qemu", "/usr/share/seabios"];

/// The QEMU payload for L1: the binary at `/usr/bin/qemu-system-x86_64`, its libraries and
/// those of the TCG module at their host paths, and the firmware under /usr/share/qemu.
pub fn qemu_payload(qemu: &Path) -> Result<Vec<(PathBuf, String)>, NestedError> {
    qemu_payload_from(qemu, Path::new(QEMU_MODULE_DIR), None)
}

/// [`qemu_payload`] for any QEMU: its TCG module (when it has one, not built in) from
/// `module_dir`, the firmware from `data_dir` first (an unpacked QEMU's `-L` directory),
/// then the system's.
pub fn qemu_payload_from(
    qemu: &Path,
    module_dir: &Path,
    data_dir: Option<&Path>,
) -> Result<Vec<(PathBuf, String)>, NestedError> {
    let mut v = vec![(canonical(qemu)?, "/usr/bin/qemu-system-x86_64".to_string())];
    let accel = module_dir.join("accel-tcg-x86_64.so");
    let mut libs = ldd(qemu)?;
    if accel.is_file() {
        v.push(same_path(&accel)?);
        libs.extend(ldd(&accel)?);
    }
    libs.sort();
    libs.dedup();
    for l in libs {
        v.push(same_path(&l)?);
    }
    for blob in QEMU_BLOBS {
        let src = data_dir
            .into_iter()
            .chain(BLOB_DIRS.iter().map(Path::new))
            .map(|d| d.join(blob))
            .find(|p| p.exists())
            .ok_or_else(|| NestedError::NoBlob {
                blob: (*blob).into(),
            })?;
        let src = canonical(&src)?;
        v.push((src, format!("/usr/share/qemu/{blob}")));
    }
    Ok(v)
}

/// What the nested initramfs build needs.
pub struct NestedInputs<'a> {
    /// Source tree with rootfs/lab-nested*.toml.
    pub tree: &'a Path,
    /// Kernel image for L1 and L2; its modules are `lib/modules` next to it.
    pub kernel: &'a Path,
    /// The static guest agent, built into both initramfs images.
    pub agent: &'a Path,
    /// Static vfioctl for L1.
    pub vfioctl: &'a Path,
    /// The QEMU binary copied into L1 (with its libraries and firmware blobs).
    pub qemu: &'a Path,
    /// Where the initramfs images are written.
    pub out_dir: &'a Path,
}

/// Build the L2 initramfs, then the L1 initramfs that carries it; returns L1's.
pub fn build_initrds(i: &NestedInputs) -> Result<PathBuf, NestedError> {
    let payload = qemu_payload(i.qemu)?;
    build_initrds_with(i, payload, "rootfs/lab-nested.toml", "nested-l1.cpio.gz")
}

/// [`build_initrds`] with the QEMU payload and the L1 manifest (relative to the tree)
/// given: the shared-GPU scenarios ship QEMU 10 and their own L1 modules.
pub fn build_initrds_with(
    i: &NestedInputs,
    payload: Vec<(PathBuf, String)>,
    l1_manifest: &str,
    out_name: &str,
) -> Result<PathBuf, NestedError> {
    let modules = i.kernel.parent().map(Path::to_path_buf).unwrap_or_default();
    let l2 = i.out_dir.join("nested-l2.cpio.gz");
    rootfs::build(&BuildOptions {
        manifest: i.tree.join("rootfs/lab-nested-l2.toml"),
        out: l2.clone(),
        agent: Some(i.agent.to_path_buf()),
        no_modules: true,
        ..BuildOptions::default()
    })
    .map_err(|error| NestedError::Initramfs { level: "L2", error })?;
    let mut extra = vec![
        (i.vfioctl.to_path_buf(), "/bin/vfioctl".to_string()),
        (i.kernel.to_path_buf(), "/l2/vmlinuz".to_string()),
        (l2, "/l2/initrd.gz".to_string()),
    ];
    extra.extend(payload);
    let out = i.out_dir.join(out_name);
    rootfs::build(&BuildOptions {
        manifest: i.tree.join(l1_manifest),
        kernel_modules: Some(modules),
        out: out.clone(),
        agent: Some(i.agent.to_path_buf()),
        extra,
        ..BuildOptions::default()
    })
    .map_err(|error| NestedError::Initramfs { level: "L1", error })?;
    Ok(out)
}

/// The shell function `drv BDF` of the L1 scripts: the device's driver, or `none`.
pub const DRV_FN: &str = "drv() { if [ -e /sys/bus/pci/devices/$1/driver ]; then basename $(readlink /sys/bus/pci/devices/$1/driver); else echo none; fi; }\n";

/// The L1 script lines that, when the bind before them succeeded (`$rc` 0), run L2 for at
/// most `l2_timeout_s` with `host` (a BDF or a shell variable) cold-plugged through
/// vfio-pci on a root port, then print L2's serial console (`@@ l2 rc=N`, then L2's own
/// `@@` lines).
pub fn l2_run(host: &str, l2_timeout_s: u64) -> String {
    format!(
        r#"modprobe vfio_iommu_type1 2>&1
if [ $rc -eq 0 ]; then
  timeout {l2_timeout_s} qemu-system-x86_64 -nodefaults -machine q35 -accel tcg -m 256 -smp 1 \
    -display none -no-reboot -L /usr/share/qemu \
    -kernel /l2/vmlinuz -initrd /l2/initrd.gz -append "console=ttyS0 panic=-1 quiet" \
    -serial file:/tmp/l2.serial \
    -device pcie-root-port,id=rp0,bus=pcie.0,chassis=1 \
    -device vfio-pci,host={host},bus=rp0 2>&1
  echo "@@ l2 rc=$?"
  cat /tmp/l2.serial | tr -d '\r'
fi
"#
    )
}

/// The L1 script lines that start an L2 guest with the static vfioctl inside L1
/// (`vfioctl vm up`: its q35 machine, root ports, VFIO backend and QMP hotplug, exactly
/// as on a real host) with `vm_args` (`--gpu X` hot-plugs over QMP once L2 is up,
/// `--cold X` puts X on QEMU's command line, `--vfio-backend B`), then report what it did
/// and what L2 saw, and take it down. Prints `@@ NAME up rc=N`, `@@json NAME-up {..}` (the
/// `vm up --json` result), `@@json NAME-status {..}` (`vm status --json`: QEMU's own
/// objects), `@@ NAME fds ...` (the VFIO and iommufd nodes QEMU holds open), L2's console
/// lines as `@@ NAME.pci ...` / `@@ NAME.hot ...`, and `@@ NAME down rc=N`.
pub fn l2_vm(name: &str, vm_args: &str, boot_timeout_s: u64) -> String {
    // After a hotplug, L2's own listing (`@@ hot`) comes seconds later under nested TCG:
    // wait for it (at most a minute) before reading L2's console.
    let settle = if vm_args.contains("--gpu") {
        format!(
            "i=0; while [ $i -lt 60 ] && ! grep -q '^@@ hot' /tmp/vms/{name}/serial.log 2>/dev/null; do sleep 1; i=$((i+1)); done\n"
        )
    } else {
        String::new()
    };
    format!(
        r#"export VFIOCTL_RUN_DIR=/tmp/vms
vfioctl --json vm up --name {name} --accel tcg --vsock none --ready 'serial:@@ l2-ready' \
  --boot-timeout {boot_timeout_s} --kernel /l2/vmlinuz --initrd /l2/initrd.gz --memory 256M --vcpus 1 \
  --qemu /usr/bin/qemu-system-x86_64 --cmdline 'console=ttyS0 panic=-1 l2.stay' {vm_args} \
  > /tmp/{name}.json 2> /tmp/{name}.err
echo "@@ {name} up rc=$?"
sed 's/^/@@ {name}-err /' /tmp/{name}.err | tail -n 15
echo "@@json {name}-up $(tr -d '\n' < /tmp/{name}.json)"
{settle}vfioctl --json vm status {name} 2>/dev/null | tr -d '\n' | sed 's/^/@@json {name}-status /'; echo
qpid=$(cat /tmp/vms/{name}/qemu.pid 2>/dev/null)
fds=$(ls -l /proc/$qpid/fd 2>/dev/null | sed -n 's/.*-> //p' | grep -E '^/dev/(iommu|vfio/)' | sort -u | tr '\n' ,)
echo "@@ {name} fds pid=$qpid nodes=$fds"
tr -d '\r' < /tmp/vms/{name}/serial.log | grep '^@@ ' | sed 's/^@@ /@@ {name}./'
vfioctl vm down {name} --timeout 2 > /dev/null 2>&1
echo "@@ {name} down rc=$?"
"#
    )
}

/// What an L2 started by [`l2_vm`] reported (parsed from the L1 output, pure).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct L2Seen {
    /// `vm up`'s exit code.
    pub up_rc: Option<i32>,
    /// `vm up --json`, when it printed one.
    pub up: Option<serde_json::Value>,
    /// `vm status --json` after the plug.
    pub status: Option<serde_json::Value>,
    /// The `/dev/iommu` and `/dev/vfio/...` nodes QEMU held open.
    pub nodes: Vec<String>,
    /// What L2 listed at boot: `(bdf, vendor:device, driver)`.
    pub boot: Vec<(String, String, String)>,
    /// What appeared in L2 after boot (hotplugged).
    pub hot: Vec<(String, String, String)>,
    /// vfioctl's error lines when `vm up` failed.
    pub errors: Vec<String>,
}

impl L2Seen {
    /// The report of the L2 guest `name` in `out`.
    pub fn parse(out: &str, name: &str) -> L2Seen {
        let mut s = L2Seen::default();
        let json = |tag: &str| {
            out.lines().find_map(|l| {
                let rest = l.trim().strip_prefix(&format!("@@json {name}-{tag} "))?;
                serde_json::from_str(rest.trim()).ok()
            })
        };
        s.up = json("up");
        s.status = json("status");
        let dev = |rest: &str| {
            let mut f = rest.split_whitespace().map(str::to_string);
            Some((
                f.next()?,
                f.next()?,
                f.next().unwrap_or_else(|| "none".into()),
            ))
        };
        for l in out.lines().map(str::trim) {
            if let Some(r) = l.strip_prefix(&format!("@@ {name}.pci ")) {
                s.boot.extend(dev(r));
            } else if let Some(r) = l.strip_prefix(&format!("@@ {name}.hot ")) {
                s.hot.extend(dev(r));
            } else if let Some(r) = l.strip_prefix(&format!("@@ {name}-err ")) {
                s.errors.push(r.to_string());
            } else if let Some(r) = l.strip_prefix(&format!("@@ {name} up rc=")) {
                s.up_rc = r.trim().parse().ok();
            } else if let Some(r) = l.strip_prefix(&format!("@@ {name} fds ")) {
                if let Some((_, n)) = r.split_once("nodes=") {
                    s.nodes = n
                        .split(',')
                        .filter(|x| !x.is_empty())
                        .map(str::to_string)
                        .collect();
                }
            }
        }
        s
    }

    /// The VFIO backend `vm up` chose (`group`, `iommufd`), from its JSON.
    pub fn backend(&self) -> Option<String> {
        let b = self.up.as_ref()?.get("vfio_backend")?;
        b.as_str().map(str::to_string)
    }

    /// QEMU's objects of type `qom_type` (`vm status` after the plug).
    pub fn objects(&self, qom_type: &str) -> Vec<String> {
        self.status
            .as_ref()
            .and_then(|s| s.get("objects"))
            .and_then(|o| o.as_array())
            .into_iter()
            .flatten()
            .filter(|o| o.get("qom_type").and_then(|t| t.as_str()) == Some(qom_type))
            .filter_map(|o| o.get("id")?.as_str().map(str::to_string))
            .collect()
    }

    /// Whether L2 has a device `id` (`vendor:device`), at boot (`hot` false) or after it.
    pub fn lists(&self, id: &str, hot: bool) -> Option<&str> {
        let v = if hot { &self.hot } else { &self.boot };
        v.iter().find(|d| d.1 == id).map(|d| d.0.as_str())
    }

    /// Why this L2 run does not show `id` (cold or hot), or `None` when it does.
    pub fn missing(&self, name: &str, id: &str, hot: bool) -> Option<String> {
        if self.up_rc != Some(0) {
            return Some(format!(
                "L1: vfioctl vm up --name {name} failed (rc {}): {}",
                self.up_rc.map(|r| r.to_string()).unwrap_or("?".into()),
                self.errors.join(" / ")
            ));
        }
        if self.lists(id, hot).is_none() {
            let seen: Vec<String> = self
                .boot
                .iter()
                .chain(&self.hot)
                .map(|d| format!("{} {}", d.0, d.1))
                .collect();
            return Some(format!(
                "L2 `{name}` lists no {id} {} (it lists: {})",
                if hot { "after the hotplug" } else { "at boot" },
                seen.join(", ")
            ));
        }
        None
    }
}

/// The L1 script, run through the agent's exec: bind, run L2 with the device cold-plugged
/// (its serial console to a file, printed afterwards), then a second L2 started by the
/// static vfioctl with the device hot-plugged over QMP ([`l2_vm`] `l2hot`), restore.
/// Prints `@@ name key=value`.
pub fn l1_script(l2_timeout_s: u64) -> String {
    let d = L1_DEVICE;
    let l2 = l2_run(d, l2_timeout_s);
    let hot = l2_vm("l2hot", &format!("--gpu {d}"), l2_timeout_s);
    format!(
        r#"/bin/busybox --install -s /bin 2>/dev/null
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
{DRV_FN}echo "@@ before driver=$(drv {d})"
vfioctl bind {d} 2>&1; rc=$?
echo "@@ bind rc=$rc driver=$(drv {d}) group=$(basename $(readlink /sys/bus/pci/devices/{d}/iommu_group))"
# QEMU needs an IOMMU backend for the VFIO container: vfio's softdep on vfio_iommu_type1
# is honoured by kmod's modprobe, not busybox's, so load it here.
{l2}{hot}vfioctl restore --all 2>&1
echo "@@ restore rc=$? driver=$(drv {d})"
"#
    )
}

/// What L1 and L2 reported, judged (pure): `Ok(note)` when L1 bound the device, L2 listed
/// it with the expected id, and restore gave it back; else `Err(reason)`.
pub fn verdict(out: &str) -> Result<String, ScenarioFailed> {
    let field = |name: &str, key: &str| at_field(out, name, key);
    let bind_rc = field("bind", "rc");
    if bind_rc.as_deref() != Some("0") || field("bind", "driver").as_deref() != Some("vfio-pci") {
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl bind {L1_DEVICE} did not leave it on vfio-pci (rc {}, driver {})",
            bind_rc.unwrap_or_else(|| "?".into()),
            field("bind", "driver").unwrap_or_else(|| "?".into())
        )));
    }
    let l2: Vec<(&str, &str)> = out
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().strip_prefix("@@ pci ")?.split_whitespace();
            Some((f.next()?, f.next()?))
        })
        .collect();
    if !out.lines().any(|l| l.trim() == "@@ l2-done") {
        return Err(ScenarioFailed::from(format!(
            "L2 did not finish its device listing (QEMU rc {})",
            field("l2", "rc").unwrap_or_else(|| "?".into())
        )));
    }
    let Some((bdf, _)) = l2.iter().find(|(_, id)| *id == EXPECTED_ID) else {
        return Err(ScenarioFailed::from(format!(
            "L2 lists no {EXPECTED_ID}: {}",
            l2.iter()
                .map(|(b, id)| format!("{b} {id}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let hot = L2Seen::parse(out, "l2hot");
    if let Some(why) = hot.missing("l2hot", EXPECTED_ID, true) {
        return Err(ScenarioFailed::from(why));
    }
    let restored = field("restore", "driver");
    if field("restore", "rc").as_deref() != Some("0") || restored.as_deref() != Some("e1000e") {
        return Err(ScenarioFailed::from(format!(
            "L1: vfioctl restore --all left {L1_DEVICE} on {}",
            restored.unwrap_or_else(|| "?".into())
        )));
    }
    Ok(format!(
        "L1 bound {L1_DEVICE} to vfio-pci (group {}); L2 lists {bdf} {EXPECTED_ID} among {} device(s) cold-plugged, and {} after vfioctl in L1 hot-plugged it over QMP ({} backend); restored to e1000e",
        field("bind", "group").unwrap_or_default(),
        l2.len(),
        hot.lists(EXPECTED_ID, true).unwrap_or("?"),
        hot.backend().unwrap_or_else(|| "?".into())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines() {
        let out = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibz.so.1 => /lib/x86_64-linux-gnu/libz.so.1 (0x1)\n\t/lib64/ld-linux-x86-64.so.2 (0x2)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x3)\n";
        assert_eq!(
            parse_ldd(out),
            [
                "/lib/x86_64-linux-gnu/libm.so.6",
                "/lib/x86_64-linux-gnu/libz.so.1",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
    }

    const GOOD: &str = "@@ before driver=e1000e\n@@ bind rc=0 driver=vfio-pci group=3\n@@ l2 rc=0\n@@ pci 0000:00:00.0 8086:29c0 none\n@@ pci 0000:01:00.0 8086:10d3 none\n@@ l2-done\n\
@@ l2hot up rc=0\n@@json l2hot-up {\"name\":\"l2hot\",\"vfio_backend\":\"group\"}\n@@json l2hot-status {\"objects\":[]}\n\
@@ l2hot fds pid=77 nodes=/dev/vfio/3,/dev/vfio/vfio,\n@@ l2hot.pci 0000:00:00.0 8086:29c0 none\n@@ l2hot.l2-done\n@@ l2hot.l2-ready\n\
@@ l2hot.hot 0000:01:00.0 8086:10d3 e1000e\n@@ l2hot down rc=0\n@@ restore rc=0 driver=e1000e\n";

    #[test]
    fn verdict_passes_when_l2_lists_the_device() {
        let v = verdict(GOOD).unwrap();
        assert!(v.contains("0000:01:00.0 8086:10d3"), "{v}");
    }

    #[test]
    fn verdict_fails_on_each_missing_piece() {
        let no_dev = GOOD.replace("8086:10d3", "8086:10d4");
        assert!(verdict(&no_dev).unwrap_err().reason.contains("lists no"));
        let no_bind = GOOD.replace("bind rc=0 driver=vfio-pci", "bind rc=5 driver=e1000e");
        assert!(verdict(&no_bind)
            .unwrap_err()
            .reason
            .contains("did not leave"));
        let no_l2 = GOOD.replace("@@ l2-done\n", "");
        assert!(verdict(&no_l2)
            .unwrap_err()
            .reason
            .contains("did not finish"));
        let no_restore = GOOD.replace("restore rc=0 driver=e1000e", "restore rc=1 driver=vfio-pci");
        assert!(verdict(&no_restore).unwrap_err().reason.contains("restore"));
        let no_hot = GOOD.replace("@@ l2hot.hot 0000:01:00.0 8086:10d3 e1000e\n", "");
        let e = verdict(&no_hot).unwrap_err().reason;
        assert!(
            e.contains("L2 `l2hot` lists no 8086:10d3 after the hotplug"),
            "{e}"
        );
        let up_failed = GOOD.replace(
            "l2hot up rc=0",
            "l2hot up rc=5\n@@ l2hot-err error: 0000:01:00.0: no VFIO node",
        );
        let e = verdict(&up_failed).unwrap_err().reason;
        assert!(
            e.contains("vm up --name l2hot failed (rc 5): error: 0000:01:00.0: no VFIO node"),
            "{e}"
        );
    }

    #[test]
    fn l2_seen_reads_the_vm_up_report_objects_and_nodes() {
        let out = "@@ x up rc=0\n@@json x-up {\"vfio_backend\":\"iommufd\"}\n@@json x-status {\"objects\":[{\"id\":\"iommufd0\",\"qom_type\":\"iommufd\"}]}\n@@ x fds pid=9 nodes=/dev/iommu,/dev/vfio/devices/vfio0,\n@@ x.pci 0000:01:00.0 8086:10ca none\n";
        let s = L2Seen::parse(out, "x");
        assert_eq!(s.up_rc, Some(0));
        assert_eq!(s.backend().as_deref(), Some("iommufd"));
        assert_eq!(s.objects("iommufd"), ["iommufd0"]);
        assert_eq!(s.nodes, ["/dev/iommu", "/dev/vfio/devices/vfio0"]);
        assert_eq!(s.lists("8086:10ca", false), Some("0000:01:00.0"));
        assert_eq!(s.missing("x", "8086:10ca", false), None);
        assert!(s.missing("x", "8086:10ca", true).is_some());
    }

    #[test]
    fn l1_script_hot_plugs_with_vfioctl_after_the_cold_run() {
        let s = l1_script(300);
        let cold = s.find("-device vfio-pci,host=0000:01:00.0").unwrap();
        let hot = s.find("vm up --name l2hot").unwrap();
        assert!(cold < hot && hot < s.find("vfioctl restore --all").unwrap());
        assert!(s.contains("--gpu 0000:01:00.0"));
    }
}
