//! `vfioctl kata ...`.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use crate::kata::{self, Artefacts, Base, KataError, PlugMode, Runtime};
use crate::output::Table;
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Subcommand)]
pub enum KataCommand {
    /// Print or patch configuration.toml for GPU passthrough.
    ///
    /// Without --base, prints a complete configuration.toml for QEMU; with --base, patches
    /// that file (only the GPU keys change) and shows a diff on a terminal or with
    /// --explain. Exit codes: 2 usage or input error (flags, version, base file), 1 the
    /// host cannot run it (device not on vfio-pci, group not viable, too many ports, no
    /// IOMMU).
    Config(ConfigArgs),
}

#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Kata release the file is for (`kata-runtime --version`), e.g. 3.1.0, 3.5.0, 3.6.0.
    /// Default: inferred from --base, else the newest modelled (4.1.0).
    #[arg(long, value_name = "V")]
    pub kata_version: Option<String>,
    /// Which Kata runtime reads the file.
    #[arg(long, value_enum)]
    pub runtime: Option<Runtime>,
    /// Kata configuration.toml to patch instead of generating a new one.
    #[arg(long, value_name = "FILE")]
    pub base: Option<PathBuf>,
    /// Devices to pass (0000:01:00.0, 10de:2330, class:gpu); default: every GPU on
    /// vfio-pci. Their IOMMU group companions come along.
    #[arg(long = "gpu", value_name = "SELECTOR", num_args = 1..)]
    pub gpu: Vec<String>,
    /// Guest kernel to point `kernel` at.
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Guest initrd to point `initrd` at (clears `image`).
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    pub initrd: Option<PathBuf>,
    /// Guest disk image (ext4) to point `image` at (clears `initrd`).
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Hot-plug the devices into reserved root ports after boot.
    #[arg(long)]
    pub hotplug: bool,
    /// Cold-plug the devices at boot (default from Kata 3.2 on).
    #[arg(long)]
    pub coldplug: bool,
    /// Print every key set with its reason, the diff, and notes.
    #[arg(long)]
    pub explain: bool,
    /// Write the file here instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

pub fn run(ctx: &Context, c: KataCommand) -> Result<Exit, Failure> {
    match c {
        KataCommand::Config(a) => config(ctx, a),
    }
}

fn config(ctx: &Context, a: ConfigArgs) -> Result<Exit, Failure> {
    if a.hotplug && a.coldplug {
        return Err(KataError::BothPlugModes.into());
    }
    let mode = match (a.hotplug, a.coldplug) {
        (true, _) => Some(PlugMode::Hot),
        (_, true) => Some(PlugMode::Cold),
        _ => None,
    };
    let version = a
        .kata_version
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(KataError::from)?;
    let base = match &a.base {
        Some(p) => Some((p.clone(), kata::read_base(p)?)),
        None => None,
    };
    let choice = kata::choose_target(version, a.runtime, base.as_ref().map(|(_, (_, d))| d))?;
    let artefacts = Artefacts {
        kernel: a
            .kernel
            .as_deref()
            .map(|p| kata::artefact("kernel", p))
            .transpose()?,
        initrd: a
            .initrd
            .as_deref()
            .map(|p| kata::artefact("initrd", p))
            .transpose()?,
        image: a
            .image
            .as_deref()
            .map(|p| kata::artefact("image", p))
            .transpose()?,
    };
    let selectors = super::selectors(&a.gpu, None)?;
    let sel = kata::select(&ctx.root, &selectors)?;
    let out_abs = a.out.as_ref().map(|p| {
        if p.is_absolute() {
            p.clone()
        } else {
            std::env::current_dir()
                .map(|d| d.join(p))
                .unwrap_or(p.clone())
        }
    });
    let base_text;
    let base_arg = match base {
        Some((path, (text, doc))) => {
            base_text = (path, text);
            Some(Base {
                path: &base_text.0,
                text: &base_text.1,
                doc,
            })
        }
        None => None,
    };
    let outcome = kata::configure(choice, mode, artefacts, sel, base_arg, out_abs.as_deref())?;

    if let Some(out) = &a.out {
        std::fs::write(out, &outcome.config).map_err(|source| KataError::Write {
            path: out.clone(),
            source,
        })?;
    }
    if ctx.json {
        let mut v =
            serde_json::to_value(&outcome).map_err(|e| Failure::new(Exit::Infrastructure, e))?;
        if let Some(out) = &out_abs {
            v["out"] = serde_json::Value::String(out.display().to_string());
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Failure::new(Exit::Infrastructure, e))?
        );
        return Ok(Exit::Ok);
    }

    let stdout = std::io::stdout();
    let tty = stdout.is_terminal();
    let mut o = stdout.lock();
    let io = |e: std::io::Error| Failure::new(Exit::Infrastructure, e);
    let patching = outcome.diff.is_some();
    // Where the file itself goes: --out, or stdout unless a diff is shown instead.
    let show_diff = patching && (a.explain || tty || a.out.is_some());
    let file_on_stdout = a.out.is_none() && !(patching && (a.explain || tty));
    if file_on_stdout {
        o.write_all(outcome.config.as_bytes()).map_err(io)?;
    }
    // Everything else goes to stdout when the file does not, else to stderr so that
    // `vfioctl kata config > configuration.toml` stays a valid file.
    let mut side: Box<dyn Write> = if file_on_stdout {
        Box::new(std::io::stderr())
    } else {
        Box::new(o)
    };
    if show_diff {
        let d = outcome.diff.as_deref().unwrap_or_default();
        if d.is_empty() {
            writeln!(side, "no change: the base file already has every setting").map_err(io)?;
        } else {
            side.write_all(d.as_bytes()).map_err(io)?;
        }
    }
    if a.explain {
        writeln!(
            side,
            "\n{} [{}]: {}, {} PCIe port(s) for IOMMU group(s) {}",
            outcome.target.target,
            outcome.target.how,
            outcome.mode,
            outcome.ports,
            outcome
                .groups
                .iter()
                .map(|g| g.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
        .map_err(io)?;
        let mut t = Table::new(&["TABLE", "KEY", "VALUE", "REASON"]);
        for s in &outcome.settings {
            let value = if s.changed || !patching {
                s.value.to_string()
            } else {
                format!("{} (kept)", s.value)
            };
            t.row(vec![
                format!("[{}]", s.table),
                s.key.to_string(),
                value,
                s.reason.clone(),
            ]);
        }
        t.write(&mut side).map_err(io)?;
        for n in &outcome.notes {
            writeln!(side, "note: {n}").map_err(io)?;
        }
    }
    if let Some(out) = &out_abs {
        writeln!(side, "wrote {}", out.display()).map_err(io)?;
    }
    if a.explain || a.out.is_some() || !file_on_stdout {
        writeln!(
            side,
            "\nTry it on the GPU host (containerd with the Kata shim):"
        )
        .map_err(io)?;
        for c in &outcome.try_commands {
            writeln!(side, "  {c}").map_err(io)?;
        }
    }
    Ok(Exit::Ok)
}
