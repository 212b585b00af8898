//! The real-kernel test of `vfioctl bind`: a q35 guest with an emulated intel-iommu is the
//! host (docs/LAB.md fact 2). The guest is an initramfs from `tests/lab/lab-bind.toml` (the
//! vfioctl agent as /init with exec on, busybox, e1000/e1000e and the vfio modules) plus
//! the static vfioctl and `tests/lab/bind-guest.sh`; `vfioctl::vm` boots it (readiness:
//! the agent answers) and the test runs the script through the agent's exec. The script
//! prints one `@@ name key=value` line per check, asserted here.
//!
//! Skipped loudly (not passed), or failed under `VFIOCTL_REQUIRE_LAB=1`, when QEMU, the
//! lab kernel or vhost-device-vsock is missing.

use std::collections::BTreeMap;
use std::time::Duration;

use vfioctl::agent::{AgentClient, Transport};
use vfioctl::vm::lifecycle;
use vfioctl::vm::profile::{Profile, Ready, VsockChoice};
use vfioctl_testkit::lab::{bind_lab_topology, Harness, Lab};
use vfioctl_testkit::prereq::repo;

fn parse(stdout: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut lines = BTreeMap::new();
    for l in stdout.lines() {
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
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_lab_real_kernel_through_the_agent() {
    let lab = vfioctl_testkit::require!(Lab::get());
    let h = Harness::new("bind_lab");
    let work = tempfile::tempdir().unwrap();
    let initrd = lab.bind_lab_initramfs(work.path(), &repo().join("tests/lab/bind-guest.sh"));
    let profile = Profile {
        name: "bindlab".into(),
        vcpus: 1,
        memory: "768M".into(),
        kernel: Some(lab.kernel.clone()),
        initrd: Some(initrd),
        // no_timer_check: the IO-APIC timer probe is timing-sensitive and fails under a
        // loaded TCG host ("timer doesn't work through Interrupt-remapped IO-APIC").
        cmdline: "console=ttyS0 panic=-1 intel_iommu=on no_timer_check".into(),
        ready: Ready::Agent,
        vsock: VsockChoice::Auto,
        boot_timeout: 300,
        qemu_args: bind_lab_topology(),
        // The image allows exec (lab-vfio.toml) and this VM asks for it.
        agent_exec: true,
        ..Profile::default()
    };
    let up = lifecycle::up(&h.env, &profile).await;
    if let Ok(r) = &up {
        h.track(r);
    }
    let rec = up.expect("vm up with the agent answering");
    let (transport, token): (Transport, _) =
        vfioctl::vm::guest::access(&rec).expect("agent transport and secret");
    let reply = tokio::task::spawn_blocking(move || {
        let mut c = AgentClient::connect(&transport, &token, Duration::from_secs(60))
            .expect("agent connect");
        c.exec(
            &["/bin/busybox", "sh", "-c", "/bin/busybox --install -s /bin 2>/dev/null; export PATH=/bin:/sbin:/usr/bin:/usr/sbin; sh /lab.sh 2>&1; echo '@@ done'"],
            Duration::from_secs(300),
            1 << 20,
        )
        .expect("agent exec")
    })
    .await
    .unwrap();
    let r = parse(&reply.stdout);
    assert!(
        reply.success() && r.contains_key("done"),
        "guest script: {reply:?}"
    );
    let get = |name: &str, key: &str| -> String {
        r.get(name)
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_else(|| panic!("no {key} in @@ {name}; guest output:\n{}", reply.stdout))
    };
    let check = |name: &str, want: &[(&str, &str)]| {
        for (k, v) in want {
            assert_eq!(
                get(name, k),
                *v,
                "@@ {name} {k}; guest output:\n{}",
                reply.stdout
            );
        }
    };

    // The kernel put both e1000s and their bridge in one group, the e1000e alone.
    assert_eq!(get("setup", "group_p1"), get("setup", "group_p2"));
    assert_eq!(get("setup", "group_p1"), get("setup", "group_bridge"));
    assert_ne!(get("setup", "group_e"), get("setup", "group_p1"));

    check(
        "dry_run",
        &[
            ("rc", "0"),
            ("p1", "e1000"),
            ("p2", "e1000"),
            // per device: override, unbind, drivers_probe and the direct bind that
            // execute falls back to (the dry run shows every step it can run)
            ("writes", "8"),
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

    lifecycle::down(&h.env, &"bindlab".parse().unwrap(), Duration::from_secs(5))
        .await
        .expect("vm down");
}
