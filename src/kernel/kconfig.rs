//! A small reader for the kernel's Kconfig language: enough to say *why* `olddefconfig`
//! dropped an option.
//!
//! It follows `source` statements from the top-level `Kconfig` (substituting `$(SRCARCH)`),
//! and records per `config`/`menuconfig` definition: whether it has a prompt (visible:
//! settable from a fragment) or is hidden (only a `select` or a default sets it), its own
//! `depends on` lines, the dependencies inherited from enclosing `if`, `menu ... depends
//! on`/`visible if` and `choice` blocks (also across `source`), and who `select`s it.
//! Expressions are parsed and evaluated against a final `.config` so the unmet term can
//! be named ("`depends on PCI && (ACPI || JAILHOUSE_GUEST)`: ACPI=n, JAILHOUSE_GUEST=n").
//!
//! Not a full Kconfig implementation: defaults, ranges and `imply` are ignored, and a
//! `$(macro)` inside an expression is treated as satisfied (it is expanded at parse time by
//! the real tool and cannot be evaluated here).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use super::config::{DotConfig, Value};

/// A dependency expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// A symbol name (without `CONFIG_`), or `y`/`m`/`n` or a number.
    Sym(String),
    /// A quoted string constant.
    Const(String),
    /// `$(...)` preprocessor macro (not evaluated).
    Macro(String),
    /// `!e`.
    Not(Box<Expr>),
    /// `a && b`.
    And(Box<Expr>, Box<Expr>),
    /// `a || b`.
    Or(Box<Expr>, Box<Expr>),
    /// `a OP b` with OP one of `=`, `!=`, `<`, `<=`, `>`, `>=` (the first field).
    Cmp(String, Box<Expr>, Box<Expr>),
}

