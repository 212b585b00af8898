//! The command line: argument parsing and dispatch only. Each subcommand's arguments and
//! its thin `run` live in a file named after it; the work happens in the library modules.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use vfioctl_common::SysRoot;

use crate::{Context, Exit, Failure};

pub mod bind;
pub mod check;
pub mod devices;
pub mod kata;
pub mod kernel;
pub mod mdev;
pub mod regress;
pub mod rootfs;
pub mod validate;
pub mod vf;
pub mod vm;

/// GPU passthrough labs for Kata Containers and QEMU.
///
/// Exit codes: 0 ok, 1 check failed, 2 usage or input error, 3 validation failed,
/// 4 boot timeout, 5 regression, 6 refused by a safety rule, 7 operation failed (rolled
/// back), 8 infrastructure error, 130 SIGINT / 143 SIGTERM (after tearing down what the
/// command started).
#[derive(Debug, Parser)]
#[command(name = "vfioctl", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Root under which /sys, /proc, /dev, /etc, /lib/modules and /var/lib are used
    /// (a fixture tree in tests; / on a real host).
    #[arg(
        long,
        global = true,
        env = "VFIOCTL_ROOT",
        default_value = "/",
        value_name = "DIR"
    )]
    pub root: PathBuf,

    /// Print JSON for machines instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,

    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List PCI devices with driver, IOMMU group and BARs.
    Devices(devices::Args),
    /// Check host readiness for passthrough, then each selected device (default: GPUs).
    Check(check::Args),
    /// Bind devices (and their IOMMU group companions) to vfio-pci.
    Bind(bind::BindArgs),
    /// Give devices bound by vfioctl back to the driver they had.
    Unbind(bind::UnbindArgs),
    /// Put back every device the ledger records (after a crash, or --all).
    Restore(bind::RestoreArgs),
    /// SR-IOV virtual functions: list, create, remove.
    #[command(subcommand)]
    Vf(vf::VfCommand),
    /// Mediated devices (vGPU): types, create, list, remove.
    #[command(subcommand)]
    Mdev(mdev::MdevCommand),
    /// Start, inspect, plug into and stop lab VMs.
    #[command(subcommand)]
    Vm(vm::VmCommand),
    /// Run the in-guest checks over the agent and print a verdict per check.
    Validate(validate::Args),
    /// Build guest initramfs and disk images.
    #[command(subcommand)]
    Rootfs(rootfs::RootfsCommand),
    /// Build guest kernels from kernel-configs/ fragments.
    #[command(subcommand)]
    Kernel(kernel::KernelCommand),
    /// Generate or patch Kata Containers configuration.toml.
    #[command(subcommand)]
    Kata(kata::KataCommand),
    /// Run the passthrough regression matrix and report what regressed.
    Regress(regress::Args),
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Log lines may quote the guest: written through the escaping writer, without colours
    // (their escape sequences would be escaped too).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| vfioctl_common::text::TerminalWriter::new(std::io::stderr()))
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<Exit, Failure> {
    let ctx = Context::new(SysRoot::new(&cli.root), cli.json);
    if !ctx.root.root().is_dir() {
        return Err(Failure::usage(format!(
            "--root {}: not a directory",
            cli.root.display()
        )));
    }
    match cli.command {
        Command::Devices(a) => devices::run(&ctx, a),
        Command::Check(a) => check::run(&ctx, a),
        Command::Bind(a) => bind::run_bind(&ctx, a),
        Command::Unbind(a) => bind::run_unbind(&ctx, a),
        Command::Restore(a) => bind::run_restore(&ctx, a),
        Command::Vf(c) => vf::run(&ctx, c),
        Command::Mdev(c) => mdev::run(&ctx, c),
        Command::Vm(c) => vm::run(&ctx, c),
        Command::Validate(a) => validate::run(&ctx, a),
        Command::Rootfs(c) => rootfs::run(&ctx, c),
        Command::Kernel(c) => kernel::run(&ctx, c),
        Command::Kata(c) => kata::run(&ctx, c),
        Command::Regress(a) => regress::run(&ctx, a),
    }
}

/// Print a failure once: the chain at the top, then the hint. With `--json`, as a JSON
/// object on stdout so scripts can read it.
pub fn report(f: &Failure, json: bool) {
    let chain = f.chain();
    if json {
        let v = serde_json::json!({
            "error": chain.join(": "),
            "causes": chain,
            "hint": f.hint,
            "exit_code": f.exit.code(),
            "exit": f.exit,
        });
        // A closed stdout (`| head`) must not turn into a panic.
        use std::io::Write;
        let _ = writeln!(
            std::io::stdout(),
            "{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
    } else {
        // Errors quote the guest too (serial tails, kernel log lines): escaped.
        use vfioctl_common::text::terminal;
        eprintln!("error: {}", terminal(&chain[0]));
        for cause in &chain[1..] {
            eprintln!("  caused by: {}", terminal(cause));
        }
        if let Some(h) = &f.hint {
            eprintln!("  hint: {}", terminal(h));
        }
    }
}

/// Rust ignores SIGPIPE, so `vfioctl --json ... | head` would panic in `println!` once
/// the reader goes away. A command-line tool should end quietly instead, as coreutils do.
fn restore_sigpipe() {
    // SAFETY: called first thing in main, before any thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE and no handler state is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Entry point for the binary.
pub fn main() -> ExitCode {
    restore_sigpipe();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            if e.use_stderr() {
                // clap quotes the offending argument: escaped like everything else.
                eprint!(
                    "{}",
                    vfioctl_common::text::terminal(&e.render().to_string())
                );
            } else {
                let _ = e.print();
            }
            return if e.use_stderr() {
                Exit::Usage.into()
            } else {
                Exit::Ok.into()
            };
        }
    };
    init_logging(cli.verbose);
    let json = cli.json;
    match run(cli) {
        Ok(exit) => exit.into(),
        Err(f) => {
            report(&f, json);
            f.exit.into()
        }
    }
}

/// Parse selectors given on the command line (plus `--class`).
pub fn selectors(
    args: &[String],
    class: Option<vfioctl_common::ClassFilter>,
) -> Result<Vec<vfioctl_common::Selector>, Failure> {
    let mut v = args
        .iter()
        .map(|s| s.parse::<vfioctl_common::Selector>().map_err(Failure::from))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(class) = class {
        v.push(vfioctl_common::Selector::Class { class });
    }
    Ok(v)
}
