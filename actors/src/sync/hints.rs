//! Header hints and the segmented header sync they allow, as a sans-IO core.
//!
//! One peer gives one batch of 2,000 headers per round trip, so a long chain behind a slow
//! link takes (chain / 2,000) round trips however fast we validate. Hints (block hashes at
//! regular heights) cut the chain into segments that can be asked of different peers at the
//! same time: segment *k* is asked with `getheaders` from the hint at its start (the
//! locator) to the hint at its end (the stop hash), which any Core-compatible peer answers
//! with exactly the headers in between.
//!
//! **Hints only schedule work.** A segment is taken from a peer only when it starts at its
//! start hint, links header to header and ends at its end hint; it then waits (bounded, see
//! [`MAX_SEGMENTS_AHEAD`]) until every segment before it is in the chain, and its headers go
//! through the chain's full validation like any others. A segment that does not lead to its
//! hint is asked of another peer; its sender pays only once the segment is in the chain
//! from another peer's answer, which proves the hint right (until then the hint, the
//! operator's file, may be what is wrong). After [`MAX_SEGMENT_FAILURES`] such answers for
//! the same segment the hint is taken to be wrong, hints are given up (sync goes on from one
//! peer, as without hints) and nobody pays. A wrong hint costs re-requests, never a wrong
//! chain and never an honest peer's score.
//!
//! The hints file (`--header-hints FILE`, written by `meshd hints export FILE`) is text:
//!
//! ```text
//! # comments
//! network mainnet
//! 2000 00000000dfd5d65c9d8561b4b8f60a63018fe3933ecb131fb37f905f87da951a
//! 4000 ...
//! ```
//!
//! Heights ascend, the first at most [`MAX_HINT_SPACING`] and each at most that far from the
//! one before (one `headers` message per segment).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bitcoin::BlockHash;

use crate::constants::MAX_HEADERS_PER_MESSAGE;
use crate::msg::HashedHeaders;
use crate::shared::peers::PeerId;

/// Height between hints that `meshd hints export` writes.
pub const HINT_INTERVAL: u32 = 2_000;

/// Largest distance between two hints (and from genesis to the first): a segment is fetched
/// with one `getheaders`, which is answered with at most 2,000 headers.
pub const MAX_HINT_SPACING: u32 = MAX_HEADERS_PER_MESSAGE as u32;

/// Hints read from one file at most.
///
/// # Security
/// The file is the operator's, but a wrong path could name a huge file: 2 million hints
/// cover a chain of 4 billion headers at the usual interval, and take 72 MB.
pub const MAX_HINTS: usize = 2_000_000;

/// Segments held ahead of the chain (asked for, or received and waiting for their turn).
///
/// # Security
/// Bounds the memory peers' answers can hold before they are validated: a segment is at
/// most 2,000 headers with their hashes (224 KB), so 32 of them come to about 7 MB. Enough to
/// keep 8 peers busy four times over while answers wait for their turn to be validated.
pub const MAX_SEGMENTS_AHEAD: usize = 32;

/// Segments one peer is asked for at a time: one, as every `getheaders` (Core's
/// `MaybeSendGetHeaders` keeps one in flight per peer; a second would be answered only after
/// the first anyway, and a peer asked twice cannot be told from one answering late).
pub const MAX_SEGMENTS_PER_PEER: usize = 1;

/// A segment request unanswered this long is asked of another peer.
pub const SEGMENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Answers off one segment's end hint before that hint is taken to be wrong and hints are
/// given up (three peers on another chain than the hint's are not a coincidence).
pub const MAX_SEGMENT_FAILURES: usize = 3;

