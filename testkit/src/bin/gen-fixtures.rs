//! Write the fixture trees (`scripts/gen-fixtures` calls this).
//!
//! ```sh
//! cargo run -p vfioctl-testkit --bin gen-fixtures -- tests/fixtures         # every committed tree
//! cargo run -p vfioctl-testkit --bin gen-fixtures -- --bench 1024 /tmp/b    # a 1,024-device tree
//! ```
use std::path::PathBuf;
use std::process::ExitCode;

use vfioctl_testkit::fixture::{hosts, write_committed, write_host};

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
        None => write_committed(&dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gen-fixtures: writing under {}: {e}", dir.display());
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
    eprintln!("usage: gen-fixtures DIR | gen-fixtures --bench N DIR");
    ExitCode::from(2)
}
