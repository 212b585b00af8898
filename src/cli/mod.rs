//! The command line: argument parsing and dispatch only. Each subcommand's arguments and
//! its thin `run` live in a file named after it; the work happens in the library modules.

#![warn(missing_docs)]

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
pub mod snapshot;
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
    /// The options every command takes.
    #[command(flatten)]
    pub global: GlobalArgs,

    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The options every command takes (`global`: before or after the subcommand).
#[derive(Debug, clap::Args)]
pub struct GlobalArgs {
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

    /// Record every host path the command touches into FILE, one `<access> <path>` per
    /// line (what `vfioctl snapshot` runs each command with).
    #[arg(long, global = true, hide = true, value_name = "FILE")]
    pub access_log: Option<PathBuf>,

    /// More logging on stderr: -v says what was read and concluded at each decision
    /// (info), -vv debug, -vvv trace; RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only errors on stderr: no warnings, progress or notes (the result on stdout and
    /// the exit code are unchanged).
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

/// `bind`, `unbind` and `restore` alone: what [`parse_from`] tries first. A command line
/// that this parses parses the same with [`Cli`] (the same global options and the same
/// argument types); anything else fails here and goes to [`Cli`], which also prints every
/// help text and every error. Building [`Cli`] defines every argument of every command,
/// and under TCG that cost 6-11 ms of each `vfioctl bind` (BENCHMARKS.md "## bind");
/// scripts run the binding commands once per device.
#[derive(Debug, Parser)]
#[command(name = "vfioctl")]
struct FastCli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: FastCommand,
}

#[derive(Debug, Subcommand)]
enum FastCommand {
    Bind(bind::BindArgs),
    Unbind(bind::UnbindArgs),
    Restore(bind::RestoreArgs),
}

impl From<FastCli> for Cli {
    fn from(f: FastCli) -> Cli {
        Cli {
            global: f.global,
            command: match f.command {
                FastCommand::Bind(a) => Command::Bind(a),
                FastCommand::Unbind(a) => Command::Unbind(a),
                FastCommand::Restore(a) => Command::Restore(a),
            },
        }
    }
}

/// Parse a command line (`argv[0]` first) as [`Cli`] does, building only the binding
/// commands' arguments when the line is one of them (`FastCli`).
pub fn parse_from<I, T>(argv: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let argv: Vec<std::ffi::OsString> = argv.into_iter().map(Into::into).collect();
    match FastCli::try_parse_from(&argv) {
        Ok(f) => Ok(f.into()),
        Err(_) => Cli::try_parse_from(argv),
    }
}

/// The top-level commands.
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
    /// Capture what vfioctl reads from this host into a tree or .tar.zst that anyone can
    /// replay with --root (redacted; MANIFEST says why each file was taken).
    Snapshot(snapshot::Args),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) on stdout.
    Completions(CompletionsArgs),
    /// Write man pages (vfioctl.1 and one per subcommand) into DIR, or print vfioctl(1).
    Man(ManArgs),
}

/// Arguments of `vfioctl completions`.
#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

/// Arguments of `vfioctl man`.
#[derive(Debug, clap::Args)]
pub struct ManArgs {
    /// Directory to write the pages into (created if missing); without it, vfioctl(1)
    /// goes to stdout.
    #[arg(value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// The log level for `-q` / `-v...`.
pub fn log_level(verbose: u8, quiet: bool) -> &'static str {
    match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    }
}

