//! `vfioctl validate`.
use std::path::PathBuf;
use std::time::Duration;

use crate::agent::validate::{self, Expected, Report};
use crate::agent::{AgentClient, Transport};
use crate::output::emit;
use crate::vm::VmName;
use crate::{Context, Exit, Failure};
use vfioctl_common::proto::{Token, Verdict};

/// `vfioctl validate` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A VM started by `vfioctl vm up`: its agent address and plugged device come from its
    /// state file.
    #[arg(long, conflicts_with_all = ["agent", "token_file"])]
    pub vm: Option<VmName>,
    /// The agent's address: vsock:CID[:PORT], unix:UDS_PATH[:PORT] (hybrid vsock, as
    /// vhost-device-vsock exposes it) or local:SOCKET.
    #[arg(long, value_name = "ADDR", requires = "token_file")]
    pub agent: Option<Transport>,
    /// The agent's secret for --agent (a VM's RUN_DIR/agent.token; --vm finds it itself).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
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

/// `validate` started nothing, so SIGINT/SIGTERM only stop it: the collection runs on a
/// thread of its own while this one waits for the answer or a signal (exit 130/143,
/// no report half-written).
pub fn run(ctx: &Context, a: Args) -> Result<Exit, Failure> {
    crate::interrupt::install()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Exit::Infrastructure, e))?;
    let ctx2 = ctx.clone();
    let r = rt.block_on(async move {
        let work = tokio::task::spawn_blocking(move || collect(&ctx2, a));
        tokio::select! {
            r = work => Ok(r),
            s = crate::interrupt::wait() => Err(s),
        }
    });
    // Do not wait for a blocked agent call to return.
    rt.shutdown_background();
    match r {
        Ok(Ok(done)) => done.and_then(|(report, junit)| finish(ctx, report, junit)),
        Ok(Err(join)) => Err(Failure::new(Exit::Infrastructure, join.to_string())),
        Err(signal) => Err(crate::interrupt::Interrupted {
            what: "validate".into(),
            signal,
        }
        .into()),
    }
}

fn collect(ctx: &Context, a: Args) -> Result<(Report, Option<PathBuf>), Failure> {
    let (transport, token, mut target) = match (&a.vm, &a.agent) {
        (Some(name), _) => vm_target(ctx, name)?,
        (None, Some(t)) => {
            let file = a.token_file.as_deref().ok_or_else(|| {
                Failure::usage("--agent needs --token-file (the VM's RUN_DIR/agent.token)")
            })?;
            let token = crate::vm::rundir::read_token_file(file).map_err(|e| {
                Failure::usage(format!("--token-file {}: {e}", file.display()))
            })?;
            (t.clone(), token, None)
        }
        (None, None) => return Err(Failure::usage(
            "give --vm NAME or --agent ADDR --token-file FILE (ADDR: vsock:CID:PORT, unix:UDS_PATH:PORT, local:SOCKET)",
        )),
    };
    if let Some(g) = &a.gpu {
        target = Some(expected(ctx, g)?);
    }
    if let (Some(t), Some(d)) = (target.as_mut(), &a.expect_driver) {
        t.driver = Some(d.clone());
    }
    let mut client =
        AgentClient::connect(&transport, &token, Duration::from_secs(a.connect_timeout))?;
    let view = validate::collect(&mut client, target.as_ref(), Duration::from_secs(a.wait))?;
    let checks = validate::evaluate(target.as_ref(), &view);
    let report = Report::new(transport, target, checks).with_timings(view.timings.clone());
    Ok((report, a.junit))
}

fn finish(ctx: &Context, report: Report, junit: Option<PathBuf>) -> Result<Exit, Failure> {
    if let Some(path) = &junit {
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

/// The agent, its secret and the plugged device of a VM started by `vfioctl vm up` (its
/// run directory).
fn vm_target(
    ctx: &Context,
    name: &VmName,
) -> Result<(Transport, Token, Option<Expected>), Failure> {
    let env = crate::vm::Env {
        root: ctx.root.clone(),
        base: crate::vm::state::run_base(),
    };
    let (transport, token, plugged) = crate::vm::lifecycle::agent_target(&env, name)?;
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
    Ok((transport, token, target))
}
