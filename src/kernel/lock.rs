//! `kernel-configs/kernel.lock`: the exact kernel source a build used, recorded by
//! `vfioctl kernel lock`.
//!
//! `manifest.toml` pins what must not move (the upstream series, the Debian package, the
//! patches that must apply). Debian's archive keeps only the current version of a
//! package, so an exact sha256 pin of `linux-source-6.1` breaks at every security update;
//! the exact version and checksum therefore live here, as a record, not a gate:
//! - the same tarball as the lock: [`LockState::Locked`];
//! - another tarball of the same series (a Debian point release): the build proceeds and
//!   says so ([`LockState::Newer`]), and `vfioctl kernel lock` records it;
//! - another series: refused by [`check_series`] unless `--allow-unpinned`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cmd::Cmd;
use super::error::{io, KernelError};
use super::manifest::KernelPin;

/// The lock file's name inside `kernel-configs/`.
pub const LOCK_FILE: &str = "kernel.lock";

/// `kernel-configs/kernel.lock`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct SourceLock {
    /// The kernel source last recorded.
    pub kernel: LockedSource,
}

/// One recorded kernel source.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
pub struct LockedSource {
    /// Debian package that ships the tarball (`linux-source-6.1`).
    pub package: String,
    /// Its exact Debian version (`6.1.192-3`); empty when the tarball is not from a package.
    pub package_version: String,
    /// The kernel version from the tarball's top-level Makefile (`6.1.192`).
    pub version: String,
    /// sha256 of the tarball.
    pub sha256: String,
}

impl SourceLock {
    /// Parse the lock file's text.
    pub fn parse(text: &str) -> Result<SourceLock, toml::de::Error> {
        toml::from_str(text)
    }

    /// Read `<configs>/<file>` (`kernel.lock` for the default series); `Ok(None)` when
    /// there is none.
    pub fn read(configs: &Path, file: &str) -> Result<Option<SourceLock>, KernelError> {
        let path = configs.join(file);
        match std::fs::read_to_string(&path) {
            Ok(t) => SourceLock::parse(&t)
                .map(Some)
                .map_err(|source| KernelError::Lock { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(path, "cannot read")(e)),
        }
    }

    /// The file's text: a header saying what writes it, then the TOML.
    pub fn render(&self) -> String {
        format!(
            "# Written by `vfioctl kernel lock`: the exact kernel source the last recorded build\n\
             # used. kernel-configs/manifest.toml pins the series; a newer tarball of that series\n\
             # builds with a note until this file is updated.\n{}",
            toml::to_string(self).unwrap_or_default()
        )
    }

    /// Write `<configs>/<file>` atomically (temporary file + rename).
    pub fn write(&self, configs: &Path, file: &str) -> Result<PathBuf, KernelError> {
        let path = configs.join(file);
        let tmp = configs.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, self.render()).map_err(io(&tmp, "cannot write"))?;
        std::fs::rename(&tmp, &path).map_err(io(&path, "cannot replace"))?;
        Ok(path)
    }
}

/// How the source of a build relates to the lock file.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum LockState {
    /// The tarball is the one recorded in `kernel.lock`.
    Locked,
    /// Another tarball of the pinned series than the one recorded (a point release).
    Newer {
        /// What the lock recorded.
        locked: LockedSource,
    },
    /// No `kernel.lock` yet.
    Unlocked,
    /// Not a pinned source: a directory, or another series under `--allow-unpinned`.
    Unpinned,
}

impl LockState {
    /// The state of a tarball with checksum `sha256`, given the lock file (if any).
    pub fn of(sha256: &str, lock: Option<&SourceLock>) -> LockState {
        match lock {
            None => LockState::Unlocked,
            Some(l) if l.kernel.sha256 == sha256 => LockState::Locked,
            Some(l) => LockState::Newer {
                locked: l.kernel.clone(),
            },
        }
    }

    /// One line for people, naming the fix where there is one; `pin` names the lock
    /// file and, for a series other than the default, the `--series` the fix needs.
    pub fn note(&self, found: &str, pin: &KernelPin) -> String {
        let file = &pin.lock;
        let cmd = if file == LOCK_FILE {
            "vfioctl kernel lock".to_string()
        } else {
            format!("vfioctl kernel lock --series {}", pin.series)
        };
        match self {
            LockState::Locked => format!("matches kernel-configs/{file}"),
            LockState::Newer { locked } => format!(
                "{found} differs from kernel-configs/{file} ({} {}): building it; run `{cmd}` to record it",
                locked.package, locked.package_version
            ),
            LockState::Unlocked => {
                format!("no kernel-configs/{file}: run `{cmd}` to record this source")
            }
            LockState::Unpinned => "NOT the pinned series (--allow-unpinned)".into(),
        }
    }
}

