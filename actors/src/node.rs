//! The NodeSupervisor actor and [`Node`], the handle an embedding program (or the daemon)
//! holds.
//!
//! The supervisor starts the Manager and then the Listener, both linked. If one fails it is
//! restarted, rest-for-one (the Listener depends on the Manager, so a new Manager means a new
//! Listener too), at most [`SUPERVISOR_MAX_RESTARTS`] times inside
//! [`SUPERVISOR_RESTART_WINDOW`]; past that the node stops with an error instead of spinning.
//! A graceful shutdown stops the Listener (no new peers), asks the Manager to close every
//! connection (their stop hooks run), then stops the Manager and itself.

use std::collections::VecDeque;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::net::TcpListener;
use tracing::{error, info, warn};

use std::time::Duration;

use ipnet::IpNet;

use crate::config::{ConfigUpdate, NodeConfig};
use crate::connection::listener::{Listener, ListenerArgs};
use crate::constants::{
    SHUTDOWN_MANAGER_TIMEOUT, SUPERVISOR_MAX_RESTARTS, SUPERVISOR_RESTART_WINDOW,
};
use crate::context::NodeContext;
use crate::discovery::{DnsArgs, DnsDiscovery, DnsMsg};
use crate::events::{EventKind, EventStream};
use crate::fleet::Fleet;
use crate::manager::Manager;
use crate::msg::{ManagerMsg, OutboundKind, SyncMsg, SyncStatus};
use crate::overlay::{Overlay, OverlayMsg};
use crate::portmap::{PortMap, PortMapMsg};
use crate::shared::addr::AddrEntry;
use crate::shared::bans::BanEntry;
use crate::shared::overlay_link::OverlayCommand;
use crate::shared::peers::{PeerId, PeerInfo, PeerTable};
use crate::shared::slots::{SlotLimits, SlotUsage};
use crate::stun::{Stun, StunMsg};
use crate::sync::Sync;
use crate::tor::{TorControl, TorMsg};
use crate::wire::Message;

/// Messages of the NodeSupervisor.
pub enum NodeMsg {
    /// Graceful shutdown; replies when done.
    Shutdown(RpcReplyPort<()>),
    /// The Manager's handle (for the [`Node`] API).
    GetManager(RpcReplyPort<Option<ActorRef<ManagerMsg>>>),
    /// A child's cell (fault drills: kill it and watch the supervisor restart it).
    GetChild(NodeChild, RpcReplyPort<Option<ActorCell>>),
    /// Timer: start the overlay again after a restart that failed (its port still held),
    /// waiting this long before the next try if this one fails too.
    RetryOverlay(Duration),
}

/// First wait before an overlay that failed to restart is started again (doubling, up to
/// [`MAX_OVERLAY_RETRY`]): the rest of the node runs on meanwhile.
const OVERLAY_RETRY: Duration = Duration::from_secs(5);
/// Longest wait between tries at restarting the overlay.
const MAX_OVERLAY_RETRY: Duration = Duration::from_secs(300);

/// The NodeSupervisor's children, by role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeChild {
    /// The Manager (and through it every Connection).
    Manager,
    /// The Listener.
    Listener,
    /// DNS discovery.
    Dns,
    /// STUN.
    Stun,
    /// The port mapping (PCP, NAT-PMP, UPnP).
    PortMap,
    /// Sync.
    Sync,
    /// The libp2p overlay (with `--overlay`).
    Overlay,
    /// The Tor control-port client (when an onion service is wanted).
    Tor,
    /// The fleet link (with `--nats`).
    Fleet,
}

/// The root of the supervision tree.
pub struct NodeSupervisor;

/// Arguments of the NodeSupervisor.
pub struct NodeArgs {
    ctx: Arc<NodeContext>,
    listeners: Vec<Arc<TcpListener>>,
    onion_listener: Option<Arc<TcpListener>>,
}

/// State of the NodeSupervisor.
pub struct NodeState {
    ctx: Arc<NodeContext>,
    listeners: Vec<Arc<TcpListener>>,
    onion_listener: Option<Arc<TcpListener>>,
    manager: Option<ActorRef<ManagerMsg>>,
    listener: Option<ActorRef<()>>,
    dns: Option<ActorRef<DnsMsg>>,
    stun: Option<ActorRef<StunMsg>>,
    portmap: Option<ActorRef<PortMapMsg>>,
    overlay: Option<ActorRef<OverlayMsg>>,
    sync: Option<ActorRef<SyncMsg>>,
    tor: Option<ActorRef<TorMsg>>,
    fleet: Option<ActorRef<()>>,
    restarts: VecDeque<Instant>,
    stopping: bool,
}

impl NodeState {
    async fn start_manager(
        &mut self,
        myself: &ActorRef<NodeMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let (manager, _) =
            Actor::spawn_linked(None, Manager, self.ctx.clone(), myself.get_cell()).await?;
        self.manager = Some(manager);
        Ok(())
    }

