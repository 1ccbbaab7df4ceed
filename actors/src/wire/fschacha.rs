//! BIP324's packet ciphers on RustCrypto's ChaCha20 and Poly1305, which pick AVX-512 (ChaCha20,
//! with the cfg in `.cargo/config.toml`), AVX2 or SSE2 at run time: FSChaCha20 for the 3-byte lengths and FSChaCha20Poly1305 for the contents,
//! each rekeyed every [`REKEY_INTERVAL`] packets, and the session keys derived from the
//! ElligatorSwift ECDH as BIP324 says. The `bip324` crate still runs the handshake; its own
//! packet AEAD has no SIMD, so an established session moves to these (see
//! [`crate::wire::v2`]), its counters carried over from the handshake's packets.
//!
//! Sans-IO: bytes in, bytes out. Checked against BIP324's published packet vectors and
//! against the `bip324` crate's ciphers on random traffic.

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};
use chacha20::ChaCha20;
use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{ChaCha20Poly1305, KeyInit};

/// Packets (or lengths) encrypted under one key before it is replaced (BIP324).
pub const REKEY_INTERVAL: u64 = 224;
/// Bytes of a packet's encrypted length.
pub const LENGTH_LEN: usize = 3;
/// Bytes of a packet's header (the ignore bit).
pub const HEADER_LEN: usize = 1;
/// Bytes of a packet's authentication tag.
pub const TAG_LEN: usize = 16;
/// The most contents a packet carries: its length is 3 bytes (BIP324). A longer message
/// cannot be sent on v2 at all; sealing one is refused rather than sent with a wrapped length.
pub const MAX_CONTENTS: usize = (1 << 24) - 1;

/// Contents above [`MAX_CONTENTS`]: the packet is not sealed, and no cipher advances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("v2 packet contents of {0} bytes exceed BIP324's 3-byte length")]
pub struct ContentsTooLong(pub usize);

/// The header bit that marks a decoy packet.
const IGNORE_BIT: u8 = 0x80;

/// The keys of one direction.
#[derive(Clone)]
pub struct DirectionKeys {
    /// FSChaCha20's key, for lengths.
    pub length: [u8; 32],
    /// FSChaCha20Poly1305's key, for contents.
    pub packet: [u8; 32],
}

/// The keys of a session, by direction, and its id.
#[derive(Clone)]
pub struct SessionKeys {
    /// BIP324's session id.
    pub session_id: [u8; 32],
    /// What we encrypt with.
    pub send: DirectionKeys,
    /// What we decrypt with.
    pub recv: DirectionKeys,
}

/// BIP324's key derivation: the ElligatorSwift x-only ECDH of our secret key with the two
/// public encodings (the initiator's first), then HKDF-SHA256 salted with
/// `bitcoin_v2_shared_secret` and the network magic. `None` for a secret key that is not one.
pub fn session_keys(
    secret: &[u8; 32],
    ours: &[u8; 64],
    theirs: &[u8; 64],
    initiator: bool,
    magic: [u8; 4],
) -> Option<SessionKeys> {
    use bitcoin::secp256k1::ellswift::{ElligatorSwift, ElligatorSwiftParty};
    let sk = bitcoin::secp256k1::SecretKey::from_slice(secret).ok()?;
    let (ours, theirs) = (
        ElligatorSwift::from_array(*ours),
        ElligatorSwift::from_array(*theirs),
    );
    let (a, b, party) = if initiator {
        (ours, theirs, ElligatorSwiftParty::A)
    } else {
        (theirs, ours, ElligatorSwiftParty::B)
    };
    let shared =
        ElligatorSwift::shared_secret(a, b, sk, party, Some(b"bip324_ellswift_xonly_ecdh"));
    let mut salt = [0u8; 28];
    salt[..24].copy_from_slice(b"bitcoin_v2_shared_secret");
    salt[24..].copy_from_slice(&magic);
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(&salt), shared.as_secret_bytes());
    let expand = |info: &[u8]| {
        let mut out = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's limit of 8,160.
        hk.expand(info, &mut out).ok().map(|_| out)
    };
    let initiator_keys = DirectionKeys {
        length: expand(b"initiator_L")?,
        packet: expand(b"initiator_P")?,
    };
    let responder_keys = DirectionKeys {
        length: expand(b"responder_L")?,
        packet: expand(b"responder_P")?,
    };
    let (send, recv) = if initiator {
        (initiator_keys, responder_keys)
    } else {
        (responder_keys, initiator_keys)
    };
    Some(SessionKeys {
        session_id: expand(b"session_id")?,
        send,
        recv,
    })
}

