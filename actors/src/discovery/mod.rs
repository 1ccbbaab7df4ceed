//! The DnsDiscovery actor: resolves the network's DNS seeds (A and AAAA) through
//! hickory-resolver and hands the addresses to the Manager for the address book.
//!
//! It looks the seeds up at start when the address book is short of addresses
//! ([`DNS_WANTED_ADDRESSES`]) and outbound slots are not full, and again every
//! [`DNS_RETRY_INTERVAL`] while that stays so. Nameservers are configurable
//! (`--dns-server`), the system resolver otherwise. Every lookup is bounded by
//! [`DNS_QUERY_TIMEOUT`]; failures and timeouts are logged and counted
//! (`meshd_dns_queries_total{result}`), never fatal. Lookups run in a task, so the actor
//! never awaits the network in a handler.
//!
//! Behind `--proxy` nothing is resolved locally (a lookup would leave the proxy and tell the
//! resolver who we are): each round asks the Manager to addr-fetch each seed by name through
//! the proxy instead, as Core does (the Manager's addr-fetch module). With `--onlynet`
//! leaving out IPv4 and IPv6 and no `--proxy` (only `--onion`), seeds are not used at all.

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::ProtoErrorKind;
use hickory_resolver::{ResolveError, ResolveErrorKind, TokioResolver};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::context::NodeContext;
use crate::msg::ManagerMsg;
use crate::shared::resolver::build_resolver;

/// Below this many known addresses the seeds are asked (Core asks when addrman is small).
pub const DNS_WANTED_ADDRESSES: usize = 1000;
/// Pause between rounds of seed lookups while the book stays short.
pub const DNS_RETRY_INTERVAL: Duration = Duration::from_secs(60);
/// Limit on one seed lookup, retries included.
///
/// A seed that has not answered in this time is down or filtered; the others still count.
pub const DNS_QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// The DnsDiscovery actor.
pub struct DnsDiscovery;

/// Messages of DnsDiscovery.
pub enum DnsMsg {
    /// Time for a round, if the book is short.
    Tick,
}

/// Arguments of DnsDiscovery.
pub struct DnsArgs {
    /// Shared node state.
    pub ctx: Arc<NodeContext>,
    /// Where results go.
    pub manager: ActorRef<ManagerMsg>,
}

/// State of DnsDiscovery.
pub struct DnsState {
    ctx: Arc<NodeContext>,
    manager: ActorRef<ManagerMsg>,
    resolver: Option<Arc<TokioResolver>>,
    /// Seeds are addr-fetched through the proxy instead of resolved.
    through_proxy: bool,
    round: Option<JoinHandle<()>>,
    timer: Option<JoinHandle<()>>,
}

fn classify(e: &ResolveError) -> &'static str {
    if e.is_nx_domain() || e.is_no_records_found() {
        return "nxdomain";
    }
    match e.kind() {
        ResolveErrorKind::Proto(p) if matches!(p.kind(), ProtoErrorKind::Timeout) => "timeout",
        _ => "error",
    }
}

/// Resolves one seed; returns its addresses (empty on failure, which is logged and counted).
async fn resolve(resolver: &TokioResolver, seed: &str) -> Vec<IpAddr> {
    let result = tokio::time::timeout(DNS_QUERY_TIMEOUT, resolver.lookup_ip(seed)).await;
    let (label, ips) = match result {
        Ok(Ok(lookup)) => {
            let ips: Vec<IpAddr> = lookup.iter().collect();
            (if ips.is_empty() { "nxdomain" } else { "ok" }, ips)
        }
        Ok(Err(e)) => {
            warn!(seed, error = %e, "DNS seed lookup failed");
            (classify(&e), Vec::new())
        }
        Err(_) => {
            warn!(
                seed,
                timeout_s = DNS_QUERY_TIMEOUT.as_secs(),
                "DNS seed lookup timed out"
            );
            ("timeout", Vec::new())
        }
    };
    metrics::counter!("meshd_dns_queries_total", "result" => label).increment(1);
    debug!(
        seed,
        result = label,
        addresses = ips.len(),
        "DNS seed answered"
    );
    ips
}