/// Why a hints file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HintsError {
    /// No `network NAME` line before the first hint.
    #[error("no `network NAME` line before the first hint")]
    NoNetwork,
    /// The file is for another network.
    #[error("hints for network {found}, this node runs {expected}")]
    WrongNetwork {
        /// Network the file names.
        found: String,
        /// Ours.
        expected: String,
    },
    /// A line that is not `HEIGHT HASH`.
    #[error("line {0}: expected `HEIGHT HASH`")]
    BadLine(usize),
    /// Heights not ascending or too far apart.
    #[error("line {line}: height {height} is not above the last one or more than {MAX_HINT_SPACING} past it")]
    BadSpacing {
        /// Line number.
        line: usize,
        /// Its height.
        height: u32,
    },
    /// More than [`MAX_HINTS`].
    #[error("more than {MAX_HINTS} hints")]
    TooMany,
}

/// Reads a hints file's text for network `network` (its `name()`).
pub fn parse(text: &str, network: &str) -> Result<Vec<(u32, BlockHash)>, HintsError> {
    let mut found_network = false;
    let mut hints: Vec<(u32, BlockHash)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let (Some(first), Some(second), None) = (words.next(), words.next(), words.next()) else {
            return Err(HintsError::BadLine(line_no));
        };
        if first == "network" {
            if second != network {
                return Err(HintsError::WrongNetwork {
                    found: second.to_string(),
                    expected: network.to_string(),
                });
            }
            found_network = true;
            continue;
        }
        if !found_network {
            return Err(HintsError::NoNetwork);
        }
        let (Ok(height), Ok(hash)) = (first.parse::<u32>(), second.parse::<BlockHash>()) else {
            return Err(HintsError::BadLine(line_no));
        };
        let last = hints.last().map_or(0, |h| h.0);
        if height <= last || height - last > MAX_HINT_SPACING {
            return Err(HintsError::BadSpacing {
                line: line_no,
                height,
            });
        }
        if hints.len() >= MAX_HINTS {
            return Err(HintsError::TooMany);
        }
        hints.push((height, hash));
    }
    if !found_network {
        return Err(HintsError::NoNetwork);
    }
    Ok(hints)
}

/// The text of a hints file for `network` (its `name()`).
pub fn format(network: &str, hints: &[(u32, BlockHash)]) -> String {
    let mut out = String::with_capacity(80 * (hints.len() + 3));
    out.push_str("# meshd header hints: block hashes at regular heights (meshd --header-hints)\n");
    out.push_str(&std::format!("network {network}\n"));
    for (height, hash) in hints {
        out.push_str(&std::format!("{height} {hash}\n"));
    }
    out
}

/// A segment: the headers after `start` up to and including `end`.
#[derive(Debug)]
struct Segment {
    start: (u32, BlockHash),
    end: (u32, BlockHash),
    state: SegmentState,
    /// Connected peers that failed it (timed out, or sent headers not leading to its end):
    /// not asked for it again. A peer leaves this list when it disconnects, so the list is
    /// bounded by the peers connected.
    failed: Vec<PeerId>,
    /// Answers that did not lead to its end hint, from any peer, ever.
    mismatches: usize,
    /// Connected peers whose answer did not lead to its end hint: they pay once the segment
    /// is validated from another answer. Bounded as `failed`.
    mismatched_by: Vec<PeerId>,
}

#[derive(Debug)]
enum SegmentState {
    Waiting,
    Asked {
        peer: PeerId,
        at: Instant,
    },
    Received {
        peer: PeerId,
        headers: HashedHeaders,
    },
    /// Given to the caller by `next_ready`, awaiting `validated`.
    Validating {
        peer: PeerId,
    },
}

/// A `getheaders` to send: locator `[from]`, stop hash `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentRequest {
    /// Peer to ask.
    pub peer: PeerId,
    /// The segment's start hint (the locator).
    pub from: BlockHash,
    /// Its end hint (the stop hash).
    pub stop: BlockHash,
}

/// What an answer to a segment request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentAnswer {
    /// Taken (it leads from the start hint to the end hint).
    Taken,
    /// It starts at a segment's start but does not lead to its end hint: the segment is
    /// asked of another peer, and the sender pays if that one's answer proves the hint.
    Mismatch,
    /// As `Mismatch`, and that was the segment's last chance: hints are given up, and the
    /// peers that disagreed with the hint do not pay.
    HintsWrong,
}

