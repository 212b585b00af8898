//! `vfioctl vm ...`: thin wrappers over `vfioctl::vm`.
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::output::{emit, Table};
use crate::vm::accel::{self, Accel};
use crate::vm::lifecycle::{self, Env};
use crate::vm::plug;
use crate::vm::ports::{self, DeviceBars, Firmware, PhysBits};
use crate::vm::profile::{
    AccelChoice, GpuSpec, HotplugMode, PlugWhen, Profile, Ready, VsockChoice,
};
use crate::vm::VmName;
use crate::{Context, Exit, Failure};
use vfioctl_common::{units, PciDevice};

/// `vfioctl vm` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Start a VM and wait until the guest is ready; with --gpu, hotplug it too.
    Up(Box<UpArgs>),
    /// Stop a VM (unplug, power down, quit, kill) and remove its runtime directory.
    Down(DownArgs),
    /// Show one VM: state, processes, ports, plugged devices.
    Status(NameArg),
    /// List VMs under the runtime directory.
    List,
    /// Hotplug a GPU (or the emulated stand-in) into a running VM.
    Plug(PlugArgs),
    /// Unplug a device and wait until QEMU reports it deleted.
    Unplug(UnplugArgs),
    /// Print the root ports vfioctl would create for these devices, and why.
    Plan(PlanArgs),
}

