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
use crate::peer::Direction;
use crate::shared::peers::PeerState;

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// HELP text of every counter and histogram meshd records through the `metrics` facade.
/// A test keeps this list complete (`actors/tests/layout.rs` reads the sources).
const DESCRIPTIONS: &[(&str, &str, &str)] = &[
    (
        "counter",
        "meshd_accepted_total",
        "Inbound TCP connections accepted by the listener.",
    ),
    (
        "counter",
        "meshd_extra_block_relay_total",
        "Extra block-relay-only connections opened to find a better tip (Core's, every 5 min on average once synced).",
    ),
    (
        "histogram",
        "meshd_manager_handle_seconds",
        "Time the Manager spends on each message it handles (its sum over time is its share of a core).",
    ),
    (
        "counter",
        "meshd_listener_pauses_total",
        "Times an accept loop waited because the manager had the most inbound sockets pending.",
    ),
    (
        "counter",
        "meshd_addr_processed_total",
        "Gossiped addresses taken in after the per-peer rate limit.",
    ),
    (
        "counter",
        "meshd_addr_rate_limited_total",
        "Gossiped addresses dropped by the per-peer rate limit.",
    ),
    (
        "counter",
        "meshd_bans_total",
        "Bans created, by reason (manual or misbehavior).",
    ),
    (
        "counter",
        "meshd_blocks_received_total",
        "Blocks received, checked and kept, by the message that carried them (via).",
    ),
    (
        "counter",
        "meshd_compact_blocks_total",
        "Compact blocks (BIP152) received, by outcome (reconstructed, txn_requested, fallback, invalid, too_large, unsolicited) and mode (high_bandwidth, low_bandwidth).",
    ),
    (
        "counter",
        "meshd_compact_block_bytes_saved_total",
        "Bytes compact blocks saved against the whole blocks they stood for.",
    ),
    (
        "counter",
        "meshd_compact_blocks_sent_total",
        "Compact blocks pushed to peers that asked for high-bandwidth announcements.",
    ),
    (
        "gauge",
        "meshd_compact_high_bandwidth_peers",
        "BIP152 high-bandwidth peers: we asked them (direction to), they asked us (direction from).",
    ),
    (
        "counter",
        "meshd_block_stalls_total",
        "Block requests asked of another peer after the stalling timeout (2 s, doubling to 64 s).",
    ),
    (
        "counter",
        "meshd_blocks_dropped_total",
        "Blocks dropped unread, by reason (unrequested: not asked of the peer that sent it; too_large: asked for, above our limit, asked of the next announcer).",
    ),
    (
        "counter",
        "meshd_blocks_given_up_total",
        "Blocks no longer fetched because 8 peers failed to deliver them in a form we take (too large, refused, notfound, stalled or expired).",
    ),
    (
        "counter",
        "meshd_blocks_rejected_total",
        "Blocks refused, by reason.",
    ),
    (
        "counter",
        "meshd_bytes_received_total",
        "Bytes received from peers, by command.",
    ),
    (
        "counter",
        "meshd_bytes_sent_total",
        "Bytes queued to peers, by command.",
    ),
    (
        "counter",
        "meshd_connection_giveups_total",
        "Outbound addresses given up on until their restart window clears.",
    ),
    (
        "counter",
        "meshd_disconnects_total",
        "Connections closed, by typed reason.",
    ),
    (
        "counter",
        "meshd_dns_queries_total",
        "DNS seed lookups, by outcome.",
    ),
    (
        "counter",
        "meshd_block_relay_violations_total",
        "Block-relay-only connections ended for relaying a transaction to us.",
    ),
    (
        "counter",
        "meshd_addr_fetches_total",
        "Addr-fetches from DNS seeds by name through the proxy (behind --proxy), by outcome.",
    ),
    (
        "counter",
        "meshd_evictions_total",
        "Inbound peers evicted to make room for a new one.",
    ),
    (
        "counter",
        "meshd_frame_errors_total",
        "Framing errors on the wire, by kind.",
    ),
    (
        "counter",
        "meshd_discouraged_total",
        "Addresses discouraged by an automatic verdict (in memory, as Core's banman).",
    ),
    (
        "counter",
        "meshd_useless_frame_disconnects_total",
        "Peers disconnected for sending more frames we drop unread than their budget allows.",
    ),
    (
        "counter",
        "meshd_getdata_paused_total",
        "Times serving a peer's getdata paused because it was not reading.",
    ),
    (
        "histogram",
        "meshd_handshake_duration_seconds",
        "Time from socket open to completed version handshake.",
    ),
    (
        "counter",
        "meshd_headers_received_total",
        "Headers accepted into the header chain.",
    ),
    (
        "counter",
        "meshd_headers_rejected_total",
        "Headers refused, by reason.",
    ),
    (
        "counter",
        "meshd_inbound_refused_total",
        "Inbound connections refused, by reason.",
    ),
    (
        "counter",
        "meshd_misbehavior_total",
        "Protocol violations charged to peers, by kind.",
    ),
    (
        "counter",
        "meshd_payload_errors_total",
        "Messages with malformed or refused payloads, by kind.",
    ),
    (
        "histogram",
        "meshd_ping_rtt_seconds",
        "Ping round-trip times.",
    ),
    (
        "counter",
        "meshd_presync_aborted_total",
        "Header presyncs given up (nothing stored), by reason.",
    ),
    (
        "counter",
        "meshd_presync_released_total",
        "Headers stored after presync showed enough work.",
    ),
    (
        "counter",
        "meshd_tx_announcements_dropped_total",
        "Transaction announcements dropped because their peer had 5,000 tracked already.",
    ),
    (
        "counter",
        "meshd_tx_announcements_ignored_total",
        "Transaction announcements not followed up, by reason (recently_rejected: refused or not pooled since the tip last changed, Core's recent rejects; recently_confirmed: in a block received lately).",
    ),
    (
        "counter",
        "meshd_txs_not_relayed_total",
        "Pooled transactions not announced onwards, by reason (not_vouched: no validating peer vouched for them, --tx-relay vouched).",
    ),
    (
        "counter",
        "meshd_header_file_compactions_total",
        "Rewrites of headers.dat with the best chain alone because more than a quarter of its records were stale (forks, skipped or evicted headers), at load or at run time.",
    ),
    (
        "counter",
        "meshd_headers_withheld_total",
        "Headers left out of getheaders and getblocks answers because no validating peer has vouched for their blocks yet (see meshd_blocks_not_relayed_total).",
    ),
    (
        "counter",
        "meshd_blocks_not_relayed_total",
        "Blocks kept but not announced to ordinary peers when they arrived, by reason (not_vouched: no outbound or relay-whitelisted peer vouched for them yet; announced once one does). High-bandwidth compact-block peers get them regardless (BIP152).",
    ),
    (
        "counter",
        "meshd_getheaders_suppressed_total",
        "getheaders not sent because the peer was asked less than 2 minutes ago and has not answered.",
    ),
    (
        "counter",
        "meshd_headers_unconnecting_total",
        "Headers messages whose first header did not connect (answered with one getheaders, not charged).",
    ),
    (
        "counter",
        "meshd_requests_expired_total",
        "Transaction and block requests that expired unanswered, by kind.",
    ),
    (
        "counter",
        "meshd_port_mapping_rounds_total",
        "Port-mapping rounds (PCP, NAT-PMP, UPnP) by outcome: mapped, renewed, failed, and mappings expired or deleted.",
    ),
    (
        "counter",
        "meshd_port_mapping_errors_total",
        "Port-mapping failures and gateway datagrams ignored, by kind.",
    ),
    (
        "gauge",
        "meshd_port_mapping_active",
        "1 while the listening port is mapped on the gateway, by protocol.",
    ),
    (
        "gauge",
        "meshd_overlay_peers",
        "Peers connected on the libp2p overlay.",
    ),
    (
        "counter",
        "meshd_overlay_events_total",
        "Overlay events by kind: connections, dials, DHT, gossip, reachability, relay and hole punching.",
    ),
    (
        "counter",
        "meshd_overlay_commands_dropped_total",
        "Commands to the overlay dropped because its queue was full.",
    ),
    (
        "counter",
        "meshd_stun_ignored_total",
        "STUN datagrams ignored, by reason.",
    ),
    (
        "counter",
        "meshd_sync_early_inputs_dropped_total",
        "Peer messages Sync dropped because the peer was never announced in time.",
    ),
    (
        "counter",
        "meshd_sync_held_dropped_total",
        "Messages dropped (or generate requests refused) while headers.dat loaded, past the bound.",
    ),
    (
        "counter",
        "meshd_header_hints_abandoned_total",
        "Times header hints were given up (peers disagreed with a hint, or none could serve it).",
    ),
    (
        "counter",
        "meshd_header_segments_total",
        "Header segments asked along the hints, by outcome (taken, mismatch, expired, invalid).",
    ),
    (
        "counter",
        "meshd_sync_peer_failures_total",
        "Sync peers replaced for not delivering what they claimed, by reason.",
    ),
    (
        "counter",
        "meshd_sync_stalls_total",
        "Sync peers replaced for not answering getheaders in time.",
    ),
    (
        "counter",
        "meshd_txs_dropped_total",
        "Transactions not pooled, by reason.",
    ),
    (
        "counter",
        "meshd_txs_filtered_total",
        "Transaction announcements withheld by a peer's feefilter.",
    ),
    (
        "counter",
        "meshd_txs_received_total",
        "Transactions received and pooled.",
    ),
    (
        "counter",
        "meshd_txs_relayed_total",
        "Transaction announcements sent to peers.",
    ),
    (
        "counter",
        "meshd_store_errors_total",
        "Failed writes of a state file (headers.dat), each followed by a rewrite when writing works again.",
    ),
    (
        "counter",
        "meshd_v2_fallbacks_total",
        "Outbound v2 attempts that failed before their handshake and were retried in v1.",
    ),
    (
        "counter",
        "meshd_proxy_errors_total",
        "Outbound connections the SOCKS5 proxy could not give us, by typed reason.",
    ),
    (
        "gauge",
        "meshd_onion_service_up",
        "1 while our onion service is held through Tor's control port.",
    ),
    (
        "counter",
        "meshd_tor_control_errors_total",
        "Failed Tor control-port sessions, by reason.",
    ),
    (
        "counter",
        "meshd_fleet_published_total",
        "Events JetStream acknowledged (--nats).",
    ),
    (
        "counter",
        "meshd_fleet_dropped_total",
        "Events dropped because the fleet buffer was full (NATS away too long).",
    ),
    (
        "gauge",
        "meshd_fleet_connected",
        "1 while connected to NATS.",
    ),
    (
        "counter",
        "meshd_fleet_rejected_total",
        "Malformed or refused advisories, heartbeats and sightings ignored, by kind.",
    ),
    (
        "counter",
        "meshd_fleet_advisories_applied_total",
        "Other fleet nodes' ban advisories applied (--fleet-apply-bans).",
    ),
    (
        "gauge",
        "meshd_fleet_block_lag_seconds",
        "This node's lag behind the fleet's first sighting of the newest block it saw.",
    ),
    (
        "counter",
        "meshd_unknown_messages_total",
        "Messages with commands meshd does not know, ignored.",
    ),
];

