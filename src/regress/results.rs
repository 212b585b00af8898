//! What a run produced: per scenario, per step, with timings, errors and log excerpts.
//! Serialized as `results.json`, the input of every report, of history and of `collect`.

use serde::{Deserialize, Serialize};

use super::plan::{Expect, PlugMode, Scenario};
use super::step::Step;
use crate::Exit;

/// Bumped when the JSON shape changes incompatibly.
pub const SCHEMA: u32 = 1;

/// Whether a step succeeded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum StepStatus {
    /// The step succeeded.
    Ok,
    /// The step failed (see its `failure`).
    Failed,
}

/// A piece of evidence kept with a failure.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct LogExcerpt {
    /// `serial`, `dmesg`, `qmp`, `qemu-stderr`, `agent`...
    pub source: String,
    /// The last lines (bounded by [`excerpt`]).
    pub text: String,
}

/// Keep the last `max_lines` lines (and at most 16 KiB) of a log.
pub fn excerpt(source: &str, text: &str, max_lines: usize) -> LogExcerpt {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    let mut t = lines[start..].join("\n");
    if t.len() > 16 * 1024 {
        let cut = t.len() - 16 * 1024;
        let cut = (cut..t.len())
            .find(|i| t.is_char_boundary(*i))
            .unwrap_or(cut);
        t = t[cut..].to_string();
    }
    LogExcerpt {
        source: source.into(),
        text: t,
    }
}

/// Why a step failed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepFailure {
    /// The error chain, outermost first, joined with ": ".
    pub message: String,
    /// The documented exit code of the error (`crate::Exit`): 8 is infrastructure, the
    /// others are real failures (3 validation, 4 boot timeout, 7 operation failed...).
    pub exit_code: u8,
    /// What to do about it, when the error has a hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// Log excerpts kept as evidence (serial console, QMP, agent...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<LogExcerpt>,
}

impl StepFailure {
    /// A failure with `exit`'s code and `message`, no hint, no logs.
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            exit_code: exit.code(),
            hint: None,
            logs: Vec::new(),
        }
    }
    /// Add `log` unless it is blank.
    pub fn with_log(mut self, log: LogExcerpt) -> Self {
        if !log.text.trim().is_empty() {
            self.logs.push(log);
        }
        self
    }
    /// Exit code 8: the lab broke (QEMU missing or crashed, I/O), not the thing under test.
    pub fn is_infrastructure(&self) -> bool {
        self.exit_code == Exit::Infrastructure.code()
    }
    /// Whether `pattern` occurs in the message or any log excerpt.
    pub fn mentions(&self, pattern: &str) -> bool {
        self.message.contains(pattern) || self.logs.iter().any(|l| l.text.contains(pattern))
    }
}

impl From<crate::Failure> for StepFailure {
    fn from(f: crate::Failure) -> Self {
        Self {
            message: f.chain().join(": "),
            exit_code: f.exit.code(),
            hint: f.hint,
            logs: Vec::new(),
        }
    }
}

/// One step of a scenario as it ran.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StepResult {
    /// Which lifecycle step.
    pub step: Step,
    /// Whether it succeeded.
    pub status: StepStatus,
    /// Ran as cleanup after an earlier failure.
    #[serde(default)]
    pub cleanup: bool,
    /// How long it took, in milliseconds.
    pub ms: u64,
    /// A one-line note from the step (what it plugged, the guest's BAR address...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Why it failed (set when `status` is `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<StepFailure>,
}

/// What a scenario's run means against the plan's expectation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Expected to pass and did.
    Passed,
    /// Expected to pass and failed (or a negative control failed the wrong way).
    Failed,
    /// A negative control failed where and how the plan says.
    ExpectedFailure,
    /// A negative control passed: it no longer detects what it should.
    UnexpectedPass,
    /// An infrastructure problem (QEMU missing or crashed, I/O, cleanup failed).
    Error,
    /// Could not run here (said why); counted, never a pass.
    Skipped,
}

