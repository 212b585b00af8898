//! PCI addresses (`0000:d0:00.0`) and device selectors (`10de:20b9`, `--class gpu`).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A PCI address: domain, bus, device (0-31), function (0-7).
///
/// Parses `0000:d0:00.0` and the short `d0:00.0` (domain 0000); prints the canonical
/// lower-case form the kernel uses in sysfs. VMD domains (`10000:e1:00.0`) are five hex
/// digits without a leading zero, as the kernel prints them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Bdf {
    /// PCI domain (segment), `0000` on most machines.
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number on the bus (0-31).
    pub device: u8,
    /// Function number of the device (0-7).
    pub function: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid PCI address {input:?}: {reason}; expected DDDD:BB:DD.F (e.g. 0000:d0:00.0) or BB:DD.F (e.g. d0:00.0), as lspci -D prints it")]
/// A string that is not a PCI address.
pub struct BdfError {
    /// The string as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn hex_field(s: &str, width: usize, what: &'static str) -> Result<u32, &'static str> {
    if s.len() != width {
        return Err(what);
    }
    if !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(what);
    }
    u32::from_str_radix(s, 16).map_err(|_| what)
}

impl Bdf {
    /// The address `domain:bus:device.function`.
    pub const fn new(domain: u32, bus: u8, device: u8, function: u8) -> Self {
        Self {
            domain,
            bus,
            device,
            function,
        }
    }

    /// The address of function `f` of the same slot (the HDA companion of a GPU is `.1`).
    pub fn with_function(self, function: u8) -> Self {
        Self { function, ..self }
    }

    /// `/sys/bus/pci/devices/<bdf>`.
    pub fn sysfs_path(&self) -> String {
        format!("/sys/bus/pci/devices/{self}")
    }

    /// The slot without the function: `0000:d0:00`.
    pub fn slot(&self) -> String {
        format!("{:04x}:{:02x}:{:02x}", self.domain, self.bus, self.device)
    }
}

impl FromStr for Bdf {
    type Err = BdfError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason| BdfError {
            input: input.to_string(),
            reason,
        };
        if input.is_empty() {
            return Err(err("empty"));
        }
        if input.contains('/') || input.contains("..") || input.chars().any(char::is_whitespace) {
            return Err(err("contains a path separator, '..' or whitespace"));
        }
        let (head, func) = input
            .rsplit_once('.')
            .ok_or_else(|| err("missing '.function'"))?;
        let function = hex_field(func, 1, "function must be one digit 0-7").map_err(err)?;
        if function > 7 {
            return Err(err("function must be one digit 0-7"));
        }
        let parts: Vec<&str> = head.split(':').collect();
        let (domain, bus, dev) = match parts.as_slice() {
            [bus, dev] => (0, *bus, *dev),
            [dom, bus, dev] => {
                let domain = if dom.len() == 4 {
                    hex_field(dom, 4, "domain must be 4 hex digits").map_err(err)?
                } else if dom.len() == 5 && !dom.starts_with('0') {
                    hex_field(dom, 5, "domain must be 4 hex digits").map_err(err)?
                } else {
                    return Err(err("domain must be 4 hex digits"));
                };
                (domain, *bus, *dev)
            }
            _ => return Err(err("expected two or three ':'-separated fields before '.'")),
        };
        let bus = hex_field(bus, 2, "bus must be 2 hex digits").map_err(err)?;
        let device = hex_field(dev, 2, "device must be 2 hex digits 00-1f").map_err(err)?;
        if device > 0x1f {
            return Err(err("device must be 2 hex digits 00-1f"));
        }
        Ok(Bdf::new(domain, bus as u8, device as u8, function as u8))
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl fmt::Debug for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bdf({self})")
    }
}

