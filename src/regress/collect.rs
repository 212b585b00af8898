//! `vfioctl regress collect DIR...`: merge the results of several nodes (or runs) into
//! one, so one report shows the whole fleet. Each scenario keeps its node (from the
//! run's `--node`, else the run's host name), so `node/scenario` stays unique and
//! comparable across nights.

use std::path::{Path, PathBuf};

use super::history::{self, HistoryError};
use super::results::{Regression, RunResults, SCHEMA};

/// Find the results in `dir`: `dir/results.json`, or the latest run of a history
/// directory (`dir/<run-id>/results.json`), or `dir/latest/results.json`.
pub fn find_results(dir: &Path) -> Result<PathBuf, HistoryError> {
    let direct = dir.join("results.json");
    if direct.is_file() {
        return Ok(direct);
    }
    let latest = dir.join("latest").join("results.json");
    if latest.is_file() {
        return Ok(latest);
    }
    let mut runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| HistoryError::Read {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path().join("results.json"))
        .filter(|p| p.is_file())
        .collect();
    runs.sort();
    runs.pop().ok_or_else(|| HistoryError::Read {
        path: direct,
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no results.json here, in latest/ or in any run directory",
        ),
    })
}

/// Merge runs: scenarios tagged with their node, regressions carried over (named
/// `node/scenario`), the newest run id, the longest wall time. Two runs of one node (a
/// retried Job, a history directory next to its `latest/`) do not duplicate test cases:
/// per `node/scenario` the newest run's result is kept.
pub fn merge(mut runs: Vec<RunResults>) -> RunResults {
    runs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    let mut plans: Vec<String> = runs.iter().map(|r| r.plan.clone()).collect();
    plans.sort();
    plans.dedup();
    let mut out = RunResults {
        schema: SCHEMA,
        run_id: runs
            .iter()
            .map(|r| r.run_id.clone())
            .max()
            .unwrap_or_default(),
        plan: plans.join("+"),
        host: "fleet".into(),
        jobs: runs.iter().map(|r| r.jobs).sum(),
        vfioctl: runs.first().map(|r| r.vfioctl.clone()).unwrap_or_default(),
        wall_ms: runs.iter().map(|r| r.wall_ms).max().unwrap_or(0),
        scenarios: Vec::new(),
        regressions: Vec::new(),
        merged: Vec::new(),
    };
    for r in runs {
        out.merged.push(format!("{}@{}", r.run_id, r.host));
        let host = r.host.clone();
        for mut s in r.scenarios {
            if s.node.is_none() {
                s.node = Some(host.clone());
            }
            out.scenarios.push(s);
        }
        for mut g in r.regressions {
            let prefix = |name: &mut String| {
                if !name.contains('/') {
                    *name = format!("{host}/{name}");
                }
            };
            match &mut g {
                Regression::Outcome { scenario, .. } | Regression::Slower { scenario, .. } => {
                    prefix(scenario)
                }
            }
            out.regressions.push(g);
        }
    }
    // Newest last after the sort above: keep the last result of each key.
    let mut newest = std::collections::BTreeMap::new();
    for s in std::mem::take(&mut out.scenarios) {
        newest.insert(s.key(), s);
    }
    out.scenarios = newest.into_values().collect();
    let mut seen = Vec::new();
    out.regressions.reverse();
    out.regressions.retain(|g| {
        let fresh = !seen.contains(g);
        if fresh {
            seen.push(g.clone());
        }
        fresh
    });
    out.regressions.reverse();
    out
}

/// Read and merge the results found in each directory.
pub fn collect(dirs: &[PathBuf]) -> Result<RunResults, HistoryError> {
    let runs = dirs
        .iter()
        .map(|d| find_results(d).and_then(|p| history::read_results(&p)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(merge(runs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regress::results::Outcome;
    use crate::regress::testdata::lab_run;

    #[test]
    fn merge_tags_nodes_and_keeps_everything() {
        let mut a = lab_run("20261122T020000Z", 4000);
        a.host = "gpu-a".into();
        let mut b = lab_run("20261122T020500Z", 4100);
        b.host = "gpu-b".into();
        b.scenarios[0].outcome = Outcome::Failed;
        b.regressions.push(Regression::Outcome {
            scenario: "standin-8g-hot".into(),
            previous_run: "x".into(),
            was: Outcome::Passed,
            now: Outcome::Failed,
            step: None,
        });
        let m = merge(vec![a, b]);
        assert_eq!(m.scenarios.len(), 4);
        assert_eq!(m.run_id, "20261122T020500Z");
        assert_eq!(
            m.scenario("gpu-b/standin-8g-hot").unwrap().outcome,
            Outcome::Failed
        );
        assert_eq!(m.regressions[0].scenario(), "gpu-b/standin-8g-hot");
        assert_eq!(
            m.merged,
            ["20261122T020000Z@gpu-a", "20261122T020500Z@gpu-b"]
        );
        assert_eq!(m.exit(), crate::Exit::Regression);
    }

    #[test]
    fn two_runs_of_one_node_keep_the_newest_result_once() {
        let mut old = lab_run("20261122T020000Z", 4000);
        old.host = "gpu-a".into();
        old.scenarios[0].outcome = Outcome::Failed;
        let mut new = lab_run("20261123T020000Z", 4000);
        new.host = "gpu-a".into();
        // Given newest first: the order of the directories must not matter.
        let m = merge(vec![new.clone(), old]);
        assert_eq!(m.scenarios.len(), new.scenarios.len());
        assert_eq!(
            m.scenario("gpu-a/standin-8g-hot").unwrap().outcome,
            Outcome::Passed
        );
        let junit = crate::regress::junit::render(&m);
        assert_eq!(
            junit.matches("<testcase name=\"standin-8g-hot\"").count(),
            1,
            "{junit}"
        );
    }

    #[test]
    fn finds_results_in_out_latest_or_history_dirs() {
        let d = tempfile::tempdir().unwrap();
        let j = serde_json::to_string(&lab_run("1", 1)).unwrap();
        for sub in ["h/20260101T000000Z", "h/20260102T000000Z", "o/latest"] {
            std::fs::create_dir_all(d.path().join(sub)).unwrap();
            std::fs::write(d.path().join(sub).join("results.json"), &j).unwrap();
        }
        assert!(find_results(&d.path().join("h"))
            .unwrap()
            .ends_with("20260102T000000Z/results.json"));
        assert!(find_results(&d.path().join("o"))
            .unwrap()
            .ends_with("latest/results.json"));
        assert!(find_results(d.path()).is_err());
    }
}
