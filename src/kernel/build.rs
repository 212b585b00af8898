//! `vfioctl kernel build`: source -> configure -> verify -> compile -> install ->
//! (NVIDIA) -> manifest, each phase timed and logged to `<out>/logs/<phase>.log`.
//!
//! Layout (all under the lab cache unless `--out` says otherwise):
//! - `kernel-src/<sha12>/<top>/`: the extracted, patched tarball (once per checksum);
//! - `kernel-build/obj/<flavours>/`: the `O=` tree per flavour set, kept for incremental
//!   builds and out-of-tree modules (`SYSOUT=`);
//! - `kernel/vfioctl-<flavours>/` (the output): `vmlinuz`, `config`, `System.map`,
//!   `Module.symvers`, `lib/modules/<release>/` (with `build`/`source` links),
//!   `lib/firmware/nvidia/<ver>/` for NVIDIA, `logs/`, `build-manifest.json`: the same
//!   layout as the lab's Debian kernel in `kernel/current/`.
//!
//! Caching: if the inputs (pins, source checksum, fragments, allowlist, patches, NVIDIA
//! mode) hash to the key in the output's manifest, nothing runs; if the inputs changed
//! but the final `.config` did not (e.g. a comment), compile and install are skipped.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use sha2::Digest;

use super::cmd::{have, Cmd};
use super::config::DotConfig;
use super::error::{io, KernelError};
use super::flock::FileLock;
use super::kconfig::KconfigTree;
use super::manifest::{
    Artefacts, BuildManifest, FragmentInfo, NvidiaInfo, PhaseTime, Pins, Toolchain, VerifySummary,
};
use super::nvidia::{self, ModuleBuild, NvidiaMode};
use super::source;
use super::verify::{self, Allowlist, Fragment, Report};

/// Everything `vfioctl kernel build` takes.
#[derive(Clone, Debug)]
pub struct BuildOptions {
    /// `kernel-configs/` (fragments, allowlist, manifest.toml, patches/).
    pub configs: PathBuf,
    /// Kernel source directory or tarball; `None` = the pinned tarball.
    pub source: Option<PathBuf>,
    /// The pinned series to build (`[series."<x.y>"]` of the manifest); `None` = the
    /// default `[kernel]` series. Builds of another series than the default are named
    /// `vfioctl-<series>-<flavours>` (output and `O=` tree).
    pub series: Option<String>,
    /// Flavours beyond the always-merged ones (`nvidia`, `vfio-guest`, `debug`; `base`
    /// is accepted and means nothing extra).
    pub flavours: Vec<String>,
    /// Output directory; `None` = `<lab>/kernel/vfioctl-<flavours>`.
    pub out: Option<PathBuf>,
    /// The lab cache root (`VFIOCTL_LAB`, `.lab`).
    pub lab: PathBuf,
    /// Parallel make jobs (`make -j`).
    pub jobs: u32,
    /// Also build NVIDIA open modules this way; `None` = no NVIDIA modules.
    pub nvidia: Option<NvidiaMode>,
    /// Build a tarball whose checksum differs from the pin.
    pub allow_unpinned: bool,
    /// Rebuild even when the cache says up to date.
    pub force: bool,
    /// `nice` level of compile steps.
    pub nice: i32,
    /// Use ccache (default: when installed).
    pub ccache: bool,
    /// Remove the `O=` tree first: a clean build, not an incremental one.
    pub clean: bool,
}

impl BuildOptions {
    /// The command line's defaults (`vfioctl kernel build` without flags): the default
    /// series, no flavours beyond the always-merged ones, the lab's default output, 2
    /// jobs at nice 10 with ccache, incremental, no NVIDIA modules.
    pub fn defaults(configs: PathBuf, lab: PathBuf) -> BuildOptions {
        BuildOptions {
            configs,
            source: None,
            series: None,
            flavours: Vec::new(),
            out: None,
            lab,
            jobs: 2,
            nvidia: None,
            allow_unpinned: false,
            force: false,
            nice: 10,
            ccache: true,
            clean: false,
        }
    }
}

/// A progress event, for the command line to print.
#[derive(Clone, Debug)]
pub enum Progress {
    /// A phase began.
    Start {
        /// The phase name (e.g. `configure`, `compile`).
        phase: &'static str,
        /// What it works on, for display.
        what: String,
    },
    /// The current phase ended.
    Done {
        /// The phase name.
        phase: &'static str,
        /// How long it took, in seconds.
        seconds: f64,
        /// Skipped because its result was already there (cache).
        skipped: bool,
        /// A one-line result, for display.
        note: String,
    },
    /// The compile phase's objects: `done` of about `total` (kbuild's `CC`/`AS`/`LD`
    /// lines against the previous build's count or an estimate from the configured tree;
    /// `total` grows when the estimate was short).
    Objects {
        /// Objects built so far.
        done: u64,
        /// The expected number of objects.
        total: u64,
    },
}

/// The file in the object directory that records how many objects the last compile
/// built: the next build's total.
const OBJECT_COUNT_FILE: &str = ".vfioctl-objects";

/// Whether a line of kbuild's (quiet) output is an object built:
/// `  CC      init/main.o`, `  CC [M]  drivers/x.o`, `  AS      arch/x86/entry/entry_64.o`,
/// `  LD [M]  fs/x/x.o`.
pub fn kbuild_object_line(line: &str) -> bool {
    matches!(line.split_whitespace().next(), Some("CC" | "AS" | "LD"))
        && line.trim_end().ends_with(".o")
}

