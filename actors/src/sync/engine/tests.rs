//! Tests of the sync core over virtual time: Core's functional tests' scenarios
//! (p2p_sendheaders, p2p_ibd_stalling, p2p_unrequested_blocks, p2p_initial_headers_sync) at
//! the level of the decisions, and a property test of the per-peer request bounds under any
//! sequence of peer events.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bitcoin::block::{Block, Header};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::Inventory;
use bitcoin::BlockHash;
use proptest::prelude::*;

use super::{Action, Clock, NewPeer, SyncCore};
use crate::config::NodeConfig;
use crate::events::NodeEvent;
use crate::msg::{HashedHeaders, SyncInput, SyncState};
use crate::network::NetworkId;
use crate::shared::peers::PeerId;
use crate::sync::blocks::{BLOCK_STALLING_TIMEOUT_DEFAULT, MAX_BLOCKS_IN_FLIGHT_PER_PEER};
use crate::sync::header_sync::HEADERS_RESPONSE_TIME;
use crate::sync::mine::regtest_block;

/// A fixed start for virtual time (2026-12-01).
const START_UNIX: u32 = 1_796_083_200;

fn clock0() -> Clock {
    Clock {
        now: Instant::now(),
        unix: START_UNIX,
    }
}

fn core_at(clock: Clock) -> SyncCore {
    let config = NodeConfig::new(NetworkId::Regtest, std::env::temp_dir());
    SyncCore::new(config.profile(), Arc::new(config), clock, 7)
}

/// `n` regtest blocks on genesis, a minute apart, ending just before `clock`.
fn chain_of(core: &SyncCore, n: u32, clock: Clock) -> Vec<Block> {
    let mut parent = core.chain().tip_header();
    let mut blocks = Vec::new();
    for h in 1..=n {
        let time = clock.unix - (n - h) * 60 - 60;
        let b = regtest_block(&parent, h, time, 99);
        parent = b.header;
        blocks.push(b);
    }
    blocks
}

fn peer(id: u64, inbound: bool, start_height: i32) -> NewPeer {
    NewPeer {
        id: PeerId(id),
        addr: format!("127.0.0.1:{}", 20_000 + id).parse().unwrap(),
        label: format!("peer{id}"),
        start_height,
        relay: true,
        inbound,
        version: 70016,
        wtxid_relay: false,
        block_relay_only: false,
        services: bitcoin::p2p::ServiceFlags::NETWORK | bitcoin::p2p::ServiceFlags::WITNESS,
        network: crate::shared::overlay::Network::Ipv4,
    }
}

fn headers(blocks: &[Block]) -> SyncInput {
    SyncInput::Headers(HashedHeaders::new(
        blocks.iter().map(|b| b.header).collect::<Vec<Header>>(),
    ))
}

fn getheaders_to(actions: &[Action], id: PeerId) -> usize {
    actions
        .iter()
        .filter(|a| matches!(a, Action::Send(p, NetworkMessage::GetHeaders(_)) if *p == id))
        .count()
}

fn blocks_asked(actions: &[Action], id: PeerId) -> Vec<BlockHash> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p, NetworkMessage::GetData(items)) if *p == id => Some(items),
            _ => None,
        })
        .flatten()
        .filter_map(|i| match i {
            Inventory::Block(h) | Inventory::WitnessBlock(h) => Some(*h),
            _ => None,
        })
        .collect()
}

fn received(actions: &[Action]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(NodeEvent::BlockReceived { hash, .. }) => Some(hash.clone()),
            _ => None,
        })
        .collect()
}

/// A node synced to `n` blocks (mined here), so that its tip is recent.
fn synced_core(n: u32) -> (SyncCore, Clock) {
    let clock = clock0();
    let mut core = core_at(clock);
    let _ = core.generate(clock, n);
    let _ = core.tick(clock);
    assert_eq!(core.state(), SyncState::Synced);
    (core, clock)
}

#[test]
fn a_claimed_height_keeps_nobody_out_of_synced() {
    // A peer claiming 2^31-1 in its version: shown, never trusted.
    let (mut core, clock) = synced_core(3);
    let _ = core.peer_up(clock, peer(1, false, i32::MAX));
    let _ = core.tick(clock.after(Duration::from_secs(1)));
    assert_eq!(core.state(), SyncState::Synced);
    let status = core.status(clock);
    assert_eq!(status.best_peer_height, 0, "a claim is not a shown header");
    assert!(status.progress > 0.99, "progress {}", status.progress);
}

#[test]
fn an_unknown_block_inv_asks_nothing_more_of_a_peer_already_asked() {
    // Core's MaybeSendGetHeaders: one getheaders in flight per peer, for 2 minutes.
    let (mut core, clock) = synced_core(2);
    let id = PeerId(1);
    let up = core.peer_up(clock, peer(1, false, 2));
    assert_eq!(getheaders_to(&up, id), 1, "a new peer is asked for headers");
    let inv = || SyncInput::Inv(vec![Inventory::Block(BlockHash::from_byte_array([9; 32]))]);
    let again = core.input(clock.after(Duration::from_secs(1)), id, inv());
    assert_eq!(getheaders_to(&again, id), 0);
    let later = core.input(
        clock.after(HEADERS_RESPONSE_TIME + Duration::from_secs(1)),
        id,
        inv(),
    );
    assert_eq!(
        getheaders_to(&later, id),
        1,
        "asked again once the wait is over"
    );
}

#[test]
fn unconnecting_headers_from_the_sync_peer_ask_at_most_once() {
    // Core's MaybeSendGetHeaders holds for the sync peer too: a stream of headers that do not
    // connect (not answers to our request) cannot make the node send a getheaders for each.
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 12, clock);
    let id = PeerId(1);
    let up = core.peer_up(clock, peer(1, false, 12));
    assert_eq!(
        getheaders_to(&up, id),
        1,
        "the sync peer is asked for headers"
    );
    let mut asked = 0;
    for i in 0..200u64 {
        let t = clock.after(Duration::from_millis(i));
        asked += getheaders_to(&core.input(t, id, headers(&blocks[5..8])), id);
    }
    assert!(
        asked <= 1,
        "{asked} getheaders for 200 unconnecting batches"
    );
    // Its answer connects: the sync goes on.
    let t = clock.after(Duration::from_secs(1));
    let _ = core.input(t, id, headers(&blocks));
    assert_eq!(core.chain().height(), 12);
}

#[test]
fn a_tip_block_is_asked_of_another_announcer_when_the_first_stalls() {
    // p2p_ibd_stalling's spirit: a peer that announced and does not deliver holds the tip
    // for the stalling timeout, not the 10-minute download timeout.
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 3, clock);
    let (a, b) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, false, 3));
    let first = core.input(clock, a, headers(&blocks));
    let asked_a = blocks_asked(&first, a);
    assert_eq!(
        asked_a.len(),
        3,
        "direct fetch of the new blocks from the sender"
    );
    let second = core.input(clock, b, headers(&blocks));
    assert!(
        blocks_asked(&second, b).is_empty(),
        "one request per block at first"
    );
    let mut t = clock;
    let mut asked_b = Vec::new();
    for _ in 0..40 {
        t = t.after(Duration::from_millis(100));
        asked_b.extend(blocks_asked(&core.tick(t), b));
    }
    assert!(
        !asked_b.is_empty(),
        "within {BLOCK_STALLING_TIMEOUT_DEFAULT:?} and a bit, another announcer is asked"
    );
    // b delivers: accepted, since it was asked of b.
    let hash = asked_b[0];
    let block = blocks
        .iter()
        .find(|x| x.block_hash() == hash)
        .unwrap()
        .clone();
    let got = core.input(t, b, SyncInput::Block(Box::new(block)));
    assert_eq!(received(&got), vec![hash.to_string()]);
}

#[test]
fn a_block_nobody_asked_of_the_sender_is_dropped() {
    // p2p_unrequested_blocks: a block pushed by a peer we did not ask is not processed.
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 1, clock);
    let (a, b) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 1));
    let _ = core.peer_up(clock, peer(2, true, 1));
    let asked = core.input(clock, a, headers(&blocks));
    assert_eq!(blocks_asked(&asked, a), vec![blocks[0].block_hash()]);
    let pushed = core.input(clock, b, SyncInput::Block(Box::new(blocks[0].clone())));
    assert!(received(&pushed).is_empty(), "unrequested from b");
    let delivered = core.input(clock, a, SyncInput::Block(Box::new(blocks[0].clone())));
    assert_eq!(received(&delivered).len(), 1);
}

/// The compact blocks sent to `id` (framed once, as `SendShared`).
fn cmpctblocks_to(actions: &[Action], id: PeerId) -> Vec<crate::wire::compact::CompactBlock> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::SendShared(p, "cmpctblock", frame) if *p == id => {
                let mut r = &frame[crate::constants::FRAME_HEADER_LEN..];
                crate::wire::compact::CompactBlock::decode(
                    &mut r,
                    crate::wire::compact::IndexWidth::Bits32,
                )
                .ok()
            }
            _ => None,
        })
        .collect()
}

/// Blocks announced to `id` (by `inv` or `headers`).
fn blocks_announced_to(actions: &[Action], id: PeerId) -> Vec<BlockHash> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p, m) if *p == id => Some(m),
            _ => None,
        })
        .flat_map(|m| match m {
            NetworkMessage::Inv(items) => items
                .iter()
                .filter_map(|i| match i {
                    Inventory::Block(h) | Inventory::WitnessBlock(h) => Some(*h),
                    _ => None,
                })
                .collect(),
            NetworkMessage::Headers(hs) => hs.iter().map(|h| h.block_hash()).collect(),
            _ => Vec::new(),
        })
        .collect()
}

