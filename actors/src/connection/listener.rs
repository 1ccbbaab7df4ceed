//! The Listener actor: accept loops on the configured addresses.
//!
//! Sockets are bound by [`crate::node::Node::start`] before the tree starts (so a port in
//! use is a start-up error, not a crash), and handed in as `Arc`s so a restarted Listener
//! accepts on the same sockets. One accept task per address checks the ban list and drops a
//! banned peer's socket before reading a single byte; everything else goes to the Manager,
//! which asks for a slot.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::context::NodeContext;
use crate::msg::ManagerMsg;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
///
/// Without it a persistent EMFILE turns the accept loop into a busy spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The Listener actor.
pub struct Listener;

/// Arguments of the Listener.
pub struct ListenerArgs {
    /// Bound sockets.
    pub listeners: Vec<Arc<TcpListener>>,
    /// The onion service's own loopback socket (Tor delivers its peers there), if any.
    pub onion: Option<Arc<TcpListener>>,
    /// Where accepted sockets go.
    pub manager: ActorRef<ManagerMsg>,
    /// Shared node state (for the ban list).
    pub ctx: Arc<NodeContext>,
}

/// The Listener's state: its accept tasks, aborted when it stops.
pub struct ListenerState {
    tasks: Vec<JoinHandle<()>>,
}

impl Actor for Listener {
    type Msg = ();
    type State = ListenerState;
    type Arguments = ListenerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: ListenerArgs,
    ) -> Result<ListenerState, ActorProcessingErr> {
        let mut tasks = Vec::new();
        let all = args
            .listeners
            .into_iter()
            .map(|l| (l, false))
            .chain(args.onion.map(|l| (l, true)));
        for (listener, onion) in all {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, onion, "listening for peers");
            }
            tasks.push(tokio::spawn(accept_loop(
                listener,
                args.manager.clone(),
                args.ctx.clone(),
                onion,
            )));
        }
        Ok(ListenerState { tasks })
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut ListenerState,
    ) -> Result<(), ActorProcessingErr> {
        for t in state.tasks.drain(..) {
            t.abort();
        }
        Ok(())
    }
}

async fn accept_loop(
    listener: Arc<TcpListener>,
    manager: ActorRef<ManagerMsg>,
    ctx: Arc<NodeContext>,
    onion: bool,
) {
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                if ctx.refuses(addr.ip()) {
                    // Dropped unread: a banned peer gets nothing from us, not even a version.
                    debug!(peer = %addr, "refused a banned address");
                    metrics::counter!("meshd_inbound_refused_total", "reason" => "banned")
                        .increment(1);
                    drop(stream);
                    continue;
                }
                metrics::counter!("meshd_accepted_total").increment(1);
                if manager
                    .cast(ManagerMsg::InboundAccepted {
                        stream,
                        addr,
                        onion,
                    })
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}