/// Segments from the chain's tip through the last hint. See the module documentation.
#[derive(Debug)]
pub struct SegmentSync {
    /// Segments not yet validated, in chain order (the first starts at the validated tip).
    segments: VecDeque<Segment>,
    /// Hints not yet cut into segments (the next segment starts at `pending_start`).
    hints: VecDeque<(u32, BlockHash)>,
    pending_start: (u32, BlockHash),
}

impl SegmentSync {
    /// Segments from our tip (`tip_height`, `tip`) through the hints above it; `hash_at`
    /// gives our best-chain hash at a height. `None` when no hint lies above the tip, or our
    /// chain disagrees with the highest hint at or below the tip, or the tip is more than
    /// [`MAX_HINT_SPACING`] below the next hint.
    pub fn new(
        hints: &[(u32, BlockHash)],
        tip_height: u32,
        tip: BlockHash,
        hash_at: impl Fn(u32) -> Option<BlockHash>,
    ) -> Option<SegmentSync> {
        let above = hints.partition_point(|(h, _)| *h <= tip_height);
        if above == hints.len() {
            return None;
        }
        if let Some(&(h, hash)) = above.checked_sub(1).map(|i| &hints[i]) {
            if hash_at(h) != Some(hash) {
                return None;
            }
        }
        if hints[above].0 - tip_height > MAX_HINT_SPACING {
            return None;
        }
        Some(SegmentSync {
            segments: VecDeque::new(),
            hints: hints[above..].iter().copied().collect(),
            pending_start: (tip_height, tip),
        })
    }

    /// Cuts hints into segments up to [`MAX_SEGMENTS_AHEAD`].
    fn refill(&mut self) {
        while self.segments.len() < MAX_SEGMENTS_AHEAD {
            let Some(end) = self.hints.pop_front() else {
                break;
            };
            self.segments.push_back(Segment {
                start: self.pending_start,
                end,
                state: SegmentState::Waiting,
                failed: Vec::new(),
                mismatches: 0,
                mismatched_by: Vec::new(),
            });
            self.pending_start = end;
        }
    }

    /// Requests to send now: each waiting segment (in chain order) goes to a peer with room
    /// (fewer than [`MAX_SEGMENTS_PER_PEER`] asked), whose claimed height reaches its end and
    /// that has not failed it; the least busy such peer first. `peers`: (peer, best height).
    pub fn assign(&mut self, peers: &[(PeerId, u32)], now: Instant) -> Vec<SegmentRequest> {
        self.refill();
        let mut busy: Vec<(PeerId, u32, usize)> = peers
            .iter()
            .map(|&(p, height)| (p, height, self.asked_of(p)))
            .collect();
        let mut out = Vec::new();
        for seg in self.segments.iter_mut() {
            if !matches!(seg.state, SegmentState::Waiting) {
                continue;
            }
            let pick = busy
                .iter_mut()
                .filter(|(p, height, n)| {
                    *n < MAX_SEGMENTS_PER_PEER && *height >= seg.end.0 && !seg.failed.contains(p)
                })
                .min_by_key(|(p, _, n)| (*n, *p));
            let Some((peer, _, n)) = pick else {
                continue;
            };
            *n += 1;
            seg.state = SegmentState::Asked {
                peer: *peer,
                at: now,
            };
            out.push(SegmentRequest {
                peer: *peer,
                from: seg.start.1,
                stop: seg.end.1,
            });
        }
        out
    }

