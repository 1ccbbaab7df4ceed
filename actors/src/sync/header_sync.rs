//! Headers-first sync as a sans-IO core (Core's per-peer header state and sync session of
//! net_processing): what each peer showed and was asked and when, which peer we sync from,
//! when that session has stalled or run out of time, whether the node is in initial sync,
//! and the state and progress shown. It takes events and the time (`now`) and answers
//! questions or returns verdicts; the Sync actor sends the `getheaders` and feeds the chain.
//!
//! - **One `getheaders` in flight per peer** ([`PeerHeaders::try_ask`], Core's
//!   `MaybeSendGetHeaders`): a peer asked less than [`HEADERS_RESPONSE_TIME`] ago and that
//!   has not answered is asked nothing more, however many announcements cross.
//! - **One sync session** ([`HeaderSync`]): in initial sync, an outbound peer where one
//!   exists (then the best chain it showed) that was never a sync peer is chosen; the
//!   session stalls after `sync-stall-timeout` without new headers, and fails after Core's
//!   15 minutes plus 1 ms per expected header while our tip is still old (the peer is then
//!   never chosen again).
//! - **Initial sync** ([`InitialSync`], Core's `IsInitialBlockDownload`): from our own chain
//!   only (minimum work and a recent tip), latched off once over; a peer's claimed start
//!   height is shown, never trusted.

use std::time::{Duration, Instant};

use crate::msg::SyncState;
use crate::shared::peers::PeerId;

/// How long a peer asked for headers has to answer before it may be asked again (Core:
/// `HEADERS_RESPONSE_TIME`, in `MaybeSendGetHeaders`).
pub const HEADERS_RESPONSE_TIME: Duration = Duration::from_secs(120);
/// Base of the time a sync peer gets to deliver our missing headers (Core:
/// `HEADERS_DOWNLOAD_TIMEOUT_BASE`).
pub const HEADERS_SYNC_TIMEOUT_BASE: Duration = Duration::from_secs(15 * 60);
/// Added per header expected beyond our tip (Core: `HEADERS_DOWNLOAD_TIMEOUT_PER_HEADER`).
pub const HEADERS_SYNC_TIMEOUT_PER_HEADER: Duration = Duration::from_millis(1);
/// Block interval of every network meshd speaks (Core's `nPowTargetSpacing`), for the
/// expected header count and the progress estimate.
pub const POW_TARGET_SPACING: u32 = 600;

/// What Sync knows of one peer's headers (Core's `CNodeState` and `Peer` header fields).
#[derive(Debug, Clone)]
pub struct PeerHeaders {
    /// Height of the best header it sent us or that we know it has (never its claim).
    pub best_height: u32,
    /// The start height its version claimed: shown, and used only to pick whom to ask a
    /// header hint segment (a false claim costs it a failed segment, never our chain).
    pub claimed_height: u32,
    /// It connected to us.
    pub inbound: bool,
    /// It was our sync peer and missed its deadline: never chosen again.
    failed: bool,
    /// It was chosen as sync peer once (Core's `fSyncStarted`).
    started: bool,
    /// When it was last asked for headers and has not answered (Core's
    /// `m_last_getheaders_timestamp`).
    asked_at: Option<Instant>,
    /// Its last answer was a full batch that moved our tip and it was asked on: it is
    /// streaming us headers, so the node is syncing even outside a session.
    streaming: bool,
}

impl PeerHeaders {
    /// A peer that just finished its handshake.
    pub fn new(inbound: bool, claimed_height: u32) -> Self {
        PeerHeaders {
            best_height: 0,
            claimed_height,
            inbound,
            failed: false,
            started: false,
            asked_at: None,
            streaming: false,
        }
    }

    /// The height it may serve headers up to: what it showed, or more if it claimed more.
    pub fn offered_height(&self) -> u32 {
        self.best_height.max(self.claimed_height)
    }

    /// It sent (or is known to have) a header at `height`.
    pub fn saw(&mut self, height: u32) {
        self.best_height = self.best_height.max(height);
    }

    /// Whether it was asked less than [`HEADERS_RESPONSE_TIME`] ago and has not answered.
    pub fn awaiting(&self, now: Instant) -> bool {
        self.asked_at
            .is_some_and(|at| now.saturating_duration_since(at) < HEADERS_RESPONSE_TIME)
    }

    /// Core's `MaybeSendGetHeaders`: true (and recorded as asked) unless a request is in
    /// flight already.
    pub fn try_ask(&mut self, now: Instant) -> bool {
        if self.awaiting(now) {
            return false;
        }
        self.asked_at = Some(now);
        true
    }

    /// Asked whatever was asked before: the request follows an answer (a presync's next
    /// batch, the sync peer's next batch) or replaces one.
    pub fn asked(&mut self, now: Instant) {
        self.asked_at = Some(now);
    }

