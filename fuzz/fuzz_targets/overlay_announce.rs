//! Fuzzes the `overlayaddr` decoder (meshd's own feature message): no input may panic, a
//! decoded message keeps to its limits, and what decodes encodes back to the same fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::wire::overlay_announce::{
    OverlayAnnounce, MAX_OVERLAY_ADDRS, MAX_OVERLAY_ADDR_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = OverlayAnnounce::decode(data) {
        assert!(a.addrs.len() <= MAX_OVERLAY_ADDRS);
        assert!(a.addrs.iter().all(|m| m.to_vec().len() <= MAX_OVERLAY_ADDR_LEN));
        assert_eq!(OverlayAnnounce::decode(&a.encode()).as_ref(), Ok(&a));
    }
});
