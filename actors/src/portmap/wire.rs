//! PCP (RFC 6887) and NAT-PMP (RFC 6886) messages for mapping one TCP port: built as bytes,
//! answers read from bytes, sans-IO. Only what a client mapping its listening port needs:
//! PCP's MAP opcode and NAT-PMP's external-address and map-TCP opcodes.
//!
//! Layouts (network byte order):
//! - PCP request: version 2, opcode MAP (1), 2 reserved bytes, requested lifetime (u32),
//!   client address (16 bytes, IPv4 as `::ffff:a.b.c.d`); then the MAP payload: a 12-byte
//!   nonce, protocol (6 for TCP), 3 reserved bytes, internal port, suggested external port,
//!   suggested external address (16 bytes). 60 bytes in all.
//! - PCP response: version 2, `0x80 | opcode`, reserved, result code, lifetime (u32), epoch
//!   (u32), 12 reserved bytes; then the MAP payload with the assigned port and address.
//! - NAT-PMP: `[0, 0]` asks the external address; the answer is 12 bytes (version 0, opcode
//!   128, result u16, epoch u32, IPv4). Map TCP is 12 bytes (version 0, opcode 2, 2 reserved,
//!   internal port, suggested external port, lifetime u32); the answer 16 (opcode 130, result,
//!   epoch, internal port, mapped external port, lifetime).
//!
//! A NAT-PMP-only gateway answers a PCP request with NAT-PMP's "unsupported version"
//! (version 0, result 1): [`PcpAnswer::UnsupportedVersion`], the cue to fall back (RFC 6887
//! §9, and Core's `PCPRequestPortMap`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The UDP port PCP and NAT-PMP servers listen on (RFC 6886 §3, RFC 6887 §19.1).
pub const SERVER_PORT: u16 = 5351;
/// PCP's protocol version.
pub const PCP_VERSION: u8 = 2;
/// NAT-PMP's protocol version.
pub const NATPMP_VERSION: u8 = 0;
/// PCP's MAP opcode.
const PCP_OP_MAP: u8 = 1;
/// Set in a response's opcode byte.
const RESPONSE_BIT: u8 = 0x80;
/// IANA protocol number of TCP, as PCP's MAP names it.
const PROTOCOL_TCP: u8 = 6;
/// NAT-PMP opcode asking for the external address.
const NATPMP_OP_EXTERNAL: u8 = 0;
/// NAT-PMP opcode mapping a TCP port.
const NATPMP_OP_MAP_TCP: u8 = 2;
/// PCP header bytes (request and response).
const PCP_HEADER_LEN: usize = 24;
/// PCP MAP payload bytes.
const PCP_MAP_LEN: usize = 36;
/// PCP's largest message (RFC 6887 §7): longer datagrams are not PCP.
pub const PCP_MAX_LEN: usize = 1100;
/// Bytes of a PCP MAP nonce.
pub const NONCE_LEN: usize = 12;
/// NAT-PMP's and PCP's "unsupported version" result.
const RESULT_UNSUPPORTED_VERSION: u16 = 1;

/// A PCP MAP nonce: the client's random tag, echoed in the answer and kept for renewals.
pub type Nonce = [u8; NONCE_LEN];

/// Why an answer was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// Too short or too long for the message it says it is.
    #[error("answer of {0} bytes has the wrong length")]
    Length(usize),
    /// Not the version we asked in.
    #[error("answer in protocol version {0}")]
    Version(u8),
    /// Not an answer to the opcode we sent.
    #[error("answer to opcode {0:#04x}, not ours")]
    Opcode(u8),
    /// A PCP MAP answer whose nonce, protocol or internal port is not our request's.
    #[error("answer for another request")]
    NotOurs,
}

impl WireError {
    /// A stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            WireError::Length(_) => "length",
            WireError::Version(_) => "version",
            WireError::Opcode(_) => "opcode",
            WireError::NotOurs => "not_ours",
        }
    }
}

