//! PID 1 duties: the pseudo file systems, kernel modules, power off.

use vfioctl_common::proto::ModuleLoad;

use crate::sys;

/// Mount what a minimal initramfs lacks. Failures are reported, not fatal: the agent
/// should still answer so the host can see what went wrong.
pub fn mount_all() -> Vec<String> {
    let mut errs = Vec::new();
    for (src, dst, fs, data) in [
        ("proc", "/proc", "proc", None),
        ("sysfs", "/sys", "sysfs", None),
        ("devtmpfs", "/dev", "devtmpfs", Some("mode=0755")),
        ("devpts", "/dev/pts", "devpts", None),
        ("tmpfs", "/dev/shm", "tmpfs", None),
        ("tmpfs", "/tmp", "tmpfs", None),
        ("tmpfs", "/run", "tmpfs", Some("mode=0755")),
    ] {
        if let Err(e) = sys::mount(src, dst, fs, data) {
            errs.push(format!("mount {fs} on {dst}: {e}"));
        }
    }
    // The toolkit's CDI directory and /var/run, as a distribution would have them.
    let _ = std::fs::create_dir_all("/run/cdi");
    if !std::path::Path::new("/var/run").exists() {
        let _ = std::fs::create_dir_all("/var");
        let _ = std::os::unix::fs::symlink("/run", "/var/run");
    }
    if std::env::var_os("PATH").is_none() {
        std::env::set_var(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    }
    errs
}

/// Parse the modules list: `PATH [params...]` a line, `#` comments.
pub fn parse_modules(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.split_once(char::is_whitespace) {
            Some((p, params)) => (p.to_string(), params.trim().to_string()),
            None => (l.to_string(), String::new()),
        })
        .collect()
}

/// Load the modules in the listed (dependency) order.
pub fn load_modules(list_file: &str) -> Vec<ModuleLoad> {
    let text = match std::fs::read_to_string(list_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            return vec![ModuleLoad {
                path: list_file.into(),
                result: format!("cannot read module list: {e}"),
            }]
        }
    };
    parse_modules(&text)
        .into_iter()
        .map(|(path, params)| {
            let result = match std::fs::File::open(&path) {
                Err(e) => format!("open: {e}"),
                Ok(f) => match sys::finit_module(&f, &params) {
                    Ok(()) => "loaded".into(),
                    Err(e) if e.raw_os_error() == Some(libc::EEXIST) => "already loaded".into(),
                    Err(e) => format!("finit_module: {e}"),
                },
            };
            eprintln!("vfioctl-agent: module {path}: {result}");
            ModuleLoad { path, result }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn module_list() {
        let v = super::parse_modules("# order\n/lib/a.ko\n\n/lib/b.ko  x=1 y=2\n");
        assert_eq!(
            v,
            vec![
                ("/lib/a.ko".to_string(), String::new()),
                ("/lib/b.ko".to_string(), "x=1 y=2".to_string())
            ]
        );
    }
}
