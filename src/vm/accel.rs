//! Which accelerator QEMU can really use, and the CPU's physical address width.
//!
//! `/dev/kvm` existing proves nothing: on the lab machines it exists, `query-kvm` on
//! `-machine none` even says enabled, yet creating a vCPU aborts with "failed to set MSR
//! 0x10a". On others (an Intel VM without VMX) even `cont` and `query-status` on a
//! `-cpu host` machine succeed and SeaBIOS runs, yet the guest kernel never gets past its
//! real-mode setup. The probe therefore boots a real guest kernel under KVM and counts
//! KVM as usable only when that kernel prints `Linux version` on the serial console
//! (decompressed, in long mode, running `start_kernel`): about a second where KVM works.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vfioctl_common::SysRoot;

use super::profile::AccelChoice;

/// The accelerator QEMU runs the guest with (`-accel`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization through `/dev/kvm`; needed to pass VFIO devices through.
    Kvm,
    /// QEMU's software emulation: much slower, and no VFIO passthrough.
    Tcg,
}

impl std::fmt::Display for Accel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        })
    }
}

/// What the probe found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AccelProbe {
    /// The accelerator to use.
    pub accel: Accel,
    /// Why KVM is not used, shown to the user as a warning.
    pub warning: Option<String>,
    /// Host physical address bits from /proc/cpuinfo (`address sizes`).
    pub host_phys_bits: Option<u8>,
}

/// `address sizes : 48 bits physical, 48 bits virtual` -> 48.
pub fn parse_phys_bits(cpuinfo: &str) -> Option<u8> {
    cpuinfo
        .lines()
        .find(|l| l.starts_with("address sizes"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// What the probe kernel prints once it runs in long mode.
pub const KVM_PROOF: &str = "Linux version";

/// The guest kernel the probe boots when the caller has none: the lab's, then the
/// host's own (`/boot/vmlinuz-<release>`).
pub fn probe_kernel(root: &SysRoot) -> Option<std::path::PathBuf> {
    let lab = std::env::var_os("VFIOCTL_LAB")
        .map(std::path::PathBuf::from)
        .map(|l| l.join("kernel/current/vmlinuz"));
    let host = root
        .read_attr("/proc/sys/kernel/osrelease")
        .ok()
        .map(|r| root.path(format!("/boot/vmlinuz-{}", r.trim())));
    lab.into_iter().chain(host).find(|p| p.is_file())
}

/// Boot `kernel` under KVM with `-cpu host` and wait for [`KVM_PROOF`] on its serial
/// console. QEMU refusing to start (`failed to set MSR 0x10a`) or a guest that prints
/// nothing within `timeout` means KVM is not usable.
fn run_probe(qemu: &Path, kernel: &Path, timeout: Duration) -> Result<(), KvmUnusable> {
    use std::io::BufRead;
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-cpu",
            "host",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
            "-serial",
            "stdio",
            "-append",
            "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1",
            "-kernel",
        ])
        .arg(kernel)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| KvmUnusable::new(format!("cannot run {}: {e}", qemu.display())))?;
    let (tx, rx) = std::sync::mpsc::channel::<bool>();
    if let Some(out) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut seen = false;
            for line in std::io::BufReader::new(out)
                .split(b'\n')
                .map_while(Result::ok)
            {
                if String::from_utf8_lossy(&line).contains(KVM_PROOF) {
                    seen = true;
                    break;
                }
            }
            let _ = tx.send(seen);
        });
    }
    // `true` as soon as the kernel speaks; `false` when QEMU closed its output first.
    let proven = rx.recv_timeout(timeout).ok();
    let _ = child.kill();
    let status = child.wait().ok();
    match proven {
        Some(true) => Ok(()),
        _ => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let why = err
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.contains("terminating on signal"))
                .map(str::to_string);
            Err(KvmUnusable::new(why.unwrap_or_else(|| match (proven, status) {
                (Some(false), Some(s)) => format!(
                    "the probe guest ({}) exited ({s}) before printing `{KVM_PROOF}`",
                    kernel.display()
                ),
                _ => format!(
                    "the probe guest ({}) printed no `{KVM_PROOF}` within {} s under KVM: its vCPU does not run a kernel",
                    kernel.display(),
                    timeout.as_secs()
                ),
            })))
        }
    }
}

