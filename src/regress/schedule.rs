//! Which scenarios may run together (pure logic).
//!
//! Each scenario holds a set of exclusivity keys while it runs: one per IOMMU group (or
//! address) of its host devices, one per plan `locks` entry. Two scenarios sharing a key
//! never overlap; `--jobs N` bounds how many run at once. Emulated stand-ins hold no
//! key: every scenario gets its own QEMU and its own emulated device.
//!
//! Order: longest expected first (LPT), from the median wall time of past runs when the
//! history has them, else plan order; that keeps the makespan close to the longest
//! scenario when slots suffice.

use std::collections::{BTreeMap, BTreeSet};

/// One schedulable unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    /// Exclusivity keys held while it runs (IOMMU groups or addresses, `lock:<name>`).
    pub keys: BTreeSet<String>,
    /// Expected duration (ms), for ordering only; 0 when unknown.
    pub weight_ms: u64,
}

/// Whether two jobs may never run at the same time.
pub fn conflicts(a: &Job, b: &Job) -> bool {
    !a.keys.is_disjoint(&b.keys)
}

/// The dispatcher: call [`Scheduler::dispatch`] while it returns work, [`Scheduler::done`]
/// when a job ends.
#[derive(Clone, Debug)]
pub struct Scheduler {
    jobs: Vec<Job>,
    slots: usize,
    pending: Vec<usize>,
    running: BTreeSet<usize>,
    held: BTreeMap<String, usize>,
}

impl Scheduler {
    /// A scheduler for `jobs` (indices are positions in it) with `slots` parallel slots (at least 1); longest expected first.
    pub fn new(jobs: Vec<Job>, slots: usize) -> Self {
        let mut pending: Vec<usize> = (0..jobs.len()).collect();
        // Stable: equal weights keep plan order.
        pending.sort_by_key(|i| std::cmp::Reverse(jobs[*i].weight_ms));
        Self {
            jobs,
            slots: slots.max(1),
            pending,
            running: BTreeSet::new(),
            held: BTreeMap::new(),
        }
    }

    /// The next job that may start now, if any (a free slot and none of its keys held).
    pub fn dispatch(&mut self) -> Option<usize> {
        if self.running.len() >= self.slots {
            return None;
        }
        let pos = self.pending.iter().position(|i| {
            self.jobs[*i]
                .keys
                .iter()
                .all(|k| !self.held.contains_key(k))
        })?;
        let i = self.pending.remove(pos);
        for k in &self.jobs[i].keys {
            self.held.insert(k.clone(), i);
        }
        self.running.insert(i);
        Some(i)
    }

    /// Job `i` ended: free its slot and its keys.
    pub fn done(&mut self, i: usize) {
        if self.running.remove(&i) {
            self.held.retain(|_, owner| *owner != i);
        }
    }

    /// The jobs running now, by index.
    pub fn running(&self) -> &BTreeSet<usize> {
        &self.running
    }

    /// Nothing pending and nothing running.
    pub fn finished(&self) -> bool {
        self.pending.is_empty() && self.running.is_empty()
    }
}

/// A simulated run: start time of each job, and the makespan, given durations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Simulation {
    /// Each job's start time on the virtual clock, in milliseconds, by index.
    pub start_ms: Vec<u64>,
    /// When the last job ends, in milliseconds.
    pub makespan_ms: u64,
}

