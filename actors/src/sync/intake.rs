//! Header intake, sans-IO: the path one peer's `headers` message takes on its way to the
//! chain (Core's `ProcessHeadersMessage`: `CheckHeadersPoW`, then the peer's presync or
//! `IsContinuationOfLowWorkHeadersSync`, then the anti-DoS work threshold, then
//! `ProcessNewBlockHeaders`), and what storing a batch yields. The Sync actor sends,
//! punishes, stores and publishes what these functions return; they take the chain, the
//! peer's presync and the clock, and touch nothing else.
//!
//! The order is the point (issue #24, item 3): a batch is checked whole (links and proof of
//! work) before any of it is looked up or its work summed, and a batch whose last header is
//! known costs one lookup, so duplicate and re-sent headers are O(1) whatever the chain's
//! length.

use bitcoin::block::Header;
use bitcoin::BlockHash;

use crate::constants::MAX_HEADERS_PER_MESSAGE;
use crate::sync::chain::presync::{HeadersPresync, PresyncError, PresyncStep};
use crate::sync::chain::{AcceptError, Accepted, HeaderChain};

/// Where one batch of headers goes.
#[derive(Debug)]
pub enum Route {
    /// It broke Core's `CheckHeadersPoW` (a header does not follow the one before it, or
    /// misses the target its nBits encodes): the sender pays this kind; nothing of it is
    /// looked up, counted or stored.
    Invalid(&'static str),
    /// It continues the peer's running presync, which says what comes next.
    Presync(PresyncStep),
    /// It extends our chain with too little work to be stored: a presync starts for the
    /// peer (kept by the caller), and this is its first step.
    NewPresync(Box<HeadersPresync>, PresyncStep),
    /// Too little work to store while the peer presyncs another chain (one presync per
    /// peer, as Core): dropped without a charge.
    Dropped,
    /// A short chain that ends below the threshold: not worth storing (Core ignores it too,
    /// without punishing).
    LowWork,
    /// Straight to the chain: known already, with enough work, empty, or connecting nowhere
    /// we know (the chain says which).
    Chain,
}

/// Whether `headers` answers an outstanding `getheaders` of the peer's, so it may be asked
/// again: Core clears the request's timestamp when headers connect to what we know,
/// continue the peer's presync, or are none at all.
pub fn is_answer(
    chain: &HeaderChain,
    presync: Option<&HeadersPresync>,
    headers: &[Header],
) -> bool {
    match headers.first() {
        None => true,
        Some(first) => {
            chain.contains(&first.prev_blockhash) || presync.is_some_and(|ps| ps.continues(first))
        }
    }
}

/// The path `headers` (hashed: `hashes[i]` is `headers[i]`'s) takes. `presync` is the
/// peer's running presync, fed here when the batch continues it; `anti_dos_work` the work a
/// chain must show before it is stored (Core's `GetAntiDoSWorkThreshold`; 0 for a `noban`
/// peer, whose headers Core counts as validated work); `now` our clock
/// in unix seconds, for a new presync's time checks.
pub fn route(
    chain: &HeaderChain,
    presync: Option<&mut HeadersPresync>,
    headers: &[Header],
    hashes: &[BlockHash],
    anti_dos_work: u128,
    now: u32,
) -> Route {
    // Core's CheckHeadersPoW: the whole batch chains and meets its own targets before
    // anything of it is looked up or its work counted.
    if let Err(e) = chain.check_batch(headers, hashes) {
        return Route::Invalid(e.kind());
    }
    let (Some(first), Some(last)) = (headers.first(), hashes.last()) else {
        return Route::Chain;
    };
    let presyncing = presync.is_some();
    if let Some(ps) = presync {
        // Headers that do not continue the presync (an announcement, an answer to an older
        // request) take the normal path and leave the presync as it is.
        if ps.continues(first) {
            return Route::Presync(ps.on_headers(headers));
        }
    }
    // Known headers (duplicates, a re-sent batch) cost one lookup: found before any work is
    // summed.
    if chain.contains(last) {
        return Route::Chain;
    }
    let Some((parent, height, parent_work)) = chain.header_and_work(&first.prev_blockhash) else {
        // Connects nowhere we know: the chain reports it unconnecting.
        return Route::Chain;
    };
    let work = headers
        .iter()
        .map(HeaderChain::header_work)
        .fold(parent_work, u128::saturating_add);
    if work >= anti_dos_work {
        return Route::Chain;
    }
    if presyncing {
        return Route::Dropped;
    }
    if headers.len() < MAX_HEADERS_PER_MESSAGE {
        return Route::LowWork;
    }
    let (rule, limit) = chain.rule_and_limit();
    let mut ps = HeadersPresync::new(rule, limit, anti_dos_work, parent, height, parent_work, now);
    let step = ps.on_headers(headers);
    Route::NewPresync(Box::new(ps), step)
}

/// How storing a batch in the chain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Every header was taken (new or known).
    Whole,
    /// The first header connects to nothing we know: an announcement ahead of a gap (Core
    /// master's `HandleUnconnectingHeaders`: asked for the gap, never charged).
    Unconnecting,
    /// A header was refused: the sender pays this kind, and the rest of the batch is not
    /// looked at.
    Refused(&'static str),
}

/// What storing a batch yielded.
#[derive(Debug)]
pub struct Stored {
    /// The headers new to the chain, in order, to append to headers.dat.
    pub new: Vec<(Header, BlockHash)>,
    /// The deepest reorganisation a header of the batch caused, if any.
    pub reorg_depth: Option<u32>,
    /// How it ended.
    pub end: End,
}

/// Stores `headers` (hashed once, by the Connection) in `chain`, in order, until one is
/// refused. `now` is our clock in unix seconds.
pub fn store(
    chain: &mut HeaderChain,
    headers: &[Header],
    hashes: &[BlockHash],
    now: u32,
) -> Stored {
    let mut new = Vec::new();
    let mut reorg_depth: Option<u32> = None;
    for (i, (h, &hash)) in headers.iter().zip(hashes).enumerate() {
        match chain.accept_hashed(h, hash, now) {
            Ok(Accepted::Duplicate) => {}
            Ok(outcome) => {
                if let Accepted::Reorg { depth } = outcome {
                    reorg_depth = Some(reorg_depth.map_or(depth, |d| d.max(depth)));
                }
                new.push((*h, hash));
            }
            Err(AcceptError::NotConnecting(_)) if i == 0 => {
                return Stored {
                    new,
                    reorg_depth,
                    end: End::Unconnecting,
                };
            }
            Err(e) => {
                return Stored {
                    new,
                    reorg_depth,
                    end: End::Refused(e.kind()),
                };
            }
        }
    }
    Stored {
        new,
        reorg_depth,
        end: End::Whole,
    }
}

/// Why presync aborts are charged: only a chain that broke the proof-of-work or difficulty
/// rules lied; one that merely lacks work did not.
pub fn presync_abort_is_charged(e: &PresyncError) -> bool {
    matches!(
        e,
        PresyncError::BadProofOfWork | PresyncError::BadDifficulty
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use crate::sync::chain::headers::mine_chain;
    use bitcoin::hashes::Hash;
    use proptest::prelude::*;

    /// A regtest chain at genesis, and `n` headers after it, 600 s apart from genesis'
    /// time (so `now` below is later than all of them).
    fn lab(n: u32) -> (HeaderChain, Vec<Header>, Vec<BlockHash>) {
        let profile = NetworkId::Regtest.profile();
        let chain = HeaderChain::new(&profile);
        let headers = mine_chain(&profile.genesis, n, 600);
        let hashes = headers.iter().map(Header::block_hash).collect();
        (chain, headers, hashes)
    }

    fn now() -> u32 {
        2_000_000_000
    }

    #[test]
    fn a_batch_that_breaks_its_own_proof_of_work_is_refused_before_anything_is_looked_up() {
        let (chain, mut headers, mut hashes) = lab(10);
        // A header out of line: its parent is not the one before it.
        headers[5].prev_blockhash = BlockHash::all_zeros();
        hashes[5] = headers[5].block_hash();
        match route(&chain, None, &headers, &hashes, 0, now()) {
            Route::Invalid(kind) => assert_eq!(kind, "header_not_continuous"),
            other => panic!("{other:?}"),
        }
        assert_eq!(chain.height(), 0);
    }

    #[test]
    fn known_headers_take_the_chain_path_whatever_the_threshold() {
        let (mut chain, headers, hashes) = lab(20);
        assert_eq!(store(&mut chain, &headers, &hashes, now()).end, End::Whole);
        // A threshold no batch could meet: a known batch is still not presynced or dropped,
        // since its work is never summed.
        let r = route(&chain, None, &headers[..1], &hashes[..1], u128::MAX, now());
        assert!(matches!(r, Route::Chain), "{r:?}");
        let again = store(&mut chain, &headers[..1], &hashes[..1], now());
        assert!(again.new.is_empty());
        assert_eq!(again.end, End::Whole);
    }

    #[test]
    fn a_short_chain_below_the_threshold_is_ignored_and_a_full_one_presynced() {
        let (chain, headers, hashes) = lab(MAX_HEADERS_PER_MESSAGE as u32);
        let short = route(
            &chain,
            None,
            &headers[..10],
            &hashes[..10],
            u128::MAX,
            now(),
        );
        assert!(matches!(short, Route::LowWork), "{short:?}");
        let full = route(&chain, None, &headers, &hashes, u128::MAX, now());
        let Route::NewPresync(mut ps, step) = full else {
            panic!("{full:?}");
        };
        assert!(matches!(step, PresyncStep::Request(_)), "{step:?}");
        // With a presync running, another chain below the threshold is dropped, and the
        // presync's own continuation goes to it.
        let other = route(
            &chain,
            Some(&mut ps),
            &headers[..10],
            &hashes[..10],
            u128::MAX,
            now(),
        );
        assert!(matches!(other, Route::Dropped), "{other:?}");
    }

    #[test]
    fn an_unconnecting_announcement_stores_nothing_and_is_not_refused() {
        let (mut chain, headers, hashes) = lab(10);
        let r = route(&chain, None, &headers[5..], &hashes[5..], 0, now());
        assert!(matches!(r, Route::Chain), "{r:?}");
        let s = store(&mut chain, &headers[5..], &hashes[5..], now());
        assert_eq!(s.end, End::Unconnecting);
        assert!(s.new.is_empty());
        assert!(!is_answer(&chain, None, &headers[5..]));
        assert!(is_answer(&chain, None, &headers[..1]));
        assert!(is_answer(&chain, None, &[]));
    }

    proptest! {
        /// Whatever pieces a chain arrives in, repeated and in any order, every piece that
        /// connects is stored once, nothing is stored twice, a piece is answered as
        /// unconnecting exactly when its parent is unknown, and the chain ends at the tip
        /// once every piece came after its parent.
        #[test]
        fn pieces_in_any_order_store_each_header_once(
            n in 2u32..120,
            cuts in proptest::collection::vec(0usize..1000, 0..12),
            order in proptest::collection::vec(0usize..1000, 1..40),
        ) {
            let (mut chain, headers, hashes) = lab(n);
            let mut bounds: Vec<usize> = cuts.iter().map(|c| c % headers.len()).collect();
            bounds.push(0);
            bounds.push(headers.len());
            bounds.sort_unstable();
            bounds.dedup();
            let pieces: Vec<(usize, usize)> = bounds.windows(2).map(|w| (w[0], w[1])).collect();
            let mut stored_count = vec![0u32; headers.len()];
            let mut deliver = |chain: &mut HeaderChain, (a, b): (usize, usize)| {
                let parent_known = chain.contains(&headers[a].prev_blockhash);
                let r = route(chain, None, &headers[a..b], &hashes[a..b], 0, now());
                prop_assert!(matches!(r, Route::Chain));
                let s = store(chain, &headers[a..b], &hashes[a..b], now());
                prop_assert_eq!(s.end == End::Unconnecting, !parent_known);
                for (_, hash) in &s.new {
                    let i = hashes.iter().position(|h| h == hash).unwrap();
                    stored_count[i] += 1;
                }
                Ok(())
            };
            for o in &order {
                deliver(&mut chain, pieces[o % pieces.len()])?;
            }
            for &p in &pieces {
                deliver(&mut chain, p)?;
            }
            prop_assert!(stored_count.iter().all(|&c| c == 1), "{:?}", stored_count);
            prop_assert_eq!(chain.height(), n);
            prop_assert_eq!(chain.tip(), *hashes.last().unwrap());
        }
    }
}
