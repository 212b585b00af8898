//! The executor: runs every scenario of a plan through its lifecycle ([`Machine`]), in
//! parallel where the [`Scheduler`] allows, timing each step, and turns what happened
//! into [`RunResults`].
//!
//! The work of each step is done by a [`Backend`]: `LabBackend` (lab.rs) calls the
//! real library (host checks, bind, VM, agent). The executor owns the guarantees that do
//! not depend on it: the cleanup path always runs (a step that panics counts as failed,
//! and teardown still follows), each step is timed, and after the last step the backend
//! is asked what it left behind (processes, bindings); anything left is an error. A
//! transition the lifecycle refuses (a bug in [`Machine`]) stops the scenario as an error
//! too.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use super::history::run_id;
use super::plan::{Plan, Scenario};
use super::results::{
    judge, Outcome, RunResults, ScenarioResult, StepFailure, StepResult, StepStatus, SCHEMA,
};
use super::schedule::{Job, Scheduler};
use super::step::{Machine, Shape, State, Step};
use crate::Exit;

/// What a step sees.
pub struct StepCtx<'a> {
    /// The scenario being run.
    pub scenario: &'a Scenario,
    /// The plan's limit for this step; the backend enforces it.
    pub timeout: Duration,
    /// Running as cleanup after an earlier failure.
    pub cleanup: bool,
    /// The scenario's own directory under the output directory (logs, sockets, state).
    pub dir: &'a Path,
}

/// The work behind the steps.
pub trait Backend: Sync {
    /// Per-scenario state (the VM handle, what was bound), created before `check`.
    type Session: Send;

    /// A reason this scenario cannot run here (printed and counted as skipped).
    fn skip_reason(&self, sc: &Scenario) -> Option<String>;

    /// Exclusivity keys: one per IOMMU group (or address) of the scenario's host devices.
    fn keys(&self, sc: &Scenario) -> BTreeSet<String>;

    /// Create the scenario's session (nothing run yet); `dir` is its own output directory.
    fn session(&self, sc: &Scenario, dir: &Path) -> Self::Session;

    /// Run one step; `Ok` carries an optional one-line note for the report.
    fn step(
        &self,
        session: &mut Self::Session,
        step: Step,
        ctx: &StepCtx,
    ) -> Result<Option<String>, StepFailure>;

    /// After the last step: what is still there that should not be (a QEMU process, a
    /// device still on vfio-pci). Empty when clean.
    fn leftovers(&self, session: &mut Self::Session) -> Vec<String>;

    /// The stack the scenario ran on (accelerator, QEMU, guest kernel...), for reports.
    fn stack(&self, _session: &Self::Session) -> std::collections::BTreeMap<String, String> {
        std::collections::BTreeMap::new()
    }
}

/// The logs a backend keeps in a scenario's directory, by file name.
pub const SCENARIO_LOGS: &[&str] = &["serial.log", "qemu.stderr", "nested.log"];

/// Progress as it happens, for the command line.
#[derive(Clone, Debug)]
pub enum Event<'a> {
    /// A scenario started (after scheduling, before its first step).
    Started {
        /// The scenario's name.
        scenario: &'a str,
    },
    /// A step finished.
    Step {
        /// The scenario's name.
        scenario: &'a str,
        /// The step's result.
        result: &'a StepResult,
    },
    /// A scenario finished (or was skipped).
    Finished {
        /// Its result.
        result: &'a ScenarioResult,
    },
}

/// How a run is executed.
pub struct RunOpts {
    /// How many scenarios may run at once (`--jobs`).
    pub jobs: usize,
    /// The run's output directory (`scenarios/<name>/` per scenario).
    pub out: PathBuf,
    /// Expected duration per scenario (ms) from history, for longest-first ordering.
    pub weights: BTreeMap<String, u64>,
    /// The node name recorded in the results (`--node`, else the host name).
    pub host: String,
}