/// The 16-byte form PCP carries addresses in: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
fn pcp_address(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// Reads PCP's 16-byte address: an IPv4-mapped one as IPv4.
fn read_pcp_address(bytes: &[u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(*bytes);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A PCP MAP request for TCP `port` on `client` (our address as the gateway sees it), for
/// `lifetime` seconds (0 deletes the mapping); the same external port is suggested, and any
/// external address of `client`'s family.
pub fn pcp_map_request(client: IpAddr, port: u16, lifetime: u32, nonce: &Nonce) -> Vec<u8> {
    let mut out = Vec::with_capacity(PCP_HEADER_LEN + PCP_MAP_LEN);
    out.extend_from_slice(&[PCP_VERSION, PCP_OP_MAP, 0, 0]);
    out.extend_from_slice(&lifetime.to_be_bytes());
    out.extend_from_slice(&pcp_address(client));
    out.extend_from_slice(nonce);
    out.extend_from_slice(&[PROTOCOL_TCP, 0, 0, 0]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&port.to_be_bytes());
    let any = match client {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    out.extend_from_slice(&pcp_address(any));
    out
}

/// What a PCP gateway answered to our MAP request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PcpAnswer {
    /// Mapped: `external` (address and port) for `lifetime` seconds.
    Mapped {
        /// The address and port the gateway forwards to us.
        external: (IpAddr, u16),
        /// Seconds the mapping lasts.
        lifetime: u32,
        /// The server's epoch (RFC 6887 §8.5): a jump back means it lost its state.
        epoch: u32,
    },
    /// The gateway speaks only NAT-PMP: fall back.
    UnsupportedVersion,
    /// Refused with a PCP result code (RFC 6887 §7.4).
    Refused(u8),
}

/// Bytes of NAT-PMP's answer to a request in a version it does not speak: its 8-byte header.
const NATPMP_UNSUPPORTED_LEN: usize = 8;

/// Reads a PCP answer to the MAP request made with `nonce` for TCP `port`, as Core's
/// `PCPRequestPortMap` does: NAT-PMP's exact 8-byte "unsupported version" answer is the cue
/// to fall back; anything else must be a whole MAP answer echoing our nonce, protocol and
/// port, or it is ignored (a LAN host can spoof the gateway's address, not our nonce).
pub fn parse_pcp_answer(bytes: &[u8], nonce: &Nonce, port: u16) -> Result<PcpAnswer, WireError> {
    if bytes.len() == NATPMP_UNSUPPORTED_LEN
        && bytes[0] == NATPMP_VERSION
        && u16::from_be_bytes([bytes[2], bytes[3]]) == RESULT_UNSUPPORTED_VERSION
    {
        return Ok(PcpAnswer::UnsupportedVersion);
    }
    if bytes.len() < PCP_HEADER_LEN + PCP_MAP_LEN || bytes.len() > PCP_MAX_LEN {
        return Err(WireError::Length(bytes.len()));
    }
    if bytes[0] != PCP_VERSION {
        return Err(WireError::Version(bytes[0]));
    }
    if bytes[1] != RESPONSE_BIT | PCP_OP_MAP {
        return Err(WireError::Opcode(bytes[1]));
    }
    let map = &bytes[PCP_HEADER_LEN..PCP_HEADER_LEN + PCP_MAP_LEN];
    let internal = u16::from_be_bytes([map[16], map[17]]);
    if map[..NONCE_LEN] != nonce[..] || map[12] != PROTOCOL_TCP || internal != port {
        return Err(WireError::NotOurs);
    }
    let result = bytes[3];
    if result != 0 {
        return Ok(PcpAnswer::Refused(result));
    }
    let lifetime = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    let epoch = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    let external_port = u16::from_be_bytes([map[18], map[19]]);
    let mut addr = [0u8; 16];
    addr.copy_from_slice(&map[20..36]);
    Ok(PcpAnswer::Mapped {
        external: (read_pcp_address(&addr), external_port),
        lifetime,
        epoch,
    })
}

/// NAT-PMP's request for the gateway's external address.
pub fn natpmp_external_request() -> Vec<u8> {
    vec![NATPMP_VERSION, NATPMP_OP_EXTERNAL]
}

/// NAT-PMP's request mapping TCP `port` to the same external port for `lifetime` seconds
/// (0, with a suggested port of 0, deletes it: RFC 6886 §3.4).
pub fn natpmp_map_request(port: u16, lifetime: u32) -> Vec<u8> {
    let suggested = if lifetime == 0 { 0 } else { port };
    let mut out = Vec::with_capacity(12);
    out.extend_from_slice(&[NATPMP_VERSION, NATPMP_OP_MAP_TCP, 0, 0]);
    out.extend_from_slice(&port.to_be_bytes());
    out.extend_from_slice(&suggested.to_be_bytes());
    out.extend_from_slice(&lifetime.to_be_bytes());
    out
}

/// A NAT-PMP answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatPmpAnswer {
    /// The gateway's external address.
    External {
        /// Its public IPv4 address.
        ip: Ipv4Addr,
        /// Seconds since its start (RFC 6886 §3.6).
        epoch: u32,
    },
    /// Our TCP port mapped.
    Mapped {
        /// The external port the gateway forwards to us.
        external_port: u16,
        /// Seconds the mapping lasts.
        lifetime: u32,
        /// Seconds since its start.
        epoch: u32,
    },
    /// Refused with a NAT-PMP result code (RFC 6886 §3.5).
    Refused(u16),
}

/// Reads a NAT-PMP answer: to the external-address request, or to mapping TCP `port`.
pub fn parse_natpmp_answer(bytes: &[u8], port: u16) -> Result<NatPmpAnswer, WireError> {
    if bytes.len() < 8 {
        return Err(WireError::Length(bytes.len()));
    }
    if bytes[0] != NATPMP_VERSION {
        return Err(WireError::Version(bytes[0]));
    }
    let result = u16::from_be_bytes([bytes[2], bytes[3]]);
    let epoch = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    match bytes[1] {
        op if op == RESPONSE_BIT | NATPMP_OP_EXTERNAL => {
            if result != 0 {
                return Ok(NatPmpAnswer::Refused(result));
            }
            if bytes.len() != 12 {
                return Err(WireError::Length(bytes.len()));
            }
            let ip = Ipv4Addr::new(bytes[8], bytes[9], bytes[10], bytes[11]);
            Ok(NatPmpAnswer::External { ip, epoch })
        }
        op if op == RESPONSE_BIT | NATPMP_OP_MAP_TCP => {
            if result != 0 {
                return Ok(NatPmpAnswer::Refused(result));
            }
            if bytes.len() != 16 {
                return Err(WireError::Length(bytes.len()));
            }
            if u16::from_be_bytes([bytes[8], bytes[9]]) != port {
                return Err(WireError::NotOurs);
            }
            Ok(NatPmpAnswer::Mapped {
                external_port: u16::from_be_bytes([bytes[10], bytes[11]]),
                lifetime: u32::from_be_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]),
                epoch,
            })
        }
        op => Err(WireError::Opcode(op)),
    }
}

