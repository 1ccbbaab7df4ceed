//! The meshd daemon: parses flags and the config file, sets up logging, starts the node and
//! stops it gracefully on SIGINT or SIGTERM.
//!
//! Exit codes: 0 after a graceful stop; 2 for bad flags, a bad config file or an environment
//! problem found at start (port in use, data dir locked); 1 when the node stops by itself;
//! 101 after a panic on the main thread (the node is stopped first, its state saved).

// The config's JSON (api::config_json) is one large json! literal.
#![recursion_limit = "256"]

mod api;
mod cli;
mod client;
mod human;
mod logging;
mod metrics_http;
mod nodefile;
mod rpc;
mod rpc_auth;
mod settings;
mod top;

use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use meshd_actors::node::{Node, NodeExit};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info};

use crate::cli::{Cli, Command};

fn fail(msg: impl std::fmt::Display) -> ExitCode {
    logging::say(format_args!("meshd: error: {msg}"));
    ExitCode::from(2)
}

fn main() -> ExitCode {
    // Before any thread exists: keep the allocator from hoarding what hostile peers made us
    // allocate (BENCHMARKS.md, "Hostile peers").
    meshd_actors::tune_allocator();
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(a)) => *a,
        None => cli.run,
        Some(other) => return client::run(other),
    };
    let settings = match settings::resolve(&args) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    // Held to the end: dropping it flushes the lines still queued.
    let _log_guard = match logging::init(settings.log_format, settings.log_level.as_deref()) {
        Ok(g) => g,
        Err(e) => return fail(e),
    };
    logging::install_panic_hook();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    // A panic on this thread (a bug outside the actors, whose panics their supervisors
    // handle) still stops the node as a signal does: peers.dat, bans.dat and anchors.dat
    // saved, the cookie removed before the lock is released.
    let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(run(settings))
    }));
    match ran {
        Ok(code) => code,
        Err(_) => {
            if let Some(node) = RUNNING.get() {
                let _ = runtime.block_on(node.shutdown());
            }
            ExitCode::from(101)
        }
    }
}

/// The running node, for the panic path in `main`.
static RUNNING: std::sync::OnceLock<Arc<Node>> = std::sync::OnceLock::new();

