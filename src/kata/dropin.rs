//! `config.d/` drop-ins. Both runtimes merge every file of the `config.d` directory
//! beside the configuration they load over it, in name order (Go `decodeDropIns`, since
//! 3.x; kata-types `drop_in::load`). `vfioctl kata config --drop-in DIR` writes only the
//! keys vfioctl changes there, so the shipped file stays untouched across upgrades.

use std::path::{Path, PathBuf};

use toml_edit::{DocumentMut, Item, Table};

use super::error::KataError;
use super::patch::Applied;
use super::version::Target;
use super::DROP_IN_NAME;

/// One existing drop-in file.
#[derive(Clone, Debug)]
pub struct DropIn {
    /// The file's path in `config.d/`.
    pub path: PathBuf,
    /// The parsed file.
    pub doc: DocumentMut,
}

/// The drop-ins of `dir` that Kata would read, in Kata's order, except vfioctl's own
/// (it is rewritten). A missing directory has none.
pub fn read_dir(dir: &Path) -> Result<Vec<DropIn>, KataError> {
    let err = |why: String| KataError::DropIn {
        path: dir.to_path_buf(),
        why,
    };
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(err(format!("cannot list it: {e}"))),
    };
    let mut names: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| p.file_name().is_some_and(|n| n != DROP_IN_NAME))
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|path| {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
            let doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
                err(format!(
                    "{} is not valid TOML (Kata would refuse it too): {}",
                    path.display(),
                    e.to_string().trim().replace('\n', " ")
                ))
            })?;
            Ok(DropIn { path, doc })
        })
        .collect()
}

/// Merge `over` into `doc` as Kata does: tables recursively, any other value replaced.
pub fn merge(doc: &mut DocumentMut, over: &DocumentMut) {
    merge_table(doc.as_table_mut(), over.as_table());
}

fn merge_table(into: &mut Table, over: &Table) {
    for (k, item) in over.iter() {
        match (into.get_mut(k), item) {
            (Some(Item::Table(a)), Item::Table(b)) => merge_table(a, b),
            _ => {
                into.insert(k, item.clone());
            }
        }
    }
}

/// The drop-in text: the changed keys, by table, each with its reason.
pub fn render(target: &Target, applied: &[Applied]) -> String {
    let mut out = format!(
        "# Drop-in written by `vfioctl kata config --drop-in` for {target}: only the keys\n\
         # vfioctl changes; Kata merges it over the configuration.toml beside config.d/.\n"
    );
    let mut tables: Vec<&str> = Vec::new();
    for a in applied.iter().filter(|a| a.changed) {
        if !tables.contains(&a.table) {
            tables.push(a.table);
        }
    }
    for t in tables {
        out.push_str(&format!("\n[{t}]\n"));
        for a in applied.iter().filter(|a| a.changed && a.table == t) {
            out.push_str(&format!("# vfioctl: {}\n", a.reason));
            let mut item = toml_edit::Item::Value(a.value.to_toml());
            if let Some(v) = item.as_value_mut() {
                v.decor_mut().clear();
            }
            out.push_str(&format!("{} = {}\n", a.key, item.to_string().trim()));
        }
    }
    out
}
