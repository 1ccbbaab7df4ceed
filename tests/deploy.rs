//! deploy/ checked for real: promtool validates the Prometheus config and alert rules,
//! systemd-analyze verifies the unit, and a real Prometheus scrapes a live three-node mesh
//! while every Grafana panel's query is run against it.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port, in_ci, msg, skip_or_fail, Meshd};
use serde_json::Value;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");

fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn promtool_accepts_the_config_and_alert_rules() {
    if !have("promtool") {
        return skip_or_fail("promtool (Debian package prometheus) is not installed");
    }
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(DEPLOY)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_metric_has_help_text_and_the_exposition_passes_promtool() {
    // Two nodes talking, in a fleet, so that most series exist.
    let Some((nats, _nats_dir)) = common::nats::Nats::start_temp() else {
        return;
    };
    let url = nats.url();
    let fleet = |name| common::nats::fleet_flags(&url, "deploy", name);
    let fast = ["--ping-interval", "200ms"];
    let (a, b) = overlay_pair(&fast, &fleet("a"), &fleet("b"));
    b.wait_log("handshake", Duration::from_secs(10), |v| {
        msg(v) == "handshake complete"
    });
    std::thread::sleep(Duration::from_millis(600));
    for node in [&a, &b] {
        let text = node.scrape();
        let helped: std::collections::HashSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# HELP "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        let typed: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(typed.len() > 20, "only {} metrics", typed.len());
        let missing: Vec<&&str> = typed.iter().filter(|t| !helped.contains(**t)).collect();
        assert!(missing.is_empty(), "no HELP for {missing:?}");
        if !have("promtool") {
            return skip_or_fail("promtool (Debian package prometheus) is not installed");
        }
        let mut child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    if !have("systemd-analyze") {
        return skip_or_fail("systemd-analyze is not installed");
    }
    let unit = std::fs::read_to_string(format!("{DEPLOY}/meshd.service")).unwrap();
    for needed in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "StateDirectory=meshd",
        "Restart=on-failure",
    ] {
        assert!(unit.contains(needed), "unit lacks {needed}");
    }
    // verify checks that ExecStart exists: point it at the binary under test.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("meshd.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/meshd", common::meshd_bin()),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Prometheus(Child);

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// a (dialling nobody) and b (dialling a), both running the overlay, b joined through a's:
/// the overlay's series exist and its panels have data.
fn overlay_pair(fast: &[&str], fleet_a: &[&str], fleet_b: &[&str]) -> (Meshd, Meshd) {
    let overlay = ["--overlay", "--overlay-listen", "/ip4/127.0.0.1/tcp/0"];
    let a = Meshd::start(&[fast, &["--max-outbound", "0"], &overlay[..], fleet_a].concat());
    let a_addr = a.addr.unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    let a_overlay = loop {
        let st = a.api_get("/v1/overlay")["status"].clone();
        if let (Some(id), Some(addr)) = (st["peer_id"].as_str(), st["listen_addrs"][0].as_str()) {
            break format!("{addr}/p2p/{id}");
        }
        assert!(Instant::now() < deadline, "a's overlay never listened");
        std::thread::sleep(Duration::from_millis(100));
    };
    let b = Meshd::start(
        &[
            fast,
            &["--connect", &a_addr],
            &overlay[..],
            &["--overlay-bootstrap", &a_overlay],
            fleet_b,
        ]
        .concat(),
    );
    (a, b)
}

fn query(base: &str, expr: &str) -> Value {
    let mut r = ureq::get(&format!("{base}/api/v1/query"))
        .query("query", expr)
        .call()
        .expect("prometheus answers");
    serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
}

/// Metrics whose panels may stay empty in this mesh (none: every panel must have data).
const NOT_YET_EXPORTED: &[&str] = &[];

/// A minimal STUN server on loopback (no RFC 5780 support), so the NAT panels have data.
fn stun_server() -> std::net::SocketAddr {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = sock.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            if n >= 20 {
                let mut tid = [0u8; 12];
                tid.copy_from_slice(&buf[8..20]);
                let reply = meshd_actors::stun::codec::binding_response(tid, from, None, true);
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    addr
}

#[test]
fn every_dashboard_panel_has_data_in_a_real_prometheus_scraping_a_live_mesh() {
    if !have("prometheus") {
        return skip_or_fail("prometheus (Debian package prometheus) is not installed");
    }
    // A live mesh: a listens; b dials a and bans someone; c dials b and a dead address (so it
    // restarts and gives up). Fast pings fill the RTT histograms.
    // The fleet panel needs a fleet: the three nodes publish to a real nats-server.
    let Some((nats, _nats_dir)) = common::nats::Nats::start_temp() else {
        return;
    };
    let url = nats.url();
    let fleet = |name| common::nats::fleet_flags(&url, "deploy", name);
    let fast = ["--ping-interval", "200ms"];
    let (a, b) = overlay_pair(&fast, &fleet("a"), &fleet("b"));
    let b_addr = b.addr.unwrap().to_string();
    let dead = format!("127.0.0.1:{}", free_port());
    let stun = stun_server().to_string();
    let c = Meshd::start(
        &[
            &fast[..],
            &[
                "--connect",
                &b_addr,
                "--connect",
                &dead,
                "--stun-server",
                &stun,
                "--restart-base-delay",
                "50ms",
                "--restart-max",
                "2",
                "--restart-window",
                "1m",
            ],
            &fleet("c")[..],
        ]
        .concat(),
    );
    for n in [&b, &c] {
        n.wait_log("handshake", Duration::from_secs(10), |v| {
            msg(v) == "handshake complete"
        });
    }
    let token = b.token();
    ureq::post(&format!("http://{}/v1/bans", b.api.unwrap()))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(br#"{"subnet": "203.0.113.0/24"}"#.as_slice())
        .unwrap();
    c.wait_log("give-up", Duration::from_secs(10), |v| {
        msg(v).starts_with("too many restarts")
    });
    // A block from a reaches b: b's lag behind the fleet's first sighting exists.
    ureq::post(&format!("http://{}/v1/generate", a.api.unwrap()))
        .header("Authorization", &format!("Bearer {}", a.token()))
        .header("Content-Type", "application/json")
        .send(br#"{"blocks": 1}"#.as_slice())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.metric("meshd_overlay_peers") != Some(1.0) {
        assert!(Instant::now() < deadline, "b never joined a's overlay");
        std::thread::sleep(Duration::from_millis(100));
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.metric("meshd_fleet_block_lag_seconds").is_none() {
        assert!(Instant::now() < deadline, "b never measured its fleet lag");
        std::thread::sleep(Duration::from_millis(100));
    }

    let dir = tempfile::tempdir().unwrap();
    let targets: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|n| format!("\"{}\"", n.metrics.unwrap()))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {DEPLOY}/alerts.yml\nscrape_configs:\n  - job_name: meshd\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    let _prom = Prometheus(child);
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ureq::get(&format!("{base}/-/ready")).call().is_err() {
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Enough scrapes for rate() over the panels' windows.
    std::thread::sleep(Duration::from_secs(8));
    let up = query(&base, "sum(up{job=\"meshd\"})");
    assert_eq!(
        up["data"]["result"][0]["value"][1], "3",
        "all three nodes scraped: {up}"
    );

    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DEPLOY}/grafana/meshd-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut empty = Vec::new();
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let v = query(&base, expr);
            assert_eq!(
                v["status"], "success",
                "panel {:?}: {expr}: {v}",
                panel["title"]
            );
            checked += 1;
            if v["data"]["result"].as_array().is_none_or(|r| r.is_empty()) {
                empty.push(expr.to_string());
            }
        }
    }
    let unexpected: Vec<&String> = empty
        .iter()
        .filter(|e| !NOT_YET_EXPORTED.iter().any(|m| e.contains(m)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "panels without data: {unexpected:#?}"
    );
    assert!(checked >= 29, "only {checked} queries");
    if !in_ci() {
        eprintln!("dashboard: {checked} queries checked; awaiting later work: {empty:?}");
    }
}
