//! The history directory and regression detection.
//!
//! Layout: `HISTORY/<run-id>/results.json` (plus that run's reports), one directory per
//! run; run ids are UTC timestamps (`20261122T023000Z`), so name order is time order.
//! Detection ([`detect`]) is a pure function of the current run and the past runs.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::plan::HistoryCfg;
use super::results::{Outcome, Regression, RunResults, StepStatus};
use super::step::Step;

/// Reading or writing results files of the history directory.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// A results file or directory cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A `results.json` that is not vfioctl results JSON.
    #[error("{path} is not a vfioctl results file")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// A file cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl crate::Diagnose for HistoryError {
    fn exit(&self) -> crate::Exit {
        match self {
            HistoryError::Parse { .. } => crate::Exit::Usage,
            _ => crate::Exit::Infrastructure,
        }
    }
    fn hint(&self) -> Option<String> {
        match self {
            HistoryError::Parse { .. } => {
                Some("point at a directory written by `vfioctl regress --out`".into())
            }
            _ => None,
        }
    }
}

/// Read one `results.json`.
pub fn read_results(path: &Path) -> Result<RunResults, HistoryError> {
    let text = std::fs::read_to_string(path).map_err(|source| HistoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| HistoryError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// Past runs in `dir`, oldest first. Unreadable entries are returned as warnings, not
/// errors: one corrupt night must not stop every later one.
pub fn load(dir: &Path) -> (Vec<RunResults>, Vec<String>) {
    let mut warnings = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return (Vec::new(), warnings);
    };
    let mut names: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("results.json").is_file())
        .collect();
    names.sort();
    let mut runs = Vec::new();
    for p in names {
        match read_results(&p.join("results.json")) {
            Ok(r) => runs.push(r),
            Err(e) => warnings.push(format!("history: skipping {}: {e}", p.display())),
        }
    }
    runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    (runs, warnings)
}

/// A run id from a time: `YYYYMMDDTHHMMSSZ` (UTC).
pub fn run_id(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian, UTC).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

/// The timing series of one scenario step across runs (oldest first), `None` where the
/// step did not succeed in that run.
pub fn series(runs: &[&RunResults], scenario: &str, step: Step) -> Vec<Option<u64>> {
    runs.iter()
        .map(|r| {
            r.scenario(scenario)
                .and_then(|s| s.step(step))
                .filter(|s| s.status == StepStatus::Ok)
                .map(|s| s.ms)
        })
        .collect()
}

