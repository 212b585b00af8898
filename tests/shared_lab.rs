//! Shared GPUs proven on real kernels (issue 16), nightly tier:
//!
//! - SR-IOV: L0 runs QEMU 10 (the `modern` stack from `scripts/setup --modern`) with an
//!   emulated intel-iommu and an `igb` (82576) for an L1 guest on kernel 6.12; inside L1
//!   the static vfioctl runs `vf create 0000:01:00.0 --count 2` (autoprobe off), binds VF 0
//!   with the group planner, QEMU 10 inside L1 starts an L2 guest with the VF cold-plugged
//!   through `-device vfio-pci`, L2 lists 8086:10ca, and `restore --all` gives the VF back
//!   and removes both VFs (PF on igb, no VFs, autoprobe as before). The scenario is
//!   [`vfioctl::shared::lab`]; the nested machinery is [`vfioctl::regress::nested`].
//!
//! Several minutes of nested TCG: the `nested` tier (`scripts/test --nightly`, or
//! `cargo test --test shared_lab -- --ignored --nocapture`). A missing prerequisite (QEMU 10
//! / kernel 6.12 in $VFIOCTL_LAB, vhost-device-vsock, busybox) is a loud skip, and a
//! failure under VFIOCTL_REQUIRE_LAB=1: it never counts as a pass.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vfioctl::regress::nested;
use vfioctl::shared::{lab, stack};
use vfioctl::vm::lifecycle;
use vfioctl::vm::profile::{AccelChoice, Profile, Ready, VsockChoice};
use vfioctl::vm::VmName;
use vfioctl_testkit::prereq::{self, Missing};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "nightly tier (scripts/test --nightly): SR-IOV through two levels of TCG, about 10 minutes"]
async fn sriov_vf_created_in_l1_reaches_l2_and_restore_removes_it() {
    vfioctl_testkit::require!(prereq::modern_qemu());
    vfioctl_testkit::require!(prereq::vsock_backend());
    vfioctl_testkit::require!(prereq::busybox());
    let labdir = vfioctl::vm::profile::lab_dir();
    let st =
        vfioctl_testkit::require!(stack::resolve("modern", &labdir).map_err(|e| Missing::new(
            "the modern stack",
            "scripts/setup --modern"
        )
        .detail(e.to_string())));
    let kernel = st.kernel.clone().expect("modern stack has a kernel");
    let started = Instant::now();

    // Initramfs: L2 (busybox listing PCI devices), L1 (agent, igb, vfio, static vfioctl,
    // QEMU 10 with its libraries and firmware, L2 kernel + initrd).
    let work = tempfile::tempdir().unwrap();
    let agent = vfioctl_testkit::build::static_agent();
    let vfioctl_bin = vfioctl_testkit::build::static_vfioctl();
    let qdir = labdir.join("stacks/qemu-10");
    let payload = nested::qemu_payload_from(
        &st.qemu,
        &qdir.join("usr/lib/x86_64-linux-gnu/qemu"),
        st.data_dir.as_deref(),
    )
    .expect("QEMU 10 payload");
    let initrd = nested::build_initrds_with(
        &nested::NestedInputs {
            tree: &repo(),
            kernel: &kernel,
            agent: &agent,
            vfioctl: &vfioctl_bin,
            qemu: &st.qemu,
            out_dir: work.path(),
        },
        payload,
        "rootfs/lab-sriov.toml",
        "sriov-l1.cpio.gz",
    )
    .expect("building the SR-IOV L1 initramfs");
    let built = started.elapsed();

    let h = common::Harness::new("shared_lab_sriov");
    let mut qemu_args = st.qemu_args();
    qemu_args.extend(lab::sriov_l1_qemu_args());
    let name: VmName = "sriov".parse().unwrap();
    let profile = Profile {
        name: name.to_string(),
        agent_exec: true,
        vcpus: 2,
        memory: "2G".into(),
        kernel: Some(kernel.clone()),
        initrd: Some(initrd),
        cmdline: nested::l1_cmdline(None),
        qemu: st.qemu.clone(),
        ready: Ready::Agent,
        vsock: VsockChoice::Auto,
        // The lab is TCG (LAB.md fact 7): QEMU 10 with -cpu host passes the KVM probe on
        // these machines, but its guests never boot.
        accel: AccelChoice::Tcg,
        boot_timeout: 900,
        qemu_args,
        ..Profile::default()
    };
    let up = lifecycle::up(&h.env, &profile).await;
    if let Ok(r) = &up {
        h.track(r);
    }
    let rec = up.expect("L1 up with the agent answering");
    let booted = started.elapsed();
    let versions = stack::versions(&st.qemu, Some(&kernel), "seabios", &rec.accel.to_string());
    let script = lab::sriov_l1_script(1200);
    let reply = tokio::task::spawn_blocking(move || {
        let mut c =
            vfioctl::vm::guest::connect(&rec, Duration::from_secs(60)).expect("agent connect");
        c.exec(
            &["/bin/busybox", "sh", "-c", &script],
            Duration::from_secs(1500),
            1 << 20,
        )
        .expect("agent exec")
    })
    .await
    .unwrap();
    let total = started.elapsed();
    let _ = std::fs::write(
        Path::new(env!("CARGO_TARGET_TMPDIR")).join("shared-lab-sriov.log"),
        &reply.stdout,
    );
    let verdict = lab::sriov_verdict(&reply.stdout);
    eprintln!(
        "shared_lab::sriov: {versions:?}; initramfs {:.0} s, L1 ready at {:.0} s, total {:.0} s",
        built.as_secs_f64(),
        booted.as_secs_f64(),
        total.as_secs_f64()
    );
    match verdict {
        Ok(note) => eprintln!("shared_lab::sriov: PASS: {note}"),
        Err(why) => panic!(
            "{why}\n--- L1 output ---\n{}\n--- stderr ---\n{}",
            reply.stdout, reply.stderr
        ),
    }
    let down = lifecycle::down(&h.env, &name, Duration::from_secs(10)).await;
    assert!(down.is_ok(), "{down:?}");
}