    async fn start_listener(
        &mut self,
        myself: &ActorRef<NodeMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let Some(manager) = self.manager.clone() else {
            return Ok(());
        };
        let args = ListenerArgs {
            listeners: self.listeners.clone(),
            onion: self.onion_listener.clone(),
            manager,
            ctx: self.ctx.clone(),
        };
        let (listener, _) = Actor::spawn_linked(None, Listener, args, myself.get_cell()).await?;
        self.listener = Some(listener);
        Ok(())
    }

    async fn start_dns(&mut self, myself: &ActorRef<NodeMsg>) -> Result<(), ActorProcessingErr> {
        let Some(manager) = self.manager.clone() else {
            return Ok(());
        };
        let args = DnsArgs {
            ctx: self.ctx.clone(),
            manager,
        };
        let (dns, _) = Actor::spawn_linked(None, DnsDiscovery, args, myself.get_cell()).await?;
        self.dns = Some(dns);
        Ok(())
    }

    async fn start_sync(&mut self, myself: &ActorRef<NodeMsg>) -> Result<(), ActorProcessingErr> {
        let (sync, _) =
            Actor::spawn_linked(None, Sync, self.ctx.clone(), myself.get_cell()).await?;
        if let Ok(mut slot) = self.ctx.sync.write() {
            *slot = Some(sync.clone());
        }
        self.sync = Some(sync);
        Ok(())
    }

    async fn start_fleet(&mut self, myself: &ActorRef<NodeMsg>) -> Result<(), ActorProcessingErr> {
        let Some(manager) = self.manager.clone() else {
            return Ok(());
        };
        if self.ctx.config().fleet.is_none() {
            return Ok(());
        }
        let (fleet, _) =
            Actor::spawn_linked(None, Fleet, (self.ctx.clone(), manager), myself.get_cell())
                .await?;
        self.fleet = Some(fleet);
        Ok(())
    }

    async fn start_tor(&mut self, myself: &ActorRef<NodeMsg>) -> Result<(), ActorProcessingErr> {
        let Some(control) = crate::tor::control_port(&self.ctx) else {
            return Ok(());
        };
        let (tor, _) = Actor::spawn_linked(
            None,
            TorControl,
            (self.ctx.clone(), control),
            myself.get_cell(),
        )
        .await?;
        self.tor = Some(tor);
        Ok(())
    }

    async fn start_stun(&mut self, myself: &ActorRef<NodeMsg>) -> Result<(), ActorProcessingErr> {
        let (stun, _) =
            Actor::spawn_linked(None, Stun, self.ctx.clone(), myself.get_cell()).await?;
        self.stun = Some(stun);
        Ok(())
    }

    async fn start_portmap(
        &mut self,
        myself: &ActorRef<NodeMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let (portmap, _) =
            Actor::spawn_linked(None, PortMap, self.ctx.clone(), myself.get_cell()).await?;
        self.portmap = Some(portmap);
        Ok(())
    }

    async fn start_overlay(
        &mut self,
        myself: &ActorRef<NodeMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let config = self.ctx.config();
        if !config.overlay.enabled {
            return Ok(());
        }
        if !config.direct_ip() {
            info!("overlay off: --proxy is set or --onlynet excludes IPv4 and IPv6");
            return Ok(());
        }
        let (overlay, _) =
            Actor::spawn_linked(None, Overlay, self.ctx.clone(), myself.get_cell()).await?;
        self.overlay = Some(overlay);
        Ok(())
    }