/// `vfioctl vm up` arguments.
#[derive(Debug, clap::Args)]
pub struct UpArgs {
    /// Profile TOML (defaults are built in; flags override the file).
    #[arg(long)]
    pub profile: Option<PathBuf>,
    /// VM name: its runtime directory, QMP socket and state file (default: the
    /// profile's, else `lab`); 1-32 letters, digits, - and _.
    #[arg(long)]
    pub name: Option<VmName>,
    /// Device to hotplug after boot (repeatable): a host BDF or emulated:<size>.
    #[arg(long = "gpu", value_name = "BDF|vf:BDF|mdev:UUID|emulated:SIZE")]
    pub gpus: Vec<GpuSpec>,
    /// Size a root port for this device without plugging it (repeatable).
    #[arg(long = "port-for", value_name = "BDF|vf:BDF|mdev:UUID|emulated:SIZE")]
    pub port_for: Vec<GpuSpec>,
    /// Cold-plug this device on QEMU's command line (repeatable).
    #[arg(long = "cold", value_name = "BDF|vf:BDF|mdev:UUID|emulated:SIZE")]
    pub cold: Vec<GpuSpec>,
    /// Total GPU root ports (spares beyond the devices get firmware default windows).
    #[arg(long)]
    pub gpu_ports: Option<usize>,
    /// Guest kernel (bzImage/vmlinuz) booted directly by QEMU (-kernel).
    #[arg(long, value_name = "FILE")]
    pub kernel: Option<PathBuf>,
    /// Initramfs for the guest kernel (-initrd), e.g. from `vfioctl rootfs build`.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Disk image attached as a virtio block device (raw or qcow2).
    #[arg(long, value_name = "FILE")]
    pub disk: Option<PathBuf>,
    /// Extra guest kernel command line, appended after vfioctl's own (console, IOMMU).
    #[arg(long, value_name = "ARGS")]
    pub cmdline: Option<String>,
    /// Guest RAM, e.g. 4G or 512M.
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Number of guest vCPUs.
    #[arg(long, value_name = "N")]
    pub vcpus: Option<u32>,
    /// Guest firmware: SeaBIOS or OVMF (UEFI).
    #[arg(long, value_enum)]
    pub firmware: Option<Firmware>,
    /// PCI hotplug signalling: acpi (fast in Linux) or native PCIe (pciehp).
    #[arg(long, value_enum)]
    pub hotplug: Option<HotplugMode>,
    /// Accelerator: auto probes whether QEMU can really use KVM here, else TCG.
    #[arg(long, value_enum)]
    pub accel: Option<AccelChoice>,
    /// Guest agent transport: auto uses vhost-vsock when /dev/vhost-vsock opens, else
    /// vhost-user-vsock through vhost-device-vsock.
    #[arg(long, value_enum)]
    pub vsock: Option<VsockChoice>,
    /// Readiness: `agent` or `serial:<marker>`.
    #[arg(long)]
    pub ready: Option<String>,
    /// Seconds until the guest must be ready.
    #[arg(long)]
    pub boot_timeout: Option<u64>,
    /// Ask the guest agent to allow `exec` (the image must allow it too).
    #[arg(long)]
    pub agent_exec: bool,
    /// The QEMU binary (default: qemu-system-x86_64 on PATH, or the stack's).
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<PathBuf>,
    /// A lab stack: `system` (the distribution's QEMU, .lab/kernel/current) or `modern`
    /// (QEMU 10 and kernel 6.12 from `scripts/setup --modern`); sets QEMU, its -L and the
    /// kernel unless given.
    #[arg(long, value_name = "NAME")]
    pub stack: Option<String>,
    /// VFIO backend for host devices: auto (iommufd when the kernel and QEMU both have
    /// it), group, iommufd.
    #[arg(long, value_name = "auto|group|iommufd")]
    pub vfio_backend: Option<crate::shared::BackendChoice>,
    /// Resolve everything and print the QEMU command line; start nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `vfioctl vm down` arguments.
#[derive(Debug, clap::Args)]
pub struct DownArgs {
    /// The VM to stop.
    #[arg(default_value = "lab")]
    pub name: VmName,
    /// Seconds to wait for the guest to power off before `quit`.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

/// The VM name argument of `vm status`.
#[derive(Debug, clap::Args)]
pub struct NameArg {
    /// The VM.
    #[arg(default_value = "lab")]
    pub name: VmName,
}

/// `vfioctl vm plug` arguments.
#[derive(Debug, clap::Args)]
pub struct PlugArgs {
    /// The running VM to plug into.
    #[arg(default_value = "lab")]
    pub name: VmName,
    /// The device: a host BDF (bound to vfio-pci) or emulated:SIZE (the ivshmem-plain
    /// stand-in with a SIZE 64-bit prefetchable BAR).
    #[arg(long = "gpu", value_name = "BDF|vf:BDF|mdev:UUID|emulated:SIZE")]
    pub gpu: GpuSpec,
    /// Root port to use (default: a free port sized for the device).
    #[arg(long)]
    pub port: Option<String>,
    /// Bind the device (and its IOMMU group companions) to vfio-pci first, as
    /// `vfioctl bind` does.
    #[arg(long)]
    pub bind: bool,
}

/// `vfioctl vm unplug` arguments.
#[derive(Debug, clap::Args)]
pub struct UnplugArgs {
    /// The running VM to unplug from.
    #[arg(default_value = "lab")]
    pub name: VmName,
    /// Device id (`gpu0`) or what was plugged (`emulated:8G`, a BDF).
    #[arg(long)]
    pub id: String,
}

/// `vfioctl vm plan` arguments.
#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// Devices to size root ports for (repeatable): a host BDF (BAR sizes read from
    /// sysfs) or emulated:SIZE.
    #[arg(
        long = "gpu",
        value_name = "BDF|vf:BDF|mdev:UUID|emulated:SIZE",
        required = true
    )]
    pub gpus: Vec<GpuSpec>,
    /// Guest firmware, whose address-space limits the windows must fit.
    #[arg(long, value_enum, default_value = "seabios")]
    pub firmware: Firmware,
    /// Guest RAM.
    #[arg(long, default_value = "1G")]
    pub memory: String,
    /// Extra plain ports.
    #[arg(long, default_value_t = 0)]
    pub spare: usize,
    /// Guest CPU: `tcg` (qemu64, phys-bits adjustable) or `host:<bits>` (KVM -cpu host);
    /// default: probe this machine.
    #[arg(long)]
    pub cpu: Option<String>,
}

/// One row of `vm list --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ListRow {
    /// KVM or TCG.
    pub accel: Accel,
    /// The VM's name.
    pub name: VmName,
    /// QEMU's pid, when known.
    pub pid: Option<u32>,
    /// What is plugged (`emulated:8G`, a BDF, `mdev:UUID`).
    pub plugged: Vec<String>,
    /// The VM's runtime directory (state file, sockets, logs).
    pub run_dir: PathBuf,
    /// Where the VM is in its life.
    pub state: crate::vm::state::VmState,
}