#[test]
fn a_block_from_an_inbound_peer_is_announced_only_once_an_outbound_peer_vouches_for_it() {
    // meshd checks no scripts: a block only an inbound peer gave us may be invalid, and a
    // Core peer that fetched it from us would discourage us. Announced once a peer we chose
    // (which validated it before announcing) announces it too.
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 1, clock);
    let hash = blocks[0].block_hash();
    let (inbound, listener, outbound) = (PeerId(1), PeerId(3), PeerId(2));
    let _ = core.peer_up(clock, peer(1, true, 0));
    let _ = core.peer_up(clock, peer(3, true, 0));
    let _ = core.peer_up(clock, peer(2, false, 0));
    let asked = core.input(clock, inbound, headers(&blocks));
    assert_eq!(blocks_asked(&asked, inbound), vec![hash]);
    let got = core.input(
        clock,
        inbound,
        SyncInput::Block(Box::new(blocks[0].clone())),
    );
    assert_eq!(received(&got), vec![hash.to_string()], "kept and published");
    assert!(
        blocks_announced_to(&got, listener).is_empty()
            && blocks_announced_to(&got, outbound).is_empty(),
        "not announced on an inbound peer's word: {got:?}"
    );
    let later = core.peer_up(clock, peer(4, true, 0));
    assert!(
        blocks_announced_to(&later, PeerId(4)).is_empty(),
        "nor to a new peer"
    );
    let vouched = core.input(clock, outbound, headers(&blocks));
    assert_eq!(blocks_announced_to(&vouched, listener), vec![hash]);
    assert_eq!(blocks_announced_to(&vouched, PeerId(4)), vec![hash]);
    assert!(
        blocks_announced_to(&vouched, outbound).is_empty(),
        "not back to the voucher"
    );
}

#[test]
fn a_block_from_an_outbound_peer_is_announced_on_arrival() {
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 1, clock);
    let hash = blocks[0].block_hash();
    let (outbound, listener) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 0));
    let _ = core.peer_up(clock, peer(2, true, 0));
    let _ = core.input(clock, outbound, headers(&blocks));
    let got = core.input(
        clock,
        outbound,
        SyncInput::Block(Box::new(blocks[0].clone())),
    );
    assert_eq!(blocks_announced_to(&got, listener), vec![hash]);
}

/// `n` regtest blocks on `parent`, a minute apart, ending just before `clock`; `seed` makes
/// a branch of its own.
fn branch_of(parent: Header, n: u32, clock: Clock, seed: u32) -> Vec<Block> {
    let mut parent = parent;
    let mut blocks = Vec::new();
    for h in 1..=n {
        let b = regtest_block(&parent, h, clock.unix - (n - h) * 60 - 60, seed);
        parent = b.header;
        blocks.push(b);
    }
    blocks
}

#[test]
fn after_a_reorg_a_peer_on_the_old_branch_is_not_asked_for_the_new_one() {
    // Core: a block is asked only of peers whose best known block descends from it. A peer
    // that showed a higher header on the branch we left has none of the new branch.
    let clock = clock0();
    let mut core = core_at(clock);
    let genesis = core.chain().tip_header();
    let old = branch_of(genesis, 3, clock, 98);
    let new = branch_of(genesis, 4, clock, 99);
    let (old_peer, new_peer) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, false, 4));
    let _ = core.input(clock, old_peer, headers(&old));
    for b in &old {
        let _ = core.input(clock, old_peer, SyncInput::Block(Box::new(b.clone())));
    }
    let reorg = core.input(clock, new_peer, headers(&new));
    assert_eq!(core.chain().tip(), new[3].block_hash());
    assert_eq!(
        blocks_asked(&reorg, new_peer).len(),
        4,
        "the new branch from the fork point"
    );
    // The new branch's sender stalls: nobody else has those blocks.
    let mut t = clock;
    for _ in 0..100 {
        t = t.after(Duration::from_millis(100));
        let asked = blocks_asked(&core.tick(t), old_peer);
        assert!(
            asked.is_empty(),
            "asked the old branch's peer for {asked:?}"
        );
    }
}

#[test]
fn blocks_are_asked_only_of_peers_that_serve_them() {
    // Core: the announcer of a block is asked for it directly if it serves witnesses
    // (CanServeWitnesses; on BTC every block we fetch is past segwit), whatever its NETWORK
    // bits, since it just showed it has the block. A peer only inferred to have it (its best
    // block descends from it) is asked only if it keeps blocks (CanServeBlocks: NETWORK, or
    // NETWORK_LIMITED near its best).
    use bitcoin::p2p::ServiceFlags;
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 20, clock);
    let with = |id: u64, services: ServiceFlags| NewPeer {
        services,
        ..peer(id, false, 20)
    };
    let _ = core.peer_up(clock, with(1, ServiceFlags::NETWORK));
    let got = core.input(clock, PeerId(1), headers(&blocks[..1]));
    assert!(
        blocks_asked(&got, PeerId(1)).is_empty(),
        "no witnesses: not asked"
    );
    let _ = core.peer_up(clock, with(2, ServiceFlags::WITNESS));
    let got = core.input(clock, PeerId(2), headers(&blocks));
    assert!(
        !blocks_asked(&got, PeerId(2)).is_empty(),
        "the sender of new headers that serves witnesses is asked"
    );
    // Peer 2 stalls. Peers 3 (no NETWORK) and 4 (NETWORK_LIMITED) show the chain in one
    // answer longer than an announcement: they are only inferred to have the blocks.
    let _ = core.peer_up(clock, with(3, ServiceFlags::WITNESS));
    let _ = core.peer_up(
        clock,
        with(4, ServiceFlags::NETWORK_LIMITED | ServiceFlags::WITNESS),
    );
    let _ = core.input(clock, PeerId(3), headers(&blocks));
    let _ = core.input(clock, PeerId(4), headers(&blocks));
    let mut t = clock;
    let mut asked: HashMap<PeerId, Vec<BlockHash>> = HashMap::new();
    for _ in 0..50 {
        t = t.after(Duration::from_millis(100));
        let out = core.tick(t);
        for id in [3, 4] {
            asked
                .entry(PeerId(id))
                .or_default()
                .extend(blocks_asked(&out, PeerId(id)));
        }
    }
    assert!(
        asked[&PeerId(3)].is_empty(),
        "a peer that keeps no blocks is not asked for blocks it did not announce"
    );
    assert!(
        !asked[&PeerId(4)].is_empty(),
        "a limited peer is, near its best: {asked:?}"
    );
}

#[test]
fn a_v2_packet_too_large_is_charged_to_the_first_block_asked() {
    // The Connection cannot read a v2 packet it will not take, so it names no block; peers
    // answer getdata in order, so it is the first one asked of it and not delivered.
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 2, clock);
    let (a, b) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 2));
    let _ = core.peer_up(clock, peer(2, false, 2));
    let asked = core.input(clock, a, headers(&blocks));
    assert_eq!(blocks_asked(&asked, a).len(), 2);
    let _ = core.input(clock, b, headers(&blocks));
    let next = core.input(clock, a, SyncInput::FirstRequestedTooLarge);
    assert_eq!(
        blocks_asked(&next, b),
        vec![blocks[0].block_hash()],
        "the first block, and only it, is asked of the other announcer"
    );
}

#[test]
fn a_new_peer_behind_our_tip_is_told_of_it() {
    let (mut core, clock) = synced_core(4);
    let tip = core.chain().tip();
    let up = core.peer_up(clock, peer(1, true, 1));
    let told = up.iter().any(|a| {
        matches!(a, Action::Send(PeerId(1), NetworkMessage::Inv(items))
            if items == &vec![Inventory::Block(tip)])
    });
    assert!(told, "{up:?}");
}

/// A core that needs far more work than regtest headers carry, with `whitelist`.
fn core_needing_work(clock: Clock, whitelist: &str) -> SyncCore {
    let mut config = NodeConfig::new(NetworkId::Regtest, std::env::temp_dir());
    config.minimum_chain_work = Some(u128::MAX / 2);
    config.whitelist = vec![crate::shared::whitelist::WhitelistEntry::parse(whitelist).unwrap()];
    SyncCore::new(config.profile(), Arc::new(config), clock, 7)
}

#[test]
fn a_noban_peers_low_work_headers_skip_presync() {
    // Core's ProcessHeadersMessage: `noban` sets already_validated_work. A peer without it
    // goes through presync, and nothing of its chain is stored yet.
    let clock = clock0();
    let mut plain = core_needing_work(clock, "noban@10.9.9.9/32");
    let batch = chain_of(
        &plain,
        crate::constants::MAX_HEADERS_PER_MESSAGE as u32,
        clock,
    );
    let _ = plain.peer_up(clock, peer(1, false, 2000));
    let _ = plain.input(clock, PeerId(1), headers(&batch));
    assert_eq!(plain.chain().height(), 0, "presynced, not stored");
    let mut trusted = core_needing_work(clock, "noban@127.0.0.1/32");
    let _ = trusted.peer_up(clock, peer(1, false, 2000));
    let _ = trusted.input(clock, PeerId(1), headers(&batch));
    assert_eq!(trusted.chain().height(), 2000, "stored at once");
}

#[test]
fn an_empty_headers_message_ends_a_peers_presync() {
    // Core's ProcessHeadersMessage: no headers mid-presync means the peer has nothing more
    // for us; its presync state is dropped (not kept until it disconnects).
    let clock = clock0();
    let mut core = core_needing_work(clock, "noban@10.9.9.9/32");
    let batch = chain_of(
        &core,
        crate::constants::MAX_HEADERS_PER_MESSAGE as u32,
        clock,
    );
    let _ = core.peer_up(clock, peer(1, false, 2000));
    let _ = core.input(clock, PeerId(1), headers(&batch));
    assert!(core.peers[&PeerId(1)].presync.is_some(), "presyncing");
    let _ = core.input(clock, PeerId(1), headers(&[]));
    assert!(core.peers[&PeerId(1)].presync.is_none());
}

/// One step of a peer's life, for the property test.
#[derive(Debug, Clone)]
enum Step {
    Up {
        peer: u64,
        inbound: bool,
    },
    Down {
        peer: u64,
    },
    /// Headers `from..from+len` of the pre-mined chain.
    Headers {
        peer: u64,
        from: usize,
        len: usize,
    },
    InvBlock {
        peer: u64,
        block: usize,
    },
    InvUnknown {
        peer: u64,
        seed: u8,
    },
    Deliver {
        peer: u64,
        block: usize,
    },
    NotFound {
        peer: u64,
        block: usize,
    },
    Wait {
        millis: u64,
    },
}

