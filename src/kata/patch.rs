//! Apply a plan to a configuration.toml with toml_edit: only the planned keys change;
//! every comment, blank line, ordering and unrelated key stays byte for byte, and a
//! changed key keeps its own trailing comment.

use std::path::Path;

use serde::Serialize;
use toml_edit::{DocumentMut, Item, Table, Value};

use super::error::KataError;
use super::plan::{Rule, Val, Want, HQ};
use super::version::{KeyType, Target};

/// What happened to one planned key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Applied {
    /// The TOML table, e.g. `hypervisor.qemu`.
    pub table: &'static str,
    /// The key within the table.
    pub key: &'static str,
    /// The value in the result.
    pub value: Val,
    /// The value before, if the key was there.
    pub previous: Option<String>,
    /// False when the file already satisfied the rule (value kept).
    pub changed: bool,
    /// Why vfioctl wants this value (one line, from the plan).
    pub reason: String,
}

/// Parse a base file.
pub fn parse(text: &str, path: &Path) -> Result<DocumentMut, KataError> {
    let doc: DocumentMut =
        text.parse()
            .map_err(|e: toml_edit::TomlError| KataError::BaseParse {
                path: path.to_path_buf(),
                message: e.to_string().trim().replace('\n', " "),
            })?;
    if table(&doc, HQ).is_none() {
        return Err(KataError::BaseNotQemu {
            path: path.to_path_buf(),
        });
    }
    Ok(doc)
}

/// The table at a dotted path (`hypervisor.qemu`), if present.
pub fn table<'a>(doc: &'a DocumentMut, dotted: &str) -> Option<&'a Table> {
    let mut t = doc.as_table();
    for part in dotted.split('.') {
        t = t.get(part)?.as_table()?;
    }
    Some(t)
}

fn table_mut<'a>(doc: &'a mut DocumentMut, dotted: &str) -> &'a mut Table {
    let mut t = doc.as_table_mut();
    let parts: Vec<&str> = dotted.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if t.get(part).and_then(Item::as_table).is_none() {
            let mut nt = Table::new();
            nt.set_implicit(!last);
            t.insert(part, Item::Table(nt));
        }
        t = t
            .get_mut(part)
            .and_then(Item::as_table_mut)
            .expect("inserted above");
    }
    t
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "string",
        Value::Integer(_) => "integer",
        Value::Float(_) => "float",
        Value::Boolean(_) => "boolean",
        Value::Datetime(_) => "datetime",
        Value::Array(_) => "array",
        Value::InlineTable(_) => "inline table",
    }
}

/// Apply `wants` to `doc`. With `annotate`, each key vfioctl sets gets its reason as a
/// `# vfioctl:` comment line above it (for generated files; never for a user's file).
pub fn apply(
    doc: &mut DocumentMut,
    wants: &[Want],
    annotate: bool,
    path: &Path,
) -> Result<Vec<Applied>, KataError> {
    let mut out = Vec::new();
    for w in wants {
        let current: Option<Value> = table(doc, w.table)
            .and_then(|t| t.get(w.key))
            .and_then(Item::as_value)
            .cloned();
        let bad_type = |v: &Value, expected: &'static str| KataError::BaseKeyType {
            path: path.to_path_buf(),
            table: w.table.to_string(),
            key: w.key.to_string(),
            found: type_name(v),
            expected,
        };
        let previous = current.as_ref().map(|v| v.to_string().trim().to_string());
        let cur_val = current.as_ref().and_then(Val::from_toml);
        // The value the rule wants, or None when the file already satisfies it.
        let target: Option<Val> = match &w.rule {
            Rule::Set(v) => (cur_val.as_ref() != Some(v)).then(|| v.clone()),
            Rule::Reset(v) => match &cur_val {
                None => continue,
                Some(c) if c == v => continue,
                Some(_) => Some(v.clone()),
            },
            Rule::OneOf { allowed, fallback } => match &cur_val {
                None => continue,
                Some(Val::Str(c)) if allowed.contains(c) => continue,
                Some(_) => Some(fallback.clone()),
            },
            Rule::AtLeast(min) => match (&current, &cur_val) {
                (None, _) => Some(Val::Int(*min)),
                (Some(_), Some(Val::Int(i))) if i >= min => None,
                (Some(_), Some(Val::Int(_))) => Some(Val::Int(*min)),
                (Some(v), _) => return Err(bad_type(v, "integer")),
            },
            Rule::Range { min, max } => match (&current, &cur_val) {
                (None, _) => Some(Val::Int(*min)),
                (Some(_), Some(Val::Int(i))) if i >= min && i <= max => None,
                (Some(_), Some(Val::Int(_))) => Some(Val::Int(*min)),
                (Some(v), _) => return Err(bad_type(v, "integer")),
            },
            Rule::Words(words) => match (&current, &cur_val) {
                (None, _) => Some(Val::Str(words.join(" "))),
                (Some(_), Some(Val::Str(s))) => {
                    let have: Vec<&str> = s.split_whitespace().collect();
                    let missing: Vec<&str> = words
                        .iter()
                        .map(String::as_str)
                        .filter(|w| !have.contains(w))
                        .collect();
                    if missing.is_empty() {
                        None
                    } else if s.trim().is_empty() {
                        Some(Val::Str(missing.join(" ")))
                    } else {
                        Some(Val::Str(format!("{} {}", s.trim_end(), missing.join(" "))))
                    }
                }
                (Some(v), _) => return Err(bad_type(v, "string")),
            },
        };
        let changed = target.is_some();
        let value = match target {
            Some(v) => {
                set(
                    doc,
                    w.table,
                    w.key,
                    &v,
                    annotate.then_some(w.reason.as_str()),
                );
                v
            }
            None => {
                if annotate {
                    annotate_key(doc, w.table, w.key, &w.reason);
                }
                cur_val.expect("kept values are present")
            }
        };
        out.push(Applied {
            table: w.table,
            key: w.key,
            value,
            previous,
            changed,
            reason: w.reason.clone(),
        });
    }
    Ok(out)
}

