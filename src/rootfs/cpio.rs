//! The cpio "newc" format (`070701`) the kernel unpacks as an initramfs, written
//! deterministically: entries in path order, inode numbers by position, owner root,
//! one fixed mtime.

use std::io::{self, Write};

/// What one archive entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link with its target.
    Symlink(String),
    /// A character device node.
    CharDev {
        /// The device's major number.
        major: u32,
        /// The device's minor number.
        minor: u32,
    },
}

/// One entry: a path relative to the root (`init`, `lib/modules/...`), a permission mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The path relative to the archive root, without a leading `/`.
    pub path: String,
    /// The permission bits (only the low 12 are used; the file type comes from `kind`).
    pub mode: u32,
    /// What the entry is.
    pub kind: Kind,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

fn pad4(w: &mut impl Write, len: usize) -> io::Result<usize> {
    let pad = (4 - len % 4) % 4;
    w.write_all(&[0u8; 3][..pad])?;
    Ok(pad)
}

#[allow(clippy::too_many_arguments)]
fn header(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> io::Result<usize> {
    let namesize = name.len() + 1;
    let h = format!(
        "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{mtime:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{namesize:08x}{:08x}",
        0, 0, 0, 0, rdev.0, rdev.1, 0
    );
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    let n = h.len() + namesize;
    Ok(n + pad4(w, n)?)
}

/// Whether `path` is a name the archive may carry: relative, no empty, `.` or `..`
/// components, no NUL. The kernel's unpacker would follow a `../` name out of the root.
pub fn is_safe_name(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Write `entries` (sorted by path here, so callers need not) and the trailer. A name
/// that [`is_safe_name`] refuses is an `InvalidInput` error, and nothing is written.
pub fn write(w: &mut impl Write, entries: &[Entry], mtime: u32) -> io::Result<()> {
    if let Some(bad) = entries.iter().find(|e| !is_safe_name(&e.path)) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("archive name {:?} is not a plain relative path", bad.path),
        ));
    }
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for (i, e) in sorted.iter().enumerate() {
        let ino = u32::try_from(i + 1).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "more than 2^32 archive entries",
            )
        })?;
        let perm = e.mode & 0o7777;
        let (mode, nlink, data, rdev): (u32, u32, &[u8], (u32, u32)) = match &e.kind {
            Kind::Dir => (S_IFDIR | perm, 2, &[], (0, 0)),
            Kind::File(d) => (S_IFREG | perm, 1, d, (0, 0)),
            Kind::Symlink(t) => (S_IFLNK | 0o777, 1, t.as_bytes(), (0, 0)),
            Kind::CharDev { major, minor } => (S_IFCHR | perm, 1, &[], (*major, *minor)),
        };
        header(w, ino, mode, nlink, mtime, data.len(), rdev, &e.path)?;
        w.write_all(data)?;
        pad4(w, data.len())?;
    }
    header(w, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_climb_out_are_refused() {
        for bad in [
            "../etc/passwd",
            "a/../../b",
            "/abs",
            "",
            "a//b",
            "./a",
            "a/.",
        ] {
            assert!(!is_safe_name(bad), "{bad}");
            let e = Entry {
                path: bad.into(),
                mode: 0o644,
                kind: Kind::File(vec![]),
            };
            let mut out = Vec::new();
            assert!(write(&mut out, &[e], 0).is_err(), "{bad}");
            assert!(out.is_empty());
        }
        assert!(is_safe_name("usr/bin/x"));
    }

    #[test]
    fn newc_layout_and_order() {
        let entries = vec![
            Entry {
                path: "init".into(),
                mode: 0o755,
                kind: Kind::File(b"abc".to_vec()),
            },
            Entry {
                path: "dev".into(),
                mode: 0o755,
                kind: Kind::Dir,
            },
            Entry {
                path: "dev/console".into(),
                mode: 0o600,
                kind: Kind::CharDev { major: 5, minor: 1 },
            },
        ];
        let mut out = Vec::new();
        write(&mut out, &entries, 0).unwrap();
        assert_eq!(out.len() % 4, 0);
        let s = String::from_utf8_lossy(&out);
        // dev, dev/console, init, trailer: in that order, inodes 1..3.
        let dev = s.find("dev\0").unwrap();
        let console = s.find("dev/console\0").unwrap();
        let init = s.find("init\0").unwrap();
        assert!(dev < console && console < init);
        assert!(s.ends_with("TRAILER!!!\0\0\0\0") || s.contains("TRAILER!!!"));
        assert_eq!(&out[..6], b"070701");
        // First header: ino 1, directory mode.
        assert_eq!(&out[6..14], b"00000001");
        assert_eq!(&out[14..22], b"000041ed");
        // The same input gives the same bytes, in any input order.
        let mut rev = entries.clone();
        rev.reverse();
        let mut out2 = Vec::new();
        write(&mut out2, &rev, 0).unwrap();
        assert_eq!(out, out2);
        // cpio(1) reads it back, when installed.
        if let Ok(mut child) = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            child.stdin.take().unwrap().write_all(&out).unwrap();
            let o = child.wait_with_output().unwrap();
            assert!(o.status.success());
            assert_eq!(
                String::from_utf8_lossy(&o.stdout),
                "dev\ndev/console\ninit\n"
            );
        }
    }
}