/// An estimate of the objects a compile of `tree` builds with configuration `cfg`: the
/// `.o` targets of every kbuild Makefile/Kbuild line whose condition the configuration
/// enables (`obj-y += a.o`, `obj-$(CONFIG_X) += b.o` with X=y or m, `foo-y += c.o`).
/// It misses generated and conditional-in-make objects; the compile phase grows the total
/// when it passes it, and the real count is recorded for the next build.
pub fn estimate_objects(tree: &Path, cfg: &DotConfig) -> u64 {
    fn enabled(cond: &str, cfg: &DotConfig) -> bool {
        match cond {
            "y" | "m" => true,
            _ => cond
                .strip_prefix("$(CONFIG_")
                .and_then(|c| c.strip_suffix(')'))
                .is_some_and(|sym| cfg.tristate(sym) > 0),
        }
    }
    fn count_makefile(text: &str, cfg: &DotConfig) -> u64 {
        let joined = text.replace("\\\n", " ");
        let mut n = 0;
        for line in joined.lines() {
            let line = line.split('#').next().unwrap_or("");
            let Some((lhs, rhs)) = line.split_once("+=").or_else(|| line.split_once(":=")) else {
                continue;
            };
            let lhs = lhs.trim();
            let Some((_, cond)) = lhs.split_once('-') else {
                continue;
            };
            // `obj-y`, `obj-$(CONFIG_X)`, `foo-y`, `foo-objs` (always).
            if !(cond == "objs" || enabled(cond, cfg)) {
                continue;
            }
            n += rhs.split_whitespace().filter(|w| w.ends_with(".o")).count() as u64;
        }
        n
    }
    let mut total = 0;
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(ft) = e.file_type() else { continue };
            let name = e.file_name();
            if ft.is_dir() {
                if !name.to_string_lossy().starts_with('.') {
                    stack.push(e.path());
                }
            } else if ft.is_file() && (name == "Makefile" || name == "Kbuild") {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    total += count_makefile(&text, cfg);
                }
            }
        }
    }
    total
}

/// The total to count the compile's objects against: the previous build's count
/// (recorded in the object directory), else the estimate from the configured tree.
fn objects_total(tree: &Path, obj: &Path, cfg: &DotConfig) -> u64 {
    std::fs::read_to_string(obj.join(OBJECT_COUNT_FILE))
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .filter(|n: &u64| *n > 0)
        .unwrap_or_else(|| estimate_objects(tree, cfg))
}

/// What a build produced.
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct BuildResult {
    /// The output directory (`vmlinuz`, `lib/modules/`, `build-manifest.json`...).
    pub out: PathBuf,
    /// True when the cache answered and nothing was rebuilt.
    pub up_to_date: bool,
    /// The build manifest (the previous one when up to date).
    pub manifest: BuildManifest,
    /// The verification report of the final `.config`.
    pub verify: Report,
}

/// The fragments to merge, in order: the pin's `always` list, then the requested
/// flavours, all sorted by file name (`00-base`, `10-x86_64`, `20-nvidia`, ...).
pub fn select_fragments(
    configs: &Path,
    always: &[String],
    flavours: &[String],
) -> Result<Vec<Fragment>, KernelError> {
    let mut all = Vec::new();
    let rd = std::fs::read_dir(configs).map_err(io(configs, "cannot list fragments"))?;
    let mut paths: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "config"))
        .collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).map_err(io(&p, "cannot read fragment"))?;
        all.push(Fragment::parse(&p, &text)?);
    }
    let known: Vec<&str> = all.iter().map(|f| f.flavour.as_str()).collect();
    for f in flavours.iter().chain(always) {
        if !known.contains(&f.as_str()) {
            return Err(KernelError::UnknownFlavour {
                name: f.clone(),
                known: known.join(", "),
            });
        }
    }
    Ok(all
        .into_iter()
        .filter(|f| always.contains(&f.flavour) || flavours.contains(&f.flavour))
        .collect())
}

/// `base`, `nvidia`, `nvidia+debug`: the flavour part of directory names.
pub fn flavour_key(fragments: &[Fragment], always: &[String]) -> String {
    let extra: Vec<&str> = fragments
        .iter()
        .filter(|f| !always.contains(&f.flavour))
        .map(|f| f.flavour.as_str())
        .collect();
    if extra.is_empty() {
        "base".into()
    } else {
        extra.join("+")
    }
}

/// `make -C SRC O=OBJ ARCH=x86_64 <args>`.
pub fn make(tree: &Path, obj: &Path, arch: &str) -> Cmd {
    Cmd::new("make").args([
        "-C".to_string(),
        tree.display().to_string(),
        format!("O={}", obj.display()),
        format!("ARCH={arch}"),
    ])
}

/// The build identity's timestamp: fixed, so the same inputs give the same bytes.
pub const BUILD_TIMESTAMP: &str = "2026-01-01 00:00:00";

/// The compile step: pinned build identity (reproducible, ccache-friendly), empty
/// LOCALVERSION (the fragment's CONFIG_LOCALVERSION names it), `nice`.
pub fn compile_cmd(tree: &Path, obj: &Path, arch: &str, jobs: u32, cc: &str, nice: i32) -> Cmd {
    let mut c = make(tree, obj, arch)
        .arg(format!("-j{jobs}"))
        .arg(format!("CC={cc}"))
        .arg("LOCALVERSION=")
        .env("KBUILD_BUILD_TIMESTAMP", BUILD_TIMESTAMP)
        .env("KBUILD_BUILD_USER", "vfioctl")
        .env("KBUILD_BUILD_HOST", "vfioctl")
        // `#1` in `uname -v`: otherwise the O= tree's `.version` counts builds and two
        // builds of the same inputs differ.
        .env("KBUILD_BUILD_VERSION", "1");
    if cc.starts_with("ccache") {
        // No path rewriting, whatever ccache.conf says: with a base_dir, ccache hands gcc
        // relative source paths, kbuild's `-fmacro-prefix-map=$(srctree)/=` no longer
        // matches, and every `__FILE__` (WARN, BUG, pr_* sites) embeds
        // `../../../kernel-src/...`: a ccache build and a plain one differed by 36 KB of
        // .rodata (tests/kernel_repro.rs). Flavours share few objects anyway: each one's
        // autoconf.h is in every compile.
        c = c.env("CCACHE_BASEDIR", "");
    }
    c.niced(nice)
}

