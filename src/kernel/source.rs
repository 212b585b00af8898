//! The kernel source tree: a directory given by the user, or a tarball (Debian's
//! `linux-source`) checked against the pin and extracted once into the lab cache, with
//! the kernel patches from `kernel-configs/` applied.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::Digest;

use super::cmd::Cmd;
use super::error::{io, KernelError};
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

/// Apply patches with `patch -p1` in `dir`.
pub fn apply_patches(dir: &Path, patches: &[FragmentInfo], log: &Path) -> Result<(), KernelError> {
    for p in patches {
        Cmd::new("patch")
            .args(["-p1", "--forward", "--batch", "-i"])
            .arg(p.path.display().to_string())
            .cwd(dir)
            .run_logged("patch", log)?;
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
    pub dir: PathBuf,
    pub version: String,
    pub info: SourceInfo,
    /// Whether it had to be extracted now.
    pub extracted: bool,
}

/// Resolve `--source` (or the pinned tarball) to a clean tree.
pub fn prepare(
    given: Option<&Path>,
    pin: &KernelPin,
    configs: &Path,
    cache: &Path,
    allow_unpinned: bool,
    log: &Path,
) -> Result<Tree, KernelError> {
    let given = given
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
        return Ok(Tree {
            info: SourceInfo {
                given: given.clone(),
                tree: dir.clone(),
                sha256: None,
                pinned: version == pin.version,
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
    // one extraction at a time per lab (parallel tests, several worktrees)
    let _lock = super::build::Lock::take(&cache.join(".lock"), || {})?;
    let sha = sha256_cached(&given, &cache.join("checksums.json"))?;
    let pinned = sha == pin.sha256;
    if !pinned && !allow_unpinned {
        return Err(KernelError::Checksum {
            path: given,
            want: pin.sha256.clone(),
            got: sha,
        });
    }
    let patches = patch_list(&configs.join(&pin.patches))?;
    let root = cache.join(&sha[..12]);
    let stamp = root.join(".vfioctl-source");
    let want = stamp_text(&sha, &patches);
    let mut extracted = false;
    if std::fs::read_to_string(&stamp).ok().as_deref() != Some(want.as_str()) {
        let tmp = cache.join(format!("{}.tmp", &sha[..12]));
        let _ = std::fs::remove_dir_all(&tmp);
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp, "cannot create"))?;
        Cmd::new("tar")
            .args(["-xf".to_string(), given.display().to_string(), "-C".into()])
            .arg(tmp.display().to_string())
            .run_logged("source", log)?;
        let top = single_subdir(&tmp).ok_or_else(|| KernelError::Source {
            path: given.clone(),
            reason: "the tarball does not hold exactly one top-level directory".into(),
        })?;
        apply_patches(&tmp.join(&top), &patches, log)?;
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
    Ok(Tree {
        info: SourceInfo {
            given,
            tree: dir.clone(),
            sha256: Some(sha),
            pinned,
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
