//! The PortMap actor: keeps the Bitcoin listener's port mapped on the gateway, so peers
//! outside a NAT can reach us, and advertises the mapped address while it lasts.
//!
//! As Bitcoin Core 30 (`-natpmp`, on by default; mapport.cpp): PCP (RFC 6887) to the IPv4
//! default gateway first, NAT-PMP (RFC 6886) when the gateway answers that it speaks only
//! that, renewal at 1/2 to 5/8 of the lifetime granted, a retry every 5 minutes when a round
//! maps nothing. Beyond Core:
//! - `--upnp` maps through UPnP IGD (the `igd-next` crate) when PCP and NAT-PMP found nothing;
//! - the mapping is deleted at shutdown (Core lets it expire);
//! - an expired mapping stops being advertised (Core keeps advertising it);
//! - a mapped address that is private (a gateway behind another NAT) is shown but not
//!   advertised, and STUN's public address, when STUN runs, is compared with it.
//!
//! Only a listener on an IPv4 address a gateway can forward to (not loopback) is mapped, and
//! never with `--proxy` (Core soft-sets `-natpmp=0` there: mapping would reveal us). IPv6
//! pinholes (Core's PCP per global IPv6 address) are not made.
//!
//! The sans-IO parts are [`wire`] (messages), [`mapper`] (the PCP/NAT-PMP state machine) and
//! [`gateway`] (the routing table); this module owns the UDP socket, the timers and the UPnP
//! client, in one task whose reports the actor turns into status, events and metrics.

pub mod gateway;
pub mod mapper;
pub mod wire;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use igd_next::aio::tokio::search_gateway;
use igd_next::{PortMappingProtocol, SearchOptions};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use self::mapper::{Mapping, Output, PortMapper, Protocol, REQUESTED_LIFETIME, RETRY_PERIOD};
use crate::context::NodeContext;
use crate::events::NodeEvent;
use crate::shared::status::PortMapStatus;

/// Searches for a UPnP gateway before a round gives up: SSDP is UDP multicast, and one lost
/// answer must not cost the 5 minutes to the next round.
const UPNP_SEARCH_TRIES: u32 = 3;
/// How long a UPnP gateway search waits for answers: SSDP answers come within a second or
/// two on a LAN; a host without an IGD should not wait longer at each retry.
const UPNP_SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// Limit on one UPnP control request (add, remove, external address), so a gateway that
/// accepts the connection and never answers cannot hold the task.
const UPNP_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long shutdown waits for the mapping's deletion: one PCP/NAT-PMP try, or one UPnP
/// request; the node's stop must not hang on a gateway that went away.
const DELETE_TIMEOUT: Duration = Duration::from_secs(2);
/// The description a UPnP mapping carries, so `upnpc -l` shows whose it is.
const UPNP_DESCRIPTION: &str = "meshd";
/// Pause after a failed socket read: a read that fails at once again (no such error is
/// expected but an ICMP refusal, one per datagram we sent) must not spin the task.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The PortMap actor.
pub struct PortMap;

/// Messages of the PortMap actor: its task's reports.
pub enum PortMapMsg {
    /// A round began on this gateway.
    Trying(Protocol, Option<SocketAddr>),
    /// A mapping was made (or renewed).
    Mapped {
        /// The mapping.
        mapping: Mapping,
        /// Whether it renews the one in force.
        renewed: bool,
        /// The gateway that made it.
        gateway: Option<SocketAddr>,
    },
    /// A round found no mapping.
    Failed {
        /// The last protocol tried.
        protocol: Protocol,
        /// The metric's kind.
        kind: &'static str,
        /// Why, for the log and the API.
        error: String,
    },
    /// The mapping expired unrenewed.
    Lost(Mapping),
    /// A datagram from the gateway was not taken.
    Ignored(&'static str),
}

/// State of the PortMap actor.
pub struct PortMapState {
    ctx: Arc<NodeContext>,
    task: Option<JoinHandle<()>>,
    stop: Option<oneshot::Sender<()>>,
    internal: Option<SocketAddr>,
    status: Option<PortMapStatus>,
}

/// The listener a gateway can forward to: the first IPv4 one not on loopback.
fn mappable_listener(listen: &[SocketAddr]) -> Option<SocketAddr> {
    listen
        .iter()
        .find(|a| matches!(a.ip(), IpAddr::V4(v4) if !v4.is_loopback()))
        .copied()
}

/// Whether a mapped address can be reached from the internet: not private, shared (CGNAT),
/// loopback, link-local or unspecified. A gateway that is itself behind a NAT maps on a
/// private address, which peers outside cannot use.
fn reachable_from_outside(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let shared = v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64;
            !(v4.is_private()
                || shared
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast())
        }
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()),
    }
}

