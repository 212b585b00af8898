//! `vfioctl rootfs build`: a manifest plus inputs to a deterministic initramfs (and
//! optionally an ext4 image).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::cpio::{self, Entry, Kind};
use super::manifest::{expand, parse_mode, Compression, FileItem, Manifest};
use super::modules::{canonical, ModuleIndex, Resolved};
use super::{agent_bin, RootfsError};

/// Where the agent reads its settings and module list in the guest (see `guest/`).
pub const AGENT_CONF: &str = "etc/vfioctl/agent.conf";
/// Where the guest finds the modules to load at boot, dependencies first, one path a line.
pub const MODULES_LOAD: &str = "etc/vfioctl/modules.load";

/// What `vfioctl rootfs build` was asked to do (its command-line arguments).
#[derive(Clone, Debug, Default)]
pub struct BuildOptions {
    /// The manifest (`rootfs/*.toml`) to build from.
    pub manifest: PathBuf,
    /// `lib/modules/KVER` itself, or a root that contains `lib/modules/KVER`.
    pub kernel_modules: Option<PathBuf>,
    /// The kernel version; default: the directory name when `kernel_modules` is
    /// `lib/modules/KVER` itself, else the only kernel under its `lib/modules`.
    pub kver: Option<String>,
    /// Where to write the initramfs.
    pub out: PathBuf,
    /// Also write an ext4 image of the same tree here (needs `mkfs.ext4`).
    pub ext4: Option<PathBuf>,
    /// The static guest agent to ship; default: an installed one.
    pub agent: Option<PathBuf>,
    /// Where firmware files are read from; default `/lib/firmware`.
    pub firmware_dir: Option<PathBuf>,
    /// Extra files: (host source, guest destination).
    pub extra: Vec<(PathBuf, String)>,
    /// Override the manifest's `agent.exec`.
    pub exec: Option<bool>,
    /// Ship and load no modules (a kernel with everything built in).
    pub no_modules: bool,
    /// Override the manifest's `compression`.
    pub compression: Option<Compression>,
}

/// One module the manifest asked for, as shipped.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct ModuleReport {
    /// The module's name (canonical: `-` as `_`).
    pub name: String,
    /// Files shipped for it (dependencies first); empty when built in.
    pub files: Vec<String>,
    /// Compiled into the kernel (or taken to be, with `--no-modules`): no file shipped.
    pub builtin: bool,
    /// Listed in the load list ([`MODULES_LOAD`]), so the agent loads it at boot.
    pub loaded_at_boot: bool,
}

/// What `vfioctl rootfs build` wrote (`--json`).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct BuildReport {
    /// The manifest's `name`.
    pub manifest: String,
    /// The initramfs written.
    pub out: PathBuf,
    /// Its size on disk (compressed), in bytes.
    pub bytes: u64,
    /// Bytes of file contents in the image, before compression.
    pub uncompressed_bytes: u64,
    /// SHA-256 of the initramfs as written, in lower-case hex.
    pub sha256: String,
    /// Entries in the cpio archive (directories, files, symlinks, device nodes).
    pub entries: usize,
    /// The compression used.
    pub compression: Compression,
    /// The agent binary shipped.
    pub agent: PathBuf,
    /// Its size, in bytes.
    pub agent_bytes: u64,
    /// The kernel version the modules came from; `None` when no modules were read.
    pub kver: Option<String>,
    /// One report per module the manifest asked for.
    pub modules: Vec<ModuleReport>,
    /// Firmware files shipped, relative to `lib/firmware`.
    pub firmware: Vec<String>,
    /// Optional inputs that were not found, with what they are.
    pub missing_optional: Vec<String>,
    /// The ext4 image written, when asked for.
    pub ext4: Option<PathBuf>,
    /// The manifest's `kata.guest_hook_path`, for Kata's configuration.
    pub guest_hook_path: Option<String>,
    /// How long the build took, in milliseconds.
    pub build_ms: u64,
}

/// The largest single input file staged (the NVIDIA userland's biggest library is a few
/// hundred MiB).
pub const MAX_SOURCE_BYTES: u64 = 1 << 30;
/// The most file bytes one image may hold (it is built in memory).
pub const MAX_IMAGE_BYTES: u64 = 4 << 30;

