//! JUnit XML, the format CI systems (GitLab, Jenkins, GitHub test reporters) render: one
//! writer for every JUnit file vfioctl produces (`regress`'s `junit.xml` and
//! `validate --junit`).
//!
//! The output follows the Jenkins JUnit schema (`junit-10.xsd`, kept with its origin in
//! `tests/data/junit/`; `tests/junit_schema.rs` validates every file the tests produce
//! with `xmllint --schema` and reads it back with a second parser):
//! - `<testsuites>` carries `name`, `tests`, `failures`, `errors`, `time` (no `skipped`:
//!   the schema does not allow it there);
//! - `<properties>` appear on `<testsuite>` only, never inside `<testcase>`;
//! - `timestamp` is an `xs:dateTime` without a zone (`2026-12-03T06:26:21`, UTC), the
//!   form Ant writes and the stricter Ant-derived schemas require;
//! - every `<testcase>` has a `time` in seconds;
//! - attribute values keep their line breaks (`&#10;`): a parser would otherwise
//!   normalize a multi-line failure message to one line.
//!
//! Build a [`Report`] from plain data and call [`Report::to_xml`]; [`render`] maps a
//! regression run onto it.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::results::{fmt_ms, Outcome, RunResults, ScenarioResult, StepStatus};

/// A whole JUnit document: `<testsuites>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The `name` attribute of `<testsuites>`.
    pub name: String,
    /// The `<testsuite>` elements.
    pub suites: Vec<Suite>,
}

/// One `<testsuite>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Suite {
    /// The suite's `name` attribute.
    pub name: String,
    /// The `hostname` attribute: the machine it ran on.
    pub hostname: Option<String>,
    /// `xs:dateTime` without a zone, UTC (see [`timestamp_of_run_id`]).
    pub timestamp: Option<String>,
    /// Wall time of the suite; `None` sums the cases.
    pub time_ms: Option<u64>,
    /// `<property>` name/value pairs.
    pub properties: Vec<(String, String)>,
    /// The `<testcase>` elements.
    pub cases: Vec<Case>,
}

/// One `<testcase>`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Case {
    /// The case's `name` attribute.
    pub name: String,
    /// The `classname` attribute (dotted, e.g. `vfioctl.regress.<plan>`).
    pub classname: String,
    /// The case's wall time, in milliseconds (written as seconds in `time`).
    pub time_ms: u64,
    /// Passed, failed, error or skipped.
    pub status: Status,
    /// `<system-out>` text (the case's own log).
    pub system_out: Option<String>,
    /// `<system-err>` text.
    pub system_err: Option<String>,
}

/// What a test case came to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Status {
    /// No failure, error or skip element.
    #[default]
    Passed,
    /// A real failure: `message` (may span lines), `kind` (the `type` attribute), and a
    /// body with the evidence.
    Failure {
        /// The `message` attribute.
        message: String,
        /// The `type` attribute.
        kind: String,
        /// The element's body: the evidence.
        body: String,
    },
    /// Could not be judged (infrastructure).
    Error {
        /// The `message` attribute.
        message: String,
        /// The `type` attribute.
        kind: String,
        /// The element's body: the evidence.
        body: String,
    },
    /// `<skipped>`: not run.
    Skipped {
        /// Why, as the `message` attribute.
        message: String,
    },
}

impl Suite {
    fn count(&self, f: impl Fn(&Status) -> bool) -> usize {
        self.cases.iter().filter(|c| f(&c.status)).count()
    }
    /// Cases that failed.
    pub fn failures(&self) -> usize {
        self.count(|s| matches!(s, Status::Failure { .. }))
    }
    /// Cases with an error.
    pub fn errors(&self) -> usize {
        self.count(|s| matches!(s, Status::Error { .. }))
    }
    /// Skipped cases.
    pub fn skipped(&self) -> usize {
        self.count(|s| matches!(s, Status::Skipped { .. }))
    }
    /// The suite's wall time in milliseconds: `time_ms`, else the cases' sum.
    pub fn time_ms(&self) -> u64 {
        self.time_ms
            .unwrap_or_else(|| self.cases.iter().map(|c| c.time_ms).sum())
    }
}

/// Escape text for an XML body: the shared escaper (`vfioctl_common::text::xml`), which
/// writes the characters XML 1.0 cannot carry at all (control characters other than tab and
/// line breaks, U+FFFE, U+FFFF) visibly as `\x1b`, so guest text with terminal escapes stays
/// well-formed and still shows what the guest sent.
pub fn esc(s: &str) -> String {
    vfioctl_common::text::xml(s)
}