/// FSChaCha20: one ChaCha20 keystream per key, taken 3 bytes per length, the key replaced
/// by the next 32 bytes of the stream after every [`REKEY_INTERVAL`] lengths.
#[derive(Clone)]
pub struct FsChaCha20 {
    key: [u8; 32],
    /// Bytes of the current key's stream used.
    offset: u64,
    /// Lengths encrypted so far.
    chunks: u64,
}

impl FsChaCha20 {
    /// A cipher that has already done `chunks` lengths (a session moved over mid-way).
    pub fn at(key: [u8; 32], chunks: u64) -> FsChaCha20 {
        let mut c = FsChaCha20 {
            key,
            offset: 0,
            chunks: 0,
        };
        // Only the rekeys are replayed: each key's next is the 32 bytes after its
        // REKEY_INTERVAL lengths, so a session moved over late costs a few ChaCha20 blocks
        // per 224 packets, not one per packet.
        for _ in 0..chunks / REKEY_INTERVAL {
            let mut stream = c.stream();
            stream.seek(REKEY_INTERVAL * LENGTH_LEN as u64);
            let mut next = [0u8; 32];
            stream.apply_keystream(&mut next);
            c.key = next;
            c.chunks += REKEY_INTERVAL;
        }
        c.offset = (chunks % REKEY_INTERVAL) * LENGTH_LEN as u64;
        c.chunks = chunks;
        c
    }

    /// The same as [`Self::at`], one length at a time (the reference the tests check `at`
    /// against).
    #[cfg(test)]
    fn at_stepwise(key: [u8; 32], chunks: u64) -> FsChaCha20 {
        let mut c = FsChaCha20 {
            key,
            offset: 0,
            chunks: 0,
        };
        let mut scratch = [0u8; LENGTH_LEN];
        for _ in 0..chunks {
            c.crypt(&mut scratch);
        }
        c
    }

    fn stream(&self) -> ChaCha20 {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&(self.chunks / REKEY_INTERVAL).to_le_bytes());
        ChaCha20::new(&self.key.into(), &nonce.into())
    }

    /// Encrypts or decrypts one length.
    pub fn crypt(&mut self, length: &mut [u8; LENGTH_LEN]) {
        let mut stream = self.stream();
        stream.seek(self.offset);
        stream.apply_keystream(length);
        self.offset += LENGTH_LEN as u64;
        if (self.chunks + 1).is_multiple_of(REKEY_INTERVAL) {
            let mut key = [0u8; 32];
            stream.apply_keystream(&mut key);
            self.key = key;
            self.offset = 0;
        }
        self.chunks += 1;
    }
}

/// FSChaCha20Poly1305: RFC 8439's AEAD with a nonce of the packet's number within its key
/// and the key's number; after every [`REKEY_INTERVAL`] packets the key becomes the first
/// 32 bytes of the stream under the nonce `FFFFFFFF` and the key's number.
#[derive(Clone)]
pub struct FsChaCha20Poly1305 {
    aead: ChaCha20Poly1305,
    packets: u64,
}

impl FsChaCha20Poly1305 {
    /// A cipher that has already done `packets` packets.
    pub fn at(key: [u8; 32], packets: u64) -> FsChaCha20Poly1305 {
        let mut c = FsChaCha20Poly1305 {
            aead: ChaCha20Poly1305::new(&key.into()),
            packets: 0,
        };
        // Only the rekeys are replayed (see FsChaCha20::at): jump to each key's last packet
        // and advance past it.
        for _ in 0..packets / REKEY_INTERVAL {
            c.packets += REKEY_INTERVAL - 1;
            c.advance();
        }
        c.packets = packets;
        c
    }

    /// [`Self::at`], one packet at a time (the tests' reference).
    #[cfg(test)]
    fn at_stepwise(key: [u8; 32], packets: u64) -> FsChaCha20Poly1305 {
        let mut c = FsChaCha20Poly1305 {
            aead: ChaCha20Poly1305::new(&key.into()),
            packets: 0,
        };
        for _ in 0..packets {
            c.advance();
        }
        c
    }

