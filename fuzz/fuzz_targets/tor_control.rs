//! Fuzzes the Tor control-port reply reader and the parsers that read its replies
//! (authentication choice, SAFECOOKIE challenge, ADD_ONION answer): no input may panic,
//! and memory stays within the reader's line and reply limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshd_actors::tor::control::{
    check_add_onion, choose_auth, parse_add_onion, safecookie_response, ReplyReader, MAX_LINE_LEN,
    MAX_REPLY_LINES,
};

fuzz_target!(|data: &[u8]| {
    let mut reader = ReplyReader::new();
    // Fed in two pieces, split where the first byte says.
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    for piece in [&data[..split], &data[split..]] {
        reader.feed(piece);
        while let Ok(Some(reply)) = reader.next_reply() {
            assert!(reply.lines.len() <= MAX_REPLY_LINES);
            assert!(reply.lines.iter().all(|l| l.len() <= 2 * MAX_LINE_LEN));
            let _ = choose_auth(&reply, Some("pw"), false);
            let _ = choose_auth(&reply, None, true);
            if let Ok(id) = parse_add_onion(&reply) {
                let _ = check_add_onion(&id, &[7; 32]);
            }
            if let Some(key) = reply.value("PrivateKey") {
                let _ = meshd_actors::tor::control::key_service(&key);
            }
            let _ = safecookie_response(&[0; 32], &[1; 32], &reply);
        }
    }
});
