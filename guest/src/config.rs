//! Where the agent listens and what it may do, from (lowest priority first)
//! `/etc/vfioctl/agent.conf`, the kernel command line, and the agent's own arguments.
//!
//! | source | keys |
//! |---|---|
//! | `/etc/vfioctl/agent.conf` (written by `vfioctl rootfs build`) | `port=N`, `exec=0/1`, `listen=unix:PATH` |
//! | kernel command line | `vfioctl.port=N`, `vfioctl.exec=0/1`, `vfioctl.listen=unix:PATH`, `vfioctl.echo=PORT` |
//! | arguments | `--listen vsock[:PORT]`, `--listen unix:PATH`, `--exec`, `--no-exec`, `--modules FILE`, `--echo-port PORT`, `--token-file FILE`, `--handshake-timeout SECS` |
//!
//! `exec` needs two yeses: the image (`exec=1` in agent.conf, from the manifest's
//! `exec = true`) and the VM (fw_cfg `opt/vfioctl/exec` = `1`, which `vfioctl vm up
//! --agent-exec` sets, or `vfioctl.exec=1` on the kernel command line). `--exec` /
//! `--no-exec` on the agent's own command line decide alone (a service started by hand).
//! The secret every request must carry is read from `--token-file`, by default the fw_cfg
//! item [`vfioctl_common::proto::TOKEN_SYSFS`].

use std::time::Duration;

use vfioctl_common::proto::{DEFAULT_PORT, TOKEN_SYSFS};

/// The agent's configuration file inside the guest.
pub const CONF_FILE: &str = "/etc/vfioctl/agent.conf";
/// Kernel modules to load at start, one `PATH [params]` a line, in dependency order.
pub const MODULES_FILE: &str = "/etc/vfioctl/modules.load";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    Vsock { port: u32 },
    Unix { path: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: Listen,
    /// The image allows exec (`exec=1` in agent.conf).
    pub image_exec: bool,
    /// The VM asks for exec on the kernel command line (`vfioctl.exec=1`).
    pub cmdline_exec: bool,
    /// `--exec` / `--no-exec`: the agent's operator decides alone.
    pub exec_arg: Option<bool>,
    /// Where the per-VM secret is read from.
    pub token_file: String,
    /// How long a new connection may take to send its first complete request.
    pub handshake_timeout: Duration,
    /// The modules list to load; `None` to load nothing (service mode default).
    pub modules: Option<String>,
    /// A bare vsock echo port next to the agent (benchmarks compare the agent's round
    /// trip with it); off unless asked for.
    pub echo_port: Option<u32>,
}

impl Config {
    pub fn new(pid1: bool) -> Self {
        Self {
            listen: Listen::Vsock { port: DEFAULT_PORT },
            image_exec: false,
            cmdline_exec: false,
            exec_arg: None,
            token_file: TOKEN_SYSFS.into(),
            handshake_timeout: Duration::from_secs(10),
            modules: pid1.then(|| MODULES_FILE.to_string()),
            echo_port: None,
        }
    }

    /// Whether exec is on, given whether the VM asked over fw_cfg.
    pub fn exec(&self, fw_cfg_asks: bool) -> bool {
        self.exec_arg
            .unwrap_or(self.image_exec && (self.cmdline_exec || fw_cfg_asks))
    }

    fn set(&mut self, key: &str, value: &str, from_image: bool) -> Result<(), String> {
        match key {
            "port" => {
                let port = value
                    .parse()
                    .map_err(|_| format!("port {value:?} is not a number"))?;
                self.listen = Listen::Vsock { port };
            }
            "exec" => {
                let yes = matches!(value, "1" | "true" | "yes" | "on");
                if from_image {
                    self.image_exec = yes;
                } else {
                    self.cmdline_exec = yes;
                }
            }
            "listen" => self.listen = parse_listen(value)?,
            "modules" => self.modules = Some(value.to_string()),
            "echo" => {
                self.echo_port = Some(
                    value
                        .parse()
                        .map_err(|_| format!("echo port {value:?} is not a number"))?,
                )
            }
            _ => return Err(format!("unknown key {key:?}")),
        }
        Ok(())
    }

