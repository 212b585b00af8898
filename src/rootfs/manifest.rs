//! `rootfs/*.toml`: what goes into a guest initramfs.
//!
//! ```toml
//! name = "lab"
//! compression = "gzip"            # gzip | zstd | none
//!
//! [agent]
//! init = true                     # the agent is /init (PID 1)
//! exec = false                    # allow arbitrary commands over the agent
//! port = 1024
//!
//! [busybox]
//! include = false                 # /bin/busybox (static) and its applet links
//!
//! [modules]
//! load = ["vsock", "vmw_vsock_virtio_transport"]   # loaded at boot, dependencies first
//! include = []                    # shipped, not loaded (modprobe them later)
//! optional = ["nvidia"]           # loaded when the kernel has them, else reported missing
//!
//! [firmware]
//! files = []                      # relative to --firmware-dir (default /lib/firmware)
//!
//! [[file]]                        # src relative to the manifest, ${VAR} from the environment
//! src = "files/hook.sh"
//! dst = "/usr/share/oci/hooks/prestart/nvidia-container-toolkit.sh"
//! mode = "0755"
//! optional = false
//! label = "what it is, for the missing-files report"
//!
//! [[tree]]                        # a whole directory, copied under dst
//! src = "${NVIDIA_USERLAND}"
//! dst = "/"
//! optional = true
//!
//! [[symlink]]
//! path = "/sbin/init"
//! target = "/init"
//!
//! [kata]                          # recorded in the build report for Kata's configuration
//! guest_hook_path = "/usr/share/oci/hooks"
//! ```

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How the initramfs is compressed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip (the default).
    #[default]
    Gzip,
    /// zstd (the kernel needs `CONFIG_RD_ZSTD`).
    Zstd,
    /// Not compressed.
    None,
}

/// A `rootfs/*.toml` manifest: what goes into a guest initramfs (see the module docs).
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The image's name (reported, and written into the agent's settings file as a comment).
    pub name: String,
    /// What the image is for; free text, not used by the build.
    #[serde(default)]
    pub description: Option<String>,
    /// The compression; `--compression` overrides it.
    #[serde(default)]
    pub compression: Compression,
    /// `[agent]`: how the guest agent is set up.
    #[serde(default)]
    pub agent: AgentSection,
    /// `[busybox]`: whether to ship busybox.
    #[serde(default)]
    pub busybox: BusyboxSection,
    /// `[modules]`: kernel modules to ship and load.
    #[serde(default)]
    pub modules: ModulesSection,
    /// `[firmware]`: firmware files to ship.
    #[serde(default)]
    pub firmware: FirmwareSection,
    /// `[[file]]` items: single files.
    #[serde(default, rename = "file")]
    pub files: Vec<FileItem>,
    /// `[[tree]]` items: whole directories, copied under `dst`.
    #[serde(default, rename = "tree")]
    pub trees: Vec<FileItem>,
    /// `[[symlink]]` items.
    #[serde(default, rename = "symlink")]
    pub symlinks: Vec<SymlinkItem>,
    /// `[kata]`: settings recorded for Kata's configuration.
    #[serde(default)]
    pub kata: Option<KataSection>,
}

/// `[agent]` of a manifest.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    /// The agent is `/init` (PID 1); default true.
    #[serde(default = "yes")]
    pub init: bool,
    /// Allow arbitrary commands over the agent; default false (`--exec`/`--no-exec` override it).
    #[serde(default)]
    pub exec: bool,
    /// The vsock port the agent listens on; default 1024 (`proto::DEFAULT_PORT`).
    #[serde(default = "default_port")]
    pub port: u32,
}

impl Default for AgentSection {
    fn default() -> Self {
        Self {
            init: true,
            exec: false,
            port: default_port(),
        }
    }
}

fn yes() -> bool {
    true
}
fn default_port() -> u32 {
    vfioctl_common::proto::DEFAULT_PORT
}

/// `[busybox]` of a manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BusyboxSection {
    /// Ship `/bin/busybox` (static) and a symlink for each of its applets; default false.
    #[serde(default)]
    pub include: bool,
    /// Default `/bin/busybox` (Debian's busybox-static).
    #[serde(default)]
    pub path: Option<PathBuf>,
}

/// `[modules]` of a manifest: names as `modinfo` knows them, resolved with dependencies.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModulesSection {
    /// Loaded at boot, in this order (dependencies first); an error when the kernel has none.
    #[serde(default)]
    pub load: Vec<String>,
    /// Shipped but not loaded (modprobe them later); an error when the kernel has none.
    #[serde(default)]
    pub include: Vec<String>,
    /// Loaded at boot when the kernel has them, else reported as missing (the NVIDIA
    /// modules of a kernel built without the driver).
    #[serde(default)]
    pub optional: Vec<String>,
}

/// `[firmware]` of a manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FirmwareSection {
    /// Files relative to `--firmware-dir` (default `/lib/firmware`), shipped under `/lib/firmware`.
    #[serde(default)]
    pub files: Vec<String>,
}

