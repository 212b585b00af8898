//! QEMU and its helpers as processes: one process group per VM, liveness that is not
//! fooled by zombies or recycled pids, and a kill that reaps.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;
use vfioctl_common::SysRoot;

/// Start `argv` in process group `pgid` (0: a new group led by the child), with stdin
/// from /dev/null and stdout+stderr appended to `log`.
pub fn spawn(argv: &[String], pgid: i32, log: &Path) -> std::io::Result<u32> {
    use std::os::unix::fs::OpenOptionsExt;
    // Logs may hold guest text and paths: readable by the owner only.
    let out = File::options()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)?;
    let err = out.try_clone()?;
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .process_group(pgid)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()?;
    // The child is reaped in `alive`/`kill_group` (or by init once we exit).
    let pid = child.id();
    std::mem::forget(child);
    Ok(pid)
}

static REAPED: std::sync::Mutex<Vec<(u32, String)>> = std::sync::Mutex::new(Vec::new());

enum Reaped {
    NotYet,
    Done,
    NotOurs,
}

/// One `waitpid(WNOHANG)`, remembering how the child ended.
fn reap_status(pid: u32) -> Reaped {
    let status = match waitpid(Pid::from_raw(pid as i32), Some(WaitPidFlag::WNOHANG)) {
        Ok(nix::sys::wait::WaitStatus::StillAlive) => return Reaped::NotYet,
        Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => format!("exit status {code}"),
        Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => format!("killed by {sig}"),
        Ok(_) => return Reaped::NotYet,
        Err(_) => return Reaped::NotOurs,
    };
    if let Ok(mut r) = REAPED.lock() {
        r.push((pid, status));
    }
    Reaped::Done
}

/// Reap `pid` if it is our child and has exited (remembering how it ended); harmless
/// otherwise. Returns how it ended when known.
fn reap(pid: u32) -> Option<String> {
    let _ = reap_status(pid);
    let r = REAPED.lock().ok()?;
    r.iter()
        .rev()
        .find(|(p, _)| *p == pid)
        .map(|(_, s)| s.clone())
}

/// Why a process is gone, if we could reap it ourselves.
pub fn exit_status(pid: u32) -> Option<String> {
    reap(pid)
}

/// True when `pid` runs and its command line contains `marker` (guards against a
/// recycled pid). Zombies count as dead.
pub fn alive(pid: u32, marker: &str) -> bool {
    let _ = reap(pid);
    let proc = SysRoot::host();
    match proc.read_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, r)| r.split_whitespace().next());
            if matches!(state, Some("Z") | Some("X")) {
                // A killed multi-threaded process stays a zombie until its last thread
                // is gone; if it is our child, wait briefly so it is reaped, not left
                // for init.
                for _ in 0..200 {
                    match reap_status(pid) {
                        Reaped::NotYet => std::thread::sleep(Duration::from_millis(5)),
                        Reaped::Done | Reaped::NotOurs => break,
                    }
                }
                return false;
            }
        }
        Err(_) => return false,
    }
    match proc.read_bytes(format!("/proc/{pid}/cmdline")) {
        // Empty right after a vfork-style spawn: the parent resumes while the child's
        // execve is still setting up the new image's arguments. It is our process.
        Ok(c) if c.is_empty() => true,
        Ok(c) => String::from_utf8_lossy(&c)
            .replace('\0', " ")
            .contains(marker),
        Err(_) => false,
    }
}

/// SIGTERM the group, wait up to `grace` for `pids` to go, then SIGKILL; reap. Returns
/// the pids still alive afterwards (should be none).
pub fn kill_group(pgid: Option<i32>, pids: &[(u32, String)], grace: Duration) -> Vec<u32> {
    let living = || {
        pids.iter()
            .filter(|(p, m)| alive(*p, m))
            .map(|(p, _)| *p)
            .collect::<Vec<_>>()
    };
    let signal_all = |sig| {
        if let Some(g) = pgid {
            let _ = killpg(Pid::from_raw(g), sig);
        }
        for (p, m) in pids {
            if alive(*p, m) {
                let _ = kill(Pid::from_raw(*p as i32), sig);
            }
        }
    };
    if living().is_empty() {
        return Vec::new();
    }
    signal_all(Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if living().is_empty() {
            return Vec::new();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    signal_all(Signal::SIGKILL);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let l = living();
        if l.is_empty() {
            return l;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    living()
}

/// The last `n` lines of a file ("" when missing).
pub fn tail_file(path: &Path, n: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    super::evidence::tail(&String::from_utf8_lossy(&text), n)
}

/// Fields of `/proc/PID/stat` after the command name: `[0]` is the state letter, `[19]`
/// the start time in clock ticks since boot.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = SysRoot::host()
        .read_string(format!("/proc/{pid}/stat"))
        .ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(String::from).collect())
}

/// The start time of a live (not zombie) process, in clock ticks since boot: with the pid
/// it identifies a process across pid reuse.
pub fn start_ticks(pid: u32) -> Option<u64> {
    let f = stat_fields(pid)?;
    if matches!(f.first().map(String::as_str), Some("Z") | Some("X")) {
        return None;
    }
    f.get(19)?.parse().ok()
}

/// The process is stopped (SIGSTOP, or a debugger): it runs no code and answers nothing.
pub fn stopped(pid: u32) -> bool {
    matches!(
        stat_fields(pid)
            .as_ref()
            .and_then(|f| f.first())
            .map(String::as_str),
        Some("T") | Some("t")
    )
}