/// The build record's version. 2: the compile's ccache runs without a base_dir; a build
/// recorded as 1 embedded relative `__FILE__` paths and is rebuilt, not reused, even when
/// its .config is unchanged.
pub const MANIFEST_SCHEMA: u32 = 2;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn sha_text(t: &[u8]) -> String {
    format!("{:x}", sha2::Sha256::digest(t))
}

struct Phases<'a> {
    times: Vec<PhaseTime>,
    progress: &'a mut dyn FnMut(Progress),
    current: Option<(&'static str, Instant)>,
}

impl Phases<'_> {
    fn start(&mut self, phase: &'static str, what: impl Into<String>) {
        (self.progress)(Progress::Start {
            phase,
            what: what.into(),
        });
        self.current = Some((phase, Instant::now()));
    }
    fn done(&mut self, skipped: bool, note: impl Into<String>) {
        if let Some((phase, t)) = self.current.take() {
            let seconds = t.elapsed().as_secs_f64();
            self.times.push(PhaseTime {
                phase: phase.into(),
                seconds,
                skipped,
            });
            (self.progress)(Progress::Done {
                phase,
                seconds,
                skipped,
                note: note.into(),
            });
        }
    }
}

fn copy(from: &Path, to: &Path) -> Result<u64, KernelError> {
    std::fs::copy(from, to).map_err(io(from, "cannot copy"))
}

fn depmod_cmd(staging: &Path, release: &str) -> Cmd {
    let prog = if have("depmod") {
        "depmod"
    } else {
        "/sbin/depmod"
    };
    Cmd::new(prog).args([
        "-b".to_string(),
        staging.display().to_string(),
        release.to_string(),
    ])
}

fn symlink_force(target: &Path, link: &Path) -> Result<(), KernelError> {
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(target, link).map_err(io(link, "cannot create symlink"))
}

/// `make <base>` (tinyconfig) in `obj`, append the merged fragments to its `.config`,
/// `make olddefconfig`. Returns the `.config` path. The result is *not* trusted: the
/// caller verifies it.
pub fn configure(
    tree: &Path,
    obj: &Path,
    arch: &str,
    base: &str,
    merged: &verify::Merged,
    log: &Path,
) -> Result<PathBuf, KernelError> {
    std::fs::create_dir_all(obj).map_err(io(obj, "cannot create build dir"))?;
    make(tree, obj, arch)
        .arg(base)
        .run_logged("configure", log)?;
    let dot = obj.join(".config");
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&dot)
            .map_err(io(&dot, "cannot open"))?;
        f.write_all(merged.render().as_bytes())
            .map_err(io(&dot, "cannot append fragments"))?;
    }
    make(tree, obj, arch)
        .arg("olddefconfig")
        .run_logged("configure", log)?;
    Ok(dot)
}

/// What a build is made from, read once: the pins, the fragments of the requested
/// flavours, the allowlist.
struct Inputs {
    pins: Pins,
    pins_path: PathBuf,
    pins_text: String,
    fragments: Vec<Fragment>,
    /// `base`, `nvidia`, `nvidia+debug`.
    fkey: String,
    allow: Allowlist,
    allow_text: String,
}

impl Inputs {
    fn load(opts: &BuildOptions) -> Result<Inputs, KernelError> {
        let pins_path = opts.configs.join("manifest.toml");
        let pins_text =
            std::fs::read_to_string(&pins_path).map_err(io(&pins_path, "cannot read"))?;
        let all = Pins::parse(&pins_text).map_err(|source| KernelError::Pins {
            path: pins_path.clone(),
            source,
        })?;
        let pins = all.select(opts.series.as_deref(), &pins_path)?;
        let mut flavours: Vec<String> = opts
            .flavours
            .iter()
            .filter(|f| *f != "base")
            .cloned()
            .collect();
        if opts.nvidia.is_some() && !flavours.iter().any(|f| f == "nvidia") {
            flavours.push("nvidia".into());
        }
        let fragments = select_fragments(&opts.configs, &pins.kernel.always, &flavours)?;
        let mut fkey = flavour_key(&fragments, &pins.kernel.always);
        if pins.kernel.series != all.kernel.series {
            fkey = format!("{}-{fkey}", pins.kernel.series);
        }
        let allow_path = opts.configs.join("allowlist");
        let allow_text = std::fs::read_to_string(&allow_path).unwrap_or_default();
        let allow = Allowlist::parse(&allow_path, &allow_text)?;
        Ok(Inputs {
            pins,
            pins_path,
            pins_text,
            fragments,
            fkey,
            allow,
            allow_text,
        })
    }

