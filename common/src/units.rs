//! Byte sizes as people write them: `16M`, `32G`, `128GiB`, `0x800000000`.

use std::fmt;

const UNITS: [(&str, u64); 6] = [
    ("E", 1 << 60),
    ("P", 1 << 50),
    ("T", 1 << 40),
    ("G", 1 << 30),
    ("M", 1 << 20),
    ("K", 1 << 10),
];

/// Format a size the short way used in tables and QEMU options: `32G`, `16M`, `4K`,
/// `1536M`; bytes that are not a whole KiB print as plain numbers.
pub fn short(bytes: u64) -> String {
    for (suffix, unit) in UNITS {
        if bytes >= unit && bytes % unit == 0 {
            return format!("{}{}", bytes / unit, suffix);
        }
    }
    bytes.to_string()
}

/// A size with one decimal for humans (`1.5G`) when not a whole unit.
pub fn human(bytes: u64) -> String {
    for (suffix, unit) in UNITS {
        if bytes >= unit {
            if bytes % unit == 0 {
                return format!("{}{}", bytes / unit, suffix);
            }
            return format!("{:.1}{}", bytes as f64 / unit as f64, suffix);
        }
    }
    format!("{bytes}B")
}

/// The largest size vfioctl accepts anywhere: 4 PiB, the 52-bit physical address space of
/// x86-64 and arm64 (LA57 included). Guest memory, a BAR or a window beyond it cannot exist,
/// and keeping every size below it means sums of a few thousand of them cannot overflow.
pub const MAX_ADDRESSABLE: u64 = 1 << 52;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid size {input:?}: {reason}")]
/// A string that is not a byte size.
pub struct SizeError {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

const SYNTAX: &str = "expected a number with an optional K/M/G/T/P suffix, e.g. 8G or 256M";
const TOO_BIG: &str =
    "larger than 4P, the most any machine can address (52-bit physical addresses)";

/// Parse `8G`, `8GiB`, `8g`, `256M`, `4096`, `0x200000000`.
pub fn parse(input: &str) -> Result<u64, SizeError> {
    let err = || SizeError {
        input: input.to_string(),
        reason: SYNTAX,
    };
    let big = || SizeError {
        input: input.to_string(),
        reason: TOO_BIG,
    };
    let capped = |n: u64| {
        if n > MAX_ADDRESSABLE {
            Err(big())
        } else {
            Ok(n)
        }
    };
    let s = input.trim();
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        return match u64::from_str_radix(hex, 16) {
            Ok(n) => capped(n),
            Err(_) => Err(big()),
        };
    }
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits_end == 0 {
        return Err(err());
    }
    let n: u64 = s[..digits_end].parse().map_err(|_| big())?;
    let suffix = s[digits_end..].to_ascii_uppercase();
    let mult: u64 = match suffix.trim_end_matches("IB").trim_end_matches('B') {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        "T" => 1 << 40,
        "P" => 1 << 50,
        _ => return Err(err()),
    };
    n.checked_mul(mult).ok_or_else(big).and_then(capped)
}

/// A size that prints short and parses from people's notation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Size(pub u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&short(self.0))
    }
}

impl std::str::FromStr for Size {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s).map(Size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        for (s, n) in [
            ("16M", 16u64 << 20),
            ("32G", 32 << 30),
            ("128G", 128 << 30),
            ("4K", 4096),
        ] {
            assert_eq!(parse(s).unwrap(), n);
            assert_eq!(short(n), s);
        }
        assert_eq!(parse("8GiB").unwrap(), 8 << 30);
        assert_eq!(parse("0x800000000").unwrap(), 32 << 30);
        assert_eq!(short(1536 << 20), "1536M");
        assert!(parse("G").is_err());
        assert!(parse("12X").is_err());
        assert!(parse("99999999999T").is_err());
        assert_eq!(parse("4P").unwrap(), MAX_ADDRESSABLE);
        for huge in [
            "0xffffffffffffffff",
            "0x8000000000000000",
            "5P",
            "0x10000000000001",
        ] {
            let e = parse(huge).unwrap_err();
            assert!(e.to_string().contains("larger than 4P"), "{huge}: {e}");
        }
        assert!(parse("0x")
            .unwrap_err()
            .to_string()
            .contains("expected a number"));
        assert!(parse("0x+1").is_err());
    }
}
