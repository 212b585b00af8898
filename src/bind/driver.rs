//! Finding and loading the target driver.
//!
//! - [`best_vfio_variant`]: libvirt's `virPCIDeviceFindBestVFIOVariant`: match the device's
//!   `modalias` against `alias vfio_pci:...` lines of `modules.alias`; the pattern with the
//!   fewest `*` wins; no match means plain `vfio-pci`.
//! - [`ensure_loaded`]: the driver's directory under `/sys/bus/pci/drivers` (trying `-` and
//!   `_` spellings); when missing, `modprobe <module>` on the real host. Under a `--root`
//!   other than `/` vfioctl never loads a module into the running kernel: the tree must
//!   already contain the driver directory (that is how a fixture "provides" the module).

use std::process::Command;

use serde::Serialize;
use vfioctl_common::{Bdf, SysRoot};

use super::error::BindError;

/// The kernel release the root runs (`/proc/sys/kernel/osrelease`).
pub fn kernel_release(root: &SysRoot) -> Option<String> {
    root.read_attr_opt("/proc/sys/kernel/osrelease")
        .ok()
        .flatten()
}

/// `fnmatch` for the `*` and `?` that modules.alias uses.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

/// The best vfio variant module for `modalias` (`pci:v000010DEd...`) given the text of
/// `modules.alias`; `None` when no `vfio_pci:` alias matches.
pub fn best_vfio_variant(modules_alias: &str, modalias: &str) -> Option<String> {
    let want = format!("vfio_{modalias}");
    let mut best: Option<(usize, &str)> = None;
    for line in modules_alias.lines() {
        let mut f = line.split_whitespace();
        if f.next() != Some("alias") {
            continue;
        }
        let (Some(pat), Some(module)) = (f.next(), f.next()) else {
            continue;
        };
        if !pat.starts_with("vfio_pci:") || !glob_match(pat.as_bytes(), want.as_bytes()) {
            continue;
        }
        let stars = pat.bytes().filter(|b| *b == b'*').count();
        if best.is_none_or(|(s, _)| stars < s) {
            best = Some((stars, module));
        }
    }
    best.map(|(_, m)| m.to_string())
}

/// Pick the driver for `bdf` when `--driver auto`: a variant from modules.alias, else
/// `vfio-pci`.
pub fn auto_driver(root: &SysRoot, bdf: Bdf) -> String {
    let Some(modalias) = root
        .read_attr_opt(format!("{}/modalias", bdf.sysfs_path()))
        .ok()
        .flatten()
    else {
        return "vfio-pci".into();
    };
    let Some(kver) = kernel_release(root) else {
        return "vfio-pci".into();
    };
    let aliases = root
        .read_string(format!("/lib/modules/{kver}/modules.alias"))
        .unwrap_or_default();
    best_vfio_variant(&aliases, &modalias).unwrap_or_else(|| "vfio-pci".into())
}

/// The directory name the driver has under `/sys/bus/pci/drivers`, if loaded.
pub fn driver_dir(root: &SysRoot, driver: &str) -> Option<String> {
    let a = driver.to_string();
    let b = driver.replace('-', "_");
    let c = driver.replace('_', "-");
    [a, b, c]
        .into_iter()
        .find(|n| root.is_dir(format!("/sys/bus/pci/drivers/{n}")))
}

/// How the target driver was made available.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case", tag = "how")]
pub enum Loaded {
    /// The driver was already registered.
    AlreadyLoaded {
        /// The driver's name as registered under `/sys/bus/pci/drivers/`.
        driver: String,
    },
    /// vfioctl ran `modprobe`.
    Modprobe {
        /// The driver's name as registered under `/sys/bus/pci/drivers/`.
        driver: String,
        /// The module loaded (the driver name with `-` as `_`).
        module: String,
    },
}

impl Loaded {
    /// The driver's registered name.
    pub fn driver(&self) -> &str {
        match self {
            Loaded::AlreadyLoaded { driver } | Loaded::Modprobe { driver, .. } => driver,
        }
    }
    /// Whether vfioctl loaded it (so `restore` may unload it).
    pub fn by_vfioctl(&self) -> bool {
        matches!(self, Loaded::Modprobe { .. })
    }
}