/// A Kconfig expression that does not parse ([`Expr::parse`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ExprError {
    /// A character no token starts with.
    #[error("unexpected `{c}` in `{expr}`")]
    UnexpectedChar {
        /// The character.
        c: char,
        /// The whole expression.
        expr: String,
    },
    /// `(` without its `)`.
    #[error("missing `)`")]
    MissingParen,
    /// An operator where an operand belongs.
    #[error("unexpected `{op}`")]
    UnexpectedOp {
        /// The operator, e.g. `&&`.
        op: &'static str,
    },
    /// The expression ends where an operand belongs.
    #[error("unexpected end of expression")]
    UnexpectedEnd,
    /// Tokens after a complete expression.
    #[error("trailing tokens in `{expr}`")]
    Trailing {
        /// The whole expression.
        expr: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Str(String),
    Macro(String),
    Op(&'static str),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, ExprError> {
    let mut out = Vec::new();
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '#' {
            break; // trailing comment
        }
        let two: String = b[i..(i + 2).min(b.len())].iter().collect();
        let op2 = ["&&", "||", "!=", "<=", ">="].iter().find(|o| **o == two);
        if let Some(o) = op2 {
            out.push(Tok::Op(o));
            i += 2;
            continue;
        }
        if c == '$' && b.get(i + 1) == Some(&'(') {
            let mut depth = 0;
            let start = i;
            while i < b.len() {
                if b[i] == '(' {
                    depth += 1;
                } else if b[i] == ')' {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                i += 1;
            }
            out.push(Tok::Macro(b[start..(i + 1).min(b.len())].iter().collect()));
            i += 1;
            continue;
        }
        match c {
            '!' => out.push(Tok::Op("!")),
            '(' => out.push(Tok::Op("(")),
            ')' => out.push(Tok::Op(")")),
            '=' => out.push(Tok::Op("=")),
            '<' => out.push(Tok::Op("<")),
            '>' => out.push(Tok::Op(">")),
            '"' | '\'' => {
                let q = c;
                let mut v = String::new();
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == '\\' && i + 1 < b.len() {
                        i += 1;
                    }
                    v.push(b[i]);
                    i += 1;
                }
                out.push(Tok::Str(v));
            }
            _ if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => {
                let start = i;
                while i < b.len()
                    && (b[i].is_ascii_alphanumeric() || b[i] == '_' || b[i] == '-' || b[i] == '.')
                {
                    i += 1;
                }
                out.push(Tok::Word(b[start..i].iter().collect()));
                continue;
            }
            _ => return Err(ExprError::UnexpectedChar { c, expr: s.into() }),
        }
        i += 1;
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn eat(&mut self, op: &str) -> bool {
        if matches!(self.peek(), Some(Tok::Op(o)) if *o == op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn or(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.and()?;
        while self.eat("||") {
            l = Expr::Or(Box::new(l), Box::new(self.and()?));
        }
        Ok(l)
    }
    fn and(&mut self) -> Result<Expr, ExprError> {
        let mut l = self.not()?;
        while self.eat("&&") {
            l = Expr::And(Box::new(l), Box::new(self.not()?));
        }
        Ok(l)
    }
    fn not(&mut self) -> Result<Expr, ExprError> {
        if self.eat("!") {
            return Ok(Expr::Not(Box::new(self.not()?)));
        }
        self.cmp()
    }
    fn cmp(&mut self) -> Result<Expr, ExprError> {
        let l = self.atom()?;
        for op in ["=", "!=", "<", "<=", ">", ">="] {
            if self.eat(op) {
                let r = self.atom()?;
                return Ok(Expr::Cmp(op.to_string(), Box::new(l), Box::new(r)));
            }
        }
        Ok(l)
    }
    fn atom(&mut self) -> Result<Expr, ExprError> {
        if self.eat("(") {
            let e = self.or()?;
            if !self.eat(")") {
                return Err(ExprError::MissingParen);
            }
            return Ok(e);
        }
        let t = self.peek().cloned();
        self.pos += 1;
        match t {
            Some(Tok::Word(w)) => Ok(Expr::Sym(w)),
            Some(Tok::Str(s)) => Ok(Expr::Const(s)),
            Some(Tok::Macro(m)) => Ok(Expr::Macro(m)),
            Some(Tok::Op(op)) => Err(ExprError::UnexpectedOp { op }),
            None => Err(ExprError::UnexpectedEnd),
        }
    }
}

impl Expr {
    /// Parse a Kconfig expression (`A && (B || !C)`, `X = "y"`, `$(macro)`).
    pub fn parse(s: &str) -> Result<Expr, ExprError> {
        let mut p = Parser {
            toks: tokenize(s)?,
            pos: 0,
        };
        let e = p.or()?;
        if p.pos != p.toks.len() {
            return Err(ExprError::Trailing { expr: s.into() });
        }
        Ok(e)
    }

    /// The value of an operand as a string for comparisons.
    fn operand(&self, cfg: &DotConfig) -> String {
        match self {
            Expr::Sym(s) => match s.as_str() {
                "y" | "m" | "n" => s.clone(),
                // a number written without quotes is a constant, not a symbol
                _ if super::config::parse_num(s).is_some() => s.clone(),
                _ => match cfg.get(s) {
                    None => "n".into(),
                    Some(Value::Str(v)) => v.clone(),
                    Some(v) => v.to_string(),
                },
            },
            Expr::Const(c) => c.clone(),
            _ => String::new(),
        }
    }

    /// Tristate value (0 n, 1 m, 2 y) of the expression under `cfg`.
    pub fn eval(&self, cfg: &DotConfig) -> u8 {
        match self {
            Expr::Sym(s) => match s.as_str() {
                "y" => 2,
                "m" => 1,
                "n" => 0,
                _ => cfg.tristate(s),
            },
            Expr::Const(c) => match c.as_str() {
                "y" => 2,
                "m" => 1,
                _ => 0,
            },
            Expr::Macro(_) => 2,
            Expr::Not(e) => 2 - e.eval(cfg),
            Expr::And(a, b) => a.eval(cfg).min(b.eval(cfg)),
            Expr::Or(a, b) => a.eval(cfg).max(b.eval(cfg)),
            Expr::Cmp(op, a, b) => {
                let (l, r) = (a.operand(cfg), b.operand(cfg));
                let ord = match (super::config::parse_num(&l), super::config::parse_num(&r)) {
                    (Some(x), Some(y)) => x.cmp(&y),
                    _ => l.cmp(&r),
                };
                let t = match op.as_str() {
                    "=" => l == r,
                    "!=" => l != r,
                    "<" => ord.is_lt(),
                    "<=" => ord.is_le(),
                    ">" => ord.is_gt(),
                    _ => ord.is_ge(),
                };
                if t {
                    2
                } else {
                    0
                }
            }
        }
    }

    /// The terms that make this expression false under `cfg`, as `SYM=value` strings
    /// (`ACPI=n`, `XEN=y` for a failing `!XEN`). Empty when the expression holds.
    pub fn blockers(&self, cfg: &DotConfig) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_blockers(cfg, false, &mut out);
        let mut seen = BTreeSet::new();
        out.retain(|s| seen.insert(s.clone()));
        out
    }

    fn show(sym: &str, cfg: &DotConfig) -> String {
        match cfg.get(sym) {
            None => format!("{sym}=n"),
            Some(v) => format!("{sym}={v}"),
        }
    }

    fn collect_blockers(&self, cfg: &DotConfig, negated: bool, out: &mut Vec<String>) {
        let v = self.eval(cfg);
        let failing = if negated { v == 2 } else { v == 0 };
        if !failing {
            return;
        }
        match self {
            Expr::Sym(s) => out.push(Self::show(s, cfg)),
            Expr::Not(e) => e.collect_blockers(cfg, !negated, out),
            Expr::And(a, b) | Expr::Or(a, b) => {
                a.collect_blockers(cfg, negated, out);
                b.collect_blockers(cfg, negated, out);
            }
            Expr::Cmp(op, a, b) => {
                let l = match &**a {
                    Expr::Sym(s) => Self::show(s, cfg),
                    e => e.operand(cfg),
                };
                out.push(format!("{l} (needs {op} {})", b.operand(cfg)));
            }
            Expr::Const(_) | Expr::Macro(_) => {}
        }
    }

    /// Every symbol mentioned.
    pub fn symbols(&self, out: &mut BTreeSet<String>) {
        match self {
            Expr::Sym(s) if !matches!(s.as_str(), "y" | "m" | "n") => {
                out.insert(s.clone());
            }
            Expr::Not(e) => e.symbols(out),
            Expr::And(a, b) | Expr::Or(a, b) | Expr::Cmp(_, a, b) => {
                a.symbols(out);
                b.symbols(out);
            }
            _ => {}
        }
    }
}

/// A dependency with where it was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dep {
    /// As written, e.g. `depends on PCI && ACPI` or `if VIRTIO_MENU` or `menu "..." depends on NET`.
    pub text: String,
    /// The parsed expression.
    pub expr: Expr,
    /// The Kconfig file, relative to the source tree.
    pub file: PathBuf,
    /// The 1-based line number.
    pub line: usize,
}

/// A `select` (or `imply`) of this symbol by another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    /// The selecting symbol (without `CONFIG_`).
    pub by: String,
    /// `select X if COND`
    pub cond: Option<Expr>,
    /// `imply` rather than `select` (a weak hint, not forced).
    pub imply: bool,
}

