//! Outbound connections through a SOCKS5 proxy (`--proxy`, `--onion`), as Bitcoin Core
//! makes them: the proxy is asked for the peer by IP address, or by name for onion and I2P
//! peers (the proxy resolves them; nothing is looked up locally), and with
//! `--proxy-randomize` each connection authenticates with fresh random credentials, which
//! Tor takes as a request for a circuit of its own (stream isolation, Tor's
//! `IsolateSOCKSAuth`, on by default).
//!
//! The SOCKS5 exchange is the `tokio-socks` crate's; this module chooses the route, bounds
//! the exchange in time, and turns every failure into a typed [`ProxyError`] that is
//! logged with the peer, counted in `meshd_proxy_errors_total{kind}` and treated by the
//! restart policy as a failed connect.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_socks::tcp::Socks5Stream;
use tokio_socks::TargetAddr;

use crate::config::{NodeConfig, ProxyConfig};
pub use crate::peer::reason::{NoRoute, ProxyError};
use crate::shared::overlay::{Network, OverlayAddr};

/// Length of each random credential with `--proxy-randomize`: Core uses a counter; random
/// hex of this length cannot repeat in practice and says nothing about the node.
const RANDOM_CREDENTIAL_LEN: usize = 16;

/// Longest host name a SOCKS5 request carries (RFC 1928: one length byte).
const MAX_SOCKS5_NAME_LEN: usize = 255;

/// How a peer is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A plain TCP connect.
    Direct(SocketAddr),
    /// Through a SOCKS5 proxy, to `host:port`.
    Socks5 {
        /// The proxy.
        proxy: ProxyConfig,
        /// What the proxy is asked to reach.
        target: ProxyTarget,
        /// Fresh random credentials for this connection (stream isolation).
        randomize: bool,
    },
}

/// What a proxy is asked to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProxyTarget {
    /// An IP address.
    Ip(SocketAddr),
    /// A host name (onion, I2P), resolved by the proxy.
    Name(String, u16),
}

/// The route to `addr` (an internal address for overlay peers, with its `overlay` name).
pub fn route(
    config: &NodeConfig,
    addr: SocketAddr,
    overlay: Option<&OverlayAddr>,
) -> Result<Route, NoRoute> {
    let network = overlay.map_or_else(|| Network::of_ip(addr.ip()), |o| o.network());
    if !config.reachable(network) {
        return Err(NoRoute(network));
    }
    let randomize = config.proxy_randomize;
    match overlay {
        Some(OverlayAddr::Onion(_)) => {
            let proxy = config.onion_route().cloned().ok_or(NoRoute(network))?;
            let host = overlay.map(OverlayAddr::host).unwrap_or_default();
            Ok(Route::Socks5 {
                proxy,
                target: ProxyTarget::Name(host, addr.port()),
                randomize,
            })
        }
        // I2P needs a SAM session, which meshd does not open (`reachable` says no).
        Some(OverlayAddr::I2p(_)) => Err(NoRoute(network)),
        Some(OverlayAddr::Cjdns(_)) | None => match &config.proxy {
            // CJDNS is routed by the host, never through a Tor-style proxy.
            Some(proxy) if network != Network::Cjdns => Ok(Route::Socks5 {
                proxy: proxy.clone(),
                target: ProxyTarget::Ip(addr),
                randomize,
            }),
            _ => Ok(Route::Direct(addr)),
        },
    }
}

/// A `tokio-socks` failure as our typed error.
fn proxy_error_from_socks(e: tokio_socks::Error) -> ProxyError {
    use tokio_socks::Error as E;
    match e {
        E::Io(io) => ProxyError::Closed(io.to_string()),
        // Our own target is checked before the exchange, so this is about the proxy's
        // bound address (a domain that is not UTF-8).
        E::InvalidTargetAddress(m) => ProxyError::BadReply(m.to_string()),
        E::ProxyServerUnreachable => ProxyError::Closed("proxy unreachable".into()),
        E::NoAcceptableAuthMethods | E::UnknownAuthMethod => ProxyError::AuthFailed(e.to_string()),
        E::PasswordAuthFailure(code) => ProxyError::AuthFailed(format!("status {code}")),
        E::InvalidAuthValues(m) => ProxyError::AuthFailed(m.to_string()),
        E::InvalidResponseVersion
        | E::InvalidReservedByte
        | E::UnknownAddressType
        | E::ParseError(_) => ProxyError::BadReply(e.to_string()),
        E::HostUnreachable => ProxyError::HostUnreachable,
        E::NetworkUnreachable => ProxyError::NetworkUnreachable,
        E::ConnectionRefused => ProxyError::Refused,
        E::TtlExpired => ProxyError::TtlExpired,
        E::ConnectionNotAllowedByRuleset => ProxyError::NotAllowed,
        other => ProxyError::Failure(other.to_string()),
    }
}

