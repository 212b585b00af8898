//! vfioctl guest agent: runs inside the VM as PID 1 of a vfioctl initramfs or as a service
//! under another init, and answers the host over AF_VSOCK (or a unix socket for tests) with
//! the protocol of `vfioctl_common::proto`.

mod config;
mod exec;
mod init;
mod ops;
mod reaper;
mod server;
mod sys;

use std::sync::Arc;
use std::time::Duration;

use config::{Config, Listen};
use vfioctl_common::SysRoot;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{}", config::USAGE);
        return;
    }
    if args.iter().any(|a| a == "--version" || a == "-V") {
        println!(
            "vfioctl-agent {} (protocol {})",
            env!("CARGO_PKG_VERSION"),
            vfioctl_common::proto::PROTOCOL_VERSION
        );
        return;
    }
    // Before any thread exists, so every thread inherits the mask and only the reaper
    // collects SIGCHLD.
    sys::block_sigchld();
    let pid1 = std::process::id() == 1;
    if let Err(e) = run(pid1, &args) {
        eprintln!("vfioctl-agent: {e}");
        if pid1 {
            // PID 1 must not exit (the kernel would panic): power off instead.
            let e = sys::reboot(true);
            eprintln!("vfioctl-agent: reboot(2): {e}");
            loop {
                std::thread::park();
            }
        }
        std::process::exit(1);
    }
}

fn run(pid1: bool, args: &[String]) -> Result<(), String> {
    if pid1 {
        for e in init::mount_all() {
            eprintln!("vfioctl-agent: {e}");
        }
    }
    let mut cfg = Config::new(pid1);
    let mut warnings = Vec::new();
    if let Ok(t) = std::fs::read_to_string(config::CONF_FILE) {
        warnings.extend(cfg.apply_conf(&t));
    }
    if let Ok(t) = std::fs::read_to_string("/proc/cmdline") {
        warnings.extend(cfg.apply_cmdline(&t));
    }
    cfg.apply_args(args)?;
    for w in warnings {
        eprintln!("vfioctl-agent: warning: {w}");
    }
    reaper::start();
    let modules = cfg
        .modules
        .as_deref()
        .map(init::load_modules)
        .unwrap_or_default();

    let listener = match &cfg.listen {
        Listen::Vsock { port } => {
            // The vsock transport may still be probing; retry for a while.
            let mut tries = 0;
            loop {
                match sys::vsock_listen(*port) {
                    Ok(fd) => break server::Listener::Vsock(fd),
                    Err(e) if tries < 100 => {
                        if tries == 0 {
                            eprintln!("vfioctl-agent: vsock port {port}: {e}; retrying");
                        }
                        tries += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Err(e) => return Err(format!("listen on vsock port {port}: {e}")),
                }
            }
        }
        Listen::Unix { path } => {
            let _ = std::fs::remove_file(path);
            server::Listener::Unix(
                std::os::unix::net::UnixListener::bind(path)
                    .map_err(|e| format!("listen on unix socket {path}: {e}"))?,
            )
        }
    };
    if let Some(port) = cfg.echo_port {
        match sys::vsock_listen(port) {
            Ok(fd) => server::echo(fd),
            Err(e) => eprintln!("vfioctl-agent: echo port {port}: {e}"),
        }
    }
    let state = Arc::new(ops::State::new(SysRoot::host(), pid1, cfg, modules));
    let secret = match state.token() {
        Ok(_) => "secret loaded".to_string(),
        Err(e) => format!("no secret yet: {e}"),
    };
    eprintln!(
        "vfioctl-agent {} ready on {:?} (pid1 {pid1}, exec {}, {secret})",
        env!("CARGO_PKG_VERSION"),
        state.cfg.listen,
        state.exec_enabled()
    );
    server::serve(listener, state)
}
