//! `vfioctl check`.
use crate::host::run_checks;
use crate::{Context, Exit, Failure};

/// `vfioctl check` arguments.
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
    /// The QEMU binary VMs will use: probed for the iommufd object, so the
    /// `vfio-backend` check says which backend `vm up` picks (not probed when absent).
    #[arg(long, value_name = "PATH")]
    pub qemu: Option<std::path::PathBuf>,
}

/// Exit 0 when no check failed (warnings allowed), 1 when one failed, 2 for bad input.
pub fn run(ctx: &Context, args: Args) -> Result<Exit, Failure> {
    let sels = super::selectors(&args.selectors, None)?;
    let report = run_checks(
        &ctx.root,
        &sels,
        args.class,
        args.vm_memory.map(|s| s.0),
        args.qemu.as_deref(),
    )?;
    match crate::output::emit(ctx, &report, |out| report.write_text(out)) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            return Err(Failure::new(Exit::Infrastructure, e))
        }
        _ => {}
    }
    Ok(if report.failed() {
        Exit::CheckFailed
    } else {
        Exit::Ok
    })
}
