//! The one prerequisite mechanism of every lab test.
//!
//! A lab test needs things this crate cannot build: QEMU, busybox, vhost-device-vsock,
//! the guest kernel, linux-source, the NVIDIA packages. Each check here returns the thing
//! or a [`Missing`] that names it and the setup step that provides it. A test that lacks
//! one calls [`skip`] (or uses [`require!`](crate::require)), which
//!
//! - under `VFIOCTL_REQUIRE_LAB=1` (set by `scripts/test` and CI) **fails** the test, so a
//!   green run means the lab tier ran;
//! - otherwise skips loudly: one machine-readable line
//!   `VFIOCTL-SKIP test=<name> missing=<what> fix=<step> detail=<why>` on stderr (written
//!   past libtest's output capture, so it shows for a passing test too), and the same
//!   line appended to the file named by `$VFIOCTL_SKIP_LOG`, so a test runner can list
//!   every skip at the end.
//!
//! ```no_run
//! # fn main() {
//! let qemu = vfioctl_testkit::require!(vfioctl_testkit::prereq::qemu());
//! # let _ = qemu;
//! # }
//! ```

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Set to `1` to turn every skip into a failure naming the missing prerequisite.
pub const REQUIRE_ENV: &str = "VFIOCTL_REQUIRE_LAB";
/// A file every skip line is appended to (one line per skip).
pub const SKIP_LOG_ENV: &str = "VFIOCTL_SKIP_LOG";
/// The first word of a skip line.
pub const SKIP_TAG: &str = "VFIOCTL-SKIP";

/// The setup step that installs the lab (packages, guest kernel, vhost-device-vsock).
pub const SETUP: &str = "scripts/setup";
/// The setup step that also fetches the NVIDIA packages.
pub const SETUP_NVIDIA: &str = "scripts/setup --nvidia";

/// A prerequisite that is not here: what it is, the step that provides it, and why the
/// check judged it missing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Missing {
    /// What is missing, short: `qemu-system-x86_64`, `lab-kernel`, `linux-source`.
    pub what: String,
    /// The step that provides it: [`SETUP`], [`SETUP_NVIDIA`], an install command.
    pub fix: String,
    /// Where it was looked for, or the error met while preparing it.
    pub detail: String,
}

impl Missing {
    /// `what` is missing; `fix` provides it.
    pub fn new(what: impl Into<String>, fix: impl Into<String>) -> Missing {
        Missing {
            what: what.into(),
            fix: fix.into(),
            detail: String::new(),
        }
    }

    /// The same, with where it was looked for or what failed.
    pub fn detail(mut self, detail: impl Into<String>) -> Missing {
        self.detail = detail.into();
        self
    }

    /// The machine-readable skip line of `test` (no newline).
    pub fn skip_line(&self, test: &str) -> String {
        let mut s = format!(
            "{SKIP_TAG} test={} missing={} fix={}",
            quote(test),
            quote(&self.what),
            quote(&self.fix)
        );
        if !self.detail.is_empty() {
            s.push_str(&format!(" detail={}", quote(&self.detail)));
        }
        s
    }
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} is missing", self.what)?;
        if !self.detail.is_empty() {
            write!(f, " ({})", self.detail)?;
        }
        write!(f, "; provided by: {}", self.fix)
    }
}

/// A value as one token: bare when it has no space, quote or backslash, else in double
/// quotes with `"`, `\` and control characters escaped.
fn quote(v: &str) -> String {
    if !v.is_empty()
        && !v
            .chars()
            .any(|c| c.is_whitespace() || c == '"' || c == '\\')
    {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('"');
    for c in v.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            c if c.is_control() => s.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => s.push(c),
        }
    }
    s.push('"');
    s
}

/// One parsed skip line: its `key=value` fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkipLine {
    /// The fields, unquoted.
    pub fields: Vec<(String, String)>,
}