impl Serialize for Bdf {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Bdf {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A device class family for `--class`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassFilter {
    /// Display controllers, class 0x03 (VGA, 3D, other display): the GPUs.
    Gpu,
    /// Multimedia audio (0x0401) and HD audio (0x0403): a GPU's HDMI/DP audio function.
    Audio,
    /// Network controllers, 0x02.
    Net,
    /// Mass storage, 0x01.
    Storage,
    /// Bridges, 0x06.
    Bridge,
    /// USB controllers, 0x0c03.
    Usb,
    /// An exact class prefix: base (`0x03`), base+sub (`0x0302`) or all 24 bits (`0x030200`).
    Code {
        /// The class bits given.
        value: u32,
        /// How many hex digits were given: 2, 4 or 6.
        digits: u8,
    },
}

impl ClassFilter {
    /// True when the 24-bit class code `class` belongs to this family.
    pub fn matches(&self, class: u32) -> bool {
        let base = class >> 16;
        let sub = class >> 8;
        match *self {
            ClassFilter::Gpu => base == 0x03,
            ClassFilter::Audio => sub == 0x0401 || sub == 0x0403,
            ClassFilter::Net => base == 0x02,
            ClassFilter::Storage => base == 0x01,
            ClassFilter::Bridge => base == 0x06,
            ClassFilter::Usb => sub == 0x0c03,
            ClassFilter::Code { value, digits } => match digits {
                2 => base == value,
                4 => sub == value,
                _ => class == value,
            },
        }
    }
}

/// A device class name that is neither a known family nor a hex class code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown device class {input:?}: use gpu, audio, net, storage, bridge, usb, or a hex class such as 0x0302")]
pub struct UnknownClass {
    /// The class as written.
    pub input: String,
}

impl FromStr for ClassFilter {
    type Err = UnknownClass;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "gpu" | "display" | "vga" => ClassFilter::Gpu,
            "audio" | "hda" => ClassFilter::Audio,
            "net" | "network" | "nic" => ClassFilter::Net,
            "storage" | "nvme" | "disk" => ClassFilter::Storage,
            "bridge" => ClassFilter::Bridge,
            "usb" => ClassFilter::Usb,
            other => {
                let hex = other.strip_prefix("0x").unwrap_or(other);
                if matches!(hex.len(), 2 | 4 | 6) && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    ClassFilter::Code {
                        // at most 6 hex digits: always a u32
                        value: u32::from_str_radix(hex, 16)
                            .map_err(|_| UnknownClass { input: s.into() })?,
                        digits: hex.len() as u8,
                    }
                } else {
                    return Err(UnknownClass { input: s.into() });
                }
            }
        })
    }
}

/// What a user names on the command line to pick devices.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Selector {
    /// One address.
    Bdf {
        /// The address.
        bdf: Bdf,
    },
    /// Every device with this vendor (and device) id: `10de:20b9`, `10de:*`.
    Id {
        /// Vendor id.
        vendor: u16,
        /// Device id; `None` for every device of the vendor.
        device: Option<u16>,
    },
    /// Every device of a class family.
    Class {
        /// The class family.
        class: ClassFilter,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid device selector {input:?}: {reason}")]
/// A string that is not a device selector.
pub struct SelectorError {
    /// The selector as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Selector {
    /// True when the device at `bdf` with these ids and class code is selected.
    pub fn matches(&self, bdf: Bdf, vendor: u16, device: u16, class: u32) -> bool {
        match self {
            Selector::Bdf { bdf: b } => *b == bdf,
            Selector::Id {
                vendor: v,
                device: d,
            } => *v == vendor && d.is_none_or(|d| d == device),
            Selector::Class { class: c } => c.matches(class),
        }
    }
}

impl FromStr for Selector {
    type Err = SelectorError;

    /// `0000:d0:00.0`, `d0:00.0`, `10de:20b9`, `10de:*`, `class:gpu`.
    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Some(class) = input.strip_prefix("class:") {
            return class
                .parse()
                .map(|class| Selector::Class { class })
                .map_err(|e: UnknownClass| SelectorError {
                    input: input.into(),
                    reason: e.to_string(),
                });
        }
        if input.contains('.') {
            return input
                .parse()
                .map(|bdf| Selector::Bdf { bdf })
                .map_err(|e: BdfError| SelectorError {
                    input: input.into(),
                    reason: format!(
                        "{}; a PCI address looks like 0000:d0:00.0 or d0:00.0",
                        e.reason
                    ),
                });
        }
        let bad = || {
            SelectorError {
            input: input.into(),
            reason: "expected a PCI address (0000:d0:00.0), a vendor:device id (10de:20b9 or 10de:*), or class:gpu".into(),
        }
        };
        let (v, d) = input.split_once(':').ok_or_else(bad)?;
        let hex4 = |s: &str| {
            (s.len() == 4 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                .then(|| u16::from_str_radix(s, 16).ok())
                .flatten()
        };
        let vendor = hex4(v).ok_or_else(bad)?;
        let device = if d == "*" {
            None
        } else {
            Some(hex4(d).ok_or_else(bad)?)
        };
        Ok(Selector::Id { vendor, device })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Selector::Bdf { bdf } => write!(f, "{bdf}"),
            Selector::Id {
                vendor,
                device: Some(d),
            } => write!(f, "{vendor:04x}:{d:04x}"),
            Selector::Id {
                vendor,
                device: None,
            } => write!(f, "{vendor:04x}:*"),
            Selector::Class { class } => write!(f, "class:{class:?}"),
        }
    }
}