const PEERS: u64 = 4;
const CHAIN: usize = 40;

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..PEERS, any::<bool>()).prop_map(|(peer, inbound)| Step::Up { peer, inbound }),
        (0..PEERS).prop_map(|peer| Step::Down { peer }),
        (0..PEERS, 0..CHAIN, 1..25usize).prop_map(|(peer, from, len)| Step::Headers {
            peer,
            from,
            len
        }),
        (0..PEERS, 0..CHAIN).prop_map(|(peer, block)| Step::InvBlock { peer, block }),
        (0..PEERS, any::<u8>()).prop_map(|(peer, seed)| Step::InvUnknown { peer, seed }),
        (0..PEERS, 0..CHAIN).prop_map(|(peer, block)| Step::Deliver { peer, block }),
        (0..PEERS, 0..CHAIN).prop_map(|(peer, block)| Step::NotFound { peer, block }),
        prop_oneof![1..3_000u64, 100_000..200_000u64].prop_map(|millis| Step::Wait { millis }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// Whatever peers do: at most one `getheaders` unanswered per peer within Core's
    /// response time, at most 16 blocks in flight per peer, and a block is taken only from a
    /// peer it was asked of.
    #[test]
    fn requests_stay_within_core_bounds(steps in proptest::collection::vec(step(), 1..80)) {
        let clock0 = clock0();
        let mut core = core_at(clock0);
        let chain = chain_of(&core, CHAIN as u32, clock0);
        let mut clock = clock0;
        // Per peer: when its unanswered getheaders was sent.
        let mut asked_at: HashMap<PeerId, Instant> = HashMap::new();
        // Blocks asked of each peer (since it came).
        let mut asked: HashMap<PeerId, HashSet<BlockHash>> = HashMap::new();
        let mut up: HashSet<PeerId> = HashSet::new();
        for s in steps {
            let (actions, from) = match s {
                Step::Up { peer: p, inbound } => {
                    let id = PeerId(p);
                    if up.contains(&id) {
                        continue;
                    }
                    up.insert(id);
                    (core.peer_up(clock, peer(p, inbound, CHAIN as i32)), None)
                }
                Step::Down { peer: p } => {
                    let id = PeerId(p);
                    up.remove(&id);
                    asked_at.remove(&id);
                    asked.remove(&id);
                    (core.peer_down(clock, id), None)
                }
                Step::Headers { peer: p, from, len } => {
                    let id = PeerId(p);
                    let end = (from + len).min(CHAIN);
                    // Only a batch that connects answers a request (one that does not may
                    // be an announcement that crossed it, or a flood).
                    let connects = core.chain.contains(&chain[from].header.prev_blockhash);
                    if up.contains(&id) && connects {
                        asked_at.remove(&id);
                    }
                    (core.input(clock, id, headers(&chain[from..end])), Some(id))
                }
                Step::InvBlock { peer: p, block } => {
                    let inv = SyncInput::Inv(vec![Inventory::Block(chain[block].block_hash())]);
                    (core.input(clock, PeerId(p), inv), Some(PeerId(p)))
                }
                Step::InvUnknown { peer: p, seed } => {
                    let h = BlockHash::from_byte_array([seed; 32]);
                    (core.input(clock, PeerId(p), SyncInput::Inv(vec![Inventory::Block(h)])), Some(PeerId(p)))
                }
                Step::Deliver { peer: p, block } => {
                    let b = chain[block].clone();
                    let id = PeerId(p);
                    let was_asked = asked.get(&id).is_some_and(|s| s.contains(&b.block_hash()));
                    let actions = core.input(clock, id, SyncInput::Block(Box::new(b)));
                    if !was_asked {
                        prop_assert!(received(&actions).is_empty(), "unrequested block taken");
                    }
                    (actions, Some(id))
                }
                Step::NotFound { peer: p, block } => {
                    let inv = vec![Inventory::Block(chain[block].block_hash())];
                    (core.input(clock, PeerId(p), SyncInput::NotFound(inv)), Some(PeerId(p)))
                }
                Step::Wait { millis } => {
                    clock = clock.after(Duration::from_millis(millis));
                    (core.tick(clock), None)
                }
            };
            let _ = from;
            for a in &actions {
                if let Action::Send(id, m) = a {
                    prop_assert!(up.contains(id), "sent to a peer that is not up: {m:?}");
                    match m {
                        NetworkMessage::GetHeaders(_) => {
                            if let Some(at) = asked_at.get(id) {
                                prop_assert!(
                                    clock.now.duration_since(*at) >= HEADERS_RESPONSE_TIME,
                                    "a second getheaders to {id} before it answered"
                                );
                            }
                            asked_at.insert(*id, clock.now);
                        }
                        NetworkMessage::GetData(items) => {
                            for i in items {
                                if let Inventory::Block(h) | Inventory::WitnessBlock(h) = i {
                                    asked.entry(*id).or_default().insert(*h);
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            for id in &up {
                prop_assert!(core.downloads.in_flight_to(*id) <= MAX_BLOCKS_IN_FLIGHT_PER_PEER);
            }
        }
    }
}

/// A block on `parent` with `txs` after its coinbase, mined.
fn block_with(parent: &Header, height: u32, time: u32, txs: Vec<bitcoin::Transaction>) -> Block {
    let mut b = regtest_block(parent, height, time, 5);
    b.txdata.extend(txs);
    let merkle = b.compute_merkle_root().expect("transactions");
    b.header = crate::sync::chain::headers::mine_header(parent, merkle, time, parent.bits);
    b
}

/// A spend of a made-up output: passes the context-free checks, so it is pooled.
fn spend(n: u8) -> bitcoin::Transaction {
    use bitcoin::{Amount, OutPoint, ScriptBuf, Sequence, TxIn, TxOut, Witness};
    bitcoin::Transaction {
        version: bitcoin::transaction::Version::TWO,
        lock_time: bitcoin::absolute::LockTime::ZERO,
        input: vec![TxIn {
            previous_output: OutPoint::new(bitcoin::Txid::from_byte_array([n; 32]), 0),
            script_sig: ScriptBuf::from_bytes(vec![0x51]),
            sequence: Sequence::MAX,
            witness: Witness::new(),
        }],
        output: vec![TxOut {
            value: Amount::from_sat(1_000),
            script_pubkey: ScriptBuf::from_bytes(vec![0x51]),
        }],
    }
}

fn sent_to(actions: &[Action], id: PeerId) -> Vec<&NetworkMessage> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send(p, m) if *p == id => Some(m),
            _ => None,
        })
        .collect()
}

fn arrivals(actions: &[Action]) -> Vec<(crate::events::BlockVia, usize)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Event(NodeEvent::BlockReceived {
                via, txs_requested, ..
            }) => Some((*via, *txs_requested)),
            _ => None,
        })
        .collect()
}

fn sendcmpct(announce: bool) -> SyncInput {
    SyncInput::SendCmpct {
        announce,
        version: crate::sync::compact::CMPCTBLOCKS_VERSION,
    }
}

