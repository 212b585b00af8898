//! `vfioctl validate`.
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::validate::{self, Expected, Report};
use crate::agent::{AgentClient, Transport};
use crate::output::emit;
use crate::{Context, Exit, Failure};
use vfioctl_common::proto::Verdict;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// A VM started by `vfioctl vm up`: its agent address and plugged device come from its
    /// state file.
    #[arg(long, conflicts_with = "agent")]
    pub vm: Option<String>,
    /// The agent's address: vsock:CID[:PORT], unix:UDS_PATH[:PORT] (hybrid vsock, as
    /// vhost-device-vsock exposes it) or local:SOCKET.
    #[arg(long, value_name = "ADDR")]
    pub agent: Option<Transport>,
    /// The device to validate: a host BDF (ids and BAR sizes read from the host) or
    /// emulated:SIZE (the ivshmem-plain stand-in with a SIZE 64-bit BAR).
    #[arg(long, value_name = "BDF|emulated:SIZE")]
    pub gpu: Option<String>,
    /// The driver the guest must bind to the device (nvidia adds the NVIDIA checks).
    #[arg(long, value_name = "DRIVER")]
    pub expect_driver: Option<String>,
    /// Also write a JUnit XML report.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// How long to wait for the agent to answer.
    #[arg(long, default_value = "60", value_name = "SECONDS")]
    pub connect_timeout: u64,
    /// How long the guest waits for the device (with all BARs assigned) to show up.
    #[arg(long, default_value = "10", value_name = "SECONDS")]
    pub wait: u64,
}

fn expected(ctx: &Context, gpu: &str) -> Result<Expected, Failure> {
    if let Some(size) = gpu.strip_prefix("emulated:") {
        let size = vfioctl_common::units::parse(size)
            .map_err(|e| Failure::usage(format!("--gpu {gpu}: {e}")))?;
        return Ok(Expected::emulated(size));
    }
    let bdf = gpu.parse().map_err(Failure::from)?;
    Ok(validate::expected_from_host(&ctx.root, bdf)?)
}

pub fn run(ctx: &Context, a: Args) -> Result<Exit, Failure> {
    let (transport, mut target) =
        match (&a.vm, &a.agent) {
            (Some(name), _) => vm_target(ctx, name)?,
            (None, Some(t)) => (t.clone(), None),
            (None, None) => return Err(Failure::usage(
                "give --vm NAME or --agent ADDR (vsock:CID:PORT, unix:UDS_PATH:PORT, local:SOCKET)",
            )),
        };
    if let Some(g) = &a.gpu {
        target = Some(expected(ctx, g)?);
    }
    if let (Some(t), Some(d)) = (target.as_mut(), &a.expect_driver) {
        t.driver = Some(d.clone());
    }
    let mut client = AgentClient::connect(&transport, Duration::from_secs(a.connect_timeout))?;
    let view = validate::collect(&mut client, target.as_ref(), Duration::from_secs(a.wait))?;
    let checks = validate::evaluate(target.as_ref(), &view);
    let report = Report::new(transport, target, checks).with_timings(view.timings.clone());
    if let Some(path) = &a.junit {
        std::fs::write(path, validate::junit(&report)).map_err(|e| {
            Failure::new(
                Exit::Infrastructure,
                format!("writing {}: {e}", path.display()),
            )
        })?;
    }
    emit(ctx, &report, |out| {
        for c in &report.checks {
            let mark = match c.verdict {
                Verdict::Pass => "pass",
                Verdict::Fail => "FAIL",
                Verdict::Skip => "skip",
            };
            writeln!(out, "{mark:4}  {:20} {}", c.name, c.detail)?;
            if c.verdict == Verdict::Fail {
                for e in &c.evidence {
                    writeln!(out, "      | {e}")?;
                }
            }
        }
        writeln!(
            out,
            "{}",
            if report.passed {
                "validation passed"
            } else {
                "validation FAILED"
            }
        )
    })
    .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
    Ok(if report.passed {
        Exit::Ok
    } else {
        Exit::ValidationFailed
    })
}

/// The agent and the plugged device of a VM started by `vfioctl vm up` (its state file).
fn vm_target(ctx: &Context, name: &str) -> Result<(Transport, Option<Expected>), Failure> {
    let env = crate::vm::Env {
        root: ctx.root.clone(),
        base: crate::vm::state::run_base(),
    };
    let (transport, plugged) = crate::vm::lifecycle::agent_target(&env, name)?;
    let target = match plugged.first() {
        Some(p) => {
            let mut e = expected(ctx, &p.gpu)?;
            if let Some(b) = p.guest_bdf.as_deref().and_then(|b| b.parse().ok()) {
                e.guest_bdf = Some(b);
            }
            Some(e)
        }
        None => None,
    };
    Ok((transport, target))
}
