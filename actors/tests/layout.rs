//! The source tree keeps its shape: sans-IO cores import neither tokio nor ractor, every file
//! opens with a `//!` line, no actor folder imports another actor folder (they share the
//! `shared`, `peer` and `wire` leaves and talk through `msg.rs`; only a supervisor knows its
//! child's module), and the leaves, `context.rs` first, import no actor.

use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The file's code, without comments (a doc line may name tokio).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Sans-IO cores: plain Rust that takes bytes, events and time and returns actions.
const CORES: &[&str] = &[
    "config.rs",
    "constants.rs",
    "network.rs",
    "persist.rs",
    "manager/addr_fetch.rs",
    "manager/addrbook.rs",
    "manager/eviction.rs",
    "manager/restart.rs",
    "overlay/book.rs",
    "overlay/cluster.rs",
    "overlay/identity.rs",
    "peer/handshake.rs",
    "peer/misbehavior.rs",
    "peer/mod.rs",
    "peer/ping.rs",
    "peer/reason.rs",
    "peer/rolling_filter.rs",
    "peer/useless.rs",
    "shared/addr.rs",
    "shared/bandwidth.rs",
    "shared/bans.rs",
    "shared/discourage.rs",
    "shared/fleet_keys.rs",
    "shared/overlay.rs",
    "shared/peers.rs",
    "shared/restart_policy.rs",
    "shared/slots.rs",
    "shared/status.rs",
    "shared/whitelist.rs",
    "stun/codec.rs",
    "stun/nat.rs",
    "stun/transaction.rs",
    "sync/block_check.rs",
    "sync/blocks.rs",
    "sync/bloom.rs",
    "sync/chain/bsv_pow.rs",
    "sync/chain/headers.rs",
    "sync/chain/mod.rs",
    "sync/chain/presync.rs",
    "sync/chain/store.rs",
    "sync/compact.rs",
    "sync/engine/blocks.rs",
    "sync/engine/headers.rs",
    "sync/engine/mod.rs",
    "sync/engine/relay.rs",
    "sync/header_sync.rs",
    "sync/hints.rs",
    "sync/intake.rs",
    "sync/mine.rs",
    "sync/pool.rs",
    "sync/requests.rs",
    "sync/tx_check.rs",
    "sync/txrequest.rs",
    "wire/frame.rs",
    "wire/message.rs",
    "wire/mod.rs",
    "wire/overlay_announce.rs",
];

/// The sync core's files: it decides, the Sync actor does.
const SYNC_CORE: &[&str] = &[
    "sync/engine/blocks.rs",
    "sync/engine/headers.rs",
    "sync/engine/mod.rs",
    "sync/engine/relay.rs",
];

#[test]
fn the_sync_core_reads_no_clock_files_or_shared_state() {
    for file in SYNC_CORE {
        let text = code(&src().join(file));
        for io in [
            "Instant::now",
            "SystemTime",
            "unix_now",
            "NodeContext",
            "ActorRef",
            "std::fs",
            "rand::random",
            "sync_status",
        ] {
            assert!(
                !text.contains(io),
                "{file} uses {io}: the sync core takes time and state as inputs"
            );
        }
    }
}

#[test]
fn cores_import_neither_tokio_nor_ractor() {
    for core in CORES {
        let path = src().join(core);
        assert!(
            path.exists(),
            "{core} is listed as a core but does not exist"
        );
        let text = code(&path);
        for runtime in ["tokio", "ractor"] {
            assert!(
                !text.contains(runtime),
                "core module {core} mentions {runtime}: cores must stay sans-IO"
            );
        }
    }
}

#[test]
fn every_file_opens_with_a_module_doc() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(
            text.starts_with("//!"),
            "{} does not open with a //! line",
            f.display()
        );
    }
}

/// Each actor's folder, and the implementation items other actors must not import.
const ACTORS: &[(&str, &[&str])] = &[
    (
        "connection",
        &[
            "Connection",
            "ConnectionArgs",
            "ConnectionState",
            "Transport",
        ],
    ),
    ("manager", &["Manager", "ManagerState"]),
    ("sync", &["Sync", "SyncActorState"]),
    ("discovery", &["DnsDiscovery", "DnsArgs"]),
    ("stun", &["Stun", "StunState"]),
    ("portmap", &["PortMap", "PortMapState"]),
];

