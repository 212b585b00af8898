//! JSON Schemas of every typed `--json` output, generated from the Rust types (schemars)
//! and kept in `schemas/`; each command's real output is validated against its schema
//! with a JSON Schema validator (the jsonschema crate).
//!
//! `UPDATE_SCHEMAS=1 cargo test --test json_schemas` rewrites `schemas/` after a change
//! of an output type.

mod agent_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn schema_file(name: &str) -> PathBuf {
    repo("schemas").join(format!("{name}.schema.json"))
}

fn schema(name: &str) -> Value {
    let p = schema_file(name);
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

#[track_caller]
fn assert_valid(name: &str, instance: &Value) {
    let v = jsonschema::validator_for(&schema(name)).expect("a valid schema");
    let errors: Vec<String> = v
        .iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name}: output does not match schemas/{name}.schema.json:\n{}\n{instance:#}",
        errors.join("\n")
    );
}

fn vfioctl(root: Option<&str>, args: &[&str]) -> (Option<i32>, Value) {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vfioctl"));
    if let Some(r) = root {
        c.arg("--root").arg(repo("tests/fixtures").join(r));
    }
    let o = c.arg("--json").args(args).output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: not JSON ({e}): {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

#[test]
fn schemas_dir_matches_the_types() {
    let update = std::env::var("UPDATE_SCHEMAS").as_deref() == Ok("1");
    let mut stale = Vec::new();
    for (name, s) in vfioctl::output::json_schemas() {
        let text = serde_json::to_string_pretty(&s).unwrap() + "\n";
        let p = schema_file(name);
        if update {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, &text).unwrap();
        } else if std::fs::read_to_string(&p).ok().as_deref() != Some(text.as_str()) {
            stale.push(p.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale schemas (run UPDATE_SCHEMAS=1 cargo test --test json_schemas): {stale:?}"
    );
}

#[test]
fn devices_and_check_output_match_their_schemas() {
    for root in ["gpu-server", "iommu-off", "kata-dgx"] {
        if !repo("tests/fixtures").join(root).is_dir() {
            continue;
        }
        let (_, d) = vfioctl(Some(root), &["devices"]);
        assert!(!d.as_array().unwrap().is_empty());
        assert_valid("devices", &d);
        let (_, c) = vfioctl(Some(root), &["check"]);
        assert_valid("check", &c);
    }
    // PCI identity: lower-case hex strings, as lspci -n prints them.
    let (_, d) = vfioctl(Some("gpu-server"), &["devices", "10de:*"]);
    assert_eq!(d[0]["vendor"], "10de");
    assert_eq!(d[0]["class"], "030200");
}

#[test]
fn error_output_matches_its_schema() {
    let (code, e) = vfioctl(None, &["devices", "nonsense:::"]);
    assert_eq!(code, Some(2));
    assert_valid("error", &e);
    // The schema is not vacuous: a wrong shape fails.
    let bad = serde_json::json!({"error": 1});
    let v = jsonschema::validator_for(&schema("error")).unwrap();
    assert!(!v.is_valid(&bad));
}

#[test]
fn regress_output_and_results_json_match_their_schema() {
    let d = tempfile::tempdir().unwrap();
    let plan = d.path().join("plan.toml");
    std::fs::write(
        &plan,
        "name = \"schema\"\n[[scenario]]\nname = \"absent\"\ndevices = [\"0000:99:00.0\"]\n[[scenario]]\nname = \"standin\"\ndevices = [\"emulated:8G\"]\nkernel = \"/nonexistent\"\ninitrd = \"/nonexistent\"\n",
    )
    .unwrap();
    let out = d.path().join("out");
    let (code, r) = vfioctl(
        Some("gpu-server"),
        &[
            "regress",
            plan.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, Some(5));
    assert_valid("regress", &r);
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_valid("regress", &file);
}

#[test]
fn validate_output_matches_its_schema() {
    let agent = agent_support::LocalAgent::start(&[]);
    let token_file = agent.token_file.display().to_string();
    let (code, v) = vfioctl(
        None,
        &[
            "validate",
            "--token-file",
            &token_file,
            "--agent",
            &agent.transport().to_string(),
            "--gpu",
            "emulated:8G",
            "--wait",
            "1",
        ],
    );
    assert_eq!(code, Some(3));
    assert_valid("validate", &v);
    assert_eq!(v["target"]["vendor"], "1af4");
    assert_eq!(v["target"]["device"], "1110");
}
