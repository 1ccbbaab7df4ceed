//! The Sync actor: the header chain, headers-first sync, block and transaction relay, and
//! regtest block generation. It learns which peers exist from the Manager alone.
//!
//! The decisions are the sync core's ([`engine::SyncCore`], sans-IO, over virtual time);
//! this actor owns what the core must not: the Connections' mailboxes (it carries the core's
//! [`engine::Action`]s out), headers.dat (loaded in steps, appended, rewritten after a failed
//! write), the timer, messages that overtook their peer's arrival or wait for the chain to
//! load, and the shared status.
//!
//! - **Headers-first sync.** An outbound peer where one exists (then the most claimed start
//!   height) is asked for headers with a block locator; full batches (2000) are followed by
//!   the next request until a batch comes back short. A sync peer that does not answer within
//!   `sync-stall-timeout`, stops short of the height it claimed, or misses its deadline
//!   (15 min + 1 ms per header) is replaced and not chosen again. Whether the node is synced
//!   is decided from our own chain (Core's IsInitialBlockDownload), never from a peer's
//!   claim. Once synced, peers from 70012 are sent `sendheaders` (BIP130); an `inv` for an
//!   unknown block leads to `getheaders` unless one is in flight to that peer. meshd serves
//!   `getheaders` and `getblocks` from its chain.
//! - **Headers** are validated by [`HeaderChain`](chain::HeaderChain) and appended to the crash-safe
//!   [`HeaderStore`]. A chain below the anti-DoS work (the network's minimum chain work, or
//!   our tip less 144 blocks) goes through presync first ([`chain::presync`]): nothing of it
//!   is stored until it has shown the work. Invalid headers cost the sender (see
//!   [`crate::peer::misbehavior`]).
//! - **Blocks** (`--blocks tip`): on every tip change, the blocks of the new branch are
//!   fetched by hash from the peers that announced them (at most 16 in flight per peer,
//!   asked of another announcer when one stalls, expires or its peer leaves), checked
//!   against their header ([`block_check`]: Core's IsBlockMutated), `BlockReceived` is
//!   published, the last `keep-blocks` are kept, serialized once, to answer `getdata`, and
//!   the block is announced onwards; `notfound` otherwise.
//! - **Transactions** (`engine/relay.rs`): `inv` → `getdata` → `tx` (by wtxid with BIP339
//!   peers) through Core's context-free checks ([`tx_check`]) into a bounded, expiring relay
//!   pool; requests follow Core's TxRequestTracker ([`txrequest`]); what a validating peer
//!   vouched for is announced (`--tx-relay`) after a Poisson delay (Core's trickling; off
//!   with `--no-trickle`). A peer's `feefilter` is applied whenever the fee is known.
//! - **Regtest generation**: [`SyncMsg::Generate`] mines blocks with a BIP34 coinbase and
//!   trivial proof of work on our tip and announces them.

pub mod block_check;
pub mod blocks;
pub mod bloom;
pub mod chain;
pub mod compact;
pub mod engine;
pub mod header_sync;
pub mod hints;
pub mod intake;
pub mod mine;
pub mod pool;
pub mod progress;
pub mod requests;
pub mod tx_check;
pub mod txrequest;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, error, info, warn};

use crate::context::NodeContext;
use crate::msg::{ConnectionMsg, SyncInput, SyncMsg};
use crate::shared::peers::PeerId;
use crate::sync::chain::store::{
    HeaderLoad, HeaderStore, SyncReport, COMPACT_STALE_SHARE, LOAD_STEP_RECORDS,
};
use crate::wire::Message;
use engine::{Action, Clock, NewPeer, SyncCore};
use futures_util::FutureExt;

