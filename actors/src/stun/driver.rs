//! Runs the sans-IO STUN cores over a real UDP socket: one binding transaction
//! ([`run_transaction`]) and a whole NAT probe ([`probe`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

use super::codec::{BindingResponse, StunError, MAX_STUN_DATAGRAM};
use super::nat::{NatProbe, NatReport, Query};
use super::transaction::{Transaction, TxStep};

/// Time allowed for a TCP connect when checking whether UDP is blocked.
const TCP_CHECK_TIMEOUT: Duration = Duration::from_secs(1);

/// Runs one binding transaction from `sock`; `None` when no usable answer came in time.
pub async fn run_transaction(
    sock: &UdpSocket,
    to: SocketAddr,
    change: Option<(bool, bool)>,
    expect_from: Option<SocketAddr>,
    total_timeout: Duration,
) -> Option<BindingResponse> {
    let tid: [u8; 12] = rand::random();
    let mut tx = Transaction::new(tid, to, change, expect_from, Instant::now(), total_timeout);
    let mut buf = [0u8; MAX_STUN_DATAGRAM];
    loop {
        let until = match tx.poll(Instant::now()) {
            TxStep::Send { to, bytes, until } => {
                if let Err(e) = sock.send_to(&bytes, to).await {
                    debug!(server = %to, error = %e, "STUN send failed");
                }
                until
            }
            TxStep::Wait(until) => until,
            TxStep::TimedOut => return None,
        };
        let wait = until.saturating_duration_since(Instant::now());
        match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
            Err(_) => continue, // retransmission time
            Ok(Err(e)) => {
                // ICMP errors surface here on some systems; the schedule goes on.
                debug!(server = %to, error = %e, "STUN receive error");
                tokio::time::sleep(wait.min(Duration::from_millis(50))).await;
            }
            Ok(Ok((n, from))) => match tx.on_datagram(from, &buf[..n]) {
                None => {
                    metrics::counter!("meshd_stun_ignored_total").increment(1);
                    debug!(%from, "ignored a datagram: not from the server asked, or another transaction");
                }
                Some(Ok(resp)) => return Some(resp),
                Some(Err(StunError::ErrorResponse { code, reason })) => {
                    debug!(server = %to, code, %reason, "STUN error response");
                    return None;
                }
                Some(Err(e)) => {
                    metrics::counter!("meshd_stun_ignored_total").increment(1);
                    debug!(%from, error = %e, "ignored a bad STUN datagram");
                }
            },
        }
    }
}

/// The source address our traffic to `server` leaves from (no packet is sent).
async fn local_ip_towards(server: SocketAddr) -> Option<IpAddr> {
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().ok()?
    } else {
        "[::]:0".parse().ok()?
    };
    let s = UdpSocket::bind(bind).await.ok()?;
    s.connect(server).await.ok()?;
    s.local_addr().ok().map(|a| a.ip())
}

/// Probes public address and NAT type against `servers` (tried in order; those of the first
/// server's address family are used). Each transaction is bounded by `timeout`.
pub async fn probe(servers: &[SocketAddr], timeout: Duration) -> NatReport {
    let Some(first) = servers.first() else {
        return NatProbe::new(Vec::new(), None, 0)
            .report()
            .unwrap_or_else(unknown);
    };
    let family: Vec<SocketAddr> = servers
        .iter()
        .filter(|s| s.is_ipv4() == first.is_ipv4())
        .copied()
        .collect();
    let bind: SocketAddr = if first.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => {
            debug!(error = %e, "cannot bind a UDP socket for STUN");
            return unknown();
        }
    };
    let port = sock.local_addr().map(|a| a.port()).unwrap_or(0);
    let mut p = NatProbe::new(family.clone(), local_ip_towards(*first).await, port);
    let mut filtering_sock: Option<UdpSocket> = None;
    while let Some(q) = p.next() {
        match q {
            Query::Binding {
                to,
                change,
                expect_from,
                filtering_socket,
            } => {
                let socket = if filtering_socket {
                    if filtering_sock.is_none() {
                        filtering_sock = UdpSocket::bind(bind).await.ok();
                    }
                    filtering_sock.as_ref().unwrap_or(&sock)
                } else {
                    &sock
                };
                let r = run_transaction(socket, to, change, expect_from, timeout).await;
                debug!(server = %to, ?change, answered = r.is_some(), "STUN test");
                p.on_result(r);
            }
            Query::TcpReachable => {
                let mut reachable = false;
                for s in &family {
                    if let Ok(Ok(_)) =
                        tokio::time::timeout(TCP_CHECK_TIMEOUT, TcpStream::connect(s)).await
                    {
                        reachable = true;
                        break;
                    }
                }
                p.on_tcp(reachable);
            }
        }
    }
    p.report().unwrap_or_else(unknown)
}

fn unknown() -> NatReport {
    NatReport {
        nat_type: super::nat::NatType::Unknown,
        mapping: None,
        filtering: None,
        public: None,
        server: None,
    }
}