    fn nonce(&self) -> [u8; 12] {
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&((self.packets % REKEY_INTERVAL) as u32).to_le_bytes());
        nonce[4..].copy_from_slice(&(self.packets / REKEY_INTERVAL).to_le_bytes());
        nonce
    }

    /// One packet done: the next nonce, and a new key after every [`REKEY_INTERVAL`].
    fn advance(&mut self) {
        if (self.packets + 1).is_multiple_of(REKEY_INTERVAL) {
            let mut nonce = self.nonce();
            nonce[..4].copy_from_slice(&[0xff; 4]);
            let mut key = [0u8; 32];
            // The stream's bytes (the tag, over no associated data, is dropped).
            let _ = self
                .aead
                .encrypt_inout_detached(&nonce.into(), b"", key.as_mut_slice().into());
            self.aead = ChaCha20Poly1305::new(&key.into());
        }
        self.packets += 1;
    }

    /// Encrypts `content` in place; returns the tag.
    pub fn seal(&mut self, aad: &[u8], content: &mut [u8]) -> [u8; TAG_LEN] {
        let nonce = self.nonce();
        let tag = self
            .aead
            .encrypt_inout_detached(&nonce.into(), aad, content.into())
            .map(|t| t.into())
            // Only for contents above 256 GiB, which no packet is.
            .unwrap_or([0u8; TAG_LEN]);
        self.advance();
        tag
    }

    /// Checks `tag` and decrypts `content` in place; on a bad tag this cipher does not
    /// advance (the length cipher of the same packet has: a session that fails a tag ends).
    pub fn open(&mut self, aad: &[u8], content: &mut [u8], tag: &[u8; TAG_LEN]) -> bool {
        let nonce = self.nonce();
        let ok = self
            .aead
            .decrypt_inout_detached(&nonce.into(), aad, content.into(), tag.into())
            .is_ok();
        if ok {
            self.advance();
        }
        ok
    }
}

/// Encrypts a session's outgoing packets.
#[derive(Clone)]
pub struct PacketSealer {
    length: FsChaCha20,
    packet: FsChaCha20Poly1305,
}

impl PacketSealer {
    /// A sealer that has already sent `packets` packets under `keys`.
    pub fn at(keys: &DirectionKeys, packets: u64) -> PacketSealer {
        PacketSealer {
            length: FsChaCha20::at(keys.length, packets),
            packet: FsChaCha20Poly1305::at(keys.packet, packets),
        }
    }

    /// Bytes a packet of `contents` bytes takes on the wire.
    pub fn packet_len(contents: usize) -> usize {
        LENGTH_LEN + HEADER_LEN + contents + TAG_LEN
    }

    /// Seals a packet built in place: `packet` holds room for the length, then the header
    /// byte (0 for a genuine packet) and the contents; the length is written, the rest
    /// encrypted and the tag appended.
    pub fn seal_built(&mut self, packet: &mut Vec<u8>, aad: &[u8]) -> Result<(), ContentsTooLong> {
        let contents = packet.len().saturating_sub(LENGTH_LEN + HEADER_LEN);
        if contents > MAX_CONTENTS {
            return Err(ContentsTooLong(contents));
        }
        let contents = contents as u32;
        let mut length = [
            contents as u8,
            (contents >> 8) as u8,
            (contents >> 16) as u8,
        ];
        self.length.crypt(&mut length);
        if let Some(head) = packet.get_mut(..LENGTH_LEN) {
            head.copy_from_slice(&length);
        }
        let tag = self
            .packet
            .seal(aad, packet.get_mut(LENGTH_LEN..).unwrap_or(&mut []));
        packet.extend_from_slice(&tag);
        Ok(())
    }

    /// One packet of `contents` (a decoy if `decoy`) as a new buffer.
    pub fn encrypt_to_vec(
        &mut self,
        contents: &[u8],
        decoy: bool,
    ) -> Result<Vec<u8>, ContentsTooLong> {
        let mut out = Vec::new();
        self.seal_into(contents, decoy, b"", &mut out)?;
        Ok(out)
    }