/// Frame error kinds (`FrameError::kind`).
const FRAME_KINDS: &[&str] = &[
    "bad_magic",
    "malformed_command",
    "oversized",
    "bad_checksum",
    "overlong_payload",
    "malformed_payload",
    "unrequested_block",
    "tx_too_large",
    "requested_too_large",
    "v2_bad_aead",
    "v2_oversized_length",
    "v2_requested_too_large",
    "v2_unknown_message_type",
];

/// Payload error kinds (`PayloadError::kind`, and the Connection's own).
const PAYLOAD_KINDS: &[&str] = &[
    "malformed_payload",
    "too_many_items",
    "trailing_bytes",
    "user_agent_too_long",
    "bloom_not_offered",
    "duplicate_version",
    "late_feature_negotiation",
];

/// Why connections close (`DisconnectReason::kind`, and the handshake's and the v2
/// transport's kinds it wraps); the frame, payload and proxy kinds it also wraps are
/// registered from their own lists (see [`ZERO_SERIES`]).
const DISCONNECT_REASONS: &[&str] = &[
    "connect_failed",
    "connect_timeout",
    "no_route",
    "peer_closed",
    "io_error",
    "protocol_violation",
    "useless_frames",
    "ping_timeout",
    "send_queue_full",
    "evicted",
    "banned",
    "misbehaving",
    "slot_limit_lowered",
    "requested",
    "feeler_done",
    "extra_block_relay",
    "shutdown",
    "stopped",
    "actor_failed",
    // HandshakeError::kind.
    "handshake_timeout",
    "self_connection",
    "obsolete_version",
    "banned_user_agent",
    "missing_services",
    "duplicate_version",
    "message_before_version",
    // V2Error::kind.
    "v2_garbage_too_long",
    "v2_bad_aead",
    "v2_oversized_length",
    "v2_too_many_decoys",
    "v2_answered_v1",
    "v2_closed_during_handshake",
    "v2_key_exchange",
];

