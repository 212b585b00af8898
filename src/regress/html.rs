//! The static HTML report: one self-contained file (inline CSS and SVG, no scripts, no
//! network), meant to be looked at rather than read.
//!
//! Top to bottom: the verdict with its exit code; regressions; the pass/fail matrix
//! (scenario x step, each cell its time, coloured by result, cleanup runs marked); a
//! timeline of the run (when each scenario ran and its steps, which shows what `--jobs`
//! bought); every scenario that failed (as expected or not) with its failing step and
//! the log excerpts (serial log, guest dmesg, QMP error); and trend charts of boot,
//! plug and validate times across the last runs from the history directory.

use std::fmt::Write;

use super::history::series;
use super::junit::esc;
use super::results::{fmt_ms, Outcome, RunResults, ScenarioResult, StepStatus};
use super::step::Step;
use crate::Exit;

const CSS: &str = r#"
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{padding:18px 28px;color:#fff}
header.ok{background:#1f7a45}header.regression{background:#b3261e}header.infra{background:#8a5a00}
header h1{margin:0;font-size:22px}header p{margin:4px 0 0;opacity:.92}
main{padding:8px 28px 40px;max-width:1400px}
h2{font-size:17px;margin:28px 0 10px}
.counts span{display:inline-block;margin:0 14px 0 0}
table{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}
th,td{padding:6px 10px;border:1px solid #e3e6ea;text-align:left;white-space:nowrap}
th{background:#eef0f3;font-weight:600}
td.ok{background:#e5f5ea}td.fail{background:#fbe0de;font-weight:600}td.cleanup{background:#fff3d6}
td.skip{color:#98a0ab}td.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{padding:2px 8px;border-radius:10px;font-size:12px;font-weight:600;color:#fff}
.b-passed,.b-failed-as-expected{background:#1f7a45}.b-FAILED,.b-UNEXPECTED-PASS{background:#b3261e}
.b-ERROR{background:#8a5a00}.b-skipped{background:#7b8491}
.regressions{background:#fbe0de;border-left:5px solid #b3261e;padding:10px 16px}
details{background:#fff;margin:10px 0;padding:8px 14px;box-shadow:0 1px 2px #0002}
summary{cursor:pointer;font-weight:600}
pre{background:#14171c;color:#e6e6e6;padding:10px;overflow:auto;max-height:360px;font-size:12px}
.hint{color:#5b4300}
.charts{display:flex;flex-wrap:wrap;gap:14px}
.chart{background:#fff;box-shadow:0 1px 2px #0002;padding:8px}
.muted{color:#6b7380}
.desc{color:#4a5260;font-size:12px;white-space:normal;max-width:420px}
.chart-title{font-weight:600;margin:0 0 4px}
.wide{overflow-x:auto;padding-bottom:2px}
"#;

/// Colours of the trend series and the timeline segments, per step.
fn step_colour(step: Step) -> &'static str {
    match step {
        Step::Check => "#9aa5b1",
        Step::Bind => "#7e57c2",
        Step::VmUp => "#1e66d0",
        Step::Plug => "#e07b00",
        Step::Validate => "#1f9d55",
        Step::Unplug => "#c2185b",
        Step::VmDown => "#607d8b",
        Step::Restore => "#5d4037",
    }
}

const TREND_STEPS: [Step; 3] = [Step::VmUp, Step::Plug, Step::Validate];

fn verdict(exit: Exit) -> (&'static str, &'static str) {
    match exit {
        Exit::Ok => ("ok", "all scenarios as expected"),
        Exit::Regression => ("regression", "regression: not as expected"),
        _ => ("infra", "infrastructure error"),
    }
}

fn badge(o: Outcome) -> String {
    format!(
        "<span class=\"badge b-{}\">{}</span>",
        o.label().replace(' ', "-"),
        o.label()
    )
}

fn matrix(x: &mut String, r: &RunResults) {
    x.push_str(
        "<div class=\"wide\"><table><tr><th>scenario</th><th>devices</th><th>plug</th><th>expect</th><th>outcome</th>",
    );
    for s in Step::ALL {
        let _ = write!(x, "<th>{}</th>", s.name());
    }
    x.push_str("<th>total</th><th>stack</th></tr>\n");
    for s in &r.scenarios {
        let _ = write!(
            x,
            "<tr><td><a href=\"#s-{id}\">{name}</a>{desc}</td><td>{dev}</td><td>{plug}</td><td>{exp}</td><td>{b}</td>",
            id = esc(&s.key()),
            name = esc(&s.key()),
            desc = s
                .description
                .as_deref()
                .map(|d| format!("<div class=\"desc\">{}</div>", esc(d)))
                .unwrap_or_default(),
            dev = esc(&s.devices.join(", ")),
            plug = match s.plug {
                super::plan::PlugMode::Hot => "hot",
                super::plan::PlugMode::Cold => "cold",
            },
            exp = esc(&match (&s.expect.step, &s.expect.outcome[..]) {
                (Some(st), "fail") => format!("fail at {st}"),
                (_, o) => o.to_string(),
            }),
            b = badge(s.outcome)
        );
        for step in Step::ALL {
            let runs: Vec<_> = s.steps.iter().filter(|x| x.step == step).collect();
            match runs.last() {
                None => x.push_str("<td class=\"skip\">–</td>"),
                Some(st) => {
                    let class = match (&st.status, st.cleanup) {
                        (StepStatus::Failed, _) => "fail",
                        (StepStatus::Ok, true) => "cleanup",
                        (StepStatus::Ok, false) => "ok",
                    };
                    let title = st
                        .failure
                        .as_ref()
                        .map(|f| headline(&f.message).0.to_string())
                        .or_else(|| st.note.clone())
                        .unwrap_or_default();
                    let _ = write!(
                        x,
                        "<td class=\"{class} num\" title=\"{}\">{}{}</td>",
                        esc(&title),
                        fmt_ms(st.ms),
                        if st.cleanup { " ⟲" } else { "" }
                    );
                }
            }
        }
        let _ = writeln!(
            x,
            "<td class=\"num\">{}</td><td class=\"muted\">{}</td></tr>",
            fmt_ms(s.wall_ms),
            esc(&stack_line(s))
        );
    }
    x.push_str("</table></div>\n<p class=\"muted\">⟲ ran as cleanup after a failure; hover a cell for the step's note or error.</p>\n");
}

fn timeline(x: &mut String, r: &RunResults) {
    let total = r
        .scenarios
        .iter()
        .map(|s| s.start_ms + s.wall_ms)
        .max()
        .unwrap_or(0)
        .max(1);
    let (w, row, left) = (900.0, 22.0, 200.0);
    let h = row * r.scenarios.len() as f64 + 30.0;
    let scale = (w - left - 20.0) / total as f64;
    let _ = writeln!(
        x,
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"run timeline\" style=\"background:#fff\">"
    );
    for (i, s) in r.scenarios.iter().enumerate() {
        let y = 8.0 + row * i as f64;
        let _ = writeln!(
            x,
            "<text x=\"6\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 13.0,
            esc(&s.key())
        );
        let mut t = s.start_ms;
        for st in &s.steps {
            let bx = left + t as f64 * scale;
            let bw = (st.ms as f64 * scale).max(1.0);
            let stroke = if st.status == StepStatus::Failed {
                " stroke=\"#b3261e\" stroke-width=\"2\""
            } else {
                ""
            };
            let _ = writeln!(
                x,
                "<rect x=\"{bx:.1}\" y=\"{y}\" width=\"{bw:.1}\" height=\"{}\" fill=\"{}\"{stroke}><title>{}: {} {}</title></rect>",
                row - 6.0,
                step_colour(st.step),
                esc(&s.key()),
                st.step.name(),
                fmt_ms(st.ms)
            );
            t += st.ms;
        }
    }
    let axis_y = h - 8.0;
    let _ = writeln!(
        x,
        "<text x=\"{left}\" y=\"{axis_y}\" font-size=\"11\" fill=\"#6b7380\">0</text><text x=\"{}\" y=\"{axis_y}\" font-size=\"11\" fill=\"#6b7380\" text-anchor=\"end\">{}</text>",
        w - 20.0,
        fmt_ms(total)
    );
    x.push_str("</svg>\n<p class=\"muted\">");
    for s in Step::ALL {
        let _ = write!(
            x,
            "<span style=\"color:{}\">■</span> {} &nbsp; ",
            step_colour(s),
            s.name()
        );
    }
    x.push_str("</p>\n");
}

/// `tcg · QEMU 7.2.19 · kernel 6.1.0-57-amd64 · seabios` (what is known).
fn stack_line(s: &ScenarioResult) -> String {
    let get = |k: &str| s.stack.get(k).map(String::as_str);
    [
        get("accelerator").map(str::to_string),
        get("qemu").map(|q| format!("QEMU {q}")),
        get("guest-kernel").map(|k| format!("kernel {k}")),
        get("firmware").map(str::to_string),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" · ")
}

/// One scenario: what it is, what it ran on, its logs, and (when a step failed) the
/// failing steps with their evidence, each distinct log text once.
fn scenario_details(x: &mut String, s: &ScenarioResult) {
    let open = if s.outcome.as_expected() { "" } else { " open" };
    let _ = writeln!(
        x,
        "<details id=\"s-{}\"{open}><summary>{} {}</summary>",
        esc(&s.key()),
        esc(&s.key()),
        badge(s.outcome)
    );
    if let Some(d) = &s.description {
        let _ = writeln!(x, "<p class=\"desc\">{}</p>", esc(d));
    }
    // A failure's message carries the guest's kernel log after its first line; the
    // failed step's blocks below show that text once, so the summary keeps its headline.
    let failed = s.steps.iter().any(|st| st.failure.is_some());
    let summary = if failed {
        headline(&s.summary).0
    } else {
        s.summary.as_str()
    };
    let _ = writeln!(x, "<p>{}</p>", esc(summary));
    if !s.stack.is_empty() {
        x.push_str("<p class=\"muted\">stack: ");
        for (k, v) in &s.stack {
            let _ = write!(x, "{}: <b>{}</b> &nbsp; ", esc(k), esc(v));
        }
        x.push_str("</p>\n");
    }
    if !s.logs.is_empty() {
        x.push_str("<p>logs: ");
        for l in &s.logs {
            let name = l.rsplit('/').next().unwrap_or(l);
            let _ = write!(x, "<a href=\"{}\">{}</a> &nbsp; ", esc(l), esc(name));
        }
        x.push_str("</p>\n");
    }
    let mut shown: Vec<&str> = Vec::new();
    for st in s.steps.iter().filter(|st| st.status == StepStatus::Failed) {
        let Some(f) = &st.failure else { continue };
        let (head, rest) = headline(&f.message);
        let _ = writeln!(
            x,
            "<p><b>{}{}</b> failed after {} (exit {}): {}</p>",
            st.step.name(),
            if st.cleanup { " (cleanup)" } else { "" },
            fmt_ms(st.ms),
            f.exit_code,
            esc(head)
        );
        if let Some(h) = &f.hint {
            let _ = writeln!(x, "<p class=\"hint\">hint: {}</p>", esc(h));
        }
        // The rest of a multi-line message, unless a log block below (or above) has it.
        if !rest.is_empty()
            && !f.logs.iter().any(|l| l.text.contains(rest))
            && !shown.iter().any(|t| t.contains(rest))
        {
            let _ = writeln!(x, "<p class=\"muted\">details</p><pre>{}</pre>", esc(rest));
            shown.push(rest);
        }
        for l in &f.logs {
            let title = match l.source.as_str() {
                "serial" => "serial log",
                "dmesg" => "guest dmesg",
                "qmp" => "QMP error",
                other => other,
            };
            // The same kernel log reaches a failure through the serial console, dmesg
            // and a cleanup step's failure: show it once.
            if shown.contains(&l.text.trim()) {
                let _ = writeln!(
                    x,
                    "<p class=\"muted\">{} (same text as above)</p>",
                    esc(title)
                );
                continue;
            }
            shown.push(l.text.trim());
            let _ = writeln!(
                x,
                "<p class=\"muted\">{}</p><pre>{}</pre>",
                esc(title),
                esc(&l.text)
            );
        }
    }
    x.push_str("</details>\n");
}

/// A message's first line and the rest (trimmed): multi-line failure messages carry the
/// guest's kernel log after their headline.
fn headline(m: &str) -> (&str, &str) {
    match m.split_once('\n') {
        Some((h, rest)) => (h.trim_end(), rest.trim()),
        None => (m.trim_end(), ""),
    }
}

/// Ticks for an axis from 0 to `max` ms: in ms below 2 s, else in seconds.
fn axis_label(ms: u64, max: u64) -> String {
    if max < 2000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// One scenario's trend charts over `runs` (oldest first): one small chart per step
/// (boot, plug, validate), each with its own axis and unit, so a 300 ms plug is not drawn
/// flat under a 40 s boot.
fn trend_chart(x: &mut String, runs: &[&RunResults], key: &str) {
    let data: Vec<(Step, Vec<Option<u64>>)> = TREND_STEPS
        .iter()
        .map(|s| (*s, series(runs, key, *s)))
        .filter(|(_, v)| v.iter().any(Option::is_some))
        .collect();
    let _ = writeln!(
        x,
        "<div class=\"chart\" aria-label=\"{k} step times\"><div class=\"chart-title\">{k}</div>",
        k = esc(key)
    );
    for (step, v) in &data {
        step_chart(x, runs, key, *step, v);
    }
    let _ = writeln!(
        x,
        "<div class=\"muted\">{}</div></div>",
        match runs.len() {
            1 => "1 run".to_string(),
            n => format!("{n} runs, latest right"),
        }
    );
}

fn step_chart(x: &mut String, runs: &[&RunResults], key: &str, step: Step, v: &[Option<u64>]) {
    let (w, h, pad_l, pad_b, pad_t) = (300.0, 120.0, 56.0, 18.0, 18.0);
    let max_ms = v.iter().flatten().copied().max().unwrap_or(0).max(1);
    // Round the axis up to a readable value.
    let nice = [1u64, 2, 5]
        .iter()
        .flat_map(|m| (0..8).map(move |e| m * 10u64.pow(e)))
        .filter(|c| *c >= max_ms)
        .min()
        .unwrap_or(max_ms);
    let max = nice as f64;
    let n = runs.len().max(2) as f64;
    let px = |i: usize| pad_l + (w - pad_l - 10.0) * i as f64 / (n - 1.0);
    let py = |ms: u64| pad_t + (h - pad_t - pad_b) * (1.0 - ms as f64 / max);
    let c = step_colour(step);
    let _ = writeln!(
        x,
        "<svg width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"{} {}\">",
        esc(key),
        step.name()
    );
    let _ = writeln!(
        x,
        "<text x=\"{pad_l}\" y=\"12\" font-size=\"11\" fill=\"{c}\" font-weight=\"600\">{}</text>",
        step.name()
    );
    let b = h - pad_b;
    let _ = writeln!(
        x,
        "<line x1=\"{pad_l}\" y1=\"{pad_t}\" x2=\"{pad_l}\" y2=\"{b}\" stroke=\"#c5cad1\"/><line x1=\"{pad_l}\" y1=\"{b}\" x2=\"{r}\" y2=\"{b}\" stroke=\"#c5cad1\"/>",
        r = w - 10.0
    );
    for tick in [0, nice / 2, nice] {
        let _ = writeln!(
            x,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#6b7380\">{}</text><line x1=\"{pad_l}\" y1=\"{y:.1}\" x2=\"{r}\" y2=\"{y:.1}\" stroke=\"#eef0f3\"/>",
            pad_l - 4.0,
            py(tick) + 3.0,
            axis_label(tick, nice),
            y = py(tick),
            r = w - 10.0
        );
    }
    for (i, r) in runs.iter().enumerate() {
        if let Some(s) = r.scenario(key) {
            if !s.outcome.as_expected() {
                let _ = writeln!(
                    x,
                    "<rect x=\"{:.1}\" y=\"{}\" width=\"6\" height=\"6\" fill=\"#b3261e\"><title>{}: {}</title></rect>",
                    px(i) - 3.0,
                    b + 4.0,
                    esc(&r.run_id),
                    esc(&s.summary)
                );
            }
        }
    }
    let mut seg: Vec<String> = Vec::new();
    let flush = |x: &mut String, seg: &mut Vec<String>| {
        if seg.len() > 1 {
            let _ = writeln!(
                x,
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
                seg.join(" ")
            );
        }
        seg.clear();
    };
    for (i, val) in v.iter().enumerate() {
        match val {
            Some(ms) => {
                seg.push(format!("{:.1},{:.1}", px(i), py(*ms)));
                let _ = writeln!(
                    x,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{c}\"><title>{} {}: {}</title></circle>",
                    px(i),
                    py(*ms),
                    esc(&runs[i].run_id),
                    step.name(),
                    fmt_ms(*ms)
                );
            }
            None => flush(x, &mut seg),
        }
    }
    flush(x, &mut seg);
    x.push_str("</svg>\n");
}

/// Render the report for `current`, with `past` runs (oldest first) for the trends.
pub fn render(current: &RunResults, past: &[RunResults], chart_runs: usize) -> String {
    let exit = current.exit();
    let (class, word) = verdict(exit);
    let c = current.counts();
    let mut x = String::new();
    let _ = writeln!(
        x,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>vfioctl regress {plan} {id}: {word}</title><style>{CSS}</style></head><body>",
        plan = esc(&current.plan),
        id = esc(&current.run_id)
    );
    let _ = writeln!(
        x,
        "<header class=\"{class}\"><h1>{plan}: {word} (exit {code})</h1><p>run {id} on {host} · {jobs} job(s) · wall {wall} · vfioctl {ver}{merged}</p></header><main>",
        plan = esc(&current.plan),
        code = exit.code(),
        id = esc(&current.run_id),
        host = esc(&current.host),
        jobs = current.jobs,
        wall = fmt_ms(current.wall_ms),
        ver = esc(&current.vfioctl),
        merged = if current.merged.is_empty() {
            String::new()
        } else {
            format!(" · merged from {}", esc(&current.merged.join(", ")))
        }
    );
    let _ = writeln!(
        x,
        "<p class=\"counts\"><span><b>{}</b> scenarios</span><span><b>{}</b> as expected</span><span>{} passed</span><span>{} failed as expected</span><span><b>{}</b> failed</span><span><b>{}</b> unexpected passes</span><span><b>{}</b> errors</span><span>{} skipped</span><span><b>{}</b> regressions</span></p>",
        c.total, c.as_expected, c.passed, c.expected_failures, c.failed, c.unexpected_passes, c.errors, c.skipped, c.regressions
    );
    if !current.regressions.is_empty() {
        x.push_str("<h2>Regressions</h2><div class=\"regressions\"><ul>");
        for r in &current.regressions {
            let _ = write!(x, "<li>{}</li>", esc(&r.describe()));
        }
        x.push_str("</ul></div>\n");
    }
    x.push_str("<h2>Matrix</h2>\n");
    matrix(&mut x, current);
    x.push_str("<h2>Timeline</h2>\n");
    timeline(&mut x, current);
    // Every scenario, so every link of the matrix lands somewhere; those not as
    // expected are open.
    x.push_str("<h2>Scenarios</h2>\n");
    for s in &current.scenarios {
        scenario_details(&mut x, s);
    }
    let start = past.len().saturating_sub(chart_runs.saturating_sub(1));
    let mut runs: Vec<&RunResults> = past[start..].iter().collect();
    runs.push(current);
    let _ = writeln!(
        x,
        "<h2>Trends</h2><p class=\"muted\">Boot (vm-up), plug and validate times of the last {} runs, one axis per step; a red mark under the axis is a run where the scenario was not as expected.</p><div class=\"charts\">",
        runs.len()
    );
    for s in &current.scenarios {
        trend_chart(&mut x, &runs, &s.key());
    }
    x.push_str("</div></main></body></html>\n");
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regress::history::detect;
    use crate::regress::plan::HistoryCfg;
    use crate::regress::results::{LogExcerpt, StepFailure};
    use crate::regress::testdata::{lab_history, lab_run};

    #[test]
    fn report_shows_verdict_matrix_failures_and_trends() {
        let past = lab_history();
        let mut cur = lab_run("20261122T020000Z", 9000);
        cur.regressions = detect(&cur, &past, &HistoryCfg::default());
        assert!(!cur.regressions.is_empty(), "the slow boot is a regression");
        let h = render(&cur, &past, 20);
        assert!(h.starts_with("<!DOCTYPE html>"));
        assert!(h.contains("lab: regression: not as expected (exit 5)"));
        assert!(h.contains("standin-8g-hot: vm-up took 9.0 s, median of last 5 runs 4.0 s"));
        // Matrix cells, cleanup marks, the negative control's evidence.
        assert!(h.contains("<td class=\"fail num\""));
        assert!(h.contains("⟲"));
        assert!(h.contains("failed as expected"));
        assert!(h.contains("guest dmesg"));
        assert!(h.contains("BAR 2: failed to assign"));
        // Log text is escaped, and nothing executable or remote is in the page.
        assert!(h.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(!h.contains("<script"));
        assert!(!h.contains("http://") && !h.contains("https://"));
        // One trend chart per scenario, six runs each (five past + current).
        assert_eq!(
            h.matches("aria-label=\"standin-8g-hot step times\"")
                .count(),
            1
        );
        assert!(h.contains("6 runs, latest right"));
        // One small chart per step, each with its own axis: the 310 ms plug is drawn on
        // a millisecond axis, not flat under the boot's seconds.
        assert_eq!(h.matches("<polyline").count(), 2 * 2 + 1, "{h}");
        assert!(h.contains(">500 ms</text>"), "plug axis in ms: {h}");
        assert!(h.contains(">10.0 s</text>"), "boot axis in s: {h}");
    }

    #[test]
    fn every_scenario_has_its_story_stack_and_logs_once() {
        let mut cur = lab_run("20261122T020000Z", 4000);
        let s = &mut cur.scenarios[0];
        s.description = Some("8 GiB BAR hot-plugged <into> a sized port".into());
        s.stack.insert("accelerator".into(), "tcg".into());
        s.stack.insert("qemu".into(), "7.2.19".into());
        s.stack
            .insert("guest-kernel".into(), "6.1.0-57-amd64".into());
        s.logs = vec![
            "scenarios/standin-8g-hot/serial.log".into(),
            "scenarios/standin-8g-hot/qemu.stderr".into(),
        ];
        // The negative control's kernel log, also reached by its cleanup step.
        let neg = &mut cur.scenarios[1];
        let mut again = neg
            .steps
            .iter()
            .find(|s| s.failure.is_some())
            .unwrap()
            .clone();
        again.cleanup = true;
        neg.steps.push(again);
        let h = render(&cur, &[], 20);
        assert!(h.contains("8 GiB BAR hot-plugged &lt;into&gt; a sized port"));
        assert!(h.contains("tcg · QEMU 7.2.19 · kernel 6.1.0-57-amd64"));
        assert!(!h.contains("Some("), "no Rust debug text");
        // The matrix links land on a details block, passed scenarios included.
        for s in &cur.scenarios {
            assert!(h.contains(&format!("href=\"#s-{}\"", s.key())));
            assert!(h.contains(&format!("id=\"s-{}\"", s.key())));
        }
        assert!(h.contains("<a href=\"scenarios/standin-8g-hot/serial.log\">serial.log</a>"));
        assert!(h.contains("<a href=\"scenarios/standin-8g-hot/qemu.stderr\">qemu.stderr</a>"));
        assert_eq!(
            h.matches("BAR 2: failed to assign").count(),
            1,
            "the kernel log once"
        );
        assert!(h.contains("(same text as above)"));
        // VFIOCTL_REPORT_SAMPLE=FILE keeps a sample (with trends) to look at in a browser.
        if let Some(p) = std::env::var_os("VFIOCTL_REPORT_SAMPLE") {
            let past = crate::regress::testdata::lab_history();
            std::fs::write(p, render(&cur, &past, 20)).unwrap();
        }
    }

    #[test]
    fn a_plug_failure_shows_the_guest_kernel_log_once() {
        // As the executor records it: the plug error's message carries the kernel log,
        // the QMP excerpt is the same text, and the summary repeats the message.
        let mut cur = lab_run("20261122T020000Z", 4000);
        let neg = &mut cur.scenarios[1];
        let msg = "emulated:8G on rp0: the guest found it at 0000:01:00.0 but could not assign BAR 2 (can't assign; no space): rolled back\n--- guest kernel ---\n[    4.670397] pci 0000:01:00.0: BAR 2 [mem size 0x200000000 64bit pref]: can't assign; no space";
        neg.summary = format!("failed as expected at plug: {msg}");
        let plug = neg.steps.iter_mut().find(|s| s.step == Step::Plug).unwrap();
        plug.status = StepStatus::Failed;
        plug.failure = Some(
            StepFailure::new(Exit::OperationFailed, msg).with_log(LogExcerpt {
                source: "qmp".into(),
                text: msg.into(),
            }),
        );
        let h = render(&cur, &[], 20);
        assert_eq!(h.matches("4.670397").count(), 1, "the kernel log once: {h}");
        assert!(h.contains("<p>failed as expected at plug: emulated:8G on rp0: the guest found it at 0000:01:00.0 but could not assign BAR 2 (can&apos;t assign; no space): rolled back</p>"), "{h}");
        // A multi-line message whose rest is in no log block keeps it, once.
        let neg = &mut cur.scenarios[1];
        let plug = neg.steps.iter_mut().find(|s| s.step == Step::Plug).unwrap();
        plug.failure = Some(StepFailure::new(Exit::OperationFailed, msg));
        let h = render(&cur, &[], 20);
        assert_eq!(h.matches("4.670397").count(), 1, "{h}");
        assert!(h.contains("<p class=\"muted\">details</p><pre>--- guest kernel ---"));
        // The matrix scrolls inside its box on a narrow window instead of overflowing.
        assert!(h.contains("<div class=\"wide\"><table>"));
    }

    #[test]
    fn all_green_report() {
        let cur = lab_run("20261122T020000Z", 4000);
        let h = render(&cur, &[], 20);
        assert!(h.contains("lab: all scenarios as expected (exit 0)"));
        assert!(h.contains("<header class=\"ok\">"));
    }
}