impl Actor for PortMap {
    type Msg = PortMapMsg;
    type State = PortMapState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<PortMapMsg>,
        ctx: Arc<NodeContext>,
    ) -> Result<PortMapState, ActorProcessingErr> {
        Ok(PortMapState {
            ctx,
            task: None,
            stop: None,
            internal: None,
            status: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<PortMapMsg>,
        state: &mut PortMapState,
    ) -> Result<(), ActorProcessingErr> {
        let config = state.ctx.config();
        if !config.natpmp && !config.upnp {
            debug!("port mapping off (--natpmp=false, no --upnp)");
            return Ok(());
        }
        let ipv4 = config
            .reachable_networks()
            .contains(&crate::shared::overlay::Network::Ipv4);
        if !config.direct_ip() || !ipv4 {
            info!("port mapping off: --proxy is set or --onlynet excludes IPv4");
            return Ok(());
        }
        let Some(internal) = mappable_listener(&state.ctx.listen_addrs) else {
            debug!("port mapping off: no IPv4 listener a gateway can forward to");
            return Ok(());
        };
        state.internal = Some(internal);
        let (stop_tx, stop_rx) = oneshot::channel();
        let args = DriverArgs {
            internal,
            natpmp: config.natpmp,
            upnp: config.upnp,
        };
        state.stop = Some(stop_tx);
        state.task = Some(tokio::spawn(drive(args, myself, stop_rx)));
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<PortMapMsg>,
        msg: PortMapMsg,
        state: &mut PortMapState,
    ) -> Result<(), ActorProcessingErr> {
        let before = state.ctx.advertised();
        on_report(state, msg);
        let after = state.ctx.advertised();
        if after != before {
            let list: Vec<String> = after.iter().map(|a| a.to_string()).collect();
            info!(addresses = %list.join(","), "advertising our address");
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<PortMapMsg>,
        state: &mut PortMapState,
    ) -> Result<(), ActorProcessingErr> {
        // The task deletes the mapping when told to stop; it is given DELETE_TIMEOUT (plus a
        // margin for the send) and then dropped. No event: NodeStopping is the last one.
        if let Some(stop) = state.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = state.task.take() {
            let bound = DELETE_TIMEOUT + Duration::from_millis(500);
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                task.abort();
            }
        }
        if let Some(s) = state.status.take() {
            if s.external.is_some() {
                metrics::counter!("meshd_port_mapping_rounds_total", "outcome" => "deleted")
                    .increment(1);
                if let Some(p) = s.protocol {
                    metrics::gauge!("meshd_port_mapping_active", "protocol" => p).set(0.0);
                }
            }
        }
        state.ctx.set_port_map(None);
        Ok(())
    }
}

/// Turns one of the task's reports into status, advertised address, events and metrics.
fn on_report(state: &mut PortMapState, msg: PortMapMsg) {
    let Some(internal) = state.internal else {
        return;
    };
    let stun_ip = state
        .ctx
        .stun_report()
        .and_then(|r| r.public)
        .map(|a| a.ip());
    match msg {
        PortMapMsg::Trying(protocol, gateway) => {
            let status = state.status.get_or_insert(PortMapStatus {
                state: "trying",
                protocol: None,
                gateway: None,
                internal,
                external: None,
                lifetime: None,
                renewed_time: None,
                last_error: None,
                stun_agrees: None,
            });
            if status.state != "mapped" {
                status.protocol = Some(protocol.label());
                status.gateway = gateway;
            }
            state.ctx.set_port_map(state.status.clone());
        }
        PortMapMsg::Mapped {
            mapping,
            renewed,
            gateway,
        } => {
            let external = SocketAddr::new(mapping.external.0, mapping.external.1);
            let outcome = if renewed { "renewed" } else { "mapped" };
            metrics::counter!("meshd_port_mapping_rounds_total", "outcome" => outcome).increment(1);
            for p in [Protocol::Pcp, Protocol::NatPmp, Protocol::Upnp] {
                let on = if p == mapping.protocol { 1.0 } else { 0.0 };
                metrics::gauge!("meshd_port_mapping_active", "protocol" => p.label()).set(on);
            }
            let stun_agrees = stun_ip.map(|ip| ip == external.ip());
            let outside = reachable_from_outside(external.ip());
            state.status = Some(PortMapStatus {
                // A private mapped address is shown, not advertised.
                state: if outside { "mapped" } else { "mapped_private" },
                protocol: Some(mapping.protocol.label()),
                gateway,
                internal,
                external: Some(external),
                lifetime: Some(mapping.lifetime),
                renewed_time: Some(crate::context::unix_now().max(0) as u64),
                last_error: None,
                stun_agrees,
            });
            state.ctx.set_port_map(state.status.clone());
            if renewed {
                debug!(protocol = mapping.protocol.label(), %external, lifetime = mapping.lifetime, "port mapping renewed");
                return;
            }
            info!(
                protocol = mapping.protocol.label(),
                %external,
                %internal,
                lifetime = mapping.lifetime,
                "port mapped on the gateway"
            );
            if !outside {
                warn!(%external, "the gateway mapped our port on a private address (it is behind another NAT): not advertised");
            }
            if stun_agrees == Some(false) {
                warn!(%external, stun = ?stun_ip, "STUN sees another public address than the mapping: another NAT may sit in front of the gateway");
            }
            state.ctx.events.publish(NodeEvent::PortMapped {
                protocol: mapping.protocol.label().to_string(),
                external: external.to_string(),
                internal: internal.to_string(),
                lifetime: mapping.lifetime,
            });
        }
        PortMapMsg::Failed {
            protocol,
            kind,
            error,
        } => {
            metrics::counter!("meshd_port_mapping_rounds_total", "outcome" => "failed")
                .increment(1);
            metrics::counter!("meshd_port_mapping_errors_total", "kind" => kind).increment(1);
            let first = state
                .status
                .as_ref()
                .is_none_or(|s| s.last_error.as_deref() != Some(error.as_str()));
            // One line per new reason: a gateway that never answers is retried every 5
            // minutes for months, and says so once.
            if first {
                info!(protocol = protocol.label(), %error, retry_in = RETRY_PERIOD.as_secs(), "port mapping failed; will retry");
            } else {
                debug!(protocol = protocol.label(), %error, "port mapping failed again");
            }
            let status = state.status.get_or_insert(PortMapStatus {
                state: "failed",
                protocol: None,
                gateway: None,
                internal,
                external: None,
                lifetime: None,
                renewed_time: None,
                last_error: None,
                stun_agrees: None,
            });
            if status.state != "mapped" && status.state != "mapped_private" {
                status.state = "failed";
                status.protocol = Some(protocol.label());
            }
            status.last_error = Some(error.clone());
            state.ctx.set_port_map(state.status.clone());
            if first {
                state.ctx.events.publish(NodeEvent::PortMappingFailed {
                    protocol: protocol.label().to_string(),
                    error,
                });
            }
        }
        PortMapMsg::Lost(mapping) => {
            let external = SocketAddr::new(mapping.external.0, mapping.external.1);
            metrics::counter!("meshd_port_mapping_rounds_total", "outcome" => "expired")
                .increment(1);
            metrics::gauge!("meshd_port_mapping_active", "protocol" => mapping.protocol.label())
                .set(0.0);
            warn!(protocol = mapping.protocol.label(), %external, "port mapping expired unrenewed; no longer advertised");
            if let Some(s) = state.status.as_mut() {
                s.state = "failed";
                s.external = None;
                s.lifetime = None;
            }
            state.ctx.set_port_map(state.status.clone());
            state.ctx.events.publish(NodeEvent::PortMappingLost {
                protocol: mapping.protocol.label().to_string(),
                external: external.to_string(),
                reason: "expired".into(),
            });
        }
        PortMapMsg::Ignored(kind) => {
            metrics::counter!("meshd_port_mapping_errors_total", "kind" => kind).increment(1);
        }
    }
}

/// What the task maps.
struct DriverArgs {
    internal: SocketAddr,
    natpmp: bool,
    upnp: bool,
}

/// A UPnP mapping in force.
struct UpnpMapping {
    gateway: igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>,
    mapping: Mapping,
    /// None for a permanent lease (a gateway that takes no other), which is not renewed.
    renew_at: Option<Instant>,
}

/// A UDP socket connected to `gateway`, bound to `bind` (our listening IP, or any), and our
/// address toward it (Core's `getsockname` after `connect`).
async fn socket_toward(gateway: SocketAddr, bind: IpAddr) -> std::io::Result<(UdpSocket, IpAddr)> {
    let sock = UdpSocket::bind(SocketAddr::new(bind, 0)).await?;
    sock.connect(gateway).await?;
    let ip = sock.local_addr()?.ip();
    Ok((sock, ip))
}

/// The PCP/NAT-PMP side: the gateway's socket and the mapper, rebuilt at each retry so a
/// gateway that appears or changes (DHCP, roaming) is found, as Core's rounds look it up.
struct PcpSide {
    sock: UdpSocket,
    mapper: PortMapper,
    gateway: SocketAddr,
}

/// Looks up the default gateway, opens a socket toward it and starts a mapper with a fresh
/// nonce; reports why not.
async fn pcp_start(args: &DriverArgs, actor: &ActorRef<PortMapMsg>) -> Option<PcpSide> {
    let fail = |kind: &'static str, error: String| {
        let _ = actor.cast(PortMapMsg::Failed {
            protocol: Protocol::Pcp,
            kind,
            error,
        });
    };
    let Some(gw) = gateway::default_gateway_v4() else {
        fail("no_gateway", "no IPv4 default gateway".into());
        return None;
    };
    let gateway = SocketAddr::from((gw, wire::SERVER_PORT));
    let (sock, client) = match socket_toward(gateway, args.internal.ip()).await {
        Ok(s) => s,
        Err(e) => {
            fail("socket", format!("socket toward the gateway {gw}: {e}"));
            return None;
        }
    };
    let nonce: wire::Nonce = rand::random();
    let mut mapper = PortMapper::new(client, args.internal.port(), nonce, rand::random::<f64>());
    let _ = actor.cast(PortMapMsg::Trying(Protocol::Pcp, Some(gateway)));
    let out = mapper.start(Instant::now());
    send_all(&sock, &out).await;
    Some(PcpSide {
        sock,
        mapper,
        gateway,
    })
}