#[test]
fn compact_blocks_as_core_and_p2p_compactblocks() {
    use crate::events::BlockVia;
    use crate::sync::compact::{compact_block, short_id_hashes};
    use bitcoin::p2p::message_compact_blocks::SendCmpct;

    let (mut core, clock) = synced_core(3);
    let (p, q, r) = (PeerId(1), PeerId(2), PeerId(3));
    // Offered right after the handshake, low-bandwidth, version 2 (witness peers).
    let up = core.peer_up(clock, peer(1, false, 3));
    assert!(sent_to(&up, p).iter().any(|m| matches!(
        m,
        NetworkMessage::SendCmpct(SendCmpct {
            send_compact: false,
            version: 2
        })
    )));
    let _ = core.peer_up(clock, peer(2, true, 3));
    let _ = core.peer_up(clock, peer(3, true, 3));
    let _ = core.input(clock, p, sendcmpct(false));
    // Q wants our new blocks as cmpctblock at once, and has synced our headers (Core
    // pushes only to a peer that has the parent's).
    let _ = core.input(clock, q, sendcmpct(true));
    let _ = core.input(clock, r, sendcmpct(false));
    let _ = core.input(
        clock,
        q,
        SyncInput::GetHeaders(bitcoin::p2p::message_blockdata::GetHeadersMessage {
            version: 70016,
            locator_hashes: vec![NetworkId::Regtest.profile().genesis.block_hash()],
            stop_hash: BlockHash::all_zeros(),
        }),
    );

    // Block 4, with a transaction we have: P announces it by headers; we ask for the compact
    // block (the one block we wait for), reconstruct it from the pool, and ask P to announce
    // the next ones with cmpctblock (high-bandwidth).
    let tx1 = spend(1);
    let _ = core.submit_tx(clock, tx1.clone());
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![tx1]);
    let a = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let asked: Vec<&Inventory> = sent_to(&a, p)
        .into_iter()
        .filter_map(|m| match m {
            NetworkMessage::GetData(items) => Some(items),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(asked, vec![&Inventory::CompactBlock(b4.block_hash())]);
    let a = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b4,
            11,
            &short_id_hashes(&b4, true),
            &[],
        ))),
    );
    assert_eq!(arrivals(&a), vec![(BlockVia::CompactLowBandwidth, 0)]);
    assert!(
        sent_to(&a, p).iter().any(|m| matches!(
            m,
            NetworkMessage::SendCmpct(SendCmpct {
                send_compact: true,
                ..
            })
        )),
        "P becomes high-bandwidth"
    );
    // Q asked for high-bandwidth announcements: it gets the cmpctblock, not headers.
    assert_eq!(cmpctblocks_to(&a, q).len(), 1);
    assert!(!sent_to(&a, q)
        .iter()
        .any(|m| matches!(m, NetworkMessage::Headers(_) | NetworkMessage::Inv(_))));

    // Block 5 from P unsolicited (high-bandwidth) with a transaction we lack: getblocktxn
    // for it alone, then blocktxn completes it.
    let tx2 = spend(2);
    let b5 = block_with(&b4.header, 5, tip.time + 2, vec![tx2.clone()]);
    let a = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b5,
            12,
            &short_id_hashes(&b5, true),
            &[],
        ))),
    );
    let req = sent_to(&a, p)
        .into_iter()
        .find_map(|m| match m {
            NetworkMessage::GetBlockTxn(g) => Some(g.txs_request.clone()),
            _ => None,
        })
        .expect("getblocktxn");
    assert_eq!(req.indexes, vec![1]);
    assert!(blocks_asked(&a, p).is_empty(), "no full block asked");
    let a = core.input(
        clock,
        p,
        SyncInput::BlockTxn(Box::new(bitcoin::bip152::BlockTransactions {
            block_hash: b5.block_hash(),
            transactions: vec![tx2],
        })),
    );
    assert_eq!(arrivals(&a), vec![(BlockVia::CompactHighBandwidth, 1)]);

    // Our compact block of block 5 prefills what we lacked (the transaction at 1).
    let a = core.input(
        clock,
        r,
        SyncInput::GetData(vec![Inventory::CompactBlock(b5.block_hash())]),
    );
    let served = cmpctblocks_to(&a, r).pop().expect("cmpctblock served");
    assert_eq!(
        served.prefilled.len(),
        2,
        "coinbase and the missing transaction"
    );
    // getblocktxn is answered; an index past the end costs the asker.
    let a = core.input(
        clock,
        r,
        SyncInput::GetBlockTxn(crate::wire::compact::TxnRequest::new(b5.block_hash(), &[1])),
    );
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::SendShared(id, "blocktxn", _) if *id == r)));
    let a = core.input(
        clock,
        r,
        SyncInput::GetBlockTxn(crate::wire::compact::TxnRequest::new(b5.block_hash(), &[7])),
    );
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Punish(id, "getblocktxn_out_of_range") if *id == r)));

    // An unsolicited cmpctblock from a peer that is neither asked nor high-bandwidth: its
    // content is not read (no block from it), its header is an announcement.
    let b6 = block_with(&b5.header, 6, tip.time + 3, vec![]);
    let a = core.input(
        clock,
        r,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b6,
            13,
            &short_id_hashes(&b6, true),
            &[],
        ))),
    );
    assert!(
        arrivals(&a).is_empty(),
        "not taken from a cmpctblock nobody asked for"
    );
    assert!(a.iter().all(|x| !matches!(x, Action::Punish(..))));

    // A blocktxn nobody asked for is ignored; a reconstruction that does not check (a bad
    // transaction list) falls back to the whole block, free.
    let a = core.input(
        clock,
        q,
        SyncInput::BlockTxn(Box::new(bitcoin::bip152::BlockTransactions {
            block_hash: b6.block_hash(),
            transactions: vec![],
        })),
    );
    assert!(a.iter().all(|x| !matches!(x, Action::Punish(..))) && arrivals(&a).is_empty());
}

#[test]
fn in_initial_sync_one_announcer_per_new_block_is_asked_for_headers() {
    // p2p_initial_headers_sync: during initial sync only the sync peer downloads headers;
    // an announcement adds at most one more peer per new block (Core's
    // m_inv_triggered_getheaders_before_sync), never every announcer.
    let clock = clock0();
    let mut core = core_at(clock);
    let first = core.peer_up(clock, peer(1, false, 100));
    assert_eq!(
        getheaders_to(&first, PeerId(1)),
        1,
        "the sync peer is asked"
    );
    let _ = core.peer_up(clock, peer(2, false, 100));
    let _ = core.peer_up(clock, peer(3, false, 100));
    let inv = |n: u8| SyncInput::Inv(vec![Inventory::Block(BlockHash::from_byte_array([n; 32]))]);
    let a = core.input(clock, PeerId(2), inv(1));
    assert_eq!(getheaders_to(&a, PeerId(2)), 1, "one peer for block 1");
    let a = core.input(clock, PeerId(3), inv(1));
    assert_eq!(
        getheaders_to(&a, PeerId(3)),
        0,
        "block 1 triggered a peer already"
    );
    let later = clock.after(HEADERS_RESPONSE_TIME * 2);
    let a = core.input(later, PeerId(2), inv(2));
    assert_eq!(
        getheaders_to(&a, PeerId(2)),
        0,
        "peer 2 was triggered once already"
    );
    let a = core.input(later, PeerId(3), inv(2));
    assert_eq!(getheaders_to(&a, PeerId(3)), 1, "block 2 adds peer 3");
}

#[test]
fn a_tip_block_nobody_is_asked_for_is_asked_again_on_a_tick() {
    // Core's FindNextBlocksToDownload runs on every SendMessages: a block near the tip that
    // is neither held nor in flight is never forgotten.
    let (mut core, clock) = synced_core(3);
    let a = PeerId(1);
    let _ = core.peer_up(clock, peer(1, false, 3));
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![]);
    let asked = core.input(clock, a, headers(std::slice::from_ref(&b4)));
    assert_eq!(blocks_asked(&asked, a), vec![b4.block_hash()]);
    // Its only source does not have it yet: nobody else to ask.
    let nf = core.input(
        clock,
        a,
        SyncInput::NotFound(vec![Inventory::WitnessBlock(b4.block_hash())]),
    );
    assert!(blocks_asked(&nf, a).is_empty());
    let soon = core.tick(clock.after(Duration::from_secs(1)));
    assert!(
        blocks_asked(&soon, a).is_empty(),
        "a notfound is remembered for a while"
    );
    // Once its notfound is forgotten, the block is asked again without a new announcement.
    let later = clock.after(crate::sync::blocks::SOFT_FAILURE_MEMORY + Duration::from_secs(1));
    let again = core.tick(later);
    assert_eq!(blocks_asked(&again, a), vec![b4.block_hash()]);
    let twice = core.tick(later.after(Duration::from_millis(100)));
    assert!(
        blocks_asked(&twice, a).is_empty(),
        "asked once: it is in flight now"
    );
}

#[test]
fn an_invalid_compact_block_costs_its_sender_and_the_block_is_asked_of_another_at_once() {
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let (p, s) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, false, 3));
    let _ = core.input(clock, p, sendcmpct(false));
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let _ = core.input(clock, s, headers(std::slice::from_ref(&b4)));
    // P was asked (the compact block); its answer places a transaction past the block's end.
    let mut bad = compact_block(&b4, 1, &short_id_hashes(&b4, true), &[]);
    bad.prefilled[0].gap = 5;
    let a = core.input(clock, p, SyncInput::CmpctBlock(Box::new(bad)));
    let kind = a
        .iter()
        .find_map(|x| match x {
            Action::Punish(id, kind) if *id == p => Some(*kind),
            _ => None,
        })
        .expect("the sender is charged");
    assert_eq!(
        crate::peer::misbehavior::cost(kind),
        100,
        "{kind} costs as in Core"
    );
    assert_eq!(
        blocks_asked(&a, s),
        vec![b4.block_hash()],
        "asked of S at once, not after a stall"
    );
}

#[test]
fn a_rebuilt_block_invalid_in_itself_is_unpunished_and_asked_of_another_at_once() {
    // Core's READ_STATUS_CHECKBLOCK_FAILED: the transactions hash to the header's root, so
    // the block is bad, not the reconstruction; BIP152 lets a peer relay before validating,
    // so its sender is not charged, but its request ends (RemoveBlockRequest) and the next
    // source is asked now, not after a stall.
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let (p, s) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, false, 3));
    let _ = core.input(clock, p, sendcmpct(false));
    let tip = core.chain().tip_header();
    // A second coinbase (Core: bad-cb-multiple), which its merkle root commits to.
    let second_coinbase = regtest_block(&tip, 4, tip.time + 1, 7).txdata[0].clone();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![second_coinbase]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let _ = core.input(clock, s, headers(std::slice::from_ref(&b4)));
    let cmpct = compact_block(&b4, 1, &short_id_hashes(&b4, true), &[1]);
    assert_eq!(cmpct.prefilled.len(), 2, "nothing left to fetch");
    let a = core.input(clock, p, SyncInput::CmpctBlock(Box::new(cmpct)));
    assert!(
        a.iter().all(|x| !matches!(x, Action::Punish(..))),
        "not charged: {a:?}"
    );
    assert!(arrivals(&a).is_empty(), "not taken");
    assert_eq!(
        blocks_asked(&a, s),
        vec![b4.block_hash()],
        "asked of S at once, not after a stall"
    );
}