/// Escape text for an XML attribute value: as [`esc`], and line breaks and tabs as
/// character references, which attribute-value normalization leaves alone.
pub fn esc_attr(s: &str) -> String {
    vfioctl_common::text::xml_attr(s)
}

/// Seconds with millisecond precision, as the schema's `SUREFIRE_TIME` allows.
fn secs(ms: u64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// `20261203T062621Z` (a run id) -> `2026-12-03T06:26:21`; `None` when it is not one.
pub fn timestamp_of_run_id(run_id: &str) -> Option<String> {
    let b = run_id.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' || !digits(0..8) || !digits(9..15) {
        return None;
    }
    let s = |r: std::ops::Range<usize>| &run_id[r];
    Some(format!(
        "{}-{}-{}T{}:{}:{}",
        s(0..4),
        s(4..6),
        s(6..8),
        s(9..11),
        s(11..13),
        s(13..15)
    ))
}

impl Report {
    /// The document, UTF-8, with an XML declaration.
    pub fn to_xml(&self) -> String {
        let all = |f: fn(&Suite) -> usize| self.suites.iter().map(f).sum::<usize>();
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            x,
            "<testsuites name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" time=\"{}\">",
            esc_attr(&self.name),
            all(|s| s.cases.len()),
            all(Suite::failures),
            all(Suite::errors),
            secs(self.suites.iter().map(Suite::time_ms).max().unwrap_or(0)),
        );
        for s in &self.suites {
            let _ = write!(
                x,
                "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" errors=\"{}\" skipped=\"{}\" time=\"{}\"",
                esc_attr(&s.name),
                s.cases.len(),
                s.failures(),
                s.errors(),
                s.skipped(),
                secs(s.time_ms()),
            );
            if let Some(h) = &s.hostname {
                let _ = write!(x, " hostname=\"{}\"", esc_attr(h));
            }
            if let Some(t) = &s.timestamp {
                let _ = write!(x, " timestamp=\"{}\"", esc_attr(t));
            }
            x.push_str(">\n");
            if !s.properties.is_empty() {
                x.push_str("    <properties>\n");
                for (k, v) in &s.properties {
                    let _ = writeln!(
                        x,
                        "      <property name=\"{}\" value=\"{}\"/>",
                        esc_attr(k),
                        esc_attr(v)
                    );
                }
                x.push_str("    </properties>\n");
            }
            for c in &s.cases {
                write_case(&mut x, c);
            }
            x.push_str("  </testsuite>\n");
        }
        x.push_str("</testsuites>\n");
        x
    }
}

fn write_case(x: &mut String, c: &Case) {
    let _ = write!(
        x,
        "    <testcase name=\"{}\" classname=\"{}\" time=\"{}\"",
        esc_attr(&c.name),
        esc_attr(&c.classname),
        secs(c.time_ms)
    );
    if c.status == Status::Passed && c.system_out.is_none() && c.system_err.is_none() {
        x.push_str("/>\n");
        return;
    }
    x.push_str(">\n");
    match &c.status {
        Status::Passed => {}
        Status::Failure {
            message,
            kind,
            body,
        } => {
            let _ = writeln!(
                x,
                "      <failure message=\"{}\" type=\"{}\">{}</failure>",
                esc_attr(message),
                esc_attr(kind),
                esc(body)
            );
        }
        Status::Error {
            message,
            kind,
            body,
        } => {
            let _ = writeln!(
                x,
                "      <error message=\"{}\" type=\"{}\">{}</error>",
                esc_attr(message),
                esc_attr(kind),
                esc(body)
            );
        }
        Status::Skipped { message } => {
            let _ = writeln!(x, "      <skipped message=\"{}\"/>", esc_attr(message));
        }
    }
    if let Some(o) = &c.system_out {
        let _ = writeln!(x, "      <system-out>{}</system-out>", esc(o));
    }
    if let Some(e) = &c.system_err {
        let _ = writeln!(x, "      <system-err>{}</system-err>", esc(e));
    }
    x.push_str("    </testcase>\n");
}

fn steps_text(s: &ScenarioResult) -> String {
    let mut t = format!(
        "outcome: {}\nexpect: {}\n",
        s.outcome.label(),
        s.expect.outcome
    );
    for st in &s.steps {
        let _ = writeln!(
            t,
            "{:<9} {:<6} {:>10}{}{}",
            st.step.name(),
            match st.status {
                StepStatus::Ok => "ok",
                StepStatus::Failed => "FAILED",
            },
            fmt_ms(st.ms),
            if st.cleanup { "  (cleanup)" } else { "" },
            st.note
                .as_deref()
                .map(|n| format!("  {n}"))
                .unwrap_or_default()
        );
    }
    t
}