/// Fresh random credentials for one connection.
fn random_credentials() -> (String, String) {
    let hex = |bytes: [u8; RANDOM_CREDENTIAL_LEN / 2]| {
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    (hex(rand::random()), hex(rand::random()))
}

/// Runs the SOCKS5 exchange over `socket` (already connected to the proxy).
pub async fn handshake<S>(
    socket: S,
    target: &ProxyTarget,
    credentials: Option<(&str, &str)>,
) -> Result<S, ProxyError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = match target {
        ProxyTarget::Ip(a) => TargetAddr::Ip(*a),
        // The crate writes a `Domain` built directly without checking its length (it checks
        // only names it parses itself), and SOCKS5 has one length byte.
        ProxyTarget::Name(host, _) if host.len() > MAX_SOCKS5_NAME_LEN => {
            return Err(ProxyError::BadTarget(format!(
                "{} bytes, over {MAX_SOCKS5_NAME_LEN}",
                host.len()
            )))
        }
        ProxyTarget::Name(host, port) => TargetAddr::Domain(host.as_str().into(), *port),
    };
    let stream = match credentials {
        Some((user, pass)) => {
            Socks5Stream::connect_with_password_and_socket(socket, target, user, pass).await
        }
        None => Socks5Stream::connect_with_socket(socket, target).await,
    }
    .map_err(proxy_error_from_socks)?;
    Ok(stream.into_inner())
}

