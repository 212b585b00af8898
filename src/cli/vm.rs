//! `vfioctl vm ...`.
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Subcommand)]
pub enum VmCommand {
    /// Start a VM and wait until the guest agent answers; with --gpu, hotplug it too.
    Up,
}

pub fn run(_ctx: &Context, _c: VmCommand) -> Result<Exit, Failure> {
    super::not_yet("vm")
}