/// Regressions of `current` against `past` (oldest first, not containing `current`):
///
/// - outcome: a scenario that was as expected in the most recent past run that has it,
///   and now is not (failed, or a negative control that now passes). Infrastructure
///   errors and skips are not regressions of the thing under test; they show in the
///   exit code (8) and the report instead.
/// - timing: a step that succeeded now and took longer than the median of its last
///   `window` successful runs by more than `margin_pct`, and by at least `min_delta_ms`,
///   given at least `min_samples` samples.
pub fn detect(current: &RunResults, past: &[RunResults], cfg: &HistoryCfg) -> Vec<Regression> {
    let mut out = Vec::new();
    for sc in &current.scenarios {
        let key = sc.key();
        let prev = past
            .iter()
            .rev()
            .find_map(|r| r.scenario(&key).map(|s| (r, s)));
        if let Some((prun, ps)) = prev {
            let now_bad = !sc.outcome.as_expected()
                && !matches!(sc.outcome, Outcome::Error | Outcome::Skipped);
            if ps.outcome.as_expected() && now_bad {
                out.push(Regression::Outcome {
                    scenario: key.clone(),
                    previous_run: prun.run_id.clone(),
                    was: ps.outcome,
                    now: sc.outcome,
                    step: sc.failed_step,
                });
            }
        }
        for st in sc
            .steps
            .iter()
            .filter(|s| !s.cleanup && s.status == StepStatus::Ok)
        {
            let mut samples: Vec<u64> = past
                .iter()
                .rev()
                .filter_map(|r| r.scenario(&key))
                .filter_map(|s| s.step(st.step))
                .filter(|s| s.status == StepStatus::Ok)
                .map(|s| s.ms)
                .take(cfg.window)
                .collect();
            if samples.len() < cfg.min_samples.max(1) {
                continue;
            }
            let n = samples.len();
            let med = median(&mut samples);
            let limit = med + med * u64::from(cfg.margin_pct) / 100;
            if st.ms > limit && st.ms.saturating_sub(med) >= cfg.min_delta_ms {
                out.push(Regression::Slower {
                    scenario: key.clone(),
                    step: st.step,
                    ms: st.ms,
                    median_ms: med,
                    samples: n,
                    margin_pct: cfg.margin_pct,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regress::plan::{Expect, PlugMode};
    use crate::regress::results::{ScenarioResult, StepResult, SCHEMA};

    fn run(id: &str, scenarios: Vec<ScenarioResult>) -> RunResults {
        RunResults {
            schema: SCHEMA,
            run_id: id.into(),
            plan: "lab".into(),
            host: "h".into(),
            jobs: 1,
            vfioctl: "0".into(),
            wall_ms: 0,
            scenarios,
            regressions: vec![],
            merged: vec![],
        }
    }

    fn sc(name: &str, outcome: Outcome, boot_ms: u64) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            node: None,
            devices: vec![],
            plug: PlugMode::Hot,
            expect: (&Expect::Pass).into(),
            outcome,
            summary: String::new(),
            failed_step: None,
            start_ms: 0,
            wall_ms: boot_ms,
            description: None,
            stack: Default::default(),
            logs: Vec::new(),
            steps: vec![StepResult {
                step: Step::VmUp,
                status: StepStatus::Ok,
                cleanup: false,
                ms: boot_ms,
                note: None,
                failure: None,
            }],
        }
    }

    fn cfg() -> HistoryCfg {
        HistoryCfg::default()
    }

    #[test]
    fn new_failure_after_a_pass_is_a_regression() {
        let past = vec![run("1", vec![sc("a", Outcome::Passed, 1000)])];
        let cur = run("2", vec![sc("a", Outcome::Failed, 1000)]);
        let r = detect(&cur, &past, &cfg());
        assert!(
            matches!(
                &r[..],
                [Regression::Outcome {
                    was: Outcome::Passed,
                    now: Outcome::Failed,
                    ..
                }]
            ),
            "{r:?}"
        );
    }

    #[test]
    fn still_failing_or_infra_or_new_scenario_is_not() {
        let past = vec![run(
            "1",
            vec![sc("a", Outcome::Failed, 1000), sc("b", Outcome::Passed, 1)],
        )];
        let cur = run(
            "2",
            vec![
                sc("a", Outcome::Failed, 1000),
                sc("b", Outcome::Error, 1),
                sc("c", Outcome::Failed, 1),
            ],
        );
        assert!(detect(&cur, &past, &cfg()).is_empty());
    }

    #[test]
    fn a_negative_control_that_starts_passing_is_a_regression() {
        let past = vec![run("1", vec![sc("neg", Outcome::ExpectedFailure, 1)])];
        let cur = run("2", vec![sc("neg", Outcome::UnexpectedPass, 1)]);
        assert_eq!(detect(&cur, &past, &cfg()).len(), 1);
    }

    #[test]
    fn previous_means_the_latest_run_that_has_the_scenario() {
        let past = vec![
            run("1", vec![sc("a", Outcome::Passed, 1)]),
            run("2", vec![sc("b", Outcome::Passed, 1)]),
        ];
        let cur = run("3", vec![sc("a", Outcome::Failed, 1)]);
        assert_eq!(detect(&cur, &past, &cfg()).len(), 1);
    }

    #[test]
    fn slower_than_median_by_margin() {
        let past: Vec<_> = [10_000, 11_000, 9_000, 10_000, 30_000]
            .iter()
            .enumerate()
            .map(|(i, ms)| run(&i.to_string(), vec![sc("a", Outcome::Passed, *ms)]))
            .collect();
        // median of the last 5 = 10 000; limit 15 000.
        let cur = run("9", vec![sc("a", Outcome::Passed, 15_000)]);
        assert!(detect(&cur, &past, &cfg()).is_empty());
        let cur = run("9", vec![sc("a", Outcome::Passed, 15_001)]);
        let r = detect(&cur, &past, &cfg());
        assert!(
            matches!(
                &r[..],
                [Regression::Slower {
                    median_ms: 10_000,
                    samples: 5,
                    step: Step::VmUp,
                    ..
                }]
            ),
            "{r:?}"
        );
        // Small absolute differences are noise.
        let past: Vec<_> = (0..5)
            .map(|i| run(&i.to_string(), vec![sc("a", Outcome::Passed, 100)]))
            .collect();
        let cur = run("9", vec![sc("a", Outcome::Passed, 400)]);
        assert!(detect(&cur, &past, &cfg()).is_empty());
        // Too few samples: no verdict.
        let cur = run("9", vec![sc("a", Outcome::Passed, 100_000)]);
        assert!(detect(&cur, &past[..2], &cfg()).is_empty());
    }

    #[test]
    fn window_uses_only_the_latest_runs() {
        let mut past: Vec<_> = (0..5)
            .map(|i| run(&format!("0{i}"), vec![sc("a", Outcome::Passed, 100_000)]))
            .collect();
        past.extend((0..5).map(|i| run(&format!("1{i}"), vec![sc("a", Outcome::Passed, 10_000)])));
        let cur = run("9", vec![sc("a", Outcome::Passed, 20_000)]);
        assert_eq!(detect(&cur, &past, &cfg()).len(), 1);
    }

    #[test]
    fn run_ids_are_utc_timestamps() {
        let t = UNIX_EPOCH + std::time::Duration::from_secs(1_795_314_600);
        assert_eq!(run_id(t), "20261122T023000Z");
        assert_eq!(run_id(UNIX_EPOCH), "19700101T000000Z");
        let leap = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(run_id(leap), "20000229T000000Z");
    }

    #[test]
    fn load_reads_runs_in_order_and_warns_on_junk() {
        let d = tempfile::tempdir().unwrap();
        for id in ["20260102T000000Z", "20260101T000000Z"] {
            let p = d.path().join(id);
            std::fs::create_dir(&p).unwrap();
            std::fs::write(
                p.join("results.json"),
                serde_json::to_string(&run(id, vec![])).unwrap(),
            )
            .unwrap();
        }
        let bad = d.path().join("20260103T000000Z");
        std::fs::create_dir(&bad).unwrap();
        std::fs::write(bad.join("results.json"), "{").unwrap();
        let (runs, warn) = load(d.path());
        assert_eq!(
            runs.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
            ["20260101T000000Z", "20260102T000000Z"]
        );
        assert_eq!(warn.len(), 1);
        assert!(load(&d.path().join("missing")).0.is_empty());
    }
}
