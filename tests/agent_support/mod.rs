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

/// An agent process on a unix socket with its own secret (`--token-file`); killed and
/// reaped on drop.
pub struct LocalAgent {
    pub child: Child,
    pub socket: PathBuf,
    pub token: vfioctl_common::proto::Token,
    pub token_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl LocalAgent {
    pub fn start(extra: &[&str]) -> LocalAgent {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("agent.sock");
        let mut b = [0u8; 32];
        for (i, x) in b.iter_mut().enumerate() {
            *x = (std::process::id() as u8)
                .wrapping_mul(31)
                .wrapping_add(i as u8 * 7);
        }
        let token = vfioctl_common::proto::Token::from_bytes(&b);
        let token_file = dir.path().join("agent.token");
        std::fs::write(&token_file, token.as_str()).unwrap();
        let child = Command::new(static_agent())
            .arg("--listen")
            .arg(format!("unix:{}", socket.display()))
            .arg("--token-file")
            .arg(&token_file)
            .args(extra)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        // Raw connections (no retry) must find the socket.
        for _ in 0..2000 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        LocalAgent {
            child,
            socket,
            token,
            token_file,
            _dir: dir,
        }
    }

    /// Connect with the right secret.
    pub fn client(&self, t: std::time::Duration) -> vfioctl::agent::AgentClient {
        vfioctl::agent::AgentClient::connect(&self.transport(), &self.token, t)
            .expect("agent answers")
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