/// How often a header file that could not be written (a full disk) is rewritten from the
/// chain: each try writes the whole best chain, so not more often than this.
const STORE_RETRY_INTERVAL: Duration = Duration::from_secs(5);
/// How long the stop waits for a running fsync of headers.dat before syncing again itself
/// (a disk that takes longer is hung, and the stop must still end).
const STOP_SYNC_WAIT: Duration = Duration::from_secs(10);
/// Messages Sync holds from peers the Manager has not announced yet.
///
/// # Security
/// Only the first few messages after a handshake can overtake the Manager's PeerUp; the cap
/// keeps a burst from a peer that is never announced from growing without bound.
const MAX_EARLY_INPUTS: usize = 256;
/// How long such a message waits for its PeerUp before it is dropped.
const EARLY_INPUT_TTL: Duration = Duration::from_secs(5);
/// Messages held while headers.dat loads (handled once it is in).
///
/// # Security
/// Each peer's share is bounded by its reader credit already; this caps the sum however many
/// peers connect during the load (which takes about a second for mainnet's chain).
const MAX_HELD_WHILE_LOADING: usize = 10_000;
/// How often the Sync actor checks stalls, expiry and trickle timers.
const SYNC_TICK: Duration = Duration::from_millis(100);
/// How long after a peer leaves freed memory is handed back to the system: long enough for
/// its last messages to be dropped, and at most one release per this long however many peers
/// come and go.
const RELEASE_MEMORY_DELAY: Duration = Duration::from_secs(1);

/// The result of a blocking job once it has finished, taking it out of `slot`; `None` while
/// it runs (or when there is none), the job staying in `slot`.
fn finished<T>(
    slot: &mut Option<tokio::task::JoinHandle<T>>,
) -> Option<Result<T, tokio::task::JoinError>> {
    let handle = slot.as_mut()?;
    let done = poll_finished(handle)?;
    *slot = None;
    Some(done)
}

/// Polls a finished job's handle once. Unconstrained: a handle polled under an exhausted
/// cooperative budget (a burst of messages handled without yielding) answers `Pending` even
/// once its job is done, and the report would be lost with the handle.
fn poll_finished<T>(
    handle: &mut tokio::task::JoinHandle<T>,
) -> Option<Result<T, tokio::task::JoinError>> {
    if !handle.is_finished() {
        return None;
    }
    tokio::task::unconstrained(handle).now_or_never()
}

/// The Sync actor.
pub struct Sync;

/// The vouched tip's file in the network's data directory (see
/// [`SyncCore::vouched_tip`]).
pub const VOUCHED_FILE: &str = "vouched.dat";
/// Its kind in the state-file header.
pub const VOUCHED_KIND: [u8; 4] = *b"VOCH";
/// Its format version: the height and hash of the vouched tip.
pub const VOUCHED_VERSION: u16 = 1;

/// The system's time now, for the core.
fn system_clock() -> Clock {
    Clock {
        now: Instant::now(),
        unix: crate::context::unix_now().clamp(0, u32::MAX as i64) as u32,
    }
}

/// A message that overtook its peer's PeerUp, with its share of the peer's reader credit.
struct EarlyInput {
    id: PeerId,
    at: Instant,
    input: SyncInput,
    credit: Option<OwnedSemaphorePermit>,
}

/// headers.dat being loaded, and what waits for it.
struct Loading {
    load: HeaderLoad,
    started: Instant,
    /// Messages that need the whole chain, in arrival order.
    held: VecDeque<SyncMsg>,
}

