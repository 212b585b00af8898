//! The kernel source tree: a directory given by the user, or a tarball (Debian's
//! `linux-source`) checked against the pin and extracted once into the lab cache, with
//! the kernel patches from `kernel-configs/` applied.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use super::cmd::Cmd;
use super::error::{io, KernelError};
use super::flock::FileLock;
use super::lock::{check_series, package_version, LockState, SourceLock};
use super::manifest::{FragmentInfo, KernelPin, SourceInfo};

/// sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, KernelError> {
    let mut f = std::fs::File::open(path).map_err(io(path, "cannot open"))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io(path, "cannot read"))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// sha256 of a file, remembered in `cache` (a JSON map keyed by path, size and mtime) so
/// the 138 MB tarball is hashed once.
pub fn sha256_cached(path: &Path, cache: &Path) -> Result<String, KernelError> {
    let md = std::fs::metadata(path).map_err(io(path, "cannot stat"))?;
    let mtime = md
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let key = format!("{}|{}|{}", path.display(), md.len(), mtime);
    let mut map: BTreeMap<String, String> = std::fs::read_to_string(cache)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if let Some(s) = map.get(&key) {
        return Ok(s.clone());
    }
    let s = sha256_file(path)?;
    map.insert(key, s.clone());
    if let Some(d) = cache.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let _ = std::fs::write(
        cache,
        serde_json::to_string_pretty(&map).unwrap_or_default(),
    );
    Ok(s)
}

/// `VERSION.PATCHLEVEL.SUBLEVEL[EXTRAVERSION]` from a kernel Makefile.
pub fn makefile_version(text: &str) -> Option<String> {
    let get = |k: &str| {
        text.lines().find_map(|l| {
            let (a, b) = l.split_once('=')?;
            (a.trim() == k).then(|| b.trim().to_string())
        })
    };
    Some(format!(
        "{}.{}.{}{}",
        get("VERSION")?,
        get("PATCHLEVEL")?,
        get("SUBLEVEL")?,
        get("EXTRAVERSION").unwrap_or_default()
    ))
}

/// Patch files (`*.patch`) in a directory, in name order, with their hashes.
pub fn patch_list(dir: &Path) -> Result<Vec<FragmentInfo>, KernelError> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    let mut paths: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    paths.sort();
    for p in paths {
        out.push(FragmentInfo {
            name: p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            sha256: sha256_file(&p)?,
            path: p,
        });
    }
    Ok(out)
}

/// Apply patches with `patch -p1` in `dir`. Each is first tried with `--dry-run`, so a
/// patch that no longer applies (a point release changed the lines it touches) stops the
/// build naming the patch, with the tree left as it was.
pub fn apply_patches(dir: &Path, patches: &[FragmentInfo], log: &Path) -> Result<(), KernelError> {
    for p in patches {
        let patch = |dry: bool| {
            let mut c = Cmd::new("patch").args(["-p1", "--forward", "--batch"]);
            if dry {
                c = c.arg("--dry-run");
            }
            c.arg("-i").arg(p.path.display().to_string()).cwd(dir)
        };
        patch(true)
            .run_logged("patch", log)
            .map_err(|_| KernelError::Patch {
                patch: p.path.clone(),
                tree: dir.to_path_buf(),
                log: log.to_path_buf(),
            })?;
        patch(false).run_logged("patch", log)?;
    }
    Ok(())
}

fn stamp_text(sha: &str, patches: &[FragmentInfo]) -> String {
    let mut s = format!("vfioctl-source v1 {sha}\n");
    for p in patches {
        s.push_str(&format!("{} {}\n", p.name, p.sha256));
    }
    s
}

/// A kernel tree ready for `make O=...`.
#[derive(Clone, Debug)]
pub struct Tree {
    /// The tree's top directory (the one with the top-level `Makefile`).
    pub dir: PathBuf,
    /// The kernel version from its Makefile (e.g. `6.1.192`).
    pub version: String,
    /// What the build manifest records about the source.
    pub info: SourceInfo,
    /// Whether it had to be extracted now.
    pub extracted: bool,
}

/// Where the kernel source comes from and what it must be.
#[derive(Clone, Debug)]
pub struct SourceRequest<'a> {
    /// `--source` (a tree or a tarball); `None` = the pinned package's tarball.
    pub given: Option<&'a Path>,
    /// The `[kernel]` pin (tarball, package, series, patches).
    pub pin: &'a KernelPin,
    /// `kernel-configs/` (patches, `manifest.toml`, `kernel.lock`).
    pub configs: &'a Path,
    /// Where tarballs are extracted (`<lab>/kernel-src`).
    pub cache: &'a Path,
    /// Build a source of another series than the pin.
    pub allow_unpinned: bool,
}

