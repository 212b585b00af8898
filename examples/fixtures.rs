//! Write the fixture trees (`scripts/gen-fixtures` calls this).
//!
//! ```sh
//! cargo run --example fixtures -- tests/fixtures          # the four hosts
//! cargo run --example fixtures -- --bench 1024 /tmp/bench  # a generated 1,024-device tree
//! ```
use std::path::PathBuf;
use std::process::ExitCode;

use vfioctl::pci::fixture::{hosts, write_host};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (bench, dir) = match args.as_slice() {
        [flag, n, dir] if flag == "--bench" => match n.parse::<usize>() {
            Ok(n) => (Some(n), PathBuf::from(dir)),
            Err(_) => return usage(),
        },
        [dir] if !dir.starts_with('-') => (None, PathBuf::from(dir)),
        _ => return usage(),
    };
    let result = match bench {
        Some(n) => fresh(&dir).and_then(|()| write_host(&hosts::bench(n), &dir)),
        None => hosts::all().iter().try_for_each(|h| {
            let d = dir.join(h.name);
            fresh(&d).and_then(|()| write_host(h, &d))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fixtures: writing under {}: {e}", dir.display());
            ExitCode::from(8)
        }
    }
}

fn fresh(dir: &std::path::Path) -> std::io::Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)
}

fn usage() -> ExitCode {
    eprintln!("usage: fixtures DIR | fixtures --bench N DIR");
    ExitCode::from(2)
}
