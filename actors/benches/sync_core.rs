//! What duplicate `headers` messages cost the sync core itself at mainnet length (issue
//! #24's target, without the transport, decoding and Connection that the end-to-end
//! `duplicate_headers_bench` example includes): a core whose chain holds 925,000 regtest
//! headers takes one peer's `headers` message carrying block 1 again, over and over.
//!
//! Run: `cargo bench -p meshd-actors --bench sync_core`. Figures go in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use meshd_actors::config::NodeConfig;
use meshd_actors::msg::{HashedHeaders, SyncInput};
use meshd_actors::network::NetworkId;
use meshd_actors::shared::peers::PeerId;
use meshd_actors::sync::chain::headers::mine_chain;
use meshd_actors::sync::engine::{Clock, NewPeer, SyncCore};

/// Mainnet's length at the writing.
const HEADERS: u32 = 925_000;

fn duplicates(c: &mut Criterion) {
    let config = NodeConfig::new(NetworkId::Regtest, std::env::temp_dir());
    let profile = config.profile();
    let genesis = profile.genesis;
    // 60 s apart, so the tip stays in the past.
    let chain = mine_chain(&genesis, HEADERS, 60);
    let clock = Clock {
        now: Instant::now(),
        unix: chain.last().map_or(0, |h| h.time) + 3600,
    };
    let mut core = SyncCore::new(profile, Arc::new(config), clock, 1);
    for h in &chain {
        core.chain_mut().accept(h, clock.unix).expect("mined chain");
    }
    let peer = PeerId(1);
    let _ = core.peer_up(
        clock,
        NewPeer {
            id: peer,
            addr: "127.0.0.1:18444".parse().unwrap(),
            label: "bench".into(),
            start_height: HEADERS as i32,
            relay: true,
            inbound: true,
            version: 70016,
            wtxid_relay: true,
            block_relay_only: false,
            services: bitcoin::p2p::ServiceFlags::NETWORK | bitcoin::p2p::ServiceFlags::WITNESS,
            network: meshd_actors::shared::overlay::Network::Ipv4,
        },
    );
    let block1 = chain[0];
    let mut group = c.benchmark_group("sync_core");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("duplicate headers message at 925,000 headers", |b| {
        b.iter(|| {
            let input = SyncInput::Headers(HashedHeaders::new(vec![block1]));
            black_box(core.input(clock, peer, input))
        })
    });
    group.finish();
    assert_eq!(core.chain().height(), HEADERS);
}

criterion_group!(benches, duplicates);
criterion_main!(benches);
