//! The vfioctl-built base kernel under the project's own VM and agent: `vfioctl::vm`
//! starts QEMU (TCG here) with the agent initramfs from `vfioctl rootfs build` (modules
//! from the built kernel's tree: the vsock/virtio ones are built in and skipped), and the
//! guest is ready when the agent answers over vsock. CI tier; skips loudly without
//! linux-source, QEMU, vhost-device-vsock or the static agent.

mod kernel_support;

use std::time::Duration;

use vfioctl::agent::AgentClient;
use vfioctl::rootfs::{build as rootfs_build, BuildOptions};
use vfioctl::vm::{lifecycle, VmState};
use vfioctl_testkit::lab::{Harness, Lab};
use vfioctl_testkit::{build, prereq};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_kernel_runs_the_agent_under_vm_up() {
    let lab = vfioctl_testkit::require!(Lab::get());
    vfioctl_testkit::require!(kernel_support::build_prerequisites());
    let built = tokio::task::spawn_blocking(|| kernel_support::build(&[], None))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("kernel build failed: {e}"));
    let m = built.manifest.clone();
    let h = Harness::new("kernel_vm");
    let initrd = h.env.base.join("agent.cpio.gz");
    rootfs_build(&BuildOptions {
        manifest: prereq::repo().join("rootfs/lab.toml"),
        kernel_modules: Some(built.out.clone()),
        kver: Some(m.kernel_release.clone()),
        out: initrd.clone(),
        agent: Some(build::static_agent()),
        ..Default::default()
    })
    .unwrap();
    let mut profile = lab.agent_profile("kv", initrd);
    profile.kernel = Some(m.artefacts.vmlinuz.clone());
    let up = lifecycle::up(&h.env, &profile).await;
    if let Ok(r) = &up {
        h.track(r);
    }
    let rec = match up {
        Ok(r) => r,
        Err(e) => {
            h.keep_logs();
            panic!("vm up with the built kernel: {e}");
        }
    };
    assert_eq!(rec.state, VmState::Ready);
    let (tr, token) = vfioctl::vm::guest::access(&rec).expect("agent transport and secret");
    let release = m.kernel_release.clone();
    tokio::task::spawn_blocking(move || {
        let mut c =
            AgentClient::connect(&tr, &token, Duration::from_secs(60)).expect("agent answers");
        let hello = c.hello().unwrap();
        assert!(hello.pid1, "the agent is the guest's init");
        assert_eq!(hello.kernel, release);
        let d = c.list_devices().unwrap();
        // the vsock device the agent is talking over, bound to virtio-pci
        assert!(d.devices.iter().any(|x| x.vendor == 0x1af4
            && x.device == 0x1053
            && x.driver.as_deref() == Some("virtio-pci")));
    })
    .await
    .unwrap();
    lifecycle::down(&h.env, &"kv".parse().unwrap(), Duration::from_secs(30))
        .await
        .unwrap();
}
