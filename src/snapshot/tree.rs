//! Building the snapshot tree from what the commands touched.
//!
//! Each recorded access is replayed against the source root, one path component at a
//! time as the kernel resolves it: every directory on the way becomes a directory, every
//! symlink on the way is copied as a symlink (target text unchanged: sysfs's relative
//! `../../../devices/...` links keep working under any root) and then followed. What the
//! access itself needs is taken at the end: the contents of a file that was read, the
//! entry names of a directory that was listed (as empty placeholders, links as links), the
//! type of a path that was only tested. Device nodes under `/dev` are names only.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Component, Path, PathBuf};

use vfioctl_common::sysroot::Access;
use vfioctl_common::SysRoot;

use super::error::io;
use super::redact::{self, Redactor};
use super::SnapshotError;

/// The most symlinks followed while resolving one path (the kernel's limit is 40).
const MAX_LINKS: u32 = 40;
/// Files larger than this are not copied for an unspecified use ([`Access::Path`]).
const MAX_PATH_COPY: u64 = 1 << 20;

/// What one tree entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A symlink with the target text the source had.
    Link(PathBuf),
    /// A file with its contents as read (`bytes` long).
    File {
        /// Its size, in bytes.
        bytes: u64,
    },
    /// Named in a listing or tested for existence only: an empty placeholder.
    Name,
    /// A file whose contents were replaced (`why`).
    Redacted {
        /// The size of the replaced contents, in bytes.
        bytes: u64,
        /// What was replaced.
        why: String,
    },
    /// A file the source would not let be read (the error); an empty placeholder.
    Unreadable(String),
}

impl Kind {
    fn word(&self) -> &'static str {
        match self {
            Kind::Dir => "dir",
            Kind::Link(_) => "link",
            Kind::File { .. } => "file",
            Kind::Name => "name",
            Kind::Redacted { .. } => "redacted",
            Kind::Unreadable(_) => "unreadable",
        }
    }
}

/// One entry and the reasons it is in the tree: how it was used, and by which commands.
#[derive(Clone, Debug)]
pub struct Entry {
    /// What the entry is.
    pub kind: Kind,
    /// How it was used (`read`, `listed`, `opened`, `tested`, `followed`) to the labels of
    /// the commands that used it so.
    pub why: BTreeMap<&'static str, BTreeSet<String>>,
}

/// Counts for the report.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Counts {
    /// Directories.
    pub dirs: usize,
    /// Files copied as read.
    pub files: usize,
    /// Symlinks.
    pub links: usize,
    /// Empty placeholders (listed or tested names, device nodes).
    pub names: usize,
    /// Files whose contents were replaced.
    pub redacted: usize,
    /// Files that could not be read (empty placeholders).
    pub unreadable: usize,
    /// Bytes of file contents.
    pub bytes: u64,
}

/// The tree being built: the source root, the destination directory and every entry so
/// far, keyed by host-absolute path.
pub struct Tree {
    src: SysRoot,
    dst: PathBuf,
    redactor: Redactor,
    entries: BTreeMap<PathBuf, Entry>,
}

fn rel(abs: &Path) -> &Path {
    abs.strip_prefix("/").unwrap_or(abs)
}

/// `/proc/<pid>/fd`.
fn is_fd_dir(abs: &Path) -> bool {
    let c: Vec<_> = abs.components().collect();
    c.len() == 4
        && c[1].as_os_str() == "proc"
        && c[2]
            .as_os_str()
            .to_str()
            .is_some_and(|p| p.bytes().all(|b| b.is_ascii_digit()))
        && c[3].as_os_str() == "fd"
}

/// Binary files whose reading has side effects or returns device memory: never copied
/// for an unspecified use.
fn never_copy(abs: &Path) -> bool {
    if abs.starts_with("/dev") {
        return true;
    }
    let name = abs.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name == "rom"
        || name.starts_with("resource") && name.len() > "resource".len()
        || name == "vpd"
        || name == "remove"
        || name == "reset"
        || name == "rescan"
}

