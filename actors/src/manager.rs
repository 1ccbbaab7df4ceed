//! The Manager actor: supervisor of every Connection, owner of the peer set.
//!
//! It spawns a Connection for each accepted inbound socket and each outbound target, keeps
//! the peer table's rows, and decides what happens when a Connection ends: the Connection
//! hands back its final state with the typed [`DisconnectReason`]; a `--connect` (persistent)
//! peer is dialled again after [`PERSISTENT_RECONNECT_DELAY`], an inbound peer never is.
//!
//! Seams for later work: slot reservation goes in [`ManagerState::admit`] (before a
//! Connection is spawned), the windowed restart policy in [`ManagerState::on_connection_end`],
//! and address-book driven outbound upkeep in the `Redial` path.
//!
//! ractor's default supervision hook stops the parent when a child exits; the Manager
//! overrides it, since a peer going away is business as usual.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::connection::{Connection, ConnectionArgs, ConnectionMsg, ConnectionState, Transport};
use crate::constants::{PERSISTENT_RECONNECT_DELAY, SHUTDOWN_PEER_TIMEOUT};
use crate::context::NodeContext;
use crate::peer::{Direction, DisconnectReason};
use crate::peers::{PeerId, PeerInfo};
use crate::wire::Message;

/// The Manager actor.
pub struct Manager;

/// Messages the Manager handles.
pub enum ManagerMsg {
    /// The Listener accepted a socket.
    InboundAccepted {
        /// The socket.
        stream: TcpStream,
        /// Remote address.
        addr: SocketAddr,
    },
    /// Dial a peer; `persistent` peers are dialled again whenever they drop.
    Connect {
        /// Address to dial.
        addr: SocketAddr,
        /// Keep it connected.
        persistent: bool,
    },
    /// Timer: dial a persistent peer again.
    Redial(SocketAddr),
    /// Close one peer's connection; replies whether it existed.
    Disconnect(PeerId, RpcReplyPort<bool>),
    /// Send a message to one peer; replies whether it existed.
    SendTo(PeerId, Message, RpcReplyPort<bool>),
    /// Close every connection and refuse new ones; replies when all have stopped.
    Shutdown(RpcReplyPort<()>),
}

struct Child {
    id: PeerId,
    addr: SocketAddr,
    direction: Direction,
    actor: ActorRef<ConnectionMsg>,
}

/// The Manager's state.
pub struct ManagerState {
    ctx: Arc<NodeContext>,
    children: HashMap<ActorId, Child>,
    by_peer: HashMap<PeerId, ActorId>,
    persistent: HashSet<SocketAddr>,
}

impl ManagerState {
    /// Decides whether a new connection may start. Always yes for now: slot limits come with
    /// the slots work and plug in here.
    fn admit(&self, _direction: Direction, _addr: SocketAddr) -> bool {
        !self.ctx.is_shutting_down()
    }

    async fn spawn(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        addr: SocketAddr,
        direction: Direction,
        manual: bool,
        transport: Transport,
    ) {
        if !self.admit(direction, addr) {
            debug!(peer = %addr, %direction, "not admitted");
            return;
        }
        let id = self.ctx.next_peer_id();
        self.ctx
            .peers
            .insert(PeerInfo::new(id, addr, direction, manual));
        let args = ConnectionArgs {
            id,
            addr,
            direction,
            manual,
            transport,
            ctx: self.ctx.clone(),
        };
        match Actor::spawn_linked(None, Connection, args, myself.get_cell()).await {
            Ok((actor, _join)) => {
                debug!(peer = %addr, id = %id, %direction, "connection started");
                self.by_peer.insert(id, actor.get_id());
                self.children.insert(
                    actor.get_id(),
                    Child {
                        id,
                        addr,
                        direction,
                        actor,
                    },
                );
            }
            Err(e) => {
                warn!(peer = %addr, id = %id, error = %e, "could not start a connection actor");
                self.ctx.peers.remove(id);
            }
        }
    }

    fn on_connection_end(
        &mut self,
        myself: &ActorRef<ManagerMsg>,
        actor: ActorId,
        reason: DisconnectReason,
    ) {
        let Some(child) = self.children.remove(&actor) else {
            return;
        };
        self.by_peer.remove(&child.id);
        self.ctx.peers.remove(child.id);
        debug!(peer = %child.addr, id = %child.id, reason = %reason, "connection ended");
        let shutting_down = self.ctx.is_shutting_down();
        if child.direction == Direction::Outbound
            && self.persistent.contains(&child.addr)
            && !shutting_down
        {
            info!(peer = %child.addr, delay_s = PERSISTENT_RECONNECT_DELAY.as_secs(), "persistent peer dropped; will dial again");
            let addr = child.addr;
            myself.send_after(PERSISTENT_RECONNECT_DELAY, move || ManagerMsg::Redial(addr));
        }
    }
}

