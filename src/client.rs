//! The CLI subcommands that talk to a running node's admin API: `meshd peers`, `network`,
//! `sync`, `bans`, `ban`, `unban`, `addnode`, `disconnect`, `generate`, `events`, `config`.
//!
//! Readable tables by default, `--json` for scripts. The token comes from the node's cookie
//! file (`DATADIR/<network>/.cookie`) unless `--api-token` is given. Exit codes: 0 on
//! success, 1 when the node answers with an error or does not answer at all.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use meshd_actors::network::NetworkId;
use serde_json::{json, Value};

use crate::cli::{ClientArgs, Command, FleetCommand, HintsCommand, OverlayCommand};

/// Time allowed for one API call (not for the event stream).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) base: String,
    addr: String,
    pub(crate) token: String,
    json: bool,
    /// The running node's meshd.json, when found.
    running: Option<crate::nodefile::NodeFile>,
}

fn die(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("meshd: {msg}");
    ExitCode::from(1)
}

impl Client {
    /// Finds the node as bitcoin-cli does from bitcoin.conf: the data dir from `--datadir`,
    /// the config file or the default; the network from `--network`, the config file or
    /// the one node running there; the API address from `--api`, the running node's
    /// meshd.json, the config file or the network's default; the token from the cookie.
    fn new(args: &ClientArgs) -> Result<Client, String> {
        let file = match &args.config {
            Some(path) => Some(crate::settings::read_file(path).map_err(|e| e.to_string())?),
            None => None,
        };
        let datadir = args
            .datadir
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.datadir()).map(PathBuf::from))
            .unwrap_or_else(crate::nodefile::default_datadir);
        let network_name = match args
            .network
            .clone()
            .or_else(|| file.as_ref().and_then(|f| f.network()).map(str::to_string))
        {
            Some(n) => n,
            None => match crate::nodefile::NodeFile::live_networks(&datadir).as_slice() {
                [only] => only.clone(),
                [] => "regtest".to_string(),
                many => {
                    return Err(format!(
                        "nodes of several networks run under {} ({}): pass --network",
                        datadir.display(),
                        many.join(", ")
                    ))
                }
            },
        };
        let network: NetworkId = network_name
            .parse()
            .map_err(|e: meshd_actors::network::UnknownNetwork| e.to_string())?;
        let profile = network.profile();
        let network_dir = datadir.join(network.name());
        let running = crate::nodefile::NodeFile::read_live(&network_dir);
        let api = args
            .api
            .clone()
            .or_else(|| running.as_ref().and_then(|r| r.api.clone()))
            .or_else(|| file.as_ref().and_then(|f| f.api()).map(str::to_string));
        let mut addr = match &api {
            Some(a) => crate::settings::parse_endpoint("api", a, profile.api_port)
                .map_err(|e| e.to_string())?,
            None => std::net::SocketAddr::from(([127, 0, 0, 1], profile.api_port)),
        };
        if addr.ip().is_unspecified() {
            // Served on every address (`--api 0.0.0.0:P`): reached on loopback.
            addr.set_ip(match addr {
                std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if args.api.is_none() && running.as_ref().is_some_and(|r| r.api.is_none()) {
            return Err(format!(
                "the {network} node in {} serves no admin API (it runs with --no-api)",
                network_dir.display()
            ));
        }
        let token = match &args.api_token {
            Some(t) => t.clone(),
            None => {
                let path = network_dir.join(".cookie");
                std::fs::read_to_string(&path)
                    .map(|t| t.trim().to_string())
                    .map_err(|e| {
                        format!(
                            "cannot read the API cookie {}: {e} (is a {network} node running with --datadir {}? or pass --api-token)",
                            path.display(),
                            datadir.display()
                        )
                    })?
            }
        };
        Ok(Client {
            base: format!("http://{addr}"),
            addr: addr.to_string(),
            token,
            json: args.json,
            running,
        })
    }

    /// Whether the node is gone: found from its data dir, once it no longer holds the data
    /// dir's lock (it has saved its state and exited); reached by `--api` alone, once its
    /// API refuses connections.
    fn stopped(&self) -> bool {
        match &self.running {
            Some(r) => !crate::nodefile::lock_held_by(&r.datadir, r.pid),
            None => std::net::TcpStream::connect_timeout(
                &self
                    .addr
                    .parse()
                    .unwrap_or(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
                Duration::from_millis(200),
            )
            .is_err(),
        }
    }

    pub(crate) fn agent(timeout: Option<Duration>) -> ureq::Agent {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(timeout)
            .timeout_connect(Some(Duration::from_secs(5)))
            .build()
            .into()
    }

    fn unreachable(&self, e: &ureq::Error) -> String {
        format!(
            "no meshd node answering at {} ({e}); is it running, and is --api/--network right?",
            self.addr
        )
    }

    pub(crate) fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let agent = Client::agent(Some(CALL_TIMEOUT));
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
            (m, body) => {
                let bytes = body.unwrap_or(Value::Null).to_string();
                let req = match m {
                    "PATCH" => agent.patch(&url),
                    _ => agent.post(&url),
                };
                req.header("Authorization", &auth)
                    .header("Content-Type", "application/json")
                    .send(bytes.as_bytes())
            }
        };
        let mut resp = result.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| e.to_string())?;
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(value)
        } else {
            let msg = value["message"].as_str().unwrap_or("error").to_string();
            Err(format!("{} ({})", msg, status.as_u16()))
        }
    }
}

pub(crate) fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    aligned_table(headers, rows, false)
}