impl SkipLine {
    /// Parse a line written by [`Missing::skip_line`]; `None` for any other line.
    pub fn parse(line: &str) -> Option<SkipLine> {
        let rest = line.trim_end().strip_prefix(SKIP_TAG)?.strip_prefix(' ')?;
        let mut fields = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek() == Some(&' ') {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => match chars.next()? {
                            'n' => value.push('\n'),
                            't' => value.push('\t'),
                            'u' => {
                                let hex: String = chars
                                    .by_ref()
                                    .skip_while(|c| *c == '{')
                                    .take_while(|c| *c != '}')
                                    .collect();
                                value.push(char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?);
                            }
                            c => value.push(c),
                        },
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(c) = chars.peek().copied() {
                    if c == ' ' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            fields.push((key, value));
        }
        Some(SkipLine { fields })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether skips are failures here (`VFIOCTL_REQUIRE_LAB=1`).
pub fn required() -> bool {
    std::env::var(REQUIRE_ENV).as_deref() == Ok("1")
}

/// The running test's name: `module` (the test crate, from `module_path!()`) and the
/// test function, which libtest names the test's thread after.
pub fn test_name(module: &str) -> String {
    match std::thread::current().name() {
        Some(t) if t != "main" && !t.is_empty() => {
            let crate_name = module.split("::").next().unwrap_or(module);
            format!("{crate_name}::{t}")
        }
        _ => module.to_string(),
    }
}

/// `test` cannot run because `missing` is not here: fail under `VFIOCTL_REQUIRE_LAB=1`,
/// else print and log the skip line. The caller returns from the test after it.
#[track_caller]
pub fn skip(test: &str, missing: &Missing) {
    let log = std::env::var_os(SKIP_LOG_ENV).map(PathBuf::from);
    skip_with(test, missing, required(), log.as_deref());
}

/// [`skip`] with the environment's two answers given (for tests of this mechanism).
#[track_caller]
pub fn skip_with(test: &str, missing: &Missing, required: bool, log: Option<&Path>) {
    if required {
        panic!(
            "{test} cannot run and {REQUIRE_ENV}=1: {missing}\n\
             (unset {REQUIRE_ENV} to let it skip outside CI)"
        );
    }
    let line = skip_line_logged(test, missing, log);
    // Past libtest's capture (it only captures the print macros), so a skip is seen even
    // when the test counts as passed by cargo.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn skip_line_logged(test: &str, missing: &Missing, log: Option<&Path>) -> String {
    let line = missing.skip_line(test);
    if let Some(log) = log {
        // One write of one line with O_APPEND: lines from parallel test processes do not
        // interleave.
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = written {
            panic!(
                "{test}: cannot append the skip line to {SKIP_LOG_ENV}={}: {e}",
                log.display()
            );
        }
    }
    line
}

/// Unwrap a prerequisite check or skip the test: `Ok(v)` gives `v`; `Err(missing)` calls
/// [`skip`] with the running test's name and returns from the test.
#[macro_export]
macro_rules! require {
    ($check:expr) => {
        match $check {
            ::std::result::Result::Ok(v) => v,
            ::std::result::Result::Err(missing) => {
                $crate::prereq::skip(&$crate::prereq::test_name(module_path!()), &missing);
                return;
            }
        }
    };
}

/// For a prerequisite that only part of a test needs: `Some(v)`, or `None` after
/// [`skip`] (so the part is logged as skipped, and fails under `VFIOCTL_REQUIRE_LAB=1`);
/// the rest of the test goes on.
#[macro_export]
macro_rules! available {
    ($check:expr) => {
        match $check {
            ::std::result::Result::Ok(v) => ::std::option::Option::Some(v),
            ::std::result::Result::Err(missing) => {
                $crate::prereq::skip(&$crate::prereq::test_name(module_path!()), &missing);
                ::std::option::Option::None
            }
        }
    };
}

/// The lab cache: `$VFIOCTL_LAB`, else `.lab` in the checkout.
pub fn lab_dir() -> PathBuf {
    std::env::var_os("VFIOCTL_LAB")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".lab"))
}

/// The checkout (the workspace root).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit/ lives in the workspace root")
        .to_path_buf()
}

/// `prog` on `$PATH` or in `~/.cargo/bin` (where `cargo install` puts
/// vhost-device-vsock), as an executable file.
pub fn find_program(prog: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs: Vec<PathBuf> =
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()).collect();
    if let Some(h) = std::env::var_os("HOME") {
        dirs.push(Path::new(&h).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(prog)).find(|p| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// A program the test runs, provided by `fix`.
pub fn program(prog: &str, fix: &str) -> Result<PathBuf, Missing> {
    find_program(prog)
        .ok_or_else(|| Missing::new(prog, fix).detail("not on PATH nor in ~/.cargo/bin"))
}

/// `qemu-system-x86_64` (package qemu-system-x86).
pub fn qemu() -> Result<PathBuf, Missing> {
    program("qemu-system-x86_64", SETUP)
}

/// `vhost-device-vsock` (the vsock backend of the lab: docs/LAB.md fact 5).
pub fn vhost_device_vsock() -> Result<PathBuf, Missing> {
    program("vhost-device-vsock", SETUP)
}

/// A vsock backend for the lab's VMs: `/dev/vhost-vsock` that opens read-write (a real
/// host), else vhost-device-vsock (these machines: docs/LAB.md fact 5).
pub fn vsock_backend() -> Result<(), Missing> {
    let vhost = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-vsock")
        .is_ok();
    if vhost {
        return Ok(());
    }
    vhost_device_vsock()
        .map(|_| ())
        .map_err(|m| m.detail("no usable /dev/vhost-vsock either; not on PATH nor in ~/.cargo/bin"))
}

/// The static busybox (package busybox-static) that lab initramfs images run.
pub fn busybox() -> Result<PathBuf, Missing> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Missing::new("busybox", SETUP).detail("no /bin/busybox (package busybox-static)")
        })
}

