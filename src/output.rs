//! Printing for people (tables) and for machines (`--json`), from one value.

#![warn(missing_docs)]

use std::io::{self, Write};

use serde::Serialize;

use crate::Context;

/// PCI identity in every `--json` output, one shape: lower-case hex strings without
/// `0x`, as `lspci -n` prints them. `vendor`, `device`, `subsystem_vendor`,
/// `subsystem_device`: 4 digits (`"10de"`); `class`: 6 digits (`"030200"`); `revision`: 2
/// digits; `id`: `vendor:device` (`"10de:2330"`) where an object carries one. Use with
/// `#[serde(serialize_with = "...")]`; the `*Schema` types describe them for schemars.
pub mod pci_id {
    use serde::Serializer;

    /// A 16-bit id (vendor, device, subsystem): `"10de"`.
    pub fn id16<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:04x}"))
    }
    /// An optional 16-bit id.
    pub fn opt_id16<S: Serializer>(v: &Option<u16>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => id16(v, s),
            None => s.serialize_none(),
        }
    }
    /// A 24-bit class code: `"030200"`.
    pub fn class<S: Serializer>(v: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:06x}"))
    }

    /// Schema of [`id16`].
    #[derive(schemars::JsonSchema)]
    #[schemars(transparent)]
    pub struct Id16Schema(#[schemars(regex(pattern = r"^[0-9a-f]{4}$"))] pub String);
    /// Schema of [`class`].
    #[derive(schemars::JsonSchema)]
    #[schemars(transparent)]
    pub struct ClassSchema(#[schemars(regex(pattern = r"^[0-9a-f]{6}$"))] pub String);
    /// Schema of a `vendor:device` id.
    #[derive(schemars::JsonSchema)]
    #[schemars(transparent)]
    pub struct IdPairSchema(#[schemars(regex(pattern = r"^[0-9a-f]{4}:[0-9a-f]{4}$"))] pub String);
}

/// The JSON Schema of each `--json` output, generated from the types that print it:
/// `(file stem under schemas/, schema)`. `tests/json_schemas.rs` keeps `schemas/` equal
/// to this (`UPDATE_SCHEMAS=1` rewrites it) and validates each command's real output.
///
/// The schemas describe what vfioctl *prints* (schemars' serialize contract): a field
/// left out when empty is optional, an `Option` printed as `null` is required.
pub fn json_schemas() -> Vec<(&'static str, schemars::Schema)> {
    fn schema<T: schemars::JsonSchema + ?Sized>() -> schemars::Schema {
        schemars::generate::SchemaSettings::draft2020_12()
            .for_serialize()
            .into_generator()
            .into_root_schema_for::<T>()
    }
    vec![
        ("devices", schema::<Vec<crate::pci::list::DeviceEntry>>()),
        ("check", schema::<crate::host::CheckReport>()),
        ("validate", schema::<crate::agent::validate::Report>()),
        ("regress", schema::<crate::regress::RunResults>()),
        ("error", schema::<crate::cli::ErrorReport>()),
        ("bind", schema::<crate::cli::bind::BindOutput<'static>>()),
        (
            "unbind",
            schema::<crate::cli::bind::RestoreOutput<'static>>(),
        ),
        (
            "restore",
            schema::<crate::cli::bind::RestoreOutput<'static>>(),
        ),
        ("vm-up", schema::<crate::vm::state::VmRecord>()),
        ("vm-up-dry-run", schema::<crate::cli::vm::DryRunOutput>()),
        ("vm-status", schema::<crate::vm::lifecycle::Status>()),
        ("vm-list", schema::<Vec<crate::cli::vm::ListRow>>()),
        ("vm-plan", schema::<crate::vm::ports::Plan>()),
        ("vm-plug", schema::<crate::cli::vm::PlugOutput>()),
        ("vm-unplug", schema::<crate::cli::vm::UnplugOutput>()),
        ("vm-down", schema::<crate::vm::lifecycle::DownReport>()),
        ("kata-config", schema::<crate::cli::kata::ConfigOutput>()),
        (
            "kata-config-drop-in",
            schema::<crate::cli::kata::DropInOutput>(),
        ),
        (
            "kernel-build",
            schema::<crate::kernel::build::BuildResult>(),
        ),
        ("kernel-verify", schema::<crate::kernel::verify::Report>()),
        ("kernel-lock", schema::<crate::kernel::lock::LockUpdate>()),
        (
            "rootfs-build",
            schema::<crate::rootfs::build::BuildReport>(),
        ),
        ("vf-list", schema::<Vec<crate::shared::sriov::PfStatus>>()),
        ("vf-status", schema::<crate::shared::sriov::PfStatus>()),
        ("vf-create-dry-run", schema::<crate::cli::vf::DryRun>()),
        ("vf-remove", schema::<crate::shared::sriov::RemoveReport>()),
        ("mdev-types", schema::<Vec<crate::shared::mdev::MdevType>>()),
        ("mdev-create", schema::<crate::shared::mdev::MdevDevice>()),
        (
            "mdev-create-dry-run",
            schema::<crate::cli::mdev::CreateDryRun>(),
        ),
        (
            "mdev-list",
            schema::<Vec<crate::shared::mdev::MdevDevice>>(),
        ),
        ("mdev-remove", schema::<crate::cli::mdev::RemoveOutput>()),
        ("snapshot", schema::<crate::snapshot::Report>()),
        (
            "snapshot-replay",
            schema::<crate::cli::snapshot::ReplayOutput>(),
        ),
    ]
}

/// `value` as a JSON value, every object's keys in sorted order (serde_json's map). The
/// outputs that used to be built with `serde_json::json!` printed their keys sorted, at
/// every level; their typed structs print through this to keep the same JSON.
pub fn sorted<T: Serialize>(value: &T) -> Result<serde_json::Value, crate::Failure> {
    serde_json::to_value(value).map_err(|e| crate::Failure::new(crate::Exit::Infrastructure, e))
}

/// A warning for the person running the command (stderr; not with `-q`).
pub fn warn(ctx: &Context, msg: impl std::fmt::Display) {
    if !ctx.quiet {
        eprintln!("warning: {msg}");
    }
}

/// A note on what is happening (stderr; not with `-q`).
pub fn note(ctx: &Context, msg: impl std::fmt::Display) {
    if !ctx.quiet {
        eprintln!("{msg}");
    }
}

/// A duration for people: `830 ms`, `1.6 s`, `2 min 5 s`, `1 h 3 min`.
pub fn human_duration(d: std::time::Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 10_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else if ms < 60_000 {
        format!("{} s", (ms + 500) / 1000)
    } else if ms < 3_600_000 {
        let s = (ms + 500) / 1000;
        format!("{} min {} s", s / 60, s % 60)
    } else {
        let m = (ms + 30_000) / 60_000;
        format!("{} h {} min", m / 60, m % 60)
    }
}

/// Progress on stderr for waits longer than a second: a spinner or a bar, drawn only
/// for a person at a terminal (never into a file, a pipe or a CI log) and not with `-q`.
/// Every method is a no-op when hidden, so callers report progress unconditionally.
pub struct Progress {
    bar: Option<indicatif::ProgressBar>,
    /// A spinner switched to counting (see [`Progress::count`]).
    counting: std::sync::atomic::AtomicBool,
}

fn spinner_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner())
}

fn bar_style() -> indicatif::ProgressStyle {
    indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {pos}/{len} ({elapsed}, about {eta} left)",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ")
}