/// A BDF in JSON: the string `0000:65:00.0`.
#[cfg(feature = "schema")]
impl schemars::JsonSchema for Bdf {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Bdf".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\\.[0-7]$",
            "description": "PCI address domain:bus:device.function, lower-case hex (0000:65:00.0)"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_long_and_short() {
        let b: Bdf = "0000:d0:00.0".parse().unwrap();
        assert_eq!(b, Bdf::new(0, 0xd0, 0, 0));
        assert_eq!("d0:00.0".parse::<Bdf>().unwrap(), b);
        assert_eq!(
            "0000:D0:1F.7".parse::<Bdf>().unwrap().to_string(),
            "0000:d0:1f.7"
        );
        assert_eq!(
            "10000:e1:00.0".parse::<Bdf>().unwrap().to_string(),
            "10000:e1:00.0"
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "d0:00",
            "0000:d0:00.8",
            "0000:d0:20.0",
            "000:d0:00.0",
            "00000:d0:00.0",
            "0000:d0:00.0 ",
            "0000:d0:00.0\n",
            "../0000:d0:00.0",
            "0000:d0/00.0",
            "0000:d0:00.00",
            "0000:d:00.0",
            "0000:d0:0.0",
            "0000:d0:00.0x",
            "+000:d0:00.0",
            "0000:d0:00.g",
            "0000:0000:d0:00.0",
            "..",
        ] {
            assert!(bad.parse::<Bdf>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn error_names_input_and_form() {
        let e = "0000:d0:00.9".parse::<Bdf>().unwrap_err().to_string();
        assert!(
            e.contains("0000:d0:00.9") && e.contains("DDDD:BB:DD.F"),
            "{e}"
        );
    }

    #[test]
    fn selectors() {
        assert_eq!(
            "10de:20b9".parse::<Selector>().unwrap(),
            Selector::Id {
                vendor: 0x10de,
                device: Some(0x20b9)
            }
        );
        assert_eq!(
            "10de:*".parse::<Selector>().unwrap(),
            Selector::Id {
                vendor: 0x10de,
                device: None
            }
        );
        assert!(matches!(
            "d0:00.0".parse::<Selector>().unwrap(),
            Selector::Bdf { .. }
        ));
        assert!(matches!(
            "class:gpu".parse::<Selector>().unwrap(),
            Selector::Class {
                class: ClassFilter::Gpu
            }
        ));
        assert!("10de".parse::<Selector>().is_err());
        assert!("10de:20b".parse::<Selector>().is_err());
        assert!("/sys/bus/pci".parse::<Selector>().is_err());
        assert!(ClassFilter::Gpu.matches(0x030200));
        assert!(ClassFilter::Audio.matches(0x040300));
        assert!("0x0302".parse::<ClassFilter>().unwrap().matches(0x030200));
        assert!(!"0x0300".parse::<ClassFilter>().unwrap().matches(0x030200));
    }

    proptest! {
        #[test]
        fn round_trip(domain in 0u32..=0xffff, bus: u8, device in 0u8..32, function in 0u8..8) {
            let b = Bdf::new(domain, bus, device, function);
            let s = b.to_string();
            prop_assert_eq!(s.parse::<Bdf>().unwrap(), b);
            if domain == 0 {
                prop_assert_eq!(s[5..].parse::<Bdf>().unwrap(), b);
            }
        }

        #[test]
        fn arbitrary_strings_never_panic_and_canonical_ones_round_trip(s in "\\PC{0,20}") {
            if let Ok(b) = s.parse::<Bdf>() {
                // Whatever is accepted prints back to something that parses to the same value.
                prop_assert_eq!(b.to_string().parse::<Bdf>().unwrap(), b);
                prop_assert!(!s.contains('/') && !s.contains(".."));
            }
        }

        #[test]
        fn mutations_of_valid_addresses_are_rejected(
            domain in 0u32..=0xffff, bus: u8, device in 0u8..32, function in 0u8..8,
            junk in "[^0-9a-fA-F]{1,3}",
        ) {
            let s = Bdf::new(domain, bus, device, function).to_string();
            let trailing = format!("{}{}", s, junk);
            prop_assert!(trailing.parse::<Bdf>().is_err());
            let leading = format!("{}{}", junk, s);
            prop_assert!(leading.parse::<Bdf>().is_err());
        }
    }
}
