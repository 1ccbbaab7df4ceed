//! `overlayaddr`: a meshd feature message that tells a Bitcoin peer where our libp2p
//! overlay is (its peer id and a few multiaddrs), so two meshd nodes that meet on the
//! Bitcoin network also meet on the overlay.
//!
//! Negotiated as BIP339's `wtxidrelay` and BIP155's `sendaddrv2` are: sent after our
//! `version` and before our `verack`, only to peers announcing protocol 70016 or later,
//! and only when our overlay runs. Software that does not know it ignores it, as Core
//! ignores any unknown message before `verack`; a peer that sends it after `verack` is
//! disconnected, as Core disconnects a late `wtxidrelay`.
//!
//! Payload: `peer_id` (compact size length, the libp2p peer id's bytes: a multihash), then a
//! compact size count of addresses, each a compact size length and a binary multiaddr. Bytes
//! after the last address are ignored, so a later version can append fields. Every length
//! is checked before anything is allocated.

use bitcoin::consensus::encode::{Decodable, Encodable, VarInt};
use libp2p::{Multiaddr, PeerId};

/// The command it travels under.
pub const OVERLAY_ADDR_COMMAND: &str = "overlayaddr";
/// Bytes of a peer id at most: an identity multihash of an Ed25519 key is 38, a SHA-256
/// one 34; 64 leaves room for other key types and nothing more.
pub const MAX_OVERLAY_PEER_ID_LEN: usize = 64;
/// Addresses per message at most: a node listens on a few (TCP, QUIC, IPv4, IPv6) and holds
/// at most two relay reservations.
pub const MAX_OVERLAY_ADDRS: usize = 8;
/// Bytes of one binary multiaddr at most: a relayed address (`/ip6/../udp/../quic-v1/p2p/
/// ../p2p-circuit`) is about 90.
pub const MAX_OVERLAY_ADDR_LEN: usize = 160;
/// The longest payload accepted (the frame decoder reads no more): the fields above with
/// their length prefixes, plus room for fields a later version appends.
pub const MAX_OVERLAY_ADDR_PAYLOAD: u32 = 2048;

/// Our overlay's identity and addresses, as a peer tells us (or we tell it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverlayAnnounce {
    /// The overlay's peer id.
    pub peer_id: PeerId,
    /// Where it listens (at most [`MAX_OVERLAY_ADDRS`]).
    pub addrs: Vec<Multiaddr>,
}

/// Why an `overlayaddr` payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverlayAnnounceError {
    /// Longer than [`MAX_OVERLAY_ADDR_PAYLOAD`].
    #[error("payload of {0} bytes is over the limit")]
    TooLong(usize),
    /// A length or count past its limit.
    #[error("{what} of {len} is over the limit of {max}")]
    OverLimit {
        /// Which field.
        what: &'static str,
        /// What it claimed.
        len: u64,
        /// Its limit.
        max: usize,
    },
    /// Ends inside a field.
    #[error("truncated")]
    Truncated,
    /// The peer id is not one.
    #[error("not a peer id")]
    BadPeerId,
    /// An address is not a multiaddr.
    #[error("address {0} is not a multiaddr")]
    BadAddr(usize),
}

