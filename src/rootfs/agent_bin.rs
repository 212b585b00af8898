//! Finding the static guest agent binary that goes into an initramfs. The library never
//! builds it: the caller gives a path (`--agent PATH`), or an installed agent is used
//! (`vfioctl-agent` next to the running vfioctl, then [`LIBEXEC_DIR`]). A checkout builds
//! one with `scripts/build-agent`; the tests with `vfioctl_testkit::build::static_agent`.

use std::path::{Path, PathBuf};

use super::RootfsError;

/// The target triple and profile of the agent's static build (`scripts/build-agent`).
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";
/// The cargo profile of the agent's static build (`[profile.agent]` in Cargo.toml).
pub const AGENT_PROFILE: &str = "agent";
/// Where a packaged vfioctl installs its guest binaries.
pub const LIBEXEC_DIR: &str = "/usr/libexec/vfioctl";
/// The command that builds the static agent from a checkout (prints its path).
pub const BUILD_AGENT: &str = "scripts/build-agent";

/// The cargo command that [`BUILD_AGENT`] runs, for hints.
pub fn build_command() -> String {
    format!(
        "RUSTFLAGS=\"-C target-feature=+crt-static\" cargo build --profile {AGENT_PROFILE} --target {AGENT_TARGET} -p vfioctl-agent"
    )
}

/// The source tree this vfioctl was built from, when it is still there (for its
/// `rootfs/*.toml` manifests; nothing is built in it).
pub fn source_tree() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    p.join("guest/Cargo.toml").is_file().then_some(p)
}

/// The places an installed agent is looked for, in order: next to the running vfioctl,
/// then [`LIBEXEC_DIR`].
pub fn install_candidates() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("vfioctl-agent")))
        .into_iter()
        .collect();
    v.push(Path::new(LIBEXEC_DIR).join("vfioctl-agent"));
    v
}

/// The first installed static agent among [`install_candidates`] (a dynamic build next to
/// a debug vfioctl is passed over: it cannot be a guest's `/init`).
pub fn installed() -> Option<PathBuf> {
    install_candidates()
        .into_iter()
        .find(|p| std::fs::read(p).is_ok_and(|b| is_static_elf(&b) == Some(true)))
}

/// The agent to ship: `explicit` (which must exist), else an [`installed`] one.
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
    installed().ok_or_else(|| RootfsError::NoAgent {
        searched: install_candidates(),
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