impl Outcome {
    /// Passed, or failed as a negative control should.
    pub fn as_expected(self) -> bool {
        matches!(self, Outcome::Passed | Outcome::ExpectedFailure)
    }
    /// How reports print it (upper case for the outcomes that need attention).
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Passed => "passed",
            Outcome::Failed => "FAILED",
            Outcome::ExpectedFailure => "failed as expected",
            Outcome::UnexpectedPass => "UNEXPECTED PASS",
            Outcome::Error => "ERROR",
            Outcome::Skipped => "skipped",
        }
    }
}

/// One scenario of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ScenarioResult {
    /// The scenario's name in the plan.
    pub name: String,
    /// The node it ran on (set by `collect` and by runs with a known node name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Its devices as the plan names them.
    pub devices: Vec<String>,
    /// Cold or hot plug.
    pub plug: PlugMode,
    /// What the plan expects of it.
    pub expect: ExpectRecord,
    /// The judged outcome.
    pub outcome: Outcome,
    /// Why the outcome is what it is, in one line.
    pub summary: String,
    /// The first step that failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_step: Option<Step>,
    /// Offset of the scenario's start from the run's start.
    pub start_ms: u64,
    /// How long it took, teardown included, in milliseconds.
    pub wall_ms: u64,
    /// The plan's description of the scenario.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The stack it ran on: `accelerator`, `qemu`, `guest-kernel`, `firmware`, `agent`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub stack: std::collections::BTreeMap<String, String>,
    /// Logs kept in the scenario's directory, relative to the run's output directory
    /// (`scenarios/<name>/serial.log`, `scenarios/<name>/qemu.stderr`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<String>,
    /// Every step that ran, in order, cleanup steps included.
    pub steps: Vec<StepResult>,
}

/// The plan's expectation, as recorded with the result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExpectRecord {
    /// `pass` or `fail`.
    pub outcome: String,
    /// For `fail`: the step that must fail (None: any step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<Step>,
    /// For `fail`: text that must occur in the error or its logs (`match` in JSON).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "match")]
    pub pattern: Option<String>,
}

impl From<&Expect> for ExpectRecord {
    fn from(e: &Expect) -> Self {
        match e {
            Expect::Pass => Self {
                outcome: "pass".into(),
                step: None,
                pattern: None,
            },
            Expect::Fail { step, pattern } => Self {
                outcome: "fail".into(),
                step: *step,
                pattern: pattern.clone(),
            },
        }
    }
}

impl ScenarioResult {
    /// `node/name` when a node is known, else `name`: the identity across runs.
    pub fn key(&self) -> String {
        match &self.node {
            Some(n) => format!("{n}/{}", self.name),
            None => self.name.clone(),
        }
    }
    /// The (non-cleanup) result of `step`, if it ran.
    pub fn step(&self, step: Step) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.step == step && !s.cleanup)
    }
    /// The first step that failed, if any.
    pub fn first_failure(&self) -> Option<&StepResult> {
        self.steps.iter().find(|s| s.status == StepStatus::Failed)
    }

    /// A result for a scenario that did not run.
    pub fn skipped(sc: &Scenario, why: impl Into<String>) -> Self {
        Self {
            name: sc.name.clone(),
            node: None,
            devices: sc.devices.iter().map(ToString::to_string).collect(),
            plug: sc.plug,
            expect: (&sc.expect).into(),
            outcome: Outcome::Skipped,
            summary: why.into(),
            failed_step: None,
            start_ms: 0,
            wall_ms: 0,
            description: sc.description.clone(),
            stack: Default::default(),
            logs: Vec::new(),
            steps: Vec::new(),
        }
    }
}

