//! `vfioctl mdev types [PARENT]`, `mdev create PARENT TYPE [--uuid U]`, `mdev list`,
//! `mdev remove UUID`: mediated devices. The work is in [`crate::shared::mdev`].

use std::io::Write;
use std::time::Duration;

use crate::output::{cell, emit, table_or, write_failed};
use crate::shared::mdev::{self, MdevDevice, MdevUuid};
use crate::{Context, Exit, Failure};

/// `vfioctl mdev` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum MdevCommand {
    /// Mediated device types per parent: id, name, description, available instances,
    /// device API.
    Types(TypesArgs),
    /// Create one instance of a type; recorded in the ledger, removed by `restore --all`.
    Create(CreateArgs),
    /// Mediated devices that exist, with parent, type, IOMMU group and QEMU's sysfsdev.
    List,
    /// Remove a mediated device vfioctl created.
    Remove(RemoveArgs),
}

/// `vfioctl mdev types` arguments.
#[derive(Debug, clap::Args)]
pub struct TypesArgs {
    /// A parent (`0000:3b:00.0`, `mtty`); default: every parent.
    pub parent: Option<String>,
}

/// `vfioctl mdev create` arguments.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// The parent device (a PCI address such as `0000:41:00.0`, as /sys/class/mdev_bus
    /// lists it).
    pub parent: String,
    /// The type id (`nvidia-222`, `mtty-2`), from `vfioctl mdev types`.
    #[arg(value_name = "TYPE")]
    pub type_id: String,
    /// The new device's UUID (default: a random one).
    #[arg(long)]
    pub uuid: Option<String>,
    /// Print the write and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Seconds for the write and for the device to appear.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `vfioctl mdev remove` arguments.
#[derive(Debug, clap::Args)]
pub struct RemoveArgs {
    /// The mediated device's UUID.
    pub uuid: String,
    /// Remove a mediated device vfioctl did not create.
    #[arg(long)]
    pub force: bool,
    /// Seconds for the write and for the device to disappear.
    #[arg(long, default_value_t = 30)]
    pub timeout: u64,
}

/// `mdev create --dry-run --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct CreateDryRun {
    /// Always true: nothing was written.
    pub dry_run: bool,
    /// The UUID the device would get.
    pub uuid: MdevUuid,
    /// The sysfs write `create` would make.
    pub writes: Vec<String>,
}

/// `mdev remove --json`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct RemoveOutput {
    /// The UUID of the mediated device removed.
    pub removed: MdevUuid,
}

fn devices(out: &mut dyn Write, v: &[MdevDevice]) -> std::io::Result<()> {
    table_or(
        out,
        "no mediated devices",
        &["UUID", "PARENT", "TYPE", "GROUP", "DRIVER", "BY"],
        v,
        |d| {
            vec![
                d.uuid.clone(),
                cell(d.parent.as_deref()),
                cell(d.type_id.as_deref()),
                cell(d.iommu_group),
                cell(d.driver.as_deref()),
                if d.created_by_vfioctl { "vfioctl" } else { "-" }.into(),
            ]
        },
    )
}

/// `vfioctl mdev`: run the subcommand.
pub fn run(ctx: &Context, c: MdevCommand) -> Result<Exit, Failure> {
    match c {
        MdevCommand::Types(a) => {
            let v = mdev::types(&ctx.root, a.parent.as_deref())?;
            emit(ctx, &v, |o| {
                table_or(
                    o,
                    "no mediated device parents (/sys/class/mdev_bus is empty)",
                    &["PARENT", "TYPE", "NAME", "AVAILABLE", "API", "DESCRIPTION"],
                    &v,
                    |x| {
                        vec![
                            x.parent.clone(),
                            x.type_id.clone(),
                            x.name.clone().unwrap_or_default(),
                            x.available_instances.map_or("?".into(), |n| n.to_string()),
                            x.device_api.clone().unwrap_or_default(),
                            x.description.clone().unwrap_or_default(),
                        ]
                    },
                )
            })
            .map_err(write_failed)?;
            Ok(Exit::Ok)
        }
        MdevCommand::Create(a) => {
            let uuid = a.uuid.as_deref().map(str::parse::<MdevUuid>).transpose()?;
            if a.dry_run {
                let u = uuid.unwrap_or_else(MdevUuid::random);
                let w = mdev::create_write(&a.parent, &a.type_id, &u);
                let v = crate::output::sorted(&CreateDryRun {
                    dry_run: true,
                    uuid: u.clone(),
                    writes: vec![w.clone()],
                })?;
                emit(ctx, &v, |o| writeln!(o, "{w}")).map_err(write_failed)?;
                return Ok(Exit::Ok);
            }
            let d = mdev::create(
                &ctx.root,
                &a.parent,
                &a.type_id,
                uuid,
                Duration::from_secs(a.timeout),
            )?;
            emit(ctx, &d, |o| {
                writeln!(
                    o,
                    "{} created on {} ({}); pass it with --gpu mdev:{}",
                    d.uuid, a.parent, a.type_id, d.uuid
                )
            })
            .map_err(write_failed)?;
            Ok(Exit::Ok)
        }
        MdevCommand::List => {
            let v = mdev::list(&ctx.root)?;
            emit(ctx, &v, |o| devices(o, &v)).map_err(write_failed)?;
            Ok(Exit::Ok)
        }
        MdevCommand::Remove(a) => {
            let u: MdevUuid = a.uuid.parse()?;
            mdev::remove(&ctx.root, &u, Duration::from_secs(a.timeout), a.force)?;
            let v = crate::output::sorted(&RemoveOutput { removed: u.clone() })?;
            emit(ctx, &v, |o| writeln!(o, "{u} removed")).map_err(write_failed)?;
            Ok(Exit::Ok)
        }
    }
}