/// The failure's evidence: the hint and each log excerpt once (the summary is the
/// `message` attribute).
fn failure_body(s: &ScenarioResult) -> String {
    let mut t = String::new();
    if let Some(f) = s.first_failure().and_then(|f| f.failure.as_ref()) {
        let _ = writeln!(t, "{}", f.message);
        if let Some(h) = &f.hint {
            let _ = writeln!(t, "hint: {h}");
        }
        for l in &f.logs {
            let _ = writeln!(t, "\n--- {} ---\n{}", l.source, l.text);
        }
    }
    t
}

/// The JUnit document of a regression run: one `<testsuite>` per node (one for a local
/// run), one `<testcase>` per scenario; a scenario not as expected is a `<failure>`, an
/// infrastructure error an `<error>`, a skip `<skipped>`. Step times go to `<system-out>`.
pub fn report(r: &RunResults) -> Report {
    let mut by_node: BTreeMap<Option<&str>, Vec<&ScenarioResult>> = BTreeMap::new();
    for s in &r.scenarios {
        by_node.entry(s.node.as_deref()).or_default().push(s);
    }
    let timestamp = timestamp_of_run_id(&r.run_id);
    let suites = by_node
        .into_iter()
        .map(|(node, scs)| {
            let host = node.unwrap_or(&r.host);
            Suite {
                name: format!("{}@{host}", r.plan),
                hostname: Some(host.to_string()),
                timestamp: timestamp.clone(),
                time_ms: Some(
                    scs.iter()
                        .map(|s| s.start_ms + s.wall_ms)
                        .max()
                        .unwrap_or(0),
                ),
                properties: vec![
                    ("run_id".into(), r.run_id.clone()),
                    ("vfioctl".into(), r.vfioctl.clone()),
                    ("jobs".into(), r.jobs.to_string()),
                ],
                cases: scs.iter().map(|s| case(r, s)).collect(),
            }
        })
        .collect();
    Report {
        name: format!("vfioctl regress {}", r.plan),
        suites,
    }
}

fn case(r: &RunResults, s: &ScenarioResult) -> Case {
    let kind = s
        .failed_step
        .map(|s| s.name().to_string())
        .unwrap_or_else(|| "outcome".into());
    let status = match s.outcome {
        Outcome::Failed | Outcome::UnexpectedPass => Status::Failure {
            message: s.summary.clone(),
            kind,
            body: failure_body(s),
        },
        Outcome::Error => Status::Error {
            message: s.summary.clone(),
            kind,
            body: failure_body(s),
        },
        Outcome::Skipped => Status::Skipped {
            message: s.summary.clone(),
        },
        Outcome::Passed | Outcome::ExpectedFailure => Status::Passed,
    };
    Case {
        name: s.name.clone(),
        classname: format!("vfioctl.regress.{}", r.plan),
        time_ms: s.wall_ms,
        status,
        system_out: Some(format!("{}\n{}", s.summary, steps_text(s))),
        system_err: None,
    }
}

/// Render a run as JUnit XML.
pub fn render(r: &RunResults) -> String {
    report(r).to_xml()
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
        assert_eq!(
            esc_attr("one\ntwo\tthree\u{1}"),
            "one&#10;two&#9;three\\x01"
        );
    }

    #[test]
    fn run_ids_become_xs_datetimes() {
        assert_eq!(
            timestamp_of_run_id("20261203T062621Z").as_deref(),
            Some("2026-12-03T06:26:21")
        );
        assert_eq!(timestamp_of_run_id("collected"), None);
        assert_eq!(timestamp_of_run_id("2026120xT062621Z"), None);
    }

    #[test]
    fn counts_and_times_add_up() {
        let r = Report {
            name: "t".into(),
            suites: vec![Suite {
                name: "s".into(),
                cases: vec![
                    Case {
                        name: "a".into(),
                        time_ms: 1500,
                        ..Case::default()
                    },
                    Case {
                        name: "b".into(),
                        time_ms: 25,
                        status: Status::Failure {
                            message: "line one\nline two".into(),
                            kind: "x".into(),
                            body: String::new(),
                        },
                        ..Case::default()
                    },
                ],
                ..Suite::default()
            }],
        };
        let x = r.to_xml();
        assert!(
            x.contains(
                "<testsuites name=\"t\" tests=\"2\" failures=\"1\" errors=\"0\" time=\"1.525\">"
            ),
            "{x}"
        );
        assert!(x.contains("time=\"0.025\""), "{x}");
        assert!(x.contains("message=\"line one&#10;line two\""), "{x}");
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