/// State of the Sync actor.
pub struct SyncActorState {
    ctx: Arc<NodeContext>,
    /// The decisions.
    core: SyncCore,
    /// Each known peer's Connection.
    connections: HashMap<PeerId, ActorRef<ConnectionMsg>>,
    /// When to hand freed memory back to the system (set when a peer leaves).
    release_memory_at: Option<Instant>,
    /// When a failed header file is next rewritten from the chain.
    store_retry_at: Option<Instant>,
    store: Option<HeaderStore>,
    /// headers.dat's group commit while it runs (see [`SyncActorState::sync_store`]).
    store_sync: Option<tokio::task::JoinHandle<SyncReport>>,
    /// The vouched tip last saved to `vouched.dat`.
    saved_vouched: Option<bitcoin::BlockHash>,
    /// A save of `vouched.dat` while it runs, and the tip it saves.
    vouched_save: Option<(
        bitcoin::BlockHash,
        tokio::task::JoinHandle<Result<(), crate::persist::PersistError>>,
    )>,
    /// Set while headers.dat loads (see [`SyncMsg::LoadStep`]).
    loading: Option<Loading>,
    /// Messages from peers not yet announced by the Manager, oldest first.
    early: VecDeque<EarlyInput>,
    timer: Option<tokio::task::JoinHandle<()>>,
    /// Generate requests done, answered once their blocks' deferred bookkeeping has run
    /// (after the yield that lets the high-bandwidth pushes leave first).
    generated: Vec<(GenerateReply, GenerateResult)>,
}

/// What a generate request is answered with: the blocks mined, or why none.
type GenerateResult = Result<Vec<bitcoin::BlockHash>, String>;
/// Where a generate request is answered.
type GenerateReply = ractor::RpcReplyPort<GenerateResult>;

