//! `vfioctl kernel ...`.
use std::path::{Path, PathBuf};

use crate::kernel::{self, BuildOptions, NvidiaMode, Progress};
use crate::output::emit;
use crate::{Context, Exit, Failure};

/// `vfioctl kernel` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Build a guest kernel from kernel-configs/ fragments (tinyconfig + fragments +
    /// olddefconfig, every requested option verified), its modules and, with --nvidia,
    /// the NVIDIA open modules and GSP firmware.
    Build(BuildArgs),
    /// Check a .config against the fragments: every requested option must have landed;
    /// with --source, name the unmet Kconfig dependency of each one that did not.
    Verify(VerifyArgs),
    /// Record the exact kernel source (Debian package version, kernel version, sha256)
    /// in kernel-configs/kernel.lock and print what changed. manifest.toml pins the
    /// series; the lock records which tarball of it a build used.
    Lock(LockArgs),
}

/// `vfioctl kernel lock` arguments.
#[derive(Debug, clap::Args)]
pub struct LockArgs {
    /// Fragments, allowlist, manifest.toml and kernel.lock.
    #[arg(long, env = "VFIOCTL_KERNEL_CONFIGS", value_name = "DIR")]
    pub configs: Option<PathBuf>,
    /// The tarball to record [default: the pinned package's, /usr/src/linux-source-6.1.tar.xz].
    #[arg(long, value_name = "TARBALL")]
    pub source: Option<PathBuf>,
    /// The pinned series to record (a `[series."x.y"]` table, e.g. 6.12, into its own
    /// kernel-<series>.lock) [default: manifest.toml's `[kernel]` series, 6.1].
    #[arg(long, value_name = "X.Y")]
    pub series: Option<String>,
    /// Write nothing; exit 1 when the lock does not match the installed source.
    #[arg(long)]
    pub check: bool,
}

/// Arguments `kernel build` and `kernel verify` share.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Fragments, allowlist, manifest.toml and patches.
    #[arg(long, env = "VFIOCTL_KERNEL_CONFIGS", value_name = "DIR")]
    pub configs: Option<PathBuf>,
    /// Flavours on top of base + x86_64 (repeatable, or comma-separated): nvidia, rdma,
    /// vfio-guest, debug. Merged in kernel-configs/ file-name order, whatever the order here.
    #[arg(long = "flavour", value_delimiter = ',', value_name = "NAME")]
    pub flavours: Vec<String>,
    /// The pinned kernel series (manifest.toml's `[series."x.y"]` tables, e.g. 6.12 for
    /// iommufd and VFIO device cdevs) [default: the `[kernel]` series, 6.1].
    #[arg(long, value_name = "X.Y")]
    pub series: Option<String>,
}

/// `vfioctl kernel build` arguments.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The configs directory and flavours.
    #[command(flatten)]
    pub common: Common,
    /// Kernel source tree or tarball [default: the pinned /usr/src/linux-source-6.1.tar.xz].
    #[arg(long, value_name = "DIR|TARBALL")]
    pub source: Option<PathBuf>,
    /// Output dir [default: $VFIOCTL_LAB/kernel/vfioctl-<flavours>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Parallel make jobs (the build machines are shared: keep it small).
    #[arg(long, default_value_t = 2)]
    pub jobs: u32,
    /// NVIDIA kernel modules: open-535 (Debian bookworm, pinned) or run:FILE (a .run
    /// installer). Implies --flavour nvidia.
    #[arg(long, value_name = "open-535|run:FILE")]
    pub nvidia: Option<NvidiaMode>,
    /// Lab cache (extracted source, O= trees, default output).
    #[arg(long, env = "VFIOCTL_LAB", default_value = ".lab", value_name = "DIR")]
    pub lab: PathBuf,
    /// nice level for compile steps.
    #[arg(long, default_value_t = 10)]
    pub nice: i32,
    /// Do not use ccache even when installed.
    #[arg(long)]
    pub no_ccache: bool,
    /// Rebuild even when the inputs are unchanged.
    #[arg(long)]
    pub force: bool,
    /// Build a source of another kernel series than kernel-configs/manifest.toml pins.
    #[arg(long)]
    pub allow_unpinned: bool,
    /// Remove the O= build tree first: a clean build (implies --force).
    #[arg(long)]
    pub clean: bool,
}