/// Header refusals (`AcceptError::kind`).
const HEADER_REASONS: &[&str] = &[
    "header_not_connecting",
    "header_bad_pow",
    "header_bad_difficulty",
    "header_bad_time",
    "header_time_too_new",
    "header_checkpoint",
    "header_too_many_stale",
    "header_chain_full",
    "header_not_continuous",
];

/// SOCKS5 failures (`ProxyError::kind`).
const PROXY_KINDS: &[&str] = &[
    "proxy_unreachable",
    "proxy_closed",
    "proxy_timeout",
    "proxy_auth_failed",
    "proxy_bad_reply",
    "proxy_host_unreachable",
    "proxy_network_unreachable",
    "proxy_connection_refused",
    "proxy_ttl_expired",
    "proxy_not_allowed",
    "proxy_failure",
    "proxy_bad_target",
];

/// Fleet messages refused (`AdvisoryError::kind`, and the heartbeat and sighting checks).
const FLEET_REJECT_KINDS: &[&str] = &[
    "heartbeat",
    "sighting",
    "malformed",
    "untrusted_key",
    "bad_signature",
    "wrong_origin",
    "not_own_subject",
    "stale",
    "rate_limited",
    "bad_subnet",
    "local",
    "not_single_address",
    "whitelisted",
    "manual",
    "expired",
    "own",
    "superseded",
];