    /// The NVIDIA driver patches of a pinned Debian driver (none otherwise).
    fn nvidia_patches(&self, opts: &BuildOptions) -> Result<Vec<FragmentInfo>, KernelError> {
        let Some(NvidiaMode::Debian(k)) = &opts.nvidia else {
            return Ok(Vec::new());
        };
        let pin = self.pins.nvidia.get(k).ok_or_else(|| KernelError::Nvidia {
            what: format!("`{k}` is not pinned in {}", self.pins_path.display()),
            hint: Some(format!(
                "pinned drivers: {}",
                self.pins
                    .nvidia
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        })?;
        source::patch_list(&opts.configs.join(&pin.patches))
    }

    /// The hash over every input that can change the artefacts: pins, the source
    /// (checksum and version), fragments, allowlist, patches, NVIDIA mode. Not the
    /// compiler wrapper: ccache gives the same bytes as gcc (v3: since ccache runs without
    /// a base_dir; v2 builds through ccache embedded relative `__FILE__` paths).
    fn key(
        &self,
        opts: &BuildOptions,
        tree: &source::Tree,
        nv_patches: &[FragmentInfo],
    ) -> Result<String, KernelError> {
        let mut key_src = format!(
            "vfioctl-kernel v3\n{}\nsource {:?} {}\nallow {}\nnvidia {:?}\n",
            self.pins_text,
            tree.info.sha256,
            tree.version,
            sha_text(self.allow_text.as_bytes()),
            opts.nvidia.as_ref().map(|m| m.to_string())
        );
        if tree.info.sha256.is_none() {
            // a directory source has no checksum: its path stands for it
            key_src.push_str(&format!("tree {}\n", tree.dir.display()));
        }
        for f in &self.fragments {
            key_src.push_str(&format!("frag {} {}\n", f.flavour, f.sha256));
        }
        for p in tree.info.patches.iter().chain(nv_patches) {
            key_src.push_str(&format!("patch {} {}\n", p.name, p.sha256));
        }
        if let Some(NvidiaMode::Run(f)) = &opts.nvidia {
            key_src.push_str(&format!("run {}\n", source::sha256_file(f)?));
        }
        Ok(sha_text(key_src.as_bytes()))
    }
}

/// Where a build writes: the lab, the output dir and its logs.
struct Dirs {
    lab: PathBuf,
    out: PathBuf,
    logs: PathBuf,
    /// The `O=` tree of this flavour set.
    obj: PathBuf,
}

impl Dirs {
    fn prepare(opts: &BuildOptions, fkey: &str) -> Result<Dirs, KernelError> {
        std::fs::create_dir_all(&opts.lab).map_err(io(&opts.lab, "cannot create lab dir"))?;
        let lab = std::fs::canonicalize(&opts.lab).map_err(io(&opts.lab, "cannot resolve"))?;
        let out = opts
            .out
            .clone()
            .unwrap_or_else(|| lab.join("kernel").join(format!("vfioctl-{fkey}")));
        std::fs::create_dir_all(out.join("logs")).map_err(io(&out, "cannot create output dir"))?;
        let out = std::fs::canonicalize(&out).map_err(io(&out, "cannot resolve"))?;
        Ok(Dirs {
            logs: out.join("logs"),
            obj: lab.join("kernel-build/obj").join(fkey),
            lab,
            out,
        })
    }

    fn log(&self, phase: &str) -> PathBuf {
        self.logs.join(format!("{phase}.log"))
    }
}

/// The verified configuration of a build.
struct Configured {
    dot: PathBuf,
    cfg: DotConfig,
    sha256: String,
    report: Report,
}

/// Run a build.
pub fn build(
    opts: &BuildOptions,
    progress: &mut dyn FnMut(Progress),
) -> Result<BuildResult, KernelError> {
    let started = now();
    let configs =
        std::fs::canonicalize(&opts.configs).map_err(io(&opts.configs, "cannot resolve"))?;
    let opts = &BuildOptions {
        configs,
        ..opts.clone()
    };
    let inputs = Inputs::load(opts)?;
    let dirs = Dirs::prepare(opts, &inputs.fkey)?;
    let fkey = inputs.fkey.clone();
    let _lock = FileLock::take(
        &dirs
            .lab
            .join("kernel-build/locks")
            .join(format!("{fkey}.lock")),
        || {
            progress(Progress::Start {
                phase: "lock",
                what: format!("waiting for another build of `{fkey}`"),
            })
        },
    )?;
    let mut ph = Phases {
        times: Vec::new(),
        progress,
        current: None,
    };

    let tree = source_phase(opts, &inputs, &dirs, &mut ph)?;
    let nv_patches = inputs.nvidia_patches(opts)?;
    let input_key = inputs.key(opts, &tree, &nv_patches)?;
    let manifest_path = dirs.out.join("build-manifest.json");
    let previous = BuildManifest::read(&manifest_path);
    let rebuild = opts.force || opts.clean;
    let have_vmlinuz = dirs.out.join("vmlinuz").is_file();
    if let Some(prev) = previous
        .as_ref()
        .filter(|p| !rebuild && p.input_key == input_key && have_vmlinuz)
    {
        return Ok(BuildResult {
            out: dirs.out,
            up_to_date: true,
            manifest: prev.clone(),
            verify: Report {
                requested: prev.verify.requested,
                ..Default::default()
            },
        });
    }

    let c = configure_phase(opts, &inputs, &dirs, &tree, &mut ph)?;
    let cc = if opts.ccache && have("ccache") {
        "ccache gcc"
    } else {
        "gcc"
    };
    // A changed input that leaves the .config as it was (a comment) rebuilds nothing.
    let reusable = previous.filter(|p| {
        !rebuild
            && p.schema == MANIFEST_SCHEMA
            && p.config_sha256 == c.sha256
            && p.nvidia.as_ref().map(|n| n.mode.clone())
                == opts.nvidia.as_ref().map(|m| m.to_string())
            && nv_patches
                == p.nvidia
                    .as_ref()
                    .map(|n| n.patches.clone())
                    .unwrap_or_default()
            && have_vmlinuz
    });
    let (release, nvidia_info) = match reusable {
        Some(prev) => {
            ph.start("compile", "config unchanged");
            ph.done(true, "same .config as the existing build: not rebuilt");
            (prev.kernel_release, prev.nvidia)
        }
        None => {
            let release = compile_and_install(opts, &inputs, &dirs, &tree, &c, cc, &mut ph)?;
            let nvidia = match &opts.nvidia {
                None => None,
                Some(mode) => Some(build_nvidia(
                    mode,
                    &inputs.pins,
                    opts,
                    &dirs.lab,
                    &tree.dir,
                    &dirs.obj,
                    &dirs.out,
                    &release,
                    cc,
                    &c.sha256,
                    &nv_patches,
                    &mut ph,
                    &dirs.log("nvidia"),
                )?),
            };
            (release, nvidia)
        }
    };

    let manifest = build_manifest(
        opts,
        &inputs,
        &dirs,
        &tree,
        &c,
        cc,
        input_key,
        release,
        nvidia_info,
        ph.times,
        started,
    );
    std::fs::write(
        &manifest_path,
        serde_json::to_string_pretty(&manifest).unwrap_or_default(),
    )
    .map_err(io(&manifest_path, "cannot write"))?;
    Ok(BuildResult {
        out: dirs.out,
        up_to_date: false,
        manifest,
        verify: c.report,
    })
}

/// The source phase: the tree to build and how it relates to the pin and the lock.
fn source_phase(
    opts: &BuildOptions,
    inputs: &Inputs,
    dirs: &Dirs,
    ph: &mut Phases<'_>,
) -> Result<source::Tree, KernelError> {
    ph.start("source", "kernel source");
    for n in ["source", "configure", "compile", "install", "nvidia"] {
        let _ = std::fs::remove_file(dirs.log(n));
    }
    let tree = source::prepare(
        &source::SourceRequest {
            given: opts.source.as_deref(),
            pin: &inputs.pins.kernel,
            configs: &opts.configs,
            cache: &dirs.lab.join("kernel-src"),
            allow_unpinned: opts.allow_unpinned,
        },
        &dirs.log("source"),
    )?;
    let found = match (&tree.info.package, &tree.info.package_version) {
        (Some(p), Some(v)) => format!("{} ({p} {v})", tree.version),
        _ => tree.version.clone(),
    };
    ph.done(
        !tree.extracted,
        format!(
            "{} {found}: {}",
            tree.dir.display(),
            tree.info.lock.note(&found, &inputs.pins.kernel)
        ),
    );
    Ok(tree)
}

/// Configure (`--clean` first removes the `O=` tree) and verify that every requested
/// option landed.
fn configure_phase(
    opts: &BuildOptions,
    inputs: &Inputs,
    dirs: &Dirs,
    tree: &source::Tree,
    ph: &mut Phases<'_>,
) -> Result<Configured, KernelError> {
    let kpin = &inputs.pins.kernel;
    let obj = &dirs.obj;
    if opts.clean {
        match std::fs::remove_dir_all(obj) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(obj, "cannot remove for a clean build")(e)),
        }
    }
    ph.start(
        "configure",
        format!("{} + {} fragments", kpin.base, inputs.fragments.len()),
    );
    let merged = verify::merge(&inputs.fragments);
    let dot = configure(
        &tree.dir,
        obj,
        &kpin.arch,
        &kpin.base,
        &merged,
        &dirs.log("configure"),
    )?;
    ph.done(false, format!("{}", obj.display()));

