//! Merging fragments and checking that every requested option landed.
//!
//! `merge_config.sh` in 6.1 exits 0 while dropping options, so vfioctl does the merge
//! itself (fragments appended in a fixed order onto `tinyconfig`, then `olddefconfig`) and
//! then checks the final `.config` here: each request (`=y`, `=m`, `=n`/not set, strings,
//! numbers) must hold, or it is reported with the reason read from the Kconfig tree (unmet
//! `depends on`, hidden symbol without a selector, forced by a `select`, unknown symbol).
//! An allowlist names intended exceptions, each with a reason.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::config::{parse_assignments, render, Assignment, DotConfig, ParseError, Value};
use super::kconfig::KconfigTree;

/// One fragment file (`kernel-configs/20-nvidia.config` is flavour `nvidia`).
#[derive(Clone, Debug, serde::Serialize, schemars::JsonSchema)]
pub struct Fragment {
    /// The flavour name: the file stem without its `NN-` prefix.
    pub flavour: String,
    /// The fragment file.
    pub path: PathBuf,
    /// sha256 (hex) of its text.
    pub sha256: String,
    /// Its assignments in file order (not serialized).
    #[serde(skip)]
    pub assignments: Vec<Assignment>,
}

impl Fragment {
    /// Parse a fragment's text; `path` names the flavour and the error positions.
    pub fn parse(path: &Path, text: &str) -> Result<Fragment, ParseError> {
        use sha2::Digest;
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        // `NN-name` -> `name`
        let flavour = match stem.split_once('-') {
            Some((n, rest)) if n.chars().all(|c| c.is_ascii_digit()) => rest.to_string(),
            _ => stem,
        };
        Ok(Fragment {
            flavour,
            path: path.to_path_buf(),
            sha256: format!("{:x}", sha2::Sha256::digest(text.as_bytes())),
            assignments: parse_assignments(path, text)?,
        })
    }
}

/// The same symbol assigned twice across (or within) fragments.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Redefinition {
    /// The symbol, without `CONFIG_`.
    pub symbol: String,
    /// The earlier assignment.
    pub first: Assignment,
    /// The later one, which wins.
    pub then: Assignment,
}

impl Redefinition {
    /// Different values: the later fragment overrides the earlier one.
    pub fn conflicting(&self) -> bool {
        !self.first.value.satisfied_by(Some(&self.then.value))
            || !self.then.value.satisfied_by(Some(&self.first.value))
    }
}

/// Fragments merged in order: the last assignment of each symbol wins.
#[derive(Clone, Debug, Default)]
pub struct Merged {
    /// Symbol (without `CONFIG_`) -> its winning assignment.
    pub requests: BTreeMap<String, Assignment>,
    /// Every symbol assigned more than once, in merge order.
    pub redefinitions: Vec<Redefinition>,
}

/// Merge fragments in the given order.
pub fn merge(fragments: &[Fragment]) -> Merged {
    let mut m = Merged::default();
    for f in fragments {
        for a in &f.assignments {
            if let Some(prev) = m.requests.insert(a.symbol.clone(), a.clone()) {
                m.redefinitions.push(Redefinition {
                    symbol: a.symbol.clone(),
                    first: prev,
                    then: a.clone(),
                });
            }
        }
    }
    m
}

impl Merged {
    /// The text appended to the tinyconfig `.config` before `olddefconfig`: one line per
    /// symbol (the winning value), sorted, so the result does not depend on repeats.
    pub fn render(&self) -> String {
        let mut s = String::from("# --- vfioctl kernel-configs fragments (merged) ---\n");
        for a in self.requests.values() {
            let _ = writeln!(s, "{}", a.render());
        }
        s
    }
}

/// Intended exceptions: `CONFIG_X  reason` per line (`#` comments).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Allowlist {
    /// Symbol (without `CONFIG_`) -> the reason it may be dropped.
    pub entries: BTreeMap<String, String>,
}

