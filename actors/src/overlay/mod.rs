//! The Overlay actor: meshd's libp2p overlay, beside the Bitcoin wire protocol.
//!
//! One rust-libp2p Swarm ([`swarm`]: TCP and QUIC, Noise, Yamux, Identify, Ping, Kademlia,
//! GossipSub, mDNS, AutoNAT, circuit relay v2 client and server, DCUtR) driven by one task
//! ([`driver`]) that this actor starts and stops; its peers' view ([`book`]) and its key
//! ([`identity`], `overlay_key.dat`, 0600) are plain code. The actor is thin: it builds the
//! Swarm from the node's configuration, installs the command queue in the node's context
//! (so [`crate::node::Node`] can subscribe, publish and dial), and stops if the driver
//! ever ends on its own, so the NodeSupervisor restarts it with a fresh Swarm under the
//! same identity. An address it cannot listen on (a port in use) fails its start: at the
//! node's start that is a start-up error, as for the Bitcoin listener.
//!
//! Off unless `--overlay` (the [`crate::config::OverlayConfig`]); never behind `--proxy` or
//! with `--onlynet` excluding IPv4 and IPv6, as the overlay dials and listens directly.

pub mod book;
pub mod cluster;
pub mod driver;
pub mod identity;
pub mod swarm;

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::context::NodeContext;
use crate::shared::overlay_link::OVERLAY_COMMAND_QUEUE;

/// How long a stop waits for the driver to close its listeners and connections.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// The Overlay actor.
pub struct Overlay;

/// Tries at listening before the actor gives up: a restarted actor may find the port
/// still held for a moment by the old Swarm, whose task is being aborted.
const LISTEN_TRIES: u32 = 5;
/// Pause between those tries.
const LISTEN_RETRY: Duration = Duration::from_millis(200);

/// Messages of the Overlay actor: none but its stop (the driver's task does the work).
pub enum OverlayMsg {}

/// State of the Overlay actor.
pub struct OverlayState {
    ctx: Arc<NodeContext>,
    task: Option<AbortOnDrop>,
    stop: Option<oneshot::Sender<()>>,
}

/// The driver's task, aborted if the actor's state is dropped without a stop (a kill),
/// with what it published cleared: the next actor must find the ports free, and nobody may
/// read a dead overlay's status or queue commands to it.
struct AbortOnDrop(JoinHandle<()>, Arc<NodeContext>, u64);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
        clear_if_owner(&self.1, self.2);
    }
}

/// Clears the overlay's entries in the context, unless a newer Overlay actor owns them.
fn clear_if_owner(ctx: &NodeContext, generation: u64) {
    use std::sync::atomic::Ordering;
    if ctx.overlay_generation.load(Ordering::SeqCst) == generation {
        ctx.set_overlay_commands(None);
        ctx.set_overlay_announcement(None);
        ctx.set_overlay(None);
    }
}

impl Actor for Overlay {
    type Msg = OverlayMsg;
    type State = OverlayState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        myself: ActorRef<OverlayMsg>,
        ctx: Arc<NodeContext>,
    ) -> Result<OverlayState, ActorProcessingErr> {
        let config = ctx.config();
        let overlay = config.overlay.clone();
        let key = identity::load_or_create(&config.datadir)?;
        let network = config.network.to_string();
        let settings = swarm::SwarmSettings {
            network: network.clone(),
            agent: config.user_agent.clone(),
            mdns: overlay.mdns,
            relay_service: overlay.relay_service,
            local_addrs: overlay.local_addrs,
        };
        if !overlay.local_addrs && !overlay.mdns {
            for addr in overlay
                .bootstrap
                .iter()
                .filter(|a| !driver::is_global_addr(a))
            {
                warn!(%addr, "overlay bootstrap address is not a global one: off regtest (and without --overlay-mdns) the overlay never dials such addresses");
            }
        }
        let listen = overlay.listen_addrs(config.network.profile().default_port);
        let mut tries = 0;
        let swarm = loop {
            let mut swarm = swarm::build(key.clone(), &settings)?;
            match driver::listen(&mut swarm, &listen) {
                Ok(()) => break swarm,
                Err(e) if tries + 1 >= LISTEN_TRIES => return Err(e.into()),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(LISTEN_RETRY).await;
                }
            }
        };
        info!(peer_id = %swarm.local_peer_id(), "overlay starting");
        let (commands_tx, commands) = mpsc::channel(OVERLAY_COMMAND_QUEUE);
        let generation = ctx
            .overlay_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
            + 1;
        ctx.set_overlay_commands(Some(commands_tx));
        let (stop_tx, stop) = oneshot::channel();
        let args = driver::DriverArgs {
            swarm,
            bootstrap: overlay.bootstrap.clone(),
            topics: overlay.announced_topics(config.network.name(), config.compact_blocks),
            cluster_threshold: overlay.cluster_threshold,
            peer_target: overlay.peer_target,
            prune_min_age: overlay.prune_min_age,
            local_addrs: overlay.local_addrs,
            network,
            ctx: ctx.clone(),
            commands,
            stop,
        };
        let task = tokio::spawn(async move {
            use futures_util::FutureExt;
            // The driver ends only when told to; if it ever ends otherwise (a panic in
            // libp2p included), the actor stops with it, and the supervisor sees the exit.
            let why = match std::panic::AssertUnwindSafe(driver::run(args))
                .catch_unwind()
                .await
            {
                Ok(()) => "overlay driver ended",
                Err(_) => "overlay driver panicked",
            };
            myself.stop(Some(why.into()));
        });
        Ok(OverlayState {
            task: Some(AbortOnDrop(task, ctx.clone(), generation)),
            ctx,
            stop: Some(stop_tx),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<OverlayMsg>,
        msg: OverlayMsg,
        _state: &mut OverlayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {}
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<OverlayMsg>,
        state: &mut OverlayState,
    ) -> Result<(), ActorProcessingErr> {
        // No command queued to a stopping overlay.
        if let Some(task) = &state.task {
            clear_if_owner(&state.ctx, task.2);
        }
        if let Some(stop) = state.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = state.task.take() {
            if tokio::time::timeout(STOP_TIMEOUT, &mut task.0)
                .await
                .is_err()
            {
                warn!("overlay driver did not stop in time; aborting it");
            }
        }
        // Dropping the task's handle clears what this actor published (see AbortOnDrop).
        Ok(())
    }
}