/// Decide a scenario's outcome from its steps and the plan's expectation (pure).
pub fn judge(expect: &Expect, steps: &[StepResult]) -> (Outcome, Option<Step>, String) {
    let first = steps.iter().find(|s| s.status == StepStatus::Failed);
    let cleanup_failed = steps
        .iter()
        .filter(|s| s.status == StepStatus::Failed)
        .nth(1)
        .or_else(|| first.filter(|f| f.step.is_teardown() && !f.cleanup));
    let Some(first) = first else {
        return match expect {
            Expect::Pass => (Outcome::Passed, None, "every step passed".into()),
            Expect::Fail { step, .. } => (
                Outcome::UnexpectedPass,
                None,
                format!(
                    "negative control passed: expected a failure{}",
                    step.map(|s| format!(" at {s}")).unwrap_or_default()
                ),
            ),
        };
    };
    let f = first.failure.as_ref();
    let msg = f.map(|f| f.message.clone()).unwrap_or_default();
    let at = first.step;
    if let Some(c) = cleanup_failed.filter(|c| c.step.is_teardown()) {
        return (
            Outcome::Error,
            Some(at),
            format!(
                "{at} failed ({msg}); then cleanup step {} failed: {}",
                c.step,
                c.failure.as_ref().map(|f| f.message.as_str()).unwrap_or("")
            ),
        );
    }
    if f.is_some_and(StepFailure::is_infrastructure) {
        return (
            Outcome::Error,
            Some(at),
            format!("infrastructure error at {at}: {msg}"),
        );
    }
    match expect {
        Expect::Pass => (Outcome::Failed, Some(at), format!("{at} failed: {msg}")),
        Expect::Fail { step, pattern } => {
            if let Some(want) = step.filter(|s| *s != at) {
                return (
                    Outcome::Failed,
                    Some(at),
                    format!("negative control failed at {at}, expected at {want}: {msg}"),
                );
            }
            if let Some(p) = pattern {
                if !f.is_some_and(|f| f.mentions(p)) {
                    return (
                        Outcome::Failed,
                        Some(at),
                        format!("negative control failed at {at} without {p:?} in its error or logs: {msg}"),
                    );
                }
            }
            (
                Outcome::ExpectedFailure,
                Some(at),
                format!("failed as expected at {at}: {msg}"),
            )
        }
    }
}

/// A finding against history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Regression {
    /// As expected in the previous run, not now.
    Outcome {
        /// The scenario's key (`node/name` or `name`).
        scenario: String,
        /// The run id of the most recent earlier run that has the scenario.
        previous_run: String,
        /// Its outcome then.
        was: Outcome,
        /// Its outcome now.
        now: Outcome,
        /// The step that failed now, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        step: Option<Step>,
    },
    /// A step slower than the median of the last runs by more than the margin.
    Slower {
        /// The scenario's key (`node/name` or `name`).
        scenario: String,
        /// The slower step.
        step: Step,
        /// How long it took now, in milliseconds.
        ms: u64,
        /// The median of its earlier successful runs, in milliseconds.
        median_ms: u64,
        /// How many earlier runs the median is of.
        samples: usize,
        /// The allowed margin over the median, in percent.
        margin_pct: u32,
    },
}

impl Regression {
    /// The scenario's key (`node/name` or `name`).
    pub fn scenario(&self) -> &str {
        match self {
            Regression::Outcome { scenario, .. } | Regression::Slower { scenario, .. } => scenario,
        }
    }
    /// One line for reports and the terminal.
    pub fn describe(&self) -> String {
        match self {
            Regression::Outcome {
                scenario,
                previous_run,
                was,
                now,
                step,
            } => format!(
                "{scenario}: {} in run {previous_run}, {} now{}",
                was.label(),
                now.label(),
                step.map(|s| format!(" (at {s})")).unwrap_or_default()
            ),
            Regression::Slower {
                scenario,
                step,
                ms,
                median_ms,
                samples,
                margin_pct,
            } => format!(
                "{scenario}: {step} took {}, median of last {samples} runs {} (margin {margin_pct}%)",
                fmt_ms(*ms),
                fmt_ms(*median_ms)
            ),
        }
    }
}

/// `830 ms`, `3.2 s`, `2 min 5 s`.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