impl Allowlist {
    /// Parse the allowlist's text; `file` is only for error messages.
    pub fn parse(file: &Path, text: &str) -> Result<Allowlist, ParseError> {
        let mut entries = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (sym, reason) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let err = |reason: &str| ParseError {
                file: file.to_path_buf(),
                line: i + 1,
                text: raw.to_string(),
                reason: reason.to_string(),
            };
            let Some(sym) = sym.strip_prefix("CONFIG_") else {
                return Err(err("expected `CONFIG_X reason`"));
            };
            if reason.trim().is_empty() {
                return Err(err("an allowlist entry needs a reason"));
            }
            entries.insert(sym.to_string(), reason.trim().to_string());
        }
        Ok(Allowlist { entries })
    }
}

/// Why a request did not land.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    /// No `config X` in any Kconfig file read: a typo, or renamed/removed in this kernel.
    UnknownSymbol,
    /// A `depends on` (own or of an enclosing `if`/`menu`) is false.
    UnmetDependency,
    /// No prompt: only a `select` (or default) sets it, and no selector is enabled.
    HiddenNotSelected,
    /// Requested off but a `select` from an enabled symbol forced it on.
    ForcedBySelect,
    /// Requested `m` for a bool, or `m` without MODULES.
    NotModular,
    /// Anything else (range reset, choice resolved otherwise, not analysed).
    Changed,
    /// No Kconfig tree was available to analyse it.
    NotAnalysed,
}

/// One option that did not land as requested.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Finding {
    /// The symbol, without `CONFIG_`.
    pub symbol: String,
    /// The value the fragments asked for.
    pub requested: Value,
    /// Its value in the final `.config`; `None` when absent.
    pub actual: Option<Value>,
    /// The fragment with the winning request.
    pub file: PathBuf,
    /// The request's 1-based line in that fragment.
    pub line: usize,
    /// Why it did not land.
    pub cause: Cause,
    /// Human lines: the unmet `depends on` with its blockers, the selectors, ...
    pub details: Vec<String>,
    /// Set when the allowlist excuses it.
    pub allowed: Option<String>,
}

impl Finding {
    /// The request as a `.config` line (`CONFIG_X=y`, `# CONFIG_X is not set`).
    pub fn request_text(&self) -> String {
        render(&self.symbol, &self.requested)
    }
    /// The actual value for people: `=y`, `not set` or `absent`.
    pub fn actual_text(&self) -> String {
        match &self.actual {
            None => "absent".into(),
            Some(Value::N) => "not set".into(),
            Some(v) => format!("={v}"),
        }
    }
}

/// The verdict over one final `.config`.
#[derive(Clone, Debug, Default, serde::Serialize, schemars::JsonSchema)]
pub struct Report {
    /// Distinct symbols requested.
    pub requested: usize,
    /// Requests that did not land and are not allowlisted: the build fails on these.
    pub dropped: Vec<Finding>,
    /// Requests that did not land but are on the allowlist.
    pub allowed: Vec<Finding>,
    /// Different values for one symbol in two fragments (the later wins).
    pub conflicts: Vec<Redefinition>,
    /// Same value repeated (harmless; flavours restate what they rely on).
    pub repeats: usize,
    /// Allowlist entries that excused nothing.
    pub stale_allowlist: Vec<String>,
}

impl Report {
    /// Pass = nothing dropped and no un-allowlisted conflicting redefinition.
    pub fn ok(&self) -> bool {
        self.dropped.is_empty() && self.conflicts.is_empty()
    }

    /// Text for people: one block per dropped option.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{} options requested, {} landed, {} dropped, {} allowlisted",
            self.requested,
            self.requested - self.dropped.len() - self.allowed.len(),
            self.dropped.len(),
            self.allowed.len()
        );
        for f in &self.dropped {
            let _ = writeln!(
                s,
                "  DROPPED {} ({}:{}): {} in .config [{}]",
                f.request_text(),
                f.file.display(),
                f.line,
                f.actual_text(),
                serde_json::to_value(&f.cause)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            );
            for d in &f.details {
                let _ = writeln!(s, "      {d}");
            }
        }
        for f in &self.allowed {
            let _ = writeln!(
                s,
                "  allowed {} -> {} ({})",
                f.request_text(),
                f.actual_text(),
                f.allowed.as_deref().unwrap_or("")
            );
        }
        for c in &self.conflicts {
            let _ = writeln!(
                s,
                "  CONFLICT {}: {} ({}:{}) overridden by {} ({}:{})",
                c.symbol,
                c.first.render(),
                c.first.file.display(),
                c.first.line,
                c.then.render(),
                c.then.file.display(),
                c.then.line
            );
        }
        for a in &self.stale_allowlist {
            let _ = writeln!(s, "  note: allowlist entry CONFIG_{a} excused nothing");
        }
        s
    }
}

