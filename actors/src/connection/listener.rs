//! The Listener actor: accept loops on the configured addresses.
//!
//! Sockets are bound by [`crate::node::Node::start`] before the tree starts (so a port in
//! use is a start-up error, not a crash), and handed in as `Arc`s so a restarted Listener
//! accepts on the same sockets. One accept task per address checks the ban list and drops a
//! banned peer's socket before reading a single byte; everything else goes to the Manager,
//! which asks for a slot. While [`MAX_PENDING_INBOUND_SOCKETS`] accepted sockets wait for the
//! Manager, the accept loops stop accepting (the kernel's backlog holds, then refuses, the
//! rest): a connection flood costs the Manager a bounded queue, not a file descriptor and a
//! mailbox entry per attempt.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::context::NodeContext;
use crate::msg::ManagerMsg;

/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
///
/// Without it a persistent EMFILE turns the accept loop into a busy spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepted sockets that may wait for the Manager at once, across every listening address.
/// More means the Manager is behind (a connection flood): accepting on would only spend file
/// descriptors and memory on peers it cannot look at yet, so the accept loops wait instead.
pub const MAX_PENDING_INBOUND_SOCKETS: usize = 64;

/// Least time between two log lines about a paused accept loop.
const PAUSE_LOG_INTERVAL: Duration = Duration::from_secs(60);

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
        // Shared by every accept loop: the bound is on what waits for the one Manager.
        let pending = Arc::new(Semaphore::new(MAX_PENDING_INBOUND_SOCKETS));
        let all = args
            .listeners
            .into_iter()
            .map(|l| (l, false))
            .chain(args.onion.map(|l| (l, true)));
        for (listener, onion) in all {
            if let Ok(addr) = listener.local_addr() {
                // The daemon says "p2p listening" once per address; this is the detail.
                debug!(%addr, onion, "listening for peers");
            }
            tasks.push(tokio::spawn(accept_loop(
                listener,
                args.manager.clone(),
                args.ctx.clone(),
                onion,
                pending.clone(),
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
    pending: Arc<Semaphore>,
) {
    let mut last_pause_log: Option<std::time::Instant> = None;
    loop {
        // A permit before each accept: none left means the Manager has that many sockets
        // waiting, and this loop waits for it.
        let permit = match pending.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics::counter!("meshd_listener_pauses_total").increment(1);
                if last_pause_log.is_none_or(|t| t.elapsed() >= PAUSE_LOG_INTERVAL) {
                    last_pause_log = Some(std::time::Instant::now());
                    warn!(
                        pending = MAX_PENDING_INBOUND_SOCKETS,
                        "inbound sockets waiting for the manager; accepting paused"
                    );
                }
                match pending.clone().acquire_owned().await {
                    Ok(p) => p,
                    Err(_) => return,
                }
            }
        };
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
                        pending: permit,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::NodeConfig;
    use crate::network::NetworkId;
    use crate::shared::bans::BanList;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::sync::watch;

    /// A Manager that takes one socket and then sits on it until told to go on.
    struct StuckManager;

    impl Actor for StuckManager {
        type Msg = ManagerMsg;
        type State = (Arc<AtomicUsize>, watch::Receiver<bool>);
        type Arguments = (Arc<AtomicUsize>, watch::Receiver<bool>);

        async fn pre_start(
            &self,
            _myself: ActorRef<ManagerMsg>,
            args: Self::Arguments,
        ) -> Result<Self::State, ActorProcessingErr> {
            Ok(args)
        }

        async fn handle(
            &self,
            _myself: ActorRef<ManagerMsg>,
            msg: ManagerMsg,
            (received, go): &mut Self::State,
        ) -> Result<(), ActorProcessingErr> {
            if let ManagerMsg::InboundAccepted { pending, .. } = msg {
                received.fetch_add(1, Ordering::SeqCst);
                let _ = go.wait_for(|g| *g).await;
                drop(pending);
            }
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn accepting_waits_while_the_manager_has_the_most_sockets_pending() {
        let dir = tempfile::tempdir().unwrap();
        let config = NodeConfig::new(NetworkId::Regtest, dir.path().into());
        let ctx = Arc::new(NodeContext::new(config, BanList::default(), &[]));
        let received = Arc::new(AtomicUsize::new(0));
        let (go_tx, go_rx) = watch::channel(false);
        let (manager, handle) = Actor::spawn(None, StuckManager, (received.clone(), go_rx))
            .await
            .unwrap();
        let listener = Arc::new(TcpListener::bind("127.0.0.1:0").await.unwrap());
        let addr = listener.local_addr().unwrap();
        let bound = 3;
        let pending = Arc::new(Semaphore::new(bound));
        let task = tokio::spawn(accept_loop(
            listener,
            manager.clone(),
            ctx,
            false,
            pending.clone(),
        ));
        // Eight peers connect (the kernel completes their handshakes from its backlog).
        let mut clients = Vec::new();
        for _ in 0..8 {
            clients.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // The Manager sits on the first; two more wait in its mailbox; nothing else was
        // accepted: every permit is out and the loop waits for one.
        assert_eq!(received.load(Ordering::SeqCst), 1);
        assert_eq!(pending.available_permits(), 0);
        // The Manager goes on: the loop resumes and every socket gets through.
        go_tx.send_replace(true);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while received.load(Ordering::SeqCst) < 8 {
            assert!(
                std::time::Instant::now() < deadline,
                "accepting did not resume"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // All given back but the one the loop holds while it waits in accept.
        assert_eq!(pending.available_permits(), bound - 1);
        task.abort();
        manager.stop(None);
        let _ = handle.await;
    }
}