/// One `config X` / `menuconfig X` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Definition {
    /// The Kconfig file, relative to the source tree.
    pub file: PathBuf,
    /// The 1-based line of the `config` line.
    pub line: usize,
    /// bool, tristate, string, int, hex (empty when a later definition gives it).
    pub kind: String,
    /// A prompt makes the symbol settable from a fragment; without one it is hidden.
    pub has_prompt: bool,
    /// Its own `depends on` lines, then the enclosing `if`/`menu`/`choice` dependencies.
    pub deps: Vec<Dep>,
    /// Inside a `choice` block.
    pub in_choice: bool,
}

/// Every symbol of one kernel source tree for one architecture.
#[derive(Clone, Debug, Default)]
pub struct KconfigTree {
    /// The source tree's top directory.
    pub root: PathBuf,
    /// Every definition of each symbol (a symbol may be defined in several places).
    pub symbols: BTreeMap<String, Vec<Definition>>,
    /// Who `select`s or `implies` each symbol.
    pub selected_by: BTreeMap<String, Vec<Selector>>,
    /// Files read (for tests and diagnostics).
    pub files: usize,
    /// Lines that could not be parsed (`file:line: reason`); kept, not fatal.
    pub warnings: Vec<String>,
}

/// A Kconfig file of the tree could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KconfigError {
    /// Reading a file (the top-level `Kconfig` or a `source`d one) failed.
    #[error("cannot read Kconfig file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