/// Connects to the proxy and asks it for `target`, all within `timeout`.
pub async fn connect(
    proxy: &ProxyConfig,
    target: &ProxyTarget,
    randomize: bool,
    timeout: Duration,
) -> Result<TcpStream, ProxyError> {
    let work = async {
        let socket = TcpStream::connect(proxy.addr)
            .await
            .map_err(|e| ProxyError::ProxyUnreachable(proxy.addr, e.to_string()))?;
        let random;
        let credentials = match (&proxy.credentials, randomize) {
            (Some((u, p)), _) => Some((u.as_str(), p.as_str())),
            (None, true) => {
                random = random_credentials();
                Some((random.0.as_str(), random.1.as_str()))
            }
            (None, false) => None,
        };
        handshake(socket, target, credentials).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ProxyError::Timeout)?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use std::path::PathBuf;

    fn config() -> NodeConfig {
        NodeConfig::new(NetworkId::Regtest, PathBuf::from("/nonexistent"))
    }

    fn proxy(port: u16) -> ProxyConfig {
        ProxyConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            credentials: None,
        }
    }

    #[test]
    fn routes_follow_proxy_onion_and_onlynet() {
        let ip: SocketAddr = "203.0.113.5:8333".parse().unwrap();
        let onion = OverlayAddr::Onion([1; 32]);
        let onion_addr = onion.internal(8333);
        let mut c = config();
        assert_eq!(route(&c, ip, None), Ok(Route::Direct(ip)));
        assert_eq!(
            route(&c, onion_addr, Some(&onion)),
            Err(NoRoute(Network::Onion))
        );
        c.proxy = Some(proxy(9050));
        assert!(matches!(
            route(&c, ip, None),
            Ok(Route::Socks5 { target: ProxyTarget::Ip(a), randomize: true, .. }) if a == ip
        ));
        // The onion proxy defaults to the proxy, and onion peers are asked for by name.
        match route(&c, onion_addr, Some(&onion)) {
            Ok(Route::Socks5 {
                proxy: p,
                target: ProxyTarget::Name(host, 8333),
                ..
            }) => {
                assert_eq!(p.addr.port(), 9050);
                assert_eq!(host, onion.host());
            }
            other => panic!("unexpected {other:?}"),
        }
        // --onion alone: onion peers through it, IP peers direct.
        c.proxy = None;
        c.onion_proxy = Some(proxy(9150));
        assert_eq!(route(&c, ip, None), Ok(Route::Direct(ip)));
        assert!(matches!(
            route(&c, onion_addr, Some(&onion)),
            Ok(Route::Socks5 { proxy: p, .. }) if p.addr.port() == 9150
        ));
        // --onlynet onion: IP peers are not dialled at all.
        c.onlynet = vec![Network::Onion];
        assert_eq!(route(&c, ip, None), Err(NoRoute(Network::Ipv4)));
        assert!(route(&c, onion_addr, Some(&onion)).is_ok());
        // I2P has no route (no SAM session).
        let i2p = OverlayAddr::I2p([2; 32]);
        c.onlynet.clear();
        assert_eq!(
            route(&c, i2p.internal(0), Some(&i2p)),
            Err(NoRoute(Network::I2p))
        );
    }

    #[test]
    fn random_credentials_differ_per_connection() {
        let (a, b) = (random_credentials(), random_credentials());
        assert_ne!(a, b);
        assert_eq!(a.0.len(), RANDOM_CREDENTIAL_LEN);
    }

    /// The proxy's side of an exchange, as bytes, played against `handshake`.
    async fn against(reply: &[u8], target: ProxyTarget) -> Result<(), ProxyError> {
        let (client, mut server) = tokio::io::duplex(1024);
        let reply = reply.to_vec();
        let serve = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = server.write_all(&reply).await;
            let _ = server.shutdown().await;
            // Keep reading what the client sends so its writes never block.
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut server, &mut sink).await;
        });
        let r = handshake(client, &target, None).await.map(|_| ());
        serve.abort();
        r
    }

    #[tokio::test]
    async fn hostile_replies_are_typed_errors() {
        let ip = ProxyTarget::Ip("203.0.113.5:8333".parse().unwrap());
        // Method selection answered with the wrong version.
        assert!(matches!(
            against(&[4, 0], ip.clone()).await,
            Err(ProxyError::BadReply(_))
        ));
        // No acceptable method.
        assert!(matches!(
            against(&[5, 0xff], ip.clone()).await,
            Err(ProxyError::AuthFailed(_))
        ));
        // Truncated bound address.
        assert!(matches!(
            against(&[5, 0, 5, 0, 0, 1, 127, 0], ip.clone()).await,
            Err(ProxyError::Closed(_))
        ));
        // Reply codes.
        for (code, kind) in [
            (1u8, "proxy_failure"),
            (2, "proxy_not_allowed"),
            (3, "proxy_network_unreachable"),
            (4, "proxy_host_unreachable"),
            (5, "proxy_connection_refused"),
            (6, "proxy_ttl_expired"),
        ] {
            let e = against(&[5, 0, 5, code, 0, 1, 0, 0, 0, 0, 0, 0], ip.clone())
                .await
                .expect_err("a failure code");
            assert_eq!(e.kind(), kind);
        }
        // An oversized name never reaches the wire.
        let long = ProxyTarget::Name("a".repeat(300), 8333);
        assert!(matches!(
            against(&[5, 0], long).await,
            Err(ProxyError::BadTarget(_))
        ));
        // A bound address that is a 255-byte name, not UTF-8.
        let mut bad_name = vec![5, 0, 5, 0, 0, 3, 255];
        bad_name.extend_from_slice(&[0xff; 255]);
        bad_name.extend_from_slice(&[0x20, 0x8d]);
        assert!(matches!(
            against(&bad_name, ip.clone()).await,
            Err(ProxyError::BadReply(_))
        ));
        // A name whose length byte promises more than the proxy sends.
        assert!(matches!(
            against(&[5, 0, 5, 0, 0, 3, 200, b'a', b'b'], ip.clone()).await,
            Err(ProxyError::Closed(_))
        ));
        // Success, with a domain as the bound address.
        let mut ok = vec![5, 0, 5, 0, 0, 3, 4];
        ok.extend_from_slice(b"abcd");
        ok.extend_from_slice(&[0x20, 0x8d]);
        assert_eq!(against(&ok, ip).await, Ok(()));
    }
}
