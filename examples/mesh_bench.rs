//! Discovery benchmark: time from cold start to full outbound slots in an N-node loopback
//! mesh whose nodes know only one DNS seed name, served by a real dnsmasq.
//!
//! Nodes listen on 127.0.9.1..N:18444 (in-process, one tokio runtime); the seed name resolves
//! to every node, as a real seed lists many. The clock starts before the first node starts
//! and stops when every node has min(8, N-1) outbound peers with the handshake complete.
//!
//! Usage: `cargo run --release --example mesh_bench -- N [N ...]` (default: 10 50)

#[path = "../actors/tests/common/dnsmasq.rs"]
mod dnsmasq;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use meshd_actors::config::NodeConfig;
use meshd_actors::network::NetworkId;
use meshd_actors::node::Node;
use meshd_actors::peer::Direction;
use meshd_actors::shared::peers::PeerState;

async fn run(n: u8) -> Duration {
    let addrs: Vec<SocketAddr> = (1..=n)
        .map(|i| SocketAddr::from((Ipv4Addr::new(127, 0, 9, i), 18444)))
        .collect();
    let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
    let dns = dnsmasq::Dnsmasq::start(&[("seed.bench.test", ips)]).expect("dnsmasq is installed");
    let dirs: Vec<_> = (0..n)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let want = (n as usize - 1).min(8);
    let started = Instant::now();
    let mut nodes = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let mut c = NodeConfig::new(NetworkId::Regtest, dir.path().to_path_buf());
        c.listen = vec![addrs[i]];
        c.dns_servers = vec![dns.addr];
        c.dns_seeds = vec!["seed.bench.test".into()];
        nodes.push(Node::start(c).await.expect("node starts"));
    }
    loop {
        let full = nodes.iter().all(|node| {
            node.peers()
                .iter()
                .filter(|p| p.direction == Direction::Outbound && p.state == PeerState::Connected)
                .count()
                >= want
        });
        if full {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "mesh of {n} did not fill its slots"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = started.elapsed();
    for node in nodes {
        node.shutdown().await;
    }
    took
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u8> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10, 50]
    } else {
        sizes
    };
    for n in sizes {
        let mut runs = Vec::new();
        for _ in 0..3 {
            runs.push(run(n).await);
        }
        runs.sort();
        let ms: Vec<String> = runs
            .iter()
            .map(|d| format!("{:.0}", d.as_secs_f64() * 1000.0))
            .collect();
        println!(
            "nodes={n} cold_start_to_full_outbound_ms(min,median,max)={}",
            ms.join(",")
        );
    }
}