/// `vm plug --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct PlugOutput {
    /// What the guest saw: its BDF, ids, BARs, seconds until it appeared.
    pub guest: plug::Confirmed,
    /// The device as the VM record keeps it.
    pub plugged: Option<crate::vm::state::Plugged>,
    /// The VM plugged into.
    pub vm: VmName,
}

/// `vm unplug --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct UnplugOutput {
    /// Seconds until QEMU reported `DEVICE_DELETED`.
    pub seconds: f64,
    /// The device id that was unplugged.
    pub unplugged: String,
    /// The VM unplugged from.
    pub vm: VmName,
}

/// `vm up --dry-run --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct DryRunOutput {
    /// QEMU's command line, one argument per element.
    pub argv: Vec<String>,
    /// The root ports and windows for the devices.
    pub plan: ports::Plan,
    /// Warnings from preparing the VM (without `--json` they go to stderr).
    pub warnings: Vec<String>,
}

fn show<T: serde::Serialize>(
    ctx: &Context,
    v: &T,
    human: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), Failure> {
    emit(ctx, v, human).map_err(|e| Failure::new(Exit::Infrastructure, e))
}

fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Exit::Infrastructure, e))
}

fn env(ctx: &Context) -> Env {
    Env {
        root: ctx.root.clone(),
        base: crate::vm::state::run_base(),
    }
}

/// The profile from defaults, --profile and flags.
pub fn profile_from(a: &UpArgs) -> Result<Profile, Failure> {
    let mut p = match &a.profile {
        Some(f) => Profile::load(f)?,
        None => Profile::default(),
    };
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = &a.$f { p.$f = v.clone().into(); } )* };
    }
    set!(
        name,
        memory,
        vcpus,
        firmware,
        hotplug,
        accel,
        vsock,
        boot_timeout,
        cmdline,
        gpu_ports
    );
    if a.kernel.is_some() {
        p.kernel = a.kernel.clone();
    }
    if a.initrd.is_some() {
        p.initrd = a.initrd.clone();
    }
    if a.disk.is_some() {
        p.disk = a.disk.clone();
    }
    if let Some(r) = &a.ready {
        p.ready = Ready::parse(r).map_err(Failure::usage)?;
    }
    if a.agent_exec {
        p.agent_exec = true;
    }
    if let Some(s) = &a.stack {
        let st = crate::shared::stack::resolve(s, &crate::vm::profile::lab_dir())?;
        p.qemu = st.qemu.clone();
        p.qemu_args.extend(st.qemu_args());
        if p.kernel.is_none() && p.disk.is_none() {
            p.kernel = st.kernel.clone();
        }
    }
    if let Some(q) = &a.qemu {
        p.qemu = q.clone();
    }
    if let Some(b) = a.vfio_backend {
        p.vfio_backend = b;
    }
    if p.kernel.is_none() && p.disk.is_none() {
        p.kernel = crate::vm::profile::lab_kernel();
    }
    for (list, when) in [
        (&a.gpus, PlugWhen::Hot),
        (&a.port_for, PlugWhen::Port),
        (&a.cold, PlugWhen::Cold),
    ] {
        for g in list {
            p.devices.push(crate::vm::profile::DeviceEntry {
                gpu: g.label(),
                plug: when,
            });
        }
    }
    Ok(p)
}

