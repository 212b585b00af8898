//! The static binaries the lab's guests run, built from this checkout (the library never
//! runs cargo: it takes these as paths).
//!
//! - [`static_agent`]: the guest agent, `--profile agent`, static (docs/LAB.md fact 6);
//! - [`static_vfioctl`]: vfioctl itself, static and non-PIE (about 3x faster to start
//!   under TCG), in its own target dir.
//!
//! Each is built once per test binary; cargo is a no-op when it is current. The same
//! builds for people are `scripts/build-agent` and `scripts/build-static-vfioctl`; the
//! library and the binary never build anything (`vfioctl rootfs build --agent PATH`,
//! `vfioctl regress --agent PATH --static-vfioctl PATH`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::prereq::repo;

/// The target triple of the static builds.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Where cargo puts this workspace's builds: `$CARGO_TARGET_DIR` when set (relative to the
/// workspace, as cargo reads it), else `target/`.
pub fn target_dir() -> PathBuf {
    let ws = repo();
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => ws.join(d),
        _ => ws.join("target"),
    }
}

fn cargo(workspace: &Path, what: &str, env: &[(&str, String)], args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut c = Command::new(&cargo);
    c.current_dir(workspace)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .args(["build", "--quiet", "--target", TARGET])
        .args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("{cargo} build ({what}): {e}"));
    assert!(
        out.status.success(),
        "{cargo} build ({what}) {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The static guest agent (`target/x86_64-unknown-linux-gnu/agent/vfioctl-agent`).
pub fn static_agent() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let ws = repo();
        cargo(
            &ws,
            "static agent",
            &[("RUSTFLAGS", "-C target-feature=+crt-static".into())],
            &["--profile", "agent", "-p", "vfioctl-agent"],
        );
        let p = target_dir().join(TARGET).join("agent/vfioctl-agent");
        assert!(p.is_file(), "{} missing after the build", p.display());
        p
    })
    .clone()
}

/// The static, non-PIE vfioctl for guests
/// (`target/nopie/x86_64-unknown-linux-gnu/release/vfioctl`).
pub fn static_vfioctl() -> PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let ws = repo();
        let dir = target_dir().join("nopie");
        cargo(
            &ws,
            "static vfioctl",
            &[
                ("CARGO_TARGET_DIR", dir.display().to_string()),
                (
                    "RUSTFLAGS",
                    "-C target-feature=+crt-static -C relocation-model=static".into(),
                ),
            ],
            // the lab's kill-point steps need the fault hook (tests/lab/bind-guest.sh)
            &[
                "--release",
                "--bin",
                "vfioctl",
                "-p",
                "vfioctl",
                "--features",
                "fault-injection",
            ],
        );
        let p = dir.join(TARGET).join("release/vfioctl");
        assert!(p.is_file(), "{} missing after the build", p.display());
        p
    })
    .clone()
}
