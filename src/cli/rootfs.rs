//! `vfioctl rootfs ...`.
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Subcommand)]
pub enum RootfsCommand {
    /// Build an initramfs (and optionally an ext4 image) from a rootfs/ manifest.
    Build,
}

pub fn run(_ctx: &Context, _c: RootfsCommand) -> Result<Exit, Failure> {
    super::not_yet("rootfs")
}
