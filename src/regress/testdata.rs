//! Realistic results for the report tests: the lab plan's shape, as a TCG run gives it.
#![cfg(test)]

use super::plan::{Expect, PlugMode};
use super::results::*;
use super::step::Step;
use crate::Exit;

/// A step that passed in `ms`.
pub fn ok(step: Step, ms: u64) -> StepResult {
    StepResult {
        step,
        status: StepStatus::Ok,
        cleanup: false,
        ms,
        note: None,
        failure: None,
    }
}

/// Run `n` of a lab history: boot slows down in the last run when `slow`.
pub fn lab_run(id: &str, boot_ms: u64) -> RunResults {
    let hot = ScenarioResult {
        name: "standin-8g-hot".into(),
        node: None,
        devices: vec!["emulated:8G".into()],
        plug: PlugMode::Hot,
        expect: (&Expect::Pass).into(),
        outcome: Outcome::Passed,
        summary: "every step passed".into(),
        failed_step: None,
        start_ms: 0,
        wall_ms: boot_ms + 1900,
        description: None,
        stack: Default::default(),
        logs: Vec::new(),
        steps: vec![
            ok(Step::Check, 40),
            ok(Step::VmUp, boot_ms),
            StepResult {
                note: Some("BAR 2 at 0x200000000 (8G, 64-bit pref)".into()),
                ..ok(Step::Plug, 310)
            },
            ok(Step::Validate, 900),
            ok(Step::Unplug, 120),
            ok(Step::VmDown, 530),
        ],
    };
    let mut neg_validate = ok(Step::Validate, 700);
    neg_validate.status = StepStatus::Failed;
    neg_validate.failure = Some(
        StepFailure::new(
            Exit::ValidationFailed,
            "validate: device 0000:01:00.0: BAR 2 unassigned",
        )
        .with_log(LogExcerpt {
            source: "dmesg".into(),
            text: "pci 0000:01:00.0: BAR 2: no space for [mem size 0x200000000 64bit pref]\npci 0000:01:00.0: BAR 2: failed to assign [mem size 0x200000000 64bit pref]".into(),
        })
        .with_log(LogExcerpt {
            source: "serial".into(),
            text: "[    2.101] pcieport 0000:00:02.0: pciehp: Slot(0-1): Card present\n<script>alert(1)</script>".into(),
        }),
    );
    let mut down = ok(Step::VmDown, 480);
    down.cleanup = true;
    let mut unplug = ok(Step::Unplug, 110);
    unplug.cleanup = true;
    let neg = ScenarioResult {
        name: "no-reserve-negative".into(),
        node: None,
        devices: vec!["emulated:8G".into()],
        plug: PlugMode::Hot,
        expect: (&Expect::Fail {
            step: Some(Step::Validate),
            pattern: Some("failed to assign".into()),
        })
            .into(),
        outcome: Outcome::ExpectedFailure,
        summary: "failed as expected at validate: validate: device 0000:01:00.0: BAR 2 unassigned"
            .into(),
        failed_step: Some(Step::Validate),
        start_ms: 0,
        wall_ms: boot_ms + 1700,
        description: None,
        stack: Default::default(),
        logs: Vec::new(),
        steps: vec![
            ok(Step::Check, 35),
            ok(Step::VmUp, boot_ms + 100),
            ok(Step::Plug, 290),
            neg_validate,
            unplug,
            down,
        ],
    };
    RunResults {
        schema: SCHEMA,
        run_id: id.into(),
        plan: "lab".into(),
        host: "lab-1".into(),
        jobs: 2,
        vfioctl: "0.1.0".into(),
        wall_ms: boot_ms + 2000,
        scenarios: vec![hot, neg],
        regressions: vec![],
        merged: vec![],
    }
}

/// Five ordinary nights.
pub fn lab_history() -> Vec<RunResults> {
    [4100, 3900, 4000, 4200, 3950]
        .iter()
        .enumerate()
        .map(|(i, b)| lab_run(&format!("2026111{i}T020000Z"), *b))
        .collect()
}
