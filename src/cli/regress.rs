//! `vfioctl regress PLAN` and `vfioctl regress collect DIR...`.
//!
//! Exit codes: 0 every scenario as expected; 5 a scenario not as expected or a regression
//! against history; 8 an infrastructure error (and nothing worse); 2 a bad plan or flag.
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::output::{emit, Table};
use crate::regress::exec::{run_plan, Event, RunOpts};
use crate::regress::history::{self, detect};
use crate::regress::k8s::{self, FleetOpts};
use crate::regress::lab::LabBackend;
use crate::regress::results::{fmt_ms, RunResults, StepStatus};
use crate::regress::{collect, html, junit, Plan};
use crate::{Context, Exit, Failure};

/// `vfioctl regress` arguments.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    /// `regress collect`, instead of running a plan.
    #[command(subcommand)]
    pub command: Option<RegressCommand>,

    /// The plan file (TOML); see docs/commands/regress.md.
    #[arg(required = true, value_name = "PLAN")]
    pub plan: Option<PathBuf>,

    /// Scenarios to run at once (never two sharing a device or IOMMU group).
    #[arg(short, long, default_value_t = 1, value_name = "N")]
    pub jobs: usize,

    /// Where results.json, junit.xml, report.html and per-scenario logs go
    /// (default: HISTORY/<run-id> with --history, else ./vfioctl-regress/<run-id>).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// History directory: past runs are read from it for regression detection and trend
    /// charts, and this run is stored in it as <run-id>/.
    #[arg(long, value_name = "DIR")]
    pub history: Option<PathBuf>,

    /// Run only these scenarios (repeat or comma-separate).
    #[arg(long, value_delimiter = ',', value_name = "NAME")]
    pub only: Vec<String>,

    /// Do not run: write manifests to run the plan elsewhere.
    #[arg(long, value_enum)]
    pub emit: Option<EmitKind>,

    /// Options of `--emit k8s` (nodes, image, namespace, host directories).
    #[command(flatten)]
    pub fleet: Box<FleetArgs>,

    /// The static guest agent for the lab initramfs of scenarios without `initrd`
    /// (default: an installed one, vfioctl-agent next to this vfioctl or in
    /// /usr/libexec/vfioctl; regress never runs cargo: scripts/build-agent builds one).
    #[arg(long, env = "VFIOCTL_AGENT", value_name = "PATH")]
    pub agent: Option<PathBuf>,

    /// The static vfioctl that the nested scenario's L1 guest runs (default: this vfioctl
    /// when it is static; scripts/build-static-vfioctl builds one).
    #[arg(long, env = "VFIOCTL_STATIC_VFIOCTL", value_name = "PATH")]
    pub static_vfioctl: Option<PathBuf>,

    /// The node name recorded with each result (set from spec.nodeName in the Jobs).
    #[arg(long, env = "VFIOCTL_NODE", value_name = "NAME")]
    pub node: Option<String>,
}

/// Options of `--emit k8s`.
#[derive(Debug, clap::Args)]
pub struct FleetArgs {
    /// Nodes to emit Jobs for (default: the plan's [fleet] nodes).
    #[arg(long, value_delimiter = ',', value_name = "NODE")]
    pub nodes: Vec<String>,

    /// Container image with vfioctl, QEMU and the guest artefacts (default: [fleet] image).
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,

    /// A vfioctl binary on each node to mount into the Job instead of the image's.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,

    /// Namespace of the emitted objects (default: [fleet] namespace, else none).
    #[arg(long)]
    pub namespace: Option<String>,

    /// Results directory on each node for the emitted Jobs.
    #[arg(long, value_name = "DIR", default_value = k8s::DEFAULT_HOST_RESULTS)]
    pub host_results: PathBuf,

    /// The lab cache on each node (guest kernels, images), mounted into the Jobs and
    /// exported there as VFIOCTL_LAB for the plan's ${VFIOCTL_LAB}.
    #[arg(long, value_name = "DIR", default_value = k8s::DEFAULT_HOST_LAB)]
    pub host_lab: PathBuf,
}

/// What `--emit` writes instead of running the plan.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum EmitKind {
    /// Kubernetes: a ConfigMap with the plan and one Job per node (a YAML stream of JSON
    /// documents on stdout, or one .json file per object under --out).
    K8s,
}

