//! `vfioctl snapshot`: argument parsing and printing; the work is in [`crate::snapshot`].
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use crate::output::emit;
use crate::snapshot::{self, Replayed};
use crate::{Context, Exit, Failure};

/// `vfioctl snapshot` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write: a new directory, or a new file ending in .tar.zst.
    #[arg(required_unless_present = "replay", conflicts_with = "replay")]
    pub out: Option<PathBuf>,
    /// Devices the per-device commands (bind --dry-run, vm plan, kata config) run for:
    /// 0000:d0:00.0, 10de:2330, class:gpu. Default: every PCI function but bridges.
    pub selectors: Vec<String>,
    /// Keep MAC addresses and serial numbers (redacted by default; the host name is
    /// always replaced).
    #[arg(long)]
    pub keep_identifiers: bool,
    /// Replay a snapshot instead: run every command it recorded with --root pointed at
    /// it and compare with what the command printed live (exit 1 when any differs).
    #[arg(long, value_name = "SNAPSHOT")]
    pub replay: Option<PathBuf>,
    /// Seconds one recorded command may take.
    #[arg(long, default_value_t = 120, value_name = "SECS")]
    pub timeout: u64,
}

fn exe() -> Result<PathBuf, Failure> {
    std::env::current_exe().map_err(|e| Failure::new(Exit::Infrastructure, e))
}

fn write_commands(o: &mut dyn Write, commands: &[Replayed]) -> std::io::Result<()> {
    let same = commands.iter().filter(|c| c.identical).count();
    writeln!(
        o,
        "replay against the snapshot: {same} of {} command(s) print exactly what they printed live",
        commands.len()
    )?;
    for c in commands.iter().filter(|c| !c.identical) {
        writeln!(
            o,
            "  differs: vfioctl --json {} (exit {} live, {} replayed)",
            c.args.join(" "),
            c.live_exit,
            c.replay_exit
        )?;
        if let Some(d) = &c.diff {
            for l in d.lines() {
                writeln!(o, "    {l}")?;
            }
        }
    }
    Ok(())
}

/// `snapshot --replay SNAP --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct ReplayOutput {
    /// Each command run live and against the snapshot, and whether they printed the same.
    pub commands: Vec<snapshot::Replayed>,
    /// Every command printed the same.
    pub identical: bool,
    /// The snapshot replayed.
    pub snapshot: std::path::PathBuf,
}

/// `vfioctl snapshot`: take a snapshot, or replay one with `--replay`.
pub fn run(ctx: &Context, a: Args) -> Result<Exit, Failure> {
    let timeout = Duration::from_secs(a.timeout);
    if let Some(snap) = &a.replay {
        let opened = snapshot::open(snap)?;
        let commands = snapshot::replay(&exe()?, &opened.dir, &opened.meta, timeout)?;
        let identical = commands.iter().all(|c| c.identical);
        let v = crate::output::sorted(&ReplayOutput {
            commands: commands.clone(),
            identical,
            snapshot: snap.clone(),
        })?;
        emit(ctx, &v, |o| write_commands(o, &commands))
            .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
        return Ok(if identical {
            Exit::Ok
        } else {
            Exit::CheckFailed
        });
    }
    let out = a.out.expect("clap requires OUT without --replay");
    let opts = snapshot::Options {
        out,
        selectors: super::selectors(&a.selectors, None)?,
        keep_identifiers: a.keep_identifiers,
        exe: exe()?,
        timeout,
    };
    let r = snapshot::take(&ctx.root, &opts)?;
    emit(ctx, &r, |o| {
        let e = &r.entries;
        match r.compressed_bytes {
            Some(n) => writeln!(
                o,
                "snapshot written: {} ({n} bytes, zstd-compressed tar)",
                r.out.display()
            )?,
            None => writeln!(o, "snapshot written: {} (directory)", r.out.display())?,
        }
        writeln!(
            o,
            "  {} files ({} bytes), {} links, {} directories, {} names only, {} redacted, {} unreadable",
            e.files, e.bytes, e.links, e.dirs, e.names, e.redacted, e.unreadable
        )?;
        writeln!(
            o,
            "  MANIFEST lists every entry and why it was taken; SNAPSHOT.json holds the {} commands and what they printed",
            r.commands.len()
        )?;
        if !r.keep_identifiers {
            writeln!(
                o,
                "  MAC addresses and serial numbers redacted, host name replaced (--keep-identifiers keeps the first two)"
            )?;
        }
        write_commands(o, &r.commands)
    })
    .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
    if !r.identical && ctx.notes() {
        eprintln!("warning: some commands print differently against the snapshot (listed above); the snapshot is written, please report this with it");
    }
    Ok(Exit::Ok)
}
