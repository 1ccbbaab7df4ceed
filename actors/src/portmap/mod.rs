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

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use igd_next::aio::tokio::search_gateway;
use igd_next::{PortMappingProtocol, SearchOptions};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::net::UdpSocket;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use self::mapper::{
    MapError, Mapping, Output, PortMapper, Protocol, REQUESTED_LIFETIME, RETRY_PERIOD,
};
use crate::context::NodeContext;
use crate::events::NodeEvent;
use crate::shared::status::PortMapStatus;

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
                || v4.is_unspecified())
        }
        IpAddr::V6(v6) => !(v6.is_loopback() || v6.is_unspecified()),
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
        if !config.direct_ip() {
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
    renew_at: Instant,
}

/// Our address toward `gateway`, as a connected UDP socket's local address (Core's
/// `getsockname` after `connect`).
async fn socket_toward(gateway: SocketAddr) -> std::io::Result<(UdpSocket, IpAddr)> {
    let sock = UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    sock.connect(gateway).await?;
    let ip = sock.local_addr()?.ip();
    Ok((sock, ip))
}

/// A new PCP/NAT-PMP mapper with a fresh nonce.
fn new_mapper(client: IpAddr, port: u16) -> PortMapper {
    let nonce: wire::Nonce = rand::random();
    PortMapper::new(client, port, nonce, rand::random::<f64>())
}

