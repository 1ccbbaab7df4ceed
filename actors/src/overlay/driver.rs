//! The overlay's driver: one task that owns the Swarm, polls it, carries out the commands
//! queued to it and turns what the Swarm reports into the node's status, events and
//! metrics.
//!
//! What a remote can make it do is bounded: DHT records stored for others are checked here
//! (only provider records, only within the store's bounds: every other record is refused),
//! mDNS discoveries dial at most a few peers each, Identify's addresses enter the routing
//! table a few per peer, and relay reservations are sought from at most
//! [`MAX_RELAY_RESERVATIONS_HELD`] relays.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{autonat, gossipsub, identify, kad, mdns, ping, relay, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use super::book::{self, FoundBy, OverlayBook, MAX_ADDRS_PER_PEER};
use super::cluster::{clusters, diversity_victim, jaccard, Member};
use super::swarm::{kad_protocol, MeshBehaviour, MeshBehaviourEvent, MAX_PROVIDED_KEYS};
use crate::context::NodeContext;
use crate::events::NodeEvent;
use crate::shared::overlay_link::OverlayCommand;
use crate::shared::status::{HolePunches, OverlayStatus, RelayServed, TopicProvider};
use crate::wire::overlay_announce::{OverlayAnnounce, MAX_OVERLAY_ADDRS};

/// How often the status the API shows is refreshed from the Swarm (when something changed).
const STATUS_INTERVAL: Duration = Duration::from_millis(250);
/// Relays we hold a reservation with at most while AutoNAT finds us private: two keep us
/// reachable when one goes; more would cost them for nothing.
pub const MAX_RELAY_RESERVATIONS_HELD: usize = 2;
/// Relay candidates remembered (peers whose Identify lists the relay hop protocol).
const MAX_RELAY_CANDIDATES: usize = 8;
/// GossipSub topics we subscribe to at most.
pub const MAX_GOSSIP_TOPICS: usize = 32;
/// Bytes of a topic name at most.
pub const MAX_TOPIC_LEN: usize = 128;
/// Peers one mDNS answer makes us dial at most: a LAN host answering with hundreds of
/// peer ids cannot make us dial them all.
const MAX_MDNS_DIALS_PER_EVENT: usize = 8;
/// Bytes of a gossip message shown (hex) in its event: the rest is cut.
const MAX_GOSSIP_EVENT_BYTES: usize = 4 * 1024;
/// Topic finds in flight at most: each is a DHT walk holding a reply.
const MAX_PENDING_FINDS: usize = 16;
/// Providers one find collects at most (Kademlia returns up to K per node asked).
const MAX_PROVIDERS_FOUND: usize = 64;
/// Providers a find dials at most (those not connected yet).
const MAX_FIND_DIALS: usize = 8;

/// Our provider records are refreshed at most this often (Kademlia republishes them itself
/// every 12 hours).
const REPROVIDE_MIN_INTERVAL: Duration = Duration::from_secs(60);
/// While no bootstrap peer is connected, they are dialled again this often (one may have
/// been down at start).
const BOOTSTRAP_REDIAL: Duration = Duration::from_secs(60);
/// First wait before a relay that refused or lost our reservation is asked again; doubled
/// at each failure up to [`MAX_RELAY_BACKOFF`].
const RELAY_BACKOFF: Duration = Duration::from_secs(30);
/// Relays whose backoff is remembered at most (an entry is kept past its wait, so its
/// doubling goes on; the one ending soonest makes room).
const MAX_RELAY_BACKOFFS: usize = 64;
/// Longest wait between reservation requests to one relay.
const MAX_RELAY_BACKOFF: Duration = Duration::from_secs(30 * 60);
/// Provider keys one remote peer may have us store: a meshd node announces a handful of
/// topics; more is someone filling our store.
const MAX_REMOTE_PROVIDER_KEYS_PER_PEER: usize = 8;
/// Provider addresses kept per record a remote stores with us (each served to whoever asks).
const MAX_PROVIDER_ADDRS: usize = 4;

/// A peer whose topics we do not know yet is not pruned for diversity for this long:
/// its GossipSub subscriptions come a moment after the connection.
const TOPICS_GRACE: Duration = Duration::from_secs(10);

/// The DHT key under which a topic's providers are kept: the sha2-256 multihash of
/// `meshd/topic/<topic>`, so any Kademlia implementation that provides content by CID (as
/// js-libp2p and go-libp2p do) finds and announces it as the multihash of a raw CID.
pub fn topic_key(topic: &str) -> kad::RecordKey {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("meshd/topic/{topic}").as_bytes());
    // Multihash: code 0x12 (sha2-256), length 32, the digest.
    let mut key = Vec::with_capacity(34);
    key.extend_from_slice(&[0x12, 0x20]);
    key.extend_from_slice(&digest);
    kad::RecordKey::new(&key)
}

