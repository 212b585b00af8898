//! Kata's own configuration templates, per release, as data: the file vfioctl starts from
//! when no `--base` is given is the NVIDIA GPU template of the requested release (the
//! generic QEMU template where that release has none), rendered exactly as Kata's
//! Makefiles render it for kata-deploy (`PREFIX=/opt/kata`). The plan is then applied
//! with the same code that patches a user's file, so only the keys vfioctl must change
//! differ from Kata's template. `src/kata/templates/README.md` says how each file was
//! rendered and from which commit.

use serde::Serialize;

use super::error::KataError;
use super::version::{KataVersion, Runtime, Target};

/// kata-deploy's install prefix.
pub const PREFIX: &str = "/opt/kata";

/// Which of a release's templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Flavour {
    /// `configuration-qemu-nvidia-gpu.toml` (Go) / `configuration-qemu-nvidia-gpu-runtime-rs.toml`.
    NvidiaGpu,
    /// `configuration-qemu.toml` (Go) / `configuration-qemu-runtime-rs.toml`.
    Generic,
}

/// One of Kata's templates, as shipped by one tag.
#[derive(Clone, Copy, Debug, Serialize, schemars::JsonSchema)]
pub struct Stock {
    /// The Kata tag it was rendered from.
    pub tag: KataVersion,
    /// The Kata runtime that reads it.
    pub runtime: Runtime,
    /// NVIDIA GPU or generic QEMU template.
    pub flavour: Flavour,
    /// The file name Kata installs it as.
    pub file: &'static str,
    /// Where the `.in` file lives in kata-containers.
    pub source: &'static str,
    /// The template's contents (stored in vfioctl under `src/kata/templates/`).
    #[serde(skip)]
    pub text: &'static str,
}

macro_rules! stock {
    ($rt:ident, $dir:literal, $maj:literal, $min:literal, $flavour:ident, $file:literal, $src:literal) => {
        Stock {
            tag: KataVersion::new($maj, $min, 0),
            runtime: Runtime::$rt,
            flavour: Flavour::$flavour,
            file: $file,
            source: concat!($src, "/", $file, ".in"),
            text: include_str!(concat!("templates/", $dir, "/", $file)),
        }
    };
}

/// Every stored template, oldest first.
pub const STOCK: &[Stock] = &[
    stock!(
        Go,
        "go-3.1.0",
        3,
        1,
        Generic,
        "configuration-qemu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-3.4.0",
        3,
        4,
        NvidiaGpu,
        "configuration-qemu-nvidia-gpu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-3.4.0",
        3,
        4,
        Generic,
        "configuration-qemu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-3.6.0",
        3,
        6,
        NvidiaGpu,
        "configuration-qemu-nvidia-gpu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-3.6.0",
        3,
        6,
        Generic,
        "configuration-qemu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-3.24.0",
        3,
        24,
        NvidiaGpu,
        "configuration-qemu-nvidia-gpu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-3.24.0",
        3,
        24,
        Generic,
        "configuration-qemu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-3.30.0",
        3,
        30,
        NvidiaGpu,
        "configuration-qemu-nvidia-gpu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-3.30.0",
        3,
        30,
        Generic,
        "configuration-qemu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-4.1.0",
        4,
        1,
        NvidiaGpu,
        "configuration-qemu-nvidia-gpu.toml",
        "src/runtime/config"
    ),
    stock!(
        Go,
        "go-4.1.0",
        4,
        1,
        Generic,
        "configuration-qemu.toml",
        "src/runtime/config"
    ),
    stock!(
        Rs,
        "rs-3.6.0",
        3,
        6,
        Generic,
        "configuration-qemu-runtime-rs.toml",
        "src/runtime-rs/config"
    ),
    stock!(
        Rs,
        "rs-3.17.0",
        3,
        17,
        Generic,
        "configuration-qemu-runtime-rs.toml",
        "src/runtime-rs/config"
    ),
    stock!(
        Rs,
        "rs-3.30.0",
        3,
        30,
        Generic,
        "configuration-qemu-runtime-rs.toml",
        "src/runtime-rs/config"
    ),
    stock!(
        Rs,
        "rs-4.1.0",
        4,
        1,
        NvidiaGpu,
        "configuration-qemu-nvidia-gpu-runtime-rs.toml",
        "src/runtime-rs/config"
    ),
    stock!(
        Rs,
        "rs-4.1.0",
        4,
        1,
        Generic,
        "configuration-qemu-runtime-rs.toml",
        "src/runtime-rs/config"
    ),
];

/// Releases between which the GPU keys, their meaning or Kata's GPU behaviour change: a
/// template is only borrowed from a release of the same band.
fn band(runtime: Runtime, v: KataVersion) -> u8 {
    let bounds: &[KataVersion] = match runtime {
        Runtime::Go => &[
            KataVersion::PORT_KEYS,
            KataVersion::PORT_COUNT,
            KataVersion::POD_RESOURCES,
            KataVersion::POD_RESOURCES_FALLBACK,
        ],
        Runtime::Rs => &[KataVersion::RS_SWITCH_PORT, KataVersion::RS_COLD_PLUG],
    };
    bounds.iter().filter(|b| v >= **b).count() as u8
}

/// The template a generated file starts from, and how it was picked.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct Chosen {
    /// The stored template used.
    pub stock: Stock,
    /// One line for the file header and --explain: the tag, and why when it is not the
    /// requested version's own.
    pub how: String,
}

