//! `meshd top`: a live terminal view of the node (ratatui): who it is and how long it has
//! run, the tip and header sync, traffic rates, a table of peers, and the newest events.
//!
//! The view is a plain [`TopState`] fed with the API's answers and the time, and drawn
//! from that alone, so it is unit-tested on ratatui's test backend; the loop around it polls
//! `/v1/status`, `/v1/peers` and `/v1/sync` every interval, reads `/v1/events` on a thread,
//! and quits on `q`, Esc or Ctrl-C.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Gauge, List, ListItem, Paragraph, Row, Table};
use ratatui::Frame;
use serde_json::Value;

use crate::client::{human_duration, s, sanitize, Client};
use crate::human;

/// Events kept for the view: more than any terminal shows.
const MAX_EVENT_LINES: usize = 200;

/// The node's state as the view shows it.
#[derive(Debug, Default)]
pub struct TopState {
    status: Value,
    peers: Vec<Value>,
    sync: Value,
    /// The totals at the previous reading, for the rates.
    last_totals: Option<(Instant, u64, u64)>,
    /// Bytes per second received and sent over the last interval.
    rates: Option<(f64, f64)>,
    /// Why the node did not answer, while it does not.
    error: Option<String>,
    /// The newest events, oldest first.
    events: VecDeque<String>,
}

