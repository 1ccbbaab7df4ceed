//! Fuzzes the port mapper with what a gateway (or anyone on the LAN spoofing it) sends: PCP
//! and NAT-PMP answers decoded on their own, then fed to the mapper between ticks of virtual
//! time. No input may panic, a mapping is only taken from an answer matching our request
//! (nonce and port), and the mapper never sends more than one datagram per event.
#![no_main]

use std::net::IpAddr;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use meshd_actors::portmap::mapper::{Output, PortMapper, MIN_LIFETIME};
use meshd_actors::portmap::wire::{parse_natpmp_answer, parse_pcp_answer, PcpAnswer, NONCE_LEN};

const PORT: u16 = 8333;

fuzz_target!(|data: &[u8]| {
    let nonce = [0x5a; NONCE_LEN];
    if let Ok(PcpAnswer::Mapped { .. }) = parse_pcp_answer(data, &nonce, PORT) {
        assert_eq!(&data[24..36], &nonce[..]);
    }
    let _ = parse_natpmp_answer(data, PORT);

    // The input as a sequence of (delay, length, datagram) events.
    let client: IpAddr = "10.0.0.10".parse().unwrap();
    let mut mapper = PortMapper::new(client, PORT, nonce, 0.25);
    let t0 = Instant::now();
    let mut now = t0;
    let _ = mapper.start(now);
    let mut rest = data;
    while let [delay, len, tail @ ..] = rest {
        now += Duration::from_millis(u64::from(*delay) * 200);
        let n = usize::from(*len).min(tail.len());
        let (datagram, next) = tail.split_at(n);
        rest = next;
        for out in [mapper.tick(now), mapper.on_datagram(now, datagram)] {
            let sends = out.iter().filter(|o| matches!(o, Output::Send(_))).count();
            assert!(sends <= 1);
            for o in &out {
                if let Output::Mapped { mapping, .. } = o {
                    assert!(mapping.lifetime >= MIN_LIFETIME);
                }
            }
        }
    }
    let _ = mapper.stop();
});
