//! Header sync in the sync core: who is asked for headers and when (one `getheaders` in
//! flight per peer, Core's MaybeSendGetHeaders), the sync peer, sync along header hints from
//! many peers, presync steps, and storing what the chain takes.

use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::GetHeadersMessage;
use bitcoin::BlockHash;
use tracing::{debug, info, warn};

use super::{Action, SyncCore, RECENT_HEADER_AGE};
use crate::constants::MAX_HEADERS_PER_MESSAGE;
use crate::events::NodeEvent;
use crate::msg::{HashedHeaders, SyncState};
use crate::shared::peers::PeerId;
use crate::shared::whitelist::Permissions;
use crate::sync::blocks::MAX_BLOCKS_IN_FLIGHT_PER_PEER;
use crate::sync::chain::presync::{PresyncError, PresyncStep};
use crate::sync::chain::HeaderChain;
use crate::sync::hints::{SegmentAnswer, SegmentSync};
use crate::sync::intake::{self, Route};

/// Blocks of work below our tip a chain may lack and still be stored without presync (Core's
/// anti-DoS threshold: a short fork near the tip is normal, a long low-work one is not).
const ANTI_DOS_RECENT_BLOCKS: u32 = 144;

impl SyncCore {
    /// Asks `id` for headers after `locator`, whatever was asked before (a presync's next
    /// batch, the sync peer's next batch: they follow an answer).
    pub(super) fn getheaders_from(&mut self, id: PeerId, locator: Vec<BlockHash>) {
        let version = self.profile.protocol_version;
        if let Some(p) = self.peers.get_mut(&id) {
            p.hs.asked(self.clock.now);
            self.out.send(
                p.id,
                NetworkMessage::GetHeaders(GetHeadersMessage {
                    version,
                    locator_hashes: locator,
                    stop_hash: BlockHash::all_zeros(),
                }),
            );
        }
    }

    /// Core's `MaybeSendGetHeaders`: asks `id` for headers after `locator` unless it was
    /// asked less than [`crate::sync::header_sync::HEADERS_RESPONSE_TIME`] ago and has not answered. True when sent.
    pub(super) fn maybe_getheaders(&mut self, id: PeerId, locator: Vec<BlockHash>) -> bool {
        let Some(p) = self.peers.get_mut(&id) else {
            return false;
        };
        if !p.hs.try_ask(self.clock.now) {
            metrics::counter!("meshd_getheaders_suppressed_total").increment(1);
            return false;
        }
        self.out.send(
            p.id,
            NetworkMessage::GetHeaders(GetHeadersMessage {
                version: self.profile.protocol_version,
                locator_hashes: locator,
                stop_hash: BlockHash::all_zeros(),
            }),
        );
        true
    }

    /// Whether some peer is streaming us full header batches and has not let our request
    /// for the next one go unanswered for [`crate::sync::header_sync::HEADERS_RESPONSE_TIME`].
    pub(super) fn catching_up(&self) -> bool {
        let now = self.clock.now;
        self.peers.values().any(|p| p.hs.streaming(now))
    }

    /// In initial sync (or with a day-old best header) and no sync peer: picks one (an
    /// outbound peer where one exists, then the best chain it showed us, never one tried
    /// already) and asks it for headers.
    pub(super) fn maybe_start_sync(&mut self, exclude: Option<PeerId>) {
        if self.header_sync.sync_peer().is_some() || self.loading {
            return;
        }
        // In initial sync, or whenever our best header is a day old (a node that was cut off
        // for a while catches up from one peer, as Core's nSyncStarted == 0 rule).
        if self.in_ibd() || !self.tip_younger_than(RECENT_HEADER_AGE) {
            if self.segments.is_none() {
                self.start_segments();
            }
            if self.segments.is_some() {
                self.schedule_segments();
                self.update_state();
                return;
            }
            let behind = self.clock.unix.saturating_sub(self.chain.tip_header().time);
            let peers = self.peers.iter_mut().map(|(id, p)| (*id, &mut p.hs));
            let chosen = self
                .header_sync
                .choose(peers, exclude, behind, self.clock.now);
            if let Some(id) = chosen {
                debug!(peer = %id, ours = self.chain.height(), "headers sync from peer");
                self.set_pipelining(id, true);
                // Through MaybeSendGetHeaders, as Core starts sync: a peer asked already (an
                // announcement, a new peer on a recent tip) is not asked twice; its answer
                // is the session's first batch.
                let locator = self.chain.locator();
                self.maybe_getheaders(id, locator);
            }
        }
        self.update_state();
    }