/// `vfioctl kernel verify` arguments.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The configs directory and flavours.
    #[command(flatten)]
    pub common: Common,
    /// The final .config to check.
    #[arg(long, value_name = "FILE")]
    pub config: PathBuf,
    /// Kernel source tree, to explain drops from its Kconfig files.
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

/// kernel-configs/: the flag, ./kernel-configs, or the one in this source checkout.
fn configs_dir(c: &Common) -> PathBuf {
    if let Some(d) = &c.configs {
        return d.clone();
    }
    let here = PathBuf::from("kernel-configs");
    if here.join("manifest.toml").is_file() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs")
}

/// `vfioctl kernel`: run the subcommand.
pub fn run(ctx: &Context, c: KernelCommand) -> Result<Exit, Failure> {
    match c {
        KernelCommand::Build(a) => run_build(ctx, a),
        KernelCommand::Verify(a) => run_verify(ctx, a),
        KernelCommand::Lock(a) => run_lock(ctx, a),
    }
}

fn run_lock(ctx: &Context, a: LockArgs) -> Result<Exit, Failure> {
    let configs = configs_dir(&Common {
        configs: a.configs,
        flavours: Vec::new(),
        series: None,
    });
    let pins = read_pins(&configs, a.series.as_deref())?;
    let tarball = a.source.unwrap_or_else(|| pins.kernel.tarball.clone());
    let u = kernel::lock::update(&configs, &pins.kernel, &tarball, a.check)?;
    emit(ctx, &u, |out| {
        if u.changes.is_empty() {
            writeln!(
                out,
                "{}: unchanged ({} {}, kernel {})",
                u.path.display(),
                u.new.package,
                u.new.package_version,
                u.new.version
            )
        } else {
            let verb = if u.written { "updated" } else { "out of date" };
            writeln!(out, "{}: {verb}", u.path.display())?;
            for c in &u.changes {
                writeln!(out, "  {c}")?;
            }
            Ok(())
        }
    })
    .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
    Ok(if a.check && !u.changes.is_empty() {
        Exit::CheckFailed
    } else {
        Exit::Ok
    })
}

/// The pin manifest of `configs`, with `series` selected (see [`kernel::manifest::Pins::select`]).
fn read_pins(configs: &Path, series: Option<&str>) -> Result<kernel::manifest::Pins, Failure> {
    if !configs.is_dir() {
        return Err(Failure::usage(format!(
            "--configs {}: no such directory; it holds the config fragments, the allowlist and manifest.toml (default: kernel-configs/ of this source tree)",
            configs.display()
        )));
    }
    let pins_path = configs.join("manifest.toml");
    let text = std::fs::read_to_string(&pins_path).map_err(|source| {
        Failure::from(kernel::KernelError::Io {
            path: pins_path.clone(),
            what: "cannot read the pin manifest",
            source,
        })
    })?;
    let pins = kernel::manifest::Pins::parse(&text).map_err(|source| {
        Failure::from(kernel::KernelError::Pins {
            path: pins_path.clone(),
            source,
        })
    })?;
    Ok(pins.select(series, &pins_path)?)
}