#[derive(Clone, Debug)]
enum Block {
    If(Dep),
    Menu(Vec<Dep>),
    Choice(Vec<Dep>),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cur {
    None,
    Config,
    Menu,
    Choice,
    Other,
}

fn indent_width(s: &str) -> usize {
    let mut w = 0;
    for c in s.chars() {
        match c {
            ' ' => w += 1,
            '\t' => w = (w / 8 + 1) * 8,
            _ => break,
        }
    }
    w
}

impl KconfigTree {
    /// Read the tree under `root` for `srcarch` (`x86` for x86_64).
    pub fn load(root: &Path, srcarch: &str) -> Result<KconfigTree, KconfigError> {
        let mut t = KconfigTree {
            root: root.to_path_buf(),
            ..Default::default()
        };
        let mut stack = Vec::new();
        let mut seen = BTreeSet::new();
        t.read_file(Path::new("Kconfig"), srcarch, &mut stack, &mut seen)?;
        Ok(t)
    }

    fn read_file(
        &mut self,
        rel: &Path,
        srcarch: &str,
        stack: &mut Vec<Block>,
        seen: &mut BTreeSet<PathBuf>,
    ) -> Result<(), KconfigError> {
        let path = self.root.join(rel);
        if !seen.insert(path.clone()) {
            return Ok(());
        }
        let text = std::fs::read_to_string(&path).map_err(|source| KconfigError::Read {
            path: path.clone(),
            source,
        })?;
        self.files += 1;
        let base_depth = stack.len();
        // Join continuation lines, keeping the first line's number.
        let mut lines: Vec<(usize, String)> = Vec::new();
        let mut pending: Option<(usize, String)> = None;
        for (i, l) in text.lines().enumerate() {
            let (n, mut acc) = pending.take().unwrap_or((i + 1, String::new()));
            if let Some(stripped) = l.strip_suffix('\\') {
                acc.push_str(stripped);
                acc.push(' ');
                pending = Some((n, acc));
            } else {
                acc.push_str(l);
                lines.push((n, acc));
            }
        }
        if let Some(p) = pending {
            lines.push(p);
        }

        let mut cur = Cur::None;
        let mut cur_sym: Option<(String, usize)> = None; // symbol and index of its definition
        let mut help_indent: Option<Option<usize>> = None; // Some(None): in help, indent unknown

        for (n, raw) in lines {
            if let Some(hi) = help_indent {
                if raw.trim().is_empty() {
                    continue;
                }
                let w = indent_width(&raw);
                match hi {
                    None => {
                        help_indent = Some(Some(w));
                        continue;
                    }
                    Some(h) if w >= h => continue,
                    Some(_) => help_indent = None,
                }
            }
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (kw, rest) = match line.split_once(char::is_whitespace) {
                Some((k, r)) => (k, r.trim()),
                None => (line, ""),
            };
            let dep = |text: String, e: &str| -> Option<Dep> {
                Expr::parse(e).ok().map(|expr| Dep {
                    text: text.split_whitespace().collect::<Vec<_>>().join(" "),
                    expr,
                    file: rel.to_path_buf(),
                    line: n,
                })
            };
            match kw {
                "config" | "menuconfig" => {
                    let sym = rest.split_whitespace().next().unwrap_or("").to_string();
                    let mut inherited = Vec::new();
                    let mut in_choice = false;
                    for b in stack.iter() {
                        match b {
                            Block::If(d) => inherited.push(d.clone()),
                            Block::Menu(ds) => inherited.extend(ds.iter().cloned()),
                            Block::Choice(ds) => {
                                in_choice = true;
                                inherited.extend(ds.iter().cloned())
                            }
                        }
                    }
                    let defs = self.symbols.entry(sym.clone()).or_default();
                    defs.push(Definition {
                        file: rel.to_path_buf(),
                        line: n,
                        kind: String::new(),
                        has_prompt: false,
                        deps: inherited,
                        in_choice,
                    });
                    cur_sym = Some((sym, defs.len() - 1));
                    cur = Cur::Config;
                }
                "menu" => {
                    stack.push(Block::Menu(Vec::new()));
                    cur = Cur::Menu;
                    cur_sym = None;
                }
                "endmenu" => {
                    if let Some(pos) = stack.iter().rposition(|b| matches!(b, Block::Menu(_))) {
                        stack.truncate(pos);
                    }
                    cur = Cur::None;
                    cur_sym = None;
                }
                "choice" => {
                    stack.push(Block::Choice(Vec::new()));
                    cur = Cur::Choice;
                    cur_sym = None;
                }
                "endchoice" => {
                    if let Some(pos) = stack.iter().rposition(|b| matches!(b, Block::Choice(_))) {
                        stack.truncate(pos);
                    }
                    cur = Cur::None;
                    cur_sym = None;
                }
                "if" => {
                    if let Some(d) = dep(format!("if {rest}"), rest) {
                        stack.push(Block::If(d));
                    } else {
                        self.warnings
                            .push(format!("{}:{n}: unparsed `if {rest}`", rel.display()));
                        stack.push(Block::If(Dep {
                            text: format!("if {rest}"),
                            expr: Expr::Macro(rest.to_string()),
                            file: rel.to_path_buf(),
                            line: n,
                        }));
                    }
                    cur = Cur::None;
                    cur_sym = None;
                }
                "endif" => {
                    if let Some(pos) = stack.iter().rposition(|b| matches!(b, Block::If(_))) {
                        stack.truncate(pos);
                    }
                    cur = Cur::None;
                    cur_sym = None;
                }
                "comment" | "mainmenu" => {
                    cur = Cur::Other;
                    cur_sym = None;
                }
                "source" | "rsource" | "osource" | "orsource" => {
                    let target = rest.trim_matches('"').replace("$(SRCARCH)", srcarch);
                    if target.contains("$(") {
                        continue;
                    }
                    let target = if kw.contains('r') && kw != "source" {
                        rel.parent().unwrap_or(Path::new("")).join(target)
                    } else {
                        PathBuf::from(target)
                    };
                    if !self.root.join(&target).is_file() {
                        if kw.starts_with('o') {
                            continue;
                        }
                        self.warnings.push(format!(
                            "{}:{n}: missing source {}",
                            rel.display(),
                            target.display()
                        ));
                        continue;
                    }
                    self.read_file(&target, srcarch, stack, seen)?;
                }
                "help" | "---help---" => {
                    help_indent = Some(None);
                }
                "depends" => {
                    let e = rest.strip_prefix("on").unwrap_or(rest).trim();
                    let Some(d) = dep(format!("depends on {e}"), e) else {
                        self.warnings
                            .push(format!("{}:{n}: unparsed `depends on {e}`", rel.display()));
                        continue;
                    };
                    match cur {
                        Cur::Config => {
                            if let Some((s, i)) = &cur_sym {
                                if let Some(def) =
                                    self.symbols.get_mut(s).and_then(|v| v.get_mut(*i))
                                {
                                    // own deps before the inherited block deps
                                    let own = def
                                        .deps
                                        .iter()
                                        .take_while(|x| x.file == *rel && x.line >= def.line)
                                        .count();
                                    def.deps.insert(own, d);
                                }
                            }
                        }
                        Cur::Menu | Cur::Choice => {
                            if let Some(Block::Menu(ds) | Block::Choice(ds)) = stack.last_mut() {
                                ds.push(d);
                            }
                        }
                        _ => {}
                    }
                }
                "visible" if cur == Cur::Menu => {
                    let e = rest.strip_prefix("if").unwrap_or(rest).trim();
                    if let (Some(d), Some(Block::Menu(ds))) =
                        (dep(format!("visible if {e}"), e), stack.last_mut())
                    {
                        ds.push(d);
                    }
                }
                "bool" | "tristate" | "string" | "int" | "hex" | "prompt" | "def_bool"
                | "def_tristate" | "boolean" => {
                    if let (Cur::Config, Some((s, i))) = (cur, &cur_sym) {
                        if let Some(def) = self.symbols.get_mut(s).and_then(|v| v.get_mut(*i)) {
                            if kw != "prompt" {
                                def.kind = match kw {
                                    "def_bool" | "boolean" => "bool".into(),
                                    "def_tristate" => "tristate".into(),
                                    k => k.into(),
                                };
                            }
                            let has_prompt_text = rest.starts_with('"') || rest.starts_with('\'');
                            if has_prompt_text && !kw.starts_with("def_") {
                                def.has_prompt = true;
                            }
                        }
                    }
                }
                "select" | "imply" => {
                    if let (Cur::Config, Some((by, _))) = (cur, &cur_sym) {
                        let (target, cond) = match rest.split_once(" if ") {
                            Some((t, c)) => (t.trim(), Expr::parse(c.trim()).ok()),
                            None => (rest.trim(), None),
                        };
                        self.selected_by
                            .entry(target.to_string())
                            .or_default()
                            .push(Selector {
                                by: by.clone(),
                                cond,
                                imply: kw == "imply",
                            });
                    }
                }
                _ => {}
            }
        }
        // An unbalanced file (should not happen) must not leak blocks into its parent.
        stack.truncate(base_depth);
        Ok(())
    }