/// The circuit relay v2 hop protocol: a peer listing it in Identify can relay for us.
const RELAY_HOP_PROTOCOL: &str = "/libp2p/circuit/relay/0.2.0/hop";

/// What the driver starts with.
pub struct DriverArgs {
    /// The Swarm, already listening.
    pub swarm: Swarm<MeshBehaviour>,
    /// Peers to join the overlay through (each ending in `/p2p/<peer id>`).
    pub bootstrap: Vec<Multiaddr>,
    /// Topics we announce (DHT provider records and GossipSub subscriptions).
    pub topics: Vec<String>,
    /// Similarity above which peers share a cluster.
    pub cluster_threshold: f64,
    /// Peers kept before the most crowded cluster is pruned.
    pub peer_target: usize,
    /// How long an inbound peer stays before it may be pruned.
    pub prune_min_age: Duration,
    /// Loopback and private addresses count as reachable (regtest, labs).
    pub local_addrs: bool,
    /// The network's name (for the Kademlia protocol id).
    pub network: String,
    /// The node's shared state.
    pub ctx: Arc<NodeContext>,
    /// Commands from the rest of the node.
    pub commands: mpsc::Receiver<OverlayCommand>,
    /// Stops the driver.
    pub stop: oneshot::Receiver<()>,
}

/// An address the overlay could not listen on.
#[derive(Debug, thiserror::Error)]
#[error("overlay cannot listen on {addr}: {error}")]
pub struct ListenError {
    /// The address.
    pub addr: Multiaddr,
    /// Why.
    pub error: String,
}

/// Starts listening on every address (a port in use is refused here, at once).
pub fn listen(swarm: &mut Swarm<MeshBehaviour>, addrs: &[Multiaddr]) -> Result<(), ListenError> {
    for addr in addrs {
        swarm.listen_on(addr.clone()).map_err(|e| ListenError {
            addr: addr.clone(),
            error: e.to_string(),
        })?;
    }
    Ok(())
}

/// Counts an overlay event by label (`meshd_overlay_events_total{event}`).
fn count(event: &'static str) {
    metrics::counter!("meshd_overlay_events_total", "event" => event).increment(1);
}

/// The peer id at the end of a multiaddr, and the address without it.
pub fn split_peer(addr: &Multiaddr) -> Option<(PeerId, Multiaddr)> {
    let mut base = addr.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => Some((peer, base)),
        _ => None,
    }
}

/// Whether an address may enter the routing table: public ones always, loopback and
/// private ones only in a local lab.
fn routable(addr: &Multiaddr, local_addrs: bool) -> bool {
    if local_addrs {
        return true;
    }
    addr.iter().all(|p| match p {
        Protocol::Ip4(ip) => {
            !(ip.is_private()
                || ip.is_loopback()
                || ip.is_link_local()
                || ip.is_unspecified()
                || ip.is_multicast())
        }
        Protocol::Ip6(ip) => {
            let seg = ip.segments()[0];
            !(ip.is_loopback()
                || ip.is_unspecified()
                || ip.is_multicast()
                || (seg & 0xfe00) == 0xfc00
                || (seg & 0xffc0) == 0xfe80)
        }
        _ => true,
    })
}

/// Whether an address names a globally routable IP (or a DNS name, resolved later): what
/// the overlay dials off a lab.
pub fn is_global_addr(addr: &Multiaddr) -> bool {
    routable(addr, false)
}

struct Driver {
    swarm: Swarm<MeshBehaviour>,
    ctx: Arc<NodeContext>,
    book: OverlayBook,
    local_addrs: bool,
    kad_protocol: String,
    reachability: &'static str,
    reservations: BTreeSet<PeerId>,
    relay_listeners: HashMap<ListenerId, PeerId>,
    relay_candidates: Vec<PeerId>,
    relay_served: RelayServed,
    bootstrapped: bool,
    dirty: bool,
    provided: BTreeSet<String>,
    finds: HashMap<kad::QueryId, PendingFind>,
    cluster_threshold: f64,
    peer_target: usize,
    prune_min_age: Duration,
    bootstrap: Vec<Multiaddr>,
    bootstrap_ids: BTreeSet<PeerId>,
    next_bootstrap_dial: Instant,
    relay_backoff: HashMap<PeerId, (Instant, Duration)>,
    remote_provider_keys: HashMap<PeerId, HashSet<kad::RecordKey>>,
    last_reprovide: Option<Instant>,
    reprovide_pending: bool,
    hole_punches: HolePunches,
}

struct PendingFind {
    providers: BTreeSet<PeerId>,
    reply: oneshot::Sender<Vec<TopicProvider>>,
}

