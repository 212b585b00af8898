//! Real QEMU (TCG here), the Debian guest kernel, a busybox initramfs: boot, hotplug an
//! 8 GiB stand-in onto a vfioctl-sized root port and see the guest assign it above 4 GiB;
//! the same device on a port without the reserve gets the guest's `no space`; unplug
//! returns DEVICE_DELETED; down leaves no process.

mod schema_support;

use std::time::Duration;

use vfioctl::qmp::Qmp;
use vfioctl::vm::devices::IVSHMEM_ID;
use vfioctl::vm::profile::{DeviceEntry, GpuSpec, PlugWhen};
use vfioctl::vm::{evidence, lifecycle, plug, VmError, VmName, VmState};
use vfioctl_testkit::lab::{Harness, Lab, READY_MARKER};

fn name(s: &str) -> VmName {
    VmName::new(s).unwrap()
}

#[tokio::test]
async fn hotplug_8g_stand_in_on_a_sized_port_and_the_negative_control() {
    let lab = vfioctl_testkit::require!(Lab::get());
    let initrd = lab.agent_initramfs();
    let h = Harness::new("vm_hotplug");
    let mut profile = lab.agent_profile("hp", initrd);
    profile.gpu_ports = 2; // rp0 sized for the device, rp1 a plain spare
    profile.devices.push(DeviceEntry {
        gpu: "emulated:8G".into(),
        plug: PlugWhen::Hot,
    });

    // up: boots, then hotplugs the stand-in onto rp0 and waits for the guest.
    let up = lifecycle::up(&h.env, &profile).await;
    if let Ok(r) = &up {
        h.track(r);
    }
    let mut rec = up.expect("vm up");
    assert_eq!(rec.state, VmState::DevicePlugged);
    // What `vm up --json` prints: the record.
    schema_support::assert_valid("vm-up", &serde_json::to_value(&rec).unwrap());
    assert_eq!(rec.ports[0].pref64_reserve, Some(16 << 30));
    assert_eq!(rec.ports[1].pref64_reserve, None);
    let gpu0 = rec.plugged[0].clone();
    assert_eq!(
        (gpu0.port.as_str(), gpu0.id_pair.as_str()),
        ("rp0", IVSHMEM_ID)
    );
    assert!(rec.guest.is_some(), "the agent answered: {:?}", rec.guest);
    // Ask the guest itself (the agent): where did BAR 2 go?
    let t = rec.clone();
    let dev = tokio::task::spawn_blocking(move || {
        let mut c = vfioctl::vm::guest::connect(&t, Duration::from_secs(30)).unwrap();
        let d = c.list_devices().unwrap();
        d.devices
            .into_iter()
            .find(|d| d.id() == IVSHMEM_ID)
            .expect("guest lists the stand-in")
    })
    .await
    .unwrap();
    assert_eq!(Some(dev.bdf.to_string()), gpu0.guest_bdf);
    let bar2 = dev.bars.iter().find(|b| b.index == 2).expect("BAR 2");
    assert!(bar2.assigned && bar2.size == Some(8 << 30), "{bar2:?}");
    assert!(
        bar2.start >= 1 << 32,
        "BAR 2 above 4 GiB: {:#x}",
        bar2.start
    );
    // Where the console carries the kernel's own words for the event, they agree.
    let serial = std::fs::read_to_string(&rec.serial_log).unwrap();
    if let Some(ev) = evidence::scan(&serial, IVSHMEM_ID) {
        assert!(ev.all_assigned() && ev.above_4g(), "{:#?}", ev.lines);
    }

    // Negative control: the same device on the port without the reserve.
    let qmp = Qmp::connect(&rec.qmp_socket, Duration::from_secs(10))
        .await
        .unwrap();
    let gpu = GpuSpec::Emulated { size: 8 << 30 };
    let e = plug::plug(&h.env, &mut rec, &qmp, &gpu, Some("rp1"))
        .await
        .unwrap_err();
    let VmError::Plug(pe) = &e else { panic!("{e}") };
    let text = pe.to_string();
    assert!(text.contains("no space"), "{text}");
    assert!(
        matches!(**pe, plug::PlugError::NotAssigned { .. }),
        "{text}"
    );
    assert_eq!(rec.plugged.len(), 1, "the failed plug was rolled back");

    // Unplug: DEVICE_DELETED for gpu0.
    let secs = plug::unplug(&h.env, &mut rec, &qmp, "gpu0")
        .await
        .expect("unplug");
    assert!(secs >= 0.0);
    assert_eq!(rec.state, VmState::Ready);
    // What `vm unplug --json` prints for it.
    let out = vfioctl::cli::vm::UnplugOutput {
        seconds: secs,
        unplugged: "gpu0".into(),
        vm: name("hp"),
    };
    schema_support::assert_valid("vm-unplug", &serde_json::to_value(&out).unwrap());

    // Plugged again onto its sized port: what `vm plug --json` prints; then out again.
    let c = plug::plug(&h.env, &mut rec, &qmp, &gpu, Some("rp0"))
        .await
        .expect("plug again onto rp0");
    let out = vfioctl::cli::vm::PlugOutput {
        guest: c,
        plugged: rec.plugged.last().cloned(),
        vm: name("hp"),
    };
    schema_support::assert_valid("vm-plug", &serde_json::to_value(&out).unwrap());
    let id = rec.plugged.last().expect("plugged again").id.clone();
    plug::unplug(&h.env, &mut rec, &qmp, &id)
        .await
        .expect("unplug again");
    assert_eq!(rec.state, VmState::Ready);
    drop(qmp);

    // Down: no process left, runtime directory gone; idempotent.
    let procs = lifecycle::processes(&rec);
    assert!(!procs.is_empty());
    let r = lifecycle::down(&h.env, &name("hp"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(r.was, Some(VmState::Ready));
    for (p, m) in &procs {
        assert!(
            !vfioctl::vm::process::alive(*p, m),
            "pid {p} ({m}) still alive"
        );
    }
    assert!(!rec.run_dir.exists());
    let again = lifecycle::down(&h.env, &name("hp"), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(again.was, None);
}

#[tokio::test]
async fn qemu_that_dies_at_start_is_reported_with_its_stderr() {
    let lab = vfioctl_testkit::require!(Lab::get());
    let h = Harness::new("vm_crash");
    let mut profile = lab.profile("crash");
    profile.qemu_args = vec!["-device".into(), "no-such-device-model".into()];
    let e = lifecycle::up(&h.env, &profile).await.unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, VmError::Crashed { .. }), "{text}");
    assert!(
        text.contains("no-such-device-model"),
        "stderr tail in the error: {text}"
    );
    // The failed VM is kept for inspection, marked crashed; down cleans it up.
    let st = lifecycle::status(&h.env, &name("crash")).await.unwrap();
    assert_eq!(st.state, VmState::Crashed);
    lifecycle::down(&h.env, &name("crash"), Duration::ZERO)
        .await
        .unwrap();
    assert!(lifecycle::list(&h.env).is_empty());
}

#[tokio::test]
async fn a_qemu_killed_while_running_is_reported_crashed_and_cleaned_up() {
    // The busybox initramfs: readiness from the serial marker (the no-agent path).
    let lab = vfioctl_testkit::require!(Lab::get());
    let h = Harness::new("vm_crash_running");
    let profile = lab.profile("boom");
    let up = lifecycle::up(&h.env, &profile).await;
    if let Ok(r) = &up {
        h.track(r);
    }
    let rec = up.expect("vm up");
    assert_eq!(rec.state, VmState::Ready);
    let pid = rec.pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    // Detected from the host side on the next look, with QEMU's and the guest's words.
    let mut st = lifecycle::status(&h.env, &name("boom")).await.unwrap();
    for _ in 0..200 {
        if st.state == VmState::Crashed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        st = lifecycle::status(&h.env, &name("boom")).await.unwrap();
    }
    assert_eq!(st.state, VmState::Crashed);
    let crash = st.crash.expect("crash report");
    assert!(
        crash.contains("serial log (tail)") && crash.contains(READY_MARKER),
        "{crash}"
    );
    // down kills what is left (vhost-device-vsock) and removes the directory.
    let procs = lifecycle::processes(&rec);
    let r = lifecycle::down(&h.env, &name("boom"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(r.was, Some(VmState::Crashed));
    for (p, m) in &procs {
        assert!(
            !vfioctl::vm::process::alive(*p, m),
            "pid {p} ({m}) still alive"
        );
    }
    assert!(!rec.run_dir.exists());
}