/// Run the scheduler on virtual time (used to preview a plan and to test the policy).
pub fn simulate(jobs: &[Job], slots: usize, durations_ms: &[u64]) -> Simulation {
    let mut s = Scheduler::new(jobs.to_vec(), slots);
    let mut now = 0u64;
    let mut start = vec![0; jobs.len()];
    let mut ends: Vec<(u64, usize)> = Vec::new();
    while !s.finished() {
        while let Some(i) = s.dispatch() {
            start[i] = now;
            ends.push((now + durations_ms[i], i));
        }
        ends.sort();
        let Some(&(t, _)) = ends.first() else { break };
        now = t;
        while let Some(&(t2, i)) = ends.first() {
            if t2 != now {
                break;
            }
            ends.remove(0);
            s.done(i);
        }
    }
    Simulation {
        start_ms: start,
        makespan_ms: now,
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn job(keys: &[&str], w: u64) -> Job {
        Job {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            weight_ms: w,
        }
    }

    #[test]
    fn shared_keys_serialize_disjoint_ones_overlap() {
        let jobs = vec![
            job(&["group:5"], 0),
            job(&["group:5"], 0),
            job(&[], 0),
            job(&["group:7"], 0),
        ];
        let mut s = Scheduler::new(jobs, 4);
        assert_eq!(s.dispatch(), Some(0));
        assert_eq!(s.dispatch(), Some(2)); // 1 waits for group:5
        assert_eq!(s.dispatch(), Some(3));
        assert_eq!(s.dispatch(), None);
        s.done(0);
        assert_eq!(s.dispatch(), Some(1));
        s.done(1);
        s.done(2);
        s.done(3);
        assert!(s.finished());
    }

    #[test]
    fn slots_bound_concurrency() {
        let jobs = vec![job(&[], 0); 5];
        let mut s = Scheduler::new(jobs, 2);
        assert!(s.dispatch().is_some() && s.dispatch().is_some());
        assert_eq!(s.dispatch(), None);
        assert_eq!(s.running().len(), 2);
    }

    #[test]
    fn longest_first_and_plan_order_on_ties() {
        let jobs = vec![job(&[], 10), job(&[], 100), job(&[], 10)];
        let mut s = Scheduler::new(jobs, 1);
        assert_eq!(s.dispatch(), Some(1));
        s.done(1);
        assert_eq!(s.dispatch(), Some(0));
        s.done(0);
        assert_eq!(s.dispatch(), Some(2));
    }

    #[test]
    fn simulation_makespan() {
        // The lab plan: two stand-in scenarios and a long nested one, independent.
        let jobs = vec![job(&[], 20), job(&[], 20), job(&[], 100)];
        let d = [20, 20, 100];
        assert_eq!(simulate(&jobs, 1, &d).makespan_ms, 140);
        assert_eq!(simulate(&jobs, 2, &d).makespan_ms, 100);
        assert_eq!(simulate(&jobs, 3, &d).makespan_ms, 100);
        // Same device: no overlap whatever the slots.
        let jobs = vec![job(&["bdf:01:00.0"], 0), job(&["bdf:01:00.0"], 0)];
        assert_eq!(simulate(&jobs, 8, &[30, 30]).makespan_ms, 60);
    }

    proptest! {
        /// Conflicting jobs never overlap, running jobs never exceed the slots, every job
        /// runs once, and with enough slots and no keys the makespan is the longest job.
        #[test]
        fn schedule_invariants(
            spec in prop::collection::vec((prop::collection::btree_set(0u8..4, 0..3), 1u64..50), 1..9),
            slots in 1usize..5,
        ) {
            let jobs: Vec<Job> = spec.iter().map(|(k, w)| Job {
                keys: k.iter().map(|k| format!("k{k}")).collect(),
                weight_ms: *w,
            }).collect();
            let d: Vec<u64> = spec.iter().map(|(_, w)| *w).collect();
            let sim = simulate(&jobs, slots, &d);
            for i in 0..jobs.len() {
                for j in (i + 1)..jobs.len() {
                    let overlap = sim.start_ms[i] < sim.start_ms[j] + d[j]
                        && sim.start_ms[j] < sim.start_ms[i] + d[i];
                    if conflicts(&jobs[i], &jobs[j]) {
                        prop_assert!(!overlap, "jobs {} and {} overlap", i, j);
                    }
                }
            }
            let mut edges: Vec<u64> = sim.start_ms.clone();
            edges.sort();
            for t in edges {
                let n = (0..jobs.len()).filter(|i| sim.start_ms[*i] <= t && t < sim.start_ms[*i] + d[*i]).count();
                prop_assert!(n <= slots);
            }
            let free: Vec<Job> = jobs.iter().map(|j| Job { keys: BTreeSet::new(), ..j.clone() }).collect();
            prop_assert_eq!(simulate(&free, jobs.len(), &d).makespan_ms, *d.iter().max().unwrap());
        }
    }
}