#[test]
fn no_actor_imports_another_actors_implementation() {
    for (owner, _) in ACTORS {
        let mut files = Vec::new();
        rust_files(&src().join(owner), &mut files);
        files.push(src().join("msg.rs"));
        files.push(src().join("context.rs"));
        for f in files {
            let text = code(&f);
            let in_msg_or_context = !f.starts_with(src().join(owner));
            for (other, items) in ACTORS {
                if other == owner && !in_msg_or_context {
                    continue;
                }
                // A supervisor knows its child: the Manager spawns Connections.
                if *owner == "manager" && *other == "connection" && !in_msg_or_context {
                    continue;
                }
                for item in *items {
                    for pattern in [
                        format!("crate::{other}::{item};"),
                        format!("crate::{other}::{item},"),
                        format!("crate::{other}::{{{item}"),
                        format!("crate::{other}::{item}}}"),
                        format!("crate::{other}::{item} "),
                    ] {
                        assert!(
                            !text.contains(&pattern),
                            "{} imports {other}'s {item}",
                            f.display()
                        );
                    }
                }
            }
        }
    }
}

/// The actor folders: each owns one actor (or, for `connection`, the Connection and the
/// Listener) and the cores only it drives.
const ACTOR_FOLDERS: &[&str] = &[
    "connection",
    "manager",
    "sync",
    "discovery",
    "stun",
    "portmap",
    "fleet",
    "tor",
];

/// Where `code` names another module of the crate: `crate::name` followed by `::`, `;`, `,`,
/// `}` or a space.
fn names_module(code: &str, module: &str) -> bool {
    // Grouped (`crate::{...}`) and climbing (`super::super::`) paths would hide the module
    // from this check: they are not used in this tree, and so refused outright.
    if code.contains("crate::{") || code.contains("super::super::") {
        return true;
    }
    let prefix = format!("crate::{module}");
    code.match_indices(&prefix).any(|(i, _)| {
        let next = code[i + prefix.len()..].chars().next();
        matches!(next, Some(':' | ';' | ',' | '}' | ' ' | ')'))
    })
}

#[test]
fn no_actor_folder_imports_another() {
    for owner in ACTOR_FOLDERS {
        let mut files = Vec::new();
        rust_files(&src().join(owner), &mut files);
        for f in files {
            let text = code(&f);
            for other in ACTOR_FOLDERS {
                // A supervisor knows its child: the Manager spawns Connections (and dials an
                // addr-fetch through the Connection's proxy route).
                if other == owner || (*owner == "manager" && *other == "connection") {
                    continue;
                }
                assert!(
                    !names_module(&text, other),
                    "{} (in {owner}/) uses crate::{other}: move what they share to shared/",
                    f.display()
                );
            }
        }
    }
}

#[test]
fn the_leaves_import_no_actor() {
    let mut files = vec![
        src().join("config.rs"),
        src().join("context.rs"),
        src().join("msg.rs"),
        src().join("events.rs"),
        src().join("metrics.rs"),
        src().join("constants.rs"),
        src().join("network.rs"),
        src().join("persist.rs"),
    ];
    for leaf in ["shared", "peer", "wire"] {
        rust_files(&src().join(leaf), &mut files);
    }
    for f in files {
        let text = code(&f);
        for actor in ACTOR_FOLDERS {
            assert!(
                !names_module(&text, actor),
                "{} is a leaf but uses crate::{actor}",
                f.display()
            );
        }
    }
}

#[test]
fn messages_live_in_the_leaf() {
    let text = code(&src().join("msg.rs"));
    for message in [
        "pub enum ConnectionMsg",
        "pub enum ManagerMsg",
        "pub enum SyncMsg",
        "pub enum SyncInput",
        "pub enum OutboundKind",
        "pub struct Inbound",
    ] {
        assert!(text.contains(message), "msg.rs lacks `{message}`");
    }
}

#[test]
fn every_facade_metric_has_help_text() {
    let described = std::fs::read_to_string(src().join("metrics.rs")).unwrap();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for macro_name in ["counter!(", "histogram!(", "gauge!("] {
            for (i, _) in text.match_indices(macro_name) {
                let rest = text[i + macro_name.len()..].trim_start();
                let Some(name) = rest.strip_prefix('"').and_then(|r| r.split('"').next()) else {
                    continue;
                };
                if name.starts_with("meshd_") {
                    assert!(
                        described.contains(&format!("\"{name}\",")),
                        "{name} (in {}) has no HELP text in metrics.rs",
                        f.display()
                    );
                }
            }
        }
    }
}