/// Whether kernel `version` (`6.1.192`, `6.1.0-rc1`) belongs to `series` (`6.1`).
pub fn in_series(series: &str, version: &str) -> bool {
    version
        .strip_prefix(series)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('-'))
}

/// Refuse a source of another series than the pin (`manifest`: the pin file, named in
/// the error).
pub fn check_series(
    source: &Path,
    version: &str,
    series: &str,
    manifest: &Path,
) -> Result<(), KernelError> {
    if in_series(series, version) {
        Ok(())
    } else {
        Err(KernelError::Series {
            path: source.to_path_buf(),
            version: version.to_string(),
            series: series.to_string(),
            manifest: manifest.to_path_buf(),
        })
    }
}

/// The installed Debian version of `package` (`dpkg-query`), `None` when it is not
/// installed or dpkg is absent.
pub fn package_version(package: &str) -> Option<String> {
    Cmd::new("dpkg-query")
        .args(["-W", "-f=${Version}", package])
        .output()
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The kernel version in a tarball's top-level Makefile, read with `tar` without
/// extracting the tree (`--occurrence=1` stops at the first match).
pub fn tarball_version(tarball: &Path) -> Result<String, KernelError> {
    let text = Cmd::new("tar")
        .args([
            "-xOf".to_string(),
            tarball.display().to_string(),
            "--wildcards".into(),
            "--no-wildcards-match-slash".into(),
            "--occurrence=1".into(),
            "*/Makefile".into(),
        ])
        .output()
        .map_err(|_| KernelError::Source {
            path: tarball.to_path_buf(),
            reason: "tar cannot read a top-level Makefile from it: not a kernel source tarball"
                .into(),
        })?;
    super::source::makefile_version(&text).ok_or_else(|| KernelError::Source {
        path: tarball.to_path_buf(),
        reason: "its top-level Makefile has no VERSION/PATCHLEVEL/SUBLEVEL".into(),
    })
}

/// What `vfioctl kernel lock` did.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct LockUpdate {
    /// The lock file.
    pub path: PathBuf,
    /// The previous record, if there was one.
    pub old: Option<LockedSource>,
    /// The record now (or, with `check`, the record it would write).
    pub new: LockedSource,
    /// Field-by-field changes (`field: old -> new`).
    pub changes: Vec<String>,
    /// Whether the file was written (false when unchanged or when only checking).
    pub written: bool,
}

/// The changes between two records, one `field: old -> new` line each.
pub fn diff(old: Option<&LockedSource>, new: &LockedSource) -> Vec<String> {
    let Some(old) = old else {
        return vec![format!(
            "new lock: {} {} (kernel {}, sha256 {})",
            new.package, new.package_version, new.version, new.sha256
        )];
    };
    let mut out = Vec::new();
    for (field, a, b) in [
        ("package", &old.package, &new.package),
        (
            "package_version",
            &old.package_version,
            &new.package_version,
        ),
        ("version", &old.version, &new.version),
        ("sha256", &old.sha256, &new.sha256),
    ] {
        if a != b {
            out.push(format!("{field}: {a} -> {b}"));
        }
    }
    out
}