    /// Starts the overlay again; on failure, schedules another try after `wait`.
    async fn restart_overlay(&mut self, myself: &ActorRef<NodeMsg>, wait: Duration) {
        if self.stopping || self.overlay.is_some() {
            return;
        }
        if let Err(e) = self.start_overlay(myself).await {
            error!(error = %e, retry_in_secs = wait.as_secs(), "overlay did not restart; the node runs on without it");
            let me = myself.clone();
            let next = (wait * 2).min(MAX_OVERLAY_RETRY);
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                let _ = me.cast(NodeMsg::RetryOverlay(next));
            });
        }
    }

    /// Stops every child in order, the Manager last so that it closes its peers and saves
    /// the address book and ban list.
    async fn stop_children(&mut self) {
        self.stopping = true;
        self.ctx.begin_shutdown();
        if let Some(l) = self.listener.take() {
            let _ = l.stop_and_wait(Some("shutdown".into()), None).await;
        }
        if let Some(d) = self.dns.take() {
            let _ = d.stop_and_wait(Some("shutdown".into()), None).await;
        }
        if let Some(st) = self.stun.take() {
            let _ = st.stop_and_wait(Some("shutdown".into()), None).await;
        }
        // The mapping is deleted while the Listener is closed: nobody new arrives by it.
        if let Some(pm) = self.portmap.take() {
            let _ = pm.stop_and_wait(Some("shutdown".into()), None).await;
        }
        if let Some(o) = self.overlay.take() {
            let _ = o.stop_and_wait(Some("shutdown".into()), None).await;
        }
        if let Some(f) = self.fleet.take() {
            let _ = f.stop_and_wait(Some("shutdown".into()), None).await;
        }
        // Before the Manager: the onion service is removed while peers are still closing.
        if let Some(t) = self.tor.take() {
            let _ = t.stop_and_wait(Some("shutdown".into()), None).await;
        }
        if let Some(sy) = self.sync.take() {
            sy.stop_and_wait(Some("shutdown".into()), None).await.ok();
        }
        if let Some(m) = self.manager.take() {
            if m.get_status() == ractor::ActorStatus::Running {
                let _ = m
                    .call(ManagerMsg::Shutdown, Some(SHUTDOWN_MANAGER_TIMEOUT))
                    .await;
            }
            let _ = m.stop_and_wait(Some("shutdown".into()), None).await;
        }
    }

    /// Records a restart; false when the restart budget is spent.
    fn allow_restart(&mut self) -> bool {
        let now = Instant::now();
        while self
            .restarts
            .front()
            .is_some_and(|t| now.duration_since(*t) > SUPERVISOR_RESTART_WINDOW)
        {
            self.restarts.pop_front();
        }
        self.restarts.push_back(now);
        self.restarts.len() <= SUPERVISOR_MAX_RESTARTS
    }

    async fn on_child_exit(
        &mut self,
        myself: &ActorRef<NodeMsg>,
        cell: ActorCell,
        why: String,
    ) -> Result<(), ActorProcessingErr> {
        if self.stopping {
            return Ok(());
        }
        let id = cell.get_id();
        let is = |r: Option<ActorCell>| r.is_some_and(|c| c.get_id() == id);
        let which = if is(self.manager.as_ref().map(|a| a.get_cell())) {
            "manager"
        } else if is(self.listener.as_ref().map(|a| a.get_cell())) {
            "listener"
        } else if is(self.dns.as_ref().map(|a| a.get_cell())) {
            "dns"
        } else if is(self.stun.as_ref().map(|a| a.get_cell())) {
            "stun"
        } else if is(self.portmap.as_ref().map(|a| a.get_cell())) {
            "portmap"
        } else if is(self.overlay.as_ref().map(|a| a.get_cell())) {
            "overlay"
        } else if is(self.sync.as_ref().map(|a| a.get_cell())) {
            "sync"
        } else if is(self.tor.as_ref().map(|a| a.get_cell())) {
            "tor"
        } else if is(self.fleet.as_ref().map(|a| a.get_cell())) {
            "fleet"
        } else {
            return Ok(());
        };
        if !self.allow_restart() {
            error!(child = which, %why, "restart intensity exceeded; stopping the node");
            // The other children stop in order, so the Manager saves peers.dat and bans.dat.
            self.ctx.mark_gave_up();
            self.stop_children().await;
            myself.stop(Some(format!("{which} failed too often: {why}")));
            return Ok(());
        }
        warn!(child = which, %why, "restarting");
        match which {
            "manager" => {
                // Rest-for-one: the Listener and DnsDiscovery hold the old Manager's handle.
                if let Some(l) = self.listener.take() {
                    l.stop(None);
                }
                if let Some(d) = self.dns.take() {
                    d.stop(None);
                }
                if let Some(f) = self.fleet.take() {
                    f.stop(None);
                }
                self.start_manager(myself).await?;
                self.start_listener(myself).await?;
                self.start_dns(myself).await?;
                self.start_fleet(myself).await
            }
            "listener" => self.start_listener(myself).await,
            "dns" => self.start_dns(myself).await,
            "tor" => self.start_tor(myself).await,
            "fleet" => self.start_fleet(myself).await,
            // A new task maps again; the old mapping, not deleted, is refreshed by the new
            // request (same port) or expires.
            "portmap" => self.start_portmap(myself).await,
            // A new Swarm under the same identity (overlay_key.dat); peers find it again
            // through the bootstrap peers and their routing tables.
            // A failed restart (its ports still held) leaves the node running without it and
            // tries again later, rather than taking the node down.
            "overlay" => {
                self.overlay = None;
                self.restart_overlay(myself, OVERLAY_RETRY).await;
                Ok(())
            }
            // Connections find Sync through the context, so a new one is picked up at once;
            // the Manager, the one owner of the peer set, tells it of every live peer.
            "sync" => {
                self.start_sync(myself).await?;
                if let Some(m) = &self.manager {
                    let _ = m.cast(ManagerMsg::AnnouncePeersToSync);
                }
                Ok(())
            }
            // The Stun actor depends on nothing else: restart it alone.
            _ => self.start_stun(myself).await,
        }
    }
}