/// `vfioctl regress` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum RegressCommand {
    /// Merge the results of several nodes or runs into one report.
    Collect(CollectArgs),
}

/// `vfioctl regress collect` arguments.
#[derive(Debug, clap::Args)]
pub struct CollectArgs {
    /// Directories with results.json (a run's --out, its latest/, or a history dir).
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Where the merged results and reports go.
    #[arg(long, value_name = "DIR", default_value = "vfioctl-regress/collected")]
    pub out: PathBuf,
    /// History of merged runs, for regressions and trends across nights.
    #[arg(long, value_name = "DIR")]
    pub history: Option<PathBuf>,
}

fn io_fail(path: &Path, e: std::io::Error) -> Failure {
    Failure::new(
        Exit::Infrastructure,
        format!("writing {}: {e}", path.display()),
    )
}

fn write(path: &Path, text: &str) -> Result<(), Failure> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).map_err(|e| io_fail(p, e))?;
    }
    std::fs::write(path, text).map_err(|e| io_fail(path, e))
}

/// Write results.json, junit.xml and report.html into `out`.
fn write_reports(
    out: &Path,
    r: &RunResults,
    past: &[RunResults],
    chart_runs: usize,
) -> Result<(), Failure> {
    let json = serde_json::to_string_pretty(r)
        .map_err(|e| Failure::new(Exit::Infrastructure, e.to_string()))?;
    write(&out.join("results.json"), &json)?;
    write(&out.join("junit.xml"), &junit::render(r))?;
    write(&out.join("report.html"), &html::render(r, past, chart_runs))?;
    Ok(())
}

/// Copy the report files of a run into HISTORY/<run-id>/ (when --out is elsewhere).
fn store_history(hist: &Path, out: &Path, run_id: &str) -> Result<(), Failure> {
    let dst = hist.join(run_id);
    if dst == out {
        return Ok(());
    }
    std::fs::create_dir_all(&dst).map_err(|e| io_fail(&dst, e))?;
    for f in ["results.json", "junit.xml", "report.html"] {
        std::fs::copy(out.join(f), dst.join(f)).map_err(|e| io_fail(&dst.join(f), e))?;
    }
    Ok(())
}

fn print_summary(ctx: &Context, r: &RunResults, out: &Path) -> Result<(), Failure> {
    emit(ctx, r, |w| {
        let mut t = Table::new(&["SCENARIO", "OUTCOME", "STEP", "WALL", "SUMMARY"]);
        for s in &r.scenarios {
            t.row(vec![
                s.key(),
                s.outcome.label().into(),
                s.failed_step.map(|s| s.to_string()).unwrap_or_default(),
                fmt_ms(s.wall_ms),
                // The first line; the logs are in report.html and results.json.
                s.summary.lines().next().unwrap_or_default().to_string(),
            ]);
        }
        t.write(w)?;
        for g in &r.regressions {
            writeln!(w, "REGRESSION {}", g.describe())?;
        }
        let c = r.counts();
        writeln!(
            w,
            "{} scenarios: {} as expected, {} failed, {} unexpected passes, {} errors, {} skipped, {} regressions; wall {}",
            c.total, c.as_expected, c.failed, c.unexpected_passes, c.errors, c.skipped, c.regressions, fmt_ms(r.wall_ms)
        )?;
        writeln!(w, "report: {}", out.join("report.html").display())
    })
    .map_err(|e| Failure::new(Exit::Infrastructure, format!("writing output: {e}")))
}

/// Scenario progress: a bar over the scenarios at a terminal (the running step as its
/// message), one line per step and per finished scenario otherwise; nothing with -q.
fn progress(ctx: &Context, bar: &crate::output::Progress, e: Event) {
    match e {
        Event::Started { scenario } => {
            bar.set_message(format!("{scenario}: start"));
            if !bar.is_visible() {
                crate::output::note(ctx, format!("[regress] {scenario}: start"));
            }
        }
        Event::Step { scenario, result } => {
            let line = format!(
                "[regress] {scenario}: {}{} {} ({})",
                result.step,
                if result.cleanup { " (cleanup)" } else { "" },
                match result.status {
                    StepStatus::Ok => "ok",
                    StepStatus::Failed => "FAILED",
                },
                fmt_ms(result.ms)
            );
            if bar.is_visible() {
                bar.set_message(format!("{scenario}: {} done", result.step));
            } else {
                crate::output::note(ctx, line);
            }
        }
        Event::Finished { result } => {
            bar.println(
                ctx,
                format!(
                    "[regress] {}: {} in {}: {}",
                    result.name,
                    result.outcome.label(),
                    fmt_ms(result.wall_ms),
                    result.summary
                ),
            );
            bar.inc(1);
        }
    }
}

