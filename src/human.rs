//! Values as a person reads them in the CLI's tables: ages and times to come ("3m ago",
//! "in 23h"), byte counts and rates with units, round-trip times in milliseconds, and the
//! `bitcoin-cli -netinfo`-style view (`meshd netinfo`). `--json` keeps the raw values.

use serde_json::Value;

/// Now, unix seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// A span of seconds, short: `45s`, `3m`, `5h`, `3d` (the largest unit it reaches, to
/// the nearest: a 7-day ban a second old still reads `in 7d`).
pub fn span(secs: i64) -> String {
    let secs = secs.max(0);
    let near = |unit: i64| (secs + unit / 2) / unit;
    // Rounding up to the next unit's first step reads as that unit (59m 59s is 1h).
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3_599 if near(60) < 60 => format!("{}m", near(60)),
        60..=86_399 if near(3_600) < 24 => format!("{}h", near(3_600).max(1)),
        _ => format!("{}d", near(86_400).max(1)),
    }
}

/// How long ago a unix time was: `3m ago`; `-` for none (null or 0).
pub fn ago(unix: &Value, now: i64) -> String {
    match unix.as_i64().filter(|t| *t > 0) {
        None => "-".into(),
        Some(t) => format!("{} ago", span(now - t)),
    }
}

/// How long until a unix time: `in 23h`, or `expired`.
pub fn until(unix: &Value, now: i64) -> String {
    match unix.as_i64() {
        None => "-".into(),
        Some(t) if t <= now => "expired".into(),
        Some(t) => format!("in {}", span(t - now)),
    }
}

/// Bytes with an SI unit: `512 B`, `1.2 kB`, `3.4 MB`, `1.1 GB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64;
    let mut unit = "B";
    for u in UNITS {
        if v < 1000.0 {
            break;
        }
        v /= 1000.0;
        unit = u;
    }
    if v < 10.0 {
        format!("{v:.1} {unit}")
    } else {
        format!("{v:.0} {unit}")
    }
}

/// A JSON byte count with its unit; `-` for none.
pub fn bytes_of(v: &Value) -> String {
    v.as_u64().map_or("-".into(), bytes)
}

/// A rate limit in bytes per second: `unlimited` for 0.
pub fn rate(v: &Value) -> String {
    match v.as_u64() {
        None => "-".into(),
        Some(0) => "unlimited".into(),
        Some(n) => format!("{}/s", bytes(n)),
    }
}

/// Seconds (a JSON float) as milliseconds: `1.2 ms`; `-` for none.
pub fn millis(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |x| {
        let ms = x * 1000.0;
        if ms < 10.0 {
            format!("{ms:.1} ms")
        } else {
            format!("{ms:.0} ms")
        }
    })
}

/// Core's service names, joined: `NETWORK,WITNESS,P2P_V2`; `-` for none.
pub fn services(names: &Value) -> String {
    let list: Vec<String> = names
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .map(crate::client::sanitize)
        .collect();
    if list.is_empty() {
        "-".into()
    } else {
        list.join(",")
    }
}

/// The networks `meshd netinfo` counts, in Core's order.
const NETWORKS: [&str; 5] = ["ipv4", "ipv6", "onion", "i2p", "cjdns"];

