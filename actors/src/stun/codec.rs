//! STUN binding messages (RFC 5389 / 8489) with the RFC 5780 attributes, through the
//! `stun_codec` crate. This module only adapts it: a binding request with an optional
//! CHANGE-REQUEST, and a decoder that turns a datagram into a typed [`BindingResponse`] or a
//! typed [`StunError`].

use std::net::SocketAddr;

use bytecodec::{DecodeExt, EncodeExt};
use stun_codec::rfc5389::attributes::{
    ErrorCode, Fingerprint, MappedAddress, Software, XorMappedAddress,
};
use stun_codec::rfc5389::methods::BINDING;
use stun_codec::rfc5780::attributes::{ChangeRequest, OtherAddress, ResponseOrigin};
use stun_codec::{
    define_attribute_enums, Message, MessageClass, MessageDecoder, MessageEncoder, TransactionId,
};

define_attribute_enums!(
    StunAttribute,
    StunAttributeDecoder,
    StunAttributeEncoder,
    [
        MappedAddress,
        XorMappedAddress,
        ErrorCode,
        Software,
        Fingerprint,
        ChangeRequest,
        OtherAddress,
        ResponseOrigin
    ]
);

/// Largest STUN datagram we read.
///
/// # Security
/// A binding response is well under 200 bytes; 1280 (the IPv6 minimum MTU) leaves room for
/// any server's extra attributes without letting one datagram cost more.
pub const MAX_STUN_DATAGRAM: usize = 1280;

/// What a binding response tells us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindingResponse {
    /// Our address as the server saw it (XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS).
    pub mapped: SocketAddr,
    /// The server's other address (RFC 5780), if it supports behaviour discovery.
    pub other: Option<SocketAddr>,
    /// Where the server says it sent the response from (RFC 5780).
    pub origin: Option<SocketAddr>,
}

/// Why a datagram was not a usable binding response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StunError {
    /// Not a STUN message, or a broken one (including a FINGERPRINT that does not match).
    #[error("not a valid STUN message: {0}")]
    Malformed(String),
    /// A STUN message for another transaction (a stray or forged response).
    #[error("transaction id does not match")]
    WrongTransaction,
    /// Not a binding success response.
    #[error("not a binding success response")]
    NotASuccess,
    /// The server answered with an error.
    #[error("server error {code}: {reason}")]
    ErrorResponse {
        /// Error code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// A success response without a mapped address.
    #[error("response carries no mapped address")]
    NoMappedAddress,
}

/// Encodes a binding request; `change` asks the server to answer from another IP and/or port.
pub fn binding_request(tid: [u8; 12], change: Option<(bool, bool)>) -> Vec<u8> {
    let mut m =
        Message::<StunAttribute>::new(MessageClass::Request, BINDING, TransactionId::new(tid));
    if let Some((ip, port)) = change {
        m.add_attribute(ChangeRequest::new(ip, port));
    }
    // Encoding a message we built cannot fail; an empty datagram is simply ignored by servers.
    MessageEncoder::new()
        .encode_into_bytes(m)
        .unwrap_or_default()
}

/// Decodes a datagram as the response to transaction `tid`.
pub fn decode_response(bytes: &[u8], tid: [u8; 12]) -> Result<BindingResponse, StunError> {
    let decoded = MessageDecoder::<StunAttribute>::new()
        .decode_from_bytes(bytes)
        .map_err(|e| StunError::Malformed(e.to_string()))?;
    let m = match decoded {
        Ok(m) => m,
        Err(broken) => {
            if broken.transaction_id().as_bytes() != &tid {
                return Err(StunError::WrongTransaction);
            }
            return Err(StunError::Malformed(broken.error().to_string()));
        }
    };
    if m.transaction_id().as_bytes() != &tid {
        return Err(StunError::WrongTransaction);
    }
    if m.method() != BINDING {
        return Err(StunError::NotASuccess);
    }
    match m.class() {
        MessageClass::SuccessResponse => {}
        MessageClass::ErrorResponse => {
            let (code, reason) = m
                .get_attribute::<ErrorCode>()
                .map_or((0, String::new()), |e| {
                    (e.code(), e.reason_phrase().to_string())
                });
            return Err(StunError::ErrorResponse { code, reason });
        }
        _ => return Err(StunError::NotASuccess),
    }
    let mapped = m
        .get_attribute::<XorMappedAddress>()
        .map(|a| a.address())
        .or_else(|| m.get_attribute::<MappedAddress>().map(|a| a.address()))
        .ok_or(StunError::NoMappedAddress)?;
    Ok(BindingResponse {
        mapped,
        other: m.get_attribute::<OtherAddress>().map(|a| a.address()),
        origin: m.get_attribute::<ResponseOrigin>().map(|a| a.address()),
    })
}

/// Encodes a binding success response (for tests that play a STUN server).
pub fn binding_response(
    tid: [u8; 12],
    mapped: SocketAddr,
    other: Option<SocketAddr>,
    fingerprint: bool,
) -> Vec<u8> {
    let mut m = Message::<StunAttribute>::new(
        MessageClass::SuccessResponse,
        BINDING,
        TransactionId::new(tid),
    );
    m.add_attribute(XorMappedAddress::new(mapped));
    if let Some(o) = other {
        m.add_attribute(OtherAddress::new(o));
    }
    if fingerprint {
        if let Ok(f) = Fingerprint::new(&m) {
            m.add_attribute(f);
        }
    }
    MessageEncoder::new()
        .encode_into_bytes(m)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn request_carries_the_magic_cookie_and_transaction_id() {
        let tid = [7u8; 12];
        let req = binding_request(tid, Some((true, false)));
        assert_eq!(&req[0..2], &[0x00, 0x01], "binding request");
        assert_eq!(&req[4..8], &[0x21, 0x12, 0xa4, 0x42], "magic cookie");
        assert_eq!(&req[8..20], &tid);
    }

    #[test]
    fn response_round_trips_with_fingerprint_and_a_forged_one_is_refused() {
        let tid = [1u8; 12];
        let mapped: SocketAddr = "203.0.113.254:40000".parse().unwrap();
        let other: SocketAddr = "203.0.113.2:3479".parse().unwrap();
        let bytes = binding_response(tid, mapped, Some(other), true);
        let r = decode_response(&bytes, tid).unwrap();
        assert_eq!((r.mapped, r.other), (mapped, Some(other)));
        assert_eq!(
            decode_response(&bytes, [2u8; 12]),
            Err(StunError::WrongTransaction)
        );
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff; // breaks the FINGERPRINT
        assert!(matches!(
            decode_response(&bad, tid),
            Err(StunError::Malformed(_))
        ));
        let v6: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        assert_eq!(
            decode_response(&binding_response(tid, v6, None, false), tid)
                .unwrap()
                .mapped,
            v6
        );
    }

    proptest! {
        #[test]
        fn arbitrary_datagrams_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_response(&bytes, [0u8; 12]);
        }
    }
}