/// Record `tarball` (checksum, Makefile version, Debian package version) in
/// `<configs>/kernel.lock`; refuses another series than `series`. With `check`, nothing
/// is written (CI: fail when the lock is stale).
pub fn update(
    configs: &Path,
    pin: &KernelPin,
    tarball: &Path,
    check: bool,
) -> Result<LockUpdate, KernelError> {
    let (package, series) = (pin.package.as_str(), pin.series.as_str());
    if !tarball.is_file() {
        return Err(KernelError::Source {
            path: tarball.to_path_buf(),
            reason: "not found".into(),
        });
    }
    let version = tarball_version(tarball)?;
    check_series(tarball, &version, series, &configs.join("manifest.toml"))?;
    let new = LockedSource {
        package: package.to_string(),
        package_version: package_version(package).unwrap_or_default(),
        version,
        sha256: super::source::sha256_file(tarball)?,
    };
    let old = SourceLock::read(configs, &pin.lock)?.map(|l| l.kernel);
    let changes = diff(old.as_ref(), &new);
    let mut path = configs.join(&pin.lock);
    let written = !check && !changes.is_empty();
    if written {
        path = SourceLock {
            kernel: new.clone(),
        }
        .write(configs, &pin.lock)?;
    }
    Ok(LockUpdate {
        path,
        old,
        new,
        changes,
        written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pv: &str, sha: &str) -> LockedSource {
        LockedSource {
            package: "linux-source-6.1".into(),
            package_version: pv.into(),
            version: "6.1.192".into(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn series_membership() {
        assert!(in_series("6.1", "6.1.192"));
        assert!(in_series("6.1", "6.1"));
        assert!(in_series("6.1", "6.1.0-rc1"));
        assert!(!in_series("6.1", "6.12.5"));
        assert!(!in_series("6.1", "6.10"));
        assert!(!in_series("6.1", "5.10.1"));
        assert!(!in_series("6.1", ""));
    }

    #[test]
    fn state_against_the_lock() {
        let lock = SourceLock {
            kernel: rec("6.1.192-2", "aa"),
        };
        assert_eq!(LockState::of("aa", Some(&lock)), LockState::Locked);
        let n = LockState::of("bb", Some(&lock));
        assert!(matches!(&n, LockState::Newer { locked } if locked.package_version == "6.1.192-2"));
        let pins = committed_pins();
        let note = n.note("6.1.192 (linux-source-6.1 6.1.192-3)", &pins.kernel);
        assert!(
            note.contains("6.1.192-2") && note.contains("run `vfioctl kernel lock` to record"),
            "{note}"
        );
        // another series names its own lock file and the --series its fix needs
        let modern = pins
            .select(Some("6.12"), Path::new("manifest.toml"))
            .unwrap();
        let note = LockState::Unlocked.note("6.12.95", &modern.kernel);
        assert_eq!(
            note,
            "no kernel-configs/kernel-6.12.lock: run `vfioctl kernel lock --series 6.12` to record this source"
        );
        assert_eq!(LockState::of("aa", None), LockState::Unlocked);
    }

    #[test]
    fn another_series_is_refused_naming_the_pin_and_the_fix() {
        let e = check_series(
            Path::new("/usr/src/linux-source-6.12.tar.xz"),
            "6.12.5",
            "6.1",
            Path::new("kernel-configs/manifest.toml"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("6.12.5") && msg.contains("6.1"), "{msg}");
        assert!(msg.contains("linux-source-6.12.tar.xz"), "{msg}");
        let hint = crate::Diagnose::hint(&e).unwrap();
        assert!(
            hint.contains("manifest.toml") && hint.contains("--allow-unpinned"),
            "{hint}"
        );
        assert_eq!(crate::Diagnose::exit(&e), crate::Exit::Usage);
    }

    #[test]
    fn lock_round_trips_and_diffs() {
        let d = tempfile::tempdir().unwrap();
        let l = SourceLock {
            kernel: rec("6.1.192-3", "cc"),
        };
        l.write(d.path(), LOCK_FILE).unwrap();
        let text = std::fs::read_to_string(d.path().join(LOCK_FILE)).unwrap();
        assert!(
            text.starts_with("# Written by `vfioctl kernel lock`"),
            "{text}"
        );
        assert_eq!(
            SourceLock::read(d.path(), LOCK_FILE).unwrap(),
            Some(l.clone())
        );
        assert_eq!(diff(Some(&l.kernel), &l.kernel), Vec::<String>::new());
        let ch = diff(Some(&rec("6.1.192-2", "aa")), &l.kernel);
        assert_eq!(
            ch,
            vec![
                "package_version: 6.1.192-2 -> 6.1.192-3".to_string(),
                "sha256: aa -> cc".to_string()
            ]
        );
        assert_eq!(
            SourceLock::read(&d.path().join("none"), LOCK_FILE).unwrap(),
            None
        );
    }

    fn committed_pins() -> super::super::manifest::Pins {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs");
        super::super::manifest::Pins::parse(
            &std::fs::read_to_string(configs.join("manifest.toml")).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn every_committed_lock_parses_and_is_in_its_pinned_series() {
        let configs = Path::new(env!("CARGO_MANIFEST_DIR")).join("kernel-configs");
        let all = committed_pins();
        for series in all.series_names() {
            let pins = all
                .select(Some(&series), Path::new("manifest.toml"))
                .unwrap();
            let lock = SourceLock::read(&configs, &pins.kernel.lock)
                .unwrap()
                .unwrap_or_else(|| panic!("{} committed", pins.kernel.lock));
            assert!(in_series(&pins.kernel.series, &lock.kernel.version));
            assert_eq!(lock.kernel.package, pins.kernel.package);
            assert_eq!(lock.kernel.sha256.len(), 64);
        }
    }
}
