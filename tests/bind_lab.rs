//! The real-kernel test of `vfioctl bind`: a q35 guest with an emulated intel-iommu is the
//! host (LAB.md fact 2). `scripts/lab-bind` builds the static vfioctl, packs it with busybox
//! and the lab kernel's e1000/e1000e/vfio modules into an initramfs, boots it under QEMU and
//! runs `tests/lab/bind-guest.sh` inside; the script prints one `@@ name key=value` line per
//! check on the serial console and this test asserts on them.
//!
//! Skipped loudly (not passed) when QEMU or the lab kernel is missing.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn lab_kernel() -> PathBuf {
    std::env::var_os("VFIOCTL_LAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".lab"))
        .join("kernel/current/vmlinuz")
}

fn skip(reason: &str) -> bool {
    println!("SKIPPED: {reason}");
    eprintln!("SKIPPED: {reason}");
    true
}

/// Boot the lab guest with `script`; return the `@@` lines keyed by name.
fn run_lab(script: &str, out: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let _ = std::fs::remove_dir_all(out);
    std::fs::create_dir_all(out).unwrap();
    let mut cmd = Command::new(repo().join("scripts/lab-bind"));
    cmd.arg(repo().join(script)).arg(out).process_group(0);
    let mut child = cmd.spawn().expect("scripts/lab-bind runs");
    let pgid = child.id() as i32;
    let status = child.wait().unwrap();
    // The harness owns cleanup: nothing of the run may outlive it.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pgid),
        nix::sys::signal::Signal::SIGKILL,
    );
    let serial = std::fs::read_to_string(out.join("serial.log")).unwrap_or_default();
    assert!(
        status.success(),
        "scripts/lab-bind failed ({status}); serial log and QEMU stderr kept in {}\n{serial}",
        out.display()
    );
    let mut lines = BTreeMap::new();
    for l in serial.lines() {
        let Some(rest) = l.trim_end_matches('\r').strip_prefix("@@ ") else {
            continue;
        };
        let mut f = rest.split_whitespace();
        let name = f.next().unwrap().to_string();
        let kv = f
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        lines.insert(name, kv);
    }
    assert!(
        lines.contains_key("done"),
        "guest script did not finish; serial log in {}\n{serial}",
        out.display()
    );
    lines
}

#[test]
fn bind_lab_real_kernel() {
    if Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        skip("qemu-system-x86_64 is not installed (scripts/setup installs it)");
        return;
    }
    if !lab_kernel().exists() {
        skip(&format!(
            "no lab kernel at {} (scripts/setup fetches it)",
            lab_kernel().display()
        ));
        return;
    }
    let out = repo().join("target/lab-bind/test");
    let r = run_lab("tests/lab/bind-guest.sh", &out);
    let get = |name: &str, key: &str| -> String {
        r.get(name)
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in @@ {name}: {r:?}"))
    };
    let check = |name: &str, want: &[(&str, &str)]| {
        for (k, v) in want {
            assert_eq!(get(name, k), *v, "@@ {name} {k}; all: {:?}", r.get(name));
        }
    };

    // The kernel put both e1000s and the bridge in one group, the e1000e alone.
    assert_eq!(get("setup", "group_p1"), get("setup", "group_p2"));
    assert_eq!(get("setup", "group_p1"), get("setup", "group_bridge"));
    assert_ne!(get("setup", "group_e"), get("setup", "group_p1"));

    check(
        "dry_run",
        &[
            ("rc", "0"),
            ("p1", "e1000"),
            ("p2", "e1000"),
            ("writes", "6"),
            ("companion", "1"),
            ("bridge", "1"),
            ("ledger", "0"),
        ],
    );
    check(
        "bind_e",
        &[
            ("rc", "0"),
            ("driver", "vfio-pci"),
            ("override", "vfio-pci"),
            ("node", "yes"),
            ("ledger", "1"),
        ],
    );
    check(
        "unbind_e",
        &[
            ("rc", "0"),
            ("driver", "e1000e"),
            ("override", "(null)"),
            ("ledger", "0"),
        ],
    );
    check(
        "bind_pair",
        &[
            ("rc", "0"),
            ("p1", "vfio-pci"),
            ("p2", "vfio-pci"),
            ("bridge", "none"),
            ("node", "yes"),
            ("ledger", "2"),
        ],
    );
    check(
        "unbind_pair",
        &[
            ("rc", "0"),
            ("p1", "e1000"),
            ("p2", "e1000"),
            ("o1", "(null)"),
            ("o2", "(null)"),
            ("ledger", "0"),
        ],
    );
    check(
        "no_companions",
        &[("rc", "2"), ("p1", "e1000"), ("reason", "1")],
    );
    check(
        "route",
        &[
            ("rc", "6"),
            ("driver", "e1000e"),
            ("named", "1"),
            ("ledger", "0"),
        ],
    );
    // kill -9 after each step: the mid-state is what the step left, and restore brings
    // both devices of the plan back with their overrides unset.
    for (step, mid_driver) in [
        ("override", "e1000"),
        ("unbind", "none"),
        ("probe", "vfio-pci"),
    ] {
        check(
            &format!("kill_{step}"),
            &[
                ("rc", "137"),
                ("p1", mid_driver),
                ("o1", "vfio-pci"),
                ("ledger", "2"),
                ("restore_rc", "0"),
                ("after_p1", "e1000"),
                ("after_p2", "e1000"),
                ("after_o1", "(null)"),
                ("after_o2", "(null)"),
                ("after_ledger", "0"),
            ],
        );
    }
    check(
        "persist",
        &[("rc", "0"), ("driver", "vfio-pci"), ("file", "vfio-pci")],
    );
    check(
        "unpersist",
        &[
            ("rc", "0"),
            ("driver", "e1000e"),
            ("override", "e1000e"),
            ("file", "gone"),
        ],
    );
}