/// `vfioctl vm`: run the subcommand.
pub fn run(ctx: &Context, c: VmCommand) -> Result<Exit, Failure> {
    match c {
        VmCommand::Up(a) => up(ctx, *a),
        VmCommand::Down(a) => {
            let r = runtime()?.block_on(lifecycle::down(
                &env(ctx),
                &a.name,
                Duration::from_secs(a.timeout),
            ))?;
            show(ctx, &r, |o| {
                writeln!(o, "vm {}: down ({})", r.name, r.steps.join("; "))
            })?;
            Ok(Exit::Ok)
        }
        VmCommand::Status(a) => {
            let s = runtime()?.block_on(lifecycle::status(&env(ctx), &a.name))?;
            show(ctx, &s, |o| {
                writeln!(
                    o,
                    "vm {}: {} (pid {}, {}, QEMU {})",
                    s.name,
                    s.state,
                    s.pid.map(|p| p.to_string()).unwrap_or("-".into()),
                    s.accel,
                    s.qemu_version.as_deref().unwrap_or("?")
                )?;
                writeln!(o, "  health: {}", s.health)?;
                writeln!(o, "  QMP socket: {}", s.qmp_socket.display())?;
                if let Some(a) = &s.agent {
                    writeln!(
                        o,
                        "  agent: {}",
                        serde_json::to_string(a).unwrap_or_default()
                    )?;
                }
                for p in &s.ports {
                    let held = s.plugged.iter().find(|d| d.port == p.id);
                    writeln!(
                        o,
                        "  {}: pref64 {} mem {} {}",
                        p.id,
                        p.pref64_reserve
                            .map(units::short)
                            .unwrap_or("default".into()),
                        p.mem_reserve.map(units::short).unwrap_or("default".into()),
                        held.map(|d| format!(
                            "holds {} = {} (guest {})",
                            d.id,
                            d.gpu,
                            d.guest_bdf.as_deref().unwrap_or("?")
                        ))
                        .unwrap_or_default()
                    )?;
                }
                if !s.objects.is_empty() {
                    let objs: Vec<String> = s
                        .objects
                        .iter()
                        .map(|x| format!("{} ({})", x.id, x.qom_type))
                        .collect();
                    writeln!(o, "  objects: {}", objs.join(", "))?;
                }
                for w in &s.warnings {
                    writeln!(o, "  warning: {w}")?;
                }
                if let Some(c) = &s.crash {
                    writeln!(o, "{c}")?;
                }
                Ok(())
            })?;
            // A crashed, orphaned or failed VM, or a live one that is frozen or has lost
            // its QMP socket, is not ok.
            Ok(if s.healthy() {
                Exit::Ok
            } else {
                Exit::Infrastructure
            })
        }
        VmCommand::List => {
            let l = lifecycle::list(&env(ctx));
            let rows: Vec<ListRow> = l
                .iter()
                .map(|r| ListRow {
                    accel: r.accel,
                    name: r.name.clone(),
                    pid: r.pid,
                    plugged: r.plugged.iter().map(|p| p.gpu.clone()).collect(),
                    run_dir: r.run_dir.clone(),
                    state: r.state,
                })
                .collect();
            show(ctx, &crate::output::sorted(&rows)?, |o| {
                let mut t = Table::new(&["NAME", "STATE", "PID", "ACCEL", "PLUGGED"]);
                for r in &l {
                    t.row(vec![
                        r.name.to_string(),
                        r.state.to_string(),
                        r.pid.map(|p| p.to_string()).unwrap_or_default(),
                        r.accel.to_string(),
                        r.plugged
                            .iter()
                            .map(|p| p.gpu.clone())
                            .collect::<Vec<_>>()
                            .join(","),
                    ]);
                }
                t.write(o)
            })?;
            Ok(Exit::Ok)
        }
        VmCommand::Plug(a) => {
            // The VM must exist before anything on the host changes.
            lifecycle::load(&env(ctx), &a.name)?;
            if let (true, GpuSpec::Vfio { bdf }) = (a.bind, &a.gpu) {
                // Bind with `vfioctl bind`'s own plan, safety checks and ledger.
                let d = PciDevice::read(&ctx.root, *bdf)?;
                if !d.vfio_dev {
                    let p = crate::bind::prepare(
                        &ctx.root,
                        &[vfioctl_common::Selector::Bdf { bdf: *bdf }],
                        crate::bind::PrepareOptions::default(),
                    )?;
                    crate::bind::execute(&p)?;
                }
            }
            let env = env(ctx);
            let c = runtime()?.block_on(plug::plug_vm(&env, &a.name, &a.gpu, a.port.as_deref()))?;
            let (c, rec) = c;
            let p = rec.plugged.last().cloned();
            show(
                ctx,
                &crate::output::sorted(&PlugOutput {
                    guest: c.clone(),
                    plugged: p.clone(),
                    vm: rec.name.clone(),
                })?,
                |o| {
                    writeln!(
                        o,
                        "vm {}: {} plugged on {} as {}; guest {} [{}] BARs {} in {:.2}s{}",
                        rec.name,
                        a.gpu.label(),
                        p.as_ref().map(|p| p.port.as_str()).unwrap_or("?"),
                        p.as_ref().map(|p| p.id.as_str()).unwrap_or("?"),
                        c.guest_bdf,
                        c.id_pair,
                        c.evidence
                            .assigned
                            .iter()
                            .map(|(i, r)| format!("{i}=[{r}]"))
                            .collect::<Vec<_>>()
                            .join(" "),
                        c.seconds,
                        if c.evidence.above_4g() {
                            " (above 4G)"
                        } else {
                            ""
                        }
                    )
                },
            )?;
            Ok(Exit::Ok)
        }
        VmCommand::Unplug(a) => {
            let env = env(ctx);
            let secs = runtime()?.block_on(plug::unplug_vm(&env, &a.name, &a.id))?;
            show(
                ctx,
                &crate::output::sorted(&UnplugOutput {
                    seconds: secs.1,
                    unplugged: secs.0.clone(),
                    vm: a.name.clone(),
                })?,
                |o| {
                    writeln!(
                        o,
                        "vm {}: {} unplugged (DEVICE_DELETED after {:.2}s)",
                        a.name, secs.0, secs.1
                    )
                },
            )?;
            Ok(Exit::Ok)
        }
        VmCommand::Plan(a) => plan(ctx, a),
    }
}