/// `vfioctl regress`: run a plan (or emit manifests for it), or collect results.
pub fn run(ctx: &Context, a: Args) -> Result<Exit, Failure> {
    if let Some(RegressCommand::Collect(c)) = a.command {
        return run_collect(ctx, c);
    }
    let plan_path = a
        .plan
        .clone()
        .ok_or_else(|| Failure::usage("PLAN is required"))?;
    let mut plan = match a.emit {
        // The plan runs elsewhere: its ${VAR}s are resolved there, by vfioctl in the Job.
        Some(EmitKind::K8s) => {
            let text = std::fs::read_to_string(&plan_path)
                .map_err(|e| Failure::usage(format!("reading {}: {e}", plan_path.display())))?;
            Plan::parse(&text, &plan_path, &|k| Some(format!("${{{k}}}")))?
        }
        None => Plan::load(&plan_path)?,
    };
    if !a.only.is_empty() {
        for n in &a.only {
            if plan.scenario(n).is_none() {
                return Err(Failure::usage(format!(
                    "--only {n}: no such scenario in {}",
                    plan_path.display()
                )));
            }
        }
        plan.scenarios.retain(|s| a.only.contains(&s.name));
    }
    if a.jobs == 0 {
        return Err(Failure::usage("--jobs must be at least 1"));
    }
    if let Some(EmitKind::K8s) = a.emit {
        return emit_k8s(ctx, &plan, &plan_path, &a);
    }

    let (past, warnings) = match &a.history {
        Some(h) => history::load(h),
        None => (Vec::new(), Vec::new()),
    };
    for w in warnings {
        crate::output::warn(ctx, w);
    }
    let run_id = history::run_id(SystemTime::now());
    let out = match (&a.out, &a.history) {
        (Some(o), _) => o.clone(),
        (None, Some(h)) => h.join(&run_id),
        (None, None) => PathBuf::from("vfioctl-regress").join(&run_id),
    };
    std::fs::create_dir_all(&out).map_err(|e| io_fail(&out, e))?;
    // Longest first, from the median wall time of past runs.
    let weights = plan
        .scenarios
        .iter()
        .filter_map(|s| {
            let mut v: Vec<u64> = past
                .iter()
                .rev()
                .take(plan.history.window)
                .filter_map(|r| r.scenarios.iter().find(|x| x.name == s.name))
                .map(|x| x.wall_ms)
                .collect();
            v.sort_unstable();
            v.get(v.len() / 2).map(|m| (s.name.clone(), *m))
        })
        .collect();
    let host = a.node.clone().unwrap_or_else(|| hostname(ctx));
    let opts = RunOpts {
        jobs: a.jobs,
        out: out.clone(),
        weights,
        host: host.clone(),
    };
    // SIGINT/SIGTERM: running scenarios tear down, no new one starts, the reports are
    // written for what ran, and the exit code is 130/143.
    crate::interrupt::install()?;
    let mut backend = LabBackend::new(ctx.clone());
    backend.agent = a.agent.clone();
    backend.static_vfioctl = a.static_vfioctl.clone();
    for (kernel, r, took) in backend.prepare_guest(&plan, &out) {
        let k = kernel
            .map(|k| format!(" for {}", k.display()))
            .unwrap_or_default();
        match r {
            Ok(p) => crate::output::note(
                ctx,
                format!(
                    "[regress] lab initramfs {}{k} ready in {}",
                    p.display(),
                    fmt_ms(took.as_millis() as u64)
                ),
            ),
            Err(e) => crate::output::warn(
                ctx,
                format!(
                    "lab initramfs{k}: {}{}",
                    e.message,
                    e.hint
                        .as_deref()
                        .map(|h| format!("\n  hint: {h}"))
                        .unwrap_or_default()
                ),
            ),
        }
    }
    let bar = crate::output::Progress::bar(ctx, plan.scenarios.len() as u64, "scenarios");
    let mut r = run_plan(&plan, &backend, &opts, &|e| progress(ctx, &bar, e));
    bar.finish();
    r.run_id = run_id;
    if let Some(node) = &a.node {
        for s in &mut r.scenarios {
            s.node = Some(node.clone());
        }
    }
    // Compare with the runs of the same plan only.
    let same: Vec<RunResults> = past.into_iter().filter(|p| p.plan == r.plan).collect();
    r.regressions = detect(&r, &same, &plan.history);
    write_reports(&out, &r, &same, plan.history.chart_runs)?;
    if let Some(h) = &a.history {
        store_history(h, &out, &r.run_id)?;
    }
    print_summary(ctx, &r, &out)?;
    if let Some(signal) = crate::interrupt::received() {
        return Err(crate::interrupt::Interrupted {
            what: format!("regress (reports for what ran: {})", out.display()),
            signal,
        }
        .into());
    }
    Ok(r.exit())
}