    /// Every definition of `sym` (without `CONFIG_`), `None` if it is not defined.
    pub fn get(&self, sym: &str) -> Option<&[Definition]> {
        self.symbols.get(sym).map(Vec::as_slice)
    }

    /// Whether any definition has a prompt (settable from a fragment).
    pub fn is_visible(&self, sym: &str) -> bool {
        self.get(sym)
            .map(|d| d.iter().any(|d| d.has_prompt))
            .unwrap_or(false)
    }

    /// The dependencies of `sym` that do not hold under `cfg`, with their blockers.
    /// A symbol with several definitions is blocked only if every definition is; the
    /// first definition's failing deps are reported.
    pub fn unmet(&self, sym: &str, cfg: &DotConfig) -> Vec<(Dep, Vec<String>)> {
        let Some(defs) = self.get(sym) else {
            return Vec::new();
        };
        let mut first: Option<Vec<(Dep, Vec<String>)>> = None;
        for def in defs {
            let failing: Vec<_> = def
                .deps
                .iter()
                .filter(|d| d.expr.eval(cfg) == 0)
                .map(|d| (d.clone(), d.expr.blockers(cfg)))
                .collect();
            if failing.is_empty() {
                return Vec::new();
            }
            first.get_or_insert(failing);
        }
        first.unwrap_or_default()
    }