fn up(ctx: &Context, a: UpArgs) -> Result<Exit, Failure> {
    let profile = profile_from(&a)?;
    let env = env(ctx);
    if a.dry_run {
        let (launch, rec) = lifecycle::prepare(&env, &profile)?;
        show(
            ctx,
            &crate::output::sorted(&DryRunOutput {
                argv: rec.argv.clone(),
                plan: launch.plan.clone(),
                warnings: rec.warnings.clone(),
            })?,
            |o| {
                // stdout is the command alone, safe to paste; the warnings go to stderr.
                for w in &rec.warnings {
                    crate::output::warn(ctx, w);
                }
                writeln!(o, "{}", shell_command(&rec.argv))
            },
        )?;
        return Ok(Exit::Ok);
    }
    // The accelerator first (one probe, cached per QEMU binary and kernel boot, which
    // `up` then reads back): a TCG warning belongs before the wait, not after it.
    let probe = accel::probe(
        &ctx.root,
        &profile.qemu,
        profile.kernel.as_deref(),
        profile.accel,
    )?;
    if let (Some(w), false) = (&probe.warning, ctx.json) {
        crate::output::warn(ctx, w);
    }
    // SIGINT/SIGTERM: stop what this command started, then exit 130/143.
    crate::interrupt::install()?;
    // Phases as the library observes them: the spinner names the current one, and a
    // line per phase reached stays above it (only at a terminal, not with -q).
    let spinner = crate::output::Progress::spinner(
        ctx,
        format!(
            "vm {}: starting QEMU ({}; {} s at most)",
            profile.name, probe.accel, profile.boot_timeout
        ),
    );
    let started = std::time::Instant::now();
    let observe = |p: lifecycle::BootPhase| {
        if spinner.is_visible() {
            spinner.println(
                ctx,
                format!(
                    "vm {}: {p} ({})",
                    profile.name,
                    crate::output::human_duration(started.elapsed())
                ),
            );
            spinner.set_message(format!("vm {}: {p}", profile.name));
        }
    };
    let rec = runtime()?.block_on(lifecycle::up_observed(
        &env,
        &profile,
        crate::interrupt::wait(),
        &observe,
    ));
    spinner.finish();
    let rec = rec?;
    for w in &rec.warnings {
        if !ctx.json && probe.warning.as_deref() != Some(w.as_str()) {
            crate::output::warn(ctx, w);
        }
    }
    show(ctx, &rec, |o| {
        writeln!(
            o,
            "vm {}: {} (guest ready {:.1}s after QEMU start; {}, QEMU {}, pid {}); QMP {}",
            rec.name,
            rec.state,
            rec.boot_seconds.unwrap_or(0.0),
            rec.accel,
            rec.qemu_version.as_deref().unwrap_or("?"),
            rec.pid.unwrap_or(0),
            rec.qmp_socket.display()
        )?;
        for p in &rec.plugged {
            writeln!(
                o,
                "  {} = {} on {} (guest {})",
                p.id,
                p.gpu,
                p.port,
                p.guest_bdf.as_deref().unwrap_or("?")
            )?;
        }
        Ok(())
    })?;
    Ok(Exit::Ok)
}

