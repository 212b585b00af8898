//! `vfioctl kata ...`.
use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use crate::kata::{self, Artefacts, Base, Guest, KataError, Options, PlugMode, Runtime};
use crate::output::Table;
use crate::{Context, Exit, Failure};

/// `vfioctl kata` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum KataCommand {
    /// Print or patch configuration.toml for GPU passthrough.
    ///
    /// Without --base, prints Kata's own template of the release with only the GPU keys
    /// changed; with --base, patches that file and shows a diff on a terminal or with
    /// --explain; with --drop-in, writes only vfioctl's keys into config.d/. The release
    /// comes from --kata-version or the installed Kata, never from guessing. Exit codes:
    /// 2 usage or input error (flags, unknown version, base file), 1 the host cannot run
    /// it (a bridge in the group on a foreign driver, too many ports, no IOMMU, a BAR never
    /// assigned). Devices still on a host driver are a warning with the bind command.
    Config(ConfigArgs),
}

/// `vfioctl kata config` arguments.
#[derive(Debug, clap::Args)]
pub struct ConfigArgs {
    /// Kata release the file is for (`kata-runtime --version`), e.g. 3.1.0, 3.5.0, 3.30.0.
    /// Default: the Kata installed on this host (kata-runtime --version, kata-ctl
    /// version, the kata-containers package); without one, this flag is required.
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
    #[arg(long, value_name = "FILE", conflicts_with = "drop_in")]
    pub out: Option<PathBuf>,
    /// Write only vfioctl's keys as a drop-in, DIR/90-vfioctl-gpu.toml, instead of a whole
    /// file. DIR is the config.d/ beside the configuration.toml Kata loads (--base, or
    /// Kata's stock template of the version); its other drop-ins are taken into account.
    #[arg(long, value_name = "DIR")]
    pub drop_in: Option<PathBuf>,
    /// The guest image the containers boot: Kata's NVIDIA guest (NVRC, guest-side CDI) or
    /// vfioctl's own (`vfioctl rootfs build`, OCI hooks: sets guest_hook_path).
    #[arg(long, value_enum, default_value_t = Guest::Kata)]
    pub guest: Guest,
    /// The file is for Kubernetes: keep pod_resource_api_sock (Kata 3.24 - 3.32 abort
    /// sandbox creation when the kubelet socket is missing, so it is cleared otherwise).
    #[arg(long)]
    pub kubernetes: bool,
    /// The VFIO backend the container's devices use: `group` (/dev/vfio/N, default) or
    /// `iommufd` (/dev/vfio/devices/vfioN; the host kernel must have the cdevs).
    #[arg(long, value_name = "group|iommufd", default_value = "group")]
    pub vfio_backend: crate::shared::BackendChoice,
}

/// `vfioctl kata`: run the subcommand.
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
    // Only the real host can say which Kata is installed; a --root tree cannot.
    let installed = if ctx.root.is_host() {
        kata::detect::installed()
    } else {
        None
    };
    let choice = kata::choose_target(
        version,
        a.runtime,
        base.as_ref().map(|(_, (_, d))| d),
        installed.as_ref(),
    )?;
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
    let drop_ins = match &a.drop_in {
        Some(dir) => kata::dropin::read_dir(dir)?,
        None => Vec::new(),
    };
    let opts = Options {
        mode,
        artefacts,
        guest: a.guest,
        kubernetes: a.kubernetes,
    };
    let config_path = if a.drop_in.is_some() {
        None
    } else {
        out_abs.as_deref()
    };
    let outcome = kata::configure(choice, opts, sel, base_arg, &drop_ins, config_path)?;
    // The device nodes for the backend (Kata's QEMU is not known here: the kernel decides).
    let backend = {
        use crate::shared::{backend, BackendFacts};
        let facts = BackendFacts {
            qemu_iommufd: Some(true),
            ..BackendFacts::gather(&ctx.root, None)
        };
        backend::choose(a.vfio_backend, &facts)?
    };
    let mut outcome = outcome;
    let device_nodes = kata::device_nodes(&ctx.root, &outcome.selection, backend);
    if backend != crate::shared::VfioBackend::Group {
        outcome.try_commands = kata::try_commands_with(
            &outcome.target.target,
            &outcome.selection,
            config_path,
            &device_nodes,
        );
    }

    if let Some(out) = &a.out {
        std::fs::write(out, &outcome.config).map_err(|source| KataError::Write {
            path: out.clone(),
            source,
        })?;
    }
    if let Some(dir) = &a.drop_in {
        return drop_in(ctx, dir, &drop_ins, &outcome);
    }
    if ctx.json {
        let v = crate::output::sorted(&ConfigOutput {
            outcome,
            out: out_abs.as_ref().map(|o| o.display().to_string()),
            vfio_backend: backend,
            device_nodes,
        })?;
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
    for w in &outcome.warnings {
        writeln!(side, "warning: {w}").map_err(io)?;
    }
    if a.explain {
        if let Some(t) = &outcome.template {
            writeln!(side, "template: {}", t.how).map_err(io)?;
        }
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

/// `kata config --json`: the outcome, where the file was written, and the device nodes
/// for the VFIO backend.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ConfigOutput {
    /// What was planned and produced (its fields appear at the top level).
    #[serde(flatten)]
    pub outcome: kata::Outcome,
    /// The file written (`--out`), absolute.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub out: Option<String>,
    /// The VFIO backend the device nodes are for.
    pub vfio_backend: crate::shared::VfioBackend,
    /// The device nodes the container needs (`/dev/vfio/<group>` or
    /// `/dev/vfio/devices/vfioN`).
    pub device_nodes: Vec<String>,
}

/// `kata config --drop-in DIR --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct DropInOutput {
    /// The drop-in file written.
    pub drop_in: String,
    /// The keys it sets (only those that change something).
    pub keys: Vec<kata::Setting>,
    /// How the devices reach the VM (cold: at boot; hot: `device_add` after boot).
    pub mode: PlugMode,
    /// The other drop-ins in the directory, read over.
    pub read_over: Vec<String>,
    /// The Kata release and runtime the file is for, and where that choice came from.
    pub target: kata::TargetChoice,
    /// How the PCIe ports are laid out in the guest (root ports or a switch).
    pub topology: kata::Topology,
    /// Commands to try the configuration on a GPU host.
    pub try_commands: Vec<String>,
    /// Devices still on a host driver, the topology chosen and why, drop-ins that
    /// override this one.
    pub warnings: Vec<String>,
}