/// The task: drives the PCP/NAT-PMP core over a UDP socket connected to the gateway, falls
/// back to UPnP when that is on and the core maps nothing, and deletes the mapping when
/// `stop` fires.
async fn drive(args: DriverArgs, actor: ActorRef<PortMapMsg>, mut stop: oneshot::Receiver<()>) {
    let port = args.internal.port();
    let mut pcp: Option<PcpSide> = None;
    let mut upnp: Option<UpnpMapping> = None;
    // When the PCP side is (re)built, and when UPnP is tried: both at once at start, each
    // after RETRY_PERIOD when it found nothing. UPnP waits for PCP's verdict when both are on.
    let mut pcp_retry_at = args.natpmp.then(Instant::now);
    let mut upnp_retry_at = (args.upnp && !args.natpmp).then(Instant::now);
    let mut buf = vec![0u8; wire::PCP_MAX_LEN + 1];
    loop {
        let wake = [
            pcp.as_ref().and_then(|p| p.mapper.next_wake()),
            upnp.as_ref().and_then(|u| u.renew_at),
            pcp_retry_at,
            upnp_retry_at,
        ]
        .into_iter()
        .flatten()
        .min();
        let sleep = async {
            match wake {
                Some(t) => tokio::time::sleep_until(t.into()).await,
                None => std::future::pending().await,
            }
        };
        let recv = async {
            match pcp.as_ref() {
                Some(p) => p.sock.recv(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        let mut outputs = Vec::new();
        tokio::select! {
            _ = &mut stop => break,
            got = recv => match got {
                Ok(n) => {
                    if let Some(p) = pcp.as_mut() {
                        outputs = p.mapper.on_datagram(Instant::now(), &buf[..n]);
                    }
                }
                Err(e) => {
                    debug!(error = %e, "port mapping: gateway socket read failed");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                }
            },
            _ = sleep => {
                let now = Instant::now();
                if let Some(p) = pcp.as_mut() {
                    outputs = p.mapper.tick(now);
                }
                if pcp_retry_at.is_some_and(|t| now >= t) && upnp.is_none() {
                    pcp_retry_at = None;
                    pcp = pcp_start(&args, &actor).await;
                    if pcp.is_none() {
                        pcp_retry_at = Some(now + RETRY_PERIOD);
                        if args.upnp && upnp_retry_at.is_none() {
                            upnp_retry_at = Some(now);
                        }
                    }
                }
                if upnp.as_ref().and_then(|u| u.renew_at).is_some_and(|t| now >= t) {
                    if let Some(u) = upnp.take() {
                        upnp = upnp_renew(u, &args, &actor).await;
                        if upnp.is_none() {
                            // Gone: PCP and NAT-PMP get their chance again, then UPnP.
                            pcp_retry_at = args.natpmp.then_some(now);
                            upnp_retry_at = Some(now + RETRY_PERIOD);
                        }
                    }
                }
                if upnp_retry_at.is_some_and(|t| now >= t) && upnp.is_none() {
                    upnp_retry_at = None;
                    upnp = upnp_map(&args, &actor).await;
                    match &upnp {
                        // UPnP holds it: the PCP side stops, so two never hold mappings.
                        Some(_) => {
                            pcp = None;
                            pcp_retry_at = None;
                        }
                        None => upnp_retry_at = Some(Instant::now() + RETRY_PERIOD),
                    }
                }
            }
        }
        let mut round_failed = false;
        for o in outputs {
            match o {
                Output::Send(bytes) => {
                    if let Some(p) = pcp.as_ref() {
                        send_all(&p.sock, &[Output::Send(bytes)]).await;
                    }
                }
                Output::Mapped { mapping, renewed } => {
                    let _ = actor.cast(PortMapMsg::Mapped {
                        mapping,
                        renewed,
                        gateway: pcp.as_ref().map(|p| p.gateway),
                    });
                }
                Output::Failed(e) => {
                    round_failed = true;
                    let _ = actor.cast(PortMapMsg::Failed {
                        protocol: e.protocol(),
                        kind: e.kind(),
                        error: e.to_string(),
                    });
                }
                Output::Lost(m) => {
                    let _ = actor.cast(PortMapMsg::Lost(m));
                }
                Output::Ignored(e) => {
                    let _ = actor.cast(PortMapMsg::Ignored(e.kind()));
                }
            }
        }
        // A round that left nothing in force: the PCP side is rebuilt at the retry (the
        // gateway looked up again), and UPnP, when on, is tried now.
        if round_failed && pcp.as_ref().is_some_and(|p| p.mapper.current().is_none()) {
            pcp = None;
            pcp_retry_at = Some(Instant::now() + RETRY_PERIOD);
            if args.upnp && upnp.is_none() {
                upnp_retry_at = Some(Instant::now());
            }
        }
    }
    // Stop: delete what is in force, bounded by DELETE_TIMEOUT.
    let delete = async {
        if let Some(PcpSide {
            sock, mut mapper, ..
        }) = pcp.take()
        {
            let had = mapper.current();
            let out = mapper.stop();
            if let Some(mapping) = had {
                // Sent until the gateway answers, within the bound.
                let mut b = vec![0u8; wire::PCP_MAX_LEN + 1];
                let mut answered = false;
                for _ in 0..mapper::TRIES {
                    send_all(&sock, &out).await;
                    if tokio::time::timeout(DELETE_TIMEOUT / mapper::TRIES, sock.recv(&mut b))
                        .await
                        .is_ok_and(|r| r.is_ok())
                    {
                        answered = true;
                        break;
                    }
                }
                let external = SocketAddr::new(mapping.external.0, mapping.external.1);
                info!(protocol = mapping.protocol.label(), %external, answered, "port mapping deleted");
                if answered {
                    metrics::counter!("meshd_port_mapping_rounds_total", "outcome" => "deleted")
                        .increment(1);
                }
            }
        }
        if let Some(u) = upnp.take() {
            match u.gateway.remove_port(PortMappingProtocol::TCP, port).await {
                Ok(()) => {
                    info!(protocol = "upnp", port, "port mapping deleted");
                    metrics::counter!("meshd_port_mapping_rounds_total", "outcome" => "deleted")
                        .increment(1);
                }
                Err(e) => {
                    warn!(protocol = "upnp", port, error = %e, "deleting the UPnP mapping failed")
                }
            }
        }
    };
    if tokio::time::timeout(DELETE_TIMEOUT, delete).await.is_err() {
        warn!("the gateway did not take the mapping's deletion in time; it expires by itself");
    }
}

/// Sends the core's datagrams; a failed send is the same as a lost datagram (the core
/// resends on its timer).
async fn send_all(sock: &UdpSocket, outputs: &[Output]) {
    for o in outputs {
        if let Output::Send(bytes) = o {
            if let Err(e) = sock.send(bytes).await {
                debug!(error = %e, "port mapping: sending to the gateway failed");
            }
        }
    }
}

/// Our LAN address toward the UPnP gateway when we listen on every address.
async fn upnp_local(args: &DriverArgs, gateway: SocketAddr) -> Option<SocketAddr> {
    if !args.internal.ip().is_unspecified() {
        return Some(args.internal);
    }
    socket_toward(gateway, args.internal.ip())
        .await
        .ok()
        .map(|(_, ip)| SocketAddr::new(ip, args.internal.port()))
}

/// AddPortMapping for our port, bounded; `Ok(permanent)` says whether the gateway took only
/// a permanent lease (UPnP IGDv1's error 725, which many routers answer to a timed one).
async fn upnp_add(
    gateway: &igd_next::aio::Gateway<igd_next::aio::tokio::Tokio>,
    local: SocketAddr,
) -> Result<bool, String> {
    let add = |lease| {
        tokio::time::timeout(
            UPNP_REQUEST_TIMEOUT,
            gateway.add_port(
                PortMappingProtocol::TCP,
                local.port(),
                local,
                lease,
                UPNP_DESCRIPTION,
            ),
        )
    };
    match add(REQUESTED_LIFETIME).await {
        Ok(Ok(())) => Ok(false),
        Ok(Err(igd_next::AddPortError::OnlyPermanentLeasesSupported)) => match add(0).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(e)) => Err(format!("UPnP gateway refused the mapping: {e}")),
            Err(_) => Err("UPnP gateway did not answer the mapping".into()),
        },
        Ok(Err(e)) => Err(format!("UPnP gateway refused the mapping: {e}")),
        Err(_) => Err("UPnP gateway did not answer the mapping".into()),
    }
}

/// Maps the port with UPnP IGD: finds the gateway (SSDP, up to [`UPNP_SEARCH_TRIES`]
/// searches), takes it only if it is our default gateway (any LAN host can answer a search),
/// adds the mapping and asks the external address. Reports the outcome.
async fn upnp_map(args: &DriverArgs, actor: &ActorRef<PortMapMsg>) -> Option<UpnpMapping> {
    let _ = actor.cast(PortMapMsg::Trying(Protocol::Upnp, None));
    let fail = |kind: &'static str, error: String| {
        let _ = actor.cast(PortMapMsg::Failed {
            protocol: Protocol::Upnp,
            kind,
            error,
        });
    };
    let mut found = None;
    let mut last_error = String::new();
    for _ in 0..UPNP_SEARCH_TRIES {
        let mut options = SearchOptions::default();
        options.timeout = Some(UPNP_SEARCH_TIMEOUT);
        options.single_search_timeout = Some(UPNP_SEARCH_TIMEOUT);
        if let IpAddr::V4(v4) = args.internal.ip() {
            options.bind_addr = SocketAddr::from((v4, 0));
        }
        match search_gateway(options).await {
            Ok(g) => {
                found = Some(g);
                break;
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    let Some(gateway) = found else {
        fail(
            "upnp_search",
            format!("no UPnP gateway found: {last_error}"),
        );
        return None;
    };
    let gw_addr = gateway.addr;
    if let Some(route) = gateway::default_gateway_v4() {
        if gw_addr.ip() != IpAddr::V4(route) {
            fail(
                "upnp_search",
                format!("UPnP answer from {gw_addr}, which is not our default gateway {route}"),
            );
            return None;
        }
    }
    let Some(local) = upnp_local(args, gw_addr).await else {
        fail(
            "socket",
            format!("socket toward the UPnP gateway {gw_addr}"),
        );
        return None;
    };
    let permanent = match upnp_add(&gateway, local).await {
        Ok(p) => p,
        Err(e) => {
            fail("upnp_map", e);
            return None;
        }
    };
    let port = args.internal.port();
    let ip = match tokio::time::timeout(UPNP_REQUEST_TIMEOUT, gateway.get_external_ip()).await {
        Ok(Ok(ip)) => ip,
        answer => {
            let why = match answer {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer".into(),
            };
            fail(
                "upnp_external_ip",
                format!("UPnP gateway's external address: {why}"),
            );
            let _ = tokio::time::timeout(
                UPNP_REQUEST_TIMEOUT,
                gateway.remove_port(PortMappingProtocol::TCP, port),
            )
            .await;
            return None;
        }
    };
    let mapping = Mapping {
        protocol: Protocol::Upnp,
        external: (ip, port),
        lifetime: if permanent { 0 } else { REQUESTED_LIFETIME },
    };
    let _ = actor.cast(PortMapMsg::Mapped {
        mapping,
        renewed: false,
        gateway: Some(gw_addr),
    });
    let half = Duration::from_secs(u64::from(REQUESTED_LIFETIME) / 2);
    Some(UpnpMapping {
        gateway,
        mapping,
        renew_at: (!permanent).then(|| Instant::now() + half),
    })
}

/// Renews a UPnP mapping (the same AddPortMapping again); None, with the mapping reported
/// lost, when that failed.
async fn upnp_renew(
    u: UpnpMapping,
    args: &DriverArgs,
    actor: &ActorRef<PortMapMsg>,
) -> Option<UpnpMapping> {
    let renewed = match upnp_local(args, u.gateway.addr).await {
        Some(local) => upnp_add(&u.gateway, local).await,
        None => Err("no socket toward the UPnP gateway".into()),
    };
    let ip = match renewed {
        Ok(_) => tokio::time::timeout(UPNP_REQUEST_TIMEOUT, u.gateway.get_external_ip()).await,
        Err(e) => {
            let _ = actor.cast(PortMapMsg::Failed {
                protocol: Protocol::Upnp,
                kind: "upnp_map",
                error: format!("renewal: {e}"),
            });
            let _ = actor.cast(PortMapMsg::Lost(u.mapping));
            return None;
        }
    };
    let Ok(Ok(ip)) = ip else {
        let _ = actor.cast(PortMapMsg::Failed {
            protocol: Protocol::Upnp,
            kind: "upnp_external_ip",
            error: "renewal: the UPnP gateway did not tell its external address".into(),
        });
        let _ = actor.cast(PortMapMsg::Lost(u.mapping));
        return None;
    };
    let mapping = Mapping {
        external: (ip, args.internal.port()),
        ..u.mapping
    };
    let _ = actor.cast(PortMapMsg::Mapped {
        mapping,
        renewed: mapping.external == u.mapping.external,
        gateway: Some(u.gateway.addr),
    });
    let half = Duration::from_secs(u64::from(REQUESTED_LIFETIME) / 2);
    Some(UpnpMapping {
        mapping,
        renew_at: Some(Instant::now() + half),
        ..u
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv4_listeners_off_loopback_are_mapped() {
        let l = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(mappable_listener(&[l("127.0.0.1:18444")]), None);
        assert_eq!(mappable_listener(&[l("[::]:8333")]), None);
        assert_eq!(
            mappable_listener(&[l("127.0.0.1:1"), l("0.0.0.0:8333")]),
            Some(l("0.0.0.0:8333"))
        );
        assert_eq!(
            mappable_listener(&[l("10.0.0.10:8333")]),
            Some(l("10.0.0.10:8333"))
        );
    }

    #[test]
    fn private_mapped_addresses_are_not_reachable_from_outside() {
        for ip in [
            "10.1.2.3",
            "192.168.1.1",
            "172.16.0.1",
            "100.64.0.1",
            "169.254.1.1",
        ] {
            assert!(!reachable_from_outside(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["203.0.113.254", "8.8.8.8", "100.128.0.1"] {
            assert!(reachable_from_outside(ip.parse().unwrap()), "{ip}");
        }
    }
}