/// One `[[file]]` or `[[tree]]` item.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FileItem {
    /// The host source: `${VAR}` expanded from the environment, relative to the manifest's directory.
    pub src: String,
    /// The absolute guest path it is copied to (a tree's contents go under it).
    pub dst: String,
    /// Octal, e.g. "0755"; default: the source's mode.
    #[serde(default)]
    pub mode: Option<String>,
    /// An absent source (or unset `${VAR}`) is reported in `missing_optional`, not an error.
    #[serde(default)]
    pub optional: bool,
    /// What it is, for the missing-files report and error messages.
    #[serde(default)]
    pub label: Option<String>,
}

/// One `[[symlink]]` item.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SymlinkItem {
    /// The absolute guest path of the link.
    pub path: String,
    /// What the link points to, as written.
    pub target: String,
}

/// `[kata]` of a manifest.
#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct KataSection {
    /// Kata's `guest_hook_path` for this image (only recorded in the build report).
    #[serde(default)]
    pub guest_hook_path: Option<String>,
}

/// A manifest that could not be read or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("reading manifest {path}")]
    /// The file could not be read.
    Read {
        /// The manifest's path.
        path: PathBuf,
        /// The read error.
        #[source]
        source: std::io::Error,
    },
    /// The manifest's text is not a valid manifest (the detail is part of the message,
    /// not a source: the printer shows it once).
    #[error("manifest {path}: {syntax}")]
    Parse {
        /// The manifest's path.
        path: PathBuf,
        /// What is wrong with its text.
        syntax: ManifestSyntaxError,
    },
}

/// What is wrong with a manifest's text ([`Manifest::parse`]).
#[derive(Debug, thiserror::Error)]
pub enum ManifestSyntaxError {
    /// Not TOML, or keys the manifest does not have (toml's message).
    #[error("{0}")]
    Toml(String),
    /// A `mode` that is not an octal permission.
    #[error(transparent)]
    Mode(#[from] BadMode),
    /// A `dst` that is not an absolute guest path.
    #[error("dst {dst:?} must be an absolute guest path")]
    RelativeDst {
        /// The `dst` as written.
        dst: String,
    },
}

/// A file mode that is not an octal permission ([`parse_mode`]).
#[derive(Debug, thiserror::Error)]
#[error("mode {mode:?} is not an octal permission like \"0755\"")]
pub struct BadMode {
    /// The mode as written.
    pub mode: String,
}

/// A `${VAR}` in a manifest source that is unset or empty ([`expand`]).
#[derive(Debug, thiserror::Error)]
#[error("${{{var}}} is not set")]
pub struct UnsetVar {
    /// The variable's name.
    pub var: String,
}

impl Manifest {
    /// Read and parse the manifest at `path`.
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.into(),
            source,
        })?;
        Self::parse(&text).map_err(|syntax| ManifestError::Parse {
            path: path.into(),
            syntax,
        })
    }

    /// Parse a manifest's text; also checks every `mode` and that every `dst` is absolute.
    pub fn parse(text: &str) -> Result<Self, ManifestSyntaxError> {
        let m: Manifest =
            toml::from_str(text).map_err(|e| ManifestSyntaxError::Toml(e.to_string()))?;
        for f in m.files.iter().chain(&m.trees) {
            if let Some(mode) = &f.mode {
                parse_mode(mode)?;
            }
            if !f.dst.starts_with('/') {
                return Err(ManifestSyntaxError::RelativeDst { dst: f.dst.clone() });
            }
        }
        Ok(m)
    }
}

/// Parse an octal permission (`"0755"`, `"0o755"`), at most `0o7777`.
pub fn parse_mode(s: &str) -> Result<u32, BadMode> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| BadMode { mode: s.into() })
}

/// Expand `${VAR}` from `lookup`; the error names the first unset variable.
pub fn expand(s: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, UnsetVar> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("${") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let Some(j) = after.find('}') else {
            out.push_str(&rest[i..]);
            return Ok(out);
        };
        let var = &after[..j];
        match lookup(var).filter(|v| !v.is_empty()) {
            Some(v) => out.push_str(&v),
            None => return Err(UnsetVar { var: var.into() }),
        }
        rest = &after[j + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_validates() {
        let m = Manifest::parse(
            r#"
name = "x"
[modules]
load = ["vsock"]
[[file]]
src = "a"
dst = "/b"
mode = "0755"
"#,
        )
        .unwrap();
        assert!(m.agent.init && !m.agent.exec && m.agent.port == 1024);
        assert_eq!(m.compression, Compression::Gzip);
        assert!(Manifest::parse("name = \"x\"\nbogus = 1\n").is_err());
        assert!(Manifest::parse("name = \"x\"\n[[file]]\nsrc=\"a\"\ndst=\"rel\"\n").is_err());
        assert!(
            Manifest::parse("name = \"x\"\n[[file]]\nsrc=\"a\"\ndst=\"/a\"\nmode=\"999\"\n")
                .is_err()
        );
    }

    #[test]
    fn expands_variables() {
        let env = |k: &str| (k == "A").then(|| "/opt/a".to_string());
        assert_eq!(expand("${A}/bin", env).unwrap(), "/opt/a/bin");
        assert_eq!(expand("plain", env).unwrap(), "plain");
        assert_eq!(expand("${B}/x", env).unwrap_err().var, "B");
    }
}
