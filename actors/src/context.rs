//! State shared by every actor of one node: configuration (live), the peer table, slots,
//! bans, bandwidth buckets, the event bus and our version nonces.

use crate::shared::addr::GossipAddr;
use std::hash::{BuildHasher, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::watch;

use crate::config::NodeConfig;
use crate::events::EventBus;
use crate::network::Profile;
use crate::peer::HandshakePolicy;
use crate::shared::bandwidth::{RateLimits, TokenBucket};
use crate::shared::bans::BanList;
use crate::shared::overlay_link::OverlayCommand;
use crate::shared::peers::{PeerId, PeerTable};
use crate::shared::slots::SlotPool;

/// Shared node state. Handed to actors in an `Arc`; opaque outside the crate.
#[derive(Debug)]
pub struct NodeContext {
    config: watch::Sender<Arc<NodeConfig>>,
    pub(crate) profile: Profile,
    pub(crate) policy: HandshakePolicy,
    pub(crate) peers: PeerTable,
    /// Nonces we sent in outbound version messages, to spot an inbound connection from
    /// ourselves.
    pub(crate) outbound_nonces: DashMap<u64, PeerId>,
    pub(crate) slots: SlotPool,
    pub(crate) events: EventBus,
    pub(crate) bans: RwLock<BanList>,
    /// IPs of the manual peers (`--connect`, `--addnode`, added at run time too), kept by
    /// the Manager: a fleet advisory never bans one.
    pub(crate) manual_ips: RwLock<std::collections::HashSet<IpAddr>>,
    /// Addresses discouraged by automatic verdicts (in memory only, as Core's).
    pub(crate) discouraged: RwLock<crate::shared::discourage::Discouraged>,
    pub(crate) global_limits: Arc<RateLimits>,
    pub(crate) peer_limits: Arc<RateLimits>,
    pub(crate) global_up: Arc<Mutex<TokenBucket>>,
    pub(crate) global_down: Arc<Mutex<TokenBucket>>,
    /// Microseconds readers and writers spent waiting on bandwidth limits.
    pub(crate) throttled_up_us: AtomicU64,
    pub(crate) throttled_down_us: AtomicU64,
    /// Bytes on the wire from and to every peer since start (getnettotals).
    pub(crate) total_received: AtomicU64,
    pub(crate) total_sent: AtomicU64,
    /// Restarts per outbound address since start (for `meshd_connection_restarts_total`).
    pub(crate) restart_counts: DashMap<SocketAddr, u64>,
    /// Entries in the address book, by table (kept current by the Manager).
    pub(crate) addrbook_len: AtomicUsize,
    pub(crate) addrbook_new: AtomicUsize,
    pub(crate) addrbook_tried: AtomicUsize,
    /// Addresses we advertise as ours: `--externalip`, or on regtest the specific addresses
    /// we listen on (so local meshes need no flag).
    advertised: RwLock<Vec<SocketAddr>>,
    /// What we were told on the command line (`--externalip`); always advertised.
    external: Vec<SocketAddr>,
    /// Addresses we listen on.
    pub(crate) listen_addrs: Vec<SocketAddr>,
    /// The fleet link's counters and client (see [`crate::fleet`]).
    fleet: Arc<crate::shared::fleet::FleetShared>,
    /// When the node started (wall clock, unix seconds; and monotonic).
    started_unix: u64,
    started: Instant,
    /// Our onion service, while it is up (see [`crate::tor`]).
    onion_service: RwLock<Option<crate::shared::status::OnionService>>,
    /// The loopback address where Tor delivers the onion service's peers (its own
    /// listener, so they are known as onion peers); set once at start.
    pub(crate) onion_bind: std::sync::OnceLock<SocketAddr>,
    /// The last STUN result.
    pub(crate) stun: RwLock<Option<crate::shared::status::NatReport>>,
    /// The port mapping's last state (the PortMap actor's).
    port_map: RwLock<Option<crate::shared::status::PortMapStatus>>,
    /// The overlay's last status and peers (the Overlay actor's), while it runs.
    overlay: RwLock<Option<OverlayView>>,
    /// Why the supervision tree failed to start (an overlay address in use), for
    /// [`crate::node::Node::start`]'s error.
    pub(crate) start_error: std::sync::OnceLock<String>,
    /// Which Overlay actor owns the overlay's entries here: each start takes the next
    /// number, and an actor clears them only while it is still the owner.
    pub(crate) overlay_generation: AtomicU64,
    /// What our `overlayaddr` tells peers (our overlay's id and addresses), while it runs.
    overlay_announcement: RwLock<Option<crate::wire::overlay_announce::OverlayAnnounce>>,
    /// The overlay's command queue, while it runs.
    overlay_commands: RwLock<Option<tokio::sync::mpsc::Sender<OverlayCommand>>>,
    /// Held while the advertised list is recomputed from its inputs.
    advertise_lock: Mutex<()>,
    /// The Sync actor, where Connections send chain and relay messages.
    pub(crate) sync: RwLock<Option<ractor::ActorRef<crate::msg::SyncMsg>>>,
    /// Sync status for metrics and the API.
    pub(crate) sync_status: RwLock<crate::msg::SyncStatus>,
    /// Addresses that are us: never dialled.
    pub(crate) own_addrs: Vec<SocketAddr>,
    /// The connected block-relay-only peers, kept by the Manager: a Manager restarted after a
    /// failure (whose stop hook, which writes anchors.dat, never ran) dials them again.
    pub(crate) anchors: std::sync::Mutex<Vec<SocketAddr>>,
    netgroup_key: std::collections::hash_map::RandomState,
    next_peer_id: AtomicU64,
    shutting_down: AtomicBool,
    /// The supervisor gave up (restart intensity exceeded): the stop is a failure.
    gave_up: AtomicBool,
}

/// The overlay's status and its connected peers, as the Overlay actor last published them.
pub(crate) type OverlayView = (
    crate::shared::status::OverlayStatus,
    Vec<crate::shared::status::OverlayPeerStatus>,
);

impl NodeContext {
    pub(crate) fn new(
        config: NodeConfig,
        bans: BanList,
        listen_addrs: &[SocketAddr],
    ) -> NodeContext {
        let specific: Vec<SocketAddr> = listen_addrs
            .iter()
            .filter(|a| !a.ip().is_unspecified())
            .copied()
            .collect();
        let advertised = if !config.external_addrs.is_empty() {
            config.external_addrs.clone()
        } else if config.network.profile().is_regtest() {
            specific.clone()
        } else {
            Vec::new()
        };
        let mut own_addrs = specific;
        own_addrs.extend(config.external_addrs.iter().copied());
        let global_limits = Arc::new(RateLimits::new(
            config.max_upload_rate,
            config.upload_burst,
            config.max_download_rate,
            config.download_burst,
        ));
        let peer_limits = Arc::new(RateLimits::new(
            config.peer_max_upload_rate,
            config.peer_burst,
            config.peer_max_download_rate,
            config.peer_burst,
        ));
        let now = Instant::now();
        NodeContext {
            profile: config.profile(),
            policy: config.handshake_policy(),
            peers: PeerTable::default(),
            outbound_nonces: DashMap::new(),
            slots: SlotPool::new(config.slots),
            events: EventBus::default(),
            bans: RwLock::new(bans),
            discouraged: RwLock::new(Default::default()),
            manual_ips: RwLock::new(Default::default()),
            global_limits,
            peer_limits,
            global_up: Arc::new(Mutex::new(TokenBucket::new(now))),
            global_down: Arc::new(Mutex::new(TokenBucket::new(now))),
            throttled_up_us: AtomicU64::new(0),
            throttled_down_us: AtomicU64::new(0),
            total_received: AtomicU64::new(0),
            total_sent: AtomicU64::new(0),
            restart_counts: DashMap::new(),
            addrbook_len: AtomicUsize::new(0),
            addrbook_new: AtomicUsize::new(0),
            addrbook_tried: AtomicUsize::new(0),
            advertised: RwLock::new(advertised),
            external: config.external_addrs.clone(),
            listen_addrs: listen_addrs.to_vec(),
            onion_service: RwLock::new(None),
            onion_bind: std::sync::OnceLock::new(),
            fleet: Arc::new(crate::shared::fleet::FleetShared::default()),
            started_unix: unix_now().max(0) as u64,
            started: now,
            stun: RwLock::new(None),
            port_map: RwLock::new(None),
            overlay: RwLock::new(None),
            overlay_commands: RwLock::new(None),
            overlay_announcement: RwLock::new(None),
            overlay_generation: AtomicU64::new(0),
            start_error: std::sync::OnceLock::new(),
            advertise_lock: Mutex::new(()),
            sync: RwLock::new(None),
            sync_status: RwLock::new(crate::msg::SyncStatus::default()),
            own_addrs,
            anchors: std::sync::Mutex::new(Vec::new()),
            netgroup_key: Default::default(),
            next_peer_id: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            gave_up: AtomicBool::new(false),
            config: watch::Sender::new(Arc::new(config)),
        }
    }

    /// The configuration now in force.
    pub(crate) fn config(&self) -> Arc<NodeConfig> {
        self.config.borrow().clone()
    }

    /// A receiver that sees every configuration change.
    pub(crate) fn config_watch(&self) -> watch::Receiver<Arc<NodeConfig>> {
        self.config.subscribe()
    }

    /// Installs a new configuration and applies the parts held in shared state.
    pub(crate) fn set_config(&self, config: NodeConfig) {
        self.slots.set_limits(config.slots);
        self.global_limits.set(
            config.max_upload_rate,
            config.upload_burst,
            config.max_download_rate,
            config.download_burst,
        );
        self.peer_limits.set(
            config.peer_max_upload_rate,
            config.peer_burst,
            config.peer_max_download_rate,
            config.peer_burst,
        );
        self.config.send_replace(Arc::new(config));
    }

    pub(crate) fn next_peer_id(&self) -> PeerId {
        PeerId(self.next_peer_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn begin_shutdown(&self) {
        if !self.shutting_down.swap(true, Ordering::SeqCst) {
            // The last event: subscribers (SSE clients) learn the node stops, rather than
            // seeing their stream cut.
            self.events.publish(crate::events::NodeEvent::NodeStopping);
        }
    }

    /// Records that the supervisor gave up, so the node's exit reads as a failure.
    pub(crate) fn mark_gave_up(&self) {
        self.gave_up.store(true, Ordering::SeqCst);
    }

    pub(crate) fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::SeqCst)
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The whitelist permissions of `ip`.
    pub(crate) fn permissions_of(&self, ip: IpAddr) -> crate::shared::whitelist::Permissions {
        crate::shared::whitelist::permissions_of(&self.config().whitelist, ip)
    }

    /// Whether a connection from `ip` is refused: banned, and not whitelisted `noban`.
    pub(crate) fn refuses(&self, ip: IpAddr) -> bool {
        self.is_banned(ip)
            && !self
                .permissions_of(ip)
                .has(crate::shared::whitelist::Permissions::NOBAN)
    }

    /// Whether `ip` is discouraged (an automatic verdict), and not whitelisted `noban`.
    pub(crate) fn is_discouraged(&self, ip: IpAddr) -> bool {
        let hit = match self.discouraged.read() {
            Ok(d) => d.contains(ip),
            Err(p) => p.into_inner().contains(ip),
        };
        hit && !self
            .permissions_of(ip)
            .has(crate::shared::whitelist::Permissions::NOBAN)
    }

    /// Discourages `ip`; returns what is discouraged now (the address, or its IPv6 /64).
    pub(crate) fn discourage(&self, ip: IpAddr) -> ipnet::IpNet {
        match self.discouraged.write() {
            Ok(mut d) => d.discourage(ip),
            Err(p) => p.into_inner().discourage(ip),
        }
    }

    /// Records `ip` as a manual peer's.
    pub(crate) fn add_manual_ip(&self, ip: IpAddr) {
        let ip = crate::shared::bans::canonical(ip);
        match self.manual_ips.write() {
            Ok(mut s) => s.insert(ip),
            Err(p) => p.into_inner().insert(ip),
        };
    }

    /// `ip` is no longer a manual peer's.
    pub(crate) fn remove_manual_ip(&self, ip: IpAddr) {
        let ip = crate::shared::bans::canonical(ip);
        match self.manual_ips.write() {
            Ok(mut s) => s.remove(&ip),
            Err(p) => p.into_inner().remove(&ip),
        };
    }

    /// Whether `ip` is one of our manual peers'.
    pub(crate) fn is_manual_ip(&self, ip: IpAddr) -> bool {
        let ip = crate::shared::bans::canonical(ip);
        match self.manual_ips.read() {
            Ok(s) => s.contains(&ip),
            Err(p) => p.into_inner().contains(&ip),
        }
    }

    /// Whether `ip` is banned now.
    pub(crate) fn is_banned(&self, ip: IpAddr) -> bool {
        let now = unix_now() as u64;
        match self.bans.read() {
            Ok(b) => b.is_banned(ip, now),
            Err(p) => p.into_inner().is_banned(ip, now),
        }
    }

    /// The fleet link's shared state.
    pub(crate) fn fleet_shared(&self) -> Arc<crate::shared::fleet::FleetShared> {
        self.fleet.clone()
    }

    /// When the node started, unix seconds.
    pub(crate) fn started_unix(&self) -> u64 {
        self.started_unix
    }

    /// Time since the node started.
    pub(crate) fn uptime(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// Our onion service, while it is up.
    pub(crate) fn onion_service(&self) -> Option<crate::shared::status::OnionService> {
        match self.onion_service.read() {
            Ok(o) => *o,
            Err(p) => *p.into_inner(),
        }
    }

    pub(crate) fn set_onion_service(&self, service: Option<crate::shared::status::OnionService>) {
        match self.onion_service.write() {
            Ok(mut o) => *o = service,
            Err(p) => *p.into_inner() = service,
        }
    }

    /// Addresses we advertise as ours now, as gossip carries them: the IP ones, and our
    /// onion service while it is up.
    pub(crate) fn advertised_gossip(&self, services: u64, time: u32) -> Vec<GossipAddr> {
        let mut out: Vec<GossipAddr> = self
            .advertised()
            .into_iter()
            .map(|addr| GossipAddr {
                addr,
                overlay: None,
                services,
                time,
            })
            .collect();
        if let Some(o) = self.onion_service() {
            out.push(GossipAddr {
                addr: o.addr.internal(o.port),
                overlay: Some(o.addr),
                services,
                time,
            });
        }
        out
    }

    /// Addresses we advertise as ours now.
    pub(crate) fn advertised(&self) -> Vec<SocketAddr> {
        match self.advertised.read() {
            Ok(a) => a.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Adopts a STUN result: when we are reachable (open internet, full cone) and listen on
    /// a port, our public IP with that port is advertised, next to any `--externalip` and a
    /// mapped port.
    pub(crate) fn set_stun(&self, report: crate::shared::status::NatReport) {
        if let Ok(mut s) = self.stun.write() {
            *s = Some(report);
        }
        self.recompute_advertised();
    }

    /// Adopts the PortMap actor's state: a mapped port is advertised (Core's
    /// `AddLocal(LOCAL_MAPPED)`) while it lasts.
    pub(crate) fn set_port_map(&self, status: Option<crate::shared::status::PortMapStatus>) {
        if let Ok(mut p) = self.port_map.write() {
            *p = status;
        }
        self.recompute_advertised();
    }

    /// Adopts the overlay's status (`None`: it stopped).
    pub(crate) fn set_overlay(&self, view: Option<OverlayView>) {
        if let Ok(mut o) = self.overlay.write() {
            *o = view;
        }
    }

    /// The overlay's last status and peers, while it runs.
    pub(crate) fn overlay(&self) -> Option<OverlayView> {
        self.overlay.read().ok().and_then(|o| o.clone())
    }

    /// Sets what our `overlayaddr` tells peers (`None`: the overlay stopped, or listens
    /// nowhere yet).
    pub(crate) fn set_overlay_announcement(
        &self,
        announce: Option<crate::wire::overlay_announce::OverlayAnnounce>,
    ) {
        if let Ok(mut a) = self.overlay_announcement.write() {
            *a = announce;
        }
    }

    /// What our `overlayaddr` tells peers, while the overlay runs.
    pub(crate) fn overlay_announcement(
        &self,
    ) -> Option<crate::wire::overlay_announce::OverlayAnnounce> {
        self.overlay_announcement
            .read()
            .ok()
            .and_then(|a| a.clone())
    }

    /// Installs (or removes) the overlay's command queue.
    pub(crate) fn set_overlay_commands(
        &self,
        tx: Option<tokio::sync::mpsc::Sender<OverlayCommand>>,
    ) {
        if let Ok(mut c) = self.overlay_commands.write() {
            *c = tx;
        }
    }

    /// Queues a command for the overlay; false when it does not run or its queue is full
    /// (the command is dropped and counted, never waited for).
    pub(crate) fn overlay_command(&self, cmd: OverlayCommand) -> bool {
        let tx = self.overlay_commands.read().ok().and_then(|c| c.clone());
        let Some(tx) = tx else {
            return false;
        };
        if tx.try_send(cmd).is_err() {
            metrics::counter!("meshd_overlay_commands_dropped_total").increment(1);
            return false;
        }
        true
    }

    /// The port mapping's last state, if mapping runs, with whether STUN's public IP (as
    /// it is now) is the mapped one.
    pub(crate) fn port_map(&self) -> Option<crate::shared::status::PortMapStatus> {
        let mut status = self.port_map.read().ok().and_then(|p| p.clone())?;
        let stun = self.stun_report().and_then(|r| r.public).map(|a| a.ip());
        if let (Some(ext), Some(stun)) = (status.external, stun) {
            status.stun_agrees = Some(ext.ip() == stun);
        }
        Some(status)
    }

    /// Our advertised addresses from what we were told and what we learnt: `--externalip`,
    /// a mapped port, STUN's public IP when reachable; on regtest the specific listening
    /// addresses when there is nothing else.
    fn recompute_advertised(&self) {
        // One writer at a time: the Stun and PortMap actors both recompute, and each must
        // see the other's last input.
        let _one = self.advertise_lock.lock();
        let mut list = self.external.clone();
        let mapped = self.port_map().filter(|p| p.state == "mapped");
        if let Some(ext) = mapped.and_then(|p| p.external) {
            if !list.contains(&ext) {
                list.push(ext);
            }
        }
        if let Some(report) = self.stun_report() {
            if report.nat_type.is_reachable() {
                if let (Some(public), Some(listen)) = (report.public, self.listen_addrs.first()) {
                    let ours = SocketAddr::new(public.ip(), listen.port());
                    if !list.contains(&ours) {
                        list.push(ours);
                    }
                }
            }
        }
        if list.is_empty() && self.config().network.profile().is_regtest() {
            list = self
                .listen_addrs
                .iter()
                .filter(|a| !a.ip().is_unspecified())
                .copied()
                .collect();
        }
        if let Ok(mut a) = self.advertised.write() {
            *a = list;
        }
    }

    /// The Sync actor, if running.
    pub(crate) fn sync_ref(&self) -> Option<ractor::ActorRef<crate::msg::SyncMsg>> {
        self.sync.read().ok().and_then(|s| s.clone())
    }

    /// The last sync status.
    pub(crate) fn sync_status(&self) -> crate::msg::SyncStatus {
        self.sync_status
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The last STUN result.
    pub(crate) fn stun_report(&self) -> Option<crate::shared::status::NatReport> {
        self.stun.read().ok().and_then(|s| s.clone())
    }

    /// The keyed hash of a network group (eviction rule 1).
    pub(crate) fn keyed_netgroup(&self, group: &[u8]) -> u64 {
        let mut h = self.netgroup_key.build_hasher();
        h.write(group);
        h.finish()
    }

    /// Path of the ban list file.
    pub(crate) fn bans_path(&self) -> PathBuf {
        self.config().datadir.join("bans.dat")
    }
}

/// Seconds since the Unix epoch, for version timestamps and ban expiry.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
