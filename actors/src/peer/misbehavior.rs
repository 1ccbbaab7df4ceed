//! What each protocol violation costs a peer, and when the total ends its connection.
//!
//! | violation | points | why |
//! |---|---|---|
//! | `oversized` frame length | 100 | no honest implementation announces more than the limit |
//! | `malformed_command` | 100 | the stream is garbage or hostile |
//! | `too_many_items` (headers, addr, inv, locator above Core's limits) | 50 | Core punishes these too |
//! | `malformed_payload` / `trailing_bytes` | 20 | a buggy or hostile encoder |
//! | `protocol_violation` (second protoconf, bad protoconf value) | 20 | BSV spec: disconnect |
//! | `bad_checksum` | 10 | corruption happens; a stream of it does not |
//! | malformed `cmpctblock` or `blocktxn`, `getblocktxn` past the block's end (BIP152) | 100 | Core discourages these |
//! | header with bad proof of work, wrong nBits, checkpoint conflict | 100 | cannot be an accident |
//! | header time not above median time past | 50 | |
//! | header time over 2 h ahead | 0 | our clock may be the wrong one (Core) |
//! | unconnecting headers | 0 | announcements cross (Core master); answered by one `getheaders` |
//! | too many stale headers; block not matching its merkle root | 20 | |
//! | BIP37 filter over the size limits | 100 | BIP37: a protocol violation |
//! | `duplicate_version` | 1 | Core's cost |
//! | `v2_oversized_length` (a v2 packet above the limit) | 100 | as `oversized` |
//! | `v2_requested_too_large` (such a packet while a block above our policy limit is asked of the peer, BSV) | 0 | we asked for it; the connection ends since the packet cannot be read past |
//! | v2 handshake failures, `v2_bad_aead`, `v2_unknown_message_type` | 0 | disconnect (bad tag) or ignore, as Core |
//! | `bad_magic` | 0 | usually a node of another network: disconnect, do not ban |
//!
//! At the threshold (default 100) the peer is disconnected and its address discouraged
//! (Core's banman since 0.20: in memory, see `shared::discourage`); every connection from
//! it is closed. As in Bitcoin Core, local peers (loopback) and onion peers are disconnected
//! but not discouraged, since that would hit every local process (or every Tor peer) at
//! once; the `ban-local-peers` config key turns the loopback exemption off. Manual and
//! `noban` peers are never punished.

/// Default score at which a peer is disconnected and discouraged.
pub const DEFAULT_BAN_THRESHOLD: u32 = 100;

/// Default length of a ban given without one (an operator's; Core's
/// `DEFAULT_MISBEHAVING_BANTIME`).
pub const DEFAULT_BAN_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Every violation meshd charges or counts, by its stable name (the `kind` of the frame,
/// payload or disconnect error), with the points it costs.
const COSTS: &[(&str, u32)] = &[
    ("oversized", 100),
    ("malformed_command", 100),
    ("v2_oversized_length", 100),
    // A list with more items than allowed, or any payload longer than a valid one.
    ("too_many_items", 50),
    ("overlong_payload", 50),
    ("malformed_payload", 20),
    ("trailing_bytes", 20),
    ("user_agent_too_long", 20),
    ("protocol_violation", 20),
    ("bad_checksum", 10),
    // BIP152: a malformed compact block or `blocktxn`, or a `getblocktxn` past the
    // block's end (Core: Misbehaving, "invalid compact block", "non-matching block
    // transactions", "out-of-bounds tx indices"). A short-id collision or a
    // reconstruction that fails its checks costs nothing: the whole block is asked.
    ("cmpctblock_empty", 100),
    ("cmpctblock_too_many_txs", 100),
    ("cmpctblock_null_tx", 100),
    ("cmpctblock_bad_index", 100),
    ("blocktxn_wrong_count", 100),
    ("getblocktxn_out_of_range", 100),
    // Headers: invalid proof of work, difficulty or a checkpoint conflict cannot be an
    // accident; a bad timestamp rarely is; too many forks, or a block whose transactions
    // do not match its merkle root, cost a little each.
    ("header_bad_pow", 100),
    ("header_bad_difficulty", 100),
    ("header_checkpoint", 100),
    // A batch whose headers do not chain (Core: `non-continuous headers sequence`).
    ("header_not_continuous", 100),
    ("header_bad_time", 50),
    // Unconnecting headers are never charged (Core master's HandleUnconnectingHeaders:
    // announcements cross); the kind is kept for a batch that breaks off mid-way, which
    // the chain reports so and intake refuses as not continuous.
    ("header_not_connecting", 0),
    // Core does not punish a header from the future: our clock may be the wrong one.
    ("header_time_too_new", 0),
    ("header_too_many_stale", 20),
    ("block_bad_merkle_root", 20),
    // Headers that do not lead to a header hint: the peer is on another chain, or the
    // hint is wrong (then every peer pays once, and hints are given up after three).
    ("header_segment_mismatch", 10),
    // Core punishes a mutated block and a bad witness commitment (BLOCK_MUTATED).
    ("block_mutated", 100),
    ("block_bad_witness_commitment", 100),
    // Core's `bad-blk-length` and `bad-blk-weight` (BLOCK_CONSENSUS): punished.
    ("block_bad_length", 100),
    // Consensus-invalid transactions (Core: TX_CONSENSUS is punished).
    ("tx_no_inputs", 100),
    ("tx_no_outputs", 100),
    ("tx_oversize", 100),
    ("tx_value_out_of_range", 100),
    ("tx_duplicate_inputs", 100),
    ("tx_null_prevout", 100),
    ("tx_coinbase", 100),
    ("tx_witness_on_bsv", 100),
    // BIP37: a filter over the limits is a protocol violation (Core bans for it).
    ("bloom_too_large", 100),
    ("duplicate_version", 1),
];

/// The names in `COSTS`, in its order: `meshd_misbehavior_total`'s `kind` values.
pub const KINDS: &[&str] = &{
    let mut out = [""; COSTS.len()];
    let mut i = 0;
    while i < COSTS.len() {
        out[i] = COSTS[i].0;
        i += 1;
    }
    out
};

/// The points a violation costs, by its stable name (the `kind` of the frame, payload or
/// disconnect error). Unknown names cost nothing.
pub fn cost(kind: &str) -> u32 {
    COSTS
        .iter()
        .find(|(k, _)| *k == kind)
        .map_or(0, |(_, points)| *points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_framing_bans_at_once_and_wrong_networks_are_not_punished() {
        assert!(cost("oversized") >= DEFAULT_BAN_THRESHOLD);
        assert_eq!(cost("bad_magic"), 0);
        assert_eq!(cost("bad_checksum") * 10, DEFAULT_BAN_THRESHOLD);
        assert_eq!(cost("no_such_thing"), 0);
    }
}
