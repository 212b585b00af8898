//! `vfioctl regress`.
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_ctx: &Context, _a: Args) -> Result<Exit, Failure> {
    super::not_yet("regress")
}
