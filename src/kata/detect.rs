//! Which Kata release is installed on this host: what `kata-runtime --version` (Go) or
//! `kata-ctl version` print, or the distribution package's version. The parsing is pure;
//! [`installed`] runs the commands and is called only when `--root` is the real host.

use std::process::Command;

use serde::Serialize;

use super::version::{KataVersion, Runtime};

/// A Kata release found on the host, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Installed {
    /// The installed release.
    pub version: KataVersion,
    /// The runtime the probe belongs to (None: the package carries both).
    pub runtime: Option<Runtime>,
    /// `kata-runtime --version`, `dpkg-query ... kata-containers`, ...
    pub how: String,
}

/// The first `MAJOR.MINOR.PATCH` word in a version banner:
/// `kata-runtime  : 3.30.0`, `kata-ctl version: 3.30.0-9a1b...`, `3.30.0-1` (deb).
pub fn parse_banner(text: &str) -> Option<KataVersion> {
    text.split(|c: char| c.is_whitespace() || c == ':' || c == ',')
        .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
        .filter(|w| w.matches('.').count() >= 2)
        .find_map(|w| w.parse().ok())
}

fn run(prog: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(prog).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Probe this host (not a --root tree) for an installed Kata.
pub fn installed() -> Option<Installed> {
    let probes: [(&str, &[&str], Option<Runtime>); 5] = [
        ("kata-runtime", &["--version"], Some(Runtime::Go)),
        (
            "/opt/kata/bin/kata-runtime",
            &["--version"],
            Some(Runtime::Go),
        ),
        ("kata-ctl", &["version"], None),
        ("/opt/kata/bin/kata-ctl", &["version"], None),
        (
            "dpkg-query",
            &["-W", "-f", "${Version}", "kata-containers"],
            None,
        ),
    ];
    probes.into_iter().find_map(|(prog, args, runtime)| {
        let text = run(prog, args)?;
        Some(Installed {
            version: parse_banner(&text)?,
            runtime,
            how: format!("`{} {}` on this host", prog, args.join(" ")),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banners() {
        let go = "kata-runtime  : 3.30.0\n   commit   : 86e5975ad6a20f091ed686e492672c70496d0400\n   OCI specs: 1.2.1\n";
        assert_eq!(parse_banner(go), Some(KataVersion::new(3, 30, 0)));
        assert_eq!(
            parse_banner("kata-ctl version: 3.17.0-a897bce29f\n"),
            Some(KataVersion::new(3, 17, 0))
        );
        assert_eq!(parse_banner("3.4.0-1"), Some(KataVersion::new(3, 4, 0)));
        assert_eq!(parse_banner("no version here 1.2"), None);
    }
}