/// Transactions dropped (`TxError::kind`, and the pool's own reasons).
const TX_DROP_REASONS: &[&str] = &[
    "evicted",
    "pool_full",
    "replaced_by_vouched",
    "tx_no_inputs",
    "tx_no_outputs",
    "tx_oversize",
    "tx_value_out_of_range",
    "tx_duplicate_inputs",
    "tx_null_prevout",
    "tx_coinbase",
    "tx_witness_on_bsv",
];

/// Label values known in advance, by metric: each series is exported at 0 from the start
/// (Prometheus practice), so `rate()` and alerts see a first increment instead of a series
/// appearing from nothing. A test (`actors/tests/layout.rs`) checks that every label value
/// the sources spell out, and every kind of the error enums, is listed.
pub const ZERO_SERIES: &[(&str, &str, &[&str])] = &[
    (
        "meshd_misbehavior_total",
        "kind",
        crate::peer::misbehavior::KINDS,
    ),
    ("meshd_frame_errors_total", "kind", FRAME_KINDS),
    ("meshd_payload_errors_total", "kind", PAYLOAD_KINDS),
    ("meshd_disconnects_total", "reason", DISCONNECT_REASONS),
    ("meshd_disconnects_total", "reason", FRAME_KINDS),
    ("meshd_disconnects_total", "reason", PAYLOAD_KINDS),
    ("meshd_disconnects_total", "reason", PROXY_KINDS),
    (
        "meshd_bans_total",
        "reason",
        &["manual", "misbehavior", "fleet"],
    ),
    (
        "meshd_inbound_refused_total",
        "reason",
        &["banned", "discouraged", "full"],
    ),
    (
        "meshd_addr_fetches_total",
        "result",
        &[
            "ok",
            "no_proxy",
            "proxy",
            "handshake",
            "malformed",
            "closed",
            "timeout",
            "too_much",
            "io",
        ],
    ),
    (
        "meshd_dns_queries_total",
        "result",
        &["ok", "nxdomain", "timeout", "error"],
    ),
    (
        "meshd_blocks_dropped_total",
        "reason",
        &["too_large", "unrequested"],
    ),
    ("meshd_blocks_not_relayed_total", "reason", &["not_vouched"]),
    (
        "meshd_blocks_received_total",
        "via",
        &[
            "block",
            "compact_high_bandwidth",
            "compact_low_bandwidth",
            "fallback",
            "local",
        ],
    ),
    (
        "meshd_blocks_rejected_total",
        "reason",
        &["block_mutated", "block_bad_merkle_root", "block_bad_length"],
    ),
    ("meshd_fleet_rejected_total", "kind", FLEET_REJECT_KINDS),
    (
        "meshd_header_segments_total",
        "outcome",
        &["expired", "invalid", "mismatch", "taken"],
    ),
    ("meshd_headers_rejected_total", "reason", HEADER_REASONS),
    (
        "meshd_presync_aborted_total",
        "reason",
        &[
            "empty_headers",
            "presync_low_work",
            "presync_not_continuous",
            "header_bad_pow",
            "header_bad_difficulty",
            "presync_too_long",
            "presync_commitment_mismatch",
        ],
    ),
    ("meshd_proxy_errors_total", "kind", PROXY_KINDS),
    ("meshd_requests_expired_total", "kind", &["block", "tx"]),
    (
        "meshd_store_errors_total",
        "file",
        &["headers.dat", "vouched.dat"],
    ),
    ("meshd_sync_peer_failures_total", "reason", &["timeout"]),
    (
        "meshd_tor_control_errors_total",
        "kind",
        &[
            "malformed",
            "refused",
            "no_auth_method",
            "cookie",
            "bad_server_hash",
            "null_auth_not_allowed",
            "wrong_service",
            "missing_field",
            "io",
        ],
    ),
    (
        "meshd_tx_announcements_ignored_total",
        "reason",
        &["recently_confirmed", "recently_rejected"],
    ),
    ("meshd_txs_dropped_total", "reason", TX_DROP_REASONS),
    ("meshd_txs_not_relayed_total", "reason", &["not_vouched"]),
    (
        "meshd_port_mapping_rounds_total",
        "outcome",
        PORTMAP_OUTCOMES,
    ),
    ("meshd_port_mapping_errors_total", "kind", PORTMAP_ERRORS),
    ("meshd_overlay_events_total", "event", OVERLAY_EVENTS),
];