/// Explain why `sym` ended as `actual` instead of `requested`.
pub fn explain(
    sym: &str,
    requested: &Value,
    actual: Option<&Value>,
    cfg: &DotConfig,
    tree: Option<&KconfigTree>,
) -> (Cause, Vec<String>) {
    let Some(tree) = tree else {
        return (Cause::NotAnalysed, vec![]);
    };
    let Some(defs) = tree.get(sym) else {
        return (
            Cause::UnknownSymbol,
            vec![format!(
                "no `config {sym}` in the Kconfig tree of {} (typo, or renamed/removed in this kernel)",
                tree.root.display()
            )],
        );
    };
    let selectors = tree.selectors(sym);
    let sel_line = |only_on: bool| -> Option<String> {
        let list: Vec<String> = selectors
            .iter()
            .filter(|s| !s.imply)
            .filter(|s| !only_on || cfg.tristate(&s.by) > 0)
            .map(|s| {
                let v = cfg.get(&s.by).map(|v| v.to_string()).unwrap_or("n".into());
                match &s.cond {
                    Some(_) => format!("{}={v} (conditional)", s.by),
                    None => format!("{}={v}", s.by),
                }
            })
            .collect();
        if list.is_empty() {
            None
        } else {
            Some(list.join(", "))
        }
    };
    let wants_on = matches!(
        requested,
        Value::Y | Value::M | Value::Str(_) | Value::Num(_)
    );
    if wants_on && actual.map(Value::tristate).unwrap_or(0) == 0 {
        let unmet = tree.unmet(sym, cfg);
        if !unmet.is_empty() {
            let details = unmet
                .iter()
                .map(|(d, b)| {
                    format!(
                        "unmet `{}` ({}:{}): {}",
                        d.text,
                        d.file.display(),
                        d.line,
                        if b.is_empty() {
                            "(not evaluable)".to_string()
                        } else {
                            b.join(", ")
                        }
                    )
                })
                .collect();
            return (Cause::UnmetDependency, details);
        }
        if matches!(requested, Value::Y | Value::M) && !tree.is_visible(sym) {
            let d = match sel_line(false) {
                Some(l) => format!(
                    "hidden symbol (no prompt): only a `select` sets it; selectors: {l}; enable one of them in the fragment"
                ),
                None => "hidden symbol (no prompt) and nothing selects it".to_string(),
            };
            return (Cause::HiddenNotSelected, vec![d]);
        }
    }
    if *requested == Value::M {
        let bool_only = defs.iter().all(|d| d.kind == "bool" || d.kind.is_empty());
        if bool_only || cfg.tristate("MODULES") == 0 {
            return (
                Cause::NotModular,
                vec![if bool_only {
                    format!("{sym} is a bool: it can be y or n, not m")
                } else {
                    "m needs CONFIG_MODULES=y".to_string()
                }],
            );
        }
    }
    if *requested == Value::N && actual.map(Value::tristate).unwrap_or(0) > 0 {
        if let Some(l) = sel_line(true) {
            return (
                Cause::ForcedBySelect,
                vec![format!("forced on by `select` from: {l}")],
            );
        }
    }
    let mut d = Vec::new();
    if defs.iter().any(|d| d.in_choice) {
        d.push(format!(
            "{sym} is a member of a `choice` ({}:{}): another member won",
            defs[0].file.display(),
            defs[0].line
        ));
    } else {
        d.push(format!(
            "olddefconfig changed it (a `range`, default or select; see {}:{})",
            defs[0].file.display(),
            defs[0].line
        ));
    }
    (Cause::Changed, d)
}