fn read_len(r: &mut &[u8], what: &'static str, max: usize) -> Result<usize, OverlayAnnounceError> {
    let n = VarInt::consensus_decode_from_finite_reader(r)
        .map_err(|_| OverlayAnnounceError::Truncated)?
        .0;
    if n > max as u64 {
        return Err(OverlayAnnounceError::OverLimit { what, len: n, max });
    }
    Ok(n as usize)
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Result<&'a [u8], OverlayAnnounceError> {
    if r.len() < n {
        return Err(OverlayAnnounceError::Truncated);
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Ok(head)
}

impl OverlayAnnounce {
    /// Decodes a payload.
    pub fn decode(payload: &[u8]) -> Result<OverlayAnnounce, OverlayAnnounceError> {
        if payload.len() > MAX_OVERLAY_ADDR_PAYLOAD as usize {
            return Err(OverlayAnnounceError::TooLong(payload.len()));
        }
        let mut r = payload;
        let id_len = read_len(&mut r, "peer id length", MAX_OVERLAY_PEER_ID_LEN)?;
        let peer_id = PeerId::from_bytes(take(&mut r, id_len)?)
            .map_err(|_| OverlayAnnounceError::BadPeerId)?;
        let count = read_len(&mut r, "address count", MAX_OVERLAY_ADDRS)?;
        let mut addrs = Vec::with_capacity(count);
        for i in 0..count {
            let len = read_len(&mut r, "address length", MAX_OVERLAY_ADDR_LEN)?;
            let bytes = take(&mut r, len)?;
            let addr = Multiaddr::try_from(bytes.to_vec())
                .map_err(|_| OverlayAnnounceError::BadAddr(i))?;
            addrs.push(addr);
        }
        // Anything after is a later version's: ignored.
        Ok(OverlayAnnounce { peer_id, addrs })
    }

    /// Encodes the payload; addresses past the limits are left out, never sent.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let id = self.peer_id.to_bytes();
        // Writing to a Vec cannot fail.
        let _ = VarInt(id.len() as u64).consensus_encode(&mut out);
        out.extend_from_slice(&id);
        let addrs: Vec<Vec<u8>> = self
            .addrs
            .iter()
            .map(|a| a.to_vec())
            .filter(|a| a.len() <= MAX_OVERLAY_ADDR_LEN)
            .take(MAX_OVERLAY_ADDRS)
            .collect();
        let _ = VarInt(addrs.len() as u64).consensus_encode(&mut out);
        for a in addrs {
            let _ = VarInt(a.len() as u64).consensus_encode(&mut out);
            out.extend_from_slice(&a);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> OverlayAnnounce {
        let peer_id = libp2p::identity::Keypair::generate_ed25519()
            .public()
            .to_peer_id();
        OverlayAnnounce {
            peer_id,
            addrs: vec![
                "/ip4/203.0.113.5/tcp/8335".parse().unwrap(),
                "/ip6/2001:db8::1/udp/8335/quic-v1".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn it_round_trips_and_ignores_what_a_later_version_appends() {
        let a = sample();
        let mut bytes = a.encode();
        assert_eq!(OverlayAnnounce::decode(&bytes).unwrap(), a);
        bytes.extend_from_slice(b"future field");
        assert_eq!(OverlayAnnounce::decode(&bytes).unwrap(), a);
    }

    #[test]
    fn limits_are_checked_before_anything_is_read() {
        let a = sample();
        let id = a.peer_id.to_bytes();
        // A count of a million addresses is refused from its prefix.
        let mut bytes = Vec::new();
        VarInt(id.len() as u64)
            .consensus_encode(&mut bytes)
            .unwrap();
        bytes.extend_from_slice(&id);
        VarInt(1_000_000).consensus_encode(&mut bytes).unwrap();
        assert!(matches!(
            OverlayAnnounce::decode(&bytes),
            Err(OverlayAnnounceError::OverLimit {
                what: "address count",
                ..
            })
        ));
        // A peer id longer than any is refused.
        let mut long = Vec::new();
        VarInt(65).consensus_encode(&mut long).unwrap();
        long.extend_from_slice(&[0u8; 65]);
        assert!(matches!(
            OverlayAnnounce::decode(&long),
            Err(OverlayAnnounceError::OverLimit { .. })
        ));
        assert_eq!(
            OverlayAnnounce::decode(&vec![0u8; MAX_OVERLAY_ADDR_PAYLOAD as usize + 1]),
            Err(OverlayAnnounceError::TooLong(
                MAX_OVERLAY_ADDR_PAYLOAD as usize + 1
            ))
        );
        // Garbage in place of the peer id, and a truncated address.
        assert_eq!(
            OverlayAnnounce::decode(&[3, 1, 2, 3, 0]),
            Err(OverlayAnnounceError::BadPeerId)
        );
        let full = a.encode();
        assert_eq!(
            OverlayAnnounce::decode(&full[..full.len() - 1]),
            Err(OverlayAnnounceError::Truncated)
        );
    }

    #[test]
    fn encoding_keeps_to_the_limits() {
        let mut a = sample();
        a.addrs = (0..20)
            .map(|i| format!("/ip4/198.51.100.{i}/tcp/1").parse().unwrap())
            .collect();
        let bytes = a.encode();
        assert!(bytes.len() <= MAX_OVERLAY_ADDR_PAYLOAD as usize);
        assert_eq!(
            OverlayAnnounce::decode(&bytes).unwrap().addrs.len(),
            MAX_OVERLAY_ADDRS
        );
    }

    proptest! {
        #[test]
        fn no_payload_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2100)) {
            let _ = OverlayAnnounce::decode(&bytes);
        }

        #[test]
        fn a_decoded_payload_encodes_back_to_its_fields(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(a) = OverlayAnnounce::decode(&bytes) {
                prop_assert_eq!(OverlayAnnounce::decode(&a.encode()).unwrap(), a);
            }
        }
    }
}