    ph.start(
        "verify",
        format!("{} requested options", merged.requests.len()),
    );
    let cfg_text = std::fs::read_to_string(&dot).map_err(io(&dot, "cannot read"))?;
    let cfg = DotConfig::parse(&dot, &cfg_text)?;
    let ktree = KconfigTree::load(&tree.dir, &kpin.srcarch)?;
    let report = verify::verify(&merged, &cfg, Some(&ktree), &inputs.allow);
    let vlog = dirs.log("verify");
    std::fs::write(&vlog, report.render()).map_err(io(&vlog, "cannot write"))?;
    if !report.ok() {
        return Err(KernelError::Verify {
            config: dot,
            dropped: report.dropped.len() + report.conflicts.len(),
            report: report.render(),
        });
    }
    ph.done(
        false,
        format!(
            "{} landed, {} allowlisted, {} symbols =y",
            report.requested - report.allowed.len(),
            report.allowed.len(),
            cfg.count_y()
        ),
    );
    Ok(Configured {
        sha256: sha_text(cfg_text.as_bytes()),
        dot,
        cfg,
        report,
    })
}

/// Compile, then install into the output dir (modules, depmod, the artefacts). Returns
/// the kernel release.
fn compile_and_install(
    opts: &BuildOptions,
    inputs: &Inputs,
    dirs: &Dirs,
    tree: &source::Tree,
    c: &Configured,
    cc: &str,
    ph: &mut Phases<'_>,
) -> Result<String, KernelError> {
    let arch = inputs.pins.kernel.arch.as_str();
    let (obj, out) = (&dirs.obj, &dirs.out);
    ph.start(
        "compile",
        format!("make -j{} ({cc}, nice {})", opts.jobs, opts.nice),
    );
    let mut total = objects_total(&tree.dir, obj, &c.cfg);
    let mut done = 0u64;
    (ph.progress)(Progress::Objects { done, total });
    compile_cmd(&tree.dir, obj, arch, opts.jobs, cc, opts.nice).run_logged_lines(
        "compile",
        &dirs.log("compile"),
        Some(&mut |line: &str| {
            if kbuild_object_line(line) {
                done += 1;
                total = total.max(done);
                (ph.progress)(Progress::Objects { done, total });
            }
        }),
    )?;
    // A build that compiled nothing (all up to date in the object dir) keeps the count.
    if done > 0 {
        let _ = std::fs::write(obj.join(OBJECT_COUNT_FILE), format!("{done}\n"));
    }
    let release = make(&tree.dir, obj, arch)
        .args(["-s", "kernelrelease", "LOCALVERSION="])
        .output()?;
    ph.done(false, release.clone());

    ph.start("install", format!("modules_install -> {}", out.display()));
    let ilog = dirs.log("install");
    let moddir = out.join("lib/modules").join(&release);
    let _ = std::fs::remove_dir_all(out.join("lib"));
    make(&tree.dir, obj, arch)
        .args([
            "modules_install".to_string(),
            format!("INSTALL_MOD_PATH={}", out.display()),
            "INSTALL_MOD_STRIP=1".into(),
            "LOCALVERSION=".into(),
        ])
        .run_logged("install", &ilog)?;
    std::fs::create_dir_all(&moddir).map_err(io(&moddir, "cannot create"))?;
    symlink_force(obj, &moddir.join("build"))?;
    symlink_force(&tree.dir, &moddir.join("source"))?;
    copy(&obj.join("arch/x86/boot/bzImage"), &out.join("vmlinuz"))?;
    copy(&c.dot, &out.join("config"))?;
    copy(&obj.join("System.map"), &out.join("System.map"))?;
    copy(&obj.join("Module.symvers"), &out.join("Module.symvers"))?;
    depmod_cmd(out, &release).run_logged("install", &ilog)?;
    ph.done(false, format!("{}", moddir.display()));
    Ok(release)
}

