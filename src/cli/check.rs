//! `vfioctl check`.
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Devices to check (default: every GPU, class 0x03).
    pub selectors: Vec<String>,
    /// Only devices of this class.
    #[arg(long)]
    pub class: Option<vfioctl_common::ClassFilter>,
    /// Memory the planned VM will have (e.g. 64G), to check the memlock limit against.
    #[arg(long, value_name = "SIZE")]
    pub vm_memory: Option<vfioctl_common::units::Size>,
}

pub fn run(_ctx: &Context, _args: Args) -> Result<Exit, Failure> {
    super::not_yet("check")
}
