//! `vfioctl rootfs ...`.
use std::path::PathBuf;

use crate::output::emit;
use crate::rootfs::{self, BuildOptions, Compression};
use crate::{Context, Exit, Failure};

/// `vfioctl rootfs` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RootfsCommand {
    /// Build an initramfs (and optionally an ext4 image) from a rootfs/ manifest.
    Build(BuildArgs),
}

/// `vfioctl rootfs build` arguments.
#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// The manifest (rootfs/lab.toml, rootfs/lab-vfio.toml, rootfs/nvidia.toml).
    #[arg(long, default_value = "rootfs/lab.toml")]
    pub manifest: PathBuf,
    /// Kernel modules: lib/modules/KVER itself or a root containing lib/modules/KVER
    /// (e.g. .lab/kernel/current).
    #[arg(long, value_name = "DIR")]
    pub kernel_modules: Option<PathBuf>,
    /// Kernel release, when DIR holds several.
    #[arg(long)]
    pub kver: Option<String>,
    /// The initramfs to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write an ext4 image of the same tree (mkfs.ext4 -d).
    #[arg(long, value_name = "FILE")]
    pub ext4: Option<PathBuf>,
    /// The static agent binary (default: an installed one, vfioctl-agent next to this
    /// vfioctl or in /usr/libexec/vfioctl; scripts/build-agent builds one and prints its path).
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// Where the manifest's firmware files are looked up.
    #[arg(long, value_name = "DIR")]
    pub firmware_dir: Option<PathBuf>,
    /// Extra file, SRC:GUEST_PATH (repeatable).
    #[arg(long, value_name = "SRC:DST")]
    pub extra: Vec<String>,
    /// Enable the agent's exec request regardless of the manifest.
    #[arg(long, conflicts_with = "no_exec")]
    pub exec: bool,
    /// Disable the agent's exec request regardless of the manifest.
    #[arg(long)]
    pub no_exec: bool,
    /// Ship no kernel modules (the kernel has what the manifest lists built in).
    #[arg(long, conflicts_with = "kernel_modules")]
    pub no_modules: bool,
    /// gzip, zstd or none (default: the manifest's).
    #[arg(long)]
    pub compression: Option<String>,
}

/// `vfioctl rootfs`: run the subcommand.
pub fn run(ctx: &Context, c: RootfsCommand) -> Result<Exit, Failure> {
    match c {
        RootfsCommand::Build(a) => build(ctx, a),
    }
}

fn build(ctx: &Context, a: BuildArgs) -> Result<Exit, Failure> {
    let extra = a
        .extra
        .iter()
        .map(|s| {
            s.rsplit_once(':')
                .map(|(src, dst)| (PathBuf::from(src), dst.to_string()))
                .ok_or_else(|| Failure::usage(format!("--extra {s}: expected SRC:GUEST_PATH")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let compression = match a.compression.as_deref() {
        None => None,
        Some("gzip") => Some(Compression::Gzip),
        Some("zstd") => Some(Compression::Zstd),
        Some("none") => Some(Compression::None),
        Some(o) => {
            return Err(Failure::usage(format!(
                "--compression {o}: gzip, zstd or none"
            )))
        }
    };
    let opts = BuildOptions {
        manifest: a.manifest,
        kernel_modules: a.kernel_modules,
        kver: a.kver,
        out: a.out,
        ext4: a.ext4,
        agent: a.agent,
        firmware_dir: a.firmware_dir,
        extra,
        exec: if a.exec {
            Some(true)
        } else if a.no_exec {
            Some(false)
        } else {
            None
        },
        compression,
        no_modules: a.no_modules,
    };
    let spinner = crate::output::Progress::spinner(ctx, "building the guest image");
    let report = rootfs::build(&opts);
    spinner.finish();
    let report = report?;
    emit(ctx, &report, |out| {
        writeln!(
            out,
            "{}: {} bytes ({:?}, {} entries, {} uncompressed), sha256 {}",
            report.out.display(),
            report.bytes,
            report.compression,
            report.entries,
            report.uncompressed_bytes,
            report.sha256
        )?;
        writeln!(
            out,
            "agent: {} ({} bytes)",
            report.agent.display(),
            report.agent_bytes
        )?;
        for m in &report.modules {
            if m.builtin {
                writeln!(
                    out,
                    "module {}: built into the kernel (not shipped)",
                    m.name
                )?;
            } else {
                writeln!(
                    out,
                    "module {}{}: {}",
                    m.name,
                    if m.loaded_at_boot {
                        " (loaded at boot)"
                    } else {
                        ""
                    },
                    m.files.join(", ")
                )?;
            }
        }
        for f in &report.firmware {
            writeln!(out, "firmware: {f}")?;
        }
        for m in &report.missing_optional {
            writeln!(out, "missing (optional): {m}")?;
        }
        if let Some(e) = &report.ext4 {
            writeln!(out, "ext4: {}", e.display())?;
        }
        if let Some(h) = &report.guest_hook_path {
            writeln!(out, "kata guest_hook_path: {h}")?;
        }
        writeln!(out, "built in {} ms", report.build_ms)
    })
    .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
    Ok(Exit::Ok)
}