    /// Requests sent and not yet answered.
    pub fn asked(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s.state, SegmentState::Asked { .. }))
            .count()
    }

    fn asked_of(&self, peer: PeerId) -> usize {
        self.segments
            .iter()
            .filter(|s| matches!(s.state, SegmentState::Asked { peer: p, .. } if p == peer))
            .count()
    }

    /// A `headers` message from `peer`: taken when it answers a segment it was asked for;
    /// given back (`Err`) when it does not, to be handled as usual.
    pub fn on_headers(
        &mut self,
        peer: PeerId,
        headers: HashedHeaders,
    ) -> Result<SegmentAnswer, HashedHeaders> {
        let Some(first) = headers.headers.first() else {
            return Err(headers);
        };
        let Some(seg) = self.segments.iter_mut().find(|s| {
            matches!(s.state, SegmentState::Asked { peer: p, .. } if p == peer)
                && s.start.1 == first.prev_blockhash
        }) else {
            return Err(headers);
        };
        let want = (seg.end.0 - seg.start.0) as usize;
        let linked = headers
            .headers
            .iter()
            .skip(1)
            .zip(&headers.hashes)
            .all(|(h, prev)| h.prev_blockhash == *prev);
        let leads_to_end = headers.headers.len() == want
            && headers.hashes.len() == want
            && linked
            && headers.hashes.last() == Some(&seg.end.1);
        if leads_to_end {
            seg.state = SegmentState::Received { peer, headers };
            return Ok(SegmentAnswer::Taken);
        }
        seg.state = SegmentState::Waiting;
        seg.failed.push(peer);
        seg.mismatched_by.push(peer);
        seg.mismatches += 1;
        Ok(if seg.mismatches >= MAX_SEGMENT_FAILURES {
            SegmentAnswer::HintsWrong
        } else {
            SegmentAnswer::Mismatch
        })
    }

    /// The next segment to validate, when it has arrived: its sender and headers. The caller
    /// validates them and reports with [`validated`](Self::validated).
    pub fn next_ready(&mut self) -> Option<(PeerId, HashedHeaders)> {
        let seg = self.segments.front_mut()?;
        if !matches!(seg.state, SegmentState::Received { .. }) {
            return None;
        }
        let SegmentState::Received { peer, headers } =
            std::mem::replace(&mut seg.state, SegmentState::Waiting)
        else {
            return None;
        };
        seg.state = SegmentState::Validating { peer };
        Some((peer, headers))
    }

    /// The segment [`next_ready`](Self::next_ready) gave was validated (`ok`: every header
    /// went into the chain) or refused (its sender is not asked for it again). Validated, it
    /// returns the peers whose answers did not lead to its hint, now shown wrong: they pay.
    pub fn validated(&mut self, ok: bool) -> Vec<PeerId> {
        let Some(seg) = self.segments.front_mut() else {
            return Vec::new();
        };
        let SegmentState::Validating { peer } = seg.state else {
            return Vec::new();
        };
        if ok {
            let liars = self
                .segments
                .pop_front()
                .map(|s| s.mismatched_by)
                .unwrap_or_default();
            self.refill();
            liars
        } else {
            seg.state = SegmentState::Waiting;
            seg.failed.push(peer);
            Vec::new()
        }
    }

    /// Requests older than [`SEGMENT_TIMEOUT`] go back to waiting (their peers are not asked
    /// for them again); returns those peers.
    pub fn expire(&mut self, now: Instant) -> Vec<PeerId> {
        let mut slow = Vec::new();
        for seg in self.segments.iter_mut() {
            if let SegmentState::Asked { peer, at } = seg.state {
                if now.saturating_duration_since(at) >= SEGMENT_TIMEOUT {
                    seg.state = SegmentState::Waiting;
                    seg.failed.push(peer);
                    slow.push(peer);
                }
            }
        }
        slow
    }

    /// `peer` left: what it was asked for waits for another, and it is forgotten.
    pub fn peer_gone(&mut self, peer: PeerId) {
        for seg in self.segments.iter_mut() {
            if matches!(seg.state, SegmentState::Asked { peer: p, .. } if p == peer) {
                seg.state = SegmentState::Waiting;
            }
            seg.failed.retain(|p| *p != peer);
            seg.mismatched_by.retain(|p| *p != peer);
        }
    }

    /// Whether a segment has no peer left to ask among `peers` (all failed it, or none
    /// claims its height): sync then goes on without hints.
    pub fn stuck(&self, peers: &[(PeerId, u32)]) -> bool {
        self.segments.iter().any(|s| {
            matches!(s.state, SegmentState::Waiting)
                && !peers
                    .iter()
                    .any(|(p, h)| *h >= s.end.0 && !s.failed.contains(p))
        })
    }

    /// Every segment is validated.
    pub fn done(&self) -> bool {
        self.segments.is_empty() && self.hints.is_empty()
    }

    /// Height of the last hint.
    pub fn target(&self) -> u32 {
        self.hints
            .back()
            .or(self.segments.back().map(|s| &s.end))
            .map_or(self.pending_start.0, |h| h.0)
    }

    /// Headers held, received and not yet validated.
    pub fn held_headers(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match &s.state {
                SegmentState::Received { headers, .. } => headers.headers.len(),
                _ => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use crate::sync::chain::headers::{mine_chain, mine_header};
    use bitcoin::block::Header;
    use bitcoin::hashes::Hash;
    use proptest::prelude::*;

    /// Genesis and `n` headers after it (index = height).
    fn chain(n: u32) -> Vec<Header> {
        let genesis = NetworkId::Regtest.profile().genesis;
        let mut out = vec![genesis];
        out.extend(mine_chain(&genesis, n, 600));
        out
    }

    /// Segments over `c` from its genesis.
    fn segments(c: &[Header], hints: &[(u32, BlockHash)]) -> SegmentSync {
        SegmentSync::new(hints, 0, c[0].block_hash(), |h| {
            c.get(h as usize).map(|x| x.block_hash())
        })
        .unwrap()
    }

    fn hints_of(chain: &[Header], every: u32) -> Vec<(u32, BlockHash)> {
        (1..chain.len() as u32)
            .filter(|h| h % every == 0)
            .map(|h| (h, chain[h as usize].block_hash()))
            .collect()
    }

    /// What a Core-compatible peer answers: after the locator's hash, up to the stop hash or
    /// 2,000 headers.
    fn serve(chain: &[Header], req: &SegmentRequest) -> HashedHeaders {
        let start = chain
            .iter()
            .position(|h| h.block_hash() == req.from)
            .map_or(1, |i| i + 1);
        let mut out = Vec::new();
        for h in &chain[start.min(chain.len())..] {
            out.push(*h);
            if h.block_hash() == req.stop || out.len() == MAX_HEADERS_PER_MESSAGE {
                break;
            }
        }
        HashedHeaders::new(out)
    }

    #[test]
    fn the_file_round_trips_and_bad_files_are_refused() {
        let c = chain(10);
        let hints = hints_of(&c, 2);
        let text = format("regtest", &hints);
        assert_eq!(parse(&text, "regtest"), Ok(hints.clone()));
        assert!(matches!(
            parse(&text, "mainnet"),
            Err(HintsError::WrongNetwork { .. })
        ));
        assert_eq!(parse("2000 00", "regtest"), Err(HintsError::NoNetwork));
        let h = c[2].block_hash();
        assert_eq!(
            parse(&std::format!("network regtest\n2001 {h}\n"), "regtest"),
            Err(HintsError::BadSpacing {
                line: 2,
                height: 2001
            })
        );
        assert_eq!(
            parse(
                &std::format!("network regtest\n10 {h}\n10 {h}\n"),
                "regtest"
            ),
            Err(HintsError::BadSpacing {
                line: 3,
                height: 10
            })
        );
        assert_eq!(
            parse("network regtest\n10 nothex\n", "regtest"),
            Err(HintsError::BadLine(2))
        );
    }

    #[test]
    fn a_peer_off_the_hint_pays_only_once_another_proves_the_hint() {
        let c = chain(20);
        let hints = hints_of(&c, 10);
        let mut s = segments(&c, &hints);
        let now = Instant::now();
        let first = s.assign(&[(PeerId(1), 20)], now)[0];
        // Peer 1's answer stops one header short of the hint.
        let mut short = serve(&c, &first);
        short.headers.pop();
        short.hashes.pop();
        assert_eq!(
            s.on_headers(PeerId(1), short).unwrap(),
            SegmentAnswer::Mismatch
        );
        let again = s.assign(&[(PeerId(1), 20), (PeerId(2), 20)], now);
        let honest = again
            .iter()
            .find(|r| r.from == first.from)
            .copied()
            .unwrap();
        assert_eq!(honest.peer, PeerId(2));
        assert_eq!(
            s.on_headers(PeerId(2), serve(&c, &honest)).unwrap(),
            SegmentAnswer::Taken
        );
        assert!(s.next_ready().is_some());
        assert_eq!(s.validated(true), vec![PeerId(1)], "proven wrong: it pays");
    }

    #[test]
    fn segments_go_to_several_peers_and_are_released_in_order() {
        let c = chain(100);
        let hints = hints_of(&c, 10);
        let mut s = segments(&c, &hints);
        let peers = [(PeerId(1), 100), (PeerId(2), 100), (PeerId(3), 50)];
        let now = Instant::now();
        let reqs = s.assign(&peers, now);
        // In chain order, one per peer (each a getheaders in flight).
        let to: Vec<u64> = reqs.iter().map(|r| r.peer.0).collect();
        assert_eq!(to, vec![1, 2, 3]);
        // Answers arrive last first: nothing is ready until the first one is in.
        for r in reqs.iter().rev() {
            assert_eq!(
                s.on_headers(r.peer, serve(&c, r)).unwrap(),
                SegmentAnswer::Taken
            );
            if r.from != c[0].block_hash() {
                assert!(s.next_ready().is_none());
            }
        }
        let mut height = 0;
        while let Some((_, h)) = s.next_ready() {
            assert_eq!(h.headers[0].prev_blockhash, c[height].block_hash());
            height += h.headers.len();
            s.validated(true);
        }
        assert_eq!(height, 30);
        assert!(!s.done());
        assert_eq!(s.target(), 100);
    }

    #[test]
    fn a_segment_off_its_hint_costs_the_sender_and_three_failures_give_hints_up() {
        let c = chain(40);
        let other = {
            // A chain that forks at height 5.
            let mut o = c[..6].to_vec();
            for i in 0..35u32 {
                let parent = o[o.len() - 1];
                o.push(mine_header(
                    &parent,
                    bitcoin::TxMerkleNode::from_byte_array([7u8; 32]),
                    parent.time + 60 + i,
                    parent.bits,
                ));
            }
            o
        };
        let hints = hints_of(&c, 10);
        let mut s = segments(&c, &hints);
        let peers: Vec<(PeerId, u32)> = (1..=4).map(|p| (PeerId(p), 40)).collect();
        let now = Instant::now();
        let mut failures = 0;
        for round in 0..3 {
            let reqs = s.assign(&peers, now);
            let first = reqs
                .iter()
                .find(|r| r.from == c[0].block_hash())
                .copied()
                .unwrap();
            let answer = s.on_headers(first.peer, serve(&other, &first)).unwrap();
            failures += 1;
            if round < 2 {
                assert_eq!(answer, SegmentAnswer::Mismatch);
            } else {
                assert_eq!(answer, SegmentAnswer::HintsWrong);
            }
            // The failed peer is never asked for that segment again.
            let again = s.assign(&peers, now);
            assert!(again
                .iter()
                .all(|r| r.from != c[0].block_hash() || r.peer != first.peer));
            for r in reqs.iter().chain(&again) {
                s.peer_gone(r.peer);
            }
        }
        assert_eq!(failures, MAX_SEGMENT_FAILURES);
    }

    #[test]
    fn a_silent_peer_times_out_and_its_segment_goes_elsewhere() {
        let c = chain(20);
        let hints = hints_of(&c, 10);
        let mut s = segments(&c, &hints);
        let t0 = Instant::now();
        let reqs = s.assign(&[(PeerId(1), 20)], t0);
        assert_eq!(reqs.len(), 1, "one segment per peer at a time");
        let silent = reqs[0];
        assert!(s.expire(t0 + SEGMENT_TIMEOUT / 2).is_empty());
        assert_eq!(s.expire(t0 + SEGMENT_TIMEOUT), vec![PeerId(1)]);
        assert!(s.stuck(&[(PeerId(1), 20)]));
        let peers = [(PeerId(1), 20), (PeerId(2), 20)];
        let mut now = t0 + SEGMENT_TIMEOUT;
        let mut reqs = s.assign(&peers, now);
        // The silent peer's segment goes to the other one, never back to it.
        assert!(reqs
            .iter()
            .any(|r| r.from == silent.from && r.peer == PeerId(2)));
        while !reqs.is_empty() {
            for r in &reqs {
                assert!(r.from != silent.from || r.peer == PeerId(2));
                assert_eq!(
                    s.on_headers(r.peer, serve(&c, r)).unwrap(),
                    SegmentAnswer::Taken
                );
            }
            while s.next_ready().is_some() {
                s.validated(true);
            }
            now += Duration::from_millis(1);
            reqs = s.assign(&peers, now);
        }
        assert!(s.done());
    }

    #[test]
    fn hints_that_disagree_with_our_chain_or_start_too_far_are_not_used() {
        let c = chain(30);
        let hints = hints_of(&c, 10);
        let at = |h: u32| c.get(h as usize).map(|x| x.block_hash());
        assert!(SegmentSync::new(&hints, 15, c[15].block_hash(), at).is_some());
        assert!(SegmentSync::new(&hints, 30, c[30].block_hash(), at).is_none());
        let wrong = |h: u32| {
            if h == 10 {
                Some(BlockHash::all_zeros())
            } else {
                at(h)
            }
        };
        assert!(SegmentSync::new(&hints, 15, c[15].block_hash(), wrong).is_none());
        let far = [(2000u32, c[1].block_hash()), (4000, c[2].block_hash())];
        assert!(SegmentSync::new(&far[1..], 0, c[0].block_hash(), at).is_none());
    }

    proptest! {
        /// Whatever order answers come in, from however many peers, with some of them
        /// answering off the hints, the validated headers are exactly the chain, in order.
        #[test]
        fn any_answer_order_validates_the_chain_in_order(
            n_peers in 1usize..6,
            order in proptest::collection::vec(any::<u16>(), 1..200),
            liars in proptest::collection::vec(any::<bool>(), 6),
        ) {
            let c = chain(120);
            let hints = hints_of(&c, 10);
            let mut s = segments(&c, &hints);
            let peers: Vec<(PeerId, u32)> = (0..n_peers as u64).map(|p| (PeerId(p), 120)).collect();
            let now = Instant::now();
            let mut outstanding: Vec<SegmentRequest> = Vec::new();
            let mut validated = 0usize;
            let mut rounds = 0;
            while !s.done() && rounds < 2000 {
                rounds += 1;
                outstanding.extend(s.assign(&peers, now));
                if outstanding.is_empty() {
                    // Every peer failed some segment: hints would be given up.
                    prop_assert!(s.stuck(&peers));
                    break;
                }
                let pick = order[rounds % order.len()] as usize % outstanding.len();
                let r = outstanding.remove(pick);
                let mut answer = serve(&c, &r);
                if liars[r.peer.0 as usize] && answer.headers.len() > 1 {
                    answer.headers.pop();
                    answer.hashes.pop();
                }
                let _ = s.on_headers(r.peer, answer);
                while let Some((_, h)) = s.next_ready() {
                    for (i, header) in h.headers.iter().enumerate() {
                        prop_assert_eq!(*header, c[validated + 1 + i]);
                    }
                    validated += h.headers.len();
                    s.validated(true);
                }
            }
            if s.done() {
                prop_assert_eq!(validated, 120);
            }
        }
    }
}