impl Progress {
    fn visible(ctx: &Context) -> bool {
        use std::io::IsTerminal;
        !ctx.quiet && io::stderr().is_terminal()
    }

    /// A spinner with a message and the elapsed time.
    pub fn spinner(ctx: &Context, msg: impl Into<String>) -> Self {
        let bar = Self::visible(ctx).then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.set_style(spinner_style());
            b.set_message(msg.into());
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Self {
            bar,
            counting: Default::default(),
        }
    }

    /// A bar of `len` steps (objects compiled, scenarios run).
    pub fn bar(ctx: &Context, len: u64, msg: impl Into<String>) -> Self {
        let bar = Self::visible(ctx).then(|| {
            let b = indicatif::ProgressBar::new(len);
            b.set_style(bar_style());
            b.set_message(msg.into());
            b.enable_steady_tick(std::time::Duration::from_millis(250));
            b
        });
        Self {
            bar,
            counting: Default::default(),
        }
    }

    /// A hidden one (for callers that have no context).
    pub fn hidden() -> Self {
        Self {
            bar: None,
            counting: Default::default(),
        }
    }

    /// A spinner's phase that can be counted (objects compiled): draw it as a bar at
    /// `pos` of `len` until [`uncount`](Self::uncount).
    pub fn count(&self, pos: u64, len: u64) {
        if let Some(b) = &self.bar {
            if !self
                .counting
                .swap(true, std::sync::atomic::Ordering::Relaxed)
            {
                b.set_style(bar_style());
            }
            b.set_length(len);
            b.set_position(pos);
        }
    }