impl SyncActorState {
    /// Carries out what the core decided, in order.
    fn apply(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send(id, m) => self.cast(id, ConnectionMsg::Send(Message::Network(m))),
                Action::SendShared(id, command, frame) => {
                    self.cast(id, ConnectionMsg::SendShared { command, frame })
                }
                Action::GetDataServed(id) => self.cast(id, ConnectionMsg::GetDataServed),
                Action::Punish(id, kind) => self.cast(id, ConnectionMsg::Punish(kind)),
                Action::Disconnect(id, reason) => self.cast(id, ConnectionMsg::Disconnect(reason)),
                Action::PipelineHeaders(id, on) => {
                    self.cast(id, ConnectionMsg::PipelineHeaders(on))
                }
                Action::Event(e) => self.ctx.events.publish(e),
                Action::SyncedHeight(id, h) => self
                    .ctx
                    .peers
                    .update(id, |p| p.synced_height = p.synced_height.max(h)),
                Action::LastBlockAt(id, at) => {
                    self.ctx.peers.update(id, |p| p.last_block_at = Some(at))
                }
                Action::LastTxAt(id, at) => self.ctx.peers.update(id, |p| {
                    p.last_tx_at = Some(p.last_tx_at.map_or(at, |t| t.max(at)));
                }),
                Action::BlocksInFlight(id, n) => {
                    self.ctx.peers.update(id, |p| p.blocks_in_flight = n)
                }
                Action::CompactMode(id, to, from) => self.ctx.peers.update(id, |p| {
                    p.bip152_hb_to = to;
                    p.bip152_hb_from = from;
                }),
                Action::Store(headers) => self.store_headers(&headers),
            }
        }
    }

    /// What steps left for after their actions (a new block's bookkeeping, once its push to
    /// high-bandwidth peers is on its way: see `SyncCore::defer_bookkeeping`).
    fn run_deferred(&mut self) {
        while self.core.has_deferred() {
            let more = self.core.run_deferred(system_clock());
            self.apply(more);
        }
    }

    fn cast(&self, id: PeerId, m: ConnectionMsg) {
        if let Some(c) = self.connections.get(&id) {
            let _ = c.cast(m);
        }
    }

    fn publish_status(&self) {
        let mut status = self.core.status(system_clock());
        status.store_error = self
            .store
            .as_ref()
            .and_then(|s| s.failure())
            .map(str::to_string);
        if let Ok(mut s) = self.ctx.sync_status.write() {
            *s = status;
        }
    }

    /// Appends accepted headers to headers.dat (group commit). A failed write (a full disk)
    /// is reported once; the chain goes on in memory and the file is rewritten from it later.
    fn store_headers(&mut self, stored: &[(bitcoin::block::Header, bitcoin::BlockHash)]) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        if let Err(e) = store.append(stored) {
            self.on_store_failure(e);
            return;
        }
        self.sync_store(Instant::now());
    }

    /// Takes the report of a finished fsync of headers.dat, and starts the next one when
    /// due. The fsync runs on a blocking thread: on a real disk it takes milliseconds to
    /// tens of them, and here it ran before the actions after it, a new block's push to
    /// high-bandwidth peers among them (its header is stored first).
    fn sync_store(&mut self, now: Instant) {
        if let Some(done) = finished(&mut self.store_sync) {
            if let Some(store) = self.store.as_mut() {
                let result = match done {
                    Ok(report) => store.synced(report),
                    // Its thread is gone (the runtime is stopping): the headers it held are
                    // synced again by the next one.
                    Err(_) => {
                        store.sync_lost();
                        Ok(())
                    }
                };
                if let Err(e) = result {
                    self.on_store_failure(e);
                }
            }
        }
        if self.store_sync.is_some() {
            return;
        }
        if let Some(job) = self.store.as_mut().and_then(|s| s.sync_due(now)) {
            self.store_sync = Some(tokio::task::spawn_blocking(move || job.run()));
        }
    }

    fn on_store_failure(&mut self, e: std::io::Error) {
        error!(
            error = %e,
            height = self.core.chain().height(),
            retry_s = STORE_RETRY_INTERVAL.as_secs(),
            "cannot write headers.dat; headers are kept in memory and the file is rewritten once writing works again"
        );
        metrics::counter!("meshd_store_errors_total", "file" => "headers.dat").increment(1);
        self.store_retry_at = Some(Instant::now() + STORE_RETRY_INTERVAL);
    }

    fn vouched_path(&self) -> std::path::PathBuf {
        self.ctx.config().datadir.join(VOUCHED_FILE)
    }

    /// Loads `vouched.dat` into the core once the chain is in: what a validating node
    /// vouched for before the restart is shown to peers again at once (else a restarted
    /// node answers `getheaders` with nothing until an outbound peer shows its tip).
    fn restore_vouched(&mut self) {
        let path = self.vouched_path();
        match crate::persist::load::<(u32, [u8; 32])>(&path, VOUCHED_KIND, VOUCHED_VERSION) {
            Ok(Some((height, bytes))) => {
                let hash = <bitcoin::BlockHash as bitcoin::hashes::Hash>::from_byte_array(bytes);
                self.core.restore_vouched(height, hash);
                self.saved_vouched = Some(hash);
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, file = %path.display(), "vouched.dat unreadable; set aside, nothing restored");
                let _ = crate::persist::set_aside(&path);
            }
        }
    }

    /// Saves the vouched tip when it moved (atomically, 0600); a failure is counted and
    /// retried on the next tick.
    /// On a blocking thread (its fsyncs would hold up the relay, as headers.dat's did), one
    /// save at a time; [`Self::save_vouched_now`] at the stop.
    fn save_vouched(&mut self) {
        if let Some((hash, mut handle)) = self.vouched_save.take() {
            match poll_finished(&mut handle) {
                None => {
                    self.vouched_save = Some((hash, handle));
                    return;
                }
                Some(Ok(Ok(()))) => self.saved_vouched = Some(hash),
                Some(Ok(Err(e))) => Self::vouched_save_failed(&e),
                // Its thread is gone: saved again below.
                Some(Err(_)) => {}
            }
        }
        let Some((hash, record)) = self.vouched_record() else {
            return;
        };
        let path = self.vouched_path();
        let handle = tokio::task::spawn_blocking(move || {
            crate::persist::save(&path, VOUCHED_KIND, VOUCHED_VERSION, &record)
        });
        self.vouched_save = Some((hash, handle));
    }

    /// The vouched tip's record, when it moved since the last save.
    fn vouched_record(&self) -> Option<(bitcoin::BlockHash, (u32, [u8; 32]))> {
        let (height, hash) = self.core.vouched_tip()?;
        if Some(hash) == self.saved_vouched {
            return None;
        }
        let bytes = <bitcoin::BlockHash as bitcoin::hashes::Hash>::to_byte_array(hash);
        Some((hash, (height, bytes)))
    }

    fn vouched_save_failed(e: &crate::persist::PersistError) {
        metrics::counter!("meshd_store_errors_total", "file" => "vouched.dat").increment(1);
        debug!(error = %e, "cannot write vouched.dat; retried on the next tick");
    }

    /// Saves the vouched tip here and now (the stop, once a save still running is done:
    /// else its older record could be renamed over this one).
    async fn save_vouched_now(&mut self) {
        if let Some((hash, handle)) = self.vouched_save.take() {
            if let Ok(Ok(())) = handle.await {
                self.saved_vouched = Some(hash);
            }
        }
        let Some((hash, record)) = self.vouched_record() else {
            return;
        };
        match crate::persist::save(&self.vouched_path(), VOUCHED_KIND, VOUCHED_VERSION, &record) {
            Ok(()) => self.saved_vouched = Some(hash),
            Err(e) => Self::vouched_save_failed(&e),
        }
    }

    /// Rewrites headers.dat with the best chain alone once more than
    /// [`COMPACT_STALE_SHARE`] of its records went stale at run time (reorgs, evicted forks),
    /// as a load does.
    fn compact_store(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.compact_if_stale(self.core.chain()) {
            Ok(None) => {}
            Ok(Some(stale)) => {
                metrics::counter!("meshd_header_file_compactions_total").increment(1);
                info!(
                    stale_share = stale,
                    height = self.core.chain().height(),
                    "header file compacted to the best chain"
                );
            }
            Err(e) => self.on_store_failure(e),
        }
    }

    /// Rewrites a failed header file from the chain when its retry is due.
    fn retry_store(&mut self, now: Instant) {
        if self.store_retry_at.is_none_or(|at| at > now) {
            return;
        }
        let Some(store) = self.store.as_mut() else {
            return;
        };
        match store.rewrite(self.core.chain()) {
            Ok(()) => {
                self.store_retry_at = None;
                info!(
                    height = self.core.chain().height(),
                    "headers.dat rewritten from the chain after a failed write"
                );
            }
            Err(e) => {
                debug!(error = %e, "headers.dat still cannot be written");
                self.store_retry_at = Some(now + STORE_RETRY_INTERVAL);
            }
        }
    }

    fn on_tick(&mut self) {
        let clock = system_clock();
        self.sync_store(clock.now);
        self.retry_store(clock.now);
        self.compact_store();
        self.save_vouched();
        if self.release_memory_at.is_some_and(|at| at <= clock.now) {
            self.release_memory_at = None;
            crate::release_free_memory();
        }
        while self
            .early
            .front()
            .is_some_and(|e| clock.now.duration_since(e.at) >= EARLY_INPUT_TTL)
        {
            self.early.pop_front();
        }
        let actions = self.core.tick(clock);
        self.apply(actions);
    }

    /// Handles one message (the actor's `handle`, and held messages once loading ends).
    fn on_msg(&mut self, myself: &ActorRef<SyncMsg>, msg: SyncMsg) {
        self.core.set_config(self.ctx.config());
        match msg {
            SyncMsg::PeerUp {
                id,
                addr,
                actor,
                start_height,
                relay,
                inbound,
                version,
                wtxid_relay,
                block_relay_only,
            } => {
                if self.core.has_peer(id) {
                    // Announced twice: the first one holds.
                    return;
                }
                let row = self.ctx.peers.get(id);
                let label = row
                    .as_ref()
                    .map(|p| p.address())
                    .unwrap_or_else(|| addr.to_string());
                let services =
                    bitcoin::p2p::ServiceFlags::from(row.as_ref().map_or(0, |p| p.services));
                self.connections.insert(id, actor);
                let new = NewPeer {
                    id,
                    addr,
                    label,
                    start_height,
                    relay,
                    inbound,
                    version,
                    wtxid_relay,
                    block_relay_only,
                    services,
                    network: row.as_ref().map_or_else(
                        || crate::shared::overlay::Network::of_ip(addr.ip()),
                        |p| p.network(),
                    ),
                };
                let actions = self.core.peer_up(system_clock(), new);
                self.apply(actions);
                self.replay_early(id);
            }
            SyncMsg::Peers(reply) => {
                let _ = reply.send(self.core.peer_ids());
            }
            SyncMsg::PeerDown(id) => {
                let actions = self.core.peer_down(system_clock(), id);
                self.apply(actions);
                self.connections.remove(&id);
                // Once its messages in flight are gone too, give the freed memory back.
                self.release_memory_at
                    .get_or_insert(Instant::now() + RELEASE_MEMORY_DELAY);
                self.early.retain(|e| e.id != id);
                if let Some(loading) = self.loading.as_mut() {
                    loading
                        .held
                        .retain(|m| !matches!(m, SyncMsg::FromPeer(p, ..) if *p == id));
                }
            }
            msg @ (SyncMsg::Generate(..)
            | SyncMsg::SubmitTx(_)
            | SyncMsg::Hints(_)
            | SyncMsg::Query(..))
                if self.loading.is_some() =>
            {
                self.hold(msg);
            }
            SyncMsg::LoadStep => self.load_step(myself),
            SyncMsg::FromPeer(id, input, credit) => self.on_peer_message(id, input, credit),
            SyncMsg::Tick => self.on_tick(),
            SyncMsg::Generate(order, reply) => {
                let (result, actions) = self.core.generate_order(system_clock(), order);
                self.apply(actions);
                // Answered in `handle`, after the bookkeeping: the caller sees the blocks'
                // events and the status showing them.
                self.generated.push((reply, result));
            }
            SyncMsg::SubmitTx(tx) => {
                let actions = self.core.submit_tx(system_clock(), *tx);
                self.apply(actions);
            }
            SyncMsg::Hints(reply) => {
                let _ = reply.send(self.core.hints());
            }
            SyncMsg::Query(q, reply) => {
                let _ = reply.send(self.core.query(&q, std::time::Instant::now()));
            }
        }
    }

    /// A message from a peer: handled, or kept until its PeerUp (see [`Self::on_early_input`])
    /// or until the chain is loaded (only a `getheaders` the part loaded can answer in full
    /// is answered during the load). The reader credit is given back once it is handled.
    fn on_peer_message(
        &mut self,
        id: PeerId,
        input: SyncInput,
        credit: Option<OwnedSemaphorePermit>,
    ) {
        if !self.core.has_peer(id) {
            self.on_early_input(id, input, credit);
        } else if self.loading.is_none() {
            let actions = self.core.input(system_clock(), id, input);
            self.apply(actions);
        } else {
            let answer = match &input {
                SyncInput::GetHeaders(m) => self.core.answer_while_loading(id, m),
                _ => None,
            };
            match answer {
                Some(action) => self.apply(vec![action]),
                None => self.hold(SyncMsg::FromPeer(id, input, credit)),
            }
        }
    }

    /// A message from a peer Sync has not heard of yet: its Connection sends straight here,
    /// while the peer's arrival comes through the Manager, so the first messages can overtake
    /// it. They wait (bounded in number and time) for the PeerUp.
    fn on_early_input(
        &mut self,
        id: PeerId,
        input: SyncInput,
        credit: Option<OwnedSemaphorePermit>,
    ) {
        if self.early.len() >= MAX_EARLY_INPUTS {
            metrics::counter!("meshd_sync_early_inputs_dropped_total").increment(1);
            debug!(peer = %id, "message from an unannounced peer dropped");
            return;
        }
        self.early.push_back(EarlyInput {
            id,
            at: Instant::now(),
            input,
            credit,
        });
    }

    /// Handles what a peer sent before Sync heard of it.
    fn replay_early(&mut self, id: PeerId) {
        if !self.early.iter().any(|e| e.id == id) {
            return;
        }
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.early)
            .into_iter()
            .partition(|e| e.id == id);
        self.early = rest;
        for early in mine {
            self.on_peer_message(id, early.input, early.credit);
        }
    }

    /// Opens headers.dat and starts loading it in steps; a file that is not a header file of
    /// this network is set aside and a new one started.
    fn begin_load(&mut self, myself: &ActorRef<SyncMsg>) {
        self.restore_vouched();
        let path = self.ctx.config().datadir.join("headers.dat");
        let magic = self.ctx.profile.magic.to_bytes();
        let begun = HeaderLoad::begin(&path, magic).or_else(|e| {
            let aside = crate::persist::set_aside(&path).map(|p| p.display().to_string());
            error!(error = %e, path = %path.display(), set_aside = ?aside, "header file unreadable; starting from genesis");
            HeaderLoad::begin(&path, magic)
        });
        match begun {
            Ok(load) => {
                self.loading = Some(Loading {
                    load,
                    started: Instant::now(),
                    held: VecDeque::new(),
                });
                let actions = self.core.set_loading(system_clock(), true);
                self.apply(actions);
                self.load_step(myself);
            }
            Err(e) => {
                error!(error = %e, "cannot open the header file; headers kept in memory only")
            }
        }
    }

    /// Loads the next part of headers.dat, then lets the mailbox in before the next one.
    fn load_step(&mut self, myself: &ActorRef<SyncMsg>) {
        let Some(loading) = self.loading.as_mut() else {
            return;
        };
        match loading.load.step(self.core.chain_mut(), LOAD_STEP_RECORDS) {
            Ok(false) => {
                self.publish_status();
                let _ = myself.cast(SyncMsg::LoadStep);
            }
            Ok(true) => self.finish_load(myself),
            Err(e) => {
                // A read error is not a bad file: keep it as it is (no truncation) and go on
                // with what was loaded, in memory only.
                error!(error = %e, loaded = loading.load.loaded(), "cannot read the header file; headers kept in memory only");
                metrics::counter!("meshd_store_errors_total", "file" => "headers.dat").increment(1);
                let held = std::mem::take(&mut loading.held);
                self.end_load(myself, None, held);
            }
        }
    }

    fn finish_load(&mut self, myself: &ActorRef<SyncMsg>) {
        let Some(loading) = self.loading.take() else {
            return;
        };
        let started = loading.started;
        let held = loading.held;
        let store = match loading.load.finish() {
            Ok((store, report)) => {
                if report.truncated_bytes > 0 {
                    warn!(
                        bytes = report.truncated_bytes,
                        "cut a torn tail off the header file"
                    );
                }
                info!(height = self.core.chain().height(), tip = %self.core.chain().tip(), loaded = report.loaded,
                      skipped = report.skipped,
                      ms = started.elapsed().as_millis() as u64, "header chain loaded");
                let mut store = store;
                let stale = report.stale_share(self.core.chain());
                if stale > COMPACT_STALE_SHARE {
                    // Mostly junk (skipped records, forks): the best chain alone, atomically.
                    metrics::counter!("meshd_header_file_compactions_total").increment(1);
                    match store.rewrite(self.core.chain()) {
                        Ok(()) => info!(
                            stale_share = stale,
                            height = self.core.chain().height(),
                            "header file compacted to the best chain"
                        ),
                        Err(e) => {
                            warn!(error = %e, "cannot compact the header file; it is kept as it is")
                        }
                    }
                }
                Some(store)
            }
            Err(e) => {
                error!(error = %e, "cannot open the header file; headers kept in memory only");
                None
            }
        };
        self.end_load(myself, store, held);
    }

    /// Loading is over: what waited for the chain is handled in order, and sync may start.
    fn end_load(
        &mut self,
        myself: &ActorRef<SyncMsg>,
        store: Option<HeaderStore>,
        held: VecDeque<SyncMsg>,
    ) {
        self.loading = None;
        self.store = store;
        let actions = self.core.set_loading(system_clock(), false);
        self.apply(actions);
        for msg in held {
            self.on_msg(myself, msg);
        }
        let actions = self.core.start_sync(system_clock());
        self.apply(actions);
    }

    /// Keeps a message until the chain is loaded (bounded; a message past the bound is
    /// dropped and counted, a generate request refused).
    fn hold(&mut self, msg: SyncMsg) {
        let Some(loading) = self.loading.as_mut() else {
            return;
        };
        if loading.held.len() < MAX_HELD_WHILE_LOADING {
            loading.held.push_back(msg);
            return;
        }
        metrics::counter!("meshd_sync_held_dropped_total").increment(1);
        match msg {
            SyncMsg::Generate(_, reply) => {
                let _ = reply.send(Err("the header chain is still loading".into()));
            }
            SyncMsg::FromPeer(id, ..) => {
                debug!(peer = %id, "message dropped while the header chain loads")
            }
            _ => {}
        }
    }
}

