//! An error and its causes on one line, for the places that keep a failure as text (a
//! step note, a retry loop's last error, an agent reply). Errors do not repeat their
//! `#[source]` in their message, so each cause is written once, outermost first.

use std::error::Error;

/// `outer: cause: root cause`.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::chain;

    #[test]
    fn every_cause_once_outermost_first() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("reading /sys/x")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("permission denied"));
        assert_eq!(chain(&e), "reading /sys/x: permission denied");
        assert_eq!(chain(&e.0), "permission denied");
    }
}