    /// One packet of `contents` (a decoy if `decoy`), appended to `out`.
    pub fn seal_into(
        &mut self,
        contents: &[u8],
        decoy: bool,
        aad: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), ContentsTooLong> {
        if contents.len() > MAX_CONTENTS {
            return Err(ContentsTooLong(contents.len()));
        }
        let start = out.len();
        let len = contents.len() as u32;
        let mut length = [len as u8, (len >> 8) as u8, (len >> 16) as u8];
        self.length.crypt(&mut length);
        out.reserve(Self::packet_len(contents.len()));
        out.extend_from_slice(&length);
        out.push(if decoy { IGNORE_BIT } else { 0 });
        out.extend_from_slice(contents);
        let tag = self.packet.seal(aad, &mut out[start + LENGTH_LEN..]);
        out.extend_from_slice(&tag);
        Ok(())
    }
}

/// Decrypts a session's incoming packets.
#[derive(Clone)]
pub struct PacketOpener {
    length: FsChaCha20,
    packet: FsChaCha20Poly1305,
}

impl PacketOpener {
    /// An opener that has already read `packets` packets under `keys`.
    pub fn at(keys: &DirectionKeys, packets: u64) -> PacketOpener {
        PacketOpener {
            length: FsChaCha20::at(keys.length, packets),
            packet: FsChaCha20Poly1305::at(keys.packet, packets),
        }
    }

    /// Decrypts a packet's length; returns the bytes that follow it (header, contents
    /// and tag).
    pub fn open_len(&mut self, mut length: [u8; LENGTH_LEN]) -> usize {
        self.length.crypt(&mut length);
        let contents = length[0] as usize | (length[1] as usize) << 8 | (length[2] as usize) << 16;
        HEADER_LEN + contents + TAG_LEN
    }

    /// Authenticates and decrypts what follows a length in place: on success the header and
    /// contents are left (the tag cut off) and the answer says whether it is a decoy (the
    /// ignore bit, 0x80, as BIP324 and Core read it); `None` for a packet that fails its tag,
    /// after which the opener must be dropped (its length cipher has moved on).
    pub fn open(&mut self, body: &mut Vec<u8>, aad: &[u8]) -> Option<bool> {
        let at = body.len().checked_sub(TAG_LEN)?;
        if at < HEADER_LEN {
            return None;
        }
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&body[at..]);
        body.truncate(at);
        if !self.packet.open(aad, body, &tag) {
            return None;
        }
        Some(body[0] & IGNORE_BIT != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Jumping to a packet count gives the ciphers the one-at-a-time walk gives: the
        /// next lengths and packets encrypt alike, across rekeys.
        #[test]
        fn at_matches_the_stepwise_walk(key in any::<[u8; 32]>(), n in 0u64..1200) {
            let (mut fast, mut slow) = (FsChaCha20::at(key, n), FsChaCha20::at_stepwise(key, n));
            let (mut aead_fast, mut aead_slow) =
                (FsChaCha20Poly1305::at(key, n), FsChaCha20Poly1305::at_stepwise(key, n));
            for i in 0..(2 * REKEY_INTERVAL as usize + 3) {
                let (mut a, mut b) = ([i as u8; LENGTH_LEN], [i as u8; LENGTH_LEN]);
                fast.crypt(&mut a);
                slow.crypt(&mut b);
                prop_assert_eq!(a, b);
                if i % 37 == 0 || i % REKEY_INTERVAL as usize >= REKEY_INTERVAL as usize - 2 {
                    let (mut x, mut y) = (vec![i as u8; 5], vec![i as u8; 5]);
                    prop_assert_eq!(aead_fast.seal(b"", &mut x), aead_slow.seal(b"", &mut y));
                    prop_assert_eq!(x, y);
                } else {
                    aead_fast.advance();
                    aead_slow.advance();
                }
            }
        }
    }