/// Run one scenario start to end. Never panics because of a backend; always tears down.
pub fn run_scenario<B: Backend>(
    backend: &B,
    sc: &Scenario,
    dir: &Path,
    run_start: Instant,
    progress: &(dyn Fn(Event) + Sync),
) -> ScenarioResult {
    let started = Instant::now();
    let start_ms = started.duration_since(run_start).as_millis() as u64;
    let shape = Shape {
        bind: sc.devices.iter().any(|d| d.is_host()),
        hot: sc.plug == super::plan::PlugMode::Hot,
    };
    let mut session = backend.session(sc, dir);
    let mut m = Machine::new(shape);
    let mut steps = Vec::new();
    // A transition the lifecycle refuses is a bug in the machine: the scenario stops there
    // and is an infrastructure error (what it left behind is reported below).
    let mut refused = None;
    let mut state = m.start();
    loop {
        let step = match state {
            Ok(State::Running(step) | State::Cleanup(step)) => step,
            Ok(State::Pending | State::Done) => break,
            Err(e) => {
                refused = Some(e);
                break;
            }
        };
        let ctx = StepCtx {
            scenario: sc,
            timeout: sc.timeouts.get(step),
            cleanup: m.in_cleanup(),
            dir,
        };
        let t = Instant::now();
        // SIGINT/SIGTERM: no forward step starts any more; teardown still runs.
        let r = match crate::interrupt::received().filter(|_| !ctx.cleanup) {
            Some(sig) => Err(StepFailure::new(
                sig.exit(),
                format!("stopped by {sig} before {step}"),
            )),
            None => catch_unwind(AssertUnwindSafe(|| backend.step(&mut session, step, &ctx)))
                .unwrap_or_else(|p| {
                    let what = p
                        .downcast_ref::<String>()
                        .cloned()
                        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                        .unwrap_or_else(|| "unknown panic".into());
                    Err(StepFailure::new(
                        Exit::Infrastructure,
                        format!("{step} panicked: {what}"),
                    ))
                }),
        };
        let ms = t.elapsed().as_millis() as u64;
        let (status, note, failure) = match r {
            Ok(note) => (StepStatus::Ok, note, None),
            Err(f) => (StepStatus::Failed, None, Some(f)),
        };
        let ok = status == StepStatus::Ok;
        let res = StepResult {
            step,
            status,
            cleanup: ctx.cleanup,
            ms,
            note,
            failure,
        };
        progress(Event::Step {
            scenario: &sc.name,
            result: &res,
        });
        steps.push(res);
        state = m.finish(ok);
    }
    let (mut outcome, failed_step, mut summary) = judge(&sc.expect, &steps);
    if let Some(e) = refused {
        outcome = Outcome::Error;
        summary = format!("{summary}; stopped: {e}");
    }
    let stack = backend.stack(&session);
    let left = backend.leftovers(&mut session);
    if !left.is_empty() {
        outcome = Outcome::Error;
        summary = format!("{summary}; left behind after cleanup: {}", left.join("; "));
    }
    ScenarioResult {
        name: sc.name.clone(),
        node: None,
        devices: sc.devices.iter().map(ToString::to_string).collect(),
        plug: sc.plug,
        expect: (&sc.expect).into(),
        outcome,
        summary,
        failed_step,
        start_ms,
        wall_ms: started.elapsed().as_millis() as u64,
        description: sc.description.clone(),
        stack,
        logs: SCENARIO_LOGS
            .iter()
            .filter(|f| dir.join(f).is_file())
            .map(|f| format!("scenarios/{}/{f}", sc.name))
            .collect(),
        steps,
    }
}