fn run_build(ctx: &Context, a: BuildArgs) -> Result<Exit, Failure> {
    let opts = BuildOptions {
        configs: configs_dir(&a.common),
        source: a.source,
        series: a.common.series,
        flavours: a.common.flavours,
        out: a.out,
        lab: a.lab,
        jobs: a.jobs.max(1),
        nvidia: a.nvidia,
        allow_unpinned: a.allow_unpinned,
        force: a.force,
        nice: a.nice,
        ccache: !a.no_ccache,
        clean: a.clean,
    };
    // A spinner with the running phase at a terminal; one line per finished phase
    // (not with -q).
    let bar = crate::output::Progress::spinner(ctx, "kernel build");
    let mut progress = |p: Progress| match p {
        Progress::Start { phase, what } => {
            bar.set_message(format!("[{phase}] {what}"));
            if !bar.is_visible() {
                crate::output::note(ctx, format!("[{phase}] {what} ..."));
            }
        }
        Progress::Objects { done, total } => bar.count(done, total),
        Progress::Done {
            phase,
            seconds,
            skipped,
            note,
        } => {
            bar.uncount();
            bar.println(
                ctx,
                format!(
                    "[{phase}] {} in {}: {note}",
                    if skipped { "cached" } else { "done" },
                    crate::output::human_duration(std::time::Duration::from_secs_f64(
                        seconds.max(0.0)
                    ))
                ),
            )
        }
    };
    let r = kernel::build(&opts, &mut progress)?;
    emit(ctx, &r, |out| {
        let m = &r.manifest;
        if r.up_to_date {
            writeln!(out, "up to date (inputs unchanged): {}", r.out.display())?;
        }
        writeln!(
            out,
            "kernel {} ({})",
            m.kernel_release,
            m.flavours.join(", ")
        )?;
        writeln!(
            out,
            "vmlinuz {} ({} bytes)",
            m.artefacts.vmlinuz.display(),
            m.artefacts.vmlinuz_bytes
        )?;
        writeln!(out, "modules {}", m.artefacts.modules_dir.display())?;
        writeln!(
            out,
            "config  {} ({} options requested, {} dropped, {} allowlisted)",
            m.artefacts.config.display(),
            m.verify.requested,
            m.verify.dropped,
            m.verify.allowed
        )?;
        if let Some(nv) = &m.nvidia {
            writeln!(
                out,
                "nvidia  {} {}: {} modules, vermagic {}, firmware {}",
                nv.mode,
                nv.version,
                nv.modules.len(),
                nv.vermagic,
                nv.firmware.len()
            )?;
        }
        writeln!(
            out,
            "manifest {}",
            r.out.join("build-manifest.json").display()
        )
    })
    .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
    Ok(Exit::Ok)
}

fn run_verify(ctx: &Context, a: VerifyArgs) -> Result<Exit, Failure> {
    let configs = configs_dir(&a.common);
    let pins = read_pins(&configs, a.common.series.as_deref())?;
    let flavours: Vec<String> = a
        .common
        .flavours
        .into_iter()
        .filter(|f| f != "base")
        .collect();
    let frags = kernel::build::select_fragments(&configs, &pins.kernel.always, &flavours)?;
    let merged = kernel::merge(&frags);
    let text = std::fs::read_to_string(&a.config)
        .map_err(|e| Failure::new(Exit::Usage, format!("{}: {e}", a.config.display())))?;
    let cfg = kernel::DotConfig::parse(&a.config, &text).map_err(kernel::KernelError::from)?;
    let tree = match &a.source {
        Some(s) => Some(
            kernel::KconfigTree::load(s, &pins.kernel.srcarch)
                .map_err(kernel::KernelError::from)?,
        ),
        None => None,
    };
    let allow_path = configs.join("allowlist");
    let allow = kernel::Allowlist::parse(
        &allow_path,
        &std::fs::read_to_string(&allow_path).unwrap_or_default(),
    )
    .map_err(kernel::KernelError::from)?;
    let report = kernel::verify(&merged, &cfg, tree.as_ref(), &allow);
    emit(ctx, &report, |out| write!(out, "{}", report.render()))
        .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
    Ok(if report.ok() {
        Exit::Ok
    } else {
        Exit::CheckFailed
    })
}