/// The guest kernel of the lab: `$VFIOCTL_LAB/kernel/current` with its `vmlinuz` and
/// `lib/modules` (Debian's kernel, fetched and depmod'ed by scripts/setup).
pub fn lab_kernel() -> Result<PathBuf, Missing> {
    let dir = lab_dir().join("kernel/current");
    if dir.join("vmlinuz").is_file() && dir.join("lib/modules").is_dir() {
        Ok(dir)
    } else {
        Err(Missing::new("lab-kernel", SETUP)
            .detail(format!("no vmlinuz and lib/modules in {}", dir.display())))
    }
}

/// What `make tinyconfig`/`olddefconfig` and a kernel build run: make, gcc, flex, bison.
pub fn kernel_build_tools() -> Result<(), Missing> {
    for t in ["make", "gcc", "flex", "bison"] {
        program(t, SETUP)?;
    }
    Ok(())
}

/// Root: what runs Kata's loaders in a private mount namespace, or binds devices.
pub fn root() -> Result<(), Missing> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        Ok(())
    } else {
        Err(Missing::new("root", "run the tests as root").detail(format!("euid {uid}")))
    }
}

/// QEMU 10 of the modern stack (docs/LAB.md fact 8): `$VFIOCTL_LAB/stacks/qemu-10`.
pub fn modern_qemu() -> Result<PathBuf, Missing> {
    let q = lab_dir().join("stacks/qemu-10/usr/bin/qemu-system-x86_64");
    if q.is_file() {
        Ok(q)
    } else {
        Err(Missing::new("qemu-10", "scripts/setup --modern").detail(format!("no {}", q.display())))
    }
}

/// Kata's real configuration loaders: their `check` script in `$VFIOCTL_KATA_LOADERS`,
/// else `shared/kata-loaders` beside the checkout; it needs root (a private mount
/// namespace per loader).
pub fn kata_loaders() -> Result<PathBuf, Missing> {
    let dir = std::env::var_os("VFIOCTL_KATA_LOADERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/kata-loaders"));
    let check = dir.join("check");
    if !check.is_file() {
        return Err(Missing::new(
            "kata-loaders",
            "set VFIOCTL_KATA_LOADERS to the kata-loaders directory (or put shared/kata-loaders beside the checkout)",
        )
        .detail(format!("no {}", check.display())));
    }
    root().map_err(|m| Missing {
        what: "kata-loaders as root".into(),
        ..m
    })?;
    Ok(check)
}

/// `lspci` (package pciutils).
pub fn lspci() -> Result<PathBuf, Missing> {
    program("lspci", SETUP)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_line_round_trips_through_parse() {
        let m = Missing::new("linux-source", SETUP_NVIDIA)
            .detail("/usr/src/linux-source-6.1.tar.xz: \"gone\"\n\\ twice");
        let line = m.skip_line("kernel_boot::base");
        assert!(line.starts_with("VFIOCTL-SKIP test=kernel_boot::base missing=linux-source fix=\"scripts/setup --nvidia\" detail=\""), "{line}");
        assert!(!line.contains('\n'));
        let p = SkipLine::parse(&line).unwrap();
        assert_eq!(p.get("test"), Some("kernel_boot::base"));
        assert_eq!(p.get("missing"), Some("linux-source"));
        assert_eq!(p.get("fix"), Some(SETUP_NVIDIA));
        assert_eq!(p.get("detail"), Some(m.detail.as_str()));
        assert_eq!(SkipLine::parse("SKIPPED: old style"), None);
    }

    #[test]
    fn skip_appends_one_line_per_skip_to_the_log() {
        let dir = std::env::temp_dir().join(format!("vfioctl-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips.log");
        let _ = std::fs::remove_file(&log);
        skip_with(
            "a::one",
            &Missing::new("qemu-system-x86_64", SETUP),
            false,
            Some(&log),
        );
        skip_with(
            "a::two",
            &Missing::new("busybox", SETUP).detail("x y"),
            false,
            Some(&log),
        );
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<_> = text.lines().filter_map(SkipLine::parse).collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0].get("test"), Some("a::one"));
        assert_eq!(lines[1].get("missing"), Some("busybox"));
        assert_eq!(lines[1].get("detail"), Some("x y"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn required_skip_fails_naming_the_prerequisite_and_its_fix() {
        let m = Missing::new("vhost-device-vsock", SETUP).detail("not on PATH");
        let err = std::panic::catch_unwind(|| skip_with("bind_lab::t", &m, true, None))
            .expect_err("a required skip must fail");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("bind_lab::t"), "{msg}");
        assert!(msg.contains("vhost-device-vsock is missing"), "{msg}");
        assert!(msg.contains("provided by: scripts/setup"), "{msg}");
        assert!(msg.contains("VFIOCTL_REQUIRE_LAB=1"), "{msg}");
    }

    #[test]
    fn test_name_is_the_crate_and_the_test_function() {
        // libtest names this thread after the test (unless run on the main thread).
        let n = test_name(module_path!());
        assert!(n.starts_with("vfioctl_testkit::"), "{n}");
    }

    #[test]
    fn a_missing_program_names_itself() {
        let e = program("vfioctl-no-such-program", SETUP).unwrap_err();
        assert_eq!(e.what, "vfioctl-no-such-program");
        assert_eq!(e.fix, SETUP);
    }
}
