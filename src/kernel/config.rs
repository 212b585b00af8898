//! Kconfig assignment files: fragments (`kernel-configs/*.config`) and the final `.config`.
//!
//! Both use the same line grammar:
//! - `CONFIG_X=y`, `CONFIG_X=m`, `CONFIG_X=n` (tristate/bool),
//! - `CONFIG_X="text"` (string, with `\"` and `\\` escapes),
//! - `CONFIG_X=123`, `CONFIG_X=-1`, `CONFIG_X=0x1f` (int/hex),
//! - `# CONFIG_X is not set` (= n),
//! - other `#` comments and blank lines are ignored.
//!
//! In a final `.config`, "not set", `=n` and an absent symbol all mean n.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// One value of a Kconfig symbol.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum Value {
    /// `=y`: built in (or a bool set).
    Y,
    /// `=m`: built as a module.
    M,
    /// `=n` or `# CONFIG_X is not set`.
    N,
    /// A quoted string, unescaped.
    Str(String),
    /// An int or hex literal as written (`123`, `-1`, `0x1f`).
    Num(String),
}

/// The right-hand side of a `CONFIG_X=` line that is not a value ([`Value::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// A `"` without its closing quote.
    #[error("unterminated string {raw}")]
    Unterminated {
        /// The right-hand side as written.
        raw: String,
    },
    /// A string ending in a lone `\`.
    #[error("dangling backslash in {raw}")]
    DanglingBackslash {
        /// The right-hand side as written.
        raw: String,
    },
    /// Neither y, m, n, a string nor a number.
    #[error("`{raw}` is not y, m, n, a quoted string or a number")]
    NotAValue {
        /// The right-hand side as written.
        raw: String,
    },
}

impl Value {
    /// Parse the right-hand side of `CONFIG_X=...`.
    pub fn parse(raw: &str) -> Result<Value, ValueError> {
        let raw = raw.trim_end();
        match raw {
            "y" => return Ok(Value::Y),
            "m" => return Ok(Value::M),
            "n" => return Ok(Value::N),
            _ => {}
        }
        if let Some(inner) = raw.strip_prefix('"') {
            let Some(inner) = inner.strip_suffix('"') else {
                return Err(ValueError::Unterminated { raw: raw.into() });
            };
            let mut out = String::new();
            let mut it = inner.chars();
            while let Some(c) = it.next() {
                if c == '\\' {
                    match it.next() {
                        Some(e) => out.push(e),
                        None => return Err(ValueError::DanglingBackslash { raw: raw.into() }),
                    }
                } else {
                    out.push(c);
                }
            }
            return Ok(Value::Str(out));
        }
        if parse_num(raw).is_some() {
            return Ok(Value::Num(raw.to_string()));
        }
        Err(ValueError::NotAValue { raw: raw.into() })
    }

    /// Whether `actual` (from a final .config, `None` = absent) satisfies this request.
    /// n is satisfied by n and by absence; numbers compare numerically (`0x10` = `16`);
    /// strings exactly.
    pub fn satisfied_by(&self, actual: Option<&Value>) -> bool {
        match (self, actual) {
            (Value::N, None) | (Value::N, Some(Value::N)) => true,
            (Value::Num(a), Some(Value::Num(b))) => match (parse_num(a), parse_num(b)) {
                (Some(x), Some(y)) => x == y,
                _ => a == b,
            },
            (want, Some(got)) => want == got,
            (_, None) => false,
        }
    }

    /// Tristate value for expression evaluation: n=0, m=1, y=2; strings/numbers count as
    /// "set" only for the `!= ""`-style comparisons done elsewhere.
    pub fn tristate(&self) -> u8 {
        match self {
            Value::Y => 2,
            Value::M => 1,
            _ => 0,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Y => f.write_str("y"),
            Value::M => f.write_str("m"),
            Value::N => f.write_str("n"),
            Value::Str(s) => {
                f.write_str("\"")?;
                for c in s.chars() {
                    if c == '"' || c == '\\' {
                        f.write_str("\\")?;
                    }
                    write!(f, "{c}")?;
                }
                f.write_str("\"")
            }
            Value::Num(n) => f.write_str(n),
        }
    }
}

/// Parse an int (`-12`) or hex (`0x1F`) literal.
pub fn parse_num(s: &str) -> Option<i128> {
    let s = s.trim();
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return i128::from_str_radix(h, 16).ok();
    }
    if s.is_empty() {
        return None;
    }
    s.parse::<i128>().ok()
}

/// One `CONFIG_X=...` or `# CONFIG_X is not set` line, with where it came from.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Assignment {
    /// Symbol name without the `CONFIG_` prefix.
    pub symbol: String,
    /// The value assigned (`N` for "is not set").
    pub value: Value,
    /// The file it was read from.
    pub file: PathBuf,
    /// Its 1-based line number.
    pub line: usize,
}

impl Assignment {
    /// `CONFIG_X=value` or `# CONFIG_X is not set`, as Kconfig writes it.
    pub fn render(&self) -> String {
        render(&self.symbol, &self.value)
    }
}

/// Render one assignment the way `.config` spells it.
pub fn render(symbol: &str, value: &Value) -> String {
    match value {
        Value::N => format!("# CONFIG_{symbol} is not set"),
        v => format!("CONFIG_{symbol}={v}"),
    }
}

/// A line that is neither an assignment nor a comment.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{}:{line}: {reason}: `{text}`", file.display())]
pub struct ParseError {
    /// The file.
    pub file: PathBuf,
    /// The 1-based line number.
    pub line: usize,
    /// The line as written.
    pub text: String,
    /// What is wrong with it.
    pub reason: String,
}