/// Run a plan: `opts.jobs` scenarios at a time, never two sharing a device.
pub fn run_plan<B: Backend>(
    plan: &Plan,
    backend: &B,
    opts: &RunOpts,
    progress: &(dyn Fn(Event) + Sync),
) -> RunResults {
    let run_start = Instant::now();
    let id = run_id(SystemTime::now());
    let mut results: Vec<Option<ScenarioResult>> = vec![None; plan.scenarios.len()];
    let mut jobs = Vec::new();
    let mut runnable = Vec::new();
    for (i, sc) in plan.scenarios.iter().enumerate() {
        if let Some(why) = backend.skip_reason(sc) {
            let r = ScenarioResult::skipped(sc, format!("SKIPPED: {why}"));
            progress(Event::Finished { result: &r });
            results[i] = Some(r);
            continue;
        }
        let mut keys = backend.keys(sc);
        keys.extend(sc.locks.iter().map(|l| format!("lock:{l}")));
        jobs.push(Job {
            keys,
            weight_ms: opts.weights.get(&sc.name).copied().unwrap_or(0),
        });
        runnable.push(i);
    }
    let sched = Mutex::new(Scheduler::new(jobs, opts.jobs));
    let wake = Condvar::new();
    let slots = Mutex::new(results);
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1).min(runnable.len().max(1)) {
            s.spawn(|| loop {
                let next = {
                    let mut g = sched.lock().unwrap_or_else(|e| e.into_inner());
                    loop {
                        if let Some(j) = g.dispatch() {
                            break Some(j);
                        }
                        if g.finished() {
                            break None;
                        }
                        g = wake.wait(g).unwrap_or_else(|e| e.into_inner());
                    }
                };
                let Some(j) = next else {
                    wake.notify_all();
                    return;
                };
                let sc = &plan.scenarios[runnable[j]];
                let r = if let Some(sig) = crate::interrupt::received() {
                    // Stopped: the scenarios not started yet are reported as such.
                    ScenarioResult::skipped(sc, format!("not started: stopped by {sig}"))
                } else {
                    let dir = opts.out.join("scenarios").join(&sc.name);
                    let _ = std::fs::create_dir_all(&dir);
                    progress(Event::Started { scenario: &sc.name });
                    run_scenario(backend, sc, &dir, run_start, progress)
                };
                progress(Event::Finished { result: &r });
                slots.lock().unwrap_or_else(|e| e.into_inner())[runnable[j]] = Some(r);
                sched.lock().unwrap_or_else(|e| e.into_inner()).done(j);
                wake.notify_all();
            });
        }
    });
    let scenarios = slots
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .zip(&plan.scenarios)
        .map(|(r, sc)| r.unwrap_or_else(|| ScenarioResult::skipped(sc, "did not run")))
        .collect();
    RunResults {
        schema: SCHEMA,
        run_id: id,
        plan: plan.name.clone(),
        host: opts.host.clone(),
        jobs: opts.jobs,
        vfioctl: env!("CARGO_PKG_VERSION").into(),
        wall_ms: run_start.elapsed().as_millis() as u64,
        scenarios,
        regressions: Vec::new(),
        merged: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    //! The executor's own guarantees, with a backend that replays a script of step
    //! outcomes (data, not behaviour: the real backend is exercised by the lab test).
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    use super::*;
    use crate::regress::plan::Plan;

    /// Scenario name -> (step that fails, exit class); "panic" makes the step panic.
    struct Script {
        fail: BTreeMap<(String, Step), &'static str>,
        keys: BTreeMap<String, Vec<String>>,
        skip: BTreeSet<String>,
        held: Mutex<BTreeSet<String>>,
        overlap_seen: AtomicUsize,
        barrier: Option<Barrier>,
        leak: BTreeSet<String>,
        log: Mutex<Vec<String>>,
    }

    impl Script {
        fn new() -> Self {
            Self {
                fail: BTreeMap::new(),
                keys: BTreeMap::new(),
                skip: BTreeSet::new(),
                held: Mutex::new(BTreeSet::new()),
                overlap_seen: AtomicUsize::new(0),
                barrier: None,
                leak: BTreeSet::new(),
                log: Mutex::new(Vec::new()),
            }
        }
    }

    struct Sess {
        name: String,
        vm: bool,
    }

    impl Backend for Script {
        type Session = Sess;
        fn skip_reason(&self, sc: &Scenario) -> Option<String> {
            self.skip
                .contains(&sc.name)
                .then(|| "no such device here".into())
        }
        fn keys(&self, sc: &Scenario) -> BTreeSet<String> {
            self.keys
                .get(&sc.name)
                .map(|k| k.iter().cloned().collect())
                .unwrap_or_default()
        }
        fn session(&self, sc: &Scenario, _dir: &Path) -> Sess {
            Sess {
                name: sc.name.clone(),
                vm: false,
            }
        }
        fn step(
            &self,
            s: &mut Sess,
            step: Step,
            ctx: &StepCtx,
        ) -> Result<Option<String>, StepFailure> {
            self.log.lock().unwrap().push(format!(
                "{} {step}{}",
                s.name,
                if ctx.cleanup { " (cleanup)" } else { "" }
            ));
            if step == Step::Check {
                let mut h = self.held.lock().unwrap();
                for k in self.keys(ctx.scenario) {
                    if !h.insert(k) {
                        self.overlap_seen.fetch_add(1, Ordering::SeqCst);
                    }
                }
                drop(h);
                if let Some(b) = &self.barrier {
                    b.wait();
                }
            }
            if step == Step::VmUp {
                s.vm = true;
            }
            if step == Step::VmDown {
                s.vm = false;
            }
            if step == Step::VmDown
                || (step == Step::Check && self.fail.contains_key(&(s.name.clone(), Step::Check)))
            {
                let mut h = self.held.lock().unwrap();
                for k in self.keys(ctx.scenario) {
                    h.remove(&k);
                }
            }
            match self.fail.get(&(s.name.clone(), step)) {
                Some(&"panic") => panic!("backend bug"),
                Some(&"infra") => Err(StepFailure::new(
                    Exit::Infrastructure,
                    "qemu-system-x86_64: not found",
                )),
                Some(msg) => Err(StepFailure::new(Exit::ValidationFailed, *msg)),
                None => Ok(None),
            }
        }
        fn leftovers(&self, s: &mut Sess) -> Vec<String> {
            let mut v = Vec::new();
            if s.vm {
                v.push(format!("VM of {} still running", s.name));
            }
            if self.leak.contains(&s.name) {
                v.push("qemu pid 4242".into());
            }
            v
        }
    }

    fn plan(text: &str) -> Plan {
        Plan::parse(text, Path::new("/p/lab.toml"), &|_| None).unwrap()
    }

    const PLAN: &str = r#"
[[scenario]]
name = "hot"
devices = ["emulated:8G"]
[[scenario]]
name = "neg"
devices = ["emulated:8G"]
expect = { outcome = "fail", step = "validate", match = "no space" }
[[scenario]]
name = "gpu"
devices = ["0000:41:00.0"]
plug = "cold"
"#;

    fn opts(jobs: usize, dir: &tempfile::TempDir) -> RunOpts {
        RunOpts {
            jobs,
            out: dir.path().to_path_buf(),
            weights: BTreeMap::new(),
            host: "test".into(),
        }
    }

    #[test]
    fn outcomes_and_cleanup_paths() {
        let p = plan(PLAN);
        let d = tempfile::tempdir().unwrap();
        let mut b = Script::new();
        b.fail
            .insert(("neg".into(), Step::Validate), "BAR 2: no space");
        b.fail.insert(("gpu".into(), Step::VmUp), "panic");
        let r = run_plan(&p, &b, &opts(1, &d), &|_| {});
        let o: Vec<_> = r.scenarios.iter().map(|s| s.outcome).collect();
        assert_eq!(
            o,
            [Outcome::Passed, Outcome::ExpectedFailure, Outcome::Error]
        );
        let log = b.log.lock().unwrap().join("\n");
        assert!(
            log.contains("neg validate\nneg unplug (cleanup)\nneg vm-down (cleanup)"),
            "{log}"
        );
        // The panicking vm-up still got vm-down and restore.
        assert!(
            log.contains("gpu vm-up\ngpu vm-down (cleanup)\ngpu restore (cleanup)"),
            "{log}"
        );
        assert!(r.scenarios[2].summary.contains("panicked: backend bug"));
        assert_eq!(r.exit(), Exit::Infrastructure);
    }

    #[test]
    fn leftovers_turn_a_pass_into_an_error() {
        let p = plan(PLAN);
        let d = tempfile::tempdir().unwrap();
        let mut b = Script::new();
        b.fail.insert(("neg".into(), Step::Validate), "no space");
        b.leak.insert("hot".into());
        let r = run_plan(&p, &b, &opts(2, &d), &|_| {});
        assert_eq!(r.scenarios[0].outcome, Outcome::Error);
        assert!(r.scenarios[0].summary.contains("qemu pid 4242"));
    }

    #[test]
    fn skipped_scenarios_are_counted_not_run() {
        let p = plan(PLAN);
        let d = tempfile::tempdir().unwrap();
        let mut b = Script::new();
        b.fail.insert(("neg".into(), Step::Validate), "no space");
        b.skip.insert("gpu".into());
        let r = run_plan(&p, &b, &opts(3, &d), &|_| {});
        assert_eq!(r.scenarios[2].outcome, Outcome::Skipped);
        assert!(r.scenarios[2].summary.starts_with("SKIPPED: "));
        assert_eq!(r.counts().skipped, 1);
        assert_eq!(r.exit(), Exit::Ok);
        assert!(!b.log.lock().unwrap().iter().any(|l| l.starts_with("gpu")));
    }

    #[test]
    fn independent_scenarios_run_in_parallel_and_shared_devices_never_overlap() {
        // Three independent scenarios must all reach `check` together (a barrier of 3
        // would deadlock if the executor ran fewer at once).
        let p = plan(PLAN);
        let d = tempfile::tempdir().unwrap();
        let mut b = Script::new();
        b.fail.insert(("neg".into(), Step::Validate), "no space");
        b.barrier = Some(Barrier::new(3));
        let r = run_plan(&p, &b, &opts(3, &d), &|_| {});
        assert_eq!(r.counts().as_expected, 3);

        // Now all three share one IOMMU group: never more than one holds it.
        let mut b = Script::new();
        b.fail.insert(("neg".into(), Step::Validate), "no space");
        for n in ["hot", "neg", "gpu"] {
            b.keys.insert(n.into(), vec!["group:12".into()]);
        }
        let r = run_plan(&p, &b, &opts(3, &d), &|_| {});
        assert_eq!(b.overlap_seen.load(Ordering::SeqCst), 0);
        assert_eq!(r.counts().as_expected, 3);
    }
}