impl Actor for NodeSupervisor {
    type Msg = NodeMsg;
    type State = NodeState;
    type Arguments = NodeArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: NodeArgs,
    ) -> Result<NodeState, ActorProcessingErr> {
        Ok(NodeState {
            ctx: args.ctx,
            listeners: args.listeners,
            onion_listener: args.onion_listener,
            manager: None,
            listener: None,
            dns: None,
            stun: None,
            portmap: None,
            overlay: None,
            sync: None,
            tor: None,
            fleet: None,
            restarts: VecDeque::new(),
            stopping: false,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        // The overlay first: an address it cannot listen on is a start-up error, before
        // any peer is dialled or state is touched.
        if let Err(e) = state.start_overlay(&myself).await {
            let _ = state.ctx.start_error.set(e.to_string());
            return Err(e);
        }
        // Sync next: Connections hand it chain messages from their first handshake on.
        state.start_sync(&myself).await?;
        state.start_manager(&myself).await?;
        state.start_listener(&myself).await?;
        state.start_dns(&myself).await?;
        state.start_tor(&myself).await?;
        state.start_fleet(&myself).await?;
        state.start_stun(&myself).await?;
        state.start_portmap(&myself).await
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: NodeMsg,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            NodeMsg::GetManager(reply) => {
                let _ = reply.send(state.manager.clone());
            }
            NodeMsg::GetChild(which, reply) => {
                let cell = match which {
                    NodeChild::Manager => state.manager.as_ref().map(|a| a.get_cell()),
                    NodeChild::Listener => state.listener.as_ref().map(|a| a.get_cell()),
                    NodeChild::Dns => state.dns.as_ref().map(|a| a.get_cell()),
                    NodeChild::Stun => state.stun.as_ref().map(|a| a.get_cell()),
                    NodeChild::PortMap => state.portmap.as_ref().map(|a| a.get_cell()),
                    NodeChild::Sync => state.sync.as_ref().map(|a| a.get_cell()),
                    NodeChild::Overlay => state.overlay.as_ref().map(|a| a.get_cell()),
                    NodeChild::Tor => state.tor.as_ref().map(|a| a.get_cell()),
                    NodeChild::Fleet => state.fleet.as_ref().map(|a| a.get_cell()),
                };
                let _ = reply.send(cell);
            }
            NodeMsg::RetryOverlay(next) => state.restart_overlay(&myself, next).await,
            NodeMsg::Shutdown(reply) => {
                state.stop_children().await;
                info!("node stopped");
                let _ = reply.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut NodeState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, last_state, why) => {
                // A killed child's state comes with the event: dropped before its successor
                // starts, so what it holds (the overlay's Swarm and ports) is let go first.
                drop(last_state);
                let why = why.unwrap_or_else(|| "stopped".into());
                state.on_child_exit(&myself, cell, why).await?;
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                state.on_child_exit(&myself, cell, err.to_string()).await?;
            }
            _ => {}
        }
        Ok(())
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The data directory could not be created or opened.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process holds the data directory.
    #[error("data directory {0} is in use by another meshd process")]
    DataDirLocked(String),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The supervision tree did not start.
    #[error("supervision tree failed to start: {0}")]
    Spawn(String),
}

/// Renders the metrics derived from live node state; cheap to clone.
#[derive(Clone)]
pub struct MetricsSource(Arc<NodeContext>);

impl MetricsSource {
    /// Prometheus text of the live metrics.
    pub fn render(&self) -> String {
        crate::metrics::render(&self.0)
    }
}

/// How the node ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeExit {
    /// A requested, graceful shutdown.
    Graceful,
    /// The node stopped by itself (restart intensity exceeded, or a bug).
    Failed(String),
}

/// A running node.
pub struct Node {
    supervisor: ActorRef<NodeMsg>,
    stopped: tokio::sync::watch::Receiver<Option<NodeExit>>,
    ctx: Arc<NodeContext>,
    listen_addrs: Vec<SocketAddr>,
    /// Files removed when the tree has stopped, before the data-dir lock is released.
    exit_files: Arc<std::sync::Mutex<Vec<std::path::PathBuf>>>,
}

