//! JUnit XML, the format CI systems (GitLab, Jenkins, GitHub test reporters) render.
//!
//! One `<testsuite>` per run (per node after `collect`), one `<testcase>` per scenario:
//! a scenario not as expected is a `<failure>` (an infrastructure error an `<error>`, a
//! skip a `<skipped>`), with the failing step's message and log excerpts in the body;
//! step timings go to `<system-out>` and to `<properties>`.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::results::{fmt_ms, Outcome, RunResults, ScenarioResult, StepStatus};

/// Escape text for XML attributes and bodies: the shared escaper, which writes the
/// characters XML 1.0 forbids visibly (`\x1b`) instead of dropping them.
pub fn esc(s: &str) -> String {
    vfioctl_common::text::xml(s)
}

fn secs(ms: u64) -> String {
    format!("{:.3}", ms as f64 / 1000.0)
}

fn steps_text(s: &ScenarioResult) -> String {
    let mut t = String::new();
    for st in &s.steps {
        let _ = writeln!(
            t,
            "{:<9} {:<6} {:>10}{}",
            st.step.name(),
            match st.status {
                StepStatus::Ok => "ok",
                StepStatus::Failed => "FAILED",
            },
            fmt_ms(st.ms),
            if st.cleanup { "  (cleanup)" } else { "" }
        );
    }
    t
}

fn failure_body(s: &ScenarioResult) -> String {
    let mut t = format!("{}\n", s.summary);
    if let Some(f) = s.first_failure().and_then(|f| f.failure.as_ref()) {
        if let Some(h) = &f.hint {
            let _ = writeln!(t, "hint: {h}");
        }
        for l in &f.logs {
            let _ = writeln!(t, "\n--- {} ---\n{}", l.source, l.text);
        }
    }
    t
}

/// Render a run as JUnit XML.
pub fn render(r: &RunResults) -> String {
    let mut by_node: BTreeMap<Option<&str>, Vec<&ScenarioResult>> = BTreeMap::new();
    for s in &r.scenarios {
        by_node.entry(s.node.as_deref()).or_default().push(s);
    }
    let c = r.counts();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"vfioctl regress {}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">",
        esc(&r.plan),
        c.total,
        c.failed + c.unexpected_passes,
        c.errors,
        c.skipped,
        secs(r.wall_ms)
    );
    for (node, scs) in by_node {
        let host = node.unwrap_or(&r.host);
        let count = |o: &[Outcome]| scs.iter().filter(|s| o.contains(&s.outcome)).count();
        let _ = writeln!(
            x,
            "  <testsuite name=\"{}\" hostname=\"{}\" timestamp=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\">",
            esc(&format!("{}@{host}", r.plan)),
            esc(host),
            esc(&r.run_id),
            scs.len(),
            count(&[Outcome::Failed, Outcome::UnexpectedPass]),
            count(&[Outcome::Error]),
            count(&[Outcome::Skipped]),
            secs(scs.iter().map(|s| s.wall_ms).max().unwrap_or(0))
        );
        let _ = writeln!(x, "    <properties>");
        let _ = writeln!(
            x,
            "      <property name=\"run_id\" value=\"{}\"/>",
            esc(&r.run_id)
        );
        let _ = writeln!(
            x,
            "      <property name=\"vfioctl\" value=\"{}\"/>",
            esc(&r.vfioctl)
        );
        let _ = writeln!(x, "      <property name=\"jobs\" value=\"{}\"/>", r.jobs);
        let _ = writeln!(x, "    </properties>");
        for s in scs {
            let _ = writeln!(
                x,
                "    <testcase name=\"{}\" classname=\"vfioctl.regress.{}\" time=\"{}\">",
                esc(&s.name),
                esc(&r.plan),
                secs(s.wall_ms)
            );
            let _ = writeln!(x, "      <properties>");
            let _ = writeln!(
                x,
                "        <property name=\"outcome\" value=\"{}\"/>",
                s.outcome.label()
            );
            let _ = writeln!(
                x,
                "        <property name=\"expect\" value=\"{}\"/>",
                esc(&s.expect.outcome)
            );
            for st in s.steps.iter().filter(|s| !s.cleanup) {
                let _ = writeln!(
                    x,
                    "        <property name=\"step.{}.ms\" value=\"{}\"/>",
                    st.step.name(),
                    st.ms
                );
            }
            let _ = writeln!(x, "      </properties>");
            let step = s.failed_step.map(|s| s.name()).unwrap_or("-");
            match s.outcome {
                Outcome::Failed | Outcome::UnexpectedPass => {
                    let _ = writeln!(
                        x,
                        "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                        esc(&s.summary),
                        step,
                        esc(&failure_body(s))
                    );
                }
                Outcome::Error => {
                    let _ = writeln!(
                        x,
                        "      <error message=\"{}\" type=\"{}\">{}</error>",
                        esc(&s.summary),
                        step,
                        esc(&failure_body(s))
                    );
                }
                Outcome::Skipped => {
                    let _ = writeln!(x, "      <skipped message=\"{}\"/>", esc(&s.summary));
                }
                Outcome::Passed | Outcome::ExpectedFailure => {}
            }
            let _ = writeln!(
                x,
                "      <system-out>{}\n{}</system-out>",
                esc(&s.summary),
                esc(&steps_text(s))
            );
            let _ = writeln!(x, "    </testcase>");
        }
        let _ = writeln!(x, "  </testsuite>");
    }
    x.push_str("</testsuites>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup_and_control_characters() {
        assert_eq!(
            esc("a<b>&\"c'\u{1b}[0m\n"),
            "a&lt;b&gt;&amp;&quot;c&apos;\\x1b[0m\n"
        );
    }
}

#[cfg(test)]
mod snapshot {
    use crate::regress::results::{Outcome, StepFailure, StepStatus};
    use crate::regress::testdata::lab_run;

    #[test]
    fn junit_of_a_lab_run() {
        let mut r = lab_run("20261122T020000Z", 4000);
        // Make the hot-plug scenario a real failure to show <failure>.
        let s = &mut r.scenarios[0];
        s.outcome = Outcome::Failed;
        s.summary = "plug failed: device_add: Bus 'rp1' not found".into();
        s.failed_step = Some(crate::regress::Step::Plug);
        s.steps[2].status = StepStatus::Failed;
        s.steps[2].failure = Some(StepFailure::new(
            crate::Exit::OperationFailed,
            "device_add: Bus 'rp1' not found",
        ));
        insta::assert_snapshot!(super::render(&r));
    }
}