/// Runs the overlay until `stop` fires (or its sender is dropped).
pub async fn run(args: DriverArgs) {
    let DriverArgs {
        swarm,
        bootstrap,
        topics,
        cluster_threshold,
        peer_target,
        prune_min_age,
        local_addrs,
        network,
        ctx,
        mut commands,
        mut stop,
    } = args;
    let mut driver = Driver {
        swarm,
        ctx,
        book: OverlayBook::new(),
        local_addrs,
        kad_protocol: kad_protocol(&network),
        reachability: "unknown",
        reservations: BTreeSet::new(),
        relay_listeners: HashMap::new(),
        relay_candidates: Vec::new(),
        relay_served: RelayServed::default(),
        bootstrapped: false,
        dirty: true,
        provided: BTreeSet::new(),
        finds: HashMap::new(),
        cluster_threshold,
        peer_target,
        prune_min_age,
        bootstrap_ids: bootstrap
            .iter()
            .filter_map(|a| split_peer(a).map(|(p, _)| p))
            .collect(),
        bootstrap,
        next_bootstrap_dial: Instant::now() + BOOTSTRAP_REDIAL,
        relay_backoff: HashMap::new(),
        remote_provider_keys: HashMap::new(),
        last_reprovide: None,
        reprovide_pending: false,
        hole_punches: HolePunches::default(),
    };
    for topic in topics {
        driver.provide(topic);
    }
    for addr in driver.bootstrap.clone() {
        driver.dial(addr, FoundBy::Bootstrap);
    }
    let mut tick = tokio::time::interval(STATUS_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(cmd) = commands.recv() => driver.on_command(cmd),
            event = driver.swarm.select_next_some() => driver.on_event(event),
            _ = tick.tick() => {
                driver.on_tick();
                driver.publish_status();
            }
        }
    }
    driver.ctx.set_overlay_announcement(None);
    driver.ctx.set_overlay(None);
}

impl Driver {
    fn dial(&mut self, addr: Multiaddr, why: FoundBy) {
        if let Some((peer, base)) = split_peer(&addr) {
            if peer == *self.swarm.local_peer_id() {
                return;
            }
            self.swarm.behaviour_mut().kad.add_address(&peer, base);
            self.book.dialling(peer, why);
        }
        if let Err(e) = self.swarm.dial(addr.clone()) {
            count("dial_refused");
            debug!(%addr, error = %e, "overlay dial refused");
        }
    }

