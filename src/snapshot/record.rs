//! The access log: one line per path a command's [`SysRoot`] touched.
//!
//! `vfioctl --access-log FILE <command>` (a hidden flag; `vfioctl snapshot` is its user)
//! wraps the command's root in a [`FileLog`]. Each line is `<access> <host path>`, with
//! `\` and newlines escaped so that any path round-trips.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::Write;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use vfioctl_common::sysroot::{Access, AccessLog};

use super::SnapshotError;

/// The word an access is written as.
pub fn access_name(a: Access) -> &'static str {
    match a {
        Access::Path => "path",
        Access::Read => "read",
        Access::List => "list",
        Access::ReadLink => "readlink",
        Access::Stat => "stat",
        Access::StatNoFollow => "lstat",
        Access::Resolve => "resolve",
        Access::Write => "write",
    }
}

fn access_from(word: &str) -> Option<Access> {
    Some(match word {
        "path" => Access::Path,
        "read" => Access::Read,
        "list" => Access::List,
        "readlink" => Access::ReadLink,
        "stat" => Access::Stat,
        "lstat" => Access::StatNoFollow,
        "resolve" => Access::Resolve,
        "write" => Access::Write,
        _ => return None,
    })
}

/// An [`AccessLog`] appending to a file, deduplicated (a command reads some files once
/// per device). Each new line is written at once, so a command that dies still leaves
/// what it read.
pub struct FileLog {
    inner: Mutex<(File, BTreeSet<(Access, PathBuf)>)>,
}

impl FileLog {
    /// Create (truncate) `path`.
    pub fn create(path: &Path) -> Result<FileLog, SnapshotError> {
        let f = File::create(path).map_err(|source| SnapshotError::Io {
            what: "creating the access log",
            path: path.to_path_buf(),
            source,
        })?;
        Ok(FileLog {
            inner: Mutex::new((f, BTreeSet::new())),
        })
    }
}

impl AccessLog for FileLog {
    fn record(&self, access: Access, abs: &Path) {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if !g.1.insert((access, abs.to_path_buf())) {
            return;
        }
        let mut line = access_name(access).as_bytes().to_vec();
        line.push(b' ');
        for &b in abs.as_os_str().as_bytes() {
            match b {
                b'\\' => line.extend_from_slice(b"\\\\"),
                b'\n' => line.extend_from_slice(b"\\n"),
                _ => line.push(b),
            }
        }
        line.push(b'\n');
        // A log that cannot be written makes the snapshot incomplete, which its own
        // replay check reports; the command itself must not fail for it.
        let _ = g.0.write_all(&line);
    }
}

/// Parse an access log. Lines that do not parse are reported, not skipped.
pub fn parse(log: &Path, bytes: &[u8]) -> Result<Vec<(Access, PathBuf)>, SnapshotError> {
    let mut out = Vec::new();
    for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
        if line.is_empty() {
            continue;
        }
        let bad = || SnapshotError::BadLog {
            path: log.to_path_buf(),
            line: i + 1,
        };
        let sp = line.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let access = std::str::from_utf8(&line[..sp])
            .ok()
            .and_then(access_from)
            .ok_or_else(bad)?;
        let mut path = Vec::with_capacity(line.len() - sp);
        let mut it = line[sp + 1..].iter();
        while let Some(&b) = it.next() {
            if b == b'\\' {
                match it.next() {
                    Some(b'\\') => path.push(b'\\'),
                    Some(b'n') => path.push(b'\n'),
                    _ => return Err(bad()),
                }
            } else {
                path.push(b);
            }
        }
        let path = PathBuf::from(std::ffi::OsString::from_vec(path));
        if !path.is_absolute() {
            return Err(bad());
        }
        out.push((access, path));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_round_trips_odd_paths_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let log = FileLog::create(&p).unwrap();
        log.record(Access::Read, Path::new("/sys/a\\b\nc"));
        log.record(Access::Read, Path::new("/sys/a\\b\nc"));
        log.record(Access::List, Path::new("/sys/bus/pci/devices"));
        drop(log);
        let got = parse(&p, &std::fs::read(&p).unwrap()).unwrap();
        assert_eq!(
            got,
            vec![
                (Access::Read, PathBuf::from("/sys/a\\b\nc")),
                (Access::List, PathBuf::from("/sys/bus/pci/devices")),
            ]
        );
        let e = parse(&p, b"read /x\nfrobnicate /y\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(parse(&p, b"read relative\n").is_err());
    }
}