/// What `ensure_loaded` would do, for `--dry-run`: `modprobe <module>` when the driver is
/// not registered. The line is the same for any `--root`, so that a dry run against a
/// snapshot of a host prints what it prints on that host (`vfioctl snapshot`); that a
/// real bind under another root loads nothing is said by [`ensure_loaded`]'s error and by
/// the dry run's note on standard error.
pub fn describe_load(root: &SysRoot, driver: &str) -> Option<String> {
    if driver_dir(root, driver).is_some() {
        return None;
    }
    Some(format!("modprobe {}", driver.replace('-', "_")))
}

/// Make sure `driver` is registered with the PCI bus; load its module on the real host.
pub fn ensure_loaded(root: &SysRoot, driver: &str) -> Result<Loaded, BindError> {
    if let Some(d) = driver_dir(root, driver) {
        return Ok(Loaded::AlreadyLoaded { driver: d });
    }
    let module = driver.replace('-', "_");
    if !root.is_host() {
        return Err(BindError::DriverMissing {
            driver: driver.into(),
            reason: format!(
                "/sys/bus/pci/drivers/{driver} is not in --root {}, and vfioctl does not load modules into the running kernel for another root",
                root.root().display()
            )
            .into(),
        });
    }
    let command = format!("modprobe {module}");
    let out = Command::new("modprobe")
        .arg(&module)
        .output()
        .map_err(|e| BindError::Modprobe {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(BindError::Modprobe {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    match driver_dir(root, driver) {
        Some(d) => Ok(Loaded::Modprobe { driver: d, module }),
        None => Err(BindError::DriverMissing {
            driver: driver.into(),
            reason: format!(
                "`{command}` succeeded but /sys/bus/pci/drivers/{driver} did not appear"
            )
            .into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALIASES: &str = "\
alias pci:v000010DEd*sv*sd*bc03sc*i* nvidia
alias vfio_pci:v000010DEd00002342sv*sd*bc*sc*i* nvgrace_gpu_vfio_pci
alias vfio_pci:v000010DEd*sv*sd*bc*sc*i* generic_nv_vfio_pci
alias vfio_pci:v00001DD8d00000008sv*sd*bc*sc*i* pds_vfio_pci
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
";

    #[test]
    fn fewest_wildcards_wins() {
        let gh = "pci:v000010DEd00002342sv000010DEsd000016EBbc03sc02i00";
        assert_eq!(
            best_vfio_variant(ALIASES, gh).as_deref(),
            Some("nvgrace_gpu_vfio_pci")
        );
        let other = "pci:v000010DEd00002330sv000010DEsd000016C1bc03sc02i00";
        assert_eq!(
            best_vfio_variant(ALIASES, other).as_deref(),
            Some("generic_nv_vfio_pci")
        );
        let nic = "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00";
        assert_eq!(best_vfio_variant(ALIASES, nic), None);
    }

    #[test]
    fn glob() {
        assert!(glob_match(b"a*c", b"abbbc"));
        assert!(glob_match(b"a?c", b"abc"));
        assert!(!glob_match(b"a*d", b"abc"));
        assert!(glob_match(b"*", b""));
    }

    #[test]
    fn fixture_root_never_runs_modprobe() {
        let t = tempfile::tempdir().unwrap();
        let root = SysRoot::new(t.path());
        let e = ensure_loaded(&root, "vfio-pci").unwrap_err();
        assert!(e.to_string().contains("vfio-pci"), "{e}");
        assert_eq!(
            describe_load(&root, "vfio-pci").as_deref(),
            Some("modprobe vfio_pci")
        );
        std::fs::create_dir_all(t.path().join("sys/bus/pci/drivers/vfio-pci")).unwrap();
        assert_eq!(
            ensure_loaded(&root, "vfio_pci").unwrap(),
            Loaded::AlreadyLoaded {
                driver: "vfio-pci".into()
            }
        );
    }
}
