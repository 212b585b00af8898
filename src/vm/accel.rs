//! Which accelerator QEMU can really use, and the CPU's physical address width.
//!
//! `/dev/kvm` existing proves nothing: on the lab machines it exists, `query-kvm` on
//! `-machine none` even says enabled, yet creating a vCPU aborts with "failed to set MSR
//! 0x10a". The probe therefore starts the same machine type with `-cpu host`, paused,
//! lets it run (`cont`) and asks `query-status`; only an orderly `quit` counts as KVM.

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vfioctl_common::SysRoot;

use super::profile::AccelChoice;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelProbe {
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

/// Why KVM was judged unusable, from the probe's output (pure).
pub fn judge_kvm_probe(exit_ok: bool, stdout: &str, stderr: &str) -> Result<(), String> {
    let enabled = stdout.lines().any(|l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v.get("return")?.get("enabled")?.as_bool())
            == Some(true)
    });
    let err = stderr
        .lines()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_string());
    if !exit_ok {
        return Err(err.unwrap_or_else(|| "QEMU exited abnormally".into()));
    }
    if !enabled {
        return Err("query-kvm reports KVM not enabled".into());
    }
    if let Some(e) = err.filter(|e| e.contains("error") || e.contains("failed")) {
        return Err(e);
    }
    Ok(())
}

fn run_probe(qemu: &Path, timeout: Duration) -> Result<(), String> {
    let mut child = Command::new(qemu)
        .args([
            "-accel",
            "kvm",
            "-machine",
            "q35",
            "-cpu",
            "host",
            "-m",
            "64",
            "-nodefaults",
            "-display",
            "none",
            "-S",
            "-qmp",
            "stdio",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", qemu.display()))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(
            concat!(
                r#"{"execute":"qmp_capabilities"}"#,
                "\n",
                r#"{"execute":"query-kvm"}"#,
                "\n",
                r#"{"execute":"cont"}"#,
                "\n",
                r#"{"execute":"query-status"}"#,
                "\n",
                r#"{"execute":"quit"}"#,
                "\n"
            )
            .as_bytes(),
        );
    }
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("probe did not finish in {}s", timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(e.to_string()),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    judge_kvm_probe(status.success(), &out, &err)
}

/// Decide the accelerator. `Kvm` requested but unusable is an error; `Auto` falls back to
/// TCG with a warning.
pub fn probe(
    root: &SysRoot,
    qemu: &Path,
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
    // One probe per QEMU binary and kernel boot, shared with `vfioctl check`.
    let verdict = match kvm_verdict(root, qemu) {
        Some(v) => v,
        None => match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(root.path("/dev/kvm"))
        {
            Err(e) => Err(format!("/dev/kvm: {e}")),
            Ok(_) => run_probe(qemu, Duration::from_secs(15)),
        },
    };
    match (verdict, choice) {
        (Ok(()), _) => Ok(AccelProbe {
            accel: Accel::Kvm,
            warning: None,
            host_phys_bits,
        }),
        (Err(why), AccelChoice::Kvm) => Err(super::VmError::KvmUnusable { reason: why }),
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
    let h = Sha256::digest(format!(
        "{}\0{}\0{}\0{}\0{kernel}\0{boot}",
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

/// A probe verdict as cached: `Ok` when QEMU ran a KVM vCPU, else why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedProbe {
    pub qemu: String,
    pub verdict: Result<(), String>,
}

/// The KVM verdict for `qemu` on this host, from the cache when this QEMU binary was
/// probed before on this kernel boot, else by running the probe (and caching it). With a
/// fixture root (not `/`) QEMU is never run: only a cached verdict in the tree counts.
/// `None` when nothing is known (no QEMU, no cache, no /dev/kvm to open).
pub fn kvm_verdict(root: &SysRoot, qemu: &Path) -> Option<Result<(), String>> {
    let key = probe_key(root, qemu);
    let file = key
        .as_ref()
        .map(|k| root.path(PROBE_CACHE_DIR).join(format!("{k}.json")));
    if let Some(c) = file
        .as_ref()
        .and_then(|f| std::fs::read(f).ok())
        .and_then(|b| serde_json::from_slice::<CachedProbe>(&b).ok())
    {
        tracing::info!("KVM probe of {} (cached): {:?}", c.qemu, c.verdict);
        return Some(c.verdict);
    }
    if root.root() != Path::new("/") {
        return None;
    }
    let verdict = match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(root.path("/dev/kvm"))
    {
        Err(e) => Err(format!("/dev/kvm: {e}")),
        Ok(_) => {
            let t = Instant::now();
            let v = run_probe(qemu, Duration::from_secs(15));
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
        };
        let _ = std::fs::create_dir_all(root.path(PROBE_CACHE_DIR))
            .and_then(|_| std::fs::write(f, serde_json::to_vec(&c).unwrap_or_default()));
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

    #[test]
    fn probe_verdicts_from_recorded_output() {
        // The lab machine: the vCPU cannot be created.
        let e = judge_kvm_probe(
            false,
            "{\"QMP\": {}}\n",
            "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\nqemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion failed.\n",
        )
        .unwrap_err();
        assert!(e.contains("MSR 0x10a"), "{e}");
        // A working host.
        let ok = "{\"QMP\": {}}\n{\"return\": {}}\n{\"return\": {\"enabled\": true, \"present\": true}}\n{\"return\": {}}\n{\"return\": {\"status\": \"running\", \"singlestep\": false, \"running\": true}}\n{\"return\": {}}\n";
        assert!(judge_kvm_probe(true, ok, "").is_ok());
        assert!(judge_kvm_probe(
            true,
            "{\"return\": {\"enabled\": false, \"present\": true}}",
            ""
        )
        .is_err());
    }
}
