#![no_main]
//! Arbitrary bytes through the agent's frame reader and request decoder: no panic, no
//! allocation beyond the frame limit.
use libfuzzer_sys::fuzz_target;
use vfioctl_common::proto;

fuzz_target!(|data: &[u8]| {
    let mut r = data;
    while let Ok(p) = proto::read_frame(&mut r, proto::MAX_REQUEST) {
        let _ = proto::decode_request(&p);
        let _ = proto::salvage_id(&p);
    }
    let _ = proto::decode_request(data);
});
