//! Printing for people (tables) and for machines (`--json`), from one value.

use std::io::{self, Write};

use serde::Serialize;

use crate::Context;

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

/// A plain text table with columns sized to their content.
#[derive(Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }
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