async fn run(settings: settings::Settings) -> ExitCode {
    // The filter in force, for `meshd config` (RUST_LOG counts when no level is given).
    let log_level = settings
        .log_level
        .clone()
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|l| !l.is_empty()))
        .unwrap_or_else(|| "info".into());
    let (mut sigint, mut sigterm) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        _ => return fail("cannot install signal handlers"),
    };
    // A node already running here: that, not the ports it holds, is what to say.
    if let Some(other) = nodefile::NodeFile::read_live(&settings.node.datadir) {
        return fail(format!(
            "a meshd node (pid {}) already runs in {}; stop it with `meshd stop --datadir {}`",
            other.pid,
            settings.node.datadir.display(),
            settings
                .node
                .datadir
                .parent()
                .unwrap_or(&settings.node.datadir)
                .display()
        ));
    }
    // Every address is tried before any is reported, each with the flag that moves it: a
    // second node on the default ports learns all it must change at once.
    let mut taken = Vec::new();
    let metrics = match settings.metrics {
        Some(addr) => {
            let handle = match metrics_http::install_recorder() {
                Ok(h) => h,
                Err(e) => return fail(e),
            };
            meshd_actors::describe_metrics();
            match metrics_http::bind(addr).await {
                Ok(l) => Some((l, handle)),
                Err(e) => {
                    taken.push(format!(
                        "{e} (give this node --metrics ADDR, or --no-metrics)"
                    ));
                    None
                }
            }
        }
        None => None,
    };
    let rpc_listener = match settings.rpc {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                taken.push(format!(
                    "cannot serve the JSON-RPC on {addr}: {e} (give this node another --rpc ADDR, or leave --rpc out)"
                ));
                None
            }
        },
        None => None,
    };
    let api_listener = match settings.api {
        Some(addr) => match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => Some(l),
            Err(e) => {
                taken.push(format!(
                    "cannot serve the admin API on {addr}: {e} (give this node --api ADDR, or --no-api)"
                ));
                None
            }
        },
        None => None,
    };
    for addr in settings.node.listen.iter().filter(|a| a.is_ipv4()) {
        // A probe: the node binds for itself below (the moment between is harmless). Not
        // IPv6: the node binds those v6-only, which std's bind cannot, so a probe would
        // refuse `[::]:P` beside another's `0.0.0.0:P`; the node itself reports those.
        if let Err(e) = std::net::TcpListener::bind(addr) {
            taken.push(format!(
                "cannot listen on {addr}: {e} (give this node --listen ADDR, or --no-listen)"
            ));
        }
    }
    if !taken.is_empty() {
        let last = taken.pop().unwrap_or_default();
        for line in taken {
            logging::say(format_args!("meshd: error: {line}"));
        }
        return fail(last);
    }
    let started = std::time::SystemTime::now();
    let node = match Node::start(settings.node).await {
        Ok(n) => Arc::new(n),
        Err(e) => return fail(e),
    };
    let _ = RUNNING.set(node.clone());
    let metrics_addr = metrics.as_ref().and_then(|(l, _)| l.local_addr().ok());
    let api_addr = api_listener.as_ref().and_then(|l| l.local_addr().ok());
    let rpc_addr = rpc_listener.as_ref().and_then(|l| l.local_addr().ok());
    let stop = Arc::new(tokio::sync::Notify::new());
    // The cookie files written, for the banner.
    let mut cookies: Vec<String> = Vec::new();
    if let Some((listener, handle)) = metrics {
        metrics_http::serve(
            listener,
            handle,
            node.metrics_source(),
            node.config().network,
        );
    }
    if let Some(listener) = api_listener {
        let token = match settings.api_token {
            Some(t) => t,
            None => match api::write_cookie(&node.config().datadir) {
                Ok((t, path)) => {
                    // Removed by the node however it ends, before it unlocks the data dir,
                    // so a restart's new cookie is never the one deleted.
                    cookies.push(path.display().to_string());
                    node.remove_on_exit(path);
                    t
                }
                Err(e) => {
                    // The node is up: it stops as on a signal, saving what it holds.
                    let _ = node.shutdown().await;
                    return fail(format!("cannot write the API cookie: {e}"));
                }
            },
        };
        let process = api::Process {
            started,
            api: api_addr,
            metrics: metrics_addr,
            stop: stop.clone(),
            rpc: rpc_addr,
            log_level: log_level.clone(),
            log_format: match settings.log_format {
                cli::LogFormat::Text => "text",
                cli::LogFormat::Json => "json",
            },
            rpc_users: settings.rpcauth.iter().map(|u| u.user.clone()).collect(),
        };
        api::serve(listener, node.clone(), token, process);
    }
    if let Some(listener) = rpc_listener {
        let cookie = match rpc::write_rpc_cookie(&node.config().datadir) {
            Ok((password, path)) => {
                cookies.push(path.display().to_string());
                node.remove_on_exit(path);
                Some(password)
            }
            Err(e) => {
                let _ = node.shutdown().await;
                return fail(format!("cannot write the JSON-RPC cookie: {e}"));
            }
        };
        let auth = rpc::RpcAuth {
            cookie,
            users: settings.rpcauth,
        };
        rpc::serve(listener, node.clone(), auth, started, stop.clone());
    }
    for addr in node.listen_addrs() {
        // One machine-readable line per bound address, for scripts and tests using port 0.
        info!(%addr, "p2p listening");
    }
    // How the client subcommands find this node from its data dir alone.
    let datadir = node.config().datadir.clone();
    let about = nodefile::NodeFile {
        format: nodefile::FORMAT,
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        network: node.config().network.name().to_string(),
        datadir: std::path::absolute(&datadir).unwrap_or_else(|_| datadir.clone()),
        api: api_addr.map(|a| a.to_string()),
        metrics: metrics_addr.map(|a| a.to_string()),
        rpc: rpc_addr.map(|a| a.to_string()),
        p2p: node.listen_addrs().iter().map(|a| a.to_string()).collect(),
        start_time: started
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    };
    match about.write(&datadir) {
        // Removed however the node ends, before it unlocks the data dir.
        Ok(path) => node.remove_on_exit(path),
        // The node runs on; only `--datadir` discovery is lost (`--api` still works).
        Err(e) => error!(error = %e, "cannot write meshd.json; clients need --api"),
    }
    // The banner: where everything is and how to stop, in one line.
    let top = datadir.parent().unwrap_or(&datadir).display().to_string();
    let network_flag = match node.config().network {
        meshd_actors::network::NetworkId::Regtest => String::new(),
        n => format!(" --network {}", n.name()),
    };
    info!(
        datadir = %datadir.display(),
        p2p = %node.listen_addrs().iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","),
        api = %api_addr.map_or("off".to_string(), |a| a.to_string()),
        rpc = %rpc_addr.map_or("off".to_string(), |a| a.to_string()),
        metrics = %metrics_addr.map_or("off".to_string(), |a| a.to_string()),
        cookies = %if cookies.is_empty() { "none".to_string() } else { cookies.join(",") },
        stop = %format!("meshd stop --datadir {top}{network_flag} (or Ctrl-C, SIGTERM)"),
        "meshd {} ready on {}",
        env!("CARGO_PKG_VERSION"),
        node.config().network.name()
    );
    let signal_name = tokio::select! {
        _ = sigint.recv() => "SIGINT",
        _ = sigterm.recv() => "SIGTERM",
        _ = stop.notified() => "stop request",
        exit = node.wait() => {
            error!(?exit, "node stopped by itself");
            return ExitCode::from(1);
        }
    };
    info!(signal = signal_name, "shutting down");
    let exit = node.shutdown().await;
    match exit {
        NodeExit::Graceful => {
            info!("bye");
            ExitCode::SUCCESS
        }
        NodeExit::Failed(why) => {
            error!(%why, "shutdown failed");
            ExitCode::from(1)
        }
    }
}