#[test]
fn a_lone_block_whose_parent_we_lack_is_asked_whole() {
    // Core's direct fetch asks MSG_CMPCT_BLOCK only when the parent is held
    // (BLOCK_VALID_CHAINTX): without it our pool is not current for the block.
    use bitcoin::p2p::ServiceFlags;
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 3, clock);
    // A peer that serves no blocks gives us the first two headers: nobody is asked for them.
    let headers_only = NewPeer {
        services: ServiceFlags::NONE,
        network: crate::shared::overlay::Network::Ipv4,
        ..peer(1, false, 2)
    };
    let _ = core.peer_up(clock, headers_only);
    let _ = core.input(clock, PeerId(1), headers(&blocks[..2]));
    assert_eq!(core.downloads.in_flight(), 0);
    let c = PeerId(2);
    let _ = core.peer_up(clock, peer(2, false, 3));
    let _ = core.input(clock, c, sendcmpct(false));
    let got = core.input(clock, c, headers(&blocks[2..]));
    let items: Vec<Inventory> = sent_to(&got, c)
        .into_iter()
        .filter_map(|m| match m {
            NetworkMessage::GetData(items) => Some(items.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(
        items.contains(&Inventory::WitnessBlock(blocks[2].block_hash())),
        "asked whole: {items:?}"
    );
}

#[test]
fn high_bandwidth_pushes_are_vouched_for_by_asking_their_sender_for_headers() {
    // Core pushes high-bandwidth compact blocks before validating them (NewPoWValidBlock)
    // and then announces nothing more to us (the block counts as known to us). Such a push
    // is no vouch; some seconds later its sender is asked for headers, which Core answers
    // from its validated active chain: that answer vouches.
    use super::blocks::VOUCH_ASK_DELAYS;
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let (p, r) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, true, 3));
    let _ = core.input(clock, p, sendcmpct(false));
    let _ = core.input(clock, r, sendcmpct(false));
    // Block 4 from P as Core sends it: headers, then our getdata(MSG_CMPCT_BLOCK), then the
    // cmpctblock; P becomes high-bandwidth and R is told (P's headers vouched for it).
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let a = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b4,
            11,
            &short_id_hashes(&b4, true),
            &[],
        ))),
    );
    assert_eq!(blocks_announced_to(&a, r), vec![b4.block_hash()]);
    assert!(core.high_bandwidth.contains(p));
    // Blocks 5 and 6 pushed by P at once: taken, but R hears nothing yet.
    let b5 = block_with(&b4.header, 5, tip.time + 2, vec![]);
    let b6 = block_with(&b5.header, 6, tip.time + 3, vec![]);
    for (b, nonce) in [(&b5, 12), (&b6, 13)] {
        let a = core.input(
            clock,
            p,
            SyncInput::CmpctBlock(Box::new(compact_block(
                b,
                nonce,
                &short_id_hashes(b, true),
                &[],
            ))),
        );
        assert_eq!(arrivals(&a).len(), 1, "reconstructed");
        assert!(
            blocks_announced_to(&a, r).is_empty(),
            "a pre-validation push is not a vouch: {a:?}"
        );
    }
    let soon = core.tick(clock.after(Duration::from_millis(500)));
    assert_eq!(getheaders_to(&soon, p), 0, "Core is given time to validate");
    let later = core.tick(clock.after(VOUCH_ASK_DELAYS[0]));
    assert_eq!(
        getheaders_to(&later, p),
        1,
        "asked once, not once per block"
    );
    // From the parent of the first unvouched block, so Core's answer shows both.
    let locator = later.iter().find_map(|a| match a {
        Action::Send(to, NetworkMessage::GetHeaders(g)) if *to == p => {
            Some(g.locator_hashes.clone())
        }
        _ => None,
    });
    assert_eq!(
        locator.and_then(|l| l.first().copied()),
        Some(b4.block_hash())
    );
    // P answers from its active chain: both blocks are vouched for and announced.
    let t = clock.after(VOUCH_ASK_DELAYS[0] + Duration::from_millis(100));
    let a = core.input(t, p, headers(&[b5.clone(), b6.clone()]));
    let told = blocks_announced_to(&a, r);
    assert!(
        told.contains(&b5.block_hash()) && told.contains(&b6.block_hash()),
        "{told:?}"
    );
}

#[test]
fn getheaders_answers_stop_at_the_vouched_height_and_a_vouch_outlives_its_peer() {
    // No peer is shown a block no validating node vouched for; what an outbound peer showed
    // stays vouched for when it leaves.
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 3, clock);
    let (inbound, asker, outbound) = (PeerId(1), PeerId(2), PeerId(3));
    let _ = core.peer_up(clock, peer(1, true, 3));
    let _ = core.peer_up(clock, peer(2, true, 0));
    let _ = core.input(clock, inbound, headers(&blocks));
    assert_eq!(core.chain().height(), 3);
    let ask = |core: &mut SyncCore| {
        let genesis = core.profile.genesis.block_hash();
        let a = core.input(
            clock,
            asker,
            SyncInput::GetHeaders(bitcoin::p2p::message_blockdata::GetHeadersMessage {
                version: 70016,
                locator_hashes: vec![genesis],
                stop_hash: BlockHash::all_zeros(),
            }),
        );
        sent_to(&a, asker)
            .into_iter()
            .find_map(|m| match m {
                NetworkMessage::Headers(h) => Some(h.len()),
                _ => None,
            })
            .expect("answered")
    };
    assert_eq!(
        ask(&mut core),
        0,
        "an inbound peer's chain alone is not shown"
    );
    // Nor by a null locator naming its tip.
    let null = core.input(
        clock,
        asker,
        SyncInput::GetHeaders(bitcoin::p2p::message_blockdata::GetHeadersMessage {
            version: 70016,
            locator_hashes: Vec::new(),
            stop_hash: blocks[2].block_hash(),
        }),
    );
    assert!(sent_to(&null, asker).is_empty());
    let _ = core.peer_up(clock, peer(3, false, 2));
    let _ = core.input(clock, outbound, headers(&blocks[..2]));
    assert_eq!(ask(&mut core), 2, "up to what the outbound peer showed");
    let _ = core.peer_down(clock, outbound);
    assert_eq!(ask(&mut core), 2, "still, once it left");
}

#[test]
fn an_inv_before_its_header_counts_once_the_header_is_in() {
    // Core's hashLastUnknownBlock: an outbound peer's inv of a block whose header we lack
    // shows it has the block (a vouch, and a source) once the header arrives from anyone.
    let clock = clock0();
    let mut core = core_at(clock);
    let blocks = chain_of(&core, 1, clock);
    let hash = blocks[0].block_hash();
    let (outbound, inbound, listener) = (PeerId(1), PeerId(2), PeerId(3));
    let _ = core.peer_up(clock, peer(1, false, 0));
    let _ = core.peer_up(clock, peer(2, true, 0));
    let _ = core.peer_up(clock, peer(3, true, 0));
    let _ = core.input(
        clock,
        outbound,
        SyncInput::Inv(vec![Inventory::Block(hash)]),
    );
    assert!(core.peers[&outbound].last_unknown == Some(hash));
    let a = core.input(clock, inbound, headers(&blocks));
    assert_eq!(core.peers[&outbound].vouched_tip, Some(hash));
    assert!(core.peers[&outbound].has_announced(&hash), "a source of it");
    let from = if blocks_asked(&a, inbound).is_empty() {
        outbound
    } else {
        inbound
    };
    let got = core.input(clock, from, SyncInput::Block(Box::new(blocks[0].clone())));
    assert_eq!(received(&got).len(), 1);
    assert_eq!(
        blocks_announced_to(&got, listener),
        vec![hash],
        "vouched by the inv"
    );
}

/// BSV compact blocks as the SV node speaks them (bitcoin-sv net_processing.cpp): version 1
/// offered after the handshake, version 1 `sendcmpct` honoured, a lone tip block asked as a
/// compact block and rebuilt from txid short ids, and a new block pushed to a peer that
/// asked for high-bandwidth announcements.
#[test]
fn bsv_compact_blocks_are_version_1_with_txid_short_ids() {
    use crate::events::BlockVia;
    use crate::sync::compact::{compact_block, short_id_hashes, CMPCTBLOCKS_VERSION_TXID};
    use bitcoin::p2p::message_compact_blocks::SendCmpct;

    let clock = clock0();
    let config = NodeConfig::new(NetworkId::BsvRegtest, std::env::temp_dir());
    let mut core = SyncCore::new(config.profile(), Arc::new(config), clock, 7);
    let _ = core.generate(clock, 3);
    let _ = core.tick(clock);
    assert_eq!(core.state(), SyncState::Synced);
    let (p, q) = (PeerId(1), PeerId(2));
    let bsv_peer = |id| NewPeer {
        services: bitcoin::p2p::ServiceFlags::NETWORK,
        network: crate::shared::overlay::Network::Ipv4,
        ..peer(id, false, 3)
    };
    let up = core.peer_up(clock, bsv_peer(1));
    assert!(sent_to(&up, p).iter().any(|m| matches!(
        m,
        NetworkMessage::SendCmpct(SendCmpct {
            send_compact: false,
            version: 1
        })
    )));
    let _ = core.peer_up(clock, bsv_peer(2));
    let r = PeerId(3);
    let _ = core.peer_up(clock, bsv_peer(3));
    let v1 = |announce| SyncInput::SendCmpct {
        announce,
        version: CMPCTBLOCKS_VERSION_TXID,
    };
    let _ = core.input(clock, p, v1(false));
    let _ = core.input(clock, q, v1(true));
    let _ = core.input(clock, r, v1(true));
    // Q syncs our headers (Core pushes a cmpctblock only to a peer that has its parent).
    let _ = core.input(
        clock,
        q,
        SyncInput::GetHeaders(bitcoin::p2p::message_blockdata::GetHeadersMessage {
            version: 70016,
            locator_hashes: vec![NetworkId::BsvRegtest.profile().genesis.block_hash()],
            stop_hash: BlockHash::all_zeros(),
        }),
    );

    let tx1 = spend(1);
    let _ = core.submit_tx(clock, tx1.clone());
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![tx1]);
    let a = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let asked: Vec<&Inventory> = sent_to(&a, p)
        .into_iter()
        .filter_map(|m| match m {
            NetworkMessage::GetData(items) => Some(items),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(asked, vec![&Inventory::CompactBlock(b4.block_hash())]);
    // Short ids of txids: the pooled transaction is found.
    let a = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b4,
            11,
            &short_id_hashes(&b4, false),
            &[],
        ))),
    );
    assert_eq!(arrivals(&a), vec![(BlockVia::CompactLowBandwidth, 0)]);
    // Q asked for high-bandwidth announcements: the block goes to it as cmpctblock, its
    // short ids of txids.
    let pushed = cmpctblocks_to(&a, q);
    assert_eq!(pushed.len(), 1, "pushed to the high-bandwidth peer");
    assert!(
        cmpctblocks_to(&a, r).is_empty(),
        "not to one that may lack the parent's header (Core's PeerHasHeader)"
    );
    assert_eq!(
        pushed[0],
        compact_block(&b4, pushed[0].nonce, &short_id_hashes(&b4, false), &[])
    );
}

