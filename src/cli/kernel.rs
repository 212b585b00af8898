//! `vfioctl kernel ...`.
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Subcommand)]
pub enum KernelCommand {
    /// Build a guest kernel from kernel-configs/ fragments.
    Build,
}

pub fn run(_ctx: &Context, _c: KernelCommand) -> Result<Exit, Failure> {
    super::not_yet("kernel")
}