impl TopState {
    /// Takes a reading of the API's answers at `now`.
    pub fn update(&mut self, now: Instant, status: Value, peers: Value, sync: Value) {
        let received = status["bytes_received"].as_u64().unwrap_or(0);
        let sent = status["bytes_sent"].as_u64().unwrap_or(0);
        if let Some((then, r0, s0)) = self.last_totals {
            let secs = now.saturating_duration_since(then).as_secs_f64();
            if secs > 0.0 {
                self.rates = Some((
                    received.saturating_sub(r0) as f64 / secs,
                    sent.saturating_sub(s0) as f64 / secs,
                ));
            }
        }
        self.last_totals = Some((now, received, sent));
        self.status = status;
        self.peers = peers
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| p["state"] == "connected")
            .collect();
        self.sync = sync;
        self.error = None;
    }

    /// The node did not answer.
    pub fn unreachable(&mut self, why: String) {
        self.error = Some(why);
    }

    /// Adds an event line.
    pub fn event(&mut self, line: String) {
        if self.events.len() >= MAX_EVENT_LINES {
            self.events.pop_front();
        }
        self.events.push_back(line);
    }

    /// Draws the view.
    pub fn render(&self, frame: &mut Frame) {
        let [head, gauge, peers, events, foot] = Layout::vertical([
            Constraint::Length(6),
            Constraint::Length(1),
            Constraint::Min(5),
            Constraint::Length(8),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        let st = &self.status;
        let inbound = self
            .peers
            .iter()
            .filter(|p| p["direction"] == "inbound")
            .count();
        let rate =
            |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{}/s", human::bytes(r as u64)));
        let mut lines = vec![
            Line::from(format!(
                "meshd {} on {}, up {} (pid {})",
                s(&st["version"]),
                s(&st["network"]),
                human_duration(st["uptime"].as_u64().unwrap_or(0)),
                s(&st["pid"])
            )),
            Line::from(format!(
                "tip       {} {}",
                s(&st["tip"]["height"]),
                s(&st["tip"]["hash"])
            )),
            Line::from(format!(
                "sync      {}{}{}",
                s(&self.sync["state"]),
                self.sync["headers_per_sec"]
                    .as_f64()
                    .map_or(String::new(), |r| format!(", {} headers/s", r.round())),
                self.sync["sync_peer"]
                    .as_str()
                    .map_or(String::new(), |p| format!(", from {}", sanitize(p))),
            )),
            Line::from(format!(
                "peers     {} in, {} out; pool {} transactions, {} blocks kept",
                inbound,
                self.peers.len() - inbound,
                s(&self.sync["tx_pool"]),
                s(&self.sync["blocks_kept"])
            )),
            Line::from(format!(
                "traffic   in {} out {} (since start: {} in, {} out)",
                rate(self.rates.map(|r| r.0)),
                rate(self.rates.map(|r| r.1)),
                human::bytes_of(&st["bytes_received"]),
                human::bytes_of(&st["bytes_sent"])
            )),
        ];
        if let Some(e) = &self.error {
            lines.push(Line::styled(
                format!("the node is not answering: {}", sanitize(e)),
                Style::default().add_modifier(Modifier::BOLD),
            ));
        }
        frame.render_widget(Paragraph::new(lines), head);
        let progress = self.sync["progress"]
            .as_f64()
            .unwrap_or(0.0)
            .clamp(0.0, 1.0);
        frame.render_widget(
            Gauge::default()
                .ratio(progress)
                .label(format!("headers {:.1}%", progress * 100.0)),
            gauge,
        );
        let now = human::now_unix();
        let rows: Vec<Row> = self
            .peers
            .iter()
            .map(|p| {
                Row::new(vec![
                    s(&p["id"]),
                    s(&p["address"]),
                    if p["direction"] == "inbound" {
                        "in"
                    } else {
                        "out"
                    }
                    .to_string(),
                    s(&p["connection_type"]),
                    s(&p["transport"]),
                    human::millis(&p["ping_last"]),
                    s(&p["synced_height"]),
                    human::bytes_of(&p["bytes_sent"]),
                    human::bytes_of(&p["bytes_received"]),
                    p["connected_time"]
                        .as_i64()
                        .map_or("-".into(), |t| human::span(now - t)),
                    s(&p["user_agent"]),
                ])
            })
            .collect();
        let widths = [
            Constraint::Length(4),
            Constraint::Length(24),
            Constraint::Length(4),
            Constraint::Length(20),
            Constraint::Length(3),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(5),
            Constraint::Min(10),
        ];
        frame.render_widget(
            Table::new(rows, widths)
                .header(
                    Row::new([
                        "ID",
                        "ADDRESS",
                        "DIR",
                        "TYPE",
                        "V",
                        "PING",
                        "HEIGHT",
                        "SENT",
                        "RECV",
                        "AGE",
                        "USER AGENT",
                    ])
                    .style(Style::default().add_modifier(Modifier::BOLD)),
                )
                .block(Block::default().borders(Borders::TOP).title(" peers ")),
            peers,
        );
        let shown = events.height.saturating_sub(1) as usize;
        let items: Vec<ListItem> = self
            .events
            .iter()
            .skip(self.events.len().saturating_sub(shown))
            .map(|l| ListItem::new(l.clone()))
            .collect();
        frame.render_widget(
            List::new(items).block(Block::default().borders(Borders::TOP).title(" events ")),
            events,
        );
        frame.render_widget(Paragraph::new("q quit"), foot);
    }
}

/// An event's line in the view: time of day, type, and its fields.
fn event_line(v: &Value) -> String {
    let time = v["time"]
        .as_f64()
        .and_then(|t| jiff::Timestamp::from_millisecond((t * 1000.0) as i64).ok())
        .map_or("-".to_string(), |t| {
            t.to_zoned(jiff::tz::TimeZone::system())
                .strftime("%H:%M:%S")
                .to_string()
        });
    let mut fields: Vec<String> = v
        .as_object()
        .map(|o| {
            o.iter()
                .filter(|(k, _)| !matches!(k.as_str(), "type" | "time" | "seq"))
                .map(|(k, val)| format!("{}={}", sanitize(k), crate::client::event_value(k, val)))
                .collect()
        })
        .unwrap_or_default();
    fields.sort();
    format!("{time} {} {}", s(&v["type"]), fields.join(" "))
}

/// Reads the event stream on a thread into `state`, reconnecting while the view runs.
fn follow_events(base: String, token: String, state: Arc<Mutex<TopState>>) {
    std::thread::spawn(move || loop {
        let resp = Client::agent(None)
            .get(&format!("{base}/v1/events"))
            .header("Authorization", &format!("Bearer {token}"))
            .call();
        if let Ok(resp) = resp {
            for line in BufReader::new(resp.into_body().into_reader())
                .lines()
                .map_while(Result::ok)
            {
                if let Some(data) = line.strip_prefix("data:") {
                    let v: Value = serde_json::from_str(data.trim()).unwrap_or(Value::Null);
                    if let Ok(mut st) = state.lock() {
                        st.event(event_line(&v));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
    });
}

/// Polls the API on a thread every `interval` into `state`, so a slow or hung node never
/// keeps the view from reading its keys.
fn follow_status(c: &Client, interval: Duration, state: Arc<Mutex<TopState>>) {
    let c = c.clone();
    std::thread::spawn(move || loop {
        let reading = c.call("GET", "/v1/status", None).and_then(|status| {
            Ok((
                status,
                c.call("GET", "/v1/peers", None)?,
                c.call("GET", "/v1/sync", None)?,
            ))
        });
        match state.lock() {
            Ok(mut st) => match reading {
                Ok((status, peers, sync)) => st.update(Instant::now(), status, peers, sync),
                Err(e) => st.unreachable(e),
            },
            Err(_) => return,
        }
        std::thread::sleep(interval);
    });
}

/// Runs the view until `q`, Esc or Ctrl-C.
pub fn run(c: &Client, interval: Duration) -> Result<(), String> {
    let state = Arc::new(Mutex::new(TopState::default()));
    follow_status(c, interval, state.clone());
    follow_events(c.base.clone(), c.token.clone(), state.clone());
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            // It may have switched raw mode on before failing.
            ratatui::restore();
            return Err(format!("cannot open the terminal: {e}"));
        }
    };
    let result = (|| -> Result<(), String> {
        loop {
            terminal
                .draw(|f| {
                    if let Ok(st) = state.lock() {
                        st.render(f);
                    }
                })
                .map_err(|e| e.to_string())?;
            if event::poll(Duration::from_millis(200)).map_err(|e| e.to_string())? {
                if let Event::Key(k) = event::read().map_err(|e| e.to_string())? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    if matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    drop(terminal);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;
    use serde_json::json;

    fn screen(state: &TopState) -> String {
        let mut t = Terminal::new(TestBackend::new(140, 30)).unwrap();
        t.draw(|f| state.render(f)).unwrap();
        let buf = t.backend().buffer().clone();
        let mut out = String::new();
        for y in 0..buf.area.height {
            for x in 0..buf.area.width {
                out.push_str(buf[(x, y)].symbol());
            }
            out.push('\n');
        }
        out
    }

    #[test]
    fn the_view_shows_the_node_its_peers_rates_and_events() {
        let mut st = TopState::default();
        let t0 = Instant::now();
        let status = |recv: u64| {
            json!({"version": "0.1.0", "network": "regtest", "uptime": 3700, "pid": 42,
                   "tip": {"height": 812, "hash": "ab".repeat(32)},
                   "bytes_received": recv, "bytes_sent": 500})
        };
        let peers = json!([
            {"id": 3, "address": "127.0.0.1:18444", "direction": "outbound", "state": "connected",
             "connection_type": "manual", "transport": "v2", "ping_last": 0.0021,
             "synced_height": 812, "bytes_sent": 1500, "bytes_received": 2_500_000,
             "user_agent": "/meshd:0.1.0/"},
            {"id": 4, "address": "127.0.0.1:5", "direction": "inbound", "state": "handshaking"}
        ]);
        let sync = json!({"state": "synced", "progress": 1.0, "tx_pool": 7, "blocks_kept": 2});
        st.update(t0, status(1_000), peers.clone(), sync.clone());
        st.update(t0 + Duration::from_secs(2), status(5_000), peers, sync);
        st.event("12:00:01 PeerBanned subnet=198.51.100.7/32".into());
        let text = screen(&st);
        for want in [
            "meshd 0.1.0 on regtest, up 1h 01m (pid 42)",
            &format!("tip       812 {}", "ab".repeat(32)),
            "0 in, 1 out",
            "in 2.0 kB/s",
            "headers 100.0%",
            "127.0.0.1:18444",
            "2.1 ms",
            "2.5 MB",
            "PeerBanned subnet=198.51.100.7/32",
            "q quit",
        ] {
            assert!(text.contains(want), "{want:?} missing from:\n{text}");
        }
        assert!(
            !text.contains("127.0.0.1:5 "),
            "only connected peers:\n{text}"
        );
        st.unreachable("connection refused".into());
        assert!(screen(&st).contains("the node is not answering: connection refused"));
    }

    #[test]
    fn the_event_list_is_bounded() {
        let mut st = TopState::default();
        for i in 0..(MAX_EVENT_LINES + 50) {
            st.event(format!("line {i}"));
        }
        assert_eq!(st.events.len(), MAX_EVENT_LINES);
        assert_eq!(st.events.front().map(String::as_str), Some("line 50"));
    }
}
