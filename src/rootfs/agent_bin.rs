//! Finding (or building) the static guest agent binary that goes into an initramfs.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::RootfsError;

/// The target triple and profile of the agent's static build.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
pub const AGENT_PROFILE: &str = "agent";

/// The source tree this vfioctl was built from, when it is still there.
pub fn source_tree() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    p.join("guest/Cargo.toml").is_file().then_some(p)
}

/// Build the static agent with cargo (a no-op when up to date) and return its path.
pub fn build_static(workspace: &Path) -> Result<PathBuf, RootfsError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .args([
            "build",
            "--quiet",
            "--profile",
            AGENT_PROFILE,
            "--target",
            AGENT_TARGET,
            "-p",
            "vfioctl-agent",
        ])
        .output()
        .map_err(|e| RootfsError::Tool {
            cmd: format!("{cargo} build -p vfioctl-agent"),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(RootfsError::Tool {
            cmd: format!(
                "{cargo} build --profile {AGENT_PROFILE} --target {AGENT_TARGET} -p vfioctl-agent"
            ),
            message: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let p = built_path(workspace);
    if p.is_file() {
        Ok(p)
    } else {
        Err(RootfsError::Missing {
            what: "agent binary after cargo build".into(),
            path: p,
        })
    }
}

/// Where the static build puts the agent.
pub fn built_path(workspace: &Path) -> PathBuf {
    workspace
        .join("target")
        .join(AGENT_TARGET)
        .join(AGENT_PROFILE)
        .join("vfioctl-agent")
}

/// The agent to ship: `explicit`, else a fresh static build from the source tree, else
/// `vfioctl-agent` next to the running vfioctl.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, RootfsError> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.to_path_buf())
        } else {
            Err(RootfsError::Missing {
                what: "agent binary (--agent)".into(),
                path: p.into(),
            })
        };
    }
    if let Some(ws) = source_tree() {
        return build_static(&ws);
    }
    if let Some(p) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vfioctl-agent")))
        .filter(|p| p.is_file())
    {
        return Ok(p);
    }
    Err(RootfsError::Missing {
        what: "agent binary: pass --agent PATH".into(),
        path: PathBuf::from("vfioctl-agent"),
    })
}

/// True when `elf` is an ELF executable without a program interpreter (static).
pub fn is_static_elf(elf: &[u8]) -> Option<bool> {
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().ok()?) as usize;
    let phentsize = u16_at(54);
    let phnum = u16_at(56);
    for i in 0..phnum {
        let o = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let t = elf.get(o..o + 4)?;
        if u32::from_le_bytes(t.try_into().ok()?) == 3 {
            return Some(false); // PT_INTERP
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    #[test]
    fn static_detection() {
        assert_eq!(super::is_static_elf(b"#!/bin/sh\n"), None);
        // /bin/sh on any Debian is dynamic.
        if let Ok(b) = std::fs::read("/bin/sh") {
            assert_eq!(super::is_static_elf(&b), Some(false));
        }
    }
}
