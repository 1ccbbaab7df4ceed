//! The Prometheus endpoint: `GET /metrics` on `--metrics ADDR`.
//!
//! Counters and histograms recorded through the `metrics` facade come from
//! metrics-exporter-prometheus's recorder; series derived from live state (per-peer bytes and
//! RTT, peers by state, slots, bans, restarts) are rendered by the node at scrape time, so
//! per-peer series vanish with their peer. Histograms have explicit buckets (no summaries).

use std::net::SocketAddr;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use meshd_actors::node::MetricsSource;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Buckets of `meshd_handshake_duration_seconds`: 1 ms to 60 s.
const HANDSHAKE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Buckets of `meshd_ping_rtt_seconds`: 0.5 ms (loopback) to 10 s (a struggling peer).
const RTT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often histogram buckets are folded in the recorder when no scrape arrives.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The CPU time this process has used (user and system), to the microsecond.
fn cpu_seconds() -> Option<f64> {
    // SAFETY: getrusage writes the struct it is given and nothing else.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return None;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Some(secs(usage.ru_utime) + secs(usage.ru_stime))
}

/// The exposition with `process_cpu_seconds_total` to the microsecond: metrics-process
/// records it through the facade, whose counters are whole numbers, so it would move in
/// whole seconds and a `rate()` over a minute would read an idle node as 0 or 1.7%.
fn precise_cpu(body: &str) -> String {
    let Some(cpu) = cpu_seconds() else {
        return body.to_string();
    };
    let mut out = String::with_capacity(body.len() + 16);
    for line in body.lines() {
        if line.starts_with("process_cpu_seconds_total ") {
            out.push_str(&format!("process_cpu_seconds_total {cpu}"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Installs the global recorder. Call before the node starts so nothing is missed.
pub fn install_recorder() -> Result<PrometheusHandle, String> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("meshd_handshake_duration_seconds".into()),
            HANDSHAKE_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("meshd_ping_rtt_seconds".into()), RTT_BUCKETS)
        })
        .map_err(|e| format!("metrics: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics: {e}"))
}

/// Binds the metrics address (so a port in use fails at start, exit 2).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, String> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))
}

/// Serves /metrics until the task is dropped.
pub fn serve(
    listener: TcpListener,
    handle: PrometheusHandle,
    live: MetricsSource,
    network: meshd_actors::network::NetworkId,
) {
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(UPKEEP_INTERVAL).await;
            upkeep.run_upkeep();
        }
    });
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "metrics listening");
    }
    let process = metrics_process::Collector::default();
    process.describe();
    // Which meshd answers (Prometheus' build_info practice): joins any series to a version.
    metrics::describe_gauge!(
        "meshd_build_info",
        "Always 1; labels: version, network, chain"
    );
    metrics::gauge!(
        "meshd_build_info",
        "version" => env!("CARGO_PKG_VERSION"),
        "network" => network.name(),
        "chain" => match network.profile().chain {
            meshd_actors::network::Chain::Btc => "btc",
            meshd_actors::network::Chain::Bsv => "bsv",
        },
    )
    .set(1.0);
    metrics::describe_counter!(
        "meshd_log_dropped_total",
        "Log lines lost: the log queue was full or the write failed (closed pipe, full disk)"
    );
    metrics::counter!("meshd_log_dropped_total").absolute(crate::logging::dropped());
    metrics::describe_counter!(
        "meshd_panics_total",
        "Panics in any thread (logged at ERROR; an actor's is handled by its supervisor)"
    );
    metrics::counter!("meshd_panics_total").absolute(crate::logging::panics());
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let handle = handle.clone();
            let live = live.clone();
            let process = process.clone();
            async move {
                // Process CPU, memory and open files, read at scrape time.
                process.collect();
                metrics::counter!("meshd_log_dropped_total").absolute(crate::logging::dropped());
                metrics::counter!("meshd_panics_total").absolute(crate::logging::panics());
                let mut body = precise_cpu(&handle.render());
                body.push_str(&live.render());
                ([("content-type", "text/plain; version=0.0.4")], body)
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
}
