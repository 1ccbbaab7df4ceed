//! Metrics derived from live state, rendered in the Prometheus text format at scrape time.
//!
//! Per-peer series (`meshd_peer_*{peer}`) come straight from the peer table, so they exist
//! exactly while the peer does: nothing to forget to delete when a peer leaves. The rest
//! (peer counts by state, slots, bans, restarts per address, time spent throttled) is read
//! from the same shared state the actors use. Counters and histograms that are simply
//! incremented go through the `metrics` facade instead.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use crate::context::{unix_now, NodeContext};
use crate::manager::peers::PeerState;
use crate::peer::Direction;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value.
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the live metrics.
pub(crate) fn render(ctx: &NodeContext) -> String {
    let mut out = String::new();
    let peers = ctx.peers.snapshot();

    header(
        &mut out,
        "meshd_peers",
        "gauge",
        "Connections by direction and state.",
    );
    for d in [Direction::Outbound, Direction::Inbound] {
        for s in [
            PeerState::Connecting,
            PeerState::Handshaking,
            PeerState::Connected,
        ] {
            let n = peers
                .iter()
                .filter(|p| p.direction == d && p.state == s)
                .count();
            let _ = writeln!(
                out,
                "meshd_peers{{direction=\"{}\",state=\"{}\"}} {n}",
                d.as_str(),
                s.as_str()
            );
        }
    }

    let (used, max) = (ctx.slots.usage(), ctx.slots.limits());
    header(
        &mut out,
        "meshd_slots_used",
        "gauge",
        "Connection slots held.",
    );
    let _ = writeln!(
        out,
        "meshd_slots_used{{direction=\"outbound\"}} {}",
        used.outbound
    );
    let _ = writeln!(
        out,
        "meshd_slots_used{{direction=\"inbound\"}} {}",
        used.inbound
    );
    let _ = writeln!(
        out,
        "meshd_slots_used{{direction=\"total\"}} {}",
        used.outbound + used.inbound
    );
    header(
        &mut out,
        "meshd_slots_max",
        "gauge",
        "Connection slot limits.",
    );
    let _ = writeln!(
        out,
        "meshd_slots_max{{direction=\"outbound\"}} {}",
        max.outbound
    );
    let _ = writeln!(
        out,
        "meshd_slots_max{{direction=\"inbound\"}} {}",
        max.inbound
    );
    let _ = writeln!(out, "meshd_slots_max{{direction=\"total\"}} {}", max.total);

    header(
        &mut out,
        "meshd_peer_bytes_sent_total",
        "counter",
        "Bytes sent to each live peer.",
    );
    for p in &peers {
        let _ = writeln!(
            out,
            "meshd_peer_bytes_sent_total{{peer=\"{}\"}} {}",
            esc(&p.addr.to_string()),
            p.bytes_sent
        );
    }
    header(
        &mut out,
        "meshd_peer_bytes_received_total",
        "counter",
        "Bytes received from each live peer.",
    );
    for p in &peers {
        let _ = writeln!(
            out,
            "meshd_peer_bytes_received_total{{peer=\"{}\"}} {}",
            esc(&p.addr.to_string()),
            p.bytes_received
        );
    }
    header(
        &mut out,
        "meshd_peer_rtt_seconds",
        "gauge",
        "Last ping round-trip time of each live peer.",
    );
    for p in &peers {
        if let Some(rtt) = p.ping_last {
            let _ = writeln!(
                out,
                "meshd_peer_rtt_seconds{{peer=\"{}\"}} {}",
                esc(&p.addr.to_string()),
                rtt.as_secs_f64()
            );
        }
    }

    header(
        &mut out,
        "meshd_connection_restarts_total",
        "counter",
        "Restarts of each outbound peer address since start.",
    );
    let mut restarts: Vec<(String, u64)> = ctx
        .restart_counts
        .iter()
        .map(|e| (e.key().to_string(), *e.value()))
        .collect();
    restarts.sort();
    for (peer, n) in restarts {
        let _ = writeln!(
            out,
            "meshd_connection_restarts_total{{peer=\"{}\"}} {n}",
            esc(&peer)
        );
    }

    header(
        &mut out,
        "meshd_addrbook_entries",
        "gauge",
        "Addresses in the address book, by table.",
    );
    let _ = writeln!(
        out,
        "meshd_addrbook_entries{{table=\"new\"}} {}",
        ctx.addrbook_new.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "meshd_addrbook_entries{{table=\"tried\"}} {}",
        ctx.addrbook_tried.load(Ordering::Relaxed)
    );

    header(
        &mut out,
        "meshd_nat_type",
        "gauge",
        "1 for the NAT type STUN detected, 0 for the others.",
    );
    let stun = ctx.stun_report();
    let current = stun.as_ref().map(|r| r.nat_type);
    for t in crate::stun::NatType::ALL {
        let v = u8::from(Some(t) == current);
        let _ = writeln!(out, "meshd_nat_type{{type=\"{}\"}} {v}", t.label());
    }
    header(
        &mut out,
        "meshd_public_address_info",
        "gauge",
        "Our public address as STUN sees it (value 1).",
    );
    if let Some(public) = stun.as_ref().and_then(|r| r.public) {
        let _ = writeln!(
            out,
            "meshd_public_address_info{{address=\"{}\"}} 1",
            esc(&public.to_string())
        );
    }

    let sync = ctx.sync_status();
    header(
        &mut out,
        "meshd_header_height",
        "gauge",
        "Height of the best header chain.",
    );
    let _ = writeln!(out, "meshd_header_height {}", sync.header_height);
    header(
        &mut out,
        "meshd_best_peer_height",
        "gauge",
        "Highest height a connected peer announced.",
    );
    let _ = writeln!(out, "meshd_best_peer_height {}", sync.best_peer_height);
    header(
        &mut out,
        "meshd_sync_state",
        "gauge",
        "1 for the current header-sync state.",
    );
    for st in [
        crate::msg::SyncState::Idle,
        crate::msg::SyncState::Syncing,
        crate::msg::SyncState::Synced,
    ] {
        let _ = writeln!(
            out,
            "meshd_sync_state{{state=\"{}\"}} {}",
            st.as_str(),
            u8::from(st == sync.state)
        );
    }

    header(&mut out, "meshd_banned", "gauge", "Subnets banned now.");
    let banned = match ctx.bans.read() {
        Ok(b) => b.len(unix_now().max(0) as u64),
        Err(p) => p.into_inner().len(unix_now().max(0) as u64),
    };
    let _ = writeln!(out, "meshd_banned {banned}");

    header(
        &mut out,
        "meshd_throttled_seconds_total",
        "counter",
        "Time readers and writers waited on bandwidth limits.",
    );
    let up = ctx.throttled_up_us.load(Ordering::Relaxed) as f64 / 1e6;
    let down = ctx.throttled_down_us.load(Ordering::Relaxed) as f64 / 1e6;
    let _ = writeln!(
        out,
        "meshd_throttled_seconds_total{{direction=\"upload\"}} {up}"
    );
    let _ = writeln!(
        out,
        "meshd_throttled_seconds_total{{direction=\"download\"}} {down}"
    );
    out
}