/// A guest path made safe: absolute, `.` and empty components dropped, `..` refused.
/// Returns it relative to the image root (`usr/bin/x`); `""` for `/` itself.
pub fn guest_path(path: &str) -> Result<String, RootfsError> {
    let bad = |reason: &str| RootfsError::GuestPath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    if !path.starts_with('/') {
        return Err(bad("must be an absolute guest path"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(bad("contains `..`: it would leave the image")),
            c => parts.push(c),
        }
    }
    Ok(parts.join("/"))
}

/// The ancestors of a staged path, outermost first: `a/b/c` gives `a`, `a/b`.
fn ancestors(path: &str) -> Vec<String> {
    let parts: Vec<&str> = path.split('/').collect();
    let mut cur = String::new();
    let mut out = Vec::new();
    for p in &parts[..parts.len().saturating_sub(1)] {
        if !cur.is_empty() {
            cur.push('/');
        }
        cur.push_str(p);
        out.push(cur.clone());
    }
    out
}

/// The staged tree: guest path (no leading `/`) -> entry. Every path is normalized by
/// [`guest_path`], and nothing is ever staged under a symlink or a file, so neither the
/// archive nor the ext4 staging directory can be steered out of the image.
#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, Entry>,
    file_bytes: u64,
}

impl Tree {
    /// Check that every ancestor of `path` is a directory (or not yet staged).
    fn check_ancestors(&self, path: &str) -> Result<(), RootfsError> {
        for cur in ancestors(path) {
            match self.entries.get(&cur).map(|e| &e.kind) {
                None | Some(Kind::Dir) => {}
                Some(Kind::Symlink(t)) => {
                    return Err(RootfsError::GuestPath {
                        path: format!("/{path}"),
                        reason: format!(
                            "/{cur} is a symlink (to {t}); nothing may be staged through it"
                        ),
                    })
                }
                Some(_) => {
                    return Err(RootfsError::GuestPath {
                        path: format!("/{path}"),
                        reason: format!("/{cur} is a file, not a directory"),
                    })
                }
            }
        }
        Ok(())
    }

    /// Stage every ancestor of `path` not staged yet as a directory.
    fn dirs_for(&mut self, path: &str) {
        for cur in ancestors(path) {
            self.entries.entry(cur.clone()).or_insert(Entry {
                path: cur,
                mode: 0o755,
                kind: Kind::Dir,
            });
        }
    }

    fn add(&mut self, path: &str, mode: u32, kind: Kind) -> Result<(), RootfsError> {
        let path = guest_path(&format!("/{}", path.trim_start_matches('/')))?;
        if path.is_empty() {
            return match kind {
                Kind::Dir => Ok(()),
                _ => Err(RootfsError::GuestPath {
                    path: "/".into(),
                    reason: "the image root can only be a directory".into(),
                }),
            };
        }
        self.check_ancestors(&path)?;
        if let Some(old) = self.entries.get(&path) {
            let children = self
                .entries
                .range(format!("{path}/")..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&format!("{path}/")));
            let ok = match (&old.kind, &kind) {
                (Kind::Dir, Kind::Dir) => true,
                (Kind::Dir, _) => !children,
                (_, Kind::Dir) => false,
                _ => true,
            };
            if !ok {
                return Err(RootfsError::GuestPath {
                    path: format!("/{path}"),
                    reason: "already staged as a different kind (a directory with contents, or a file or symlink where a directory is wanted)".into(),
                });
            }
        }
        if let Kind::File(d) = &kind {
            self.file_bytes = self.file_bytes.saturating_add(d.len() as u64);
            if self.file_bytes > MAX_IMAGE_BYTES {
                return Err(RootfsError::GuestPath {
                    path: format!("/{path}"),
                    reason: format!(
                        "the image would hold more than {} of files",
                        vfioctl_common::units::short(MAX_IMAGE_BYTES)
                    ),
                });
            }
        }
        self.dirs_for(&path);
        self.entries
            .insert(path.clone(), Entry { path, mode, kind });
        Ok(())
    }

    fn add_file(&mut self, src: &Path, dst: &str, mode: Option<u32>) -> Result<(), RootfsError> {
        let (data, src_mode) = read_source(src)?;
        self.add(dst, mode.unwrap_or(src_mode), Kind::File(data))
    }

    /// Copy a host directory tree under `dst`, symlinks as symlinks.
    fn add_tree(&mut self, src: &Path, dst: &str) -> Result<(), RootfsError> {
        let mut names: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| io_err(src, e))?
            .filter_map(|e| e.ok())
            .collect();
        names.sort_by_key(|e| e.file_name());
        for e in names {
            let p = e.path();
            let d = format!(
                "{}/{}",
                dst.trim_end_matches('/'),
                e.file_name().to_string_lossy()
            );
            let ft = e.file_type().map_err(|err| io_err(&p, err))?;
            if ft.is_symlink() {
                let t = std::fs::read_link(&p).map_err(|err| io_err(&p, err))?;
                self.add(&d, 0o777, Kind::Symlink(t.to_string_lossy().into_owned()))?;
            } else if ft.is_dir() {
                self.add(&d, 0o755, Kind::Dir)?;
                self.add_tree(&p, &d)?;
            } else if ft.is_file() {
                self.add_file(&p, &d, None)?;
            }
        }
        Ok(())
    }

    fn uncompressed_size(&self) -> u64 {
        self.file_bytes
    }
}