fn valid_symbol(s: &str) -> bool {
    !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parse the assignments of a fragment or `.config` (in file order, repeats kept).
pub fn parse_assignments(file: &Path, text: &str) -> Result<Vec<Assignment>, ParseError> {
    let mut out = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let lineno = i + 1;
        let err = |reason: String| ParseError {
            file: file.to_path_buf(),
            line: lineno,
            text: raw.to_string(),
            reason,
        };
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim();
            if let Some(sym) = rest
                .strip_prefix("CONFIG_")
                .and_then(|r| r.strip_suffix(" is not set"))
            {
                if valid_symbol(sym) {
                    out.push(Assignment {
                        symbol: sym.to_string(),
                        value: Value::N,
                        file: file.to_path_buf(),
                        line: lineno,
                    });
                    continue;
                }
            }
            continue; // an ordinary comment
        }
        let Some(rest) = line.strip_prefix("CONFIG_") else {
            return Err(err("expected CONFIG_X=value or a # comment".into()));
        };
        let Some((sym, val)) = rest.split_once('=') else {
            return Err(err("missing `=`".into()));
        };
        if !valid_symbol(sym) {
            return Err(err(format!("bad symbol name `{sym}`")));
        }
        let value = Value::parse(val).map_err(|e| err(e.to_string()))?;
        out.push(Assignment {
            symbol: sym.to_string(),
            value,
            file: file.to_path_buf(),
            line: lineno,
        });
    }
    Ok(out)
}

/// A final `.config`: symbol -> value (last assignment wins, as in Kconfig).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DotConfig {
    /// Symbol (without `CONFIG_`) -> value; absent means n.
    pub values: BTreeMap<String, Value>,
}

impl DotConfig {
    /// Parse a `.config`'s text; `file` is only for error messages.
    pub fn parse(file: &Path, text: &str) -> Result<DotConfig, ParseError> {
        let mut values = BTreeMap::new();
        for a in parse_assignments(file, text)? {
            values.insert(a.symbol, a.value);
        }
        Ok(DotConfig { values })
    }

    /// The value of `sym`; `None` when absent (which Kconfig treats as n).
    pub fn get(&self, sym: &str) -> Option<&Value> {
        self.values.get(sym)
    }

    /// Tristate of `sym` (absent or non-tristate = 0).
    pub fn tristate(&self, sym: &str) -> u8 {
        self.get(sym).map(Value::tristate).unwrap_or(0)
    }

    /// Number of symbols set to y.
    pub fn count_y(&self) -> usize {
        self.values.values().filter(|v| **v == Value::Y).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str) -> Vec<Assignment> {
        parse_assignments(Path::new("f.config"), t).unwrap()
    }

    #[test]
    fn parses_every_value_kind() {
        let a = p(
            "# head\n\nCONFIG_A=y\nCONFIG_B=m\nCONFIG_C=n\n# CONFIG_D is not set\n\
                   CONFIG_E=\"-vf \\\"x\\\"\"\nCONFIG_F=17\nCONFIG_G=0x1F\nCONFIG_H=-1\n",
        );
        let vals: Vec<_> = a
            .iter()
            .map(|a| (a.symbol.as_str(), a.value.clone()))
            .collect();
        assert_eq!(
            vals,
            vec![
                ("A", Value::Y),
                ("B", Value::M),
                ("C", Value::N),
                ("D", Value::N),
                ("E", Value::Str("-vf \"x\"".into())),
                ("F", Value::Num("17".into())),
                ("G", Value::Num("0x1F".into())),
                ("H", Value::Num("-1".into())),
            ]
        );
        assert_eq!(a[4].render(), "CONFIG_E=\"-vf \\\"x\\\"\"");
        assert_eq!(a[3].render(), "# CONFIG_D is not set");
        assert_eq!(a[6].line, 9);
    }

    #[test]
    fn rejects_garbage_with_location() {
        let e =
            parse_assignments(Path::new("x.config"), "CONFIG_A=y\nCONFIG_B=maybe\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.to_string().starts_with("x.config:2:"), "{e}");
        assert!(parse_assignments(Path::new("x"), "FOO=y").is_err());
        assert!(parse_assignments(Path::new("x"), "CONFIG_A").is_err());
        assert!(parse_assignments(Path::new("x"), "CONFIG_A=\"open").is_err());
    }

    #[test]
    fn satisfaction_rules() {
        assert!(Value::N.satisfied_by(None));
        assert!(Value::N.satisfied_by(Some(&Value::N)));
        assert!(!Value::N.satisfied_by(Some(&Value::Y)));
        assert!(!Value::Y.satisfied_by(None));
        assert!(!Value::Y.satisfied_by(Some(&Value::M)));
        assert!(Value::Num("0x10".into()).satisfied_by(Some(&Value::Num("16".into()))));
        assert!(!Value::Num("17".into()).satisfied_by(Some(&Value::Num("16".into()))));
        assert!(!Value::Str("a".into()).satisfied_by(Some(&Value::Str("b".into()))));
    }

    #[test]
    fn dotconfig_last_wins() {
        let c =
            DotConfig::parse(Path::new(".config"), "CONFIG_A=y\n# CONFIG_A is not set\n").unwrap();
        assert_eq!(c.get("A"), Some(&Value::N));
        assert_eq!(c.tristate("A"), 0);
        assert_eq!(c.tristate("ZZZ"), 0);
    }
}