/// Write `outcome.drop_in` into `dir` and report.
fn drop_in(
    ctx: &Context,
    dir: &std::path::Path,
    others: &[kata::dropin::DropIn],
    outcome: &kata::Outcome,
) -> Result<Exit, Failure> {
    let io = |e: std::io::Error| Failure::new(Exit::Infrastructure, e);
    std::fs::create_dir_all(dir).map_err(|source| KataError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let path = dir.join(kata::DROP_IN_NAME);
    std::fs::write(&path, &outcome.drop_in).map_err(|source| KataError::Write {
        path: path.clone(),
        source,
    })?;
    let mut warnings = outcome.warnings.clone();
    if dir.file_name().is_none_or(|n| n != "config.d") {
        warnings.push(format!(
            "{} is not named config.d: Kata reads drop-ins only from the config.d/ beside the configuration.toml it loads",
            dir.display()
        ));
    }
    let later: Vec<String> = others
        .iter()
        .filter(|d| {
            d.path
                .file_name()
                .is_some_and(|n| n > std::ffi::OsStr::new(kata::DROP_IN_NAME))
        })
        .map(|d| d.path.display().to_string())
        .collect();
    if !later.is_empty() {
        warnings.push(format!(
            "{} sort after {} and override it where they set the same keys",
            later.join(", "),
            kata::DROP_IN_NAME
        ));
    }
    let changed: Vec<&kata::Setting> = outcome.settings.iter().filter(|s| s.changed).collect();
    if ctx.json {
        let v = crate::output::sorted(&DropInOutput {
            drop_in: path.display().to_string(),
            keys: changed.iter().map(|s| (*s).clone()).collect(),
            mode: outcome.mode,
            read_over: others
                .iter()
                .map(|d| d.path.display().to_string())
                .collect(),
            target: outcome.target.clone(),
            topology: outcome.topology.clone(),
            try_commands: outcome.try_commands.clone(),
            warnings,
        })?;
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| Failure::new(Exit::Infrastructure, e))?
        );
        return Ok(Exit::Ok);
    }
    let mut o = std::io::stdout().lock();
    for w in &warnings {
        writeln!(o, "warning: {w}").map_err(io)?;
    }
    writeln!(
        o,
        "wrote {} for {}: {} key(s)",
        path.display(),
        outcome.target.target,
        changed.len()
    )
    .map_err(io)?;
    for s in &changed {
        writeln!(o, "  [{}] {} = {}  ({})", s.table, s.key, s.value, s.reason).map_err(io)?;
    }
    writeln!(
        o,
        "\nTry it on the GPU host (containerd with the Kata shim):"
    )
    .map_err(io)?;
    for c in &outcome.try_commands {
        writeln!(o, "  {c}").map_err(io)?;
    }
    Ok(Exit::Ok)
}