/// `meshd netinfo`, as `bitcoin-cli -netinfo 4`: who we are, connections counted by
/// network and direction, then a row per connected peer.
pub fn print_netinfo(status: &Value, peers: &Value, network: &Value) {
    let s = crate::client::s;
    let now = now_unix();
    let peers: Vec<&Value> = peers
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["state"] == "connected")
        .collect();
    println!(
        "meshd {} on {}, up {}",
        s(&status["version"]),
        s(&status["network"]),
        crate::client::human_duration(status["uptime"].as_u64().unwrap_or(0)),
    );
    println!();
    let count = |dir: Option<&str>, net: Option<&str>| {
        peers
            .iter()
            .filter(|p| dir.is_none_or(|d| p["direction"] == d))
            .filter(|p| net.is_none_or(|n| p["network"] == n))
            .count()
    };
    let mut rows = Vec::new();
    for (label, dir) in [
        ("in", Some("inbound")),
        ("out", Some("outbound")),
        ("total", None),
    ] {
        let mut row = vec![label.to_string()];
        for n in NETWORKS {
            row.push(count(dir, Some(n)).to_string());
        }
        row.push(count(dir, None).to_string());
        row.push(if dir == Some("outbound") {
            peers
                .iter()
                .filter(|p| p["connection_type"] == "block-relay-only")
                .count()
                .to_string()
        } else {
            String::new()
        });
        rows.push(row);
    }
    let mut header = vec![""];
    header.extend(NETWORKS);
    header.extend(["total", "block"]);
    crate::client::table_right(&header, rows);
    println!();
    let rows: Vec<Vec<String>> = peers
        .iter()
        .map(|p| {
            let hb = match (p["bip152_hb_to"] == true, p["bip152_hb_from"] == true) {
                (true, true) => "*.",
                (true, false) => "*",
                (false, true) => ".",
                _ => "",
            };
            vec![
                if p["direction"] == "inbound" {
                    "in"
                } else {
                    "out"
                }
                .to_string(),
                match p["connection_type"].as_str() {
                    Some("outbound-full-relay") => "full".to_string(),
                    Some("block-relay-only") => "block".to_string(),
                    Some("inbound") | None => String::new(),
                    Some(other) => crate::client::sanitize(other),
                },
                s(&p["network"]),
                match p["transport"].as_str() {
                    Some("v2") => "2",
                    _ => "1",
                }
                .to_string(),
                millis(&p["ping_last"]),
                millis(&p["ping_min"]),
                ago_short(&p["last_send_time"], now),
                ago_short(&p["last_receive_time"], now),
                ago_short(&p["last_transaction_time"], now),
                ago_short(&p["last_block_time"], now),
                hb.to_string(),
                p["connected_time"]
                    .as_i64()
                    .map_or("-".into(), |t| span(now - t)),
                s(&p["id"]),
                s(&p["synced_height"]),
                services(&p["services_names"]),
                s(&p["address"]),
                format!("{}{}", s(&p["protocol_version"]), s(&p["user_agent"])),
            ]
        })
        .collect();
    crate::client::table(
        &[
            "<->", "TYPE", "NET", "V", "PING", "MINPING", "SEND", "RECV", "TXN", "BLK", "HB",
            "AGE", "ID", "HEIGHT", "SERVICES", "ADDRESS", "VERSION",
        ],
        rows,
    );
    println!();
    let local: Vec<String> = network["public_addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .map(s)
        .collect();
    println!(
        "Local addresses: {}",
        if local.is_empty() {
            "n/a".to_string()
        } else {
            local.join(", ")
        }
    );
}

/// How long ago, without "ago" (a column headed so): `3s`; empty for never.
fn ago_short(unix: &Value, now: i64) -> String {
    match unix.as_i64().filter(|t| *t > 0) {
        None => String::new(),
        Some(t) => span(now - t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn spans_ages_and_sizes_read_as_people_say_them() {
        assert_eq!(span(45), "45s");
        assert_eq!(span(200), "3m");
        assert_eq!(span(3 * 3600 + 5), "3h");
        assert_eq!(span(7 * 86_400 - 1), "7d");
        assert_eq!(span(89), "1m");
        assert_eq!(span(3_599), "1h");
        assert_eq!(span(86_399), "1d");
        assert_eq!(span(-5), "0s");
        assert_eq!(span(86_400 * 2), "2d");
        assert_eq!(ago(&json!(1000 - 180), 1000), "3m ago");
        assert_eq!(ago(&json!(null), 1000), "-");
        assert_eq!(ago(&json!(0), 1000), "-");
        assert_eq!(until(&json!(1000 + 23 * 3600), 1000), "in 23h");
        assert_eq!(until(&json!(999), 1000), "expired");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1234), "1.2 kB");
        assert_eq!(bytes(34_500_000), "34 MB");
        assert_eq!(bytes(1_100_000_000), "1.1 GB");
        assert_eq!(rate(&json!(0)), "unlimited");
        assert_eq!(rate(&json!(40_000)), "40 kB/s");
        assert_eq!(millis(&json!(0.0012)), "1.2 ms");
        assert_eq!(millis(&json!(0.25)), "250 ms");
        assert_eq!(services(&json!(["NETWORK", "WITNESS"])), "NETWORK,WITNESS");
        assert_eq!(services(&json!([])), "-");
    }
}
