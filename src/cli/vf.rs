//! `vfioctl vf list [PF]`, `vf create PF --count N`, `vf remove PF`: SR-IOV virtual
//! functions. The work is in [`crate::shared::sriov`].

use std::io::Write;
use std::time::Duration;

use serde::Serialize;
use vfioctl_common::Bdf;

use crate::output::{cell, emit, write_failed, Table};
use crate::shared::sriov::{self, Options, PfStatus};
use crate::{Context, Exit, Failure};

/// `vfioctl vf` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum VfCommand {
    /// SR-IOV physical functions and their VFs (BDF, index, IOMMU group, driver).
    List(ListArgs),
    /// Enable N VFs on a physical function (autoprobe off: they stay driverless for
    /// `vfioctl bind`); recorded in the ledger, removed by `restore --all`.
    Create(CreateArgs),
    /// Disable the VFs vfioctl created on a physical function.
    Remove(RemoveArgs),
}

/// `vfioctl vf list` arguments.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// One physical function (default: every SR-IOV capable one).
    pub pf: Option<Bdf>,
}

/// `vfioctl vf create` arguments.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The physical function (`0000:41:00.0`).
    pub pf: Bdf,
    /// How many VFs (1..sriov_totalvfs).
    #[arg(long)]
    pub count: u32,
    /// Leave sriov_drivers_autoprobe on, so the VFs go to their host driver.
    #[arg(long)]
    pub autoprobe: bool,
    /// Print the writes and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds for the write and for the VFs to appear.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `vfioctl vf remove` arguments.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The physical function whose VFs go (`0000:41:00.0`).
    pub pf: Bdf,
    /// Remove VFs that vfioctl did not create.
    #[arg(long)]
    pub force: bool,
    /// Seconds for the write and for the VFs to disappear.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

fn table(out: &mut dyn Write, pfs: &[PfStatus]) -> std::io::Result<()> {
    if pfs.is_empty() {
        return writeln!(out, "no SR-IOV capable device");
    }
    for (i, p) in pfs.iter().enumerate() {
        if i > 0 {
            writeln!(out)?;
        }
        writeln!(
            out,
            "{} [{:04x}:{:04x}] on {}: {} of {} VFs enabled{}, drivers_autoprobe {}",
            p.pf,
            p.vendor,
            p.device,
            p.driver.as_deref().unwrap_or("no driver"),
            p.num_vfs,
            p.total_vfs,
            if p.created_by_vfioctl {
                " (by vfioctl)"
            } else {
                ""
            },
            on_off(p.drivers_autoprobe)
        )?;
        if p.vfs.is_empty() {
            continue;
        }
        Table::of(&["  VF", "INDEX", "GROUP", "DRIVER", "VGPU"], &p.vfs, |v| {
            vec![
                format!("  {}", v.bdf),
                v.index.to_string(),
                cell(v.iommu_group),
                cell(v.driver.as_deref()),
                match v.vgpu_type {
                    None => "".into(),
                    Some(0) => "none".into(),
                    Some(t) => t.to_string(),
                },
            ]
        })
        .write(out)?;
    }
    Ok(())
}

/// `drivers_autoprobe` as the listings print it.
fn on_off(v: Option<bool>) -> &'static str {
    match v {
        Some(true) => "on",
        Some(false) => "off",
        None => "?",
    }
}

/// `vf create --dry-run --json`.
#[derive(Serialize, schemars::JsonSchema)]
pub struct DryRun {
    /// Always true: nothing was written.
    pub dry_run: bool,
    /// The physical function.
    pub pf: Bdf,
    /// The sysfs writes `create` would make, in order.
    pub writes: Vec<String>,
}

/// `vfioctl vf`: run the subcommand.
pub fn run(ctx: &Context, c: VfCommand) -> Result<Exit, Failure> {
    match c {
        VfCommand::List(a) => {
            match a.pf {
                Some(pf) => {
                    let st = sriov::status(&ctx.root, pf)?;
                    emit(ctx, &st, |o| table(o, std::slice::from_ref(&st)))
                        .map_err(write_failed)?;
                }
                None => {
                    let all = sriov::list(&ctx.root)?;
                    emit(ctx, &all, |o| table(o, &all)).map_err(write_failed)?;
                }
            }
            Ok(Exit::Ok)
        }
        VfCommand::Create(a) => {
            if a.dry_run {
                let st = sriov::status(&ctx.root, a.pf)?;
                let v = DryRun {
                    dry_run: true,
                    pf: a.pf,
                    writes: sriov::create_writes(
                        a.pf,
                        a.count,
                        !a.autoprobe && st.drivers_autoprobe == Some(true),
                    ),
                };
                emit(ctx, &v, |o| {
                    for w in &v.writes {
                        writeln!(o, "{w}")?;
                    }
                    Ok(())
                })
                .map_err(write_failed)?;
                return Ok(Exit::Ok);
            }
            let opts = Options {
                timeout: Duration::from_secs(a.timeout),
                autoprobe: a.autoprobe,
            };
            let st = sriov::create(&ctx.root, a.pf, a.count, &opts)?;
            emit(ctx, &st, |o| table(o, std::slice::from_ref(&st))).map_err(write_failed)?;
            Ok(Exit::Ok)
        }
        VfCommand::Remove(a) => {
            let r = sriov::remove(&ctx.root, a.pf, Duration::from_secs(a.timeout), a.force)?;
            emit(ctx, &r, |o| {
                writeln!(
                    o,
                    "{}: {} VFs removed; drivers_autoprobe {}",
                    r.pf,
                    r.removed,
                    on_off(r.drivers_autoprobe)
                )
            })
            .map_err(write_failed)?;
            Ok(Exit::Ok)
        }
    }
}
