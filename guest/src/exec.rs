//! Running a command: bounded output, a timeout that kills the whole process group, and
//! the exit status from the reaper.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vfioctl_common::proto::{AgentError, ErrorKind, ExecReply, MAX_EXEC_OUTPUT};

use crate::{reaper, sys};

const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Resolve `prog` like a shell would (absolute, relative with `/`, or through PATH), so
/// a missing program is an error reply rather than a failed spawn.
pub fn resolve(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if prog.contains('/') {
        let p = PathBuf::from(prog);
        return ok(&p).then_some(p);
    }
    let path = std::env::var("PATH").unwrap_or_else(|_| PATH.to_string());
    path.split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| ok(p))
}

/// Read a stream to the end, keeping at most `max` bytes (the rest is drained so the child
/// never blocks on a full pipe).
fn bounded(mut r: impl Read, max: usize) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut truncated = false;
    let mut buf = [0u8; 4096];
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    (kept, truncated)
}

pub fn run(
    argv: &[String],
    env: &[(String, String)],
    timeout: Duration,
    max_output: u32,
) -> Result<ExecReply, AgentError> {
    let prog = argv
        .first()
        .ok_or_else(|| AgentError::new(ErrorKind::BadRequest, "exec: empty argv"))?;
    let path = resolve(prog).ok_or_else(|| {
        AgentError::new(
            ErrorKind::NotFound,
            format!("exec: {prog}: no such executable in the guest"),
        )
    })?;
    let max = max_output.min(MAX_EXEC_OUTPUT) as usize;
    let start = Instant::now();
    let mut cmd = Command::new(&path);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", PATH);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().map_err(|e| {
        AgentError::new(
            ErrorKind::Io,
            format!("exec: spawn {}: {e}", path.display()),
        )
    })?;
    let pid = child.id() as i32;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let t_out = std::thread::spawn(move || out.map(|o| bounded(o, max)).unwrap_or_default());
    let t_err = std::thread::spawn(move || err.map(|e| bounded(e, max)).unwrap_or_default());
    // `child` is never waited on through std: the reaper owns every exit status.
    drop(child);

    let deadline = start + timeout;
    let (exit, timed_out) = match reaper::wait(pid, deadline) {
        Some(e) => (e, false),
        None => {
            sys::kill_group(pid, libc::SIGKILL);
            let e = reaper::wait(pid, Instant::now() + Duration::from_secs(5)).unwrap_or(
                reaper::Exit {
                    code: None,
                    signal: Some(libc::SIGKILL),
                },
            );
            (e, true)
        }
    };
    // Grandchildren may hold the pipes open; they share the group, so kill it first.
    sys::kill_group(pid, libc::SIGKILL);
    let (stdout, stdout_truncated) = t_out.join().unwrap_or_default();
    let (stderr, stderr_truncated) = t_err.join().unwrap_or_default();
    Ok(ExecReply {
        exit_code: exit.code,
        signal: exit.signal,
        timed_out,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        stdout_truncated,
        stderr_truncated,
        duration_ms: start.elapsed().as_millis() as u64,
    })
}