impl Actor for Manager {
    type Msg = ManagerMsg;
    type State = ManagerState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        ctx: Arc<NodeContext>,
    ) -> Result<ManagerState, ActorProcessingErr> {
        Ok(ManagerState {
            persistent: ctx.config.connect.iter().copied().collect(),
            ctx,
            children: HashMap::new(),
            by_peer: HashMap::new(),
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        let targets: Vec<SocketAddr> = state.persistent.iter().copied().collect();
        for addr in targets {
            state
                .spawn(&myself, addr, Direction::Outbound, true, Transport::Dial)
                .await;
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: ManagerMsg,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ManagerMsg::InboundAccepted { stream, addr } => {
                state
                    .spawn(
                        &myself,
                        addr,
                        Direction::Inbound,
                        false,
                        Transport::Accepted(stream),
                    )
                    .await;
            }
            ManagerMsg::Connect { addr, persistent } => {
                if persistent {
                    state.persistent.insert(addr);
                }
                state
                    .spawn(
                        &myself,
                        addr,
                        Direction::Outbound,
                        persistent,
                        Transport::Dial,
                    )
                    .await;
            }
            ManagerMsg::Redial(addr) => {
                let connected = state
                    .children
                    .values()
                    .any(|c| c.addr == addr && c.direction == Direction::Outbound);
                if state.persistent.contains(&addr) && !connected {
                    state
                        .spawn(&myself, addr, Direction::Outbound, true, Transport::Dial)
                        .await;
                }
            }
            ManagerMsg::Disconnect(id, reply) => {
                let found = state.by_peer.get(&id).and_then(|a| state.children.get(a));
                if let Some(child) = found {
                    state.persistent.remove(&child.addr);
                    let _ = child
                        .actor
                        .cast(ConnectionMsg::Disconnect(DisconnectReason::Requested));
                }
                let _ = reply.send(found.is_some());
            }
            ManagerMsg::SendTo(id, message, reply) => {
                let found = state.by_peer.get(&id).and_then(|a| state.children.get(a));
                if let Some(child) = found {
                    let _ = child.actor.cast(ConnectionMsg::Send(message));
                }
                let _ = reply.send(found.is_some());
            }
            ManagerMsg::Shutdown(reply) => {
                state.ctx.begin_shutdown();
                let mut stopping = JoinSet::new();
                for child in state.children.values() {
                    let actor = child.actor.clone();
                    let _ = actor.cast(ConnectionMsg::Disconnect(DisconnectReason::Shutdown));
                    stopping.spawn(async move {
                        // The Disconnect above lets the Connection record its reason and run
                        // its stop hook; the stop is the backstop if its mailbox is stuck.
                        let _ = tokio::time::timeout(SHUTDOWN_PEER_TIMEOUT, actor.wait(None)).await;
                        if actor.get_status() != ractor::ActorStatus::Stopped {
                            let _ = actor.stop_and_wait(None, Some(SHUTDOWN_PEER_TIMEOUT)).await;
                        }
                    });
                }
                let count = stopping.len();
                while stopping.join_next().await.is_some() {}
                info!(peers = count, "all connections closed");
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut ManagerState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, final_state, _) => {
                let reason = final_state
                    .and_then(|mut s| s.take::<ConnectionState>().ok())
                    .and_then(|s| s.close_reason().cloned())
                    .unwrap_or_else(|| DisconnectReason::Stopped("killed".into()));
                state.on_connection_end(&myself, cell.get_id(), reason);
            }
            SupervisionEvent::ActorFailed(cell, err) => {
                let addr = state.children.get(&cell.get_id()).map(|c| c.addr);
                warn!(peer = ?addr, error = %err, "connection actor failed");
                metrics::counter!("meshd_disconnects_total", "reason" => "actor_failed")
                    .increment(1);
                state.on_connection_end(
                    &myself,
                    cell.get_id(),
                    DisconnectReason::Stopped(format!("actor failed: {err}")),
                );
            }
            _ => {}
        }
        Ok(())
    }
}
