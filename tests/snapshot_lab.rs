//! `vfioctl snapshot` inside a real kernel with an IOMMU: the bind lab's q35 guest
//! (intel-iommu, an e1000e alone in its group, two e1000 behind a pcie-pci-bridge, an
//! e1000e carrying the default route; tests/bind_lab.rs, LAB.md fact 2) runs the static
//! vfioctl through the agent.
//!
//! In two states (every device on its host driver; then the e1000e and the e1000 pair on
//! vfio-pci) the guest takes a `.tar.zst` snapshot, which comes back to this machine. Then
//! every command the snapshot recorded is run again live in the guest and, here, with
//! `--root` pointed at the unpacked snapshot: exit status and standard output must be
//! byte-identical. The compressed sizes are printed.
//!
//! `VFIOCTL_UPDATE_SNAPSHOT_FIXTURES=1` also writes the two snapshots to
//! `tests/fixtures/lab-iommu-host-drivers` and `tests/fixtures/lab-iommu-vfio-bound`
//! (replayed by tests/snapshot_fixtures.rs on every run).
//!
//! Skipped loudly (not passed; a failure under VFIOCTL_REQUIRE_LAB=1) when QEMU, the lab
//! kernel or vhost-device-vsock is missing.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vfioctl::agent::{AgentClient, Transport};
use vfioctl_common::proto::Token;

/// The guest agent: its transport and the VM's secret.
type Agent = (Transport, Token);
use vfioctl::vm::lifecycle;
use vfioctl::vm::profile::{AccelChoice, Profile, Ready, VsockChoice};
use vfioctl_common::proto::ExecReply;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn exec(t: &Agent, argv: &[&str]) -> ExecReply {
    let mut c = AgentClient::connect(&t.0, &t.1, Duration::from_secs(60)).expect("agent connect");
    c.exec(argv, Duration::from_secs(600), 1 << 20)
        .expect("agent exec")
}

fn sh(t: &Agent, script: &str) -> ExecReply {
    let s = format!("export PATH=/bin:/sbin:/usr/bin:/usr/sbin; {script}");
    let r = exec(t, &["/bin/busybox", "sh", "-c", &s]);
    assert!(
        r.success() && !r.stdout_truncated,
        "guest `{script}`: {r:?}"
    );
    r
}

/// Take a snapshot in the guest, bring it here, replay each recorded command both live in
/// the guest and here against the snapshot. Returns the compressed size.
fn snapshot_and_compare(t: &Agent, name: &str, work: &Path) -> u64 {
    let r = sh(t, &format!("vfioctl --json snapshot /tmp/{name}.tar.zst"));
    let report: serde_json::Value = serde_json::from_str(&r.stdout).expect("snapshot report");
    assert_eq!(
        report["identical"], true,
        "{name}: the guest's own replay: {report:#}"
    );
    let b64 = sh(t, &format!("base64 /tmp/{name}.tar.zst")).stdout;
    let file = work.join(format!("{name}.tar.zst"));
    let mut child = Command::new("base64")
        .args(["-d"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&file).unwrap())
        .spawn()
        .expect("base64 -d");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b64.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success());
    let size = std::fs::metadata(&file).unwrap().len();
    assert_eq!(Some(size), report["compressed_bytes"].as_u64(), "{name}");

    let opened = vfioctl::snapshot::open(&file).expect("open the guest's snapshot here");
    assert!(
        opened.meta.commands.len() >= 10,
        "{name}: {:?}",
        opened.meta
    );
    for c in &opened.meta.commands {
        let mut argv = vec!["/bin/vfioctl", "--json"];
        argv.extend(c.args.iter().map(String::as_str));
        let live = exec(t, &argv);
        assert!(
            !live.timed_out && !live.stdout_truncated,
            "{argv:?}: {live:?}"
        );
        let here = Command::new(env!("CARGO_BIN_EXE_vfioctl"))
            .arg("--root")
            .arg(&opened.dir)
            .arg("--json")
            .args(&c.args)
            .env_remove("VFIOCTL_ROOT")
            .output()
            .unwrap();
        assert_eq!(
            live.exit_code,
            here.status.code(),
            "{name} {argv:?}: guest {live:?}\nhere stderr: {}",
            String::from_utf8_lossy(&here.stderr)
        );
        assert_eq!(
            live.stdout,
            String::from_utf8_lossy(&here.stdout),
            "{name} {argv:?}"
        );
        assert_eq!(live.stdout, c.stdout, "{name} {argv:?}: recorded vs live");
    }
    if std::env::var("VFIOCTL_UPDATE_SNAPSHOT_FIXTURES").as_deref() == Ok("1") {
        let dest = repo()
            .join("tests/fixtures")
            .join(format!("lab-iommu-{name}"));
        if dest.join("SNAPSHOT.json").is_file() {
            std::fs::remove_dir_all(&dest).unwrap();
        }
        let st = Command::new("cp")
            .arg("-a")
            .arg(&opened.dir)
            .arg(&dest)
            .status()
            .unwrap();
        assert!(st.success());
        println!("wrote {}", dest.display());
    }
    size
}

