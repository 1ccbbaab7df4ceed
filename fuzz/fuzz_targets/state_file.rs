//! Fuzzes the state-file decoder (versioned header, checksum, bincode payload) with the
//! address book's and ban list's types: damaged files must give errors, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::manager::addrbook::AddrBookFile;
use meshd_actors::persist::decode;
use meshd_actors::shared::bans::BanList;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<AddrBookFile>(*b"ADDR", 1, data);
    let _ = decode::<BanList>(*b"BANS", 1, data);
});
