//! The Stun actor: learns our public address and NAT type from STUN servers and publishes
//! what changes.
//!
//! It probes at start and then every `stun-interval` (default 5 minutes; the result is
//! trusted that long). Server names are resolved through hickory-resolver (with the
//! configured DNS servers, like the seeds); IP literals are used as they are. Probes run in a
//! task, never in a handler. When the public address or the NAT type changes it publishes
//! `PublicAddressChanged` / `NatTypeDetected`, updates `meshd_nat_type{type}` and
//! `meshd_public_address_info{address}`, and hands the result to the node context, which
//! advertises our public address when peers can reach us (open internet, or full cone, with a
//! listening port).
//!
//! STUN: our public address and NAT type. The codec ([`codec`], through `stun_codec`), one
//! binding transaction ([`transaction`]) and the RFC 5780 behaviour discovery ([`nat`]) are
//! sans-IO; [`driver`] runs them over a UDP socket, and the Stun actor (this module)
//! schedules probes and publishes what changes.

pub mod codec;
pub mod driver;
pub mod nat;
pub mod transaction;

pub use codec::{BindingResponse, StunError};
pub use nat::{Behavior, NatProbe, NatReport, NatType};

use std::net::SocketAddr;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::context::NodeContext;
use crate::events::NodeEvent;
use driver::probe;

/// The Stun actor.
pub struct Stun;

/// Messages of the Stun actor.
pub enum StunMsg {
    /// Time to probe (skipped while one runs).
    Probe,
    /// A probe finished.
    Result(NatReport),
}

/// State of the Stun actor.
pub struct StunState {
    ctx: Arc<NodeContext>,
    running: Option<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
    last: Option<NatReport>,
}

/// Resolves `HOST:PORT` strings: IP literals directly, names through hickory-resolver.
async fn resolve_servers(ctx: &NodeContext) -> Vec<SocketAddr> {
    let config = ctx.config();
    let mut out = Vec::new();
    let mut resolver = None;
    for s in &config.stun_servers {
        if let Ok(a) = s.parse::<SocketAddr>() {
            out.push(a);
            continue;
        }
        let Some((host, port)) = s.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if resolver.is_none() {
            resolver = crate::shared::resolver::build_resolver(&config.dns_servers).ok();
        }
        let Some(r) = resolver.as_ref() else { continue };
        match tokio::time::timeout(config.stun_timeout, r.lookup_ip(host)).await {
            Ok(Ok(ips)) => out.extend(ips.iter().map(|ip| SocketAddr::new(ip, port))),
            Ok(Err(e)) => warn!(server = %s, error = %e, "cannot resolve STUN server"),
            Err(_) => warn!(server = %s, "resolving STUN server timed out"),
        }
    }
    out
}

impl Actor for Stun {
    type Msg = StunMsg;
    type State = StunState;
    type Arguments = Arc<NodeContext>;

    async fn pre_start(
        &self,
        _myself: ActorRef<StunMsg>,
        ctx: Arc<NodeContext>,
    ) -> Result<StunState, ActorProcessingErr> {
        Ok(StunState {
            ctx,
            running: None,
            timer: None,
            last: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<StunMsg>,
        state: &mut StunState,
    ) -> Result<(), ActorProcessingErr> {
        let config = state.ctx.config();
        if config.stun_servers.is_empty() {
            info!("STUN off (no servers for this network, or --no-stun)");
            return Ok(());
        }
        if !config.direct_ip() {
            // STUN is UDP, which a SOCKS5 CONNECT proxy cannot carry: it would reveal our
            // address to the STUN server; an onion-only node has no clearnet address to
            // learn, and a reachable verdict would advertise its IP.
            info!("STUN off: --proxy is set or --onlynet excludes IPv4 and IPv6");
            return Ok(());
        }
        state.timer = Some(myself.send_interval(config.stun_interval, || StunMsg::Probe));
        let _ = myself.cast(StunMsg::Probe);
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<StunMsg>,
        msg: StunMsg,
        state: &mut StunState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            StunMsg::Probe => {
                if state.running.as_ref().is_some_and(|r| !r.is_finished()) {
                    return Ok(());
                }
                let ctx = state.ctx.clone();
                state.running = Some(tokio::spawn(async move {
                    let servers = resolve_servers(&ctx).await;
                    let report = probe(&servers, ctx.config().stun_timeout).await;
                    let _ = myself.cast(StunMsg::Result(report));
                }));
            }
            StunMsg::Result(report) => {
                let prev = state.last.take();
                let public_changed = prev.as_ref().map(|p| p.public) != Some(report.public);
                let type_changed = prev.as_ref().map(|p| p.nat_type) != Some(report.nat_type);
                if prev.is_none() || type_changed || public_changed {
                    let show = |a: Option<SocketAddr>| {
                        a.map_or_else(|| "none".to_string(), |a| a.to_string())
                    };
                    let behavior = |b: Option<crate::stun::Behavior>| {
                        b.map_or_else(|| "unknown".to_string(), |b| format!("{b:?}"))
                    };
                    info!(
                        nat_type = report.nat_type.label(),
                        public = %show(report.public),
                        mapping = %behavior(report.mapping),
                        filtering = %behavior(report.filtering),
                        server = %show(report.server),
                        "NAT type detected"
                    );
                }
                let before = state.ctx.advertised();
                state.ctx.set_stun(report.clone());
                let after = state.ctx.advertised();
                if after != before || prev.is_none() {
                    let list: Vec<String> = after.iter().map(|a| a.to_string()).collect();
                    info!(addresses = %list.join(","), "advertising our address");
                }
                if public_changed {
                    state.ctx.events.publish(NodeEvent::PublicAddressChanged {
                        address: report.public.map(|a| a.to_string()),
                    });
                }
                if type_changed {
                    state.ctx.events.publish(NodeEvent::NatTypeDetected {
                        nat_type: report.nat_type.label().to_string(),
                        public: report.public.map(|a| a.to_string()),
                    });
                }
                state.last = Some(report);
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<StunMsg>,
        state: &mut StunState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(r) = state.running.take() {
            r.abort();
        }
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        Ok(())
    }
}