/// Read a manifest input: a regular file (symlinks to one are fine) of at most
/// [`MAX_SOURCE_BYTES`], checked on the opened file so it cannot be swapped in between.
/// Returns the bytes and the permission bits.
fn read_source(path: &Path) -> Result<(Vec<u8>, u32), RootfsError> {
    use std::io::Read;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let bad = |reason: String| RootfsError::BadSource {
        path: path.into(),
        reason,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RootfsError::Missing {
                    what: "input file".into(),
                    path: path.into(),
                }
            } else {
                io_err(path, e)
            }
        })?;
    let meta = f.metadata().map_err(|e| io_err(path, e))?;
    if !meta.is_file() {
        return Err(bad(
            "not a regular file (a device, FIFO, socket or directory)".into(),
        ));
    }
    if meta.len() > MAX_SOURCE_BYTES {
        return Err(bad(format!(
            "{} bytes, more than the {} an input may have",
            meta.len(),
            vfioctl_common::units::short(MAX_SOURCE_BYTES)
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_SOURCE_BYTES + 1)
        .read_to_end(&mut data)
        .map_err(|e| io_err(path, e))?;
    if data.len() as u64 > MAX_SOURCE_BYTES {
        return Err(bad("grew past the size cap while being read".into()));
    }
    Ok((data, meta.permissions().mode() & 0o7777))
}

fn io_err(path: &Path, source: std::io::Error) -> RootfsError {
    RootfsError::Io {
        path: path.into(),
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, RootfsError> {
    read_source(path).map(|(d, _)| d)
}

/// Read a module file, decompressing `.xz`/`.zst` (with the xz/zstd tools) and `.gz`.
fn read_module(path: &Path) -> Result<Vec<u8>, RootfsError> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".xz") {
        Some("xz")
    } else if name.ends_with(".zst") {
        Some("zstd")
    } else {
        None
    };
    if name.ends_with(".gz") {
        use std::io::Read;
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&read(path)?[..])
            .read_to_end(&mut out)
            .map_err(|e| io_err(path, e))?;
        return Ok(out);
    }
    match tool {
        None => read(path),
        Some(t) => {
            let out = Command::new(t)
                .args(["-dc"])
                .arg(path)
                .output()
                .map_err(|e| RootfsError::Tool {
                    cmd: format!("{t} -dc {}", path.display()),
                    message: e.to_string(),
                })?;
            if !out.status.success() {
                return Err(RootfsError::Tool {
                    cmd: format!("{t} -dc {}", path.display()),
                    message: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            Ok(out.stdout)
        }
    }
}

fn strip_compression(p: &str) -> &str {
    p.strip_suffix(".xz")
        .or_else(|| p.strip_suffix(".zst"))
        .or_else(|| p.strip_suffix(".gz"))
        .unwrap_or(p)
}

/// Find `lib/modules/KVER` from what the user gave.
pub fn modules_dir(given: &Path, kver: Option<&str>) -> Result<(PathBuf, String), RootfsError> {
    if given.join("modules.dep").is_file() {
        let k = match kver {
            Some(k) => k.to_string(),
            None => given
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        };
        return Ok((given.into(), k));
    }
    let base = given.join("lib/modules");
    let kver = match kver {
        Some(k) => k.to_string(),
        None => {
            let mut v: Vec<String> = std::fs::read_dir(&base)
                .map_err(|e| io_err(&base, e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            match v.as_slice() {
                [one] => one.clone(),
                _ => {
                    return Err(RootfsError::Usage(format!(
                        "{} holds {} kernels ({}); pass --kver",
                        base.display(),
                        v.len(),
                        v.join(", ")
                    )))
                }
            }
        }
    };
    let dir = base.join(&kver);
    if !dir.join("modules.dep").is_file() {
        return Err(RootfsError::Missing {
            what: format!("modules.dep for kernel {kver} (run depmod -b ROOT {kver})"),
            path: dir.join("modules.dep"),
        });
    }
    Ok((dir, kver))
}

/// Busybox applet paths (`bin/sh`, `sbin/ip`, ...) as the binary itself lists them.
fn busybox_applets(busybox: &Path) -> Result<Vec<String>, RootfsError> {
    let out = Command::new(busybox)
        .arg("--list-full")
        .output()
        .map_err(|e| RootfsError::Tool {
            cmd: format!("{} --list-full", busybox.display()),
            message: e.to_string(),
        })?;
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    v.sort();
    Ok(v)
}

/// Build the archive.
pub fn build(opts: &BuildOptions) -> Result<BuildReport, RootfsError> {
    let started = Instant::now();
    let manifest = Manifest::load(&opts.manifest)?;
    let mut tree = Tree::default();
    let mut missing = Vec::new();

    stage_skeleton(&mut tree)?;
    let (agent, agent_bytes) = stage_agent(&mut tree, &manifest, opts)?;
    stage_busybox(&mut tree, &manifest)?;
    let modules = stage_modules(&mut tree, &manifest, opts, &mut missing)?;
    let firmware = stage_firmware(&mut tree, &manifest, opts)?;
    stage_manifest_files(&mut tree, &manifest, &opts.manifest, &mut missing)?;
    stage_extra(&mut tree, &opts.extra)?;

    let compression = opts
        .compression
        .clone()
        .unwrap_or(manifest.compression.clone());
    let written = write_initramfs(&tree, &compression, &opts.out)?;
    let ext4 = match &opts.ext4 {
        Some(img) => {
            write_ext4(&tree, img)?;
            Some(img.clone())
        }
        None => None,
    };

    Ok(BuildReport {
        manifest: manifest.name.clone(),
        out: opts.out.clone(),
        bytes: written.bytes,
        uncompressed_bytes: tree.uncompressed_size(),
        sha256: written.sha256,
        entries: written.entries,
        compression,
        agent,
        agent_bytes,
        kver: modules.kver,
        modules: modules.reports,
        firmware,
        missing_optional: missing,
        ext4,
        guest_hook_path: manifest
            .kata
            .as_ref()
            .and_then(|k| k.guest_hook_path.clone()),
        build_ms: started.elapsed().as_millis() as u64,
    })
}

/// The skeleton every guest needs; /dev/console so PID 1 has a console before devtmpfs
/// is mounted.
fn stage_skeleton(tree: &mut Tree) -> Result<(), RootfsError> {
    for d in [
        "dev", "proc", "sys", "tmp", "run", "root", "etc", "var", "usr/bin", "bin", "sbin",
    ] {
        tree.add(d, 0o755, Kind::Dir)?;
    }
    tree.add("tmp", 0o1777, Kind::Dir)?;
    tree.add("dev/console", 0o600, Kind::CharDev { major: 5, minor: 1 })?;
    tree.add("dev/null", 0o666, Kind::CharDev { major: 1, minor: 3 })?;
    Ok(())
}

/// The agent binary (static, refused otherwise), `/init` when it is PID 1, and its
/// settings in [`AGENT_CONF`]. Returns the agent's path and size for the report.
fn stage_agent(
    tree: &mut Tree,
    manifest: &Manifest,
    opts: &BuildOptions,
) -> Result<(PathBuf, u64), RootfsError> {
    let agent = agent_bin::resolve(opts.agent.as_deref())?;
    let agent_data = read(&agent)?;
    if agent_bin::is_static_elf(&agent_data) != Some(true) {
        return Err(RootfsError::NotStatic {
            path: agent.clone(),
        });
    }
    let agent_bytes = agent_data.len() as u64;
    tree.add("usr/bin/vfioctl-agent", 0o755, Kind::File(agent_data))?;
    if manifest.agent.init {
        tree.add(
            "init",
            0o777,
            Kind::Symlink("/usr/bin/vfioctl-agent".into()),
        )?;
    }
    let exec = opts.exec.unwrap_or(manifest.agent.exec);
    tree.add(
        AGENT_CONF,
        0o644,
        Kind::File(
            format!(
                "# written by vfioctl rootfs build from {}\nport={}\nexec={}\n",
                manifest.name,
                manifest.agent.port,
                u8::from(exec)
            )
            .into_bytes(),
        ),
    )?;
    Ok((agent, agent_bytes))
}

/// Busybox (static, refused otherwise) and a symlink for each of its applets.
fn stage_busybox(tree: &mut Tree, manifest: &Manifest) -> Result<(), RootfsError> {
    if !manifest.busybox.include {
        return Ok(());
    }
    let bb = manifest
        .busybox
        .path
        .clone()
        .unwrap_or_else(|| PathBuf::from("/bin/busybox"));
    let data = read(&bb).map_err(|_| RootfsError::Missing {
        what: "busybox (install busybox-static)".into(),
        path: bb.clone(),
    })?;
    if agent_bin::is_static_elf(&data) != Some(true) {
        return Err(RootfsError::NotStatic { path: bb });
    }
    tree.add("bin/busybox", 0o755, Kind::File(data))?;
    for applet in busybox_applets(&bb)? {
        let p = applet.trim_start_matches('/');
        if p == "bin/busybox" || tree.entries.contains_key(p) || p == "init" {
            continue;
        }
        tree.add(p, 0o777, Kind::Symlink("/bin/busybox".into()))?;
    }
    Ok(())
}

/// A module the manifest asks for.
struct WantedModule {
    name: String,
    /// Listed in the load list (`load` and `optional`), not only shipped (`include`).
    load: bool,
    /// A kernel without it is noted in `missing_optional`, not an error.
    optional: bool,
}

/// The manifest's modules in order: `load`, then `include`, then `optional`.
fn wanted_modules(manifest: &Manifest) -> Vec<WantedModule> {
    let m = &manifest.modules;
    let wanted = |names: &[String], load: bool, optional: bool| {
        names
            .iter()
            .map(move |n| WantedModule {
                name: n.clone(),
                load,
                optional,
            })
            .collect::<Vec<_>>()
    };
    let mut v = wanted(&m.load, true, false);
    v.extend(wanted(&m.include, false, false));
    v.extend(wanted(&m.optional, true, true));
    v
}

/// The report of a module compiled into the kernel (or taken to be, with `--no-modules`).
fn builtin_report(name: &str) -> ModuleReport {
    ModuleReport {
        name: canonical(name),
        files: vec![],
        builtin: true,
        loaded_at_boot: false,
    }
}

/// What the module phase staged: the kernel version (when modules were read from one)
/// and a report per wanted module.
struct StagedModules {
    kver: Option<String>,
    reports: Vec<ModuleReport>,
}

/// The module closure of the wanted modules: the files to ship and the ones to load at
/// boot, dependencies first.
#[derive(Default)]
struct ModulePlan {
    shipped: Vec<String>,
    load_order: Vec<String>,
    reports: Vec<ModuleReport>,
}

/// Kernel modules, with dependencies, and the load list.
fn stage_modules(
    tree: &mut Tree,
    manifest: &Manifest,
    opts: &BuildOptions,
    missing: &mut Vec<String>,
) -> Result<StagedModules, RootfsError> {
    let wanted = wanted_modules(manifest);
    if opts.no_modules {
        return Ok(StagedModules {
            kver: None,
            reports: wanted.iter().map(|w| builtin_report(&w.name)).collect(),
        });
    }
    if wanted.is_empty() {
        return Ok(StagedModules {
            kver: None,
            reports: Vec::new(),
        });
    }
    let given = opts.kernel_modules.as_ref().ok_or_else(|| {
        RootfsError::Usage(format!(
            "manifest {} lists kernel modules: pass --kernel-modules DIR (and --kver)",
            manifest.name
        ))
    })?;
    let (dir, kver) = modules_dir(given, opts.kver.as_deref())?;
    let dep = std::fs::read_to_string(dir.join("modules.dep"))
        .map_err(|e| io_err(&dir.join("modules.dep"), e))?;
    let builtin = std::fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
    let idx = ModuleIndex::parse(&dep, &builtin);
    let plan = plan_modules(&idx, &wanted, &kver, missing)?;
    stage_module_files(tree, &idx, &dir, &kver, &plan)?;
    Ok(StagedModules {
        kver: Some(kver),
        reports: plan.reports,
    })
}

/// Resolve each wanted module in the kernel's index; a missing optional one goes to
/// `missing`, a missing required one is an error.
fn plan_modules(
    idx: &ModuleIndex,
    wanted: &[WantedModule],
    kver: &str,
    missing: &mut Vec<String>,
) -> Result<ModulePlan, RootfsError> {
    let mut plan = ModulePlan::default();
    for w in wanted {
        let name = &w.name;
        match idx.resolve(name) {
            None if w.optional => {
                missing.push(format!("kernel module {name} (not in kernel {kver})"));
            }
            None => {
                return Err(RootfsError::Module {
                    name: name.clone(),
                    kver: kver.to_string(),
                })
            }
            Some(Resolved::Builtin) => plan.reports.push(builtin_report(name)),
            Some(Resolved::Modules(paths)) => {
                for p in &paths {
                    if !plan.shipped.contains(p) {
                        plan.shipped.push(p.clone());
                    }
                    if w.load && !plan.load_order.contains(p) {
                        plan.load_order.push(p.clone());
                    }
                }
                plan.reports.push(ModuleReport {
                    name: canonical(name),
                    files: paths
                        .iter()
                        .map(|p| strip_compression(p).to_string())
                        .collect(),
                    builtin: false,
                    loaded_at_boot: w.load,
                });
            }
        }
    }
    Ok(plan)
}

/// The planned module files (decompressed) under `lib/modules/KVER`, their
/// `modules.dep`, and the load list [`MODULES_LOAD`].
fn stage_module_files(
    tree: &mut Tree,
    idx: &ModuleIndex,
    dir: &Path,
    kver: &str,
    plan: &ModulePlan,
) -> Result<(), RootfsError> {
    let gdir = format!("lib/modules/{kver}");
    for p in &plan.shipped {
        let data = read_module(&dir.join(p))?;
        tree.add(
            &format!("{gdir}/{}", strip_compression(p)),
            0o644,
            Kind::File(data),
        )?;
    }
    tree.add(
        &format!("{gdir}/modules.dep"),
        0o644,
        Kind::File(idx.dep_lines(&plan.shipped).into_bytes()),
    )?;
    let list: String = plan
        .load_order
        .iter()
        .map(|p| format!("/{gdir}/{}\n", strip_compression(p)))
        .collect();
    tree.add(
        MODULES_LOAD,
        0o644,
        Kind::File(format!("# load order (dependencies first)\n{list}").into_bytes()),
    )
}

/// The manifest's firmware files from `--firmware-dir` (default `/lib/firmware`).
fn stage_firmware(
    tree: &mut Tree,
    manifest: &Manifest,
    opts: &BuildOptions,
) -> Result<Vec<String>, RootfsError> {
    let fw_dir = opts
        .firmware_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/lib/firmware"));
    let mut firmware = Vec::new();
    for f in &manifest.firmware.files {
        let src = fw_dir.join(f);
        tree.add_file(&src, &format!("lib/firmware/{f}"), Some(0o644))?;
        firmware.push(f.clone());
    }
    Ok(firmware)
}

/// A manifest item for messages: `SRC -> DST (LABEL): WHY`.
fn describe_item(item: &FileItem, why: &str) -> String {
    format!(
        "{} -> {}{}: {why}",
        item.src,
        item.dst,
        item.label
            .as_ref()
            .map(|l| format!(" ({l})"))
            .unwrap_or_default()
    )
}

/// Where a manifest item's source is on the host: `$VARS` expanded, relative to the
/// manifest's directory. `None` when an optional source is absent (noted in `missing`).
fn item_source(
    item: &FileItem,
    base: &Path,
    missing: &mut Vec<String>,
) -> Result<Option<PathBuf>, RootfsError> {
    let env = |k: &str| std::env::var(k).ok();
    match expand(&item.src, env) {
        Ok(p) => {
            let p = PathBuf::from(p);
            let p = if p.is_absolute() { p } else { base.join(p) };
            if p.exists() {
                return Ok(Some(p));
            }
            let why = format!("{} does not exist", p.display());
            if item.optional {
                missing.push(describe_item(item, &why));
                return Ok(None);
            }
            Err(RootfsError::Missing {
                what: describe_item(item, "required"),
                path: p,
            })
        }
        Err(unset) => {
            let why = unset.to_string();
            if item.optional {
                missing.push(describe_item(item, &why));
                return Ok(None);
            }
            Err(RootfsError::Usage(describe_item(item, &why)))
        }
    }
}

/// Files and trees from the manifest, then its symlinks.
fn stage_manifest_files(
    tree: &mut Tree,
    manifest: &Manifest,
    manifest_path: &Path,
    missing: &mut Vec<String>,
) -> Result<(), RootfsError> {
    let base = manifest_path
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    for (item, is_tree) in manifest
        .files
        .iter()
        .map(|f| (f, false))
        .chain(manifest.trees.iter().map(|t| (t, true)))
    {
        let Some(src) = item_source(item, &base, missing)? else {
            continue;
        };
        if is_tree {
            tree.add_tree(&src, &item.dst)?;
        } else {
            let mode = item
                .mode
                .as_deref()
                .map(parse_mode)
                .transpose()
                .map_err(|e| RootfsError::Usage(e.to_string()))?;
            tree.add_file(&src, &item.dst, mode)?;
        }
    }
    for s in &manifest.symlinks {
        tree.add(&s.path, 0o777, Kind::Symlink(s.target.clone()))?;
    }
    Ok(())
}

/// `--extra SRC:DST` files, after everything from the manifest.
fn stage_extra(tree: &mut Tree, extra: &[(PathBuf, String)]) -> Result<(), RootfsError> {
    for (src, dst) in extra {
        if !dst.starts_with('/') {
            return Err(RootfsError::Usage(format!(
                "--extra {}:{dst}: the destination must be an absolute guest path",
                src.display()
            )));
        }
        tree.add_file(src, dst, None)?;
    }
    Ok(())
}

/// What [`write_initramfs`] wrote, for the report.
struct Written {
    bytes: u64,
    sha256: String,
    entries: usize,
}

/// The tree as a cpio archive, compressed, written to `out` through `out.partial` and a
/// rename so a reader never sees half an image.
fn write_initramfs(
    tree: &Tree,
    compression: &Compression,
    out: &Path,
) -> Result<Written, RootfsError> {
    let entries: Vec<Entry> = tree.entries.values().cloned().collect();
    let mut raw = Vec::new();
    cpio::write(&mut raw, &entries, 0).map_err(|e| io_err(out, e))?;
    let bytes = compress(&raw, compression)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| io_err(parent, e))?;
    }
    let tmp = out.with_extension("partial");
    std::fs::write(&tmp, &bytes).map_err(|e| io_err(&tmp, e))?;
    std::fs::rename(&tmp, out).map_err(|e| io_err(out, e))?;
    Ok(Written {
        bytes: bytes.len() as u64,
        sha256: format!("{:x}", Sha256::digest(&bytes)),
        entries: entries.len(),
    })
}

fn compress(raw: &[u8], c: &Compression) -> Result<Vec<u8>, RootfsError> {
    match c {
        Compression::None => Ok(raw.to_vec()),
        Compression::Gzip => {
            // mtime 0 and a fixed OS byte: the same input gives the same bytes.
            let mut enc = flate2::GzBuilder::new()
                .mtime(0)
                .operating_system(3)
                .write(Vec::new(), flate2::Compression::best());
            enc.write_all(raw)
                .and_then(|_| enc.finish())
                .map_err(|e| io_err(Path::new("<gzip>"), e))
        }
        Compression::Zstd => {
            let cmd = "zstd -19 -q -c --no-progress";
            let mut child = Command::new("zstd")
                .args(["-19", "-q", "-c", "--no-progress"])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| RootfsError::Tool {
                    cmd: cmd.into(),
                    message: format!("{e} (install zstd)"),
                })?;
            let mut stdin = child.stdin.take().expect("piped stdin");
            let data = raw.to_vec();
            let writer = std::thread::spawn(move || stdin.write_all(&data));
            let out = child.wait_with_output().map_err(|e| RootfsError::Tool {
                cmd: cmd.into(),
                message: e.to_string(),
            })?;
            let _ = writer.join();
            if !out.status.success() {
                return Err(RootfsError::Tool {
                    cmd: cmd.into(),
                    message: String::from_utf8_lossy(&out.stderr).into_owned(),
                });
            }
            Ok(out.stdout)
        }
    }
}

/// `openat2` beneath `dir` that follows no symlink at all: the staging directory is
/// written only through paths vfioctl built, and never through a link it staged.
fn open_beneath(dir: i32, rel: &str, flags: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let c = std::ffi::CString::new(if rel.is_empty() { "." } else { rel })
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut how = vfioctl_common::sysroot::open_how_in_root(flags, 0o600);
    how.resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c` is NUL-terminated and `how` a valid open_how.
    let fd = unsafe { vfioctl_common::sysroot::openat2_raw(dir, c.as_ptr(), &how) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat2 and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Create one staged entry under the staging directory `root` (parents exist: entries
/// come in path order), resolving the parent with [`open_beneath`] and creating the last
/// component with `O_EXCL`/`mkdirat`/`symlinkat`, none of which follow a link.
fn stage_entry(root: i32, e: &Entry) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd};
    let (parent, name) = match e.path.rsplit_once('/') {
        Some((p, n)) => (p, n),
        None => ("", e.path.as_str()),
    };
    let pd = open_beneath(root, parent, libc::O_DIRECTORY | libc::O_RDONLY)?;
    let cname = std::ffi::CString::new(name)
        .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
    let check = |rc: i32| {
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    match &e.kind {
        Kind::Dir => {
            // SAFETY: valid descriptor and NUL-terminated name.
            let rc = unsafe { libc::mkdirat(pd.as_raw_fd(), cname.as_ptr(), 0o755) };
            if rc < 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::AlreadyExists {
                    return Err(err);
                }
            }
        }
        Kind::File(d) => {
            // SAFETY: valid descriptor and NUL-terminated name.
            let fd = check(unsafe {
                libc::openat(
                    pd.as_raw_fd(),
                    cname.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    e.mode as libc::c_uint,
                )
            })?;
            // SAFETY: `fd` was just returned by openat and is owned by nothing else.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            f.write_all(d)?;
            // SAFETY: valid descriptor.
            check(unsafe { libc::fchmod(fd, e.mode as libc::mode_t) })?;
        }
        Kind::Symlink(t) => {
            let ct = std::ffi::CString::new(t.as_str())
                .map_err(|err| std::io::Error::new(std::io::ErrorKind::InvalidInput, err))?;
            // SAFETY: valid descriptor and NUL-terminated strings.
            check(unsafe { libc::symlinkat(ct.as_ptr(), pd.as_raw_fd(), cname.as_ptr()) })?;
        }
        Kind::CharDev { .. } => {}
    }
    Ok(())
}

/// An ext4 image of the same tree, through `mkfs.ext4 -d` (no mounts, no root needed).
/// Device nodes are left out: the agent mounts devtmpfs.
fn write_ext4(tree: &Tree, img: &Path) -> Result<(), RootfsError> {
    use std::os::fd::AsRawFd;
    // A fresh directory of this run's own (create_dir fails on anything already there,
    // a symlink included), so the clean-up below only ever removes what it created.
    let staging = img.with_extension(format!("staging.{}", std::process::id()));
    std::fs::create_dir(&staging).map_err(|e| io_err(&staging, e))?;
    let result = (|| {
        let dir = std::fs::File::open(&staging).map_err(|e| io_err(&staging, e))?;
        for e in tree.entries.values() {
            stage_entry(dir.as_raw_fd(), e).map_err(|err| io_err(&staging.join(&e.path), err))?;
        }
        let size_mib = tree.uncompressed_size() / (1 << 20) * 3 / 2 + 32;
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "vfioctl", "-E", "root_owner=0:0", "-d"])
            .arg(&staging)
            .arg(img)
            .arg(format!("{size_mib}M"))
            .output()
            .map_err(|e| RootfsError::Tool {
                cmd: "mkfs.ext4".into(),
                message: format!("{e} (install e2fsprogs)"),
            })?;
        if !out.status.success() {
            return Err(RootfsError::Tool {
                cmd: format!("mkfs.ext4 -d {} {}", staging.display(), img.display()),
                message: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
}