    /// It answered; `next_requested`: its Connection asked for the next batch already
    /// (pipelining), so a request is in flight again from `now`.
    pub fn answered(&mut self, next_requested: bool, now: Instant) {
        self.asked_at = next_requested.then_some(now);
    }

    /// Whether its full batches are moving our tip and it was asked for more.
    pub fn streaming(&self, now: Instant) -> bool {
        self.streaming && self.awaiting(now)
    }

    /// Records whether its last answer streamed (see [`Self::streaming`]); true when that
    /// changed.
    pub fn set_streaming(&mut self, streaming: bool) -> bool {
        std::mem::replace(&mut self.streaming, streaming) != streaming
    }

    /// Whether it failed as our sync peer.
    pub fn failed(&self) -> bool {
        self.failed
    }
}

/// Headers sync from one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    /// The sync peer.
    pub peer: PeerId,
    /// When it was chosen.
    started: Instant,
    /// When it last sent new headers (or was chosen).
    last_progress: Instant,
    /// Headers expected from it: one per block interval since our best header's time
    /// (Core's estimate; what the peer claims does not count).
    pub expected: u32,
}

impl Session {
    /// Time it gets to bring our best header up to date (Core: 15 minutes plus a
    /// millisecond per expected header).
    pub fn deadline(&self) -> Duration {
        HEADERS_SYNC_TIMEOUT_BASE + HEADERS_SYNC_TIMEOUT_PER_HEADER * self.expected
    }
}

/// Why a session ended on a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// No new headers for `sync-stall-timeout`.
    Stalled(PeerId),
    /// Our tip is still old after the session's deadline: the peer is marked failed.
    MissedDeadline(PeerId, u32),
}

/// The sync session, if one runs. See the module documentation.
#[derive(Debug, Default)]
pub struct HeaderSync {
    session: Option<Session>,
}

impl HeaderSync {
    /// The peer we sync from.
    pub fn sync_peer(&self) -> Option<PeerId> {
        self.session.map(|s| s.peer)
    }

    /// Whether `peer` is the sync peer.
    pub fn is_sync_peer(&self, peer: PeerId) -> bool {
        self.sync_peer() == Some(peer)
    }

    /// Picks a sync peer among `peers` when none runs: never `exclude`, a failed peer or
    /// one chosen before; outbound first, then the best chain it showed, then the oldest
    /// connection. `behind_secs`: how old our best header is. Returns the peer chosen.
    pub fn choose<'a>(
        &mut self,
        peers: impl Iterator<Item = (PeerId, &'a mut PeerHeaders)>,
        exclude: Option<PeerId>,
        behind_secs: u32,
        now: Instant,
    ) -> Option<PeerId> {
        if self.session.is_some() {
            return None;
        }
        let (id, p) = peers
            .filter(|(id, p)| Some(*id) != exclude && !p.failed && !p.started)
            .max_by_key(|(id, p)| (!p.inbound, p.best_height, std::cmp::Reverse(id.0)))?;
        p.started = true;
        self.session = Some(Session {
            peer: id,
            started: now,
            last_progress: now,
            expected: behind_secs / POW_TARGET_SPACING,
        });
        Some(id)
    }

    /// `peer` sent new headers (or, as sync peer, an answer): its session is not stalled.
    pub fn progress(&mut self, peer: PeerId, now: Instant) {
        if let Some(s) = self.session.as_mut().filter(|s| s.peer == peer) {
            s.last_progress = now;
        }
    }

    /// Ends `peer`'s session (a short batch: it has nothing more; or it left). True when it
    /// was the sync peer.
    pub fn end(&mut self, peer: PeerId) -> bool {
        if self.is_sync_peer(peer) {
            self.session = None;
            return true;
        }
        false
    }

    /// Stall and deadline: the session ends when it made no progress for `stall_timeout`,
    /// or when it ran past its deadline while our tip is still old (`tip_recent` false);
    /// either way the peer, whose state is `peer_state`, is marked failed. The caller picks the
    /// next peer.
    pub fn check(
        &mut self,
        now: Instant,
        stall_timeout: Duration,
        tip_recent: bool,
        peer_state: Option<&mut PeerHeaders>,
    ) -> Option<SessionEnd> {
        let s = self.session?;
        if now.saturating_duration_since(s.last_progress) >= stall_timeout {
            self.session = None;
            // A stalled sync peer is not asked again, for a session or a segment.
            if let Some(p) = peer_state {
                p.failed = true;
            }
            return Some(SessionEnd::Stalled(s.peer));
        }
        if now.saturating_duration_since(s.started) >= s.deadline() && !tip_recent {
            self.session = None;
            if let Some(p) = peer_state {
                p.failed = true;
            }
            return Some(SessionEnd::MissedDeadline(s.peer, s.expected));
        }
        None
    }
}

