//! Shared by the agent and rootfs integration tests: the static agent, the lab kernel and
//! a local agent process on a unix socket.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The static agent, built once per test binary (cargo is a no-op when it is current).
pub fn static_agent() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        vfioctl::rootfs::agent_bin::build_static(&workspace())
            .unwrap_or_else(|e| panic!("building the static agent: {e}"))
    })
    .clone()
}

pub fn lab() -> PathBuf {
    vfioctl_testkit::prereq::lab_dir()
}

/// An agent process on a unix socket; killed and reaped on drop.
pub struct LocalAgent {
    pub child: Child,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalAgent {
    pub fn start(extra: &[&str]) -> LocalAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let child = Command::new(static_agent())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        LocalAgent {
            child,
            socket,
            _dir: dir,
        }
    }

    pub fn transport(&self) -> vfioctl::agent::Transport {
        vfioctl::agent::Transport::Unix {
            path: self.socket.clone(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LocalAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