    /// Announces a topic: a GossipSub subscription (so connected peers see it among our
    /// topics) and a DHT provider record (so others find us by it), refreshed whenever
    /// Kademlia's bootstrap walk completes.
    fn provide(&mut self, topic: String) {
        if topic.is_empty()
            || topic.len() > MAX_TOPIC_LEN
            || self.provided.len() >= MAX_GOSSIP_TOPICS
        {
            count("command_refused");
            warn!(topic = %topic.chars().take(MAX_TOPIC_LEN).collect::<String>(), "overlay topic refused: its length, or too many topics");
            return;
        }
        let _ = self
            .swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&gossipsub::IdentTopic::new(topic.clone()));
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .start_providing(topic_key(&topic))
        {
            count("command_refused");
            warn!(%topic, error = %e, "overlay cannot announce topic");
            return;
        }
        if self.provided.insert(topic.clone()) {
            debug!(%topic, "overlay announces topic");
        }
        self.dirty = true;
    }

    /// Refreshes our provider records (after a bootstrap walk: the first ones may have
    /// found no peer to store them), at most once per [`REPROVIDE_MIN_INTERVAL`]: Kademlia
    /// walks again whenever its table is short, and each refresh is a walk per topic.
    fn reprovide(&mut self) {
        let now = Instant::now();
        if self
            .last_reprovide
            .is_some_and(|t| now.duration_since(t) < REPROVIDE_MIN_INTERVAL)
        {
            return;
        }
        self.last_reprovide = Some(now);
        let topics: Vec<String> = self.provided.iter().cloned().collect();
        for topic in topics {
            let _ = self
                .swarm
                .behaviour_mut()
                .kad
                .start_providing(topic_key(&topic));
        }
    }

    fn on_command(&mut self, cmd: OverlayCommand) {
        match cmd {
            OverlayCommand::Provide(topic) => self.provide(topic),
            OverlayCommand::Find { topic, reply } => {
                if self.finds.len() >= MAX_PENDING_FINDS {
                    count("command_refused");
                    // Dropping the reply tells the caller it was refused, not that nobody
                    // serves the topic.
                    drop(reply);
                    return;
                }
                count("topic_find");
                let id = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(topic_key(&topic));
                self.finds.insert(
                    id,
                    PendingFind {
                        providers: BTreeSet::new(),
                        reply,
                    },
                );
            }
            OverlayCommand::Dial(addr) => self.dial(addr, FoundBy::Dial),
            OverlayCommand::Hint { peer, addrs } => {
                count("hint");
                if peer == *self.swarm.local_peer_id() || self.book.contains(&peer) {
                    return;
                }
                // Dialled, not put in the routing table: an unverified id enters it only once
                // a connection proves it (Identify then adds its addresses).
                self.book.dialling(peer, FoundBy::Hint);
                let opts = libp2p::swarm::dial_opts::DialOpts::peer_id(peer)
                    .addresses(addrs.into_iter().take(MAX_ADDRS_PER_PEER).collect())
                    .build();
                if let Err(e) = self.swarm.dial(opts) {
                    count("dial_refused");
                    debug!(%peer, error = %e, "overlay dial of a hinted peer refused");
                }
            }
            OverlayCommand::Subscribe(topic) => {
                let subscribed = self.swarm.behaviour().gossipsub.topics().count();
                if topic.is_empty() || topic.len() > MAX_TOPIC_LEN {
                    count("command_refused");
                    warn!(topic = %topic.chars().take(MAX_TOPIC_LEN).collect::<String>(), "overlay topic refused: its length");
                    return;
                }
                if subscribed >= MAX_GOSSIP_TOPICS {
                    count("command_refused");
                    warn!(%topic, max = MAX_GOSSIP_TOPICS, "overlay topic refused: too many topics");
                    return;
                }
                match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .subscribe(&gossipsub::IdentTopic::new(topic.clone()))
                {
                    Ok(_) => {
                        info!(%topic, "overlay subscribed");
                        self.dirty = true;
                    }
                    Err(e) => {
                        count("command_refused");
                        warn!(%topic, error = %e, "overlay subscription failed");
                    }
                }
            }
            OverlayCommand::Publish { topic, data } => {
                match self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(gossipsub::IdentTopic::new(topic.clone()), data)
                {
                    Ok(_) => count("gossip_published"),
                    Err(e) => {
                        count("gossip_publish_failed");
                        debug!(%topic, error = %e, "overlay publish failed");
                    }
                }
            }
        }
    }

    fn on_event(&mut self, event: SwarmEvent<MeshBehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                // A relay picks the addresses of its circuit: those are not ours to log loudly.
                if book::is_relayed(&address) {
                    debug!(%address, "overlay listening through a relay");
                } else {
                    info!(%address, "overlay listening");
                }
                if self.local_addrs {
                    // No AutoNAT server confirms a lab's loopback address; a relay puts
                    // only confirmed addresses in its reservations.
                    self.swarm.add_external_address(address);
                }
                self.dirty = true;
            }
            SwarmEvent::ExternalAddrConfirmed { address } => {
                debug!(%address, "overlay address confirmed");
                self.dirty = true;
            }
            SwarmEvent::ListenerClosed { listener_id, .. } => {
                // A relay's circuit listener closes when the reservation is refused or
                // lost: another relay may be asked.
                if let Some(relay) = self.relay_listeners.remove(&listener_id) {
                    self.reservations.remove(&relay);
                    count("relay_reservation_lost");
                    self.back_off_relay(relay);
                    self.seek_reservations();
                }
                self.dirty = true;
            }
            SwarmEvent::ExternalAddrExpired { .. } => self.dirty = true,
            SwarmEvent::ConnectionEstablished {
                peer_id, endpoint, ..
            } => {
                let address = endpoint.get_remote_address().clone();
                if self.book.connected(
                    peer_id,
                    address.clone(),
                    endpoint.is_dialer(),
                    Instant::now(),
                ) {
                    count("connected");
                    debug!(peer = %peer_id, %address, "overlay peer connected");
                    self.ctx.events.publish(NodeEvent::OverlayPeerConnected {
                        peer_id: peer_id.to_string(),
                        address: address.to_string(),
                    });
                }
                if !self.bootstrapped {
                    // The first peer: walk the DHT towards ourselves to fill the table
                    // (Kademlia re-walks on its own timer after this).
                    self.bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
                }
                self.dirty = true;
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                if self.book.closed(&peer_id, num_established) {
                    count("disconnected");
                    debug!(peer = %peer_id, "overlay peer disconnected");
                    self.reservations.remove(&peer_id);
                    self.relay_candidates.retain(|p| *p != peer_id);
                    self.ctx.events.publish(NodeEvent::OverlayPeerDisconnected {
                        peer_id: peer_id.to_string(),
                    });
                }
                self.dirty = true;
            }
            SwarmEvent::OutgoingConnectionError { peer_id, error, .. } => {
                count("dial_failed");
                debug!(peer = ?peer_id, error = %error, "overlay dial failed");
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                count("incoming_failed");
                debug!(error = %error, "overlay inbound connection failed");
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour(event),
            _ => {}
        }
    }

    fn on_behaviour(&mut self, event: MeshBehaviourEvent) {
        match event {
            MeshBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                count("identified");
                self.book
                    .identified(&peer_id, &info.agent_version, &info.listen_addrs);
                let speaks_kad = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == self.kad_protocol);
                let local = self.local_addrs;
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .iter()
                    .filter(|a| routable(a, local))
                    .take(MAX_ADDRS_PER_PEER)
                    .cloned()
                    .collect();
                if speaks_kad && !addrs.is_empty() && self.book.mark_kad_added(&peer_id) {
                    for addr in addrs {
                        self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                    }
                }
                let relays = info
                    .protocols
                    .iter()
                    .any(|p| p.as_ref() == RELAY_HOP_PROTOCOL);
                if relays
                    && !self.relay_candidates.contains(&peer_id)
                    && self.relay_candidates.len() < MAX_RELAY_CANDIDATES
                {
                    self.relay_candidates.push(peer_id);
                    self.seek_reservations();
                }
                self.dirty = true;
            }
            MeshBehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => self.book.pinged(&peer, rtt),
            MeshBehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                count("mdns_discovered");
                let mut dials = 0;
                for (peer, addr) in found {
                    if dials < MAX_MDNS_DIALS_PER_EVENT
                        && !self.book.contains(&peer)
                        && peer != *self.swarm.local_peer_id()
                    {
                        dials += 1;
                        self.book.dialling(peer, FoundBy::Mdns);
                        let _ = self.swarm.dial(addr.with(Protocol::P2p(peer)));
                    }
                }
            }
            MeshBehaviourEvent::Kad(event) => self.on_kad(event),
            MeshBehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }) => {
                count("gossip_received");
                if self.ctx.events.has_subscribers() {
                    let shown = &message.data[..message.data.len().min(MAX_GOSSIP_EVENT_BYTES)];
                    self.ctx.events.publish(NodeEvent::OverlayGossipReceived {
                        topic: message.topic.to_string(),
                        from: message.source.map(|p| p.to_string()),
                        data_hex: hex(shown),
                        size: message.data.len(),
                    });
                }
            }
            MeshBehaviourEvent::Gossipsub(
                gossipsub::Event::Subscribed { .. } | gossipsub::Event::Unsubscribed { .. },
            ) => {
                // A peer's topics changed: its cluster may have.
                self.dirty = true;
            }
            MeshBehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. }) => {
                let label = match new {
                    autonat::NatStatus::Public(_) => "public",
                    autonat::NatStatus::Private => "private",
                    autonat::NatStatus::Unknown => "unknown",
                };
                if label != self.reachability {
                    self.reachability = label;
                    count(match label {
                        "public" => "reachability_public",
                        "private" => "reachability_private",
                        _ => "reachability_unknown",
                    });
                    info!(reachability = label, "overlay reachability");
                    self.ctx
                        .events
                        .publish(NodeEvent::OverlayReachabilityChanged {
                            reachability: label.to_string(),
                        });
                    self.seek_reservations();
                    self.dirty = true;
                }
            }
            MeshBehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                renewal,
                ..
            }) => {
                if !renewal {
                    count("relay_reservation");
                    debug!(relay = %relay_peer_id, "overlay relay reservation");
                }
                self.reservations.insert(relay_peer_id);
                self.dirty = true;
            }
            MeshBehaviourEvent::Relay(event) => self.on_relay_served(event),
            MeshBehaviourEvent::Dcutr(libp2p::dcutr::Event {
                remote_peer_id,
                result,
            }) => match result {
                Ok(_) => {
                    count("hole_punch_ok");
                    self.hole_punches.ok += 1;
                    self.dirty = true;
                    debug!(peer = %remote_peer_id, "overlay hole punched");
                }
                Err(e) => {
                    count("hole_punch_failed");
                    self.hole_punches.failed += 1;
                    self.dirty = true;
                    debug!(peer = %remote_peer_id, error = %e, "overlay hole punch failed");
                }
            },
            _ => {}
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            } => match result {
                kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                    providers,
                    ..
                })) => {
                    if let Some(find) = self.finds.get_mut(&id) {
                        for p in providers {
                            if find.providers.len() < MAX_PROVIDERS_FOUND {
                                find.providers.insert(p);
                            }
                        }
                    }
                    if step.last {
                        self.finish_find(id);
                    }
                }
                kad::QueryResult::GetProviders(_) => self.finish_find(id),
                kad::QueryResult::Bootstrap(Ok(kad::BootstrapOk {
                    num_remaining: 0, ..
                })) => {
                    self.reprovide();
                }
                _ => {}
            },
            kad::Event::RoutingUpdated { .. } => {
                count("kad_routing_updated");
                self.dirty = true;
            }
            kad::Event::InboundRequest { request } => match request {
                // Provider records within the store's bounds are kept (topics); every other
                // record a remote asks us to store is refused: meshd stores no values.
                kad::InboundRequest::AddProvider {
                    record: Some(record),
                } => self.store_remote_provider(record),
                kad::InboundRequest::PutRecord {
                    record: Some(_), ..
                } => count("dht_record_refused"),
                _ => {}
            },
            _ => {}
        }
    }

    /// Stores a provider record a remote sent (kad has checked that the provider is the
    /// sender), if it is for a topic key, within the sender's share of the store, and with
    /// a few routable addresses only: it is served to whoever asks.
    fn store_remote_provider(&mut self, mut record: kad::ProviderRecord) {
        let key = record.key.as_ref();
        let topic_shaped = key.len() == 34 && key[..2] == [0x12, 0x20];
        let me = *self.swarm.local_peer_id();
        let provider = record.provider;
        let known = self
            .remote_provider_keys
            .get(&provider)
            .is_some_and(|keys| keys.contains(&record.key));
        let theirs = self
            .remote_provider_keys
            .get(&provider)
            .map_or(0, |k| k.len());
        // Room for our own topics is kept whatever remotes send.
        let held: usize = self.remote_provider_keys.values().map(|k| k.len()).sum();
        let full = held >= MAX_PROVIDED_KEYS.saturating_sub(MAX_GOSSIP_TOPICS);
        let refused = if !topic_shaped {
            Some("not a topic key")
        } else if provider == me {
            Some("names us")
        } else if !known && theirs >= MAX_REMOTE_PROVIDER_KEYS_PER_PEER {
            Some("over the peer's share")
        } else if !known && full {
            Some("store full")
        } else {
            None
        };
        if let Some(why) = refused {
            count("dht_record_refused");
            debug!(peer = %provider, why, "overlay refused a provider record");
            return;
        }
        let local = self.local_addrs;
        record
            .addresses
            .retain(|a| routable(a, local) && !unspecified(a));
        record.addresses.truncate(MAX_PROVIDER_ADDRS);
        let key = record.key.clone();
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let stored = kad::store::RecordStore::add_provider(store, record).is_ok()
            // A key with its 20 providers takes no more (and says Ok): count what is there.
            && kad::store::RecordStore::providers(store, &key)
                .iter()
                .any(|p| p.provider == provider);
        if stored {
            self.remote_provider_keys
                .entry(provider)
                .or_default()
                .insert(key);
            count("dht_provider_stored");
        } else {
            count("dht_record_refused");
        }
    }

    /// Forgets the remote provider records the store no longer holds (expired).
    fn reconcile_remote_providers(&mut self) {
        let store = self.swarm.behaviour_mut().kad.store_mut();
        self.remote_provider_keys.retain(|peer, keys| {
            keys.retain(|k| {
                kad::store::RecordStore::providers(store, k)
                    .iter()
                    .any(|p| p.provider == *peer)
            });
            !keys.is_empty()
        });
    }

    /// Not the same relay again at once: one with nothing to offer (no address of its own,
    /// full, or refusing) would otherwise be asked in a loop. The wait doubles per failure.
    fn back_off_relay(&mut self, relay: PeerId) {
        let delay = self
            .relay_backoff
            .get(&relay)
            .map_or(RELAY_BACKOFF, |(_, d)| (*d * 2).min(MAX_RELAY_BACKOFF));
        if self.relay_backoff.len() >= MAX_RELAY_BACKOFFS
            && !self.relay_backoff.contains_key(&relay)
        {
            // Full: the entry that ends soonest makes room (never "no backoff").
            if let Some(soonest) = self
                .relay_backoff
                .iter()
                .min_by_key(|(_, (at, _))| *at)
                .map(|(p, _)| *p)
            {
                self.relay_backoff.remove(&soonest);
            }
        }
        self.relay_backoff
            .insert(relay, (Instant::now() + delay, delay));
    }

    /// Once per status tick: dials the bootstrap peers again while none is connected, and
    /// asks relays for reservations whose backoff has passed.
    fn on_tick(&mut self) {
        let now = Instant::now();
        if now >= self.next_bootstrap_dial {
            self.next_bootstrap_dial = now + BOOTSTRAP_REDIAL;
            let connected = self.bootstrap_ids.iter().any(|p| self.book.contains(p));
            if !connected {
                for addr in self.bootstrap.clone() {
                    self.dial(addr, FoundBy::Bootstrap);
                }
            }
            self.reconcile_remote_providers();
        }
        if self.reprovide_pending
            && self
                .last_reprovide
                .is_none_or(|t| now.duration_since(t) >= REPROVIDE_MIN_INTERVAL)
        {
            self.reprovide();
        }
        if self.reachability == "private" && self.reservations.len() < MAX_RELAY_RESERVATIONS_HELD {
            self.seek_reservations();
        }
    }

    /// Answers a find with its providers (ourselves left out), and dials a few of those we
    /// are not connected to.
    fn finish_find(&mut self, id: kad::QueryId) {
        let Some(find) = self.finds.remove(&id) else {
            return;
        };
        let me = *self.swarm.local_peer_id();
        let mut dials = 0;
        let mut out = Vec::new();
        for p in find.providers.into_iter().filter(|p| *p != me) {
            let connected = self.book.contains(&p);
            if !connected && dials < MAX_FIND_DIALS {
                dials += 1;
                self.book.dialling(p, FoundBy::Dht);
                let _ = self.swarm.dial(p);
            }
            out.push(TopicProvider {
                peer_id: p.to_string(),
                connected,
            });
        }
        let _ = find.reply.send(out);
    }

    fn on_relay_served(&mut self, event: relay::Event) {
        match event {
            relay::Event::ReservationReqAccepted { renewed: false, .. } => {
                count("relay_served_reservation");
                self.relay_served.reservations += 1;
            }
            relay::Event::ReservationClosed { .. } | relay::Event::ReservationTimedOut { .. } => {
                self.relay_served.reservations = self.relay_served.reservations.saturating_sub(1);
            }
            relay::Event::CircuitReqAccepted { .. } => {
                count("relay_served_circuit");
                self.relay_served.circuits += 1;
            }
            relay::Event::CircuitClosed { .. } => {
                self.relay_served.circuits = self.relay_served.circuits.saturating_sub(1);
            }
            relay::Event::ReservationReqDenied { .. } | relay::Event::CircuitReqDenied { .. } => {
                count("relay_denied");
            }
            _ => {}
        }
        self.dirty = true;
    }

    /// While AutoNAT finds us private, listens through up to
    /// [`MAX_RELAY_RESERVATIONS_HELD`] relays, so peers can reach us by a circuit (and
    /// DCUtR can upgrade it to a direct connection).
    fn seek_reservations(&mut self) {
        if self.reachability != "private" {
            return;
        }
        let candidates: Vec<PeerId> = self
            .relay_candidates
            .iter()
            .filter(|p| {
                !self.reservations.contains(p)
                    && self.book.contains(p)
                    && self
                        .relay_backoff
                        .get(p)
                        .is_none_or(|(at, _)| *at <= Instant::now())
            })
            .copied()
            .collect();
        for relay in candidates {
            if self.reservations.len() >= MAX_RELAY_RESERVATIONS_HELD {
                break;
            }
            // The relay transport dials the relay by the address in the circuit: one it
            // listens on (Identify), direct, reachable by our rules.
            let Some(base) = self
                .book
                .listen_addrs(&relay)
                .iter()
                .find(|a| !book::is_relayed(a) && routable(a, self.local_addrs) && !unspecified(a))
                .cloned()
            else {
                debug!(relay = %relay, "overlay relay has no address to reserve at");
                continue;
            };
            // Identify's addresses may already end in the relay's id.
            let base = match split_peer(&base) {
                Some((p, stripped)) if p == relay => stripped,
                _ => base,
            };
            let addr = base.with(Protocol::P2p(relay)).with(Protocol::P2pCircuit);
            match self.swarm.listen_on(addr.clone()) {
                Ok(id) => {
                    // Counted as held until it is refused: two requests in flight never
                    // become three reservations.
                    self.reservations.insert(relay);
                    self.relay_listeners.insert(id, relay);
                }
                Err(e) => {
                    debug!(relay = %relay, %addr, error = ?e, "overlay relay listen refused");
                    self.back_off_relay(relay);
                }
            }
        }
    }

    fn publish_status(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let now = Instant::now();
        let swarm = &mut self.swarm;
        let routing_table = swarm
            .behaviour_mut()
            .kad
            .kbuckets()
            .map(|b| b.num_entries())
            .sum();
        let mut rows = self.book.status(now);
        let peer_topics: HashMap<String, BTreeSet<String>> = swarm
            .behaviour()
            .gossipsub
            .all_peers()
            .map(|(p, topics)| {
                (
                    p.to_string(),
                    topics.into_iter().map(|t| t.to_string()).collect(),
                )
            })
            .collect();
        let members: Vec<Member<String>> = rows
            .iter()
            .map(|r| {
                let peer: Option<PeerId> = r.peer_id.parse().ok();
                // Only strangers who came in, and stayed a while, are judged: the peers we
                // chose (bootstrap, hint, operator, DHT walk, mDNS) and our relays are kept,
                // and Kademlia's own short connections are not cut mid-request.
                let stranger = peer.is_some_and(|p| {
                    self.book.is_inbound(&p)
                        && !self.bootstrap_ids.contains(&p)
                        && !self.reservations.contains(&p)
                });
                Member {
                    key: r.peer_id.clone(),
                    topics: peer_topics.get(&r.peer_id).cloned().unwrap_or_default(),
                    protected: !stranger
                        || r.connected_secs < self.prune_min_age.as_secs()
                        // Not judged before its topics had time to arrive.
                        || (peer_topics.get(&r.peer_id).is_none_or(|t| t.is_empty())
                            && r.connected_secs < TOPICS_GRACE.as_secs()),
                    // Younger is larger.
                    since: u64::MAX - r.connected_secs,
                }
            })
            .collect();
        let labels = clusters(&members, self.cluster_threshold);
        for ((row, member), label) in rows.iter_mut().zip(&members).zip(&labels) {
            row.similarity = jaccard(&self.provided, &member.topics);
            row.topics = member.topics.iter().cloned().collect();
            row.cluster = *label;
        }
        let cluster_count = labels.iter().copied().max().map_or(0, |m| m + 1);
        if let Some(victim) = diversity_victim(&members, self.cluster_threshold, self.peer_target)
            .and_then(|v| v.parse::<PeerId>().ok())
        {
            count("diversity_pruned");
            debug!(peer = %victim, "overlay lets a peer go: its topic cluster is the most crowded");
            let _ = swarm.disconnect_peer_id(victim);
        }
        let status = OverlayStatus {
            peer_id: swarm.local_peer_id().to_string(),
            listen_addrs: swarm.listeners().map(|a| a.to_string()).collect(),
            external_addrs: swarm.external_addresses().map(|a| a.to_string()).collect(),
            reachability: self.reachability.to_string(),
            peers: self.book.len(),
            routing_table,
            topics: swarm
                .behaviour()
                .gossipsub
                .topics()
                .map(|t| t.to_string())
                .collect(),
            provided: self.provided.iter().cloned().collect(),
            cluster_threshold: self.cluster_threshold,
            clusters: cluster_count,
            relay_reservations: self.reservations.iter().map(|p| p.to_string()).collect(),
            relay_service: swarm.behaviour().relay.is_enabled(),
            relay_served: self.relay_served,
            mdns: swarm.behaviour().mdns.is_enabled(),
            hole_punches: self.hole_punches,
        };
        metrics::gauge!("meshd_overlay_peers").set(self.book.len() as f64);
        self.ctx.set_overlay_announcement(self.announcement());
        self.ctx.set_overlay(Some((status, rows)));
    }
}