/// Labels of `meshd_overlay_events_total`, as the overlay's driver counts them.
const OVERLAY_EVENTS: &[&str] = &[
    "connected",
    "disconnected",
    "dial_refused",
    "dial_failed",
    "incoming_failed",
    "identified",
    "mdns_discovered",
    "kad_routing_updated",
    "dht_provider_stored",
    "dht_record_refused",
    "gossip_received",
    "gossip_published",
    "gossip_publish_failed",
    "command_refused",
    "hint",
    "topic_find",
    "diversity_pruned",
    "reachability_public",
    "reachability_private",
    "reachability_unknown",
    "relay_reservation",
    "relay_reservation_lost",
    "relay_served_reservation",
    "relay_served_circuit",
    "relay_denied",
    "hole_punch_ok",
    "hole_punch_failed",
];

/// Outcomes of a mapping round, and of a mapping's end, as `meshd_port_mapping_rounds_total`
/// labels them.
const PORTMAP_OUTCOMES: &[&str] = &["mapped", "renewed", "failed", "expired", "deleted"];

/// Kinds of `meshd_port_mapping_errors_total`: the port mapper's `MapError::kind`, the PortMap actor's own
/// (no gateway, socket, UPnP steps) and its `WireError::kind` for datagrams ignored.
const PORTMAP_ERRORS: &[&str] = &[
    "no_answer",
    "refused",
    "short_lifetime",
    "no_gateway",
    "socket",
    "upnp_search",
    "upnp_map",
    "upnp_external_ip",
    "length",
    "version",
    "opcode",
    "not_ours",
];