/// Resolve `--source` (or the pinned tarball) to a clean tree: a directory is used as
/// it is; a tarball is extracted once per checksum with the pinned patches applied, and
/// must hold a kernel of the pinned series (unless `allow_unpinned`). The result says
/// how the tarball relates to `kernel.lock`.
pub fn prepare(req: &SourceRequest<'_>, log: &Path) -> Result<Tree, KernelError> {
    let pin = req.pin;
    let manifest = req.configs.join("manifest.toml");
    let given = req
        .given
        .map(Path::to_path_buf)
        .unwrap_or_else(|| pin.tarball.clone());
    let src_err = |reason: String| KernelError::Source {
        path: given.clone(),
        reason,
    };
    if given.is_dir() {
        let dir = std::fs::canonicalize(&given).map_err(io(&given, "cannot resolve"))?;
        let mk = std::fs::read_to_string(dir.join("Makefile"))
            .map_err(|_| src_err("no Makefile: not a kernel tree".into()))?;
        if !dir.join("Kconfig").is_file() {
            return Err(src_err("no Kconfig: not a kernel tree".into()));
        }
        if dir.join(".config").exists() || dir.join("include/config").exists() {
            return Err(src_err(
                "the tree has been configured in place (.config or include/config): O= builds need a clean tree".into(),
            ));
        }
        let version =
            makefile_version(&mk).ok_or_else(|| src_err("no version in Makefile".into()))?;
        if !req.allow_unpinned {
            check_series(&dir, &version, &pin.series, &manifest)?;
        }
        return Ok(Tree {
            info: SourceInfo {
                given: given.clone(),
                tree: dir.clone(),
                sha256: None,
                package: None,
                package_version: None,
                lock: LockState::Unpinned,
                patches: Vec::new(),
            },
            dir,
            version,
            extracted: false,
        });
    }
    if !given.is_file() {
        return Err(src_err("not found".into()));
    }
    let given = std::fs::canonicalize(&given).map_err(io(&given, "cannot resolve"))?;
    let cache = req.cache;
    // one extraction at a time per lab (parallel tests, several worktrees)
    let _lock = FileLock::take(&cache.join(".lock"), || {})?;
    let sha = sha256_cached(&given, &cache.join("checksums.json"))?;
    let patches = patch_list(&req.configs.join(&pin.patches))?;
    let root = cache.join(&sha[..12]);
    let stamp = root.join(".vfioctl-source");
    let want = stamp_text(&sha, &patches);
    let mut extracted = false;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        let tmp = cache.join(format!("{}.tmp", &sha[..12]));
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp, "cannot create"))?;
        let untar = Cmd::new("tar")
            .args(["-xf".to_string(), given.display().to_string(), "-C".into()])
            .arg(tmp.display().to_string())
            .run_logged("source", log);
        let top = untar.ok().and_then(|()| single_subdir(&tmp));
        let Some(top) = top else {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(KernelError::Source {
                path: given.clone(),
                reason: "not a kernel source tarball (tar cannot extract it, or it does not hold exactly one top-level directory)".into(),
            });
        };
        // The series before the patches: a patch for 6.1 failing on 6.12 would name the
        // wrong cause.
        let version = std::fs::read_to_string(tmp.join(&top).join("Makefile"))
            .ok()
            .and_then(|m| makefile_version(&m))
            .unwrap_or_default();
        if !req.allow_unpinned {
            if let Err(e) = check_series(&given, &version, &pin.series, &manifest) {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        }
        if let Err(e) = apply_patches(&tmp.join(&top), &patches, log) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::write(tmp.join(".vfioctl-source"), &want)
            .map_err(io(&tmp, "cannot write stamp"))?;
        std::fs::rename(&tmp, &root).map_err(io(&root, "cannot rename"))?;
        extracted = true;
    }
    let top = single_subdir(&root).ok_or_else(|| KernelError::Source {
        path: root.clone(),
        reason: "extracted tree has no single top-level directory".into(),
    })?;
    let dir = root.join(top);
    let mk = std::fs::read_to_string(dir.join("Makefile"))
        .map_err(io(dir.join("Makefile"), "cannot read"))?;
    let version = makefile_version(&mk).unwrap_or_default();
    let in_pin = super::lock::in_series(&pin.series, &version);
    if !in_pin && !req.allow_unpinned {
        check_series(&given, &version, &pin.series, &manifest)?;
    }
    // The package version only when this is the package's own tarball.
    let packaged = std::fs::canonicalize(&pin.tarball).ok().as_ref() == Some(&given);
    let lock = if in_pin {
        LockState::of(&sha, SourceLock::read(req.configs, &pin.lock)?.as_ref())
    } else {
        LockState::Unpinned
    };
    Ok(Tree {
        info: SourceInfo {
            given,
            tree: dir.clone(),
            sha256: Some(sha),
            package: packaged.then(|| pin.package.clone()),
            package_version: if packaged {
                package_version(&pin.package)
            } else {
                None
            },
            lock,
            patches,
        },
        dir,
        version,
        extracted,
    })
}

fn single_subdir(dir: &Path) -> Option<String> {
    let subs: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    (subs.len() == 1).then(|| subs[0].clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_from_makefile() {
        let mk = "# SPDX\nVERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = 192\nEXTRAVERSION =\nNAME = x\n";
        assert_eq!(makefile_version(mk).as_deref(), Some("6.1.192"));
        assert_eq!(
            makefile_version("VERSION = 6\nPATCHLEVEL = 9\nSUBLEVEL = 0\nEXTRAVERSION = -rc1\n")
                .as_deref(),
            Some("6.9.0-rc1")
        );
        assert_eq!(makefile_version("nothing"), None);
    }

    #[test]
    fn checksum_cache_is_keyed_by_file_state() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("t.tar");
        std::fs::write(&f, b"abc").unwrap();
        let c = d.path().join("c/checksums.json");
        let s = sha256_cached(&f, &c).unwrap();
        assert_eq!(
            s,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(std::fs::read_to_string(&c).unwrap().contains(&s));
        assert_eq!(sha256_cached(&f, &c).unwrap(), s);
    }
}