/// `build-manifest.json`: what was built from what.
#[allow(clippy::too_many_arguments)]
fn build_manifest(
    opts: &BuildOptions,
    inputs: &Inputs,
    dirs: &Dirs,
    tree: &source::Tree,
    c: &Configured,
    cc: &str,
    input_key: String,
    release: String,
    nvidia: Option<NvidiaInfo>,
    phases: Vec<PhaseTime>,
    started: u64,
) -> BuildManifest {
    let out = &dirs.out;
    let vmlinuz = out.join("vmlinuz");
    let cc_version = match c.cfg.get("CC_VERSION_TEXT") {
        Some(super::config::Value::Str(s)) => s.clone(),
        _ => String::new(),
    };
    BuildManifest {
        schema: MANIFEST_SCHEMA,
        vfioctl_version: env!("CARGO_PKG_VERSION").into(),
        input_key,
        config_sha256: c.sha256.clone(),
        kernel_version: tree.version.clone(),
        kernel_release: release.clone(),
        source: tree.info.clone(),
        flavours: inputs.fragments.iter().map(|f| f.flavour.clone()).collect(),
        fragments: inputs
            .fragments
            .iter()
            .map(|f| FragmentInfo {
                name: f.flavour.clone(),
                path: f.path.clone(),
                sha256: f.sha256.clone(),
            })
            .collect(),
        allowlist_sha256: sha_text(inputs.allow_text.as_bytes()),
        verify: VerifySummary {
            requested: c.report.requested,
            dropped: c.report.dropped.len(),
            allowed: c.report.allowed.len(),
            symbols_y: c.cfg.count_y(),
        },
        toolchain: Toolchain {
            cc: cc.into(),
            cc_version,
            ccache: cc.starts_with("ccache"),
        },
        jobs: opts.jobs,
        phases,
        artefacts: Artefacts {
            vmlinuz_bytes: std::fs::metadata(&vmlinuz).map(|m| m.len()).unwrap_or(0),
            vmlinuz,
            config: out.join("config"),
            system_map: out.join("System.map"),
            module_symvers: out.join("Module.symvers"),
            modules_dir: out.join("lib/modules").join(&release),
            objdir: dirs.obj.clone(),
            logs: dirs.logs.clone(),
        },
        nvidia,
        started,
        finished: now(),
    }
}

/// Unless `work/.vfioctl-stamp` already reads `stamp`: empty `work`, let `fill` fill it,
/// then write the stamp (last, so a failed fill is redone next time).
fn redo_unless_stamped(
    work: &Path,
    stamp: &str,
    fill: impl FnOnce() -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    let file = work.join(".vfioctl-stamp");
    if std::fs::read_to_string(&file).ok().as_deref() == Some(stamp) {
        return Ok(());
    }
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work).map_err(io(work, "cannot create"))?;
    fill()?;
    std::fs::write(&file, stamp).map_err(io(work, "cannot write stamp"))
}