/// Check `cfg` against the merged requests.
pub fn verify(
    merged: &Merged,
    cfg: &DotConfig,
    tree: Option<&KconfigTree>,
    allow: &Allowlist,
) -> Report {
    let mut r = Report {
        requested: merged.requests.len(),
        ..Default::default()
    };
    let mut used = std::collections::BTreeSet::new();
    for (sym, a) in &merged.requests {
        let actual = cfg.get(sym);
        if a.value.satisfied_by(actual) {
            continue;
        }
        let (cause, details) = explain(sym, &a.value, actual, cfg, tree);
        let allowed = allow.entries.get(sym).cloned();
        if allowed.is_some() {
            used.insert(sym.clone());
        }
        let f = Finding {
            symbol: sym.clone(),
            requested: a.value.clone(),
            actual: actual.cloned(),
            file: a.file.clone(),
            line: a.line,
            cause,
            details,
            allowed: allowed.clone(),
        };
        if allowed.is_some() {
            r.allowed.push(f);
        } else {
            r.dropped.push(f);
        }
    }
    for d in &merged.redefinitions {
        if d.conflicting() {
            if allow.entries.contains_key(&d.symbol) {
                used.insert(d.symbol.clone());
            } else {
                r.conflicts.push(d.clone());
            }
        } else {
            r.repeats += 1;
        }
    }
    r.stale_allowlist = allow
        .entries
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag(name: &str, t: &str) -> Fragment {
        Fragment::parse(Path::new(name), t).unwrap()
    }

    #[test]
    fn flavour_names_and_merge_order() {
        let a = frag("00-base.config", "CONFIG_A=y\nCONFIG_B=y\n");
        let b = frag(
            "20-nvidia.config",
            "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n",
        );
        assert_eq!(a.flavour, "base");
        assert_eq!(b.flavour, "nvidia");
        let m = merge(&[a, b]);
        assert_eq!(m.requests["B"].value, Value::N);
        assert_eq!(m.redefinitions.len(), 2);
        assert!(!m.redefinitions[0].conflicting());
        assert!(m.redefinitions[1].conflicting());
        assert_eq!(
            m.render(),
            "# --- vfioctl kernel-configs fragments (merged) ---\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=m\n"
        );
    }

    #[test]
    fn verify_without_tree_reports_drops_and_conflicts() {
        let m = merge(&[
            frag(
                "a.config",
                "CONFIG_A=y\nCONFIG_B=y\nCONFIG_S=\"x\"\nCONFIG_N=0x10\n",
            ),
            frag("b.config", "# CONFIG_B is not set\nCONFIG_D=n\n"),
        ]);
        let cfg = DotConfig::parse(
            Path::new(".config"),
            "CONFIG_A=y\nCONFIG_S=\"y\"\nCONFIG_N=16\n",
        )
        .unwrap();
        let r = verify(&m, &cfg, None, &Allowlist::default());
        assert_eq!(r.requested, 5);
        assert_eq!(
            r.dropped
                .iter()
                .map(|f| f.symbol.as_str())
                .collect::<Vec<_>>(),
            vec!["S"]
        );
        assert_eq!(r.dropped[0].cause, Cause::NotAnalysed);
        assert_eq!(r.conflicts.len(), 1);
        assert!(!r.ok());
        let allow = Allowlist::parse(
            Path::new("allowlist"),
            "# x\nCONFIG_S  string differs on purpose\nCONFIG_B  base on, nvidia off\nCONFIG_Q  stale\n",
        )
        .unwrap();
        let r = verify(&m, &cfg, None, &allow);
        assert!(r.ok(), "{}", r.render());
        assert_eq!(r.allowed.len(), 1);
        assert_eq!(r.stale_allowlist, vec!["Q"]);
        assert!(Allowlist::parse(Path::new("a"), "CONFIG_X\n").is_err());
        assert!(Allowlist::parse(Path::new("a"), "X reason\n").is_err());
    }
}