/// Set one key, keeping the old value's surrounding whitespace and trailing comment.
fn set(doc: &mut DocumentMut, table: &str, key: &str, v: &Val, note: Option<&str>) {
    let t = table_mut(doc, table);
    let mut new = v.to_toml();
    match t.get_mut(key) {
        Some(item) => {
            if let Some(old) = item.as_value() {
                *new.decor_mut() = old.decor().clone();
            }
            *item = Item::Value(new);
        }
        None => {
            t.insert(key, Item::Value(new));
        }
    }
    if let Some(note) = note {
        annotate_key(doc, table, key, note);
    }
}

/// Add a `# vfioctl: <note>` line right above a key.
fn annotate_key(doc: &mut DocumentMut, table: &str, key: &str, note: &str) {
    let t = table_mut(doc, table);
    if let Some(mut k) = t.key_mut(key) {
        let d = k.leaf_decor_mut();
        let prefix = d
            .prefix()
            .and_then(|p| p.as_str())
            .unwrap_or("")
            .to_string();
        d.set_prefix(format!("{prefix}# vfioctl: {note}\n"));
    }
}

/// Keys of the tables Kata reads whose type is not what `target` decodes (empty when
/// the file is right). Unknown keys are not checked: Kata ignores them.
pub fn schema_violations(doc: &DocumentMut, target: &Target) -> Vec<String> {
    let mut v = Vec::new();
    for tname in ["hypervisor.qemu", "agent.kata", "runtime"] {
        let Some(t) = table(doc, tname) else { continue };
        for (k, item) in t.iter() {
            let Some(def) = target.key_def(tname, k) else {
                continue;
            };
            let Some(val) = item.as_value() else {
                v.push(format!("[{tname}] {k}: not a value"));
                continue;
            };
            let ok = match (def.ty, val) {
                (KeyType::Bool, Value::Boolean(_)) => true,
                (KeyType::UInt, Value::Integer(i)) => *i.value() >= 0,
                (KeyType::Str, Value::String(_)) => true,
                (KeyType::Enum(allowed), Value::String(s)) => allowed.contains(&s.value().as_str()),
                (KeyType::StrList, Value::Array(a)) => a.iter().all(|e| e.is_str()),
                _ => false,
            };
            if !ok {
                v.push(format!(
                    "[{tname}] {k} = {}: Kata reads {:?}",
                    val.to_string().trim(),
                    def.ty
                ));
            }
        }
    }
    v
}

/// Final checks on the result, as Kata's `checkPCIeConfig` / kata-types `validate()` do.
pub fn check_result(doc: &DocumentMut, target: &Target) -> Result<(), KataError> {
    let Some(t) = table(doc, HQ) else {
        return Ok(());
    };
    let s = |k: &str| {
        t.get(k)
            .and_then(Item::as_str)
            .unwrap_or("no-port")
            .to_string()
    };
    let i = |k: &str| t.get(k).and_then(Item::as_integer).unwrap_or(0);
    if target.reads(HQ, "hot_plug_vfio")
        && s("hot_plug_vfio") != "no-port"
        && s("cold_plug_vfio") != "no-port"
    {
        return Err(KataError::BothPlugModes);
    }
    if target.reads(HQ, "pcie_switch_port") && i("pcie_root_port") > 0 && i("pcie_switch_port") > 0
    {
        return Err(KataError::Conflict {
            key: "pcie_root_port",
            value: i("pcie_root_port").to_string(),
            other: "pcie_switch_port",
            other_value: i("pcie_switch_port").to_string(),
            why: "Kata forbids root ports and switch ports at the same time",
        });
    }
    Ok(())
}