/// One run of a plan (or several merged by `collect`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct RunResults {
    /// The JSON shape's version (`SCHEMA`).
    pub schema: u32,
    /// UTC timestamp `20261122T023000Z`; orders runs in history.
    pub run_id: String,
    /// The plan's name.
    pub plan: String,
    /// The node it ran on: `--node`, else the host name.
    pub host: String,
    /// How many scenarios could run at once (`--jobs`).
    pub jobs: usize,
    /// The vfioctl version that ran it.
    pub vfioctl: String,
    /// The whole run's wall time, in milliseconds.
    pub wall_ms: u64,
    /// Every scenario of the plan, skipped ones included, in plan order.
    pub scenarios: Vec<ScenarioResult>,
    /// Findings against history (empty until history is compared).
    #[serde(default)]
    pub regressions: Vec<Regression>,
    /// Runs merged into this one by `collect` (their run ids and hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub merged: Vec<String>,
}

/// Counts for summaries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Scenarios in the run.
    pub total: usize,
    /// Passed or failed as expected.
    pub as_expected: usize,
    /// [`Outcome::Passed`].
    pub passed: usize,
    /// [`Outcome::ExpectedFailure`].
    pub expected_failures: usize,
    /// [`Outcome::Failed`].
    pub failed: usize,
    /// [`Outcome::UnexpectedPass`].
    pub unexpected_passes: usize,
    /// [`Outcome::Error`].
    pub errors: usize,
    /// [`Outcome::Skipped`].
    pub skipped: usize,
    /// Regressions found against history.
    pub regressions: usize,
}

