//! Text from a guest (kernel log, serial console, agent replies) is untrusted: escape it
//! before it reaches a terminal, a log or XML. One owner for all three, used by the host
//! tool's printers, its log writer, its JUnit writers and the guest agent's own messages.
//!
//! Control characters are made visible, never dropped: `ESC` becomes `\x1b`, a C1 control
//! `\u{9b}`, so a report still shows that the guest sent them.

use std::borrow::Cow;
use std::fmt::Write;

/// C0 controls, DEL and the C1 range (`U+0080..=U+009F`): what a terminal may interpret.
fn is_control(c: char) -> bool {
    let u = c as u32;
    u < 0x20 || u == 0x7f || (0x80..=0x9f).contains(&u)
}

fn push_escaped(out: &mut String, c: char) {
    let u = c as u32;
    if u <= 0xff {
        let _ = write!(out, "\\x{u:02x}");
    } else {
        let _ = write!(out, "\\u{{{u:x}}}");
    }
}

fn escape_with(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_control(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_control(c) && !keep(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// For a terminal or a log file: newlines and tabs stay, every other control character
/// (escape sequences, carriage returns, backspaces, C1 controls) is written as `\xNN`.
pub fn terminal(s: &str) -> Cow<'_, str> {
    escape_with(s, |c| c == '\n' || c == '\t')
}

/// For one field on one line (an agent version, a kernel release): newlines are escaped
/// too, so the guest cannot forge a line of the host's output.
pub fn one_line(s: &str) -> Cow<'_, str> {
    escape_with(s, |c| c == '\t')
}

/// For XML 1.0 text: markup escaped, and every character XML 1.0 forbids (C0 controls
/// other than tab, newline and carriage return; `U+FFFE`, `U+FFFF`) and the C1 controls
/// written visibly as `\xNN` / `\u{...}` rather than as a character reference, which XML
/// 1.0 forbids for those characters too (`&#27;` is not well-formed).
pub fn xml(s: &str) -> String {
    xml_with(s, false)
}

/// For an XML attribute value: as [`xml`], and tab, newline and carriage return as
/// character references, which attribute-value normalisation leaves alone.
pub fn xml_attr(s: &str) -> String {
    xml_with(s, true)
}

fn xml_with(s: &str, attr: bool) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            '\n' if attr => o.push_str("&#10;"),
            '\r' if attr => o.push_str("&#13;"),
            '\t' if attr => o.push_str("&#9;"),
            '\t' | '\n' | '\r' => o.push(c),
            c if is_control(c) || c == '\u{fffe}' || c == '\u{ffff}' => push_escaped(&mut o, c),
            c => o.push(c),
        }
    }
    o
}

/// An [`std::io::Write`] adapter that passes text through [`terminal`]: everything a
/// command prints for people goes through one, so no guest text reaches the terminal raw.
/// Bytes that are not UTF-8 are written as `\xNN` too; a multi-byte character split
/// across two writes is kept until it is whole.
pub struct TerminalWriter<W: std::io::Write> {
    inner: W,
    pending: Vec<u8>,
}

impl<W: std::io::Write> TerminalWriter<W> {
    /// A writer that escapes control characters on their way to `inner`.
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            pending: Vec::new(),
        }
    }

    /// The wrapped writer (after [`std::io::Write::flush`]).
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn emit(&mut self, bytes: &[u8], last: bool) -> std::io::Result<()> {
        let mut out = String::new();
        let mut rest = bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    out.push_str(&terminal(s));
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    out.push_str(&terminal(std::str::from_utf8(good).unwrap_or_default()));
                    match e.error_len() {
                        Some(n) => {
                            for b in &bad[..n] {
                                let _ = write!(out, "\\x{b:02x}");
                            }
                            rest = &bad[n..];
                        }
                        // An incomplete character at the end: keep it for the next write.
                        None if !last => {
                            rest = bad;
                            break;
                        }
                        None => {
                            for b in bad {
                                let _ = write!(out, "\\x{b:02x}");
                            }
                            rest = &[];
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        self.inner.write_all(out.as_bytes())
    }
}

impl<W: std::io::Write> std::io::Write for TerminalWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut all = std::mem::take(&mut self.pending);
        all.extend_from_slice(buf);
        self.emit(&all, false)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.pending.is_empty() {
            let p = std::mem::take(&mut self.pending);
            self.emit(&p, true)?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn terminal_escapes_sequences_keeps_lines() {
        assert_eq!(terminal("plain\ttext\n"), "plain\ttext\n");
        assert!(matches!(terminal("plain"), Cow::Borrowed(_)));
        assert_eq!(
            terminal("\u{1b}]0;pwned\u{7}\u{1b}[2J\rX\u{8}\u{9b}31m"),
            "\\x1b]0;pwned\\x07\\x1b[2J\\x0dX\\x08\\x9b31m"
        );
        assert_eq!(one_line("6.1.0\nerror: forged"), "6.1.0\\x0aerror: forged");
        // Printable non-ASCII stays.
        assert_eq!(terminal("größe ✓"), "größe ✓");
    }

    #[test]
    fn xml_is_well_formed_for_every_char() {
        assert_eq!(
            xml("a<b>&\"c'\u{1b}[0m\n\u{1}"),
            "a&lt;b&gt;&amp;&quot;c&apos;\\x1b[0m\n\\x01"
        );
        assert_eq!(xml("\u{fffe}"), "\\u{fffe}");
        assert_eq!(
            xml_attr("one\ntwo\tthree\u{1}"),
            "one&#10;two&#9;three\\x01"
        );
        for c in (0u32..0x110000).filter_map(char::from_u32) {
            let s = xml(&c.to_string()) + &xml_attr(&c.to_string());
            assert!(
                s.chars().all(|c| {
                    let u = c as u32;
                    matches!(u, 0x9 | 0xa | 0xd)
                        || (0x20..=0xd7ff).contains(&u)
                        || (0xe000..=0xfffd).contains(&u)
                        || u >= 0x10000
                }),
                "{c:?} -> {s:?}"
            );
            // The only character references: tab and line breaks in attributes.
            let refs = s
                .replace("&#9;", "")
                .replace("&#10;", "")
                .replace("&#13;", "");
            assert!(!refs.contains("&#"), "{s}");
        }
    }

    #[test]
    fn writer_escapes_across_split_writes_and_bad_utf8() {
        let mut w = TerminalWriter::new(Vec::new());
        let s = "é\u{1b}[31m";
        let b = s.as_bytes();
        w.write_all(&b[..1]).unwrap(); // half of é
        w.write_all(&b[1..]).unwrap();
        w.write_all(b"\xff ok\n").unwrap();
        w.write_all(b"\xc3").unwrap(); // truncated at the end
        w.flush().unwrap();
        assert_eq!(
            String::from_utf8(w.into_inner()).unwrap(),
            "é\\x1b[31m\\xff ok\n\\xc3"
        );
    }
}