/// Compact-block outcomes, each in both modes (two labels: see [`register_zero_series`]).
const COMPACT_OUTCOMES: &[&str] = &[
    "reconstructed",
    "fallback",
    "invalid",
    "too_large",
    "unsolicited",
];

/// Labelled gauges, each value at 0 from the start.
pub const ZERO_GAUGES: &[(&str, &str, &[&str])] = &[
    (
        "meshd_compact_high_bandwidth_peers",
        "direction",
        &["to", "from"],
    ),
    (
        "meshd_port_mapping_active",
        "protocol",
        &["pcp", "natpmp", "upnp"],
    ),
];

/// Gauges left out until they have a value: 0 would claim what is not known (the fleet's
/// link and lag mean nothing without `--nats`).
pub const NO_ZERO_GAUGES: &[&str] = &["meshd_fleet_connected", "meshd_fleet_block_lag_seconds"];

/// Facade metrics whose label values are open (commands, transports, RPC error codes), or
/// take two labels (compact blocks, registered apart): no series from [`ZERO_SERIES`].
pub const OPEN_LABELS: &[&str] = &[
    "meshd_bytes_received_total",
    "meshd_bytes_sent_total",
    "meshd_rpc_errors_total",
    "meshd_compact_blocks_total",
];

/// Registers the HELP text of every facade metric with the installed recorder, so the
/// exposition passes `promtool check metrics`, and exports every counter and gauge at 0
/// (see `register_zero_series`). Call after installing the recorder, before the node
/// starts.
pub fn describe_metrics() {
    for (kind, name, help) in DESCRIPTIONS {
        match *kind {
            "histogram" => metrics::describe_histogram!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ => metrics::describe_counter!(*name, *help),
        }
    }
    register_zero_series();
}