/// PCP's result codes by name (RFC 6887 §7.4), for logs and metrics.
pub fn pcp_result_name(code: u8) -> &'static str {
    match code {
        0 => "success",
        1 => "unsupp_version",
        2 => "not_authorized",
        3 => "malformed_request",
        4 => "unsupp_opcode",
        5 => "unsupp_option",
        6 => "malformed_option",
        7 => "network_failure",
        8 => "no_resources",
        9 => "unsupp_protocol",
        10 => "user_ex_quota",
        11 => "cannot_provide_external",
        12 => "address_mismatch",
        13 => "excessive_remote_peers",
        _ => "unknown",
    }
}

/// NAT-PMP's result codes by name (RFC 6886 §3.5).
pub fn natpmp_result_name(code: u16) -> &'static str {
    match code {
        0 => "success",
        1 => "unsupported_version",
        2 => "not_authorized",
        3 => "network_failure",
        4 => "out_of_resources",
        5 => "unsupported_opcode",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NONCE: Nonce = [7; NONCE_LEN];

    /// A PCP server's MAP answer, as RFC 6887 §11.4 lays it out.
    fn pcp_answer(result: u8, nonce: &Nonce, port: u16, external: (IpAddr, u16)) -> Vec<u8> {
        let mut b = vec![PCP_VERSION, RESPONSE_BIT | PCP_OP_MAP, 0, result];
        b.extend_from_slice(&7200u32.to_be_bytes());
        b.extend_from_slice(&99u32.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        b.extend_from_slice(nonce);
        b.extend_from_slice(&[PROTOCOL_TCP, 0, 0, 0]);
        b.extend_from_slice(&port.to_be_bytes());
        b.extend_from_slice(&external.1.to_be_bytes());
        b.extend_from_slice(&pcp_address(external.0));
        b
    }

    #[test]
    fn pcp_map_request_has_rfc_6887s_layout() {
        let client: IpAddr = "10.0.0.10".parse().unwrap();
        let b = pcp_map_request(client, 8333, 7200, &NONCE);
        assert_eq!(b.len(), 60);
        assert_eq!(&b[..4], &[2, 1, 0, 0]);
        assert_eq!(&b[4..8], &7200u32.to_be_bytes());
        // ::ffff:10.0.0.10
        assert_eq!(
            &b[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 10]
        );
        assert_eq!(&b[24..36], &NONCE);
        assert_eq!(&b[36..40], &[6, 0, 0, 0]);
        assert_eq!(&b[40..44], &[0x20, 0x8d, 0x20, 0x8d]);
        // Any IPv4 address: ::ffff:0.0.0.0.
        assert_eq!(
            &b[44..60],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0]
        );
    }

    #[test]
    fn pcp_answers_are_matched_to_their_request() {
        let ext: IpAddr = "203.0.113.254".parse().unwrap();
        let ok = pcp_answer(0, &NONCE, 8333, (ext, 8333));
        assert_eq!(
            parse_pcp_answer(&ok, &NONCE, 8333),
            Ok(PcpAnswer::Mapped {
                external: (ext, 8333),
                lifetime: 7200,
                epoch: 99
            })
        );
        assert_eq!(
            parse_pcp_answer(&ok, &[8; NONCE_LEN], 8333),
            Err(WireError::NotOurs)
        );
        assert_eq!(parse_pcp_answer(&ok, &NONCE, 8334), Err(WireError::NotOurs));
        let refused = pcp_answer(2, &NONCE, 8333, (ext, 0));
        assert_eq!(
            parse_pcp_answer(&refused, &NONCE, 8333),
            Ok(PcpAnswer::Refused(2))
        );
        // A NAT-PMP server's answer to a PCP request: fall back.
        assert_eq!(
            parse_pcp_answer(&[0, 0x81, 0, 1, 0, 0, 0, 5], &NONCE, 8333),
            Ok(PcpAnswer::UnsupportedVersion)
        );
        // A request echoed back is not an answer.
        let client: IpAddr = "10.0.0.10".parse().unwrap();
        assert_eq!(
            parse_pcp_answer(&pcp_map_request(client, 8333, 1, &NONCE), &NONCE, 8333),
            Err(WireError::Opcode(1))
        );
    }

    #[test]
    fn natpmp_requests_and_answers_have_rfc_6886s_layout() {
        assert_eq!(natpmp_external_request(), vec![0, 0]);
        assert_eq!(
            natpmp_map_request(8333, 7200),
            vec![0, 2, 0, 0, 0x20, 0x8d, 0x20, 0x8d, 0, 0, 0x1c, 0x20]
        );
        // Deleting suggests external port 0 with lifetime 0.
        assert_eq!(
            natpmp_map_request(8333, 0),
            vec![0, 2, 0, 0, 0x20, 0x8d, 0, 0, 0, 0, 0, 0]
        );
        let ext = [0, 128, 0, 0, 0, 0, 0, 9, 203, 0, 113, 254];
        assert_eq!(
            parse_natpmp_answer(&ext, 8333),
            Ok(NatPmpAnswer::External {
                ip: Ipv4Addr::new(203, 0, 113, 254),
                epoch: 9
            })
        );
        let map = [
            0, 130, 0, 0, 0, 0, 0, 9, 0x20, 0x8d, 0x20, 0x8e, 0, 0, 0x1c, 0x20,
        ];
        assert_eq!(
            parse_natpmp_answer(&map, 8333),
            Ok(NatPmpAnswer::Mapped {
                external_port: 8334,
                lifetime: 7200,
                epoch: 9
            })
        );
        assert_eq!(parse_natpmp_answer(&map, 18444), Err(WireError::NotOurs));
        let refused = [0, 130, 0, 2, 0, 0, 0, 9, 0x20, 0x8d, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            parse_natpmp_answer(&refused, 8333),
            Ok(NatPmpAnswer::Refused(2))
        );
    }

    proptest! {
        /// Whatever a gateway (or anyone on the LAN) sends, reading it never panics, and a
        /// mapping is read only from an answer echoing our nonce and port.
        #[test]
        fn hostile_answers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            if let Ok(PcpAnswer::Mapped { .. }) = parse_pcp_answer(&bytes, &NONCE, 8333) {
                prop_assert_eq!(&bytes[24..36], &NONCE[..]);
                prop_assert_eq!(&bytes[40..42], &8333u16.to_be_bytes()[..]);
            }
            let _ = parse_natpmp_answer(&bytes, 8333);
        }

        /// An answer built for any port and address reads back as it was built.
        #[test]
        fn pcp_answers_round_trip(port in 1u16.., ext_port in 1u16.., ip in any::<[u8; 4]>()) {
            let ext = IpAddr::V4(Ipv4Addr::from(ip));
            let b = pcp_answer(0, &NONCE, port, (ext, ext_port));
            prop_assert_eq!(
                parse_pcp_answer(&b, &NONCE, port),
                Ok(PcpAnswer::Mapped { external: (ext, ext_port), lifetime: 7200, epoch: 99 })
            );
        }
    }
}