#[test]
fn with_bookkeeping_deferred_a_step_returns_the_high_bandwidth_push_and_nothing_after_it() {
    // The actor sends a step's actions before the block's bookkeeping (its whole frame, the
    // pool's removals, the event, ordinary announcements), so the push to high-bandwidth
    // peers does not wait behind it. Nothing is lost: run_deferred returns the rest.
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    core.defer_bookkeeping(true);
    let (p, h, r) = (PeerId(1), PeerId(2), PeerId(3));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, true, 3));
    let _ = core.peer_up(clock, peer(3, true, 3));
    let _ = core.input(clock, p, sendcmpct(false));
    // H asks us for high-bandwidth pushes (and has our headers); R for ordinary
    // announcements.
    let _ = core.input(clock, h, sendcmpct(true));
    let _ = core.input(clock, h, getheaders_from_genesis());
    let _ = core.input(clock, r, SyncInput::SendHeaders);
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![spend(1)]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let step = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b4,
            11,
            &short_id_hashes(&b4, true),
            &[1],
        ))),
    );
    assert_eq!(cmpctblocks_to(&step, h).len(), 1, "pushed: {step:?}");
    assert!(received(&step).is_empty(), "the event waits: {step:?}");
    assert!(blocks_announced_to(&step, r).is_empty());
    assert!(core.has_deferred());
    let rest = core.run_deferred(clock);
    assert!(!core.has_deferred());
    assert_eq!(received(&rest), vec![b4.block_hash().to_string()]);
    assert_eq!(blocks_announced_to(&rest, r), vec![b4.block_hash()]);
    assert!(cmpctblocks_to(&rest, h).is_empty(), "pushed once");
    // The block is served whole from its frame, made in the deferred step.
    let served = core.input(
        clock,
        r,
        SyncInput::GetData(vec![Inventory::WitnessBlock(b4.block_hash())]),
    );
    assert!(
        served
            .iter()
            .any(|a| matches!(a, Action::SendShared(to, "block", _) if *to == r)),
        "{served:?}"
    );
}

/// A `getheaders` from genesis: the peer syncs our headers (and so has them all).
fn getheaders_from_genesis() -> SyncInput {
    SyncInput::GetHeaders(bitcoin::p2p::message_blockdata::GetHeadersMessage {
        version: 70016,
        locator_hashes: vec![NetworkId::Regtest.profile().genesis.block_hash()],
        stop_hash: BlockHash::all_zeros(),
    })
}

#[test]
fn a_high_bandwidth_push_goes_only_to_peers_that_have_the_parents_header() {
    // Core's NewPoWValidBlock pushes to a peer only when PeerHasHeader(parent): the peer
    // showed us a block at or above it, or we sent it a header at or above it. Before, meshd
    // pushed to every high-bandwidth peer, parent or not.
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let (p, synced, told, blind) = (PeerId(1), PeerId(2), PeerId(3), PeerId(4));
    for id in 1..=4 {
        let _ = core.peer_up(clock, peer(id, id != 1, 3));
    }
    let _ = core.input(clock, p, sendcmpct(false));
    for id in [synced, told, blind] {
        let _ = core.input(clock, id, sendcmpct(true));
    }
    // `synced` asked for our headers; `told` showed us its own tip (our tip, block 3).
    let _ = core.input(clock, synced, getheaders_from_genesis());
    let tip = core.chain().tip_header();
    let _ = core.input(clock, told, headers_of(&[tip]));
    let b4 = block_with(&tip, 4, tip.time + 1, vec![]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let a = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b4,
            11,
            &short_id_hashes(&b4, true),
            &[],
        ))),
    );
    assert_eq!(cmpctblocks_to(&a, synced).len(), 1, "{a:?}");
    assert_eq!(cmpctblocks_to(&a, told).len(), 1);
    assert!(cmpctblocks_to(&a, blind).is_empty(), "{a:?}");
    // The push counts as a header sent: the next block goes to `synced` again.
    let b5 = block_with(&b4.header, 5, tip.time + 2, vec![]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b5)));
    let a = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b5,
            12,
            &short_id_hashes(&b5, true),
            &[],
        ))),
    );
    assert_eq!(cmpctblocks_to(&a, synced).len(), 1, "{a:?}");
}

fn headers_of(hs: &[Header]) -> SyncInput {
    SyncInput::Headers(HashedHeaders::new(hs.to_vec()))
}

#[test]
fn a_peer_that_already_has_our_tip_is_pushed_the_next_block() {
    // A synced peer's getheaders from our tip gets an empty answer; Core then records our
    // tip as the best header sent (pindexBestHeaderSent), so the next block's push
    // connects for it. Recording only a non-empty answer skipped every peer synced at
    // connect.
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let (p, h) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, true, 3));
    let _ = core.input(clock, p, sendcmpct(false));
    let _ = core.input(clock, h, sendcmpct(true));
    let tip = core.chain().tip();
    let answer = core.input(
        clock,
        h,
        SyncInput::GetHeaders(bitcoin::p2p::message_blockdata::GetHeadersMessage {
            version: 70016,
            locator_hashes: vec![tip],
            stop_hash: BlockHash::all_zeros(),
        }),
    );
    assert!(
        answer
            .iter()
            .any(|a| matches!(a, Action::Send(to, NetworkMessage::Headers(hs)) if *to == h && hs.is_empty())),
        "{answer:?}"
    );
    let parent = core.chain().tip_header();
    let b4 = block_with(&parent, 4, parent.time + 1, vec![]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let a = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b4,
            11,
            &short_id_hashes(&b4, true),
            &[],
        ))),
    );
    assert_eq!(cmpctblocks_to(&a, h).len(), 1, "{a:?}");
}

#[test]
fn blocks_kept_in_one_step_past_the_limit_leave_no_outputs_behind() {
    // With the bookkeeping deferred, a step that keeps more blocks than `keep_blocks`
    // (generate 20) trimmed blocks whose bookkeeping had not run yet: their outputs were
    // indexed after the trim, and never removed.
    let clock = clock0();
    let mut core = core_at(clock);
    core.defer_bookkeeping(true);
    let keep = core.config.keep_blocks;
    let n = keep as u32 + 4;
    let _ = core.generate(clock, n);
    let _ = core.run_deferred(clock);
    assert_eq!(core.blocks.len(), keep);
    // One coinbase per block: one outputs entry per kept block.
    assert_eq!(core.block_outputs.len(), keep);
}

#[test]
fn compact_depth_counts_from_the_blocks_we_keep_not_the_headers_ahead_of_them() {
    // Core serves a compact block for the last MAX_CMPCTBLOCK_DEPTH blocks of its active
    // chain. Our header tip runs ahead of the kept blocks while they download: measured
    // from it, our newest kept block was "too old" and went out whole.
    let (mut core, clock) = synced_core(3);
    let (p, q) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, true, 3));
    let kept_tip = core.chain().tip();
    let parent = core.chain().tip_header();
    let mut ahead = Vec::new();
    let mut at = parent;
    for h in 4..=10 {
        let b = block_with(&at, h, parent.time + h, vec![]);
        at = b.header;
        ahead.push(b);
    }
    let _ = core.input(clock, p, headers(&ahead));
    assert_eq!(core.chain().height(), 10);
    let a = core.input(
        clock,
        q,
        SyncInput::GetData(vec![Inventory::CompactBlock(kept_tip)]),
    );
    assert_eq!(cmpctblocks_to(&a, q).len(), 1, "{a:?}");
}

#[test]
fn a_getheaders_answered_while_loading_records_the_header_sent() {
    // The answer headers.dat gives while it loads is an ordinary `headers` answer: the
    // peer has our tip afterwards, and a high-bandwidth push of the next block connects.
    let (mut core, clock) = synced_core(3);
    let h = PeerId(2);
    let _ = core.peer_up(clock, peer(2, true, 3));
    let tip = core.chain().tip();
    let asked = bitcoin::p2p::message_blockdata::GetHeadersMessage {
        version: 70016,
        locator_hashes: vec![NetworkId::Regtest.profile().genesis.block_hash()],
        stop_hash: tip,
    };
    assert!(core.answer_while_loading(h, &asked).is_some());
    assert_eq!(core.peers[&h].best_header_sent, Some(tip));
}

#[test]
fn generated_blocks_are_received_before_the_headers_synced_event() {
    // With the bookkeeping deferred, generate's HeadersSynced came before the blocks'
    // BlockReceived: a subscriber saw the tip move before the block it names.
    let clock = clock0();
    let mut core = core_at(clock);
    core.defer_bookkeeping(true);
    let (_, step) = core.generate(clock, 2);
    let mut all = step;
    all.extend(core.run_deferred(clock));
    let order: Vec<&str> = all
        .iter()
        .filter_map(|a| match a {
            Action::Event(NodeEvent::BlockReceived { .. }) => Some("block"),
            Action::Event(NodeEvent::HeadersSynced { .. }) => Some("synced"),
            _ => None,
        })
        .collect();
    // The first leaving initial sync, the second the new tip's.
    assert_eq!(order, ["block", "block", "synced", "synced"]);
}

#[test]
fn a_high_bandwidth_peer_below_70015_gets_the_block_as_cmpctblock_once_announced() {
    // Core pushes before validation only to peers from INVALID_CB_NO_BAN_VERSION; a
    // 70014 peer that asked for high-bandwidth mode gets the cmpctblock in SendMessages,
    // in place of the lone header. meshd sent it the header.
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let (p, old) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let mut old_peer = peer(2, true, 3);
    old_peer.version = 70014;
    let _ = core.peer_up(clock, old_peer);
    let _ = core.input(clock, p, sendcmpct(false));
    let _ = core.input(clock, old, sendcmpct(true));
    let _ = core.input(clock, old, getheaders_from_genesis());
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let a = core.input(
        clock,
        p,
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b4,
            11,
            &short_id_hashes(&b4, true),
            &[],
        ))),
    );
    assert_eq!(cmpctblocks_to(&a, old).len(), 1, "{a:?}");
    assert!(
        !sent_to(&a, old)
            .iter()
            .any(|m| matches!(m, NetworkMessage::Headers(_) | NetworkMessage::Inv(_))),
        "{a:?}"
    );
}

