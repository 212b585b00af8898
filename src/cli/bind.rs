//! `vfioctl bind`, `unbind`, `restore`.
use crate::{Context, Exit, Failure};

#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// Devices to bind: 0000:d0:00.0, 10de:20b9, class:gpu.
    #[arg(required = true)]
    pub selectors: Vec<String>,
    /// Print the plan and every sysfs write, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not bind the other endpoints of the IOMMU group (fails if the group needs them).
    #[arg(long)]
    pub no_companions: bool,
    /// Driver to bind to: vfio-pci (default), a variant driver name, or `auto` to pick a
    /// variant from modules.alias.
    #[arg(long, default_value = "vfio-pci")]
    pub driver: String,
    /// Seconds to wait for an unbind or a probe before giving up and rolling back.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Override in-use refusals that can be overridden (never the root filesystem's disk).
    #[arg(long)]
    pub force: bool,
    /// Also write a boot-time override so the binding survives a reboot.
    #[arg(long)]
    pub persist: bool,
}

#[derive(Debug, clap::Args)]
pub struct UnbindArgs {
    #[arg(required = true)]
    pub selectors: Vec<String>,
    /// Also remove the boot-time override written by `bind --persist`.
    #[arg(long)]
    pub persist: bool,
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Devices to restore (default with --all: every ledger entry).
    pub selectors: Vec<String>,
    /// Restore every device in the ledger.
    #[arg(long)]
    pub all: bool,
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
}

pub fn run_bind(_ctx: &Context, _a: BindArgs) -> Result<Exit, Failure> {
    super::not_yet("bind")
}
pub fn run_unbind(_ctx: &Context, _a: UnbindArgs) -> Result<Exit, Failure> {
    super::not_yet("unbind")
}
pub fn run_restore(_ctx: &Context, _a: RestoreArgs) -> Result<Exit, Failure> {
    super::not_yet("restore")
}