/// A table of counts: the first column left-aligned, the rest right-aligned.
pub(crate) fn table_right(headers: &[&str], rows: Vec<Vec<String>>) {
    aligned_table(headers, rows, true)
}

/// Columns padded to their widest cell (in characters); `numbers` right-aligns all but the
/// first.
fn aligned_table(headers: &[&str], rows: Vec<Vec<String>>, numbers: bool) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if numbers && i > 0 {
                    format!("{c:>w$}", w = widths[i])
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

pub(crate) fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(x) => sanitize(x),
        // Arrays and objects as JSON, whose escaping leaves bidi and C1 characters alone.
        other => sanitize(&other.to_string()),
    }
}

/// A string a peer or another fleet node chose, made safe for a terminal (as Core's
/// `SanitizeString` of a subver): printable ASCII and spaces only, so no control character
/// (escape sequences start with one), C1 control, bidirectional override, zero-width or
/// line-separator character reaches the screen.
pub(crate) fn sanitize(x: &str) -> String {
    x.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .collect()
}

fn print_peers(v: &Value) {
    use crate::human;
    let now = human::now_unix();
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    vec![
                        s(&p["id"]),
                        s(&p["address"]),
                        if p["direction"] == "inbound" {
                            "in"
                        } else {
                            "out"
                        }
                        .to_string(),
                        s(&p["connection_type"]),
                        s(&p["state"]),
                        s(&p["transport"]),
                        human::services(&p["services_names"]),
                        s(&p["user_agent"]),
                        s(&p["synced_height"]),
                        p["connected_time"]
                            .as_i64()
                            .map_or("-".into(), |t| human::span(now - t)),
                        human::millis(&p["ping_last"]),
                        human::ago(&p["last_send_time"], now),
                        human::ago(&p["last_receive_time"], now),
                        human::bytes_of(&p["bytes_sent"]),
                        human::bytes_of(&p["bytes_received"]),
                        s(&p["restarts"]),
                        s(&p["misbehavior_score"]),
                        p["permissions"]
                            .as_array()
                            .filter(|a| !a.is_empty())
                            .map_or("-".into(), |a| {
                                a.iter().map(s).collect::<Vec<_>>().join(",")
                            }),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "ID",
            "ADDRESS",
            "DIR",
            "TYPE",
            "STATE",
            "TRANSPORT",
            "SERVICES",
            "USER AGENT",
            "HEIGHT",
            "AGE",
            "PING",
            "LAST SEND",
            "LAST RECV",
            "SENT",
            "RECEIVED",
            "RESTARTS",
            "SCORE",
            "PERMISSIONS",
        ],
        rows,
    );
}