#[test]
fn a_repeat_cmpctblock_after_a_fallback_is_not_rebuilt_again() {
    // Core keeps the failed partial of a block asked whole ("already syncing"): the same
    // peer's repeat is ignored. meshd rebuilt it again and asked for the block once more.
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let p = PeerId(1);
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.input(clock, p, sendcmpct(false));
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![spend(1), spend(2)]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    // Two of its short ids the same: not usable (BIP152's collision), the block asked whole.
    let mut colliding = compact_block(&b4, 1, &short_id_hashes(&b4, true), &[]);
    colliding.short_ids[1] = colliding.short_ids[0];
    let a = core.input(clock, p, SyncInput::CmpctBlock(Box::new(colliding.clone())));
    assert_eq!(blocks_asked(&a, p), vec![b4.block_hash()], "{a:?}");
    let again = core.input(clock, p, SyncInput::CmpctBlock(Box::new(colliding)));
    assert!(blocks_asked(&again, p).is_empty(), "{again:?}");
}

/// A block in flight from `p` (asked compact, its compact block answered with a
/// `getblocktxn` for its one missing transaction), on a node synced to 3 blocks whose
/// high-bandwidth peers are `hb` (`true`: inbound).
fn block_rebuilt_from(p: (u64, bool), hb: &[(u64, bool)]) -> (SyncCore, Clock, Block) {
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let _ = core.peer_up(clock, peer(p.0, p.1, 3));
    let _ = core.input(clock, PeerId(p.0), sendcmpct(false));
    for &(id, inbound) in hb {
        let _ = core.peer_up(clock, peer(id, inbound, 3));
        let _ = core.input(clock, PeerId(id), sendcmpct(false));
        let dirs: HashMap<u64, bool> = hb.iter().copied().collect();
        let _ = core
            .high_bandwidth
            .block_from(PeerId(id), |x| dirs.get(&x.0).copied().unwrap_or(false));
    }
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![spend(7)]);
    let a = core.input(clock, PeerId(p.0), headers(std::slice::from_ref(&b4)));
    assert!(
        sent_to(&a, PeerId(p.0)).iter().any(|m| matches!(m,
            NetworkMessage::GetData(i) if i == &vec![Inventory::CompactBlock(b4.block_hash())])),
        "{a:?}"
    );
    let a = core.input(
        clock,
        PeerId(p.0),
        SyncInput::CmpctBlock(Box::new(compact_block(
            &b4,
            1,
            &short_id_hashes(&b4, true),
            &[],
        ))),
    );
    assert_eq!(getblocktxn_to(&a, PeerId(p.0)), vec![vec![1]]);
    (core, clock, b4)
}

fn getblocktxn_to(actions: &[Action], id: PeerId) -> Vec<Vec<u64>> {
    sent_to(actions, id)
        .into_iter()
        .filter_map(|m| match m {
            NetworkMessage::GetBlockTxn(g) => Some(g.txs_request.indexes.clone()),
            _ => None,
        })
        .collect()
}

fn push_of(core: &mut SyncCore, clock: Clock, id: u64, b: &Block) -> Vec<Action> {
    use crate::sync::compact::{compact_block, short_id_hashes};
    core.input(
        clock,
        PeerId(id),
        SyncInput::CmpctBlock(Box::new(compact_block(
            b,
            id,
            &short_id_hashes(b, true),
            &[],
        ))),
    )
}

fn blocktxn_of(b: &Block, indexes: &[usize]) -> SyncInput {
    SyncInput::BlockTxn(Box::new(bitcoin::bip152::BlockTransactions {
        block_hash: b.block_hash(),
        transactions: indexes.iter().map(|i| b.txdata[*i].clone()).collect(),
    }))
}

#[test]
fn a_high_bandwidth_push_of_a_block_in_flight_elsewhere_is_downloaded_in_parallel() {
    // Core >= 25 (MAX_CMPCTBLOCKS_INFLIGHT_PER_BLOCK 3, p2p_compactblocks'
    // test_compactblocks_not_at_tip / parallel relay): a high-bandwidth peer's compact block
    // of a block in flight from another peer gets its own getblocktxn, and whichever answer
    // comes first gives the block. meshd only tried to rebuild it without a round trip.
    let (mut core, clock, b4) = block_rebuilt_from((1, false), &[(2, false)]);
    let a = push_of(&mut core, clock, 2, &b4);
    assert_eq!(getblocktxn_to(&a, PeerId(2)), vec![vec![1]], "{a:?}");
    let a = core.input(clock, PeerId(2), blocktxn_of(&b4, &[1]));
    assert_eq!(received(&a), vec![b4.block_hash().to_string()]);
    // The first request's late answer is not a second block.
    let a = core.input(clock, PeerId(1), blocktxn_of(&b4, &[1]));
    assert!(received(&a).is_empty(), "{a:?}");
    assert_eq!(core.downloads.in_flight(), 0);
}

#[test]
fn the_last_parallel_place_waits_for_an_outbound_peer() {
    // Core: an inbound high-bandwidth peer gets the last of the three places only if an
    // outbound peer already has the block in flight.
    let (mut core, clock, b4) = block_rebuilt_from((1, true), &[(2, true), (3, true), (4, false)]);
    let a = push_of(&mut core, clock, 2, &b4);
    assert_eq!(getblocktxn_to(&a, PeerId(2)), vec![vec![1]], "second place");
    let a = push_of(&mut core, clock, 3, &b4);
    assert!(getblocktxn_to(&a, PeerId(3)).is_empty(), "{a:?}");
    let a = push_of(&mut core, clock, 4, &b4);
    assert_eq!(
        getblocktxn_to(&a, PeerId(4)),
        vec![vec![1]],
        "outbound: third place"
    );
    // All three places taken: a fourth push is only tried without a round trip.
    let _ = core.peer_up(clock, peer(5, false, 3));
    let _ = core.input(clock, PeerId(5), sendcmpct(false));
    let _ = core.high_bandwidth.block_from(PeerId(5), |_| false);
    let a = push_of(&mut core, clock, 5, &b4);
    assert!(getblocktxn_to(&a, PeerId(5)).is_empty(), "{a:?}");
    // A parallel answer that does not rebuild the block gives up for that peer alone: no
    // whole block is asked of it, and the others' answers still count.
    let mut wrong = b4.txdata[1].clone();
    wrong.lock_time = bitcoin::absolute::LockTime::from_consensus(99);
    let a = core.input(
        clock,
        PeerId(2),
        SyncInput::BlockTxn(Box::new(bitcoin::bip152::BlockTransactions {
            block_hash: b4.block_hash(),
            transactions: vec![wrong],
        })),
    );
    assert!(blocks_asked(&a, PeerId(2)).is_empty(), "{a:?}");
    let a = core.input(clock, PeerId(4), blocktxn_of(&b4, &[1]));
    assert_eq!(received(&a), vec![b4.block_hash().to_string()]);
}

#[test]
fn a_fallback_ends_with_its_request_and_the_next_compact_answer_is_read() {
    // The fallback's "already syncing" holds only while the whole block is asked of that
    // peer: once that request ends (notfound), the block asked compact of another peer is
    // rebuilt from that one's answer. Keyed by block alone, the answer was ignored and the
    // block waited for a timeout.
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let (p, q) = (PeerId(1), PeerId(2));
    for id in [1, 2] {
        let _ = core.peer_up(clock, peer(id, false, 3));
        let _ = core.input(clock, PeerId(id), sendcmpct(false));
    }
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![spend(1), spend(2)]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let mut colliding = compact_block(&b4, 1, &short_id_hashes(&b4, true), &[]);
    colliding.short_ids[1] = colliding.short_ids[0];
    let a = core.input(clock, p, SyncInput::CmpctBlock(Box::new(colliding)));
    assert_eq!(blocks_asked(&a, p), vec![b4.block_hash()], "asked whole");
    let _ = core.input(
        clock,
        p,
        SyncInput::NotFound(vec![Inventory::WitnessBlock(b4.block_hash())]),
    );
    let a = core.input(clock, q, headers(std::slice::from_ref(&b4)));
    assert!(
        sent_to(&a, q).iter().any(|m| matches!(m,
            NetworkMessage::GetData(i) if i == &vec![Inventory::CompactBlock(b4.block_hash())])),
        "{a:?}"
    );
    let good = compact_block(&b4, 2, &short_id_hashes(&b4, true), &[]);
    let a = core.input(clock, q, SyncInput::CmpctBlock(Box::new(good)));
    assert_eq!(getblocktxn_to(&a, q), vec![vec![1, 2]], "{a:?}");
}

#[test]
fn a_malformed_request_answer_hands_the_block_to_its_parallel_download() {
    // Core's RemoveBlockRequest(hash, peer) for the offender alone: the parallel download
    // becomes the block's request, and no whole block is asked of anyone.
    let (mut core, clock, b4) = block_rebuilt_from((1, false), &[(2, false)]);
    let a = push_of(&mut core, clock, 2, &b4);
    assert_eq!(getblocktxn_to(&a, PeerId(2)), vec![vec![1]]);
    // P's blocktxn has the wrong count: malformed, charged.
    let a = core.input(clock, PeerId(1), blocktxn_of(&b4, &[]));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Punish(id, _) if *id == PeerId(1))),
        "{a:?}"
    );
    assert!(blocks_asked(&a, PeerId(2)).is_empty(), "{a:?}");
    assert_eq!(core.downloads.asked_of(&b4.block_hash()), Some(PeerId(2)));
    let a = core.input(clock, PeerId(2), blocktxn_of(&b4, &[1]));
    assert_eq!(received(&a), vec![b4.block_hash().to_string()]);
}

#[test]
fn a_refused_whole_block_from_a_parallel_peer_leaves_the_request_alone() {
    // Core's RemoveBlockRequest(hash, peer) for the sender of a mutated block alone. meshd
    // took any copy as delivered before checking it: a parallel peer's bad block ended
    // every download of it and asked for the whole block again.
    let (mut core, clock, b4) = block_rebuilt_from((1, false), &[(2, false)]);
    let _ = push_of(&mut core, clock, 2, &b4);
    let mut bad = b4.clone();
    bad.txdata[1] = spend(99);
    let a = core.input(clock, PeerId(2), SyncInput::Block(Box::new(bad)));
    assert!(
        a.iter()
            .any(|x| matches!(x, Action::Punish(id, _) if *id == PeerId(2))),
        "{a:?}"
    );
    assert!(blocks_asked(&a, PeerId(1)).is_empty(), "{a:?}");
    assert_eq!(core.downloads.asked_of(&b4.block_hash()), Some(PeerId(1)));
    let a = core.input(clock, PeerId(1), blocktxn_of(&b4, &[1]));
    assert_eq!(received(&a), vec![b4.block_hash().to_string()]);
}