fn setup_fields(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .lines()
        .find_map(|l| l.trim_end_matches('\r').strip_prefix("@@ setup "))
        .expect("@@ setup line")
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lab_guest_snapshots_replay_here_exactly() {
    const TEST: &str = "snapshot_lab";
    let lab = vfioctl_testkit::require!(common::Lab::get());
    let h = common::Harness::new(TEST);
    let work = tempfile::tempdir().unwrap();
    let initrd = lab.bind_lab_initramfs(work.path(), &repo().join("tests/lab/snapshot-guest.sh"));
    let profile = Profile {
        name: "snaplab".into(),
        vcpus: 1,
        memory: "768M".into(),
        kernel: Some(lab.kernel.clone()),
        initrd: Some(initrd),
        cmdline: "console=ttyS0 panic=-1 intel_iommu=on no_timer_check".into(),
        ready: Ready::Agent,
        vsock: VsockChoice::Auto,
        // The lab is TCG (LAB.md fact 7): under load the KVM probe has passed here and the
        // guest then never booted.
        accel: AccelChoice::Tcg,
        // TCG on a loaded 2-core machine has taken more than 300 s to boot this guest.
        boot_timeout: 900,
        qemu_args: vfioctl_testkit::lab::bind_lab_topology(),
        // The image allows exec (lab-vfio.toml) and this VM asks for it.
        agent_exec: true,
        ..Profile::default()
    };
    let up = lifecycle::up(&h.env, &profile).await;
    if let Ok(r) = &up {
        h.track(r);
    }
    let rec = up.expect("vm up with the agent answering");
    let t: Agent = vfioctl::vm::guest::access(&rec).expect("agent transport and secret");
    let dir = work.path().to_path_buf();
    let sizes = tokio::task::spawn_blocking(move || {
        sh(&t, "/bin/busybox --install -s /bin 2>/dev/null; true");
        let setup = setup_fields(&sh(&t, "sh /lab.sh 2>&1").stdout);
        let host_drivers = snapshot_and_compare(&t, "host-drivers", &dir);
        let (e, p1) = (&setup["e"], &setup["p1"]);
        sh(&t, &format!("vfioctl bind {e} && vfioctl bind {p1}"));
        let bound = snapshot_and_compare(&t, "vfio-bound", &dir);
        sh(&t, "vfioctl restore --all");
        (host_drivers, bound)
    })
    .await
    .unwrap();
    println!(
        "lab guest snapshots: {} bytes (host drivers), {} bytes (vfio-pci bound), zstd-compressed",
        sizes.0, sizes.1
    );
    lifecycle::down(&h.env, &"snaplab".parse().unwrap(), Duration::from_secs(5))
        .await
        .expect("vm down");
}