    #[test]
    fn contents_past_three_length_bytes_are_refused_unsealed() {
        let keys = DirectionKeys {
            length: [1; 32],
            packet: [2; 32],
        };
        let mut sealer = PacketSealer::at(&keys, 0);
        let big = vec![0u8; MAX_CONTENTS + 1];
        assert_eq!(
            sealer.encrypt_to_vec(&big, false),
            Err(ContentsTooLong(MAX_CONTENTS + 1))
        );
        let mut built = vec![0u8; LENGTH_LEN + HEADER_LEN + MAX_CONTENTS + 1];
        assert!(sealer.seal_built(&mut built, b"").is_err());
        // Nothing advanced: the next packet is the session's first.
        let mut fresh = PacketSealer::at(&keys, 0);
        assert_eq!(
            sealer.encrypt_to_vec(b"x", false),
            fresh.encrypt_to_vec(b"x", false)
        );
    }

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len() / 2)
            .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        unhex(s).try_into().unwrap()
    }

    /// BIP324's packet_encoding_test_vectors.csv: the keys derived, the session id, and
    /// the `in_idx`th packet's ciphertext (whole, or its end for the long ones).
    #[test]
    fn bip324_packet_vectors() {
        let csv = include_str!("../../tests/data/bip324/packet_encoding_test_vectors.csv");
        let mut rows = csv.lines();
        let header: Vec<&str> = rows.next().unwrap().split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
        let mut checked = 0;
        for line in rows.filter(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = line.split(',').collect();
            let initiator = f[col("in_initiating")] == "1";
            // Mainnet's magic.
            let keys = session_keys(
                &arr(f[col("in_priv_ours")]),
                &arr(f[col("in_ellswift_ours")]),
                &arr(f[col("in_ellswift_theirs")]),
                initiator,
                [0xf9, 0xbe, 0xb4, 0xd9],
            )
            .unwrap();
            let (init, resp) = if initiator {
                (&keys.send, &keys.recv)
            } else {
                (&keys.recv, &keys.send)
            };
            assert_eq!(init.length, arr::<32>(f[col("mid_initiator_l")]));
            assert_eq!(init.packet, arr::<32>(f[col("mid_initiator_p")]));
            assert_eq!(resp.length, arr::<32>(f[col("mid_responder_l")]));
            assert_eq!(resp.packet, arr::<32>(f[col("mid_responder_p")]));
            assert_eq!(keys.session_id, arr::<32>(f[col("out_session_id")]));
            let idx: u64 = f[col("in_idx")].parse().unwrap();
            let multiply: usize = f[col("in_multiply")].parse().unwrap();
            let contents = unhex(f[col("in_contents")]).repeat(multiply);
            let aad = unhex(f[col("in_aad")]);
            let decoy = f[col("in_ignore")] == "1";
            let mut sealer = PacketSealer::at(&keys.send, idx);
            let mut out = Vec::new();
            sealer
                .seal_into(&contents, decoy, &aad, &mut out)
                .expect("fits");
            let whole = f[col("out_ciphertext")];
            let end = f[col("out_ciphertext_endswith")];
            if !whole.is_empty() {
                assert_eq!(out, unhex(whole), "vector {}", f[0]);
            } else {
                assert!(out.ends_with(&unhex(end)), "vector {}", f[0]);
            }
            // And back: a receiver at the same count opens it.
            let mut opener = PacketOpener::at(&keys.send, idx);
            let mut len = [0u8; LENGTH_LEN];
            len.copy_from_slice(&out[..LENGTH_LEN]);
            let rest = opener.open_len(len);
            assert_eq!(rest, out.len() - LENGTH_LEN);
            let mut body = out[LENGTH_LEN..].to_vec();
            assert_eq!(opener.open(&mut body, &aad), Some(decoy));
            assert_eq!(&body[HEADER_LEN..], &contents[..]);
            checked += 1;
        }
        assert_eq!(checked, 7, "every vector");
    }

    #[test]
    fn a_tampered_packet_fails_and_leaves_the_opener_where_it_was() {
        let keys = DirectionKeys {
            length: [7; 32],
            packet: [9; 32],
        };
        let mut sealer = PacketSealer::at(&keys, 0);
        let mut opener = PacketOpener::at(&keys, 0);
        let mut out = Vec::new();
        sealer
            .seal_into(b"ping", false, b"", &mut out)
            .expect("fits");
        let mut len = [0u8; LENGTH_LEN];
        len.copy_from_slice(&out[..LENGTH_LEN]);
        assert_eq!(opener.open_len(len), HEADER_LEN + 4 + TAG_LEN);
        let mut bad = out[LENGTH_LEN..].to_vec();
        bad[2] ^= 1;
        let mut good = out[LENGTH_LEN..].to_vec();
        assert_eq!(opener.clone().open(&mut bad, b""), None);
        assert_eq!(opener.open(&mut good, b""), Some(false));
        assert_eq!(&good[1..], b"ping");
        let mut short = vec![0u8; 5];
        assert_eq!(
            opener.open(&mut short, b""),
            None,
            "shorter than a tag and header"
        );
    }
}
