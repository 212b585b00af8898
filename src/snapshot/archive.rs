//! `.tar.zst`: the snapshot tree as one small file to attach to an issue.
//!
//! The tar is deterministic (sorted entries, owner 0, time 0, modes 0644/0755/0777) so the
//! same tree gives the same bytes; zstd is the pure-Rust `ruzstd` (no C library, so the
//! static guest build of vfioctl takes snapshots too). Unpacking accepts only
//! directories, regular files and symlinks at plain relative paths, writes nothing outside
//! the destination (`tar::Entry::unpack_in`) and stops past [`MAX_UNPACKED`] bytes.

use std::fs;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::error::io;
use super::SnapshotError;

/// The most bytes a snapshot archive may unpack to (real ones are a few MiB).
pub const MAX_UNPACKED: u64 = 512 << 20;

/// True when `p` names a compressed archive rather than a directory.
pub fn is_archive(p: &Path) -> bool {
    let s = p.to_string_lossy();
    s.ends_with(".tar.zst") || s.ends_with(".tzst")
}

/// Every path under `dir` (relative), sorted, not following symlinks.
fn walk(dir: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), SnapshotError> {
    let full = dir.join(rel);
    let mut names: Vec<_> = fs::read_dir(&full)
        .map_err(io("listing", &full))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(io("listing", &full))?;
    names.sort();
    for n in names {
        let r = rel.join(&n);
        let md = fs::symlink_metadata(dir.join(&r)).map_err(io("reading", &dir.join(&r)))?;
        out.push(r.clone());
        if md.is_dir() {
            walk(dir, &r, out)?;
        }
    }
    Ok(())
}

/// The tree at `dir` as zstd-compressed tar bytes.
pub fn pack(dir: &Path) -> Result<Vec<u8>, SnapshotError> {
    let mut paths = Vec::new();
    walk(dir, Path::new(""), &mut paths)?;
    let mut b = tar::Builder::new(Vec::new());
    for r in &paths {
        let full = dir.join(r);
        let md = fs::symlink_metadata(&full).map_err(io("reading", &full))?;
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        if md.file_type().is_symlink() {
            let t = fs::read_link(&full).map_err(io("reading the link", &full))?;
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_mode(0o777);
            h.set_size(0);
            b.append_link(&mut h, r, &t)
                .map_err(io("archiving", &full))?;
        } else if md.is_dir() {
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            b.append_data(&mut h, r, std::io::empty())
                .map_err(io("archiving", &full))?;
        } else {
            let data = fs::read(&full).map_err(io("reading", &full))?;
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, r, data.as_slice())
                .map_err(io("archiving", &full))?;
        }
    }
    let tar = b.into_inner().map_err(io("archiving", dir))?;
    Ok(ruzstd::encoding::compress_to_vec(
        tar.as_slice(),
        ruzstd::encoding::CompressionLevel::Fastest,
    ))
}

/// Unpack the archive `file` into the existing empty directory `dest`.
pub fn unpack(file: &Path, dest: &Path) -> Result<(), SnapshotError> {
    let bytes = fs::read(file).map_err(io("reading", file))?;
    let zstd = |e: &dyn std::fmt::Display| SnapshotError::Zstd {
        path: file.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()),
    };
    let dec = ruzstd::decoding::StreamingDecoder::new(bytes.as_slice()).map_err(|e| zstd(&e))?;
    let mut ar = tar::Archive::new(dec.take(MAX_UNPACKED + 1));
    let mut total: u64 = 0;
    let entries = ar.entries().map_err(|e| zstd(&e))?;
    for e in entries {
        let mut e = e.map_err(|e| zstd(&e))?;
        let path = e.path().map_err(|e| zstd(&e))?.into_owned();
        let plain = !path.as_os_str().is_empty()
            && path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
        let kind = e.header().entry_type();
        let allowed = matches!(
            kind,
            tar::EntryType::Directory | tar::EntryType::Regular | tar::EntryType::Symlink
        );
        if !plain || !allowed {
            return Err(SnapshotError::UnsafeEntry {
                path: file.to_path_buf(),
                entry: format!("{} ({kind:?})", path.display()),
            });
        }
        total = total.saturating_add(e.header().size().unwrap_or(0));
        if total > MAX_UNPACKED {
            return Err(SnapshotError::TooLarge {
                path: file.to_path_buf(),
                limit: MAX_UNPACKED,
            });
        }
        e.set_preserve_permissions(false);
        e.unpack_in(dest).map_err(io("unpacking into", dest))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_links_files_and_dirs() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        fs::create_dir_all(src.join("sys/devices/pci0000:00/0000:00:02.0")).unwrap();
        fs::create_dir_all(src.join("sys/bus/pci/devices")).unwrap();
        fs::write(
            src.join("sys/devices/pci0000:00/0000:00:02.0/vendor"),
            "0x8086\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../../../devices/pci0000:00/0000:00:02.0",
            src.join("sys/bus/pci/devices/0000:00:02.0"),
        )
        .unwrap();
        let bytes = pack(&src).unwrap();
        assert_eq!(bytes, pack(&src).unwrap(), "deterministic");
        let f = t.path().join("s.tar.zst");
        fs::write(&f, &bytes).unwrap();
        let dst = t.path().join("dst");
        fs::create_dir(&dst).unwrap();
        unpack(&f, &dst).unwrap();
        assert_eq!(
            fs::read_to_string(dst.join("sys/bus/pci/devices/0000:00:02.0/vendor")).unwrap(),
            "0x8086\n"
        );
        assert_eq!(
            fs::read_link(dst.join("sys/bus/pci/devices/0000:00:02.0")).unwrap(),
            Path::new("../../../devices/pci0000:00/0000:00:02.0")
        );
    }

    #[test]
    fn hostile_archives_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let mk = |name: &str, kind: tar::EntryType| {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(1);
            h.set_mode(0o644);
            // set_path refuses `..`; write the name bytes directly as a hostile tool would.
            let raw = &mut h.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_cksum();
            b.append(&h, &b"x"[..]).unwrap();
            let f = t.path().join(format!("{}.tar.zst", name.replace('/', "_")));
            let tar = b.into_inner().unwrap();
            fs::write(
                &f,
                ruzstd::encoding::compress_to_vec(
                    tar.as_slice(),
                    ruzstd::encoding::CompressionLevel::Fastest,
                ),
            )
            .unwrap();
            f
        };
        for (name, kind) in [
            ("../escape", tar::EntryType::Regular),
            ("/etc/passwd", tar::EntryType::Regular),
            ("sys/fifo", tar::EntryType::Fifo),
            ("dev/sda", tar::EntryType::Block),
        ] {
            let d = t.path().join(format!("d{}", name.replace('/', "_")));
            fs::create_dir(&d).unwrap();
            let e = unpack(&mk(name, kind), &d).unwrap_err();
            assert!(
                matches!(e, SnapshotError::UnsafeEntry { .. }),
                "{name}: {e}"
            );
        }
        let junk = t.path().join("junk.tar.zst");
        fs::write(&junk, b"not zstd at all").unwrap();
        let d = t.path().join("junk");
        fs::create_dir(&d).unwrap();
        assert!(matches!(
            unpack(&junk, &d).unwrap_err(),
            SnapshotError::Zstd { .. }
        ));
    }
}