/// Decide the accelerator. `Kvm` requested but unusable is an error; `Auto` falls back to
/// TCG with a warning.
pub fn probe(
    root: &SysRoot,
    qemu: &Path,
    kernel: Option<&Path>,
    choice: AccelChoice,
) -> Result<AccelProbe, super::VmError> {
    let host_phys_bits = root
        .read_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| parse_phys_bits(&c));
    let tcg = |warning: Option<String>| AccelProbe {
        accel: Accel::Tcg,
        warning,
        host_phys_bits,
    };
    if choice == AccelChoice::Tcg {
        return Ok(tcg(None));
    }
    // One probe per QEMU binary and host kernel boot, shared with `vfioctl check`.
    let verdict = kvm_verdict(root, qemu, kernel).unwrap_or_else(|| {
        Err(KvmUnusable::new(
            "nothing known about KVM here (no /dev/kvm to open, no QEMU)",
        ))
    });
    match (verdict, choice) {
        (Ok(()), _) => Ok(AccelProbe {
            accel: Accel::Kvm,
            warning: None,
            host_phys_bits,
        }),
        (Err(why), AccelChoice::Kvm) => Err(super::VmError::KvmUnusable { reason: why.reason }),
        (Err(why), _) => Ok(tcg(Some(format!(
            "KVM is not usable ({why}); using TCG software emulation: boots are ~10x slower and VFIO devices cannot be passed through"
        )))),
    }
}

/// Where KVM probe verdicts are cached, under the root: one file per QEMU binary and
/// host kernel boot (`check` and `vm up` share it).
pub const PROBE_CACHE_DIR: &str = "/var/cache/vfioctl/kvm-probe";

/// The cache key of a probe: the QEMU binary (resolved path, size, mtime) and the host
/// kernel (release and boot id: a reboot after a firmware change probes again).
pub fn probe_key(root: &SysRoot, qemu: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    use std::os::unix::fs::MetadataExt;
    let exe = resolve_in_path(qemu)?;
    let m = std::fs::metadata(&exe).ok()?;
    let kernel = root.read_attr("/proc/sys/kernel/osrelease").ok()?;
    let boot = root
        .read_attr("/proc/sys/kernel/random/boot_id")
        .unwrap_or_default();
    // v2: the verdict comes from a guest kernel that ran (v1 verdicts were fooled).
    let h = Sha256::digest(format!(
        "vfioctl-kvm-probe v2\0{}\0{}\0{}\0{}\0{kernel}\0{boot}",
        exe.display(),
        m.size(),
        m.mtime(),
        m.mtime_nsec()
    ));
    Some(h.iter().take(12).map(|b| format!("{b:02x}")).collect())
}

fn resolve_in_path(qemu: &Path) -> Option<std::path::PathBuf> {
    if qemu.components().count() > 1 {
        return std::fs::canonicalize(qemu).ok();
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(qemu))
        .find(|p| p.is_file())
        .and_then(|p| std::fs::canonicalize(p).ok())
}

/// Why QEMU cannot run a KVM vCPU on this host: the probe's finding, as it is cached and
/// shown (serialized as the bare string, as before).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(transparent)]
#[error("{reason}")]
pub struct KvmUnusable {
    /// QEMU's first stderr line, or what the probe saw.
    pub reason: String,
}

impl KvmUnusable {
    /// A finding with this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// The JSON schema of the bare string it serializes as (no description of its own: the
/// schema is the one `Result<(), String>` had).
impl schemars::JsonSchema for KvmUnusable {
    fn inline_schema() -> bool {
        <String as schemars::JsonSchema>::inline_schema()
    }
    fn schema_name() -> std::borrow::Cow<'static, str> {
        <String as schemars::JsonSchema>::schema_name()
    }
    fn schema_id() -> std::borrow::Cow<'static, str> {
        <String as schemars::JsonSchema>::schema_id()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        <String as schemars::JsonSchema>::json_schema(generator)
    }
}

impl From<&str> for KvmUnusable {
    fn from(reason: &str) -> Self {
        Self::new(reason)
    }
}

impl From<String> for KvmUnusable {
    fn from(reason: String) -> Self {
        Self::new(reason)
    }
}

/// Debug prints the reason as a string (the log lines that show a verdict stay as they were).
impl std::fmt::Debug for KvmUnusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.reason, f)
    }
}

/// A probe verdict as cached: `Ok` when QEMU ran a KVM vCPU, else why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct CachedProbe {
    /// The QEMU binary probed, as given.
    pub qemu: String,
    /// `Ok` when QEMU ran a KVM vCPU, else why KVM is not usable.
    pub verdict: Result<(), KvmUnusable>,
    /// The probe could not run (no guest kernel to prove KVM with): recorded so that a
    /// snapshot replays the verdict `check` printed, but a live host probes again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub provisional: bool,
}