impl DnsState {
    fn short_of_addresses(&self) -> bool {
        let known = self.ctx.addrbook_len.load(Ordering::Relaxed);
        let (used, limits) = (self.ctx.slots.usage(), self.ctx.slots.limits());
        known < DNS_WANTED_ADDRESSES && used.outbound < limits.outbound
    }

    fn start_round(&mut self) {
        if self.through_proxy {
            for seed in self.ctx.config().dns_seeds.iter() {
                let _ = self
                    .manager
                    .cast(ManagerMsg::AddrFetch { seed: seed.clone() });
            }
            return;
        }
        if self.round.as_ref().is_some_and(|r| !r.is_finished()) {
            return;
        }
        let Some(resolver) = self.resolver.clone() else {
            return;
        };
        let seeds = self.ctx.config().dns_seeds.clone();
        let manager = self.manager.clone();
        self.round = Some(tokio::spawn(async move {
            for seed in seeds {
                let ips = resolve(&resolver, &seed).await;
                if !ips.is_empty() {
                    info!(seed = %seed, addresses = ips.len(), "DNS seed gave addresses");
                    if manager.cast(ManagerMsg::DnsResults { seed, ips }).is_err() {
                        return;
                    }
                }
            }
        }));
    }
}

impl Actor for DnsDiscovery {
    type Msg = DnsMsg;
    type State = DnsState;
    type Arguments = DnsArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<DnsMsg>,
        args: DnsArgs,
    ) -> Result<DnsState, ActorProcessingErr> {
        Ok(DnsState {
            ctx: args.ctx,
            manager: args.manager,
            resolver: None,
            through_proxy: false,
            round: None,
            timer: None,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<DnsMsg>,
        state: &mut DnsState,
    ) -> Result<(), ActorProcessingErr> {
        // The counters exist (at zero) from the start, so dashboards and alerts see them.
        for result in ["ok", "nxdomain", "timeout", "error"] {
            metrics::counter!("meshd_dns_queries_total", "result" => result).increment(0);
        }
        let config = state.ctx.config();
        if config.dns_seeds.is_empty() {
            info!("DNS seeding off (no seeds for this network, or --no-dns-seed)");
            return Ok(());
        }
        if let Some(proxy) = &config.proxy {
            // A lookup outside the proxy would tell the resolver who runs this node.
            info!(proxy = %proxy.addr, "DNS seeds are asked by name through the proxy (addr-fetch), never resolved here");
            state.through_proxy = true;
        } else if !config.direct_ip() {
            info!("DNS seeding off: --onlynet excludes IPv4 and IPv6 and there is no --proxy to reach the seeds through");
            return Ok(());
        } else {
            match build_resolver(&config.dns_servers) {
                Ok(r) => state.resolver = Some(Arc::new(r)),
                Err(e) => {
                    warn!(error = %e, "no DNS resolver; DNS seeding off");
                    metrics::counter!("meshd_dns_queries_total", "result" => "error").increment(1);
                    return Ok(());
                }
            }
        }
        state.timer = Some(myself.send_interval(DNS_RETRY_INTERVAL, || DnsMsg::Tick));
        // Give the Manager a moment to load the address book before judging it short.
        myself.send_after(Duration::from_millis(50), || DnsMsg::Tick);
        Ok(())
    }

    async fn handle(
        &self,
        _myself: ActorRef<DnsMsg>,
        msg: DnsMsg,
        state: &mut DnsState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DnsMsg::Tick => {
                if state.short_of_addresses() {
                    state.start_round();
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<DnsMsg>,
        state: &mut DnsState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(r) = state.round.take() {
            r.abort();
        }
        if let Some(t) = state.timer.take() {
            t.abort();
        }
        Ok(())
    }
}
