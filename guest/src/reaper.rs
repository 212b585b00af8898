//! One thread reaps every child (and, as PID 1, every orphan): it waits for SIGCHLD,
//! collects exit statuses with `waitpid(-1, WNOHANG)`, and hands them to whoever spawned
//! the process (exec, checks) through a table. Nothing else calls `wait`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Instant;

use crate::sys;

/// Statuses not yet collected, bounded (orphans nobody asks about fall off the end).
const KEEP: usize = 256;

#[derive(Default)]
struct Table {
    status: HashMap<i32, i32>,
    order: VecDeque<i32>,
}

struct Reaper {
    table: Mutex<Table>,
    cond: Condvar,
}

fn reaper() -> &'static Reaper {
    static R: OnceLock<Reaper> = OnceLock::new();
    R.get_or_init(|| Reaper {
        table: Mutex::new(Table::default()),
        cond: Condvar::new(),
    })
}

/// Start the reaper thread. SIGCHLD must already be blocked ([`sys::block_sigchld`]) in
/// the calling thread before any other thread exists.
pub fn start() {
    let _ = reaper();
    let _ = std::thread::Builder::new()
        .name("reaper".into())
        .stack_size(64 * 1024)
        .spawn(|| loop {
            sys::wait_sigchld();
            let r = reaper();
            let mut t = r.table.lock().unwrap_or_else(|e| e.into_inner());
            while let Some((pid, status)) = sys::reap_one() {
                t.status.insert(pid, status);
                t.order.push_back(pid);
                while t.order.len() > KEEP {
                    if let Some(old) = t.order.pop_front() {
                        t.status.remove(&old);
                    }
                }
            }
            r.cond.notify_all();
        });
}

/// How a process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Wait for `pid`'s exit status until `deadline`; `None` when it is still running.
pub fn wait(pid: i32, deadline: Instant) -> Option<Exit> {
    let r = reaper();
    let mut t = r.table.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if let Some(status) = t.status.remove(&pid) {
            t.order.retain(|p| *p != pid);
            return Some(if libc::WIFEXITED(status) {
                Exit {
                    code: Some(libc::WEXITSTATUS(status)),
                    signal: None,
                }
            } else {
                Exit {
                    code: None,
                    signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
                }
            });
        }
        let now = Instant::now();
        if now >= deadline {
            return None;
        }
        t = r
            .cond
            .wait_timeout(t, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}