impl Node {
    /// Creates the data directory, binds the listen addresses and starts the supervision
    /// tree. Errors here are configuration or environment problems, reported before any
    /// peer traffic.
    pub async fn start(config: NodeConfig) -> Result<Node, StartError> {
        let dir = config.datadir.clone();
        let dir_err = |source| StartError::DataDir {
            path: dir.display().to_string(),
            source,
        };
        crate::persist::create_private_dir(&dir).map_err(dir_err)?;
        // The directory holds the cookie, the fleet and onion keys and what peers told us:
        // an existing one open to others is closed (created ones already are).
        match crate::persist::make_dir_private(&dir) {
            Ok(true) => {
                info!(datadir = %dir.display(), "data directory was open to other users; made private (0700)")
            }
            Ok(false) => {}
            // A directory we may write but not chmod (not ours): the node still runs; its
            // files are private all the same.
            Err(e) => {
                warn!(datadir = %dir.display(), error = %e, "data directory is open to other users and could not be made private")
            }
        }
        let lock = crate::persist::private_options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(".lock"))
            .map_err(dir_err)?;
        crate::persist::make_private(&lock).map_err(dir_err)?;
        if lock.try_lock().is_err() {
            return Err(StartError::DataDirLocked(dir.display().to_string()));
        }
        let mut listeners = Vec::new();
        let mut listen_addrs = Vec::new();
        for addr in &config.listen {
            let socket = bind(*addr).map_err(|source| StartError::Bind {
                addr: *addr,
                source,
            })?;
            listen_addrs.push(socket.local_addr().unwrap_or(*addr));
            listeners.push(Arc::new(socket));
        }
        // Tor's peers get a loopback listener of their own, so they are known as onion
        // peers (as Core's `-bind=...=onion`); only when an onion service may be made.
        let onion_listener = match crate::tor::wants_onion_service(&config, &listen_addrs) {
            true => {
                let addr = SocketAddr::from(([127, 0, 0, 1], 0));
                Some(Arc::new(
                    bind(addr).map_err(|source| StartError::Bind { addr, source })?,
                ))
            }
            false => None,
        };
        let bans = crate::manager::load_bans(&dir);
        let ctx = Arc::new(NodeContext::new(config, bans, &listen_addrs));
        if let Some(addr) = onion_listener.as_ref().and_then(|l| l.local_addr().ok()) {
            let _ = ctx.onion_bind.set(addr);
        }
        let config = ctx.config();
        info!(
            network = %config.network,
            datadir = %config.datadir.display(),
            user_agent = %config.user_agent,
            max_outbound = config.slots.outbound,
            max_inbound = config.slots.inbound,
            max_connections = config.slots.total,
            "starting node"
        );
        let args = NodeArgs {
            ctx: ctx.clone(),
            listeners,
            onion_listener,
        };
        let (supervisor, join) = Actor::spawn(None, NodeSupervisor, args)
            .await
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        // Messages are handled only after post_start has started every child, so this call
        // returns once the tree is up: the Node handed back is ready to use.
        let answered = supervisor.call(NodeMsg::GetManager, None).await;
        if !matches!(answered, Ok(ractor::rpc::CallResult::Success(_))) {
            let _ = join.await;
            let why = ctx.start_error.get().cloned();
            return Err(StartError::Spawn(
                why.unwrap_or_else(|| "the supervision tree did not start".into()),
            ));
        }
        let (tx, stopped) = tokio::sync::watch::channel(None);
        let watched = ctx.clone();
        let exit_files: Arc<std::sync::Mutex<Vec<std::path::PathBuf>>> = Arc::default();
        let to_remove = exit_files.clone();
        tokio::spawn(async move {
            let join_result = join.await;
            // Files that mean "this node is running" go while it still holds the directory:
            // removed after the unlock, they could be a restarted node's new ones.
            let files = match to_remove.lock() {
                Ok(mut f) => std::mem::take(&mut *f),
                Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
            };
            for f in files {
                let _ = std::fs::remove_file(f);
            }
            // The data-dir lock goes with the tree: once `wait` returns, another node (or a
            // restart of this one) may open the same directory.
            drop(lock);
            let exit = match join_result {
                Err(e) => NodeExit::Failed(e.to_string()),
                Ok(()) if watched.is_shutting_down() && !watched.gave_up() => NodeExit::Graceful,
                Ok(()) => NodeExit::Failed("supervision tree stopped".into()),
            };
            let _ = tx.send(Some(exit));
        });
        Ok(Node {
            supervisor,
            stopped,
            ctx,
            listen_addrs,
            exit_files,
        })
    }

    /// Removes `path` when the node stops, however it stops, before the data directory is
    /// unlocked (the API cookie: a restart writes its own as soon as it holds the lock).
    pub fn remove_on_exit(&self, path: std::path::PathBuf) {
        match self.exit_files.lock() {
            Ok(mut f) => f.push(path),
            Err(poisoned) => poisoned.into_inner().push(path),
        }
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn listen_addrs(&self) -> &[SocketAddr] {
        &self.listen_addrs
    }

    /// Addresses we advertise as ours.
    pub fn advertised_addrs(&self) -> Vec<SocketAddr> {
        self.ctx.advertised()
    }

    /// Mines `n` blocks on our tip (regtest only) and announces them; returns their hashes.
    pub async fn generate(&self, n: u32) -> Result<Vec<bitcoin::BlockHash>, String> {
        self.generate_with(n, Vec::new()).await
    }

    /// As [`Self::generate`], with `txs` after the coinbase of the first block (regtest;
    /// checked as any block is, not against coins: meshd keeps none).
    pub async fn generate_with(
        &self,
        n: u32,
        txs: Vec<bitcoin::Transaction>,
    ) -> Result<Vec<bitcoin::BlockHash>, String> {
        self.generate_order(crate::msg::GenerateOrder {
            blocks: n,
            txs,
            payout: None,
        })
        .await
    }

    /// Mines what `order` says (regtest): generatetoaddress's coinbases pay to its script.
    pub async fn generate_order(
        &self,
        order: crate::msg::GenerateOrder,
    ) -> Result<Vec<bitcoin::BlockHash>, String> {
        let sync = self.ctx.sync_ref().ok_or("sync is not running")?;
        match sync.call(|r| SyncMsg::Generate(order, r), None).await {
            Ok(ractor::rpc::CallResult::Success(r)) => r,
            _ => Err("sync did not answer".into()),
        }
    }

    /// Header hints from the best chain: its hash every [`crate::sync::hints::HINT_INTERVAL`]
    /// heights (what `meshd hints export` writes).
    pub async fn header_hints(&self) -> Result<Vec<(u32, bitcoin::BlockHash)>, String> {
        let sync = self.ctx.sync_ref().ok_or("sync is not running")?;
        match sync.call(SyncMsg::Hints, None).await {
            Ok(ractor::rpc::CallResult::Success(r)) => Ok(r),
            _ => Err("sync did not answer".into()),
        }
    }

    /// Relays a transaction through the pool, as if a peer had sent it.
    pub fn submit_tx(&self, tx: bitcoin::Transaction) -> bool {
        self.ctx
            .sync_ref()
            .is_some_and(|s| s.cast(SyncMsg::SubmitTx(Box::new(tx))).is_ok())
    }

    /// Header sync status.
    pub fn sync_status(&self) -> SyncStatus {
        self.ctx.sync_status()
    }

    /// The fleet link's state (`--nats`), if the node is in a fleet.
    pub fn fleet_status(&self) -> Option<crate::fleet::FleetStatus> {
        let config = self.ctx.config().fleet.clone()?;
        Some(self.ctx.fleet_shared().status(&config))
    }

    /// The fleet's nodes from their heartbeats, each with whether it is stale.
    pub async fn fleet_nodes(&self) -> Result<Vec<(crate::fleet::core::Heartbeat, bool)>, String> {
        crate::fleet::nodes(&self.ctx).await
    }

    /// Block propagation across the fleet, the `last` newest blocks.
    pub async fn fleet_propagation(
        &self,
        last: usize,
    ) -> Result<Vec<crate::fleet::core::Propagation>, String> {
        crate::fleet::propagation(&self.ctx, last).await
    }

    /// Our onion service, while it is up (`--torcontrol`, `--listenonion`).
    pub fn onion_service(&self) -> Option<crate::shared::status::OnionService> {
        self.ctx.onion_service()
    }

    /// The listening port's mapping on the gateway (`--natpmp`, `--upnp`), if mapping runs.
    pub fn port_map(&self) -> Option<crate::shared::status::PortMapStatus> {
        self.ctx.port_map()
    }

    /// The overlay's status and its connected peers, while it runs (`--overlay`).
    pub fn overlay(
        &self,
    ) -> Option<(
        crate::shared::status::OverlayStatus,
        Vec<crate::shared::status::OverlayPeerStatus>,
    )> {
        self.ctx.overlay()
    }

    /// Subscribes the overlay to a GossipSub topic; false when it does not run or is busy.
    /// Its messages arrive as [`crate::events::NodeEvent::OverlayGossipReceived`].
    pub fn overlay_subscribe(&self, topic: &str) -> bool {
        self.ctx
            .overlay_command(OverlayCommand::Subscribe(topic.to_string()))
    }

    /// Publishes on an overlay topic; false when the overlay does not run or is busy.
    pub fn overlay_publish(&self, topic: &str, data: Vec<u8>) -> bool {
        self.ctx.overlay_command(OverlayCommand::Publish {
            topic: topic.to_string(),
            data,
        })
    }

    /// Announces a topic we serve on the overlay (seed 004's `announce_topic`): a DHT
    /// provider record and a GossipSub subscription; false when the overlay does not run
    /// or is busy.
    pub fn overlay_provide(&self, topic: &str) -> bool {
        self.ctx
            .overlay_command(OverlayCommand::Provide(topic.to_string()))
    }

    /// Finds the overlay peers that serve a topic (seed 004's `find_peers_for_topic`), by
    /// a DHT walk (at most Kademlia's query timeout, 30 s); those not connected are dialled.
    pub async fn overlay_find(
        &self,
        topic: &str,
    ) -> Result<Vec<crate::shared::status::TopicProvider>, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let asked = self.ctx.overlay_command(OverlayCommand::Find {
            topic: topic.to_string(),
            reply,
        });
        if !asked {
            return Err(
                "the overlay does not run (start the node with --overlay), or is busy".into(),
            );
        }
        answer.await.map_err(|_| {
            "the overlay refused the find (16 are in flight) or stopped before it ended".to_string()
        })
    }

    /// Dials an overlay address (ending in `/p2p/<peer id>` to know whom); false when the
    /// overlay does not run or is busy.
    pub fn overlay_dial(&self, addr: libp2p::Multiaddr) -> bool {
        self.ctx.overlay_command(OverlayCommand::Dial(addr))
    }

    /// The last STUN result: public address and NAT type.
    pub fn stun_report(&self) -> Option<crate::shared::status::NatReport> {
        self.ctx.stun_report()
    }

    /// Restarts of an outbound address since start.
    pub fn restarts_of(&self, addr: &SocketAddr) -> u64 {
        self.ctx.restart_counts.get(addr).map_or(0, |v| *v)
    }

    /// The network profile in force.
    pub fn profile(&self) -> &crate::network::Profile {
        &self.ctx.profile
    }

    /// The live peer table.
    pub fn peer_table(&self) -> &PeerTable {
        &self.ctx.peers
    }

    /// A snapshot of every peer.
    pub fn peers(&self) -> Vec<PeerInfo> {
        self.ctx.peers.snapshot()
    }

    /// The configuration now in force.
    pub fn config(&self) -> Arc<NodeConfig> {
        self.ctx.config()
    }

    /// Changes runtime settings: slots, bandwidth, ping interval, timeouts, ban threshold.
    /// Every live Connection picks them up without a restart; lowering the inbound limit
    /// disconnects the excess peers in eviction order.
    pub async fn update_config(&self, update: ConfigUpdate) -> Result<Arc<NodeConfig>, String> {
        let mut next = (*self.ctx.config()).clone();
        update.apply(&mut next)?;
        self.ctx.set_config(next);
        if let Some(m) = self.manager().await {
            let _ = m.call(ManagerMsg::ConfigChanged, None).await;
        }
        Ok(self.ctx.config())
    }

    /// Subscribes to every event from now on.
    pub fn subscribe(&self) -> EventStream {
        self.ctx.events.subscribe()
    }

    /// The kept events after sequence number `seq` (for a subscriber that resumes).
    pub fn events_since(&self, seq: u64) -> crate::events::Replay {
        self.ctx.events.since(seq)
    }

    /// Subscribes to some kinds of event.
    pub fn subscribe_to(&self, kinds: &[EventKind]) -> EventStream {
        self.ctx.events.subscribe_to(kinds)
    }

    /// Slots in use and their limits.
    pub fn slots(&self) -> (SlotUsage, SlotLimits) {
        (self.ctx.slots.usage(), self.ctx.slots.limits())
    }

    /// Bans a subnet (or one address) for `duration`; connected peers inside it are
    /// disconnected, and it is saved to the data dir.
    pub async fn ban(&self, subnet: IpNet, duration: Duration) -> Option<BanEntry> {
        let m = self.manager().await?;
        match m.call(|r| ManagerMsg::Ban(subnet, duration, r), None).await {
            Ok(ractor::rpc::CallResult::Success(e)) => Some(e),
            _ => None,
        }
    }

    /// Lifts the ban on exactly this subnet; false if there was none.
    pub async fn unban(&self, subnet: IpNet) -> bool {
        let Some(m) = self.manager().await else {
            return false;
        };
        matches!(
            m.call(|r| ManagerMsg::Unban(subnet, r), None).await,
            Ok(ractor::rpc::CallResult::Success(true))
        )
    }

    /// Every address in the address book.
    pub async fn known_addresses(&self) -> Vec<AddrEntry> {
        let Some(m) = self.manager().await else {
            return Vec::new();
        };
        match m.call(ManagerMsg::KnownAddresses, None).await {
            Ok(ractor::rpc::CallResult::Success(v)) => v,
            _ => Vec::new(),
        }
    }

    /// The live ban list.
    pub async fn bans(&self) -> Vec<BanEntry> {
        let Some(m) = self.manager().await else {
            return Vec::new();
        };
        match m.call(ManagerMsg::ListBans, None).await {
            Ok(ractor::rpc::CallResult::Success(v)) => v,
            _ => Vec::new(),
        }
    }

    /// The manual peers and their state (Core's getaddednodeinfo).
    pub async fn added_nodes(&self) -> Vec<crate::msg::AddedNode> {
        let Some(m) = self.manager().await else {
            return Vec::new();
        };
        match m.call(ManagerMsg::AddedNodes, None).await {
            Ok(ractor::rpc::CallResult::Success(v)) => v,
            _ => Vec::new(),
        }
    }

    /// Forgets a manual peer (Core's `addnode ADDR remove`); false if it was not one.
    pub async fn remove_added_node(&self, addr: SocketAddr) -> bool {
        let Some(m) = self.manager().await else {
            return false;
        };
        matches!(
            m.call(|r| ManagerMsg::RemoveAddedNode(addr, r), None).await,
            Ok(ractor::rpc::CallResult::Success(true))
        )
    }

    /// Has every connection ping as soon as no ping is in flight (Core's `ping` RPC).
    pub async fn ping_all(&self) -> bool {
        match self.manager().await {
            Some(m) => m.cast(ManagerMsg::PingAll).is_ok(),
            None => false,
        }
    }

    /// Asks Sync about the chain or the pool.
    pub async fn query(
        &self,
        q: crate::msg::ChainQuery,
    ) -> Result<crate::msg::ChainAnswer, String> {
        let sync = self.ctx.sync_ref().ok_or("sync is not running")?;
        match sync.call(|r| SyncMsg::Query(q, r), None).await {
            Ok(ractor::rpc::CallResult::Success(a)) => Ok(a),
            _ => Err("sync did not answer".into()),
        }
    }

    /// Bytes received from and sent to peers since start, every connection's (Core's
    /// getnettotals).
    pub fn net_totals(&self) -> (u64, u64) {
        (
            self.ctx
                .total_received
                .load(std::sync::atomic::Ordering::Relaxed),
            self.ctx
                .total_sent
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// A cloneable handle that renders the live metrics (for an HTTP handler).
    pub fn metrics_source(&self) -> MetricsSource {
        MetricsSource(self.ctx.clone())
    }

    /// Prometheus text for the metrics derived from live state (peers, slots, bans,
    /// restarts, throttling); the daemon appends it to the recorder's output.
    pub fn render_live_metrics(&self) -> String {
        crate::metrics::render(&self.ctx)
    }

    async fn manager(&self) -> Option<ActorRef<ManagerMsg>> {
        self.supervisor
            .call(NodeMsg::GetManager, None)
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .flatten()
    }

    /// A child of the supervision tree, for fault drills and tests: killing it
    /// (`ActorCell::kill`) shows what the supervisor does when that part fails.
    pub async fn child(&self, which: NodeChild) -> Option<ActorCell> {
        self.supervisor
            .call(|r| NodeMsg::GetChild(which, r), None)
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .flatten()
    }

    /// The peers the Sync actor knows, by id (they match the peer table's connected peers).
    pub async fn sync_peers(&self) -> Vec<PeerId> {
        let Some(sync) = self.ctx.sync_ref() else {
            return Vec::new();
        };
        sync.call(SyncMsg::Peers, None)
            .await
            .ok()
            .and_then(|r| r.success_or(()).ok())
            .unwrap_or_default()
    }

    /// Dials a peer; `persistent` keeps it connected (restarted under the window policy),
    /// otherwise it is tried once.
    pub async fn connect(&self, addr: SocketAddr, persistent: bool) -> bool {
        let kind = if persistent {
            OutboundKind::Persistent
        } else {
            OutboundKind::OneTry
        };
        match self.manager().await {
            Some(m) => m.cast(ManagerMsg::Connect { addr, kind }).is_ok(),
            None => false,
        }
    }

    /// Closes a peer's connection; false if there is no such peer.
    pub async fn disconnect(&self, id: PeerId) -> bool {
        let Some(m) = self.manager().await else {
            return false;
        };
        matches!(
            m.call(|r| ManagerMsg::Disconnect(id, r), None).await,
            Ok(ractor::rpc::CallResult::Success(true))
        )
    }

    /// Sends a message to one peer; false if there is no such peer.
    pub async fn send_to(&self, id: PeerId, message: Message) -> bool {
        let Some(m) = self.manager().await else {
            return false;
        };
        matches!(
            m.call(|r| ManagerMsg::SendTo(id, message, r), None).await,
            Ok(ractor::rpc::CallResult::Success(true))
        )
    }

    /// Graceful shutdown: stop accepting, close every peer, stop the tree.
    pub async fn shutdown(&self) -> NodeExit {
        let _ = self.supervisor.call(NodeMsg::Shutdown, None).await;
        self.wait().await
    }

    /// Waits until the node has stopped (by a shutdown, or by itself).
    pub async fn wait(&self) -> NodeExit {
        let mut rx = self.stopped.clone();
        let exit = match rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone().unwrap_or(NodeExit::Graceful),
            Err(_) => NodeExit::Failed("node state lost".into()),
        };
        exit
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    // socket2, because tokio cannot set IPV6_V6ONLY: without it `[::]:P` would also take
    // `0.0.0.0:P` and a second listen address on the same port would fail.
    let domain = socket2::Domain::for_address(addr);
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}