#[allow(clippy::too_many_arguments)]
fn build_nvidia(
    mode: &NvidiaMode,
    pins: &Pins,
    opts: &BuildOptions,
    lab: &Path,
    syssrc: &Path,
    sysout: &Path,
    out: &Path,
    release: &str,
    cc: &str,
    config_sha: &str,
    patches: &[FragmentInfo],
    ph: &mut Phases<'_>,
    log: &Path,
) -> Result<NvidiaInfo, KernelError> {
    ph.start("nvidia", mode.to_string());
    if !sysout.join("Module.symvers").is_file() {
        return Err(KernelError::Nvidia {
            what: format!("{}/Module.symvers is missing", sysout.display()),
            hint: Some("the kernel needs a full build (not modules_prepare)".into()),
        });
    }
    let base = lab.join("kernel-build/nvidia");
    let stamp_want = format!("{mode} {config_sha} {patches:?}\n");
    let (version, nvsrc, fw_src, installer) = match mode {
        NvidiaMode::Debian(k) => {
            let pin = pins.nvidia.get(k).ok_or_else(|| KernelError::Nvidia {
                what: format!("`{k}` is not pinned"),
                hint: None,
            })?;
            let debs = lab.join("nvidia/debs");
            let src_deb = fetch_deb(
                &debs,
                &pin.source_package,
                &pin.source_deb,
                &pin.source_deb_sha256,
                log,
            )?;
            let fw_deb = fetch_deb(
                &debs,
                &pin.firmware_package,
                &pin.firmware_deb,
                &pin.firmware_deb_sha256,
                log,
            )?;
            let work = base.join(k).join(sysout.file_name().unwrap_or_default());
            let nvsrc = work.join(&pin.source_subdir);
            redo_unless_stamped(&work, &stamp_want, || {
                Cmd::new("dpkg-deb")
                    .args([
                        "-x".to_string(),
                        src_deb.display().to_string(),
                        work.join("deb").display().to_string(),
                    ])
                    .run_logged("nvidia", log)?;
                Cmd::new("tar")
                    .args([
                        "-xf".to_string(),
                        work.join("deb")
                            .join(&pin.source_tarball)
                            .display()
                            .to_string(),
                        "-C".into(),
                        work.display().to_string(),
                    ])
                    .run_logged("nvidia", log)?;
                source::apply_patches(&nvsrc, patches, log)
            })?;
            let fw = base.join(format!("firmware-{}", pin.version));
            if !fw.join("lib/firmware/nvidia").join(&pin.version).is_dir() {
                Cmd::new("dpkg-deb")
                    .args([
                        "-x".to_string(),
                        fw_deb.display().to_string(),
                        fw.display().to_string(),
                    ])
                    .run_logged("nvidia", log)?;
            }
            (
                pin.version.clone(),
                nvsrc,
                fw.join("lib/firmware/nvidia").join(&pin.version),
                None,
            )
        }
        NvidiaMode::Run(file) => {
            let version = nvidia::run_version(file).ok_or_else(|| KernelError::Nvidia {
                what: format!(
                    "{}: not an NVIDIA-Linux-<arch>-<version>.run file name",
                    file.display()
                ),
                hint: None,
            })?;
            if !file.is_file() {
                return Err(KernelError::Nvidia {
                    what: format!("{}: not found", file.display()),
                    hint: Some("download the .run from NVIDIA and pass --nvidia run:PATH".into()),
                });
            }
            let work = base
                .join(format!("run-{version}"))
                .join(sysout.file_name().unwrap_or_default());
            let ext = work.join("extracted");
            redo_unless_stamped(&work, &stamp_want, || {
                nvidia::run_extract(file, &ext).run_logged("nvidia", log)
            })?;
            let inst = nvidia::installer_command(&ext, release, syssrc, sysout, out);
            (
                version,
                ext.join("kernel-open"),
                ext.join("firmware"),
                Some(inst),
            )
        }
    };
    let b = ModuleBuild {
        nvsrc: &nvsrc,
        syssrc,
        sysout,
        jobs: opts.jobs,
        cc,
    };
    b.make_modules()
        .env("KBUILD_BUILD_TIMESTAMP", BUILD_TIMESTAMP)
        .niced(opts.nice)
        .run_logged("nvidia", log)?;
    b.make_modules_install(out).run_logged("nvidia", log)?;
    depmod_cmd(out, release).run_logged("nvidia", log)?;

    // modules and their vermagic
    let moddir = out.join("lib/modules").join(release);
    let mut modules = std::collections::BTreeMap::new();
    let video = moddir.join("kernel/drivers/video");
    if let Ok(rd) = std::fs::read_dir(&video) {
        for e in rd.filter_map(Result::ok) {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "ko") {
                let rel = p.strip_prefix(&moddir).unwrap_or(&p).display().to_string();
                modules.insert(rel, e.metadata().map(|m| m.len()).unwrap_or(0));
            }
        }
    }
    let nvko = video.join("nvidia.ko");
    if !nvko.is_file() {
        return Err(KernelError::Nvidia {
            what: format!("{} was not installed", nvko.display()),
            hint: Some(format!("see {}", log.display())),
        });
    }
    let modinfo = if have("modinfo") {
        "modinfo"
    } else {
        "/sbin/modinfo"
    };
    let vermagic = Cmd::new(modinfo)
        .args([
            "-F".to_string(),
            "vermagic".into(),
            nvko.display().to_string(),
        ])
        .output()?;
    if vermagic.split_whitespace().next() != Some(release) {
        return Err(KernelError::Nvidia {
            what: format!("nvidia.ko vermagic `{vermagic}` does not match the kernel {release}"),
            hint: None,
        });
    }

    // GSP firmware: the directory name is the module version.
    let fw_dst = out.join("lib/firmware/nvidia").join(&version);
    std::fs::create_dir_all(&fw_dst).map_err(io(&fw_dst, "cannot create"))?;
    let mut firmware = Vec::new();
    let rd = std::fs::read_dir(&fw_src).map_err(io(&fw_src, "no GSP firmware"))?;
    for e in rd.filter_map(Result::ok) {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("gsp_") && name.ends_with(".bin") {
            let dst = fw_dst.join(&name);
            copy(&p, &dst)?;
            firmware.push(dst);
        }
    }
    firmware.sort();
    ph.done(
        false,
        format!("{} modules, vermagic {vermagic}", modules.len()),
    );
    Ok(NvidiaInfo {
        mode: mode.to_string(),
        version,
        patches: patches.to_vec(),
        modules,
        vermagic,
        firmware,
        installer_command: installer,
    })
}

