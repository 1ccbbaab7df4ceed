//! Fuzzes what other fleet nodes send through NATS: ban advisories (verified and checked
//! before any is applied) and heartbeats. The raw bytes go to the envelope check; the same
//! bytes, signed as a body by a trusted key, reach the body parser and the address rules. No
//! payload may panic; an accepted ban is always one public address with an expiry at most a
//! week ahead, an accepted unban one address; the order memory refuses an older advisory
//! for the same origin and address.
#![no_main]

use ed25519_dalek::{Signer, SigningKey};
use libfuzzer_sys::fuzz_target;
use meshd_actors::fleet::core::{
    check_advisory, check_unban, public_key_hex, signed_bytes, subject, verify_advisory,
    AdvisoryAction, AdvisoryOrder, Heartbeat, SignedAdvisory, TrustedKeys, ADVISORY_FORMAT,
    ADVISORY_KIND, MAX_ADVISORY_BAN_SECS,
};

const NOW: u64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let key = SigningKey::from_bytes(&[7; 32]);
    let trusted =
        TrustedKeys::parse(&format!("{} peer", public_key_hex(&key.verifying_key()))).unwrap();
    let subj = subject("f", "peer", "regtest", ADVISORY_KIND);
    let _ = verify_advisory(data, &subj, &trusted, NOW);
    let body = String::from_utf8_lossy(data).into_owned();
    let env = SignedAdvisory {
        v: ADVISORY_FORMAT,
        key: public_key_hex(&key.verifying_key()),
        sig: key
            .sign(&signed_bytes(ADVISORY_FORMAT, &subj, &body))
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        body,
    };
    let signed = serde_json::to_vec(&env).unwrap();
    if let Ok(adv) = verify_advisory(&signed, &subj, &trusted, NOW) {
        let asked = match adv.action {
            AdvisoryAction::Ban => {
                check_advisory(&adv, "self", |_| false, |_| false, NOW).map(|(net, until)| {
                    assert!(until > NOW && until <= NOW + MAX_ADVISORY_BAN_SECS);
                    assert!(!meshd_actors::shared::addr::is_local_or_private(net.addr()));
                    net
                })
            }
            AdvisoryAction::Unban => check_unban(&adv, "self"),
        };
        if let Ok(net) = asked {
            assert_eq!(net.prefix_len(), net.max_prefix_len());
            // The order memory takes it once, and refuses anything older after it.
            let mut order = AdvisoryOrder::default();
            assert!(order.admit(&adv, net, NOW).is_ok());
            let mut older = adv.clone();
            if let Some(t) = older.issued.checked_sub(1) {
                older.issued = t;
                assert!(order.admit(&older, net, NOW).is_err());
            }
        }
    }
    let _ = Heartbeat::parse(data);
});
