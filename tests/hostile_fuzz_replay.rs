//! Every committed fuzz input (`fuzz/corpus/<target>/*`, and every crash input libFuzzer
//! ever saved, `fuzz/artifacts/<target>/*`) replayed through the same target bodies as
//! `cargo fuzz` runs (`fuzz/src/targets.rs`), on the stable toolchain: an input that once
//! crashed a parser keeps being tested after the fix.

#[path = "../fuzz/src/targets.rs"]
#[allow(dead_code)]
mod targets;

use std::path::Path;

#[test]
fn every_corpus_and_crash_input_replays_without_a_panic() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut failures = Vec::new();
    let mut counts = Vec::new();
    for (name, body) in targets::ALL {
        let mut n = 0;
        for dir in ["corpus", "artifacts"] {
            let Ok(rd) = std::fs::read_dir(fuzz.join(dir).join(name)) else {
                continue;
            };
            let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
            files.sort();
            for f in files {
                if f.file_name().is_some_and(|n| n == ".keep") || !f.is_file() {
                    continue;
                }
                let data = std::fs::read(&f).unwrap();
                n += 1;
                if std::panic::catch_unwind(|| body(&data)).is_err() {
                    failures.push(f.display().to_string());
                }
            }
        }
        assert!(
            n > 0,
            "target {name} has no committed inputs in fuzz/corpus/{name}"
        );
        counts.push(format!("{name} {n}"));
    }
    println!("replayed: {}", counts.join(", "));
    assert!(failures.is_empty(), "inputs that panic: {failures:#?}");
}
