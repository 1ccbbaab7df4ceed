//! Fuzzes the header file loader (`load_records`): arbitrary bytes, or arbitrary records
//! behind a valid file header (regtest's target, so valid proof of work occurs; the seed
//! corpus holds a real file of mined headers). No input may panic; the good prefix is the
//! file header plus whole records, and the chain grew by at most what was loaded.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::network::NetworkId;
use meshd_actors::sync::chain::headers::HeaderChain;
use meshd_actors::sync::chain::store::{file_header_bytes, load_records, RECORD_BYTES};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let profile = NetworkId::Regtest.profile();
    let magic = profile.magic.to_bytes();
    let bytes = if mode & 1 == 1 {
        let mut b = file_header_bytes(magic);
        b.extend_from_slice(rest);
        b
    } else {
        rest.to_vec()
    };
    let mut chain = HeaderChain::new(&profile);
    let before = chain.len();
    if let Ok((good, loaded, skipped)) = load_records(&bytes, magic, &mut chain) {
        let header_len = file_header_bytes(magic).len();
        assert!(good <= bytes.len());
        assert_eq!(good, header_len + (loaded + skipped) * RECORD_BYTES);
        // A record may repeat a known header (accepted, nothing new).
        assert!(chain.len() <= before + loaded);
    }
});