fn plan(ctx: &Context, a: PlanArgs) -> Result<Exit, Failure> {
    let memory = units::parse(&a.memory).map_err(Failure::usage)?;
    let cpu = match a.cpu.as_deref() {
        Some("tcg") => PhysBits::TCG,
        Some(s) if s.starts_with("host:") => PhysBits::host(
            s[5..]
                .parse()
                .map_err(|_| Failure::usage("--cpu host:<bits>, e.g. host:46"))?,
        ),
        Some(s) => {
            return Err(Failure::usage(format!(
                "--cpu {s}: expected tcg or host:<bits>"
            )))
        }
        None => {
            let p = accel::probe(
                &ctx.root,
                std::path::Path::new("qemu-system-x86_64"),
                None,
                AccelChoice::Auto,
            )
            .map_err(Failure::from)?;
            match p.accel {
                Accel::Kvm => PhysBits::host(p.host_phys_bits.unwrap_or(40)),
                Accel::Tcg => PhysBits::TCG,
            }
        }
    };
    let mut bars = Vec::new();
    for g in &a.gpus {
        match g {
            GpuSpec::Emulated { size } => bars.push(DeviceBars::emulated(*size)),
            GpuSpec::Mdev { uuid } => bars.push(crate::shared::mdev::device_bars(uuid)),
            GpuSpec::Vfio { bdf } => {
                let d = PciDevice::read(&ctx.root, *bdf)?;
                bars.push(DeviceBars::from_pci(&d));
                // Every other function of the slot gets its own port too.
                for f in 0..8u8 {
                    let other = bdf.with_function(f);
                    if other != *bdf && !a.gpus.contains(&GpuSpec::Vfio { bdf: other }) {
                        if let Ok(od) = PciDevice::read(&ctx.root, other) {
                            bars.push(DeviceBars::from_pci(&od));
                        }
                    }
                }
            }
        }
    }
    let p = ports::plan(&bars, a.spare, a.firmware, memory, cpu).map_err(Failure::from)?;
    show(ctx, &p, |o| {
        let mut t = Table::new(&["PORT", "ADDR", "CHASSIS/SLOT", "PREF64", "MEM", "IO", "FOR"]);
        for r in &p.ports {
            t.row(vec![
                r.id.clone(),
                r.addr.clone(),
                format!("{}/{}", r.chassis, r.slot),
                r.pref64_reserve
                    .map(units::short)
                    .unwrap_or("default".into()),
                r.mem_reserve.map(units::short).unwrap_or("default".into()),
                r.io_reserve.to_string(),
                r.sized_for.clone().unwrap_or("(spare)".into()),
            ]);
        }
        t.write(o)?;
        writeln!(
            o,
            "firmware {}; 64-bit window {}{}{}{}",
            p.firmware,
            units::short(p.window64),
            p.pci_hole64_size
                .map(|h| format!("; -global q35-pcihost.pci-hole64-size={}", units::short(h)))
                .unwrap_or_default(),
            p.ovmf_mmio64_mb
                .map(|m| format!("; -fw_cfg name=opt/ovmf/X-PciMmio64Mb,string={m}"))
                .unwrap_or_default(),
            p.phys_bits
                .map(|b| format!("; phys-bits={b}"))
                .unwrap_or_default()
        )?;
        writeln!(o, "why:")?;
        for r in &p.reasons {
            writeln!(o, "  - {r}")?;
        }
        Ok(())
    })?;
    Ok(Exit::Ok)
}

/// A command line a person can paste into a shell: every argument quoted where the shell
/// would split or expand it (shell-words), one option per line.
pub fn shell_command(argv: &[String]) -> String {
    let mut out = String::new();
    for (i, a) in argv.iter().enumerate() {
        if i > 0 {
            out.push_str(if a.starts_with('-') { " \\\n  " } else { " " });
        }
        out.push_str(&shell_words::quote(a));
    }
    out
}