/// The task: drives the PCP/NAT-PMP core over a UDP socket connected to the gateway, falls
/// back to UPnP when that is on and the core maps nothing, and deletes the mapping when
/// `stop` fires.
async fn drive(args: DriverArgs, actor: ActorRef<PortMapMsg>, mut stop: oneshot::Receiver<()>) {
    let port = args.internal.port();
    let gateway = gateway::default_gateway_v4().map(|g| SocketAddr::from((g, wire::SERVER_PORT)));
    let mut pcp: Option<(UdpSocket, PortMapper)> = None;
    if args.natpmp {
        match gateway {
            None => {
                let _ = actor.cast(PortMapMsg::Failed {
                    protocol: Protocol::Pcp,
                    kind: "no_gateway",
                    error: "no IPv4 default gateway".into(),
                });
            }
            Some(gw) => match socket_toward(gw).await {
                Ok((sock, client)) => {
                    let mut mapper = new_mapper(client, port);
                    let _ = actor.cast(PortMapMsg::Trying(Protocol::Pcp, Some(gw)));
                    let out = mapper.start(Instant::now());
                    send_all(&sock, &out).await;
                    pcp = Some((sock, mapper));
                }
                Err(e) => {
                    let _ = actor.cast(PortMapMsg::Failed {
                        protocol: Protocol::Pcp,
                        kind: "socket",
                        error: format!("socket toward the gateway: {e}"),
                    });
                }
            },
        }
    }
    let mut upnp: Option<UpnpMapping> = None;
    // UPnP alone (no --natpmp, or no gateway for it): tried now, then every RETRY_PERIOD.
    let mut upnp_retry_at = (args.upnp && pcp.is_none()).then(Instant::now);
    let mut buf = vec![0u8; wire::PCP_MAX_LEN + 1];
    loop {
        let wake = [
            pcp.as_ref().and_then(|(_, m)| m.next_wake()),
            upnp.as_ref().map(|u| u.renew_at),
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
                Some((sock, _)) => sock.recv(&mut buf).await,
                None => std::future::pending().await,
            }
        };
        let mut outputs = Vec::new();
        tokio::select! {
            _ = &mut stop => break,
            got = recv => match got {
                Ok(n) => {
                    if let Some((_, m)) = pcp.as_mut() {
                        outputs = m.on_datagram(Instant::now(), &buf[..n]);
                    }
                }
                Err(e) => {
                    debug!(error = %e, "port mapping: gateway socket read failed");
                    tokio::time::sleep(RECV_ERROR_PAUSE).await;
                }
            },
            _ = sleep => {
                let now = Instant::now();
                if let Some((_, m)) = pcp.as_mut() {
                    outputs = m.tick(now);
                }
                if upnp.as_ref().is_some_and(|u| now >= u.renew_at) {
                    if let Some(u) = upnp.take() {
                        upnp = upnp_renew(u, &args, &actor).await;
                        if upnp.is_none() {
                            upnp_retry_at = Some(now);
                        }
                    }
                }
                if upnp_retry_at.is_some_and(|t| now >= t) {
                    upnp_retry_at = None;
                    upnp = upnp_map(&args, &actor).await;
                    if upnp.is_none() && pcp.is_none() {
                        upnp_retry_at = Some(Instant::now() + RETRY_PERIOD);
                    }
                }
            }
        }
        let mut failed = false;
        for o in outputs {
            match o {
                Output::Send(bytes) => {
                    if let Some((sock, _)) = pcp.as_ref() {
                        send_all(sock, &[Output::Send(bytes)]).await;
                    }
                }
                Output::Mapped { mapping, renewed } => {
                    let _ = actor.cast(PortMapMsg::Mapped {
                        mapping,
                        renewed,
                        gateway,
                    });
                }
                Output::Failed(e) => {
                    failed = true;
                    let protocol = if matches!(&e, MapError::NoAnswer("natpmp"))
                        || matches!(
                            &e,
                            MapError::Refused {
                                protocol: "natpmp",
                                ..
                            }
                        ) {
                        Protocol::NatPmp
                    } else {
                        Protocol::Pcp
                    };
                    let _ = actor.cast(PortMapMsg::Failed {
                        protocol,
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
        // PCP and NAT-PMP mapped nothing: UPnP, when on, takes over (the PCP mapper stops so
        // the two never hold mappings at once).
        if failed
            && args.upnp
            && upnp.is_none()
            && pcp.as_ref().is_some_and(|(_, m)| m.current().is_none())
        {
            upnp = upnp_map(&args, &actor).await;
            if upnp.is_some() {
                pcp = None;
            }
        }
    }
    // Stop: delete what is in force, bounded by DELETE_TIMEOUT.
    let delete = async {
        if let Some((sock, mut m)) = pcp.take() {
            let had = m.current();
            let out = m.stop();
            send_all(&sock, &out).await;
            if let Some(mapping) = had {
                // One answer is waited for, so the deletion is known to have reached it.
                let mut b = vec![0u8; wire::PCP_MAX_LEN + 1];
                let answered = tokio::time::timeout(mapper::TRY_TIMEOUT, sock.recv(&mut b)).await;
                let external = SocketAddr::new(mapping.external.0, mapping.external.1);
                info!(protocol = mapping.protocol.label(), %external, answered = answered.is_ok(), "port mapping deleted");
            }
        }
        if let Some(u) = upnp.take() {
            let removed = u.gateway.remove_port(PortMappingProtocol::TCP, port).await;
            match removed {
                Ok(()) => info!(protocol = "upnp", port, "port mapping deleted"),
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

/// Maps the port with UPnP IGD: finds the gateway (SSDP), adds the mapping, asks the
/// external address. Reports the outcome.
async fn upnp_map(args: &DriverArgs, actor: &ActorRef<PortMapMsg>) -> Option<UpnpMapping> {
    let _ = actor.cast(PortMapMsg::Trying(Protocol::Upnp, None));
    let fail = |kind: &'static str, error: String| {
        let _ = actor.cast(PortMapMsg::Failed {
            protocol: Protocol::Upnp,
            kind,
            error,
        });
    };
    let mut options = SearchOptions::default();
    options.timeout = Some(UPNP_SEARCH_TIMEOUT);
    options.single_search_timeout = Some(UPNP_SEARCH_TIMEOUT);
    let gateway = match search_gateway(options).await {
        Ok(g) => g,
        Err(e) => {
            fail("upnp_search", format!("no UPnP gateway found: {e}"));
            return None;
        }
    };
    let gw_addr = gateway.addr;
    // Our address toward it, when we listen on every address.
    let local = if args.internal.ip().is_unspecified() {
        match socket_toward(gw_addr).await {
            Ok((_, ip)) => SocketAddr::new(ip, args.internal.port()),
            Err(e) => {
                fail("socket", format!("socket toward the UPnP gateway: {e}"));
                return None;
            }
        }
    } else {
        args.internal
    };
    let port = args.internal.port();
    let added = tokio::time::timeout(
        UPNP_REQUEST_TIMEOUT,
        gateway.add_port(
            PortMappingProtocol::TCP,
            port,
            local,
            REQUESTED_LIFETIME,
            UPNP_DESCRIPTION,
        ),
    )
    .await;
    match added {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            fail("upnp_map", format!("UPnP gateway refused the mapping: {e}"));
            return None;
        }
        Err(_) => {
            fail("upnp_map", "UPnP gateway did not answer the mapping".into());
            return None;
        }
    }
    let ip = match tokio::time::timeout(UPNP_REQUEST_TIMEOUT, gateway.get_external_ip()).await {
        Ok(Ok(ip)) => ip,
        Ok(Err(e)) => {
            fail(
                "upnp_external_ip",
                format!("UPnP gateway's external address: {e}"),
            );
            let _ = gateway.remove_port(PortMappingProtocol::TCP, port).await;
            return None;
        }
        Err(_) => {
            fail(
                "upnp_external_ip",
                "UPnP gateway did not tell its external address".into(),
            );
            let _ = gateway.remove_port(PortMappingProtocol::TCP, port).await;
            return None;
        }
    };
    let mapping = Mapping {
        protocol: Protocol::Upnp,
        external: (ip, port),
        lifetime: REQUESTED_LIFETIME,
    };
    let _ = actor.cast(PortMapMsg::Mapped {
        mapping,
        renewed: false,
        gateway: Some(gw_addr),
    });
    let half = Duration::from_secs(u64::from(REQUESTED_LIFETIME) / 2);
    Some(UpnpMapping {
        gateway,
        renew_at: Instant::now() + half,
    })
}

/// Renews a UPnP mapping (the same AddPortMapping again); None when that failed.
async fn upnp_renew(
    u: UpnpMapping,
    args: &DriverArgs,
    actor: &ActorRef<PortMapMsg>,
) -> Option<UpnpMapping> {
    let port = args.internal.port();
    let local = if args.internal.ip().is_unspecified() {
        match socket_toward(u.gateway.addr).await {
            Ok((_, ip)) => SocketAddr::new(ip, port),
            Err(_) => args.internal,
        }
    } else {
        args.internal
    };
    let added = tokio::time::timeout(
        UPNP_REQUEST_TIMEOUT,
        u.gateway.add_port(
            PortMappingProtocol::TCP,
            port,
            local,
            REQUESTED_LIFETIME,
            UPNP_DESCRIPTION,
        ),
    )
    .await;
    let ip = match added {
        Ok(Ok(())) => tokio::time::timeout(UPNP_REQUEST_TIMEOUT, u.gateway.get_external_ip()).await,
        _ => {
            let _ = actor.cast(PortMapMsg::Failed {
                protocol: Protocol::Upnp,
                kind: "upnp_map",
                error: "UPnP gateway did not renew the mapping".into(),
            });
            return None;
        }
    };
    let Ok(Ok(ip)) = ip else {
        return None;
    };
    let _ = actor.cast(PortMapMsg::Mapped {
        mapping: Mapping {
            protocol: Protocol::Upnp,
            external: (ip, port),
            lifetime: REQUESTED_LIFETIME,
        },
        renewed: true,
        gateway: Some(u.gateway.addr),
    });
    let half = Duration::from_secs(u64::from(REQUESTED_LIFETIME) / 2);
    Some(UpnpMapping {
        renew_at: Instant::now() + half,
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