/// A pinned .deb in `debs/`, downloaded with `apt-get download` if missing, checked
/// against its pinned sha256.
fn fetch_deb(
    debs: &Path,
    package: &str,
    file: &str,
    sha: &str,
    log: &Path,
) -> Result<PathBuf, KernelError> {
    let p = debs.join(file);
    if !p.is_file() {
        std::fs::create_dir_all(debs).map_err(io(debs, "cannot create"))?;
        // `<pkg>_<debver>_<arch>.deb`
        let ver = file.split('_').nth(1).unwrap_or_default();
        Cmd::new("apt-get")
            .args(["download".to_string(), format!("{package}={ver}")])
            .cwd(debs)
            .run_logged("nvidia", log)
            .map_err(|e| KernelError::Nvidia {
                what: format!("cannot download {package} {ver}: {e}"),
                hint: Some(
                    "enable Debian's contrib, non-free and non-free-firmware components: scripts/setup --nvidia"
                        .into(),
                ),
            })?;
    }
    let got = source::sha256_file(&p)?;
    if got != sha {
        return Err(KernelError::Checksum {
            path: p,
            want: sha.into(),
            got,
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamped_directory_is_kept_and_any_other_redone() {
        let d = tempfile::tempdir().unwrap();
        let work = d.path().join("w");
        let fill = |n: &str| {
            let work = work.clone();
            let n = n.to_string();
            move || std::fs::write(work.join(&n), "x").map_err(io(&work, "test"))
        };
        redo_unless_stamped(&work, "a\n", fill("one")).unwrap();
        assert!(work.join("one").is_file());
        // Same stamp: nothing is redone.
        redo_unless_stamped(&work, "a\n", || panic!("redone")).unwrap();
        // Another stamp: emptied and filled again.
        redo_unless_stamped(&work, "b\n", fill("two")).unwrap();
        assert!(!work.join("one").exists() && work.join("two").is_file());
        assert_eq!(
            std::fs::read_to_string(work.join(".vfioctl-stamp")).unwrap(),
            "b\n"
        );
        // A failed fill leaves no stamp, so it is redone next time.
        let e = redo_unless_stamped(&work, "c\n", || {
            Err(io(&work, "test")(std::io::Error::other("no")))
        })
        .unwrap_err();
        assert!(matches!(e, KernelError::Io { .. }));
        assert!(!work.join(".vfioctl-stamp").exists());
    }

    #[test]
    fn kbuild_lines_that_are_objects() {
        for yes in [
            "  CC      init/main.o",
            "  CC [M]  drivers/vfio/pci/vfio-pci.o",
            "  AS      arch/x86/entry/entry_64.o",
            "  LD [M]  fs/fuse/fuse.o",
        ] {
            assert!(kbuild_object_line(yes), "{yes}");
        }
        for no in [
            "  HOSTCC  scripts/basic/fixdep",
            "  LD [M]  fs/fuse/fuse.ko",
            "  GEN     Makefile",
            "make[1]: Entering directory '/obj'",
            "init/main.c:12: warning: CC is odd.o",
        ] {
            assert!(!kbuild_object_line(no), "{no}");
        }
    }

    #[test]
    fn objects_are_estimated_from_the_enabled_makefile_lines() {
        let d = tempfile::tempdir().unwrap();
        let t = d.path();
        std::fs::create_dir_all(t.join("drivers/x")).unwrap();
        std::fs::create_dir_all(t.join(".git")).unwrap();
        std::fs::write(
            t.join("Makefile"),
            "obj-y += a.o b.o \\\n\tc.o\nobj-$(CONFIG_OFF) += off.o\n# obj-y += comment.o\n",
        )
        .unwrap();
        std::fs::write(
            t.join("drivers/x/Kbuild"),
            "obj-$(CONFIG_X) += x.o\nx-y := x1.o x2.o\nx-$(CONFIG_OFF) += x3.o\nsub-objs := s.o\n",
        )
        .unwrap();
        std::fs::write(t.join(".git/Makefile"), "obj-y += hidden.o\n").unwrap();
        let cfg = DotConfig::parse(
            Path::new(".config"),
            "CONFIG_X=m\n# CONFIG_OFF is not set\n",
        )
        .unwrap();
        // a b c, x x1 x2, s
        assert_eq!(estimate_objects(t, &cfg), 7);
        // The previous build's count wins over the estimate.
        let obj = t.join("obj");
        std::fs::create_dir_all(&obj).unwrap();
        assert_eq!(objects_total(t, &obj, &cfg), 7);
        std::fs::write(obj.join(OBJECT_COUNT_FILE), "4242\n").unwrap();
        assert_eq!(objects_total(t, &obj, &cfg), 4242);
    }

    fn configs() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs")
    }

    #[test]
    fn fragments_select_in_file_order() {
        let always = vec!["base".to_string(), "x86_64".to_string()];
        let f = select_fragments(&configs(), &always, &["debug".into(), "nvidia".into()]).unwrap();
        let names: Vec<_> = f.iter().map(|f| f.flavour.as_str()).collect();
        assert_eq!(names, vec!["base", "x86_64", "nvidia", "debug"]);
        assert_eq!(flavour_key(&f, &always), "nvidia+debug");
        let f = select_fragments(&configs(), &always, &[]).unwrap();
        assert_eq!(flavour_key(&f, &always), "base");
        let e = select_fragments(&configs(), &always, &["nvidai".into()]).unwrap_err();
        assert!(e.to_string().contains("nvidai"), "{e}");
        assert!(e.to_string().contains("vfio-guest"), "{e}");
    }

    #[test]
    fn the_committed_fragments_parse_and_do_not_conflict() {
        let always = vec!["base".to_string(), "x86_64".to_string()];
        let all = select_fragments(
            &configs(),
            &always,
            &["nvidia".into(), "vfio-guest".into(), "debug".into()],
        )
        .unwrap();
        let m = verify::merge(&all);
        assert!(
            m.redefinitions.iter().all(|r| !r.conflicting()),
            "{:?}",
            m.redefinitions
        );
        for s in [
            "HOTPLUG_PCI_PCIE",
            "MODULES",
            "MODULE_UNLOAD",
            "PCI_MMCONFIG",
            "VFIO_PCI",
        ] {
            assert_eq!(m.requests[s].value, super::super::config::Value::Y, "{s}");
        }
        assert_eq!(
            m.requests["DRM_NOUVEAU"].value,
            super::super::config::Value::N
        );
    }

    #[test]
    fn compile_command_is_niced_and_pinned() {
        let c = compile_cmd(
            Path::new("/s"),
            Path::new("/o"),
            "x86_64",
            2,
            "ccache gcc",
            10,
        );
        assert_eq!(
            c.render(),
            "KBUILD_BUILD_TIMESTAMP='2026-01-01 00:00:00' KBUILD_BUILD_USER=vfioctl KBUILD_BUILD_HOST=vfioctl KBUILD_BUILD_VERSION=1 CCACHE_BASEDIR='' nice -n 10 make -C /s O=/o ARCH=x86_64 -j2 'CC=ccache gcc' LOCALVERSION="
        );
    }
}
