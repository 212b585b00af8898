//! Where the agent listens and what it may do, from (lowest priority first)
//! `/etc/vfioctl/agent.conf`, the kernel command line, and the agent's own arguments.
//!
//! | source | keys |
//! |---|---|
//! | `/etc/vfioctl/agent.conf` (written by `vfioctl rootfs build`) | `port=N`, `exec=0/1`, `listen=unix:PATH` |
//! | kernel command line | `vfioctl.port=N`, `vfioctl.exec=0/1`, `vfioctl.listen=unix:PATH`, `vfioctl.echo=PORT` |
//! | arguments | `--listen vsock[:PORT]`, `--listen unix:PATH`, `--exec`, `--no-exec`, `--modules FILE`, `--echo-port PORT` |

use vfioctl_common::proto::DEFAULT_PORT;

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
    pub exec: bool,
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
            exec: false,
            modules: pid1.then(|| MODULES_FILE.to_string()),
            echo_port: None,
        }
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "port" => {
                let port = value
                    .parse()
                    .map_err(|_| format!("port {value:?} is not a number"))?;
                self.listen = Listen::Vsock { port };
            }
            "exec" => self.exec = matches!(value, "1" | "true" | "yes" | "on"),
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
                    if let Err(e) = self.set(k.trim(), v.trim()) {
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
                if let Err(e) = self.set(k, v) {
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
                "--exec" => self.exec = true,
                "--no-exec" => self.exec = false,
                "--modules" => {
                    self.modules = Some(it.next().ok_or("--modules needs a file")?.clone())
                }
                "--no-modules" => self.modules = None,
                "--echo-port" => {
                    let v = it.next().ok_or("--echo-port needs a port")?;
                    self.set("echo", v)?;
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

Also configured by /etc/vfioctl/agent.conf (port=, exec=, listen=) and the kernel command
line (vfioctl.port=, vfioctl.exec=, vfioctl.listen=, vfioctl.echo=); arguments win.
--echo-port starts a bare vsock echo server (for round-trip benchmarks). Exec is off unless
enabled. As PID 1 it mounts /proc /sys /dev /tmp /run, loads /etc/vfioctl/modules.load,
reaps children and powers off on request.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence_conf_cmdline_args() {
        let mut c = Config::new(true);
        assert_eq!(c.modules.as_deref(), Some(MODULES_FILE));
        assert!(c.apply_conf("# x\nport=2000\nexec=1\n").is_empty());
        assert_eq!(c.listen, Listen::Vsock { port: 2000 });
        assert!(c.exec);
        let w = c.apply_cmdline("console=ttyS0 vfioctl.port=3000 vfioctl.exec=0 vfioctl.bogus=1");
        assert_eq!(w.len(), 1);
        assert_eq!(c.listen, Listen::Vsock { port: 3000 });
        assert!(!c.exec);
        c.apply_args(&["--listen".into(), "unix:/tmp/a".into(), "--exec".into()])
            .unwrap();
        assert_eq!(
            c.listen,
            Listen::Unix {
                path: "/tmp/a".into()
            }
        );
        assert!(c.exec);
        assert!(c.apply_args(&["--frobnicate".into()]).is_err());
        assert!(parse_listen("tcp:1").is_err());
        assert!(Config::new(false).modules.is_none());
    }
}