/// The template for `target`: the requested release's own NVIDIA template when stored,
/// else the nearest stored release of the same key band (the newest at or below the
/// version, else the oldest above it), preferring the NVIDIA template over the generic
/// one of the same tag.
pub fn choose(target: &Target) -> Result<Chosen, KataError> {
    let no_template = || KataError::NoTemplate {
        target: *target,
        stored: STOCK
            .iter()
            .filter(|s| s.runtime == target.runtime)
            .map(|s| s.tag.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    };
    // Kata 2.x files differ from 3.x beyond the GPU keys: no 3.x template stands in.
    if target.version.major < 3 {
        return Err(no_template());
    }
    let b = band(target.runtime, target.version);
    let mine: Vec<&Stock> = STOCK
        .iter()
        .filter(|s| s.runtime == target.runtime && band(s.runtime, s.tag) == b)
        .collect();
    let rank = |s: &&Stock| (s.flavour == Flavour::NvidiaGpu) as u8;
    // Compare major.minor: a patch release ships its minor's template.
    let mm = |v: KataVersion| KataVersion::new(v.major, v.minor, 0);
    let want = mm(target.version);
    let below = mine
        .iter()
        .filter(|s| s.tag <= want)
        .max_by_key(|s| (s.tag, rank(s)));
    let pick = below.or_else(|| {
        mine.iter()
            .filter(|s| s.tag > want)
            .min_by_key(|s| (s.tag, std::cmp::Reverse(rank(s))))
    });
    let Some(stock) = pick.map(|s| **s) else {
        return Err(no_template());
    };
    let exact = stock.tag == want;
    let flavour_note = match stock.flavour {
        Flavour::NvidiaGpu => "",
        Flavour::Generic => {
            " (that release ships no NVIDIA GPU template for this runtime: its generic QEMU template)"
        }
    };
    let how = if exact {
        format!("Kata {}'s {}{flavour_note}", stock.tag, stock.file)
    } else {
        format!(
            "Kata {}'s {}{flavour_note}: no template of {} is stored, {} is the nearest release with the same GPU keys",
            stock.tag, stock.file, target.version, stock.tag
        )
    };
    Ok(Chosen { stock, how })
}

/// The stored templates of one runtime (every flavour and tag).
pub fn stock(runtime: Runtime) -> impl Iterator<Item = &'static Stock> {
    STOCK.iter().filter(move |s| s.runtime == runtime)
}

/// The header vfioctl puts above Kata's template text.
pub fn header(target: &Target, chosen: &Chosen) -> String {
    format!(
        "# Kata Containers configuration for QEMU with VFIO GPU passthrough, written by\n\
         # `vfioctl kata config` for {target}.\n\
         #\n\
         # Everything below is {how}\n\
         # ({source} at that tag, rendered for kata-deploy's /opt/kata), except the lines\n\
         # marked \"vfioctl:\", which were derived from this host.\n\
         # Install: sudo install -D -m 0644 <this file> {install}\n\n",
        how = chosen.how,
        source = chosen.stock.source,
        install = target.install_path(),
    )
}

/// The starting file for `target`: vfioctl's header plus Kata's template text.
pub fn base(target: &Target) -> Result<(Chosen, String), KataError> {
    let chosen = choose(target)?;
    let text = format!("{}{}", header(target, &chosen), chosen.stock.text);
    Ok((chosen, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(v: &str, rt: Runtime) -> Stock {
        choose(&Target::new(v.parse().unwrap(), rt).unwrap())
            .unwrap()
            .stock
    }

    #[test]
    fn every_stored_template_parses_and_names_its_hypervisor() {
        for s in STOCK {
            let doc: toml_edit::DocumentMut = s.text.parse().unwrap_or_else(|e| {
                panic!("{} {}: {e}", s.tag, s.file);
            });
            assert!(doc["hypervisor"]["qemu"].is_table(), "{} {}", s.tag, s.file);
        }
    }

    #[test]
    fn nearest_template_stays_in_its_key_band() {
        assert_eq!(pick("3.1.3", Runtime::Go).tag.to_string(), "3.1.0");
        // 3.2 - 3.5 read hot_plug_vfio/cold_plug_vfio: never 3.1's hotplug_vfio_on_root_bus file.
        assert_eq!(pick("3.2.0", Runtime::Go).tag.to_string(), "3.4.0");
        assert_eq!(pick("3.5.0", Runtime::Go).tag.to_string(), "3.4.0");
        assert_eq!(pick("3.17.0", Runtime::Go).tag.to_string(), "3.6.0");
        assert_eq!(pick("3.27.0", Runtime::Go).tag.to_string(), "3.24.0");
        assert_eq!(pick("3.32.0", Runtime::Go).tag.to_string(), "3.30.0");
        assert_eq!(pick("4.0.0", Runtime::Go).tag.to_string(), "4.1.0");
        assert_eq!(pick("4.1.0", Runtime::Go).flavour, Flavour::NvidiaGpu);
        assert_eq!(pick("3.1.0", Runtime::Go).flavour, Flavour::Generic);
        assert_eq!(pick("3.10.0", Runtime::Rs).tag.to_string(), "3.6.0");
        assert_eq!(pick("3.20.0", Runtime::Rs).tag.to_string(), "3.17.0");
        assert_eq!(pick("3.31.0", Runtime::Rs).tag.to_string(), "4.1.0");
        assert_eq!(pick("4.1.0", Runtime::Rs).flavour, Flavour::NvidiaGpu);
        assert!(choose(&Target::new("2.5.0".parse().unwrap(), Runtime::Go).unwrap()).is_err());
    }
}