impl RunResults {
    /// The run's scenarios counted by outcome.
    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            total: self.scenarios.len(),
            regressions: self.regressions.len(),
            ..Counts::default()
        };
        for s in &self.scenarios {
            if s.outcome.as_expected() {
                c.as_expected += 1;
            }
            match s.outcome {
                Outcome::Passed => c.passed += 1,
                Outcome::ExpectedFailure => c.expected_failures += 1,
                Outcome::Failed => c.failed += 1,
                Outcome::UnexpectedPass => c.unexpected_passes += 1,
                Outcome::Error => c.errors += 1,
                Outcome::Skipped => c.skipped += 1,
            }
        }
        c
    }

    /// The documented exit code: 5 ([`Exit::Regression`]) when a scenario did not do what
    /// the plan expects (failed, unexpectedly passed) or history shows a regression; else
    /// 8 ([`Exit::Infrastructure`]) when a scenario hit an infrastructure error; else 0.
    /// Skipped scenarios do not change the code (they are counted and printed).
    pub fn exit(&self) -> Exit {
        let c = self.counts();
        if c.failed + c.unexpected_passes + c.regressions > 0 {
            Exit::Regression
        } else if c.errors > 0 {
            Exit::Infrastructure
        } else {
            Exit::Ok
        }
    }

    /// The scenario with this key (`node/name` or `name`), if the run has it.
    pub fn scenario(&self, key: &str) -> Option<&ScenarioResult> {
        self.scenarios.iter().find(|s| s.key() == key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regress::testdata::ok;

    pub(crate) fn bad(step: Step, exit: Exit, msg: &str) -> StepResult {
        StepResult {
            step,
            status: StepStatus::Failed,
            cleanup: false,
            ms: 5,
            note: None,
            failure: Some(StepFailure::new(exit, msg)),
        }
    }

    #[test]
    fn judge_pass_and_fail() {
        let steps = vec![ok(Step::Check, 1), ok(Step::VmUp, 2)];
        assert_eq!(judge(&Expect::Pass, &steps).0, Outcome::Passed);
        let neg = Expect::Fail {
            step: Some(Step::Validate),
            pattern: Some("no space".into()),
        };
        assert_eq!(judge(&neg, &steps).0, Outcome::UnexpectedPass);

        let mut s = steps.clone();
        s.push(bad(
            Step::Validate,
            Exit::ValidationFailed,
            "BAR 2: can't assign; no space",
        ));
        let mut v = ok(Step::VmDown, 3);
        v.cleanup = true;
        s.push(v);
        let (o, at, _) = judge(&neg, &s);
        assert_eq!((o, at), (Outcome::ExpectedFailure, Some(Step::Validate)));
        assert_eq!(judge(&Expect::Pass, &s).0, Outcome::Failed);

        // Wrong step or missing pattern: not the failure the control is for.
        let neg_plug = Expect::Fail {
            step: Some(Step::Plug),
            pattern: None,
        };
        assert_eq!(judge(&neg_plug, &s).0, Outcome::Failed);
        let neg_pat = Expect::Fail {
            step: None,
            pattern: Some("MSI".into()),
        };
        assert_eq!(judge(&neg_pat, &s).0, Outcome::Failed);
    }

    #[test]
    fn judge_pattern_found_in_logs() {
        let mut f = bad(Step::Validate, Exit::ValidationFailed, "device has no BAR");
        f.failure = f.failure.map(|x| {
            x.with_log(LogExcerpt {
                source: "dmesg".into(),
                text: "pci 0000:01:00.0: BAR 2: failed to assign".into(),
            })
        });
        let neg = Expect::Fail {
            step: None,
            pattern: Some("failed to assign".into()),
        };
        assert_eq!(judge(&neg, &[f]).0, Outcome::ExpectedFailure);
    }

    #[test]
    fn infrastructure_and_cleanup_failures_are_errors_even_for_negative_controls() {
        let neg = Expect::Fail {
            step: None,
            pattern: None,
        };
        let s = vec![bad(
            Step::VmUp,
            Exit::Infrastructure,
            "qemu-system-x86_64: not found",
        )];
        assert_eq!(judge(&neg, &s).0, Outcome::Error);
        let mut c = bad(
            Step::VmDown,
            Exit::Infrastructure,
            "QEMU pid 42 did not exit",
        );
        c.cleanup = true;
        let s = vec![bad(Step::Validate, Exit::ValidationFailed, "x"), c];
        assert_eq!(judge(&neg, &s).0, Outcome::Error);
        // A teardown failing on the happy path is an error too (something leaked).
        let s = vec![
            ok(Step::Validate, 1),
            bad(Step::Restore, Exit::OperationFailed, "y"),
        ];
        assert_eq!(judge(&Expect::Pass, &s).0, Outcome::Error);
    }

    #[test]
    fn exit_codes() {
        let mut r = RunResults {
            schema: SCHEMA,
            run_id: "20260101T000000Z".into(),
            plan: "p".into(),
            host: "h".into(),
            jobs: 1,
            vfioctl: "0".into(),
            wall_ms: 0,
            scenarios: vec![],
            regressions: vec![],
            merged: vec![],
        };
        assert_eq!(r.exit(), Exit::Ok);
        let sc = ScenarioResult {
            name: "a".into(),
            node: None,
            devices: vec![],
            plug: PlugMode::Hot,
            expect: (&Expect::Pass).into(),
            outcome: Outcome::Error,
            summary: String::new(),
            failed_step: None,
            start_ms: 0,
            wall_ms: 0,
            description: None,
            stack: Default::default(),
            logs: Vec::new(),
            steps: vec![],
        };
        r.scenarios.push(sc.clone());
        assert_eq!(r.exit(), Exit::Infrastructure);
        r.scenarios.push(ScenarioResult {
            outcome: Outcome::Failed,
            ..sc.clone()
        });
        assert_eq!(r.exit(), Exit::Regression);
        r.scenarios = vec![ScenarioResult {
            outcome: Outcome::Skipped,
            ..sc
        }];
        assert_eq!(r.exit(), Exit::Ok);
    }

    #[test]
    fn excerpt_keeps_the_tail() {
        let text = (0..100)
            .map(|i| format!("line {i}"))
            .collect::<Vec<_>>()
            .join("\n");
        let e = excerpt("serial", &text, 3);
        assert_eq!(e.text, "line 97\nline 98\nline 99");
    }

    #[test]
    fn fmt_ms_cases() {
        assert_eq!(fmt_ms(830), "830 ms");
        assert_eq!(fmt_ms(3240), "3.2 s");
        assert_eq!(fmt_ms(125_000), "2 min 5 s");
    }
}
