//! `vfioctl devices`.
use crate::pci::{list, select};
use crate::{Context, Exit, Failure};

/// `vfioctl devices` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices to show: 0000:d0:00.0, d0:00.0, 10de:20b9, 10de:*, class:gpu. Default: all.
    pub selectors: Vec<String>,
    /// Only devices of this class: gpu, audio, net, storage, bridge, usb, or hex (0x0302).
    #[arg(long)]
    pub class: Option<vfioctl_common::ClassFilter>,
}

/// `vfioctl devices`: list the selected PCI devices as a table, or as JSON with `--json`.
pub fn run(ctx: &Context, args: Args) -> Result<Exit, Failure> {
    let sels = super::selectors(&args.selectors, None)?;
    let mut devs = select(&ctx.root, &sels, false)?;
    if let Some(c) = args.class {
        devs.retain(|d| c.matches(d.class));
    }
    let ids = list::names_for(&ctx.root, &devs);
    let entries: Vec<list::DeviceEntry> = if ctx.json {
        devs.iter()
            .map(|d| list::DeviceEntry::new(d, &ids))
            .collect()
    } else {
        Vec::new()
    };
    match crate::output::emit(ctx, &entries, |out| list::write_table(out, &devs, &ids)) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Failure::new(Exit::Infrastructure, e))
        }
        _ => Ok(Exit::Ok),
    }
}
