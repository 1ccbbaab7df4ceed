//! The STUN driver over real UDP sockets on loopback against a scripted server: a forged
//! response is ignored, the second server answers when the first is down, and with no server
//! answering the verdict is unknown within the timeout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use meshd_actors::stun::codec::{binding_response, MAX_STUN_DATAGRAM};
use meshd_actors::stun::driver::{probe, run_transaction};
use meshd_actors::stun::NatType;
use tokio::net::UdpSocket;

/// A server that answers every request with a forged response (wrong transaction id) first,
/// then the real one, mapping the client to `mapped` (or to its real address).
async fn forging_server(mapped: Option<SocketAddr>) -> SocketAddr {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; MAX_STUN_DATAGRAM];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if n < 20 {
                continue;
            }
            let mut tid = [0u8; 12];
            tid.copy_from_slice(&buf[8..20]);
            let mut forged_tid = tid;
            forged_tid[0] ^= 0xff;
            let to = mapped.unwrap_or(from);
            let _ = sock
                .send_to(
                    &binding_response(forged_tid, "192.0.2.66:6666".parse().unwrap(), None, true),
                    from,
                )
                .await;
            let _ = sock
                .send_to(&binding_response(tid, to, None, true), from)
                .await;
        }
    });
    addr
}

/// A loopback UDP port with nothing behind it.
async fn dead_server() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap()
}

#[tokio::test]
async fn a_forged_response_is_ignored_and_the_real_one_accepted() {
    let server = forging_server(Some("203.0.113.254:40000".parse().unwrap())).await;
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let r = run_transaction(&sock, server, None, None, Duration::from_secs(2))
        .await
        .expect("answer");
    assert_eq!(r.mapped, "203.0.113.254:40000".parse().unwrap());
}

#[tokio::test]
async fn the_second_server_answers_when_the_first_is_down() {
    let dead = dead_server().await;
    let live = forging_server(None).await;
    let t0 = Instant::now();
    let report = probe(&[dead, live], Duration::from_millis(600)).await;
    assert_eq!(report.server, Some(live));
    let public = report.public.expect("public address");
    assert_eq!(public.ip().to_string(), "127.0.0.1");
    // The scripted server has no RFC 5780 support: no guess at the NAT type.
    assert_eq!(report.nat_type, NatType::Unknown);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn no_server_answering_means_unknown_within_the_timeout() {
    let (a, b) = (dead_server().await, dead_server().await);
    let t0 = Instant::now();
    let report = probe(&[a, b], Duration::from_millis(500)).await;
    assert_eq!(report.nat_type, NatType::Unknown);
    assert_eq!(report.public, None);
    // Two transactions of 0.5 s, then a TCP check that is refused at once.
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn ipv6_servers_work_too() {
    let sock = UdpSocket::bind("[::1]:0").await.unwrap();
    let server = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = [0u8; MAX_STUN_DATAGRAM];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            if n >= 20 {
                let mut tid = [0u8; 12];
                tid.copy_from_slice(&buf[8..20]);
                let _ = sock
                    .send_to(&binding_response(tid, from, None, true), from)
                    .await;
            }
        }
    });
    let report = probe(&[server], Duration::from_secs(2)).await;
    let public = report.public.expect("an IPv6 mapped address");
    assert!(public.is_ipv6(), "{public}");
    assert_eq!(report.server, Some(server));
}