    /// `key=value` lines; `#` comments.
    pub fn apply_conf(&mut self, text: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_once('=') {
                Some((k, v)) => {
                    if let Err(e) = self.set(k.trim(), v.trim(), true) {
                        warnings.push(format!("{CONF_FILE}: {e}"));
                    }
                }
                None => warnings.push(format!("{CONF_FILE}: not key=value: {line:?}")),
            }
        }
        warnings
    }

    /// `vfioctl.KEY=VALUE` words of the kernel command line.
    pub fn apply_cmdline(&mut self, cmdline: &str) -> Vec<String> {
        let mut warnings = Vec::new();
        for word in cmdline.split_whitespace() {
            if let Some(kv) = word.strip_prefix("vfioctl.") {
                let (k, v) = kv.split_once('=').unwrap_or((kv, "1"));
                if let Err(e) = self.set(k, v, false) {
                    warnings.push(format!("kernel command line {word:?}: {e}"));
                }
            }
        }
        warnings
    }

    pub fn apply_args(&mut self, args: &[String]) -> Result<(), String> {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--listen" => {
                    let v = it.next().ok_or("--listen needs a value")?;
                    self.listen = parse_listen(v)?;
                }
                "--exec" => self.exec_arg = Some(true),
                "--no-exec" => self.exec_arg = Some(false),
                "--token-file" => {
                    self.token_file = it.next().ok_or("--token-file needs a file")?.clone()
                }
                "--handshake-timeout" => {
                    let v = it.next().ok_or("--handshake-timeout needs seconds")?;
                    let secs: f64 = v
                        .parse()
                        .ok()
                        .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 3600.0)
                        .ok_or_else(|| format!("--handshake-timeout {v:?}: 0 to 3600 seconds"))?;
                    self.handshake_timeout = Duration::from_secs_f64(secs);
                }
                "--modules" => {
                    self.modules = Some(it.next().ok_or("--modules needs a file")?.clone())
                }
                "--no-modules" => self.modules = None,
                "--echo-port" => {
                    let v = it.next().ok_or("--echo-port needs a port")?;
                    self.set("echo", v, false)?;
                }
                other => return Err(format!("unknown argument {other:?}; see --help")),
            }
        }
        Ok(())
    }
}

pub fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "vsock" {
        return Ok(Listen::Vsock { port: DEFAULT_PORT });
    }
    if let Some(p) = s.strip_prefix("vsock:") {
        let port = p
            .parse()
            .map_err(|_| format!("vsock port {p:?} is not a number"))?;
        return Ok(Listen::Vsock { port });
    }
    if let Some(path) = s.strip_prefix("unix:") {
        if path.is_empty() {
            return Err("unix: needs a path".into());
        }
        return Ok(Listen::Unix { path: path.into() });
    }
    Err(format!(
        "listen address {s:?}: expected vsock, vsock:PORT or unix:PATH"
    ))
}

pub const USAGE: &str = "\
vfioctl-agent: the vfioctl guest agent (PID 1 in a vfioctl initramfs, or a service)

usage: vfioctl-agent [--listen vsock[:PORT]|unix:PATH] [--exec|--no-exec]
                     [--modules FILE|--no-modules] [--echo-port PORT]
                     [--token-file FILE] [--handshake-timeout SECS]

Also configured by /etc/vfioctl/agent.conf (port=, exec=, listen=) and the kernel command
line (vfioctl.port=, vfioctl.exec=, vfioctl.listen=, vfioctl.echo=); arguments win.
Every request must carry the VM's secret, read from --token-file (default: the QEMU fw_cfg
item opt/vfioctl/token under /sys/firmware/qemu_fw_cfg, module qemu_fw_cfg).
Exec is off unless the image (agent.conf exec=1) and the VM (fw_cfg opt/vfioctl/exec=1 or
vfioctl.exec=1) both ask, or --exec is given. A connection that has not sent a complete
request within --handshake-timeout (default 10 s) is closed.
--echo-port starts a bare vsock echo server (for round-trip benchmarks). As PID 1 it mounts
/proc /sys /dev /tmp /run, loads /etc/vfioctl/modules.load, reaps children and powers off
on request.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_conf_cmdline_args() {
        let mut c = Config::new(true);
        assert_eq!(c.modules.as_deref(), Some(MODULES_FILE));
        assert!(c.apply_conf("# x\nport=2000\nexec=1\n").is_empty());
        assert_eq!(c.listen, Listen::Vsock { port: 2000 });
        // The image allows exec; without the VM asking it stays off.
        assert!(!c.exec(false));
        assert!(c.exec(true));
        let w = c.apply_cmdline("console=ttyS0 vfioctl.port=3000 vfioctl.exec=1 vfioctl.bogus=1");
        assert_eq!(w.len(), 1);
        assert_eq!(c.listen, Listen::Vsock { port: 3000 });
        assert!(c.exec(false));
        c.apply_args(&["--listen".into(), "unix:/tmp/a".into(), "--no-exec".into()])
            .unwrap();
        assert_eq!(
            c.listen,
            Listen::Unix {
                path: "/tmp/a".into()
            }
        );
        assert!(!c.exec(true));
        c.apply_args(&["--exec".into(), "--token-file".into(), "/t".into()])
            .unwrap();
        assert!(c.exec(false));
        assert_eq!(c.token_file, "/t");
        assert!(c
            .apply_args(&["--handshake-timeout".into(), "0".into()])
            .is_err());
        c.apply_args(&["--handshake-timeout".into(), "0.5".into()])
            .unwrap();
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
        assert!(c.apply_args(&["--frobnicate".into()]).is_err());
        assert!(parse_listen("tcp:1").is_err());
        assert!(Config::new(false).modules.is_none());
    }

    #[test]
    fn the_vm_alone_cannot_turn_exec_on() {
        // An image without exec (lab.toml): neither the command line nor fw_cfg enable it.
        let mut c = Config::new(true);
        c.apply_conf("exec=0\n");
        c.apply_cmdline("vfioctl.exec=1");
        assert!(!c.exec(true));
        // An image with exec (nvidia.toml) that the VM does not ask: off.
        let mut c = Config::new(true);
        c.apply_conf("exec=1\n");
        assert!(!c.exec(false));
    }
}
