//! `vfioctl kata ...`.
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Subcommand)]
pub enum KataCommand {
    /// Print or patch configuration.toml for GPU passthrough.
    Config,
}

pub fn run(_ctx: &Context, _c: KataCommand) -> Result<Exit, Failure> {
    super::not_yet("kata")
}