    /// Back to a spinner after [`count`](Self::count).
    pub fn uncount(&self) {
        if let Some(b) = &self.bar {
            if self
                .counting
                .swap(false, std::sync::atomic::Ordering::Relaxed)
            {
                b.set_style(spinner_style());
                b.set_position(0);
            }
        }
    }

    /// Whether anything is drawn (a person at a terminal, not `-q`).
    pub fn is_visible(&self) -> bool {
        self.bar.is_some()
    }
    /// Replace the text shown next to the spinner or bar.
    pub fn set_message(&self, msg: impl Into<String>) {
        if let Some(b) = &self.bar {
            b.set_message(msg.into());
        }
    }
    /// Set the bar's total number of steps.
    pub fn set_length(&self, len: u64) {
        if let Some(b) = &self.bar {
            b.set_length(len);
        }
    }
    /// Set how many steps of the bar are done.
    pub fn set_position(&self, pos: u64) {
        if let Some(b) = &self.bar {
            b.set_position(pos);
        }
    }
    /// Advance the bar by `n` steps.
    pub fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    /// A line above the bar (a finished scenario), or plain on stderr when hidden and
    /// not quiet.
    pub fn println(&self, ctx: &Context, line: impl AsRef<str>) {
        match &self.bar {
            Some(b) => b.println(line.as_ref()),
            None => note(ctx, line.as_ref()),
        }
    }
    /// Stop drawing and clear the line (also done on drop).
    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// Print `value` as pretty JSON when `--json` is set, else call `human` to print text.
pub fn emit<T: Serialize>(
    ctx: &Context,
    value: &T,
    human: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<()> {
    // Buffered: serde_json and tables write in small pieces, and a line-buffered stdout
    // would turn a 1,024-device listing into 60,000 write(2) calls.
    let stdout = io::stdout();
    let mut out = io::BufWriter::with_capacity(64 * 1024, stdout.lock());
    if ctx.json {
        // JSON escapes control characters itself.
        serde_json::to_writer_pretty(&mut out, value)?;
        writeln!(out)?;
    } else {
        // Text for people may quote the guest (kernel log, serial console, agent
        // replies): control characters are escaped on the way to the terminal.
        let mut esc = vfioctl_common::text::TerminalWriter::new(&mut out);
        human(&mut esc)?;
        esc.flush()?;
    }
    out.flush()
}

/// Print `items` as a [`Table`] under `header`, or the line `none` when there are none
/// (the listings of `vfioctl vf` and `vfioctl mdev`).
pub fn table_or<T>(
    out: &mut dyn Write,
    none: &str,
    header: &[&str],
    items: &[T],
    row: impl Fn(&T) -> Vec<String>,
) -> io::Result<()> {
    if items.is_empty() {
        return writeln!(out, "{none}");
    }
    Table::of(header, items, row).write(out)
}

/// A table cell for a value that may be unknown or absent: the value, or `-`.
pub fn cell<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// A failure to write a command's output (stdout closed, disk full): an infrastructure
/// error.
pub fn write_failed(e: io::Error) -> crate::Failure {
    crate::Failure::new(crate::Exit::Infrastructure, e)
}

/// A plain text table with columns sized to their content.
#[derive(Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// An empty table with this header row.
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }
    /// A table of one row per item, the cells from `row`.
    pub fn of<T>(header: &[&str], items: &[T], row: impl Fn(&T) -> Vec<String>) -> Self {
        let mut t = Self::new(header);
        t.rows.extend(items.iter().map(row));
        t
    }
    /// Append a row of cells.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    /// Whether the table has no rows besides its header.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }
    /// Write the header and rows, each column padded to its widest cell, two spaces
    /// between columns and no trailing spaces.
    pub fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let ncol = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let mut widths = vec![0; ncol];
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        for r in &self.rows {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                if i + 1 == r.len() {
                    line.push_str(c);
                } else {
                    line.push_str(&format!("{:w$}  ", c, w = widths[i]));
                }
            }
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::human_duration;

    #[test]
    fn durations_are_rounded_for_people() {
        let ms = Duration::from_millis;
        assert_eq!(human_duration(Duration::from_nanos(1_624_373_679)), "1.6 s");
        assert_eq!(human_duration(ms(830)), "830 ms");
        assert_eq!(human_duration(ms(12_400)), "12 s");
        assert_eq!(human_duration(ms(125_000)), "2 min 5 s");
        assert_eq!(human_duration(ms(3_780_000)), "1 h 3 min");
    }
}