/// The string literals after `=> ` in the `fn kind` (or `fn label`) of `impl_of` in `file`.
fn kinds_of(file: &str, impl_of: &str) -> Vec<String> {
    let text = std::fs::read_to_string(src().join(file)).unwrap();
    let at = text
        .find(&format!("impl {impl_of} {{"))
        .unwrap_or_else(|| panic!("impl {impl_of} in {file}"));
    let body = &text[at..];
    let start = body
        .find("fn kind(")
        .or_else(|| body.find("fn label("))
        .unwrap_or_else(|| panic!("fn kind of {impl_of}"));
    let body = &body[start..];
    let end = body.find("\n    }\n").unwrap_or(body.len());
    body[..end]
        .match_indices("=> \"")
        .filter_map(|(i, m)| body[i + m.len()..].split('"').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn every_known_label_value_is_exported_at_zero_from_the_start() {
    use meshd_actors::{OPEN_LABELS, ZERO_GAUGES, ZERO_SERIES};
    let listed = |metric: &str| -> Vec<&str> {
        ZERO_SERIES
            .iter()
            .chain(ZERO_GAUGES)
            .filter(|(m, _, _)| *m == metric)
            .flat_map(|(_, _, values)| values.iter().copied())
            .collect()
    };
    // Every labelled counter in the sources: its literal values listed, or open.
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (i, m) in text
            .match_indices("counter!(")
            .chain(text.match_indices("gauge!("))
        {
            let call: String = text[i..].chars().take(300).collect();
            let call = call
                .split(')')
                .next()
                .unwrap_or("")
                .replace(['\n', ' '], "");
            let Some(name) = call
                .strip_prefix(&format!("{m}\""))
                .and_then(|r| r.split('"').next())
            else {
                continue;
            };
            if !name.starts_with("meshd_") || !call.contains("=>") {
                continue;
            }
            if OPEN_LABELS.contains(&name) {
                continue;
            }
            let values = listed(name);
            assert!(
                !values.is_empty(),
                "{name} (in {}) has labels but no zero series: add it to ZERO_SERIES or OPEN_LABELS",
                f.display()
            );
            for part in call.split("=>").skip(1) {
                if let Some(v) = part.strip_prefix('"').and_then(|r| r.split('"').next()) {
                    assert!(
                        values.contains(&v),
                        "{name}{{{v}}} (in {}) is not in ZERO_SERIES",
                        f.display()
                    );
                }
            }
        }
    }
    // The error enums whose kinds label a counter: every kind listed.
    for (file, impl_of, metrics) in [
        (
            "wire/frame.rs",
            "FrameError",
            &["meshd_frame_errors_total", "meshd_disconnects_total"][..],
        ),
        (
            "wire/message.rs",
            "PayloadError",
            &["meshd_payload_errors_total", "meshd_disconnects_total"],
        ),
        (
            "peer/reason.rs",
            "DisconnectReason",
            &["meshd_disconnects_total"],
        ),
        (
            "peer/reason.rs",
            "ProxyError",
            &["meshd_proxy_errors_total", "meshd_disconnects_total"],
        ),
        (
            "peer/handshake.rs",
            "HandshakeError",
            &["meshd_disconnects_total"],
        ),
        ("wire/v2.rs", "V2Error", &["meshd_disconnects_total"]),
        (
            "sync/block_check.rs",
            "BlockError",
            &["meshd_blocks_rejected_total"],
        ),
        (
            "sync/chain/headers.rs",
            "AcceptError",
            &["meshd_headers_rejected_total"],
        ),
        (
            "sync/chain/presync.rs",
            "PresyncError",
            &["meshd_presync_aborted_total"],
        ),
        ("sync/tx_check.rs", "TxError", &["meshd_txs_dropped_total"]),
        (
            "fleet/core.rs",
            "AdvisoryError",
            &["meshd_fleet_rejected_total"],
        ),
        (
            "tor/control.rs",
            "ControlError",
            &["meshd_tor_control_errors_total"],
        ),
        (
            "shared/addr.rs",
            "AddrFetchError",
            &["meshd_addr_fetches_total"],
        ),
        ("shared/bans.rs", "BanReason", &["meshd_bans_total"]),
    ] {
        let kinds = kinds_of(file, impl_of);
        assert!(!kinds.is_empty(), "no kinds read from {impl_of}");
        for metric in metrics {
            let values = listed(metric);
            for k in &kinds {
                assert!(
                    values.contains(&k.as_str()),
                    "{impl_of}'s {k:?} is not a zero series of {metric}"
                );
            }
        }
    }
}
