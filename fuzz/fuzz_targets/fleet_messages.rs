//! Fuzzes what other fleet nodes send through NATS: ban advisories (checked before any is
//! applied) and heartbeats. No payload may panic, and an accepted advisory is always one
//! public address with an expiry at most a week ahead.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::fleet::core::{check_advisory, Heartbeat, MAX_ADVISORY_BAN_SECS};

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    if let Ok((net, until, _)) = check_advisory(data, "self", |_| false, |_| false, NOW) {
        assert_eq!(net.prefix_len(), net.max_prefix_len());
        assert!(until > NOW && until <= NOW + MAX_ADVISORY_BAN_SECS);
        assert!(!meshd_actors::discovery::addrbook::is_local_or_private(net.addr()));
    }
    let _ = Heartbeat::parse(data);
});
