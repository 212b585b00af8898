//! Validating a command's `--json` output against its schema in `schemas/` (generated
//! from the output types; tests/json_schemas.rs keeps them current).

#![allow(dead_code)]

use std::path::Path;

use serde_json::Value;

/// `schemas/<name>.schema.json`, parsed.
pub fn schema(name: &str) -> Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(format!("{name}.schema.json"));
    serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap()
}

/// Fail unless `instance` matches `schemas/<name>.schema.json`, naming every mismatch.
#[track_caller]
pub fn assert_valid(name: &str, instance: &Value) {
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
