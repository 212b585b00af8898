//! Phase times for `vfioctl -vv bind`: each phase of a bind (device read, plan, in-use
//! scan, ledger, every sysfs write, verification) is logged at debug level with the
//! milliseconds it took, so where a bind spends its time can be read on any host, the
//! TCG lab guest of BENCHMARKS.md ("## bind") included, without a profiler.

use std::time::Instant;

/// A stopwatch whose [`lap`](Laps::lap) logs the time since the previous lap.
pub(crate) struct Laps {
    what: &'static str,
    start: Instant,
    last: Instant,
}

impl Laps {
    /// Start timing the phases of `what` (`prepare`, `execute`).
    pub(crate) fn start(what: &'static str) -> Laps {
        let now = Instant::now();
        Laps {
            what,
            start: now,
            last: now,
        }
    }

    /// Log `phase` with the time since the previous lap, and the total so far.
    pub(crate) fn lap(&mut self, phase: impl std::fmt::Display) {
        if !tracing::enabled!(tracing::Level::DEBUG) {
            return;
        }
        let now = Instant::now();
        tracing::debug!(
            "{} {phase}: {:.1} ms (total {:.1} ms)",
            self.what,
            ms(now - self.last),
            ms(now - self.start)
        );
        self.last = now;
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