#[test]
fn an_unread_oversized_push_asks_for_its_header_without_a_vouch() {
    let (mut core, clock) = synced_core(3);
    let p = PeerId(1);
    let _ = core.peer_up(clock, peer(1, false, 3));
    // Its first getheaders answered: none is in flight.
    let _ = core.input(clock, p, headers(&[]));
    let before = core.peers[&p].vouched_tip;
    let a = core.input(
        clock,
        p,
        SyncInput::CompactBlockUnread(BlockHash::from_byte_array([7; 32])),
    );
    assert_eq!(getheaders_to(&a, p), 1, "{a:?}");
    assert_eq!(core.peers[&p].vouched_tip, before);
}

#[test]
fn the_same_peer_asked_again_after_its_fallback_ended_is_read_again() {
    use crate::sync::compact::{compact_block, short_id_hashes};
    let (mut core, clock) = synced_core(3);
    let p = PeerId(1);
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.input(clock, p, sendcmpct(false));
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![spend(1), spend(2)]);
    let _ = core.input(clock, p, headers(std::slice::from_ref(&b4)));
    let mut colliding = compact_block(&b4, 1, &short_id_hashes(&b4, true), &[]);
    colliding.short_ids[1] = colliding.short_ids[0];
    let _ = core.input(clock, p, SyncInput::CmpctBlock(Box::new(colliding)));
    let _ = core.input(
        clock,
        p,
        SyncInput::NotFound(vec![Inventory::WitnessBlock(b4.block_hash())]),
    );
    // It announces the block again and is asked again, compact: its answer is read.
    let a = core.input(
        clock,
        p,
        SyncInput::Inv(vec![Inventory::Block(b4.block_hash())]),
    );
    assert!(
        sent_to(&a, p)
            .iter()
            .any(|m| matches!(m, NetworkMessage::GetData(_))),
        "{a:?}"
    );
    let good = compact_block(&b4, 2, &short_id_hashes(&b4, true), &[]);
    let a = core.input(clock, p, SyncInput::CmpctBlock(Box::new(good)));
    assert_eq!(getblocktxn_to(&a, p), vec![vec![1, 2]], "{a:?}");
}

#[test]
fn the_ordinary_cmpctblock_goes_for_the_kept_tip_even_with_a_header_ahead() {
    // Header 5 is in, block 5 is not: block 4, the tip of what we keep, still goes to a
    // high-bandwidth 70014 peer as cmpctblock (Core: its active tip). Compared with the
    // header tip, it went as a header.
    let (mut core, clock) = synced_core(3);
    let (p, old) = (PeerId(1), PeerId(2));
    let _ = core.peer_up(clock, peer(1, false, 3));
    let mut old_peer = peer(2, true, 3);
    old_peer.version = 70014;
    let _ = core.peer_up(clock, old_peer);
    let _ = core.input(clock, p, sendcmpct(false));
    let _ = core.input(clock, old, sendcmpct(true));
    let _ = core.input(clock, old, getheaders_from_genesis());
    let tip = core.chain().tip_header();
    let b4 = block_with(&tip, 4, tip.time + 1, vec![]);
    let b5 = block_with(&b4.header, 5, tip.time + 2, vec![]);
    let _ = core.input(clock, p, headers(&[b4.clone(), b5.clone()]));
    let a = core.input(clock, p, SyncInput::Block(Box::new(b4.clone())));
    assert_eq!(received(&a), vec![b4.block_hash().to_string()], "{a:?}");
    assert_eq!(cmpctblocks_to(&a, old).len(), 1, "{a:?}");
}

#[test]
fn chain_queries_answer_tips_headers_and_kept_blocks_as_cores_rpc_sees_them() {
    use crate::msg::{ChainAnswer, ChainQuery};
    // Two branches from genesis: the old one (3, kept) loses to the new one (4, headers
    // only); a third branch of one header forks off the new one at height 2.
    let clock = clock0();
    let mut core = core_at(clock);
    let genesis = core.chain().tip_header();
    let old = branch_of(genesis, 3, clock, 98);
    let new = branch_of(genesis, 4, clock, 99);
    let side = branch_of(new[1].header, 1, clock, 97);
    let _ = core.peer_up(clock, peer(1, false, 3));
    let _ = core.peer_up(clock, peer(2, false, 4));
    let _ = core.input(clock, PeerId(1), headers(&old));
    for b in &old {
        let _ = core.input(clock, PeerId(1), SyncInput::Block(Box::new(b.clone())));
    }
    let _ = core.input(clock, PeerId(2), headers(&new));
    let _ = core.input(clock, PeerId(2), headers(&side));
    let ChainAnswer::Tips(tips) = core.query(&ChainQuery::Tips, clock.now) else {
        panic!("tips")
    };
    let seen: Vec<(u32, u32, &str)> = tips
        .iter()
        .map(|t| (t.height, t.branch_len, t.status))
        .collect();
    assert_eq!(
        seen,
        vec![
            (4, 0, "active"),
            (3, 1, "headers-only"),
            (3, 3, "valid-headers")
        ],
        "highest first, as Core's; {tips:?}"
    );
    assert!(tips
        .iter()
        .any(|t| t.hash == old[2].block_hash() && t.status == "valid-headers"));
    // A header off the best chain has no confirmations (and no next); one on it does.
    let ChainAnswer::Header(Some(h)) =
        core.query(&ChainQuery::Header(old[1].block_hash()), clock.now)
    else {
        panic!("old header")
    };
    assert_eq!(
        (h.height, h.best_height, h.next, h.tx_count),
        (2, None, None, Some(1))
    );
    let ChainAnswer::Header(Some(h)) =
        core.query(&ChainQuery::Header(new[1].block_hash()), clock.now)
    else {
        panic!("new header")
    };
    assert_eq!(
        (h.best_height, h.next),
        (Some(4), Some(new[2].block_hash()))
    );
    assert_eq!(h.tx_count, None, "its block is not kept");
    // Blocks: kept, known but not kept (pruned), unknown.
    let kept = core.query(&ChainQuery::Block(old[0].block_hash()), clock.now);
    assert!(matches!(kept, ChainAnswer::Block(Some(_), true)));
    let pruned = core.query(&ChainQuery::Block(new[0].block_hash()), clock.now);
    assert!(matches!(pruned, ChainAnswer::Block(None, true)));
    let unknown = core.query(&ChainQuery::Block(BlockHash::all_zeros()), clock.now);
    assert!(matches!(unknown, ChainAnswer::Block(None, false)));
    let ChainAnswer::Hash(at3) = core.query(&ChainQuery::HashAt(3), clock.now) else {
        panic!("hash")
    };
    assert_eq!(at3, Some(new[2].block_hash()));
    let ChainAnswer::Summary(s) = core.query(&ChainQuery::Summary, clock.now) else {
        panic!("summary")
    };
    assert_eq!(
        (s.height, s.tip, s.lowest_kept),
        (4, new[3].block_hash(), None)
    );
}

/// Core's `NextInvToInbounds`: every inbound peer of a network hears of a transaction at
/// the same moment, from one shared Poisson schedule, so a spy holding many inbound
/// connections learns no more than from one; an onion peer (arriving from loopback) and an
/// IPv6 peer have schedules of their own, and outbound peers their own timers. A schedule
/// that passed while nothing waited is drawn anew, as Core's: after a quiet minute the next
/// transaction still waits for a draw, not for the next tick.
#[test]
fn inbound_peers_share_one_announcement_schedule_per_network() {
    use crate::shared::overlay::Network;
    let start = clock0();
    let mut core = core_at(start);
    let ipv4: Vec<PeerId> = (1..=6).map(PeerId).collect();
    for id in &ipv4 {
        let _ = core.peer_up(start, peer(id.0, true, 0));
    }
    let onion = NewPeer {
        network: Network::Onion,
        ..peer(7, true, 0)
    };
    let ipv6 = NewPeer {
        addr: "[2001:db8::7]:8333".parse().unwrap(),
        network: Network::Ipv6,
        ..peer(8, true, 0)
    };
    for p in [onion, ipv6, peer(9, false, 0)] {
        let _ = core.peer_up(start, p);
    }
    let everyone = ipv4.len() + 3;
    let mut clock = start;
    let mut waits = Vec::new();
    for n in 0..4u8 {
        // A quiet minute first: every schedule passes with nothing to announce.
        for _ in 0..600 {
            clock.now += Duration::from_millis(100);
            let _ = core.tick(clock);
        }
        let tx = spend(40 + n);
        let txid = tx.compute_txid();
        let submitted = clock.now;
        let _ = core.submit_tx(clock, tx);
        let mut heard: HashMap<PeerId, Instant> = HashMap::new();
        for _ in 0..4_000 {
            clock.now += Duration::from_millis(50);
            for a in core.tick(clock) {
                if let Action::Send(p, NetworkMessage::Inv(items)) = a {
                    if items.contains(&Inventory::Transaction(txid)) {
                        heard.entry(p).or_insert(clock.now);
                    }
                }
            }
            if heard.len() == everyone {
                break;
            }
        }
        assert_eq!(heard.len(), everyone, "transaction {n} reached every peer");
        let times: HashSet<Instant> = ipv4.iter().map(|id| heard[id]).collect();
        assert_eq!(
            times.len(),
            1,
            "transaction {n}: one moment for IPv4 inbound peers"
        );
        waits.push(heard[&ipv4[0]] - submitted);
    }
    assert!(
        waits.iter().any(|w| *w > Duration::from_secs(1)),
        "after a quiet minute announcements still wait for a draw: {waits:?}"
    );
}