fn print_added_nodes(v: &Value) {
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    vec![
                        s(&n["address"]),
                        s(&n["kind"]),
                        if n["connected"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        s(&n["peer"]),
                        if n["retrying"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["ADDRESS", "KIND", "CONNECTED", "PEER", "RETRYING"], rows);
}

fn print_bans(v: &Value) {
    use crate::human;
    let now = human::now_unix();
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    vec![
                        s(&b["subnet"]),
                        human::ago(&b["created_time"], now),
                        b["until_time"].as_i64().map_or("-".into(), local_time),
                        human::until(&b["until_time"], now),
                        s(&b["reason"]),
                        s(&b["origin"]),
                        s(&b["detail"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "SUBNET", "BANNED", "UNTIL", "LEFT", "REASON", "ORIGIN", "DETAIL",
        ],
        rows,
    );
}

fn print_fleet(v: &Value) {
    let f = &v["fleet"];
    println!(
        "fleet {} (this node: {}, NATS {}: {})",
        s(&f["fleet"]),
        s(&f["node"]),
        s(&f["url"]),
        if f["connected"] == true {
            "connected"
        } else {
            "disconnected"
        }
    );
    let rows = v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    vec![
                        s(&n["node"]),
                        if n["stale"] == true {
                            "STALE".into()
                        } else {
                            "ok".into()
                        },
                        s(&n["network"]),
                        s(&n["tip_height"]),
                        s(&n["tip_hash"]),
                        s(&n["outbound"]),
                        s(&n["inbound"]),
                        s(&n["v2"]),
                        n["uptime"].as_u64().map_or("-".into(), human_duration),
                        s(&n["version"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "NODE", "STATE", "NETWORK", "HEIGHT", "TIP", "OUT", "IN", "V2", "UPTIME", "VERSION",
        ],
        rows,
    );
}

fn print_overlay(v: &Value) {
    if v["running"] != true {
        let why = if v["enabled"] == true {
            "enabled but not running (see the log)"
        } else {
            "off (start the node with --overlay)"
        };
        println!("overlay {why}");
        return;
    }
    let st = &v["status"];
    let relay = if st["relay_service"] == true {
        format!(
            "serving: {} reservations, {} circuits",
            s(&st["relay_served"]["reservations"]),
            s(&st["relay_served"]["circuits"])
        )
    } else {
        "not serving".to_string()
    };
    let rows = [
        ("peer id", s(&st["peer_id"])),
        ("listening", list(&st["listen_addrs"])),
        ("external", list(&st["external_addrs"])),
        ("reachability", s(&st["reachability"])),
        ("peers", s(&st["peers"])),
        ("DHT table", s(&st["routing_table"])),
        ("topics", list(&st["topics"])),
        ("reservations", list(&st["relay_reservations"])),
        ("relay", relay),
        (
            "hole punch",
            format!(
                "{} direct, {} gave up",
                s(&st["hole_punches"]["ok"]),
                s(&st["hole_punches"]["failed"])
            ),
        ),
        ("mDNS", if st["mdns"] == true { "on" } else { "off" }.into()),
    ];
    for (k, val) in rows {
        println!("{k:<12} {val}");
    }
}

fn print_overlay_topics(v: &Value) {
    if v["running"] != true {
        println!("overlay off (start the node with --overlay)");
        return;
    }
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let rows = v["status"]["provided"]
        .as_array()
        .map(|topics| {
            topics
                .iter()
                .map(|t| {
                    let sharing = peers
                        .iter()
                        .filter(|p| p["topics"].as_array().is_some_and(|a| a.contains(t)))
                        .count();
                    vec![s(t), sharing.to_string()]
                })
                .collect()
        })
        .unwrap_or_default();
    table(&["TOPIC", "PEERS SERVING IT"], rows);
    println!(
        "{} clusters among {} peers (threshold {})",
        s(&v["status"]["clusters"]),
        peers.len(),
        s(&v["status"]["cluster_threshold"])
    );
}

fn print_overlay_find(v: &Value) {
    let providers = v["providers"].as_array().cloned().unwrap_or_default();
    if providers.is_empty() {
        println!("no peer found serving {}", s(&v["topic"]));
        return;
    }
    let rows = providers
        .iter()
        .map(|p| {
            vec![
                s(&p["peer_id"]),
                if p["connected"] == true {
                    "connected"
                } else {
                    "dialling"
                }
                .into(),
            ]
        })
        .collect();
    table(&["PEER ID", "STATE"], rows);
}

/// A query-string value percent-encoded (topics hold `/`, and may hold anything).
fn query_escape(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn print_overlay_peers(v: &Value) {
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    vec![
                        s(&p["peer_id"]),
                        s(&p["address"]),
                        s(&p["found_by"]),
                        if p["relayed"] == true {
                            "relayed"
                        } else {
                            "direct"
                        }
                        .into(),
                        s(&p["cluster"]),
                        p["similarity"]
                            .as_f64()
                            .map_or("-".into(), |x| format!("{x:.2}")),
                        p["rtt_ms"]
                            .as_u64()
                            .map_or("-".into(), |ms| format!("{ms}ms")),
                        p["connected_secs"]
                            .as_u64()
                            .map_or("-".into(), human_duration),
                        s(&p["agent"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "PEER ID", "ADDRESS", "FOUND BY", "LINK", "CLUSTER", "SIMILAR", "RTT", "UP", "AGENT",
        ],
        rows,
    );
}

fn print_propagation(v: &Value) {
    let rows = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    let ms = |v: &Value| v.as_f64().map(|t| (t * 1000.0).round() as i64);
                    let first = ms(&b["first_time"]);
                    let last = ms(&b["last_time"]);
                    vec![
                        s(&b["height"]),
                        s(&b["hash"]),
                        s(&b["nodes"]),
                        s(&b["first_node"]),
                        first.map_or("-".into(), local_time_ms),
                        first
                            .zip(last)
                            .map_or("-".into(), |(f, l)| format!("+{} ms", l - f)),
                        crate::human::millis(&b["p50"]),
                        crate::human::millis(&b["p90"]),
                        carriers(&b["arrivals"]),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "HEIGHT",
            "BLOCK",
            "NODES",
            "FIRST NODE",
            "FIRST SEEN",
            "LAST",
            "P50",
            "P90",
            "CARRIED BY",
        ],
        rows,
    );
}

/// How many nodes first got the block by each message, most first, without spaces so the
/// table splits on whitespace: `compact_high_bandwidth:3,block:1` (`--json` has each node's
/// arrival).
fn carriers(arrivals: &Value) -> String {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for a in arrivals.as_array().into_iter().flatten() {
        let via = a["via"].as_str().unwrap_or("unknown").to_string();
        match counts.iter_mut().find(|(v, _)| *v == via) {
            Some((_, n)) => *n += 1,
            None => counts.push((via, 1)),
        }
    }
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    counts
        .iter()
        .map(|(via, n)| format!("{via}:{n}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// `meshd network`: addresses, reachability and NAT, then slots and limits as tables.
/// A JSON list of strings as one comma-separated field, `-` when empty.
fn list(v: &Value) -> String {
    let items: Vec<String> = v.as_array().into_iter().flatten().map(s).collect();
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    }
}

fn print_network(v: &Value) {
    let fleet = match &v["fleet"] {
        Value::Null => "-".to_string(),
        f => format!(
            "{} as {} ({})",
            s(&f["fleet"]),
            s(&f["node"]),
            if f["connected"] == true {
                "connected"
            } else {
                "disconnected"
            }
        ),
    };
    let rows = [
        ("network", s(&v["network"])),
        ("listening", list(&v["listen"])),
        ("public", list(&v["public_addresses"])),
        (
            "onion",
            v["onion_service"]["address"]
                .as_str()
                .map_or("-".into(), sanitize),
        ),
        ("reachable", list(&v["reachable_networks"])),
        ("proxy", s(&v["proxy"])),
        ("onion proxy", s(&v["onion_proxy"])),
        ("NAT", s(&v["nat_type"])),
        ("port map", port_mapping(&v["port_mapping"])),
        (
            "overlay",
            match &v["overlay"] {
                Value::Null => "-".to_string(),
                o => format!(
                    "{} ({}, {} peers)",
                    s(&o["peer_id"]),
                    s(&o["reachability"]),
                    s(&o["peers"])
                ),
            },
        ),
        ("fleet", fleet),
    ];
    for (k, val) in rows {
        println!("{k:<12} {val}");
    }
    println!();
    let slots = ["outbound", "block_relay_only", "manual", "inbound", "total"]
        .iter()
        .map(|k| {
            vec![
                k.replace('_', "-"),
                s(&v["slots"][k]["used"]),
                s(&v["slots"][k]["max"]),
            ]
        })
        .collect();
    table_right(&["SLOTS", "USED", "MAX"], slots);
    println!();
    let limits = [
        "max_upload_rate",
        "max_download_rate",
        "peer_max_upload_rate",
        "peer_max_download_rate",
    ]
    .iter()
    .map(|k| vec![k.replace('_', "-"), crate::human::rate(&v["limits"][k])])
    .collect();
    table(&["LIMIT", "VALUE"], limits);
}

/// The port mapping in one line: `pcp 203.0.113.254:8333 -> 10.0.0.10:8333 (40m, renewed
/// 5m ago)`, `failed (pcp gateway did not answer)`, or `-` when mapping is off.
fn port_mapping(p: &Value) -> String {
    let Some(state) = p["state"].as_str() else {
        return "-".into();
    };
    let protocol = p["protocol"].as_str().unwrap_or("-");
    match (state, p["external"].as_str()) {
        ("mapped" | "mapped_private", Some(ext)) => {
            // A UPnP gateway that takes only permanent leases grants 0.
            let lifetime = match p["lifetime"].as_u64() {
                Some(0) => "permanent".into(),
                Some(l) => crate::human::span(l as i64),
                None => "-".into(),
            };
            let renewed = crate::human::ago(&p["renewed_time"], crate::human::now_unix());
            let private = if state == "mapped_private" {
                ", private: not advertised"
            } else {
                ""
            };
            let stun = match p["stun_agrees"].as_bool() {
                Some(false) => ", STUN sees another address",
                _ => "",
            };
            format!(
                "{protocol} {} -> {} ({lifetime}, renewed {renewed}{private}{stun})",
                sanitize(ext),
                sanitize(p["internal"].as_str().unwrap_or("-"))
            )
        }
        _ => match p["last_error"].as_str() {
            Some(e) => format!("{state} ({})", sanitize(e)),
            None => format!("{state} ({protocol})"),
        },
    }
}

/// A config value as it would be written: durations and sizes in their largest exact unit
/// (`1d`, `90s`, `1MB/s`), lists joined, `-` for unset.
fn config_value(key: &str, v: &Value) -> String {
    let is_duration = [
        "timeout", "interval", "delay", "duration", "window", "after", "age",
    ]
    .iter()
    .any(|w| key.ends_with(w));
    let is_rate = key.ends_with("-rate");
    let is_bytes = key.ends_with("-burst") || key.ends_with("-bytes") || key.ends_with("-size");
    match v {
        Value::Number(n) if is_duration => {
            let secs = n.as_f64().unwrap_or(0.0);
            if secs.fract() != 0.0 {
                format!("{}ms", (secs * 1000.0).round())
            } else {
                exact_duration(secs as u64)
            }
        }
        Value::Number(n) if is_rate && n.as_u64() == Some(0) => "0 (unlimited)".into(),
        Value::Number(n) if is_rate || is_bytes => {
            let b = n.as_u64().unwrap_or(0);
            let text = exact_bytes(b);
            if is_rate {
                format!("{text}/s")
            } else {
                text
            }
        }
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(", "),
        Value::Bool(b) => b.to_string(),
        other => s(other),
    }
}

/// Seconds in the largest unit that divides them: `1d`, `24h` stays `1d`, `90s`, `2m`.
fn exact_duration(secs: u64) -> String {
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs >= size && secs.is_multiple_of(size) {
            return format!("{}{unit}", secs / size);
        }
    }
    format!("{secs}s")
}

/// Bytes in the largest unit that divides them: `1MB`, `64KiB`, `1500B`.
fn exact_bytes(b: u64) -> String {
    for (unit, size) in [
        ("GiB", 1u64 << 30),
        ("GB", 1_000_000_000),
        ("MiB", 1 << 20),
        ("MB", 1_000_000),
        ("KiB", 1 << 10),
        ("kB", 1_000),
    ] {
        if b >= size && b.is_multiple_of(size) {
            return format!("{}{unit}", b / size);
        }
    }
    format!("{b}B")
}

/// `meshd config`: every effective key, its value with units, and whether it can change
/// while the node runs (such a change lasts until the node restarts).
fn print_config(v: &Value) {
    let Some(obj) = v.as_object() else {
        return println!("{v}");
    };
    let mut keys: Vec<&String> = obj.keys().collect();
    keys.sort();
    let rows = keys
        .into_iter()
        .map(|k| {
            vec![
                sanitize(k),
                config_value(k, &obj[k]),
                if crate::api::RUNTIME_KEYS.contains(&k.as_str()) {
                    "live, until restart".to_string()
                } else {
                    "at restart".to_string()
                },
            ]
        })
        .collect();
    table(&["KEY", "VALUE", "CHANGES"], rows);
    println!();
    println!(
        "meshd config KEY=VALUE changes a live key until the node restarts; to keep it, set it in the config file too."
    );
}

fn print_object(v: &Value) {
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            println!(
                "{} = {}",
                sanitize(k),
                match val {
                    Value::String(x) => sanitize(x),
                    other => sanitize(&other.to_string()),
                }
            );
        }
    } else {
        println!("{v}");
    }
}

/// Writes the node's hints (`/v1/hints`) to `file` in the hints file format; returns what
/// was written.
fn export_hints(v: &Value, file: &std::path::Path) -> Result<Value, String> {
    let network = v["network"].as_str().ok_or("no network in the answer")?;
    if v["hints"].as_array().is_some_and(|h| h.is_empty()) {
        // An empty file would sync nothing; say so rather than write it.
        return Err(format!(
            "the node has no header hints to export yet (one every {} heights of its best chain)",
            s(&v["interval"])
        ));
    }
    let hints: Vec<(u32, bitcoin::BlockHash)> = v["hints"]
        .as_array()
        .ok_or("no hints in the answer")?
        .iter()
        .map(|h| {
            let height = h["height"].as_u64().and_then(|x| u32::try_from(x).ok());
            let hash = h["hash"].as_str().and_then(|x| x.parse().ok());
            height.zip(hash).ok_or("a malformed hint in the answer")
        })
        .collect::<Result<_, _>>()?;
    let text = meshd_actors::sync::hints::format(network, &hints);
    meshd_actors::persist::write_atomic(file, text.as_bytes())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok(json!({
        "file": file.display().to_string(),
        "network": network,
        "hints": hints.len(),
        "last_height": hints.last().map_or(0, |h| h.0),
    }))
}

fn emit(c: &Client, v: &Value, human: impl Fn(&Value)) {
    if c.json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    } else {
        human(v);
    }
}

fn events(c: &Client, types: &[String]) -> Result<(), String> {
    let kinds: Vec<String> = types
        .iter()
        .flat_map(|t| t.split(',').map(|x| x.trim().to_string()))
        .filter(|t| !t.is_empty())
        .collect();
    let mut url = format!("{}/v1/events", c.base);
    if !kinds.is_empty() {
        url.push_str(&format!("?type={}", kinds.join(",")));
    }
    let resp = Client::agent(None)
        .get(&url)
        .header("Authorization", &format!("Bearer {}", c.token))
        .call()
        .map_err(|e| c.unreachable(&e))?;
    if !resp.status().is_success() {
        let status = resp.status().as_u16();
        let text = resp.into_body().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        return Err(format!(
            "{} ({status})",
            v["message"].as_str().unwrap_or("error")
        ));
    }
    let reader = BufReader::new(resp.into_body().into_reader());
    for line in reader.lines() {
        let Ok(line) = line else {
            break;
        };
        let Some(data) = line.strip_prefix("data:") else {
            continue;
        };
        let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
        let stopping = v["type"] == "NodeStopping";
        if c.json {
            println!("{}", v);
        } else if stopping {
            println!("{} the node is stopping", time_of_day(&v["time"]));
        } else {
            let mut fields: Vec<String> = v
                .as_object()
                .map(|o| {
                    o.iter()
                        .filter(|(k, _)| !matches!(k.as_str(), "type" | "time" | "seq"))
                        .map(|(k, val)| format!("{}={}", sanitize(k), event_value(k, val)))
                        .collect()
                })
                .unwrap_or_default();
            fields.sort();
            println!(
                "{} {} {}",
                time_of_day(&v["time"]),
                s(&v["type"]),
                fields.join(" ")
            );
        }
        if stopping {
            return Ok(());
        }
    }
    Err("the event stream ended: the node closed the connection (stopped, or restarting)".into())
}

/// An event field as a person reads it: `*_time` fields as local times.
pub(crate) fn event_value(key: &str, v: &Value) -> String {
    match v.as_i64() {
        // One token, so the line still splits on spaces: 2026-12-08T11:01:48+01:00.
        Some(t) if key.ends_with("_time") => match jiff::Timestamp::from_second(t) {
            Ok(ts) => ts
                .to_zoned(jiff::tz::TimeZone::system())
                .strftime("%Y-%m-%dT%H:%M:%S%:z")
                .to_string(),
            Err(_) => t.to_string(),
        },
        _ => s(v),
    }
}

/// Unix seconds as the local time of day to the millisecond (`14:03:07.412`).
fn time_of_day(v: &Value) -> String {
    let Some(secs) = v.as_f64() else {
        return "-".into();
    };
    match jiff::Timestamp::from_millisecond((secs * 1000.0) as i64) {
        Ok(t) => t
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%H:%M:%S%.3f")
            .to_string(),
        Err(_) => "-".into(),
    }
}

/// A peer id from `peer`: the id itself, or the id of the connected peer at that address.
fn peer_id(c: &Client, peer: &str) -> Result<u64, String> {
    if let Ok(id) = peer.parse::<u64>() {
        return Ok(id);
    }
    let peers = c.call("GET", "/v1/peers", None)?;
    peers
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["address"].as_str() == Some(peer))
        .and_then(|p| p["id"].as_u64())
        .ok_or_else(|| format!("no connected peer at {peer} (`meshd peers` lists them)"))
}

/// `meshd generate N`: one line (the hashes with `--json`).
fn print_generated(v: &Value) {
    let blocks = v["blocks"].as_array().map_or(0, Vec::len);
    let tip = v["tip_height"].as_u64().unwrap_or(0);
    let first = (tip + 1).saturating_sub(blocks as u64);
    let last = v["blocks"]
        .as_array()
        .and_then(|b| b.last())
        .map_or("-".to_string(), s);
    println!("mined {blocks} blocks (heights {first} to {tip}), tip {last}");
}

/// How long `meshd stop` waits for the node to exit: its own stop is bounded (peers
/// closed, state saved; headers.dat's last fsync waits at most 10 s).
const STOP_WAIT: Duration = Duration::from_secs(60);

/// `meshd stop`: asks the node to stop, then waits for its process to exit (its pid from
/// the status answer), so a script can start another at once.
fn stop(c: &Client) -> Result<(), String> {
    let pid = match c.call("POST", "/v1/stop", None) {
        Ok(answer) => answer["pid"].as_u64().and_then(|p| u32::try_from(p).ok()),
        // The node may stop before its answer is read: if it did, that is the answer.
        Err(_) if c.stopped() => None,
        Err(e) => return Err(e),
    };
    if !c.json {
        match pid {
            Some(pid) => println!("meshd stopping (pid {pid})"),
            None => println!("meshd stopping"),
        }
    }
    let deadline = std::time::Instant::now() + STOP_WAIT;
    while !c.stopped() {
        if std::time::Instant::now() >= deadline {
            return Err(format!(
                "the node is still running after {}s",
                STOP_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if c.json {
        println!("{}", json!({"stopped": true, "pid": pid}));
    } else {
        println!("meshd stopped");
    }
    Ok(())
}

/// How often `meshd sync --wait` asks the node.
const SYNC_POLL: Duration = Duration::from_millis(500);

/// `meshd sync --wait`: a progress bar (on a terminal) until the node says synced; then
/// the status, as `meshd sync` prints it.
fn wait_synced(c: &Client, limit: Option<Duration>) -> Result<(), String> {
    let deadline = limit.map(|l| std::time::Instant::now() + l);
    let bar = indicatif::ProgressBar::new(1_000);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {percent:>3}% {msg}")
            .map_err(|e| e.to_string())?,
    );
    loop {
        let v = c.call("GET", "/v1/sync", None)?;
        if v["state"] == "synced" {
            bar.finish_and_clear();
            emit(c, &v, print_sync);
            return Ok(());
        }
        if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            bar.finish_and_clear();
            return Err(format!(
                "not synced after {}: {}",
                human_duration(limit.unwrap_or_default().as_secs()),
                sync_line(&v)
            ));
        }
        let progress = v["progress"].as_f64().unwrap_or(0.0).clamp(0.0, 1.0);
        bar.set_position((progress * 1_000.0) as u64);
        bar.set_message(sync_line(&v));
        std::thread::sleep(SYNC_POLL);
    }
}

/// "height 12345, 2013 headers/s, 3m 48s left, from 127.0.0.1:18444".
fn sync_line(v: &Value) -> String {
    let mut parts = vec![format!(
        "{} height {}",
        s(&v["state"]),
        s(&v["header_height"])
    )];
    if let Some(r) = v["headers_per_sec"].as_f64() {
        parts.push(format!("{} headers/s", r.round()));
    }
    if let Some(e) = v["eta"].as_u64() {
        parts.push(format!("{} left", human_duration(e)));
    }
    if let Some(p) = v["sync_peer"].as_str() {
        parts.push(format!("from {}", sanitize(p)));
    }
    parts.join(", ")
}

fn print_sync(v: &Value) {
    let progress = v["progress"].as_f64().unwrap_or(0.0) * 100.0;
    let rows = [
        ("state", s(&v["state"])),
        (
            "height",
            format!("{} ({progress:.1}%)", s(&v["header_height"])),
        ),
        ("best peer", s(&v["best_peer_height"])),
        (
            "rate",
            v["headers_per_sec"]
                .as_f64()
                .map_or("-".into(), |r| format!("{} headers/s", r.round())),
        ),
        (
            "time left",
            v["eta"].as_u64().map_or("-".into(), human_duration),
        ),
        (
            "sync peer",
            v["sync_peer"].as_str().map_or("-".into(), sanitize),
        ),
        ("tip", s(&v["best_header_hash"])),
        (
            "pool",
            format!(
                "{} transactions, {} blocks kept",
                s(&v["tx_pool"]),
                s(&v["blocks_kept"])
            ),
        ),
    ];
    for (k, val) in rows {
        println!("{k:<10} {val}");
    }
    if let Some(e) = v["store_error"].as_str() {
        println!("warning    headers.dat: {}", sanitize(e));
    }
}

/// A duration as people say it: `45s`, `3m 12s`, `5h 02m`, `3d 4h`.
pub(crate) fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s:02}s"),
        (0, _, _) => format!("{h}h {m:02}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Unix milliseconds as a local time to the millisecond (`2026-12-07 09:30:02.118`).
fn local_time_ms(unix_ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(unix_ms) {
        Ok(t) => t
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S%.3f")
            .to_string(),
        Err(_) => unix_ms.to_string(),
    }
}

/// `meshd netinfo`: the status, the peers and the public addresses, in one view.
fn netinfo(c: &Client) -> Result<(), String> {
    let status = c.call("GET", "/v1/status", None)?;
    let peers = c.call("GET", "/v1/peers", None)?;
    let network = c.call("GET", "/v1/network", None)?;
    if c.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &json!({"status": status, "peers": peers, "network": network})
            )
            .unwrap_or_default()
        );
    } else {
        crate::human::print_netinfo(&status, &peers, &network);
    }
    Ok(())
}

/// Unix seconds as a local time (`2026-12-07 09:30:02 CET`), or the number itself when
/// the time zone database cannot say.
pub fn local_time(unix: i64) -> String {
    match jiff::Timestamp::from_second(unix) {
        Ok(t) => t
            .to_zoned(jiff::tz::TimeZone::system())
            .strftime("%Y-%m-%d %H:%M:%S %Z")
            .to_string(),
        Err(_) => unix.to_string(),
    }
}

fn print_status(v: &Value) {
    let list = |key: &str| match &v[key] {
        Value::Array(a) if !a.is_empty() => a.iter().map(s).collect::<Vec<_>>().join(", "),
        Value::String(x) => sanitize(x),
        _ => "off".to_string(),
    };
    let uptime = v["uptime"].as_u64().unwrap_or(0);
    println!(
        "meshd {} on {}, up {} (pid {})",
        s(&v["version"]),
        s(&v["network"]),
        human_duration(uptime),
        s(&v["pid"])
    );
    let started = v["start_time"]
        .as_i64()
        .map_or_else(|| "-".to_string(), local_time);
    let progress = v["sync"]["progress"].as_f64().unwrap_or(0.0) * 100.0;
    let rows = [
        ("started", started),
        ("data dir", s(&v["datadir"])),
        ("api", list("api")),
        ("metrics", list("metrics")),
        ("rpc", list("rpc")),
        ("p2p", list("p2p")),
        (
            "peers",
            format!(
                "{} in, {} out",
                s(&v["peers"]["inbound"]),
                s(&v["peers"]["outbound"])
            ),
        ),
        (
            "tip",
            format!("{} {}", s(&v["tip"]["height"]), s(&v["tip"]["hash"])),
        ),
        (
            "sync",
            format!("{} ({progress:.1}%)", s(&v["sync"]["state"])),
        ),
    ];
    for (k, val) in rows {
        println!("  {k:<9} {val}");
    }
    if let Some(e) = v["store_error"].as_str() {
        println!("  warning   headers.dat: {}", sanitize(e));
    }
}

/// `meshd fleet key`: this node's fleet signing key (made if missing), as a line for the
/// other nodes' `--fleet-trusted-keys` file. Reads the data dir; needs no running node.
fn fleet_key(
    datadir: Option<PathBuf>,
    network: Option<String>,
    node_name: Option<String>,
) -> ExitCode {
    let network: NetworkId = match network.as_deref().unwrap_or("regtest").parse() {
        Ok(n) => n,
        Err(e) => return die(format!("{e}")),
    };
    let dir = datadir
        .unwrap_or_else(crate::nodefile::default_datadir)
        .join(network.name());
    match meshd_actors::fleet::key::load_or_create(&dir) {
        Ok(key) => {
            let name =
                node_name.unwrap_or_else(|| format!("{}-{network}", crate::settings::host_name()));
            let public = meshd_actors::fleet::core::public_key_hex(&key.verifying_key());
            println!("{public} {}", sanitize(&name));
            ExitCode::SUCCESS
        }
        Err(e) => die(e.to_string()),
    }
}

/// Runs one client subcommand.
pub fn run(cmd: Command) -> ExitCode {
    if let Command::Fleet {
        what:
            FleetCommand::Key {
                datadir,
                network,
                node_name,
            },
    } = cmd
    {
        return fleet_key(datadir, network, node_name);
    }
    let client_args = match &cmd {
        Command::Run(_) => return ExitCode::from(2),
        Command::Status(c) | Command::Stop(c) => c,
        Command::Peers(c)
        | Command::Netinfo(c)
        | Command::Network(c)
        | Command::Bans(c)
        | Command::Addednodes(c) => c,
        Command::Sync { client, .. }
        | Command::Top { client, .. }
        | Command::Ban { client, .. }
        | Command::Unban { client, .. }
        | Command::Addnode { client, .. }
        | Command::Disconnect { client, .. }
        | Command::Generate { client, .. }
        | Command::Events { client, .. }
        | Command::Config { client, .. } => client,
        Command::Fleet {
            what: FleetCommand::Status(client),
        }
        | Command::Fleet {
            what: FleetCommand::Propagation { client, .. },
        } => client,
        Command::Fleet {
            what: FleetCommand::Key { .. },
        } => return ExitCode::from(2),
        Command::Hints {
            what: HintsCommand::Export { client, .. },
        } => client,
        Command::Overlay {
            what:
                OverlayCommand::Status(client)
                | OverlayCommand::Peers(client)
                | OverlayCommand::Topics(client)
                | OverlayCommand::Find { client, .. },
        } => client,
    };
    let c = match Client::new(client_args) {
        Ok(c) => c,
        Err(e) => return die(e),
    };
    let result = match &cmd {
        Command::Run(_)
        | Command::Fleet {
            what: FleetCommand::Key { .. },
        } => Ok(()),
        Command::Status(_) => c
            .call("GET", "/v1/status", None)
            .map(|v| emit(&c, &v, print_status)),
        Command::Stop(_) => stop(&c),
        Command::Peers(_) => c
            .call("GET", "/v1/peers", None)
            .map(|v| emit(&c, &v, print_peers)),
        Command::Network(_) => c
            .call("GET", "/v1/network", None)
            .map(|v| emit(&c, &v, print_network)),
        Command::Netinfo(_) => netinfo(&c),
        Command::Top { interval, .. } => {
            if interval.is_finite() && *interval > 0.0 {
                crate::top::run(&c, Duration::from_secs_f64(interval.clamp(0.1, 3600.0)))
            } else {
                Err(format!(
                    "--interval: expected seconds above 0, got {interval}"
                ))
            }
        }
        Command::Sync { wait: false, .. } => c
            .call("GET", "/v1/sync", None)
            .map(|v| emit(&c, &v, print_sync)),
        Command::Sync {
            wait: true,
            timeout,
            ..
        } => match timeout
            .as_deref()
            .map(|t| crate::settings::parse_duration("timeout", t))
            .transpose()
        {
            Ok(limit) => wait_synced(&c, limit),
            Err(e) => Err(e.to_string()),
        },
        Command::Bans(_) => c
            .call("GET", "/v1/bans", None)
            .map(|v| emit(&c, &v, print_bans)),
        Command::Addednodes(_) => c
            .call("GET", "/v1/addednodes", None)
            .map(|v| emit(&c, &v, print_added_nodes)),
        Command::Overlay {
            what: OverlayCommand::Status(_),
        } => c
            .call("GET", "/v1/overlay", None)
            .map(|v| emit(&c, &v, print_overlay)),
        Command::Overlay {
            what: OverlayCommand::Topics(_),
        } => c
            .call("GET", "/v1/overlay", None)
            .map(|v| emit(&c, &v, print_overlay_topics)),
        Command::Overlay {
            what: OverlayCommand::Find { topic, .. },
        } => c
            .call(
                "GET",
                &format!("/v1/overlay/find?topic={}", query_escape(topic)),
                None,
            )
            .map(|v| emit(&c, &v, print_overlay_find)),
        Command::Overlay {
            what: OverlayCommand::Peers(_),
        } => c
            .call("GET", "/v1/overlay", None)
            .map(|v| emit(&c, &v["peers"], print_overlay_peers)),
        Command::Fleet {
            what: FleetCommand::Status(_),
        } => c
            .call("GET", "/v1/fleet", None)
            .map(|v| emit(&c, &v, print_fleet)),
        Command::Fleet {
            what: FleetCommand::Propagation { last, .. },
        } => c
            .call("GET", &format!("/v1/fleet/propagation?last={last}"), None)
            .map(|v| emit(&c, &v, print_propagation)),
        Command::Ban { addr, duration, .. } => {
            let mut body = json!({"subnet": addr});
            if let Some(d) = duration {
                body["duration"] = json!(d);
            }
            c.call("POST", "/v1/bans", Some(body)).map(|v| {
                emit(&c, &v, |v| {
                    println!(
                        "banned {} until {} ({})",
                        s(&v["subnet"]),
                        v["until_time"].as_i64().map_or("-".into(), local_time),
                        crate::human::until(&v["until_time"], crate::human::now_unix())
                    )
                })
            })
        }
        Command::Unban { addr, .. } => c
            .call("DELETE", &format!("/v1/bans/{addr}"), None)
            .map(|v| emit(&c, &v, |v| println!("unbanned {}", s(&v["unbanned"])))),
        Command::Addnode { addr, onetry, .. } => c
            .call(
                "POST",
                "/v1/peers",
                Some(json!({"address": addr, "onetry": onetry})),
            )
            .map(|v| {
                emit(&c, &v, |v| {
                    println!(
                        "connecting to {} ({})",
                        s(&v["address"]),
                        if *onetry { "one try" } else { "kept connected" }
                    )
                })
            }),
        Command::Disconnect { peer, .. } => peer_id(&c, peer).and_then(|id| {
            c.call("DELETE", &format!("/v1/peers/{id}"), None)
                .map(|v| emit(&c, &v, |_| println!("disconnected peer {id} ({peer})")))
        }),
        Command::Hints {
            what: HintsCommand::Export { file, .. },
        } => c
            .call("GET", "/v1/hints", None)
            .and_then(|v| export_hints(&v, file))
            .map(|v| emit(&c, &v, print_object)),
        Command::Generate { n, .. } => c
            .call("POST", "/v1/generate", Some(json!({"blocks": n})))
            .map(|v| emit(&c, &v, print_generated)),
        Command::Events { types, .. } => events(&c, types),
        Command::Config { pairs, .. } => {
            if pairs.is_empty() {
                c.call("GET", "/v1/config", None)
                    .map(|v| emit(&c, &v, print_config))
            } else {
                let mut body = serde_json::Map::new();
                let mut bad = None;
                for p in pairs {
                    match p.split_once('=') {
                        Some((k, v)) => {
                            body.insert(k.trim().to_string(), json!(v.trim()));
                        }
                        None => bad = Some(p.clone()),
                    }
                }
                match bad {
                    Some(p) => Err(format!("expected KEY=VALUE, got {p:?}")),
                    None => {
                        let keys: Vec<String> = body.keys().cloned().collect();
                        c.call("PATCH", "/v1/config", Some(Value::Object(body)))
                            .map(|v| {
                                emit(&c, &v, |v| {
                                    for k in &keys {
                                        println!(
                                            "{} = {} (until the node restarts; set it in the config file to keep it)",
                                            sanitize(k),
                                            config_value(k, &v[k.as_str()])
                                        );
                                    }
                                })
                            })
                    }
                }
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => die(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_strings_lose_escape_sequences_and_bidi_overrides() {
        assert_eq!(
            sanitize("/Satoshi:\u{1b}[2J\u{1b}]0;owned\u{7}27.0/\u{202e}"),
            "/Satoshi:[2J]0;owned27.0/"
        );
        assert_eq!(
            sanitize("plain /meshd:0.1.0/ [::1]:8333"),
            "plain /meshd:0.1.0/ [::1]:8333"
        );
        assert_eq!(s(&Value::String("a\nb\rc\u{9b}d".into())), "abcd");
        assert_eq!(sanitize("a\u{200b}b\u{2028}c\u{61c}d"), "abcd");
        assert_eq!(s(&serde_json::json!(["x\u{202e}y"])), "[\"xy\"]");
    }
}