impl Tree {
    /// A tree copying from `src` into the (new, empty) directory `dst`.
    pub fn new(src: SysRoot, dst: PathBuf, redactor: Redactor) -> Tree {
        Tree {
            src,
            dst,
            redactor,
            entries: BTreeMap::new(),
        }
    }

    /// Every entry, by absolute path on the source.
    pub fn entries(&self) -> &BTreeMap<PathBuf, Entry> {
        &self.entries
    }

    /// How many entries of each kind, and the bytes copied.
    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for e in self.entries.values() {
            match &e.kind {
                Kind::Dir => c.dirs += 1,
                Kind::Link(_) => c.links += 1,
                Kind::File { bytes } => {
                    c.files += 1;
                    c.bytes += bytes;
                }
                Kind::Name => c.names += 1,
                Kind::Redacted { bytes, .. } => {
                    c.redacted += 1;
                    c.bytes += bytes;
                }
                Kind::Unreadable(_) => c.unreadable += 1,
            }
        }
        c
    }

    fn src_path(&self, abs: &Path) -> PathBuf {
        self.src.root().join(rel(abs))
    }

    fn dst_path(&self, abs: &Path) -> PathBuf {
        self.dst.join(rel(abs))
    }

    fn why(&mut self, abs: &Path, verb: &'static str, label: &str) {
        if let Some(e) = self.entries.get_mut(abs) {
            e.why.entry(verb).or_default().insert(label.to_string());
        }
    }

    fn add(&mut self, abs: &Path, kind: Kind, verb: &'static str, label: &str) {
        let e = self.entries.entry(abs.to_path_buf()).or_insert(Entry {
            kind: kind.clone(),
            why: BTreeMap::new(),
        });
        // Contents beat a placeholder taken earlier for the same file.
        if matches!(e.kind, Kind::Name) && !matches!(kind, Kind::Name) {
            e.kind = kind;
        }
        e.why.entry(verb).or_default().insert(label.to_string());
    }

    /// Record `abs` as `kind`; the first time it is met, `create` makes it in the copy
    /// (`what` names the step in an error). A later meeting only adds its reason.
    fn make(
        &mut self,
        abs: &Path,
        kind: Kind,
        verb: &'static str,
        label: &str,
        what: &'static str,
        create: impl FnOnce(&Path) -> std::io::Result<()>,
    ) -> Result<(), SnapshotError> {
        if !self.entries.contains_key(abs) {
            let d = self.dst_path(abs);
            create(&d).map_err(io(what, &d))?;
        }
        self.add(abs, kind, verb, label);
        Ok(())
    }

    fn make_dir(
        &mut self,
        abs: &Path,
        verb: &'static str,
        label: &str,
    ) -> Result<(), SnapshotError> {
        self.make(abs, Kind::Dir, verb, label, "creating", |d| {
            fs::create_dir_all(d)
        })
    }

    fn make_link(&mut self, abs: &Path, target: &Path, label: &str) -> Result<(), SnapshotError> {
        let kind = Kind::Link(target.to_path_buf());
        self.make(abs, kind, "followed", label, "creating the link", |d| {
            std::os::unix::fs::symlink(target, d)
        })
    }

    /// An empty placeholder for a file whose name (or existence) was all that was used.
    fn make_name(
        &mut self,
        abs: &Path,
        verb: &'static str,
        label: &str,
    ) -> Result<(), SnapshotError> {
        self.make(abs, Kind::Name, verb, label, "creating", |d| {
            fs::write(d, b"")
        })
    }

    /// Copy the contents of the regular file at `abs` (a physical path), redacted.
    fn copy_file(
        &mut self,
        abs: &Path,
        verb: &'static str,
        label: &str,
    ) -> Result<(), SnapshotError> {
        if let Some(e) = self.entries.get(abs) {
            if !matches!(e.kind, Kind::Name) {
                self.why(abs, verb, label);
                return Ok(());
            }
        }
        let d = self.dst_path(abs);
        let kind = match self.src.read_bytes(abs) {
            Ok(bytes) => {
                let (bytes, note) = self.redactor.apply(abs, bytes);
                fs::write(&d, &bytes).map_err(io("writing", &d))?;
                let n = bytes.len() as u64;
                match note {
                    Some(why) => Kind::Redacted { bytes: n, why },
                    None => Kind::File { bytes: n },
                }
            }
            Err(e) => {
                fs::write(&d, b"").map_err(io("creating", &d))?;
                Kind::Unreadable(e.source.to_string())
            }
        };
        self.entries.remove(abs);
        self.add(abs, kind, verb, label);
        Ok(())
    }

    /// Walk `abs` component by component as the kernel would, copying each directory and
    /// symlink met; `follow_last` follows a final symlink. Returns the physical path
    /// reached, or `None` when it does not exist in the source. `..` in `abs` is dropped,
    /// as [`SysRoot::path`] drops it.
    fn walk(
        &mut self,
        abs: &Path,
        follow_last: bool,
        label: &str,
    ) -> Result<Option<PathBuf>, SnapshotError> {
        let comps: Vec<Component> = abs
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let mut links = 0;
        self.walk_from(PathBuf::from("/"), &comps, follow_last, label, &mut links)
    }

    /// Walk `comps` from the physical directory `start`; `..` steps to the physical
    /// parent, a symlink's target is walked from the directory holding the link.
    fn walk_from(
        &mut self,
        start: PathBuf,
        comps: &[Component],
        follow_last: bool,
        label: &str,
        links: &mut u32,
    ) -> Result<Option<PathBuf>, SnapshotError> {
        let mut cur = start;
        for (i, c) in comps.iter().enumerate() {
            let last = i + 1 == comps.len();
            let name = match c {
                Component::RootDir => {
                    cur = PathBuf::from("/");
                    continue;
                }
                Component::ParentDir => {
                    cur.pop();
                    continue;
                }
                Component::CurDir | Component::Prefix(_) => continue,
                Component::Normal(n) => n,
            };
            let next = cur.join(name);
            let Ok(md) = fs::symlink_metadata(self.src_path(&next)) else {
                return Ok(None);
            };
            if md.file_type().is_symlink() {
                let target = fs::read_link(self.src_path(&next))
                    .map_err(io("reading the link", &self.src_path(&next)))?;
                self.make_link(&next, &target, label)?;
                if last && !follow_last {
                    return Ok(Some(next));
                }
                *links += 1;
                if *links > MAX_LINKS {
                    return Ok(None);
                }
                let tcomps: Vec<Component> = target.components().collect();
                let Some(p) = self.walk_from(cur.clone(), &tcomps, true, label, links)? else {
                    return Ok(None);
                };
                cur = p;
            } else if md.is_dir() {
                self.make_dir(&next, "parent of a path used", label)?;
                cur = next;
            } else {
                if !last {
                    return Ok(None);
                }
                cur = next;
            }
        }
        Ok(Some(cur))
    }

    /// Take what access `a` to `abs` needs, for the command `label`.
    pub fn take(&mut self, a: Access, abs: &Path, label: &str) -> Result<(), SnapshotError> {
        let follow = !matches!(a, Access::ReadLink | Access::StatNoFollow);
        let Some(p) = self.walk(abs, follow, label)? else {
            return Ok(()); // absent in the source: absent in the snapshot too
        };
        let Ok(md) = fs::symlink_metadata(self.src_path(&p)) else {
            return Ok(());
        };
        let ft = md.file_type();
        if ft.is_symlink() || p == Path::new("/") {
            return Ok(()); // copied by the walk (ReadLink, StatNoFollow)
        }
        if ft.is_dir() {
            let verb = match a {
                Access::List => "listed",
                Access::Path => "opened",
                _ => "tested",
            };
            self.make_dir(&p, verb, label)?;
            if a == Access::List {
                self.list(&p, label, |_, _| true)?;
            } else if a == Access::Path && is_fd_dir(&p) {
                // `/proc/<pid>/fd` is read for open device nodes: only links into /dev.
                self.list(&p, label, |_, t| t.is_some_and(|t| t.starts_with("/dev/")))?;
            }
            return Ok(());
        }
        let regular = ft.is_file();
        match a {
            Access::Read if regular && !p.starts_with("/dev") => self.copy_file(&p, "read", label),
            Access::Path if regular && !never_copy(&p) && md.len() <= MAX_PATH_COPY => {
                self.copy_file(&p, "opened", label)
            }
            Access::Write => Err(SnapshotError::Wrote {
                command: label.to_string(),
                path: abs.to_path_buf(),
            }),
            Access::Read => self.make_name(&p, "read (device node: name only)", label),
            Access::List => self.make_name(&p, "listed (not a directory)", label),
            _ => self.make_name(&p, "tested", label),
        }
    }

    /// Copy the entry names of the physical directory `dir`: links as links, directories
    /// as directories, everything else as empty placeholders. `keep(name, link target)`
    /// filters.
    fn list(
        &mut self,
        dir: &Path,
        label: &str,
        keep: impl Fn(&str, Option<&Path>) -> bool,
    ) -> Result<(), SnapshotError> {
        let sd = self.src_path(dir);
        let Ok(rd) = fs::read_dir(&sd) else {
            return Ok(());
        };
        let mut names: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        names.sort();
        for n in names {
            let abs = dir.join(&n);
            let Ok(md) = fs::symlink_metadata(self.src_path(&abs)) else {
                continue; // gone since the listing (a process that ended)
            };
            let name = n.to_string_lossy();
            if md.file_type().is_symlink() {
                let Ok(t) = fs::read_link(self.src_path(&abs)) else {
                    continue;
                };
                if keep(&name, Some(&t)) {
                    if !self.entries.contains_key(&abs) {
                        let d = self.dst_path(&abs);
                        std::os::unix::fs::symlink(&t, &d).map_err(io("creating the link", &d))?;
                    }
                    self.add(&abs, Kind::Link(t), "named in a listing", label);
                }
            } else if !keep(&name, None) {
                continue;
            } else if md.is_dir() {
                self.make_dir(&abs, "named in a listing", label)?;
            } else {
                self.make_name(&abs, "named in a listing", label)?;
            }
        }
        Ok(())
    }

    /// The MANIFEST: every entry, its kind, and why it is here.
    pub fn manifest(&self) -> String {
        let mut out = String::from(
            "# vfioctl snapshot MANIFEST: every entry of this tree, what it is, and why it was taken.\n\
             # Columns (tab-separated): kind, path, detail, why (how each command used it).\n\
             # Kinds: dir; file (contents as read); link (symlink, target as the source had it);\n\
             # name (listed or tested only: an empty placeholder; device nodes are always names);\n\
             # redacted (contents replaced, detail says how); unreadable (the source refused the\n\
             # read, detail has the error; an empty placeholder).\n\
             # Not listed: MANIFEST itself and SNAPSHOT.json (the commands and what they printed).\n",
        );
        for (p, e) in &self.entries {
            let detail = match &e.kind {
                Kind::Dir | Kind::Name => String::new(),
                Kind::Link(t) => format!("-> {}", t.display()),
                Kind::File { bytes } => format!("{bytes} bytes"),
                Kind::Redacted { bytes, why } => format!("{bytes} bytes; {why}"),
                Kind::Unreadable(err) => err.clone(),
            };
            let why: Vec<String> = e
                .why
                .iter()
                .map(|(verb, labels)| {
                    format!(
                        "{verb} by {}",
                        labels.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                e.kind.word(),
                redact::escape(p),
                detail,
                why.join("; ")
            ));
        }
        out
    }
}