/// Core's `IsInitialBlockDownload`, latched: over once our tip has the minimum chain work
/// and is at most `max-tip-age` old, and over until a restart.
#[derive(Debug, Default)]
pub struct InitialSync {
    over: bool,
}

impl InitialSync {
    /// Whether the node is in initial sync, from our chain alone (the caller may log the
    /// end through [`Self::is_over`] before and after).
    pub fn check(
        &mut self,
        tip_work: u128,
        min_work: u128,
        tip_age_secs: u32,
        max_age_secs: u32,
    ) -> bool {
        if !self.over && tip_work >= min_work && tip_age_secs <= max_age_secs {
            self.over = true;
        }
        !self.over
    }

    /// Whether initial sync is over.
    pub fn is_over(&self) -> bool {
        self.over
    }
}

/// Header sync progress from our own chain (Core's header-sync estimate): our height
/// against it plus one block per interval since our tip's time.
pub fn progress(height: u32, tip_age_secs: u32) -> f64 {
    let height = f64::from(height);
    let behind = f64::from(tip_age_secs / POW_TARGET_SPACING);
    if height + behind == 0.0 {
        return 1.0;
    }
    (height / (height + behind)).min(1.0)
}

/// The state shown: loading while headers.dat loads; syncing while a session, segments or
/// a streaming peer run; synced out of initial sync; idle otherwise (in initial sync with
/// nobody to sync from).
pub fn sync_state(loading: bool, in_initial_sync: bool, active: bool) -> SyncState {
    match (loading, in_initial_sync, active) {
        (true, _, _) => SyncState::Loading,
        (false, _, true) => SyncState::Syncing,
        (false, false, false) => SyncState::Synced,
        (false, true, false) => SyncState::Idle,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn one_getheaders_in_flight_until_answered_or_two_minutes_pass() {
        let t0 = Instant::now();
        let mut p = PeerHeaders::new(false, 0);
        assert!(p.try_ask(t0));
        assert!(
            !p.try_ask(t0 + Duration::from_secs(1)),
            "an announcement crossing"
        );
        p.answered(false, t0 + Duration::from_secs(2));
        assert!(p.try_ask(t0 + Duration::from_secs(3)));
        assert!(!p.try_ask(t0 + Duration::from_secs(100)));
        assert!(p.try_ask(t0 + Duration::from_secs(3) + HEADERS_RESPONSE_TIME));
        // A pipelined answer means the next request is in flight.
        p.answered(true, t0 + Duration::from_secs(200));
        assert!(!p.try_ask(t0 + Duration::from_secs(201)));
    }

    #[test]
    fn an_outbound_peer_is_chosen_first_and_never_twice() {
        let t0 = Instant::now();
        let mut peers = [
            (PeerId(1), PeerHeaders::new(true, 1_000_000)),
            (PeerId(2), PeerHeaders::new(false, 0)),
        ];
        peers[0].1.saw(500);
        let mut hs = HeaderSync::default();
        let chosen = hs.choose(peers.iter_mut().map(|(i, p)| (*i, p)), None, 6000, t0);
        assert_eq!(
            chosen,
            Some(PeerId(2)),
            "outbound first, whatever the inbound claims"
        );
        assert!(hs.end(PeerId(2)));
        let chosen = hs.choose(peers.iter_mut().map(|(i, p)| (*i, p)), None, 6000, t0);
        assert_eq!(chosen, Some(PeerId(1)));
        hs.end(PeerId(1));
        assert_eq!(
            hs.choose(peers.iter_mut().map(|(i, p)| (*i, p)), None, 6000, t0),
            None,
            "every peer had its turn"
        );
    }

    #[test]
    fn a_session_stalls_without_progress_and_fails_past_its_deadline() {
        let t0 = Instant::now();
        let stall = Duration::from_secs(30);
        let mut p = PeerHeaders::new(false, 0);
        let mut hs = HeaderSync::default();
        // Ten blocks behind: 15 min + 10 ms.
        hs.choose(std::iter::once((PeerId(1), &mut p)), None, 6000, t0);
        assert_eq!(
            hs.check(t0 + Duration::from_secs(29), stall, false, Some(&mut p)),
            None
        );
        assert_eq!(
            hs.check(t0 + stall, stall, false, Some(&mut p)),
            Some(SessionEnd::Stalled(PeerId(1)))
        );
        assert!(
            p.failed(),
            "a stalled sync peer is marked failed (the issue: failed and replaced)"
        );
        let mut q = PeerHeaders::new(false, 0);
        hs.choose(std::iter::once((PeerId(2), &mut q)), None, 6000, t0);
        let mut now = t0;
        while now < t0 + HEADERS_SYNC_TIMEOUT_BASE {
            now += Duration::from_secs(20);
            hs.progress(PeerId(2), now);
            assert_eq!(hs.check(now, stall, false, Some(&mut q)), None);
        }
        now += Duration::from_secs(1);
        hs.progress(PeerId(2), now);
        // Progress, but our tip recent: the deadline does not apply.
        assert_eq!(hs.check(now, stall, true, Some(&mut q)), None);
        assert_eq!(
            hs.check(now, stall, false, Some(&mut q)),
            Some(SessionEnd::MissedDeadline(PeerId(2), 10))
        );
        assert!(q.failed());
        assert_eq!(hs.sync_peer(), None);
    }

    #[test]
    fn initial_sync_is_decided_from_our_chain_and_latched() {
        let mut ibd = InitialSync::default();
        assert!(ibd.check(10, 100, 0, 86_400), "too little work");
        assert!(ibd.check(100, 100, 90_000, 86_400), "tip too old");
        assert!(!ibd.check(100, 100, 60, 86_400));
        assert!(!ibd.check(0, 100, 1_000_000, 86_400), "latched");
    }

    #[test]
    fn progress_comes_from_our_tip_not_a_peer_claim() {
        assert_eq!(progress(0, 0), 1.0);
        assert_eq!(progress(100, 0), 1.0);
        assert!((progress(100, 600 * 100) - 0.5).abs() < 1e-9);
        assert_eq!(sync_state(true, false, true), SyncState::Loading);
        assert_eq!(sync_state(false, true, true), SyncState::Syncing);
        assert_eq!(sync_state(false, false, false), SyncState::Synced);
        assert_eq!(sync_state(false, true, false), SyncState::Idle);
    }

    proptest! {
        /// Under any interleaving of announcements, answers and time: between two answers a
        /// peer is asked at most once per HEADERS_RESPONSE_TIME.
        #[test]
        fn never_two_requests_in_flight(ops in proptest::collection::vec((0u8..3, 0u64..90), 0..400)) {
            let t0 = Instant::now();
            let mut now = t0;
            let mut p = PeerHeaders::new(false, 0);
            let mut last_sent: Option<Instant> = None;
            for (op, secs) in ops {
                now += Duration::from_secs(secs);
                match op {
                    0 => {
                        if p.try_ask(now) {
                            if let Some(at) = last_sent {
                                prop_assert!(now.duration_since(at) >= HEADERS_RESPONSE_TIME,
                                    "asked again {:?} after an unanswered request", now.duration_since(at));
                            }
                            last_sent = Some(now);
                        }
                    }
                    1 => { p.answered(false, now); last_sent = None; }
                    _ => { p.answered(true, now); last_sent = Some(now); }
                }
                prop_assert_eq!(p.awaiting(now), last_sent.is_some_and(|at| now.duration_since(at) < HEADERS_RESPONSE_TIME));
            }
        }

        /// A session is only ever with a peer never chosen before, never failed and never
        /// excluded, whatever the order of choices, progress, ends and time.
        #[test]
        fn sessions_never_repeat_a_peer(ops in proptest::collection::vec((0u8..4, 0u64..5, 0u64..2000), 0..200)) {
            let t0 = Instant::now();
            let mut now = t0;
            let stall = Duration::from_secs(120);
            let mut peers: Vec<(PeerId, PeerHeaders)> = (0..5).map(|i| (PeerId(i), PeerHeaders::new(i % 2 == 0, 0))).collect();
            let mut hs = HeaderSync::default();
            let mut chosen_before: Vec<PeerId> = Vec::new();
            for (op, who, secs) in ops {
                now += Duration::from_secs(secs);
                match op {
                    0 => {
                        let exclude = Some(PeerId(who));
                        let had = hs.sync_peer();
                        if let Some(id) = hs.choose(peers.iter_mut().map(|(i, p)| (*i, p)), exclude, 600_000, now) {
                            prop_assert!(had.is_none());
                            prop_assert!(Some(id) != exclude);
                            prop_assert!(!chosen_before.contains(&id));
                            chosen_before.push(id);
                        }
                    }
                    1 => hs.progress(PeerId(who), now),
                    2 => { hs.end(PeerId(who)); }
                    _ => {
                        let sp = hs.sync_peer();
                        let state = sp.and_then(|id| peers.iter_mut().find(|(i, _)| *i == id)).map(|(_, p)| p);
                        if let Some(end) = hs.check(now, stall, false, state) {
                            prop_assert!(hs.sync_peer().is_none());
                            let id = match end { SessionEnd::Stalled(id) | SessionEnd::MissedDeadline(id, _) => id };
                            prop_assert_eq!(Some(id), sp);
                        }
                    }
                }
            }
        }
    }
}