fn emit_k8s(ctx: &Context, plan: &Plan, plan_path: &Path, a: &Args) -> Result<Exit, Failure> {
    let f = &a.fleet;
    let nodes = if f.nodes.is_empty() {
        plan.fleet.nodes.clone()
    } else {
        f.nodes.clone()
    };
    if nodes.is_empty() {
        return Err(Failure::usage("--emit k8s needs nodes")
            .with_hint("pass --nodes a,b or list them in the plan's [fleet] nodes"));
    }
    let text = std::fs::read_to_string(plan_path)
        .map_err(|e| Failure::usage(format!("reading {}: {e}", plan_path.display())))?;
    for v in k8s::plan_variables(&text) {
        if !k8s::JOB_VARIABLES.contains(&v.as_str()) {
            crate::output::warn(
                ctx,
                format!(
                    "{} uses ${{{v}}}, which the Jobs do not set: it must be set in the image",
                    plan_path.display()
                ),
            );
        }
    }
    let opts = FleetOpts {
        nodes,
        image: f
            .image
            .clone()
            .or_else(|| plan.fleet.image.clone())
            .unwrap_or_else(|| k8s::DEFAULT_IMAGE.into()),
        binary: f.binary.clone(),
        namespace: f.namespace.clone().or_else(|| plan.fleet.namespace.clone()),
        host_results: f.host_results.clone(),
        host_lab: f.host_lab.clone(),
        jobs: a.jobs,
    };
    let ser = |e: serde_json::Error| {
        Failure::new(Exit::Infrastructure, format!("serializing manifests: {e}"))
    };
    match &a.out {
        None => print!("{}", k8s::manifests(plan, &text, &opts).map_err(ser)?),
        Some(dir) => {
            let cm = k8s::to_json(&k8s::config_map(plan, &text, &opts)).map_err(ser)?;
            let p = dir.join(format!("{}.json", k8s::config_map_name(plan)));
            write(&p, &format!("{cm}\n"))?;
            println!("{}", p.display());
            for n in &opts.nodes {
                let j = k8s::job(plan, n, &opts);
                let name = j.metadata.name.clone().unwrap_or_default();
                let p = dir.join(format!("{name}.json"));
                write(&p, &format!("{}\n", k8s::to_json(&j).map_err(ser)?))?;
                println!("{}", p.display());
            }
        }
    }
    Ok(Exit::Ok)
}

fn run_collect(ctx: &Context, c: CollectArgs) -> Result<Exit, Failure> {
    let mut r = collect::collect(&c.dirs)?;
    let mut past = Vec::new();
    if let Some(h) = &c.history {
        let (p, w) = history::load(h);
        for w in w {
            crate::output::warn(ctx, w);
        }
        past = p;
        past.retain(|p| p.run_id != r.run_id);
        for g in detect(&r, &past, &Default::default()) {
            if !r.regressions.contains(&g) {
                r.regressions.push(g);
            }
        }
    }
    write_reports(&c.out, &r, &past, 20)?;
    if let Some(h) = &c.history {
        store_history(h, &c.out, &r.run_id)?;
    }
    print_summary(ctx, &r, &c.out)?;
    Ok(r.exit())
}

fn hostname(ctx: &Context) -> String {
    ctx.root
        .read_attr("/proc/sys/kernel/hostname")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}