/// Whether an address is an unspecified one (`0.0.0.0`, `::`): nobody can dial it.
fn unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

impl Driver {
    /// What our `overlayaddr` tells Bitcoin peers: our peer id, our confirmed external
    /// addresses first, then the addresses we listen on (not unspecified ones); `None`
    /// while we listen nowhere.
    fn announcement(&self) -> Option<OverlayAnnounce> {
        let mut addrs: Vec<Multiaddr> = Vec::new();
        for a in self
            .swarm
            .external_addresses()
            .chain(self.swarm.listeners())
        {
            if !unspecified(a)
                && routable(a, self.local_addrs)
                && !addrs.contains(a)
                && addrs.len() < MAX_OVERLAY_ADDRS
            {
                addrs.push(a.clone());
            }
        }
        (!addrs.is_empty()).then(|| OverlayAnnounce {
            peer_id: *self.swarm.local_peer_id(),
            addrs,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_id_is_split_from_the_end_of_an_address() {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/4001/p2p/{peer}")
            .parse()
            .unwrap();
        let (p, base) = split_peer(&addr).unwrap();
        assert_eq!(p, peer);
        assert_eq!(base.to_string(), "/ip4/127.0.0.1/tcp/4001");
        assert!(split_peer(&"/ip4/127.0.0.1/tcp/1".parse().unwrap()).is_none());
    }

    #[test]
    fn private_addresses_enter_the_table_only_in_a_lab() {
        let private: Multiaddr = "/ip4/10.1.2.3/tcp/1".parse().unwrap();
        let loopback: Multiaddr = "/ip6/::1/tcp/1".parse().unwrap();
        let public: Multiaddr = "/ip4/203.0.113.7/udp/1/quic-v1".parse().unwrap();
        assert!(!routable(&private, false));
        assert!(!routable(&loopback, false));
        assert!(routable(&public, false));
        assert!(routable(&private, true));
    }
}
