//! Guest kernels built from `kernel-configs/` fragments, verified, with NVIDIA modules.
//!
//! | file | what |
//! |---|---|
//! | [`config`] | fragment / `.config` line parser and value comparison |
//! | [`kconfig`] | a small Kconfig reader: definitions, prompts, `depends on`, `select`, expression evaluation |
//! | [`verify`] | merge fragments in order, check every request landed, explain drops, allowlist |
//! | [`source`] | kernel source: a tarball of the pinned series (checksum, extract once, patches) or a directory |
//! | [`lock`] | `kernel-configs/kernel.lock`: the exact source recorded, `vfioctl kernel lock` |
//! | [`flock`] | the exclusive file lock builds and extractions share |
//! | [`build`] | the build pipeline: configure, verify, compile, install, manifest, cache |
//! | [`nvidia`] | NVIDIA open modules (Debian 535 or a `.run`): commands and modes |
//! | [`manifest`] | `kernel-configs/manifest.toml` pins and `build-manifest.json` |
//! | [`cmd`] | external commands as data, run with logs |

#![warn(missing_docs)]

pub mod build;
pub mod cmd;
pub mod config;
pub mod error;
pub mod flock;
pub mod kconfig;
pub mod lock;
pub mod manifest;
pub mod nvidia;
pub mod source;
pub mod verify;

pub use build::{build, BuildOptions, BuildResult, Progress};
pub use config::{DotConfig, Value};
pub use error::KernelError;
pub use kconfig::KconfigTree;
pub use nvidia::NvidiaMode;
pub use verify::{merge, verify, Allowlist, Fragment, Report};