    /// Starts sync along the header hints when some lie above our tip, agree with our chain
    /// and some peer claims more than we have.
    pub(super) fn start_segments(&mut self) {
        let config = self.config.clone();
        if self.hints_off || config.header_hints.is_empty() {
            return;
        }
        let ours = self.chain.height();
        if !self.peers.values().any(|p| p.hs.offered_height() > ours) {
            return;
        }
        let chain = &self.chain;
        let Some(segments) = SegmentSync::new(&config.header_hints, ours, chain.tip(), |h| {
            chain.hash_at_height(h)
        }) else {
            return;
        };
        info!(
            from = ours,
            to = segments.target(),
            peers = self.peers.len(),
            "headers sync along header hints, from many peers at once"
        );
        self.segments = Some(segments);
    }

    /// The peers segments may be asked of, with the heights they claim.
    pub(super) fn segment_peers(&self) -> Vec<(PeerId, u32)> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.hs.failed() && p.presync.is_none())
            .map(|(id, p)| (*id, p.hs.offered_height()))
            .collect()
    }

    /// Sends segment requests to peers with room; ends the hinted sync when every segment is
    /// in, and gives hints up when a segment is left that no peer can serve.
    pub(super) fn schedule_segments(&mut self) {
        let peers = self.segment_peers();
        let Some(segments) = self.segments.as_mut() else {
            return;
        };
        if segments.done() {
            self.segments = None;
            info!(
                height = self.chain.height(),
                "headers along the hints are in; the rest from one peer"
            );
            self.maybe_start_sync(None);
            if self.header_sync.sync_peer().is_none() {
                // Our tip is recent now, so no sync session starts: the headers past the
                // last hint are asked of every peer that offers more (one getheaders each).
                let ours = self.chain.height();
                let more: Vec<PeerId> = self
                    .peers
                    .iter()
                    .filter(|(_, p)| p.hs.offered_height() > ours)
                    .map(|(id, _)| *id)
                    .collect();
                for id in more {
                    let locator = self.chain.locator();
                    self.maybe_getheaders(id, locator);
                }
            }
            return;
        }
        // One getheaders in flight per peer (Core's MaybeSendGetHeaders): a peer asked a
        // segment, or anything else, is asked no segment until it answers.
        let idle: Vec<(PeerId, u32)> = peers
            .iter()
            .copied()
            .filter(|(id, _)| {
                self.peers
                    .get(id)
                    .is_some_and(|p| !p.hs.awaiting(self.clock.now))
            })
            .collect();
        let requests = segments.assign(&idle, self.clock.now);
        if requests.is_empty() && segments.asked() == 0 && segments.stuck(&peers) {
            self.give_up_hints("no connected peer can serve the next segment");
            return;
        }
        for r in requests {
            if let Some(p) = self.peers.get_mut(&r.peer) {
                p.hs.asked(self.clock.now);
                self.out.send(
                    p.id,
                    NetworkMessage::GetHeaders(GetHeadersMessage {
                        version: self.profile.protocol_version,
                        locator_hashes: vec![r.from],
                        stop_hash: r.stop,
                    }),
                );
            }
        }
    }

    /// Hints are not used any more; sync goes on from one peer.
    pub(super) fn give_up_hints(&mut self, why: &str) {
        warn!(
            height = self.chain.height(),
            why, "header hints given up; syncing from one peer"
        );
        metrics::counter!("meshd_header_hints_abandoned_total").increment(1);
        self.segments = None;
        self.hints_off = true;
        self.maybe_start_sync(None);
    }

    /// A peer answered a segment request: validate what is ready in chain order, charge a
    /// sender whose answer did not lead to its hint, and keep the peers busy.
    pub(super) fn on_segment_answer(&mut self, id: PeerId, answer: SegmentAnswer) {
        match answer {
            SegmentAnswer::Taken => {
                metrics::counter!("meshd_header_segments_total", "outcome" => "taken").increment(1);
            }
            SegmentAnswer::Mismatch | SegmentAnswer::HintsWrong => {
                metrics::counter!("meshd_header_segments_total", "outcome" => "mismatch")
                    .increment(1);
                // Not charged yet: the hint may be what is wrong. It pays once another
                // peer's answer proves the hint (see `SegmentSync::validated`).
                debug!(peer = %id, "headers that do not lead to the header hint; asking another peer");
            }
        }
        if answer == SegmentAnswer::HintsWrong {
            self.give_up_hints("peers disagree with a hint");
            return;
        }
        while let Some((peer, batch)) = self.segments.as_mut().and_then(|s| s.next_ready()) {
            let last = batch.hashes.last().copied();
            self.accept_headers(peer, batch, false);
            let ok = last.is_some_and(|h| self.chain.is_on_best_chain(&h));
            if !ok {
                metrics::counter!("meshd_header_segments_total", "outcome" => "invalid")
                    .increment(1);
            }
            let liars = self
                .segments
                .as_mut()
                .map(|s| s.validated(ok))
                .unwrap_or_default();
            for liar in liars {
                warn!(peer = %liar, "its headers did not lead to a header hint another peer proved right");
                self.punish(liar, "header_segment_mismatch");
            }
        }
        self.schedule_segments();
    }

    /// Headers from a peer: through its presync when one runs or when the chain they extend
    /// has too little work to be stored; straight to the chain otherwise.
    pub(super) fn on_headers(&mut self, id: PeerId, headers: HashedHeaders) {
        // An answer to a segment request goes to the segments; anything else as usual.
        let headers = match self.segments.as_mut() {
            Some(seg) => match seg.on_headers(id, headers) {
                Ok(answer) => {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.hs.answered(false, self.clock.now);
                    }
                    return self.on_segment_answer(id, answer);
                }
                Err(headers) => headers,
            },
            None => headers,
        };
        // Core's ProcessHeadersMessage: a `noban` peer's headers count as validated work, so
        // no presync and no anti-DoS threshold (a continuation of its presync still goes on).
        let noban = self
            .peers
            .get(&id)
            .is_some_and(|p| self.permissions_of(p.addr.ip()).has(Permissions::NOBAN));
        let anti_dos_work = if noban { 0 } else { self.anti_dos_work() };
        let presync = self
            .peers
            .get_mut(&id)
            .and_then(|p| p.presync.as_deref_mut());
        // Before the presync is fed: whether this answers our request to the peer.
        let answer = intake::is_answer(&self.chain, presync.as_deref(), &headers.headers);
        let route = intake::route(
            &self.chain,
            presync,
            &headers.headers,
            &headers.hashes,
            anti_dos_work,
            self.clock.unix,
        );
        if let Route::Invalid(kind) = route {
            metrics::counter!("meshd_headers_rejected_total", "reason" => kind).increment(1);
            self.set_pipelining(id, false);
            self.punish(id, kind);
            return;
        }
        if let Some(p) = self.peers.get_mut(&id).filter(|_| answer) {
            // Unless its Connection asked for the next batch already (pipelining): that
            // request is in flight, and an announcement must not add a second one.
            p.hs.answered(headers.next_requested, self.clock.now);
        }
        if headers.headers.is_empty() {
            self.header_sync.progress(id, self.clock.now);
            // Core: an empty answer mid-presync means the peer has nothing more to give us
            // (it may have reorganised to our chain); its presync is dropped, uncharged.
            if let Some(p) = self.peers.get_mut(&id) {
                if p.presync.take().is_some() {
                    metrics::counter!("meshd_presync_aborted_total", "reason" => "empty_headers")
                        .increment(1);
                    debug!(peer = %id, "headers presync ended: the peer sent no headers");
                }
            }
        }
        let step = match route {
            Route::Invalid(_) | Route::Chain => return self.accept_headers(id, headers, true),
            Route::Dropped => {
                metrics::counter!("meshd_presync_aborted_total", "reason" => "presync_low_work")
                    .increment(1);
                return;
            }
            Route::LowWork => PresyncStep::Abort(PresyncError::LowWork),
            Route::Presync(step) => step,
            Route::NewPresync(ps, step) => {
                info!(peer = %id, reached = ps.height(), "headers presync: the chain must show its work before it is stored");
                if let Some(p) = self.peers.get_mut(&id) {
                    p.presync = Some(ps);
                }
                step
            }
        };
        self.header_sync.progress(id, self.clock.now);
        if headers.next_requested {
            // Presync asks for its own batches; the one the Connection asked for is
            // presync's next when it asks from this batch's end.
            self.set_pipelining(id, false);
            if let (PresyncStep::Request(locator), Some(last)) = (&step, headers.hashes.last()) {
                if locator.first() == Some(last) {
                    return;
                }
            }
        }
        self.apply_presync(id, step)
    }

    /// Turns the Connection's header pipelining for `id` on or off. On only where presync
    /// cannot start (our chain has the minimum work, and the peer is not presyncing), since
    /// presync asks for its own batches.
    pub(super) fn set_pipelining(&mut self, id: PeerId, on: bool) {
        if let Some(p) = self.peers.get(&id) {
            let on = on && p.presync.is_none() && self.chain.tip_work() >= self.min_work();
            self.out.push(Action::PipelineHeaders(id, on));
        }
    }

    /// The minimum chain work in force.
    pub(super) fn min_work(&self) -> u128 {
        self.config
            .minimum_chain_work
            .unwrap_or_else(|| self.profile.min_chain_work())
    }

    /// Work a chain must show before its headers are stored (Core's anti-DoS threshold):
    /// the minimum chain work, or our tip's work less 144 blocks of it, whichever is more.
    pub(super) fn anti_dos_work(&self) -> u128 {
        let recent = HeaderChain::header_work(&self.chain.tip_header())
            .saturating_mul(u128::from(ANTI_DOS_RECENT_BLOCKS));
        self.min_work()
            .max(self.chain.tip_work().saturating_sub(recent))
    }

    pub(super) fn apply_presync(&mut self, id: PeerId, step: PresyncStep) {
        match step {
            PresyncStep::Request(locator) => self.getheaders_from(id, locator),
            PresyncStep::Release { headers, next } => {
                metrics::counter!("meshd_presync_released_total").increment(headers.len() as u64);
                self.accept_headers(id, HashedHeaders::new(headers), false);
                match next {
                    Some(locator) => self.getheaders_from(id, locator),
                    None => {
                        info!(peer = %id, height = self.chain.height(), "headers presync done; the chain showed enough work");
                        if let Some(p) = self.peers.get_mut(&id) {
                            p.presync = None;
                        }
                        if self.header_sync.is_sync_peer(id) {
                            self.set_pipelining(id, true);
                        }
                        let locator = self.chain.locator();
                        self.getheaders_from(id, locator);
                    }
                }
            }
            PresyncStep::Abort(e) => {
                metrics::counter!("meshd_presync_aborted_total", "reason" => e.kind()).increment(1);
                if let Some(p) = self.peers.get_mut(&id) {
                    debug!(peer = %p.addr, id = %id, reason = %e, "headers not stored: {e}");
                    p.presync = None;
                }
                if intake::presync_abort_is_charged(&e) {
                    self.punish(id, e.kind());
                }
                if self.header_sync.is_sync_peer(id) {
                    self.sync_batch_ended(id);
                }
            }
        }
    }

    /// The sync peer sent a short batch: it has nothing more. Still in initial sync (its
    /// chain too is old, or it was behind), another peer not tried yet is asked.
    pub(super) fn sync_batch_ended(&mut self, id: PeerId) {
        self.set_pipelining(id, false);
        self.header_sync.end(id);
        self.maybe_start_sync(Some(id));
    }

    /// Stores headers in the chain; `continue_sync`: this was the sync peer's answer to our
    /// `getheaders`, so ask for more or end the sync round (presync releases decide that
    /// themselves).
    pub(super) fn accept_headers(
        &mut self,
        id: PeerId,
        hashed: HashedHeaders,
        continue_sync: bool,
    ) {
        let from_sync_peer = continue_sync && self.header_sync.is_sync_peer(id);
        let HashedHeaders {
            headers,
            hashes,
            next_requested,
        } = hashed;
        let full_batch = headers.len() >= MAX_HEADERS_PER_MESSAGE;
        if let (true, true, false, Some(last)) =
            (from_sync_peer, full_batch, next_requested, hashes.last())
        {
            // Pipelined: the next batch is asked for before this one is validated, so the
            // peer works while we do. If this one turns out bad, the answer does not connect
            // and is handled as any unconnecting batch (the peer is punished for this one).
            let mut locator = vec![*last];
            locator.extend(self.chain.locator());
            self.getheaders_from(id, locator);
        }
        let old_tip = self.chain.tip();
        let old_height = self.chain.height();
        // Hashed once, by the Connection; the chain and the store take the hash along.
        let outcome = intake::store(&mut self.chain, &headers, &hashes, self.clock.unix);
        if let Some(depth) = outcome.reorg_depth {
            info!(depth, new_tip = %self.chain.tip(), "chain reorganised");
            // Transactions of the old branch's blocks may be unconfirmed again.
            self.recent_confirmed.reset();
        }
        let stored = outcome.new;
        let mut refused = false;
        match outcome.end {
            intake::End::Whole => {}
            intake::End::Unconnecting => {
                // An announcement we cannot connect: ask for the gap, at most one request in
                // flight, and no charge (Core master's HandleUnconnectingHeaders:
                // announcements cross, and honest peers send them).
                metrics::counter!("meshd_headers_unconnecting_total").increment(1);
                // Core's HandleUnconnectingHeaders: what it announced counts once its header
                // is in (UpdateBlockAvailability).
                if let (Some(&last), false) = (hashes.last(), self.header_from_cmpct) {
                    self.peer_announced_unknown(id, last);
                }
                // The sync peer too: a pipelined request after a refused batch was
                // cleared when that batch was refused, so its unconnecting answer is asked
                // past once, and a stream of them asks nothing more.
                self.maybe_getheaders(id, self.chain.locator());
                return;
            }
            intake::End::Refused(kind) => {
                refused = true;
                metrics::counter!("meshd_headers_rejected_total", "reason" => kind).increment(1);
                // Nothing more is fetched ahead from a peer that sent a bad header, and the
                // request pipelined past the bad batch is void: its answer cannot connect, so
                // it may be asked past once (the next unconnecting batch is not an answer).
                self.set_pipelining(id, false);
                if from_sync_peer {
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.hs.answered(false, self.clock.now);
                    }
                }
                self.punish(id, kind);
            }
        }
        if !stored.is_empty() {
            // Blocks peers announced before we had their headers may be among these.
            self.resolve_announced();
            metrics::counter!("meshd_headers_received_total").increment(stored.len() as u64);
            self.out.push(Action::Store(stored));
            // Progress is new headers only: re-sent ones do not keep a stalled peer on.
            self.header_sync.progress(id, self.clock.now);
        }
        // What the peer has: the last header it sent, new or known.
        if let Some(&last) = hashes.last() {
            if let Some(last_height) = self.chain.height_of(&last) {
                self.out.push(Action::SyncedHeight(id, last_height));
                if let Some(p) = self.peers.get_mut(&id) {
                    p.hs.saw(last_height);
                    // It has every ancestor of what it sent: knowing the last is enough not to
                    // announce any of them back.
                    p.learn(last.to_byte_array());
                    if hashes.len() <= MAX_BLOCKS_IN_FLIGHT_PER_PEER {
                        // An announcement: it has these blocks, or will.
                        for h in &hashes {
                            p.announced(*h);
                        }
                    }
                }
                // Shown by `headers` (Core serves and announces its active chain only), but
                // not by a `cmpctblock`, which may precede validation, nor with a header of
                // the batch refused.
                let shown = !self.header_from_cmpct && !refused;
                self.peer_has_block(id, last, shown);
            }
        }
        if headers.len() <= MAX_BLOCKS_IN_FLIGHT_PER_PEER {
            // An announcement (or a short answer): the peer has these blocks, or will.
            self.fetch_blocks_from(&hashes, id);
        }
        if from_sync_peer {
            // A full batch asked for the next one already; a short one is the end.
            if !full_batch {
                self.sync_batch_ended(id);
            }
        } else if continue_sync {
            let mut asked_on = false;
            if full_batch {
                // Core: a full message from any peer means it may have more; ask it on.
                if let Some(&last) = hashes.last().filter(|h| self.chain.contains(h)) {
                    let mut locator = vec![last];
                    locator.extend(self.chain.locator());
                    self.maybe_getheaders(id, locator);
                    asked_on = true;
                }
            }
            // Streaming only while its batches move our tip: re-sent known headers (cheap for
            // a peer to send) cannot keep the node out of Synced.
            let streaming = asked_on && self.chain.tip() != old_tip;
            let changed = self
                .peers
                .get_mut(&id)
                .is_some_and(|p| p.hs.set_streaming(streaming));
            if changed {
                self.update_state();
            }
        }
        if self.chain.tip() != old_tip {
            self.update_state();
            self.out.event(NodeEvent::HeadersSynced {
                height: self.chain.height(),
                tip: self.chain.tip().to_string(),
                synced: self.state == SyncState::Synced,
            });
            self.on_new_tip(id, old_tip, old_height);
        }
    }
}
