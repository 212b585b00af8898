//! cargo-fuzz targets for vfioctl's parsers; see `targets`.
pub mod targets;
