#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vfioctl_fuzz::targets::qmp(data));
