//! The QEMU command line of the serial bind lab (`scripts/lab-bind`), built by vfioctl's
//! own argv builder (`vfioctl::vm::argv::qemu_argv`) on the bind lab topology of
//! `vfioctl_testkit::lab::bind_lab_topology` (the machine `tests/bind_lab.rs` boots): no
//! vsock and no agent, the serial console in `OUT/serial.log`, QMP and the pid file in OUT.
//!
//!   lab-bind-argv KERNEL INITRD OUT
//!
//! Prints one argument per line (`mapfile -t` reads it back).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vfioctl::vm::accel::Accel;
use vfioctl::vm::argv::{qemu_argv, Launch};
use vfioctl::vm::profile::HotplugMode;
use vfioctl::vm::vsock::VsockBackend;
use vfioctl::vm::{ports, Firmware, PhysBits};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [kernel, initrd, out] = args.as_slice() else {
        eprintln!("usage: lab-bind-argv KERNEL INITRD OUT");
        return ExitCode::from(2);
    };
    let qemu = match vfioctl_testkit::prereq::qemu() {
        Ok(q) => q,
        Err(m) => {
            eprintln!("lab-bind-argv: {m}");
            return ExitCode::from(2);
        }
    };
    let memory = 768 << 20;
    let plan = match ports::plan(&[], 0, Firmware::Seabios, memory, PhysBits::TCG) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("lab-bind-argv: {e}");
            return ExitCode::from(1);
        }
    };
    let out = Path::new(out);
    let launch = Launch {
        name: "lab-bind".into(),
        qemu,
        accel: Accel::Tcg,
        vcpus: 1,
        memory,
        kernel: Some(PathBuf::from(kernel)),
        initrd: Some(PathBuf::from(initrd)),
        disk: None,
        cmdline: "console=ttyS0 intel_iommu=on no_timer_check panic=-1 quiet loglevel=4".into(),
        firmware: Firmware::Seabios,
        ovmf_code: PathBuf::new(),
        ovmf_vars: PathBuf::new(),
        hotplug: HotplugMode::Acpi,
        plan,
        vsock: VsockBackend::None,
        cold: Vec::new(),
        qmp_socket: out.join("qmp.sock"),
        serial_log: out.join("serial.log"),
        pid_file: out.join("qemu.pid"),
        agent_token: None,
        agent_exec: false,
        extra: vfioctl_testkit::lab::bind_lab_topology(),
        vfio_backend: vfioctl::shared::VfioBackend::Group,
    };
    for a in qemu_argv(&launch) {
        println!("{a}");
    }
    ExitCode::SUCCESS
}