/// Colour on stderr only for a person at a terminal: not into files or pipes, and never
/// with `NO_COLOR` set (to anything non-empty, per no-color.org).
pub fn stderr_color(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

fn init_logging(verbose: u8, quiet: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(log_level(verbose, quiet)));
    let color = stderr_color(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .without_time();
    // Log lines may quote the guest. With colour (a person at a terminal) tracing escapes
    // escape sequences in messages itself; without, every control character goes through
    // the escaping writer (into files and pipes too).
    let _ = if color {
        fmt.with_writer(std::io::stderr).with_ansi(true).try_init()
    } else {
        fmt.with_writer(|| vfioctl_common::text::TerminalWriter::new(std::io::stderr()))
            .with_ansi(false)
            .try_init()
    };
}

/// The clap command (for completions, man pages and tests).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

fn run_completions(a: CompletionsArgs) -> Result<Exit, Failure> {
    let mut cmd = command();
    let mut out = std::io::stdout().lock();
    clap_complete::generate(a.shell, &mut cmd, "vfioctl", &mut out);
    Ok(Exit::Ok)
}

/// Every page: `vfioctl.1`, then `vfioctl-SUB.1` and `vfioctl-SUB-SUBSUB.1`.
pub fn write_man_pages(dir: &std::path::Path) -> std::io::Result<Vec<PathBuf>> {
    fn walk(
        cmd: clap::Command,
        name: String,
        dir: &std::path::Path,
        out: &mut Vec<PathBuf>,
    ) -> std::io::Result<()> {
        let cmd = cmd.name(name.clone()).bin_name(name.replace('-', " "));
        let path = dir.join(format!("{name}.1"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
        std::fs::write(&path, buf)?;
        out.push(path);
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            walk(sub.clone(), format!("{name}-{}", sub.get_name()), dir, out)?;
        }
        Ok(())
    }
    std::fs::create_dir_all(dir)?;
    let mut cmd = command();
    cmd.build();
    let mut out = Vec::new();
    walk(cmd, "vfioctl".into(), dir, &mut out)?;
    Ok(out)
}

fn run_man(ctx: &Context, a: ManArgs) -> Result<Exit, Failure> {
    let io =
        |e: std::io::Error| Failure::new(Exit::Infrastructure, format!("writing man pages: {e}"));
    match a.dir {
        None => {
            let mut out = std::io::stdout().lock();
            clap_mangen::Man::new(command())
                .render(&mut out)
                .map_err(io)?;
        }
        Some(dir) => {
            let pages = write_man_pages(&dir).map_err(io)?;
            crate::output::emit(ctx, &pages, |w| {
                for p in &pages {
                    writeln!(w, "{}", p.display())?;
                }
                Ok(())
            })
            .map_err(io)?;
        }
    }
    Ok(Exit::Ok)
}

/// Run a parsed command line.
pub fn run(cli: Cli) -> Result<Exit, Failure> {
    let mut ctx = Context::new(SysRoot::new(&cli.global.root), cli.global.json);
    ctx.quiet = cli.global.quiet;
    if !ctx.root.root().is_dir() {
        return Err(Failure::usage(format!(
            "--root {}: not a directory",
            cli.global.root.display()
        )));
    }
    if let Some(log) = &cli.global.access_log {
        let log = std::sync::Arc::new(crate::snapshot::FileLog::create(log)?);
        ctx.root = ctx.root.clone().with_log(log);
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
        Command::Snapshot(a) => snapshot::run(&ctx, a),
        Command::Completions(a) => run_completions(a),
        Command::Man(a) => run_man(&ctx, a),
    }
}

/// What `--json` prints on stdout when a command fails.
#[derive(Debug, serde::Serialize, schemars::JsonSchema)]
pub struct ErrorReport {
    /// The whole chain in one line.
    pub error: String,
    /// The error and its causes, outermost first, each once.
    pub causes: Vec<String>,
    /// The fix, where it is known.
    pub hint: Option<String>,
    /// The process exit code (see the exit code table).
    pub exit_code: u8,
    /// The same exit code by name (`check-failed`, `usage`, ...).
    pub exit: Exit,
}

/// Print a failure once: the chain at the top, then the hint. With `--json`, as a JSON
/// object on stdout so scripts can read it.
pub fn report(f: &Failure, json: bool) {
    let chain = f.chain();
    if json {
        let v = ErrorReport {
            error: chain.join(": "),
            causes: chain,
            hint: f.hint.clone(),
            exit_code: f.exit.code(),
            exit: f.exit,
        };
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
    let cli = match parse_from(std::env::args_os()) {
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
    init_logging(cli.global.verbose, cli.global.quiet);
    let json = cli.global.json;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever the binding commands' parser accepts, the whole command line parses the
    /// same; whatever it refuses goes to the whole command line, which answers as before.
    #[test]
    fn the_fast_parser_agrees_with_the_whole_command_line() {
        let lines = [
            "bind 0000:01:00.0",
            "bind --dry-run --json 10de:2330 class:gpu",
            "--root /tmp/x -vv bind --driver auto --timeout 3 --force --persist 0000:01:00.0",
            "bind 0000:01:00.0 --root=/r -q --no-companions",
            "unbind --persist --timeout 1 0000:01:00.0",
            "--json restore --all",
            "restore 0000:01:00.0 --access-log /tmp/log",
            "-vvv unbind 0000:01:00.0",
            // Refused by both, or not a binding command: the whole command line decides.
            "bind",
            "bind --bogus 0000:01:00.0",
            "-q -v bind 0000:01:00.0",
            "bind --timeout x 0000:01:00.0",
            "bind --help",
            "bind -V",
            "help bind",
            "--version",
            "devices --json",
            "vm status lab",
            "bogus",
        ];
        for (i, l) in lines.iter().enumerate() {
            let argv: Vec<&str> = std::iter::once("vfioctl").chain(l.split(' ')).collect();
            // The first eight take the fast path.
            assert_eq!(FastCli::try_parse_from(&argv).is_ok(), i < 8, "{l}");
            let fast = parse_from(&argv);
            let whole = Cli::try_parse_from(&argv);
            match (fast, whole) {
                (Ok(f), Ok(w)) => assert_eq!(format!("{f:?}"), format!("{w:?}"), "{l}"),
                (Err(f), Err(w)) => {
                    assert_eq!(f.kind(), w.kind(), "{l}");
                    assert_eq!(f.render().to_string(), w.render().to_string(), "{l}");
                }
                (f, w) => panic!("{l}: {f:?} against {w:?}"),
            }
        }
    }
}