impl Actor for Sync {
    type Msg = SyncMsg;
    type State = SyncActorState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<SyncMsg>,
        ctx: Arc<NodeContext>,
    ) -> Result<SyncActorState, ActorProcessingErr> {
        let mut core = SyncCore::new(
            ctx.profile.clone(),
            ctx.config(),
            system_clock(),
            rand::random(),
        );
        core.defer_bookkeeping(true);
        Ok(SyncActorState {
            ctx,
            core,
            connections: HashMap::new(),
            release_memory_at: None,
            store_retry_at: None,
            saved_vouched: None,
            vouched_save: None,
            store: None,
            store_sync: None,
            loading: None,
            early: VecDeque::new(),
            generated: Vec::new(),
            timer: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<SyncMsg>,
        state: &mut SyncActorState,
    ) -> Result<(), ActorProcessingErr> {
        // The header file is read here, not in pre_start (which runs inside the spawner), and
        // in steps between which peers are answered (`SyncMsg::LoadStep`).
        state.begin_load(&myself);
        for name in [
            "meshd_headers_received_total",
            "meshd_blocks_received_total",
            "meshd_txs_received_total",
            "meshd_txs_relayed_total",
        ] {
            metrics::counter!(name).increment(0);
        }
        state.publish_status();
        state.timer = Some(myself.send_interval(SYNC_TICK, || SyncMsg::Tick));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<SyncMsg>,
        msg: SyncMsg,
        state: &mut SyncActorState,
    ) -> Result<(), ActorProcessingErr> {
        state.on_msg(&myself, msg);
        if state.core.has_deferred() {
            // The push just sent wakes Connections; the last one woken sits in this worker's
            // next-task slot, which the other worker cannot take until this task yields: so
            // yield before the bookkeeping, not after it.
            tokio::task::yield_now().await;
            state.run_deferred();
        }
        state.publish_status();
        for (reply, result) in state.generated.drain(..) {
            let _ = reply.send(result);
        }
        if state.loading.is_some() {
            // Let the tasks this message woke run before the next load step (a Connection
            // sending our answer sits in this worker's next-task slot, which other workers
            // cannot take, until this task yields).
            tokio::task::yield_now().await;
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<SyncMsg>,
        state: &mut SyncActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        // A group commit still running holds headers counted as synced: its report first.
        if let Some(handle) = state.store_sync.take() {
            // Bounded: a hung disk must not hang the stop (the sync below then runs anyway).
            let done = tokio::time::timeout(STOP_SYNC_WAIT, handle).await;
            if let Some(store) = state.store.as_mut() {
                match done {
                    Ok(Ok(report)) => {
                        if let Err(e) = store.synced(report) {
                            warn!(error = %e, "headers.dat sync failed at stop");
                        }
                    }
                    Ok(Err(_)) | Err(_) => store.sync_lost(),
                }
            }
        }
        if let Some(store) = state.store.as_mut() {
            let _ = store.sync();
        }
        if state.loading.is_none() {
            state.save_vouched_now().await;
        }
        Ok(())
    }
}
