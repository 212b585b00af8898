//! `vfioctl devices`.
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices to show: 0000:d0:00.0, d0:00.0, 10de:20b9, 10de:*, class:gpu. Default: all.
    pub selectors: Vec<String>,
    /// Only devices of this class: gpu, audio, net, storage, bridge, usb, or hex (0x0302).
    #[arg(long)]
    pub class: Option<vfioctl_common::ClassFilter>,
}

pub fn run(_ctx: &Context, _args: Args) -> Result<Exit, Failure> {
    super::not_yet("devices")
}