/// Every counter and gauge from the start: unlabelled ones at 0, labelled ones at 0 for
/// each value in [`ZERO_SERIES`]; those in [`OPEN_LABELS`] wait for their first value
/// (compact blocks get their known outcome and mode pairs).
fn register_zero_series() {
    for (kind, name, _) in DESCRIPTIONS {
        if OPEN_LABELS.contains(name)
            || NO_ZERO_GAUGES.contains(name)
            || ZERO_SERIES.iter().any(|(n, _, _)| n == name)
            || ZERO_GAUGES.iter().any(|(n, _, _)| n == name)
        {
            continue;
        }
        match *kind {
            "counter" => metrics::counter!(*name).increment(0),
            "gauge" => metrics::gauge!(*name).increment(0.0),
            _ => {}
        }
    }
    for (name, label, values) in ZERO_SERIES {
        for value in *values {
            metrics::counter!(*name, *label => *value).increment(0);
        }
    }
    for (name, label, values) in ZERO_GAUGES {
        for value in *values {
            metrics::gauge!(*name, *label => *value).increment(0.0);
        }
    }
    for outcome in COMPACT_OUTCOMES {
        for mode in ["high_bandwidth", "low_bandwidth"] {
            metrics::counter!("meshd_compact_blocks_total", "outcome" => *outcome, "mode" => mode)
                .increment(0);
        }
    }
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
        "Connections by direction, state and transport (v1, or BIP324 v2 once negotiated).",
    );
    for d in [Direction::Outbound, Direction::Inbound] {
        for s in [
            PeerState::Connecting,
            PeerState::Handshaking,
            PeerState::Connected,
        ] {
            for t in ["v1", "v2"] {
                let n = peers
                    .iter()
                    .filter(|p| p.direction == d && p.state == s && p.transport == t)
                    .count();
                let _ = writeln!(
                    out,
                    "meshd_peers{{direction=\"{}\",state=\"{}\",transport=\"{t}\"}} {n}",
                    d.as_str(),
                    s.as_str()
                );
            }
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
        "meshd_slots_used{{direction=\"block-relay-only\"}} {}",
        used.block_relay
    );
    let _ = writeln!(
        out,
        "meshd_slots_used{{direction=\"manual\"}} {}",
        used.manual
    );
    let _ = writeln!(
        out,
        "meshd_slots_used{{direction=\"inbound\"}} {}",
        used.inbound
    );
    let _ = writeln!(
        out,
        "meshd_slots_used{{direction=\"total\"}} {}",
        used.total()
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
        "meshd_slots_max{{direction=\"block-relay-only\"}} {}",
        max.block_relay
    );
    let _ = writeln!(
        out,
        "meshd_slots_max{{direction=\"manual\"}} {}",
        max.manual
    );
    let _ = writeln!(
        out,
        "meshd_slots_max{{direction=\"inbound\"}} {}",
        max.inbound
    );
    let _ = writeln!(out, "meshd_slots_max{{direction=\"total\"}} {}", max.total);

    // Per-peer series are labelled by a key that does not churn: an outbound peer by its
    // address, an inbound one by its IP alone (its port is ephemeral: one new series per
    // reconnection would grow Prometheus without bound). Inbound peers sharing an IP are
    // summed (a counter that drops when one of them leaves reads as a reset).
    let mut by_key: std::collections::BTreeMap<String, (u64, u64, Option<f64>)> =
        std::collections::BTreeMap::new();
    for p in &peers {
        let key = match p.direction {
            Direction::Outbound => p.address(),
            Direction::Inbound => match p.overlay {
                Some(_) => p.address(),
                None => p.addr.ip().to_string(),
            },
        };
        let e = by_key.entry(key).or_insert((0, 0, None));
        e.0 = e.0.saturating_add(p.bytes_sent);
        e.1 = e.1.saturating_add(p.bytes_received);
        if let Some(rtt) = p.ping_last {
            // The slowest of them: the figure an alert on RTT is after.
            e.2 = Some(e.2.map_or(rtt.as_secs_f64(), |r: f64| r.max(rtt.as_secs_f64())));
        }
    }
    header(
        &mut out,
        "meshd_peer_bytes_sent_total",
        "counter",
        "Bytes sent to each live peer (outbound by address, inbound by IP).",
    );
    for (peer, (sent, _, _)) in &by_key {
        let _ = writeln!(
            out,
            "meshd_peer_bytes_sent_total{{peer=\"{}\"}} {sent}",
            esc(peer)
        );
    }
    header(
        &mut out,
        "meshd_peer_bytes_received_total",
        "counter",
        "Bytes received from each live peer (outbound by address, inbound by IP).",
    );
    for (peer, (_, received, _)) in &by_key {
        let _ = writeln!(
            out,
            "meshd_peer_bytes_received_total{{peer=\"{}\"}} {received}",
            esc(peer)
        );
    }
    header(
        &mut out,
        "meshd_peer_rtt_seconds",
        "gauge",
        "Last ping round-trip time of each live peer (inbound by IP: the slowest).",
    );
    for (peer, (_, _, rtt)) in &by_key {
        if let Some(rtt) = rtt {
            let _ = writeln!(
                out,
                "meshd_peer_rtt_seconds{{peer=\"{}\"}} {rtt}",
                esc(peer)
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
    for t in crate::shared::status::NatType::ALL {
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
        "meshd_header_store_failing",
        "gauge",
        "1 while headers.dat cannot be written (e.g. a full disk) and the chain is kept in memory only.",
    );
    let _ = writeln!(
        out,
        "meshd_header_store_failing {}",
        u8::from(sync.store_error.is_some())
    );
    header(
        &mut out,
        "meshd_best_peer_height",
        "gauge",
        "Highest header height a connected peer has shown us (never its claimed start height).",
    );
    let _ = writeln!(out, "meshd_best_peer_height {}", sync.best_peer_height);
    header(
        &mut out,
        "meshd_sync_progress",
        "gauge",
        "Header sync progress from our own chain: height / (height + block intervals since the tip's time).",
    );
    let _ = writeln!(out, "meshd_sync_progress {}", sync.progress);
    header(
        &mut out,
        "meshd_sync_state",
        "gauge",
        "1 for the current header-sync state.",
    );
    for st in [
        crate::msg::SyncState::Idle,
        crate::msg::SyncState::Loading,
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
