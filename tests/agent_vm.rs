//! The agent as PID 1 of a real guest: Debian's lab kernel under QEMU (TCG here, KVM
//! where it works) started by `vfioctl::vm`, the initramfs from `vfioctl rootfs build`
//! with the agent as /init, vsock through vhost-device-vsock and the hybrid
//! `CONNECT`/`OK` protocol (docs/LAB.md fact 5). One boot covers: hello, devices, garbage,
//! exec, kernel log, `vfioctl validate --vm` passing on the 8 GiB stand-in hotplugged by
//! vfioctl, and failing, naming the `no space` line and the BAR, on the negative control
//! (the same device hotplugged onto a root port without the reserve).

mod junit_support;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use vfioctl::agent::AgentClient;
use vfioctl::qmp::Qmp;
use vfioctl::rootfs::{build, BuildOptions};
use vfioctl::vm::devices::IVSHMEM_ID;
use vfioctl::vm::profile::{DeviceEntry, PlugWhen};
use vfioctl::vm::{lifecycle, plug, VmState};
use vfioctl_common::proto::{self, ErrorKind, Outcome};
use vfioctl_testkit::build::static_agent;
use vfioctl_testkit::lab::{Harness, Lab};
use vfioctl_testkit::prereq;

fn validate(base: &std::path::Path, args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
        .env("VFIOCTL_RUN_DIR", base)
        .arg("--json")
        .arg("validate")
        .args(args)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "validate printed no JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

fn check<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {v:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_as_init_validate_and_negative_control() {
    let lab = vfioctl_testkit::require!(Lab::get());
    let h = Harness::new("agent_vm");
    // The lab image with exec enabled (the agent's default is off).
    let initrd = h.env.base.join("lab-exec.cpio.gz");
    let kernel_dir = lab.kernel.parent().unwrap().to_path_buf();
    build(&BuildOptions {
        manifest: prereq::repo().join("rootfs/lab.toml"),
        kernel_modules: Some(kernel_dir.clone()),
        out: initrd.clone(),
        agent: Some(static_agent()),
        exec: Some(true),
        ..Default::default()
    })
    .unwrap();
    let mut profile = lab.agent_profile("av", initrd);
    // The image allows exec and this VM asks for it: both are needed.
    profile.agent_exec = true;
    profile.gpu_ports = 2; // rp0 sized for the stand-in, rp1 without a reserve
    profile.devices.push(DeviceEntry {
        gpu: "emulated:8G".into(),
        plug: PlugWhen::Hot,
    });
    let up = lifecycle::up(&h.env, &profile).await;
    if let Ok(r) = &up {
        h.track(r);
    }
    let mut rec = match up {
        Ok(r) => r,
        Err(e) => {
            h.keep_logs();
            panic!("vm up: {e}");
        }
    };
    assert_eq!(rec.state, VmState::DevicePlugged);
    let (tr, token) = vfioctl::vm::guest::access(&rec).expect("agent transport and secret");
    let token_file = rec.rundir().token_file();
    // The secret is the VM's own: 0600 in its run directory, never in the state file.
    {
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(m & 0o777, 0o600);
        let state = std::fs::read_to_string(rec.state_file()).unwrap();
        assert!(!state.contains(token.as_str()));
    }

    let tr2 = tr.clone();
    let tok2 = token.clone();
    let gpu_bdf = rec.plugged[0].guest_bdf.clone();
    tokio::task::spawn_blocking(move || {
        let mut c =
            AgentClient::connect(&tr2, &tok2, Duration::from_secs(60)).expect("agent answers");
        let hello = c.hello().unwrap();
        assert!(hello.pid1, "the agent is the guest's init");
        assert!(hello.exec_enabled);
        assert!(hello.rss_kib.is_some_and(|k| k > 0), "{hello:?}");
        let kver = std::fs::read_link(prereq::lab_dir().join("kernel/current")).unwrap();
        assert_eq!(hello.kernel, kver.to_string_lossy());
        assert!(
            hello.modules.iter().all(|m| m.result == "loaded"),
            "{:?}",
            hello.modules
        );

        // Devices as the guest sees them: the vsock device on virtio-pci, the stand-in.
        let d = c.list_devices().unwrap();
        assert!(d.devices.iter().any(|x| x.vendor == 0x1af4
            && x.device == 0x1053
            && x.driver.as_deref() == Some("virtio-pci")));
        let gpu = d
            .devices
            .iter()
            .find(|x| x.id() == IVSHMEM_ID)
            .expect("stand-in listed");
        assert_eq!(Some(gpu.bdf.to_string()), gpu_bdf);

        // Garbage on a fresh vsock connection: an error reply, and the agent goes on.
        let mut raw = tr2.open(Duration::from_secs(30)).unwrap();
        raw.set_timeout(Some(Duration::from_secs(30))).unwrap();
        raw.write_all(b"\x00\x01garbage that is not a frame\n")
            .unwrap();
        let reply = proto::read_frame(&mut raw, proto::MAX_REPLY).unwrap();
        match proto::decode_response(&reply).unwrap().result {
            Outcome::Err(e) => assert_eq!(e.kind, ErrorKind::BadFrame),
            other => panic!("{other:?}"),
        }
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest);
        assert!(c.hello().is_ok());
        let mut c2 = AgentClient::connect(&tr2, &tok2, Duration::from_secs(30)).unwrap();
        // Over the real vsock path too: a request without the secret is refused.
        let mut raw = tr2.open(Duration::from_secs(30)).unwrap();
        raw.set_timeout(Some(Duration::from_secs(30))).unwrap();
        let req = proto::Request {
            id: 1,
            token: None,
            req: proto::RequestBody::Hello,
        };
        proto::write_frame(&mut raw, &proto::to_payload(&req)).unwrap();
        let reply = proto::read_frame(&mut raw, proto::MAX_REPLY).unwrap();
        match proto::decode_response(&reply).unwrap().result {
            Outcome::Err(e) => assert_eq!(e.kind, ErrorKind::Unauthorized),
            other => panic!("{other:?}"),
        }
        assert!(c2.list_devices().is_ok());

        // Exec and the kernel log.
        let r = c
            .exec(
                &["/usr/bin/vfioctl-agent", "--version"],
                Duration::from_secs(30),
                4096,
            )
            .unwrap();
        assert!(
            r.success() && r.stdout.starts_with("vfioctl-agent"),
            "{r:?}"
        );
        let k = c.kernel_log(None, None).unwrap();
        assert!(k
            .records
            .iter()
            .any(|r| r.text.contains("Run /init as init process")));
    })
    .await
    .unwrap();

    // validate --vm: the VM's agent and plugged device come from its state file.
    let junit = h.env.base.join("junit.xml");
    let (code, v) = validate(
        &h.env.base,
        &["--vm", "av", "--junit", junit.to_str().unwrap()],
    );
    assert_eq!(code, Some(0), "{v:#}");
    for name in [
        "agent",
        "device-present",
        "bars-assigned",
        "bars-above-4g",
        "kernel-log",
    ] {
        assert_eq!(check(&v, name)["verdict"], "pass", "{name}: {v:#}");
    }
    assert_eq!(check(&v, "driver-bound")["verdict"], "skip");
    let x = std::fs::read_to_string(&junit).unwrap();
    assert!(x.contains("failures=\"0\""), "{x}");
    junit_support::assert_valid_junit(&junit);

    // Negative control: unplug, then hotplug the same 8 GiB device onto rp1 (no
    // prefetchable reserve) straight through QMP, so it stays plugged with BAR 2 unassigned.
    let qmp = Qmp::connect(&rec.qmp_socket, Duration::from_secs(10))
        .await
        .unwrap();
    plug::unplug(&h.env, &mut rec, &qmp, "gpu0")
        .await
        .expect("unplug");
    qmp.execute_raw(
        "object-add",
        Some(serde_json::json!({"qom-type": "memory-backend-memfd", "id": "negmem", "size": 8u64 << 30, "share": true})),
    )
    .await
    .unwrap();
    qmp.execute_raw(
        "device_add",
        Some(serde_json::json!({"driver": "ivshmem-plain", "id": "neg", "memdev": "negmem", "bus": "rp1", "addr": "0x0"})),
    )
    .await
    .unwrap();
    let tr3 = tr.clone();
    let tok3 = token.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut c = AgentClient::connect(&tr3, &tok3, Duration::from_secs(30)).unwrap();
        // Present, BARs or not (event-driven wait in the guest).
        c.wait_device(&IVSHMEM_ID.parse().unwrap(), Duration::from_secs(60), false)
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        seen.device.is_some(),
        "the guest never saw the negative control"
    );
    let addr = tr.to_string();
    let junit = h.env.base.join("junit-neg.xml");
    let (code, v) = validate(
        &h.env.base,
        &[
            "--agent",
            &addr,
            "--token-file",
            token_file.to_str().unwrap(),
            "--gpu",
            "emulated:8G",
            "--wait",
            "2",
            "--junit",
            junit.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(3), "{v:#}");
    let bars = check(&v, "bars-assigned");
    assert_eq!(bars["verdict"], "fail");
    let detail = bars["detail"].as_str().unwrap();
    assert!(
        detail.contains("BAR2") && detail.contains("no space"),
        "{detail}"
    );
    eprintln!("negative control: bars-assigned: {detail}");
    assert_eq!(check(&v, "kernel-log")["verdict"], "fail");
    let x = std::fs::read_to_string(&junit).unwrap();
    assert!(x.contains("<failure message=\"BAR2"), "{x}");
    junit_support::assert_valid_junit(&junit);
    drop(qmp);

    // Down: the agent powers the guest off; nothing is left behind.
    let procs = lifecycle::processes(&rec);
    lifecycle::down(&h.env, &"av".parse().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
    for (p, m) in &procs {
        assert!(
            !vfioctl::vm::process::alive(*p, m),
            "pid {p} ({m}) still alive"
        );
    }
}