/// The KVM verdict for `qemu` on this host, from the cache when this QEMU binary was
/// probed before on this kernel boot, else by running the probe (and caching it). With a
/// fixture root (not `/`) QEMU is never run: only a cached verdict in the tree counts.
/// `None` when nothing is known (no QEMU, no cache, no /dev/kvm to open).
pub fn kvm_verdict(
    root: &SysRoot,
    qemu: &Path,
    kernel: Option<&Path>,
) -> Option<Result<(), KvmUnusable>> {
    // Read through the root, so that `vfioctl snapshot` records the verdict `check` used.
    let cached = |abs: &Path| {
        root.read_bytes(abs)
            .ok()
            .and_then(|b| serde_json::from_slice::<CachedProbe>(&b).ok())
    };
    let key = probe_key(root, qemu);
    let file = key
        .as_ref()
        .map(|k| Path::new(PROBE_CACHE_DIR).join(format!("{k}.json")));
    if let Some(c) = file
        .as_deref()
        .and_then(cached)
        .filter(|c| !c.provisional || !root.is_host())
    {
        tracing::info!("KVM probe of {} (cached): {:?}", c.qemu, c.verdict);
        return Some(c.verdict);
    }
    if root.root() != Path::new("/") {
        // A snapshot or fixture of another host: its QEMU binary is not this machine's,
        // so the key cannot match; the verdict recorded there for a QEMU of the same name
        // is the host's (the newest file name wins when there are several).
        let mut names = root.list_opt(PROBE_CACHE_DIR).unwrap_or_default();
        names.sort();
        let want = qemu.display().to_string();
        return names
            .iter()
            .rev()
            .filter(|n| n.ends_with(".json"))
            .filter_map(|n| cached(&Path::new(PROBE_CACHE_DIR).join(n)))
            .find(|c| c.qemu == want)
            .map(|c| c.verdict);
    }
    let mut provisional = false;
    let verdict = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.path("/dev/kvm"))
    {
        Err(e) => Err(KvmUnusable::new(format!("/dev/kvm: {e}"))),
        Ok(_) => {
            let t = Instant::now();
            let v = match kernel.map(Path::to_path_buf).or_else(|| probe_kernel(root)) {
                Some(k) => run_probe(qemu, &k, Duration::from_secs(10)),
                // nothing to prove it with: not cached, the next call may have a kernel
                None => {
                    provisional = true;
                    Err(KvmUnusable::new(
                        "no guest kernel to prove KVM with (pass one, or run scripts/setup for the lab's)",
                    ))
                }
            };
            tracing::info!(
                "KVM probe of {} took {} ms: {v:?}",
                qemu.display(),
                t.elapsed().as_millis()
            );
            v
        }
    };
    if let Some(f) = &file {
        let c = CachedProbe {
            qemu: qemu.display().to_string(),
            verdict: verdict.clone(),
            provisional,
        };
        let written = std::fs::create_dir_all(root.path(PROBE_CACHE_DIR))
            .and_then(|_| std::fs::write(root.path(f), serde_json::to_vec(&c).unwrap_or_default()));
        // read back through the root: a snapshot taken now records this verdict too
        if written.is_ok() {
            let _ = cached(f);
        }
    }
    Some(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phys_bits_from_cpuinfo() {
        let c = "processor\t: 0\naddress sizes\t: 46 bits physical, 57 bits virtual\npower management:\n";
        assert_eq!(parse_phys_bits(c), Some(46));
        assert_eq!(parse_phys_bits("nothing"), None);
    }

    /// A stand-in QEMU: a shell script that prints what a real one printed.
    fn fake_qemu(dir: &Path, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("qemu");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn kvm_counts_only_when_the_guest_kernel_runs() {
        let d = tempfile::tempdir().unwrap();
        let k = d.path().join("vmlinuz");
        std::fs::write(&k, b"kernel").unwrap();
        // A working host: the kernel's first console line arrives.
        let ok = fake_qemu(
            d.path(),
            "echo 'Probing EDD'; echo '[    0.000000] Linux version 6.1.0 (gcc)'; exec sleep 30",
        );
        assert_eq!(run_probe(&ok, &k, Duration::from_secs(10)), Ok(()));
        // The AMD lab machines: the vCPU cannot be created.
        let msr = fake_qemu(
            d.path(),
            "echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69' >&2; exit 1",
        );
        let e = run_probe(&msr, &k, Duration::from_secs(10)).unwrap_err();
        assert!(e.reason.contains("MSR 0x10a"), "{e}");
        // The Intel lab machines: QEMU runs, SeaBIOS and the real-mode setup run, and
        // then nothing (LAB.md fact 7: `cont` + `query-status` succeed there).
        let silent = fake_qemu(
            d.path(),
            "echo 'Probing EDD (edd=off to disable)... ok'; exec sleep 30",
        );
        let e = run_probe(&silent, &k, Duration::from_millis(800)).unwrap_err();
        assert!(e.reason.contains("printed no `Linux version`"), "{e}");
        assert!(e.reason.contains("vmlinuz"), "{e}");
        // A guest that exits without the line.
        let quits = fake_qemu(d.path(), "echo 'Probing EDD'; exit 0");
        let e = run_probe(&quits, &k, Duration::from_secs(10)).unwrap_err();
        assert!(e.reason.contains("exited"), "{e}");
    }
}