    /// Symbols that select (or imply) `sym`, with their value in `cfg`.
    pub fn selectors(&self, sym: &str) -> &[Selector] {
        self.selected_by.get(sym).map(Vec::as_slice).unwrap_or(&[])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> DotConfig {
        DotConfig::parse(Path::new(".config"), s).unwrap()
    }

    #[test]
    fn expressions_evaluate_and_name_blockers() {
        let c = cfg("CONFIG_PCI=y\nCONFIG_MOD=m\nCONFIG_S=\"abc\"\nCONFIG_N=12\n");
        let e = Expr::parse("PCI && (ACPI || JAILHOUSE_GUEST)").unwrap();
        assert_eq!(e.eval(&c), 0);
        assert_eq!(e.blockers(&c), vec!["ACPI=n", "JAILHOUSE_GUEST=n"]);
        assert_eq!(Expr::parse("PCI && !XEN").unwrap().eval(&c), 2);
        let x = Expr::parse("!PCI").unwrap();
        assert_eq!(x.blockers(&c), vec!["PCI=y"]);
        assert_eq!(Expr::parse("MOD").unwrap().eval(&c), 1);
        assert_eq!(Expr::parse("MOD && PCI").unwrap().eval(&c), 1);
        assert_eq!(Expr::parse("S = \"abc\"").unwrap().eval(&c), 2);
        assert_eq!(Expr::parse("S != \"abc\"").unwrap().eval(&c), 0);
        assert_eq!(Expr::parse("N >= 10").unwrap().eval(&c), 2);
        assert_eq!(Expr::parse("MOD=y").unwrap().eval(&c), 0);
        assert_eq!(
            Expr::parse("$(cc-option,-fzero-call-used-regs=used-gpr) && PCI")
                .unwrap()
                .eval(&c),
            2
        );
        assert!(Expr::parse("A && (B").is_err());
    }

    #[test]
    fn reads_blocks_sources_and_help() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("arch/x86")).unwrap();
        std::fs::create_dir_all(r.join("net")).unwrap();
        std::fs::write(
            r.join("Kconfig"),
            "mainmenu \"t\"\nsource \"arch/$(SRCARCH)/Kconfig\"\nconfig NET\n\tbool \"net\"\n\
             \thelp\n\t  config FAKE inside help\n\t  depends on NOTHING\n\nif NET\nsource \"net/Kconfig\"\nendif\n\
             menu \"virt\"\n\tdepends on PCI\nconfig HIDDEN\n\tbool\n\tdepends on A && \\\n\t\tB\n\
             endmenu\nconfig SEL\n\tbool \"s\"\n\tselect HIDDEN if NET\n",
        )
        .unwrap();
        std::fs::write(r.join("arch/x86/Kconfig"), "config PCI\n\tdef_bool y\n").unwrap();
        std::fs::write(
            r.join("net/Kconfig"),
            "config VSOCKETS\n\ttristate \"vsock\"\n\tdepends on UNIX\n",
        )
        .unwrap();
        let t = KconfigTree::load(r, "x86").unwrap();
        assert_eq!(t.files, 3);
        assert!(t.get("FAKE").is_none(), "help text must be skipped");
        let v = &t.get("VSOCKETS").unwrap()[0];
        assert!(v.has_prompt);
        assert_eq!(
            v.deps.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(),
            vec!["depends on UNIX", "if NET"]
        );
        let h = &t.get("HIDDEN").unwrap()[0];
        assert!(!h.has_prompt);
        assert_eq!(h.deps[0].text, "depends on A && B");
        assert_eq!(h.deps[1].text, "depends on PCI");
        assert_eq!(t.selectors("HIDDEN")[0].by, "SEL");
        assert!(!t.get("PCI").unwrap()[0].has_prompt);
        let c = cfg("CONFIG_PCI=y\nCONFIG_A=y\n");
        let un = t.unmet("HIDDEN", &c);
        assert_eq!(un.len(), 1);
        assert_eq!(un[0].1, vec!["B=n"]);
        assert!(t.unmet("PCI", &c).is_empty());
    }
}
