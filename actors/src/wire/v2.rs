//! BIP324 v2 encrypted transport, sans-IO: telling v1 from v2 by a connection's first bytes,
//! the key exchange and version handshake ([`V2Handshake`]), and the packet layer of an
//! established session ([`V2Decoder`], [`V2Encoder`]).
//!
//! The handshake's cryptography (ElligatorSwift, the ECDH, HKDF, the handshake packets) is
//! the `bip324` crate's; an established session's packets go through meshd's SIMD ciphers
//! ([`crate::wire::fschacha`]), keyed and counted on from the handshake. Its handshake is a typestate machine whose later states borrow the
//! peer's garbage; a core that is fed bytes as they arrive cannot keep such a borrow between
//! calls, so [`V2Handshake`] keeps our secret key and garbage and, when the peer's packets
//! arrive in pieces, replays the (deterministic) exchange up to the state it needs. Replays
//! are bounded: at most two per handshake packet, and at most [`MAX_HANDSHAKE_DECOYS`]
//! decoys.
//!
//! Above the packet layer everything is as in v1: a decrypted message becomes a [`Frame`]
//! admitted by the same [`FrameDecoder`] rules (per-command limits, unrequested blocks,
//! oversized transactions, ignored commands), so handshake, ping, sync and relay never know
//! which transport carried it. Outgoing frames are built as v1 frames and re-framed here,
//! so shared block frames are serialized once for every peer.

use std::sync::OnceLock;

use bip324::{
    GarbageResult, Handshake, ReceivedGarbage, ReceivedKey, Role, SentVersion, VersionResult,
    NUM_LENGTH_BYTES,
};
use bitcoin::secp256k1::{Secp256k1, SecretKey, SignOnly};
use rand::Rng;

use super::frame::{Command, Frame, FrameDecoder, FrameError};
use super::fschacha::{session_keys, ContentsTooLong, PacketOpener, PacketSealer};
use crate::constants::{FRAME_HEADER_LEN, MAX_PRE_HANDSHAKE_PAYLOAD};

/// Garbage a peer may send before its terminator (BIP324).
pub const MAX_GARBAGE_LEN: usize = 4095;
/// Length of a garbage terminator.
#[cfg(test)]
const TERMINATOR_LEN: usize = 16;
/// Length of an ElligatorSwift-encoded public key.
pub const KEY_LEN: usize = 64;
/// Bytes that tell a v1 peer from a v2 one: a v1 peer's first message is `version`, so its
/// first 16 bytes are the magic, `version` and five NULs.
pub const V1_PREFIX_LEN: usize = 16;
/// Bytes a packet adds to its contents: the encrypted length (3), the header byte and the
/// authentication tag (16).
pub const PACKET_OVERHEAD: usize = NUM_LENGTH_BYTES + 1 + 16;
/// Longest message type: a zero byte then a 12-byte command (the long form).
const LONG_TYPE_LEN: usize = 13;

/// Garbage sent with our key, before the peer's key shows that it speaks v2; the rest of
/// our garbage follows with the terminator (it is authenticated whole, so how it is split
/// does not matter to a v2 peer).
///
/// # Security
/// A v1-only peer reads our first bytes as v1 message headers: bcoin charges 10 points per
/// 24-byte header with a bad magic and bans the address at 100, so a first flight of 240
/// bytes or more would get us banned before the v1 fallback could connect. Key and this
/// much garbage stay below it.
pub const FIRST_FLIGHT_GARBAGE: usize = 240 - 1 - KEY_LEN;

/// Decoy packets accepted before the peer's version packet.
///
/// # Security
/// No implementation sends decoys during the handshake today; each one may cost us a replay
/// of the key exchange (about 50 µs) when it arrives in pieces, so a peer may not send many.
pub const MAX_HANDSHAKE_DECOYS: usize = 16;

/// Message types with a one-byte id (BIP324's table; Bitcoin Core's `V2_MESSAGE_IDS`).
/// Index is the id; 0 means a 12-byte command follows. Ids 29 to 32 are assigned to
/// proposals Core does not implement and, like any unknown id, are ignored.
pub const V2_MESSAGE_IDS: [&str; 29] = [
    "",
    "addr",
    "block",
    "blocktxn",
    "cmpctblock",
    "feefilter",
    "filteradd",
    "filterclear",
    "filterload",
    "getblocks",
    "getblocktxn",
    "getdata",
    "getheaders",
    "headers",
    "inv",
    "mempool",
    "merkleblock",
    "notfound",
    "ping",
    "pong",
    "sendcmpct",
    "tx",
    "getcfilters",
    "cfilter",
    "getcfheaders",
    "cfheaders",
    "getcfcheckpt",
    "cfcheckpt",
    "addrv2",
];

/// The one-byte id of `command`, if it has one.
pub fn short_id(command: &str) -> Option<u8> {
    V2_MESSAGE_IDS
        .iter()
        .skip(1)
        .position(|c| *c == command)
        .map(|i| (i + 1) as u8)
}

/// Why a v2 handshake failed. Every variant disconnects; none is charged as misbehaviour
/// (Core only disconnects), but each is logged with the peer and counted by its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum V2Error {
    /// No garbage terminator within [`MAX_GARBAGE_LEN`] bytes.
    #[error("no garbage terminator within {MAX_GARBAGE_LEN} bytes")]
    GarbageTooLong,
    /// A handshake packet failed authentication (wrong keys, or tampering).
    #[error("a handshake packet failed authentication")]
    BadAead,
    /// A handshake packet longer than the pre-handshake limit.
    #[error("handshake packet of {length} bytes exceeds {limit}")]
    OversizedLength {
        /// Contents length the packet claims.
        length: usize,
        /// Limit in force.
        limit: usize,
    },
    /// More than [`MAX_HANDSHAKE_DECOYS`] decoys before the version packet.
    #[error("more than {MAX_HANDSHAKE_DECOYS} decoy packets before the version packet")]
    TooManyDecoys,
    /// The peer answered in v1 (its first bytes are our network magic).
    #[error("the peer answered in v1")]
    AnsweredV1,
    /// The peer closed the connection before the v2 handshake completed.
    #[error("the peer closed the connection during the v2 handshake")]
    ClosedDuringHandshake,
    /// The key exchange failed (an invalid key from the peer, or a library error).
    #[error("key exchange failed: {0}")]
    KeyExchange(String),
}

impl V2Error {
    /// A short stable name, used as a metric label and in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            V2Error::GarbageTooLong => "v2_garbage_too_long",
            V2Error::BadAead => "v2_bad_aead",
            V2Error::OversizedLength { .. } => "v2_oversized_length",
            V2Error::TooManyDecoys => "v2_too_many_decoys",
            V2Error::AnsweredV1 => "v2_answered_v1",
            V2Error::ClosedDuringHandshake => "v2_closed_during_handshake",
            V2Error::KeyExchange(_) => "v2_key_exchange",
        }
    }

    /// Whether a failed outbound v2 attempt ending this way should be retried in v1 (the
    /// peer may not speak v2). Authentication and size violations are not: a v1-only peer
    /// never gets that far.
    pub fn suggests_v1(&self) -> bool {
        matches!(self, V2Error::AnsweredV1 | V2Error::ClosedDuringHandshake)
    }
}

impl From<bip324::Error> for V2Error {
    fn from(e: bip324::Error) -> Self {
        match e {
            bip324::Error::V1Protocol => V2Error::AnsweredV1,
            bip324::Error::NoGarbageTerminator => V2Error::GarbageTooLong,
            bip324::Error::Decryption(_) => V2Error::BadAead,
            other => V2Error::KeyExchange(other.to_string()),
        }
    }
}

/// What a connection's first bytes say about an inbound peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A v1 `version` message.
    V1,
    /// Anything else: treated as a v2 public key.
    V2,
    /// Too few bytes to tell.
    NeedMore,
}

/// Tells v1 from v2 by the first bytes an inbound peer sent (Core's rule).
pub fn detect(magic: [u8; 4], first: &[u8]) -> Detected {
    let mut prefix = [0u8; V1_PREFIX_LEN];
    prefix[..4].copy_from_slice(&magic);
    prefix[4..11].copy_from_slice(b"version");
    let n = first.len().min(V1_PREFIX_LEN);
    if first[..n] != prefix[..n] {
        Detected::V2
    } else if n == V1_PREFIX_LEN {
        Detected::V1
    } else {
        Detected::NeedMore
    }
}

/// One signing context for every handshake (creating one is not free).
fn curve() -> &'static Secp256k1<SignOnly> {
    static CURVE: OnceLock<Secp256k1<SignOnly>> = OnceLock::new();
    CURVE.get_or_init(Secp256k1::signing_only)
}

/// Hands the bip324 handshake our stored secret key, so the exchange can be replayed.
struct StoredSecret([u8; 32]);

impl bip324::FillBytes for StoredSecret {
    fn fill_bytes(&mut self, dest: &mut [u8; 32]) {
        *dest = self.0;
    }
}

/// An established session: the two ciphers and what the peer sent after its version packet.
/// The ciphers are meshd's SIMD ones ([`crate::wire::fschacha`]), keyed as the `bip324`
/// handshake derived (its session id is checked against ours) and counted on from the
/// handshake's packets.
pub struct V2Ready {
    /// Decrypts the peer's packets.
    pub inbound: PacketOpener,
    /// Encrypts ours.
    pub outbound: PacketSealer,
    /// BIP324 session id (Core's `getpeerinfo` shows it as hex).
    pub session_id: [u8; 32],
    /// Bytes received after the version packet: the start of the peer's first messages.
    pub leftover: Vec<u8>,
    /// The `bip324` crate's own ciphers at the same point, to check ours against.
    #[cfg(test)]
    pub(crate) reference: (bip324::InboundCipher, bip324::OutboundCipher),
}

impl std::fmt::Debug for V2Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V2Ready")
            .field("session_id", &hex(&self.session_id))
            .field("leftover", &self.leftover.len())
            .finish_non_exhaustive()
    }
}

/// Which transport a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// Plaintext v1 framing.
    #[default]
    V1,
    /// BIP324 v2.
    V2,
}

impl TransportKind {
    /// `v1` or `v2`: the metric label and API value (Core's getpeerinfo `transport_protocol_type`).
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::V1 => "v1",
            TransportKind::V2 => "v2",
        }
    }
}

/// How a connection's transport was settled.
#[derive(Debug)]
pub enum Negotiated {
    /// v1; `prefix` holds bytes already read from the peer (inbound detection), to frame first.
    V1 {
        /// Bytes read while telling v1 from v2.
        prefix: Vec<u8>,
    },
    /// v2, with the session (boxed: its ciphers make it large beside `V1`).
    V2(Box<V2Ready>),
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What one [`V2Handshake::feed`] produced.
#[derive(Debug, Default)]
pub struct HandshakeStep {
    /// Bytes to send to the peer, in order.
    pub send: Vec<u8>,
    /// The session, once the peer's version packet is authenticated.
    pub ready: Option<V2Ready>,
}

enum Stage {
    /// Waiting for the peer's 64-byte key.
    Key,
    /// Waiting for the peer's garbage terminator.
    Terminator(Box<Handshake<SentVersion>>),
    /// Terminator found: waiting until `buf` holds `need` bytes to read the next handshake
    /// packet (the exchange is replayed from the stored secret to get there).
    Packets { need: usize },
    /// Completed or failed: no more input is taken.
    Finished,
}

/// The v2 handshake of one connection, either role. Feed it what the socket gives; send what
/// it returns. See the module documentation for the replay.
pub struct V2Handshake {
    magic: [u8; 4],
    role: Role,
    secret: [u8; 32],
    garbage: Vec<u8>,
    their_key: [u8; KEY_LEN],
    /// Our ElligatorSwift key as sent, for deriving the session keys.
    our_key: [u8; KEY_LEN],
    /// Our version packet as the crate sealed it (with packet number 0), to check our own
    /// cipher against at the end.
    sent_version: Vec<u8>,
    /// Received bytes not yet consumed: the peer's key, then garbage and packets.
    buf: Vec<u8>,
    stage: Stage,
}

/// How a run over the handshake packets ended.
enum PacketsOutcome {
    Ready {
        ready_cipher: bip324::CipherSession,
        consumed: usize,
        /// Packets the peer sent before and with its version packet.
        received: u64,
    },
    NeedMore(usize),
}

impl V2Handshake {
    /// Starts a handshake; returns it and the bytes to send first (our key and the first
    /// [`FIRST_FLIGHT_GARBAGE`] bytes of garbage). An initiator sends them at once; a
    /// responder once [`detect`] said v2.
    pub fn new(magic: [u8; 4], role: Role) -> (V2Handshake, Vec<u8>) {
        let mut rng = rand::thread_rng();
        let secret = loop {
            let candidate: [u8; 32] = rng.gen();
            if SecretKey::from_slice(&candidate).is_ok() {
                break candidate;
            }
        };
        // Random garbage of random length, as Core sends, so the stream has no fixed shape.
        let len = rng.gen_range(0..=MAX_GARBAGE_LEN);
        let mut garbage = vec![0u8; len];
        rng.fill(&mut garbage[..]);
        Self::with_secret(magic, role, secret, garbage)
    }

    /// A handshake with a given secret key and garbage (tests and benchmarks).
    pub fn with_secret(
        magic: [u8; 4],
        role: Role,
        secret: [u8; 32],
        garbage: Vec<u8>,
    ) -> (V2Handshake, Vec<u8>) {
        let garbage = if garbage.len() > MAX_GARBAGE_LEN {
            garbage[..MAX_GARBAGE_LEN].to_vec()
        } else {
            garbage
        };
        let mut hs = V2Handshake {
            magic,
            role,
            secret,
            garbage,
            their_key: [0; KEY_LEN],
            our_key: [0; KEY_LEN],
            sent_version: Vec::new(),
            buf: Vec::new(),
            stage: Stage::Key,
        };
        let mut out = vec![0u8; KEY_LEN + hs.garbage.len()];
        // The secret was checked when chosen, so a failure here is the library's.
        if let Ok(init) = Handshake::new_with_rng(magic, role, &mut StoredSecret(secret), curve()) {
            let _ = init.send_key(hs.garbage_ref(), &mut out);
        }
        hs.our_key.copy_from_slice(&out[..KEY_LEN]);
        out.truncate(KEY_LEN + hs.garbage.len().min(FIRST_FLIGHT_GARBAGE));
        (hs, out)
    }

    fn garbage_ref(&self) -> Option<&[u8]> {
        (!self.garbage.is_empty()).then_some(&self.garbage[..])
    }

    /// Our role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Replays the exchange from our secret and the peer's key up to having sent our
    /// version packet; returns that state and the bytes it sent (terminator and version).
    fn replay(&self) -> Result<(Handshake<SentVersion>, Vec<u8>), V2Error> {
        let init = Handshake::new_with_rng(
            self.magic,
            self.role,
            &mut StoredSecret(self.secret),
            curve(),
        )?;
        let mut key = vec![0u8; KEY_LEN + self.garbage.len()];
        let sent = init.send_key(self.garbage_ref(), &mut key)?;
        let received = sent.receive_key(self.their_key)?;
        let mut out = vec![0u8; Handshake::<ReceivedKey>::send_version_len(None)];
        let hs = received.send_version(&mut out, None)?;
        Ok((hs, out))
    }

    /// Takes bytes from the peer. Returns what to send and, once complete, the session.
    /// After an error or completion the handshake takes no more input.
    pub fn feed(&mut self, input: &[u8]) -> Result<HandshakeStep, V2Error> {
        let mut step = HandshakeStep::default();
        if matches!(self.stage, Stage::Finished) {
            return Ok(step);
        }
        self.buf.extend_from_slice(input);
        let result = self.advance(&mut step);
        if result.is_err() {
            self.stage = Stage::Finished;
            self.buf = Vec::new();
        }
        result.map(|_| step)
    }

    fn advance(&mut self, step: &mut HandshakeStep) -> Result<(), V2Error> {
        loop {
            match std::mem::replace(&mut self.stage, Stage::Finished) {
                Stage::Key => {
                    if self.buf.len() < KEY_LEN {
                        self.stage = Stage::Key;
                        return Ok(());
                    }
                    self.their_key.copy_from_slice(&self.buf[..KEY_LEN]);
                    self.buf.drain(..KEY_LEN);
                    let (hs, out) = self.replay()?;
                    // After the 16-byte terminator.
                    self.sent_version = out.get(16..).unwrap_or_default().to_vec();
                    // The garbage not sent with our key, then terminator and version.
                    let sent_early = self.garbage.len().min(FIRST_FLIGHT_GARBAGE);
                    step.send.extend_from_slice(&self.garbage[sent_early..]);
                    step.send.extend_from_slice(&out);
                    self.stage = Stage::Terminator(Box::new(hs));
                }
                Stage::Terminator(hs) => match hs.receive_garbage(&self.buf)? {
                    GarbageResult::NeedMoreData(hs) => {
                        self.stage = Stage::Terminator(Box::new(hs));
                        return Ok(());
                    }
                    GarbageResult::FoundGarbage {
                        handshake,
                        consumed_bytes,
                    } => {
                        let outcome = read_packets(handshake, &self.buf, consumed_bytes)?;
                        return self.conclude(outcome, step);
                    }
                },
                Stage::Packets { need } => {
                    if self.buf.len() < need {
                        self.stage = Stage::Packets { need };
                        return Ok(());
                    }
                    let (hs, _) = self.replay()?;
                    return match hs.receive_garbage(&self.buf)? {
                        GarbageResult::FoundGarbage {
                            handshake,
                            consumed_bytes,
                        } => {
                            let outcome = read_packets(handshake, &self.buf, consumed_bytes)?;
                            self.conclude(outcome, step)
                        }
                        // The replay is deterministic: it found the terminator before.
                        GarbageResult::NeedMoreData(_) => Err(V2Error::KeyExchange(
                            "replayed handshake lost the garbage terminator".into(),
                        )),
                    };
                }
                Stage::Finished => return Ok(()),
            }
        }
    }

    fn conclude(
        &mut self,
        outcome: PacketsOutcome,
        step: &mut HandshakeStep,
    ) -> Result<(), V2Error> {
        match outcome {
            PacketsOutcome::NeedMore(need) => {
                self.stage = Stage::Packets { need };
            }
            PacketsOutcome::Ready {
                ready_cipher,
                consumed,
                received,
            } => {
                let session_id = *ready_cipher.id();
                let keys = session_keys(
                    &self.secret,
                    &self.our_key,
                    &self.their_key,
                    self.role == Role::Initiator,
                    self.magic,
                )
                .filter(|k| k.session_id == session_id)
                .ok_or_else(|| {
                    V2Error::KeyExchange("the session keys do not match the handshake's".into())
                })?;
                // We sent one packet in the handshake (our version, its AAD our garbage), and
                // read `received`. Our cipher must seal that packet as the crate did: else a
                // key, label or count is wrong, and sealing on would reuse a nonce.
                let mut check = Vec::new();
                // Empty contents are never too long.
                let _ = PacketSealer::at(&keys.send, 0).seal_into(
                    &[],
                    false,
                    &self.garbage,
                    &mut check,
                );
                if check != self.sent_version {
                    return Err(V2Error::KeyExchange(
                        "our cipher does not reproduce the handshake's version packet".into(),
                    ));
                }
                let inbound = PacketOpener::at(&keys.recv, received);
                let outbound = PacketSealer::at(&keys.send, 1);
                #[cfg(test)]
                let reference = ready_cipher.into_split();
                let leftover = self.buf.split_off(consumed);
                self.buf = Vec::new();
                step.ready = Some(V2Ready {
                    inbound,
                    outbound,
                    session_id,
                    leftover,
                    #[cfg(test)]
                    reference,
                });
            }
        }
        Ok(())
    }
}

/// Reads decoys and the version packet from `buf[start..]`.
fn read_packets(
    mut hs: Handshake<ReceivedGarbage<'_>>,
    buf: &[u8],
    start: usize,
) -> Result<PacketsOutcome, V2Error> {
    let limit = MAX_PRE_HANDSHAKE_PAYLOAD as usize;
    let mut pos = start;
    let mut decoys = 0;
    loop {
        if buf.len() < pos + NUM_LENGTH_BYTES {
            return Ok(PacketsOutcome::NeedMore(pos + NUM_LENGTH_BYTES));
        }
        let mut len_bytes = [0u8; NUM_LENGTH_BYTES];
        len_bytes.copy_from_slice(&buf[pos..pos + NUM_LENGTH_BYTES]);
        // Header, contents and tag.
        let rest = hs.decrypt_packet_len(len_bytes)?;
        let contents = rest.saturating_sub(PACKET_OVERHEAD - NUM_LENGTH_BYTES);
        if contents > limit {
            return Err(V2Error::OversizedLength {
                length: contents,
                limit,
            });
        }
        let end = pos + NUM_LENGTH_BYTES + rest;
        if buf.len() < end {
            return Ok(PacketsOutcome::NeedMore(end));
        }
        let mut packet = buf[pos + NUM_LENGTH_BYTES..end].to_vec();
        match hs.receive_version(&mut packet)? {
            VersionResult::Complete { cipher } => {
                return Ok(PacketsOutcome::Ready {
                    ready_cipher: cipher,
                    consumed: end,
                    received: decoys as u64 + 1,
                })
            }
            VersionResult::Decoy(next) => {
                decoys += 1;
                if decoys > MAX_HANDSHAKE_DECOYS {
                    return Err(V2Error::TooManyDecoys);
                }
                hs = next;
                pos = end;
            }
        }
    }
}

/// Decrypts an established session's packets into frames, under the same admission rules
/// as v1 (see [`FrameDecoder::admit`]).
pub struct V2Decoder {
    cipher: PacketOpener,
    rules: FrameDecoder,
    len_bytes: [u8; NUM_LENGTH_BYTES],
    len_filled: usize,
    /// The packet being read (header, contents and tag) and its full length.
    body: Option<(usize, Vec<u8>)>,
    failed: Option<FrameError>,
}

impl std::fmt::Debug for V2Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("V2Decoder")
            .field("len_filled", &self.len_filled)
            .field("body", &self.body.as_ref().map(|(n, b)| (*n, b.len())))
            .finish_non_exhaustive()
    }
}

impl V2Decoder {
    /// A decoder over `cipher`, admitting frames by `rules` (which holds the network's limits,
    /// the pre-handshake state and the block gate).
    pub fn new(cipher: PacketOpener, rules: FrameDecoder) -> V2Decoder {
        V2Decoder {
            cipher,
            rules,
            len_bytes: [0; NUM_LENGTH_BYTES],
            len_filled: 0,
            body: None,
            failed: None,
        }
    }

    /// The admission rules (to set the block gate).
    pub fn rules_mut(&mut self) -> &mut FrameDecoder {
        &mut self.rules
    }

    /// The admission rules.
    pub fn rules(&self) -> &FrameDecoder {
        &self.rules
    }

    /// Consumes bytes from `input` until one frame or error is produced, or the input is used
    /// up (`None`). Decoy packets are dropped. After a fatal error every call returns it.
    pub fn decode(&mut self, input: &mut &[u8]) -> Option<Result<Frame, FrameError>> {
        if let Some(e) = &self.failed {
            return Some(Err(e.clone()));
        }
        loop {
            let (total, mut body) = match self.body.take() {
                Some(b) => b,
                None => {
                    let take = (NUM_LENGTH_BYTES - self.len_filled).min(input.len());
                    self.len_bytes[self.len_filled..self.len_filled + take]
                        .copy_from_slice(&input[..take]);
                    self.len_filled += take;
                    *input = &input[take..];
                    if self.len_filled < NUM_LENGTH_BYTES {
                        return None;
                    }
                    self.len_filled = 0;
                    let rest = self.cipher.open_len(self.len_bytes);
                    let contents = rest - (PACKET_OVERHEAD - NUM_LENGTH_BYTES);
                    // A message type and the largest payload the rules admit now.
                    let limit = self.rules.largest_payload() as usize + LONG_TYPE_LEN;
                    if contents > limit {
                        let (length, limit) = (contents as u32, limit as u32);
                        let e = if self.rules.may_be_requested_block_above_policy() {
                            FrameError::V2RequestedTooLarge { length, limit }
                        } else {
                            FrameError::V2Oversized { length, limit }
                        };
                        self.failed = Some(e.clone());
                        return Some(Err(e));
                    }
                    // Deliberately empty: capacity grows with the bytes that actually arrive.
                    (rest, Vec::new())
                }
            };
            let take = (total - body.len()).min(input.len());
            body.extend_from_slice(&input[..take]);
            *input = &input[take..];
            if body.len() < total {
                self.body = Some((total, body));
                return None;
            }
            match self.open(body) {
                Some(result) => {
                    if let Err(e) = &result {
                        if e.is_fatal() {
                            self.failed = Some(e.clone());
                        }
                    }
                    return Some(result);
                }
                // A decoy: read the next packet.
                None => continue,
            }
        }
    }

    /// Authenticates and decrypts one packet; `None` for a decoy.
    fn open(&mut self, mut body: Vec<u8>) -> Option<Result<Frame, FrameError>> {
        let wire_len = NUM_LENGTH_BYTES + body.len();
        // On success the tag is cut off: the header and contents are left.
        match self.cipher.open(&mut body, b"") {
            Some(true) => return None,
            Some(false) => {}
            None => return Some(Err(FrameError::V2BadAead)),
        }
        // body[0] is the header byte; the message type follows.
        let Some(&id) = body.get(1) else {
            return Some(Err(FrameError::V2UnknownMessageType { id: None }));
        };
        let (command, type_len) = if id == 0 {
            let mut raw = [0u8; 12];
            let Some(field) = body.get(2..2 + 12) else {
                return Some(Err(FrameError::V2UnknownMessageType { id: Some(0) }));
            };
            raw.copy_from_slice(field);
            match Command::from_wire(raw) {
                Some(c) => (c, LONG_TYPE_LEN),
                None => return Some(Err(FrameError::V2UnknownMessageType { id: Some(0) })),
            }
        } else {
            match V2_MESSAGE_IDS
                .get(id as usize)
                .and_then(|name| Command::new(name))
            {
                Some(c) => (c, 1),
                None => return Some(Err(FrameError::V2UnknownMessageType { id: Some(id) })),
            }
        };
        body.drain(..1 + type_len);
        Some(self.rules.admit(command, body, wire_len))
    }
}

/// Encrypts an established session's outgoing frames.
pub struct V2Encoder {
    cipher: PacketSealer,
}

impl V2Encoder {
    /// An encoder over `cipher`.
    pub fn new(cipher: PacketSealer) -> V2Encoder {
        V2Encoder { cipher }
    }

    /// Re-frames one encoded v1 frame (header and payload) as a v2 packet, built and
    /// encrypted in one buffer. A slice shorter than a v1 header (never produced by meshd)
    /// becomes an empty packet with no type, which a peer ignores. A frame too long for
    /// BIP324's 3-byte length is refused, no cipher advancing (the caller closes the
    /// connection: the message cannot be sent on v2).
    pub fn encrypt_v1_frame(&mut self, frame: &[u8]) -> Result<Vec<u8>, ContentsTooLong> {
        let payload = frame.get(FRAME_HEADER_LEN..).unwrap_or(&[]);
        let mut packet = Vec::with_capacity(PACKET_OVERHEAD + LONG_TYPE_LEN + payload.len());
        packet.extend_from_slice(&[0u8; NUM_LENGTH_BYTES + 1]);
        if frame.len() >= FRAME_HEADER_LEN {
            let mut raw = [0u8; 12];
            raw.copy_from_slice(&frame[4..16]);
            let id = Command::from_wire(raw).and_then(|c| short_id(c.as_str()));
            match id {
                Some(id) => packet.push(id),
                None => {
                    packet.push(0);
                    packet.extend_from_slice(&raw);
                }
            }
            packet.extend_from_slice(payload);
        }
        self.cipher.seal_built(&mut packet, b"")?;
        Ok(packet)
    }

    /// Size on the wire of a v2 packet carrying a v1 frame of `frame_len` bytes with
    /// `command`.
    pub fn wire_len(command: &str, frame_len: usize) -> usize {
        let payload = frame_len.saturating_sub(FRAME_HEADER_LEN);
        let type_len = if short_id(command).is_some() {
            1
        } else {
            LONG_TYPE_LEN
        };
        PACKET_OVERHEAD + type_len + payload
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use crate::wire::{encode_frame, Message};
    use bitcoin::p2p::message::NetworkMessage;
    use proptest::prelude::*;

    fn magic() -> [u8; 4] {
        NetworkId::Regtest.profile().magic.to_bytes()
    }

    fn rules() -> FrameDecoder {
        let p = NetworkId::Regtest.profile();
        FrameDecoder::new(p.magic, p.limits)
    }

    /// Runs both sides to completion, delivering bytes in chunks of `chunk`.
    fn connect(chunk: usize) -> (V2Ready, V2Ready) {
        let (mut a, mut to_b) = V2Handshake::new(magic(), Role::Initiator);
        let (mut b, mut to_a) = V2Handshake::new(magic(), Role::Responder);
        let (mut ra, mut rb) = (None, None);
        for _ in 0..100_000 {
            if ra.is_some() && rb.is_some() {
                break;
            }
            let n = chunk.min(to_b.len());
            let piece: Vec<u8> = to_b.drain(..n).collect();
            let step = b.feed(&piece).expect("responder");
            to_a.extend(step.send);
            if step.ready.is_some() {
                rb = step.ready;
            }
            let n = chunk.min(to_a.len());
            let piece: Vec<u8> = to_a.drain(..n).collect();
            let step = a.feed(&piece).expect("initiator");
            to_b.extend(step.send);
            if step.ready.is_some() {
                ra = step.ready;
            }
        }
        (ra.expect("initiator ready"), rb.expect("responder ready"))
    }

    fn frame(m: NetworkMessage) -> Vec<u8> {
        Message::net(m).encode(NetworkId::Regtest.profile().magic)
    }

    #[test]
    fn short_ids_follow_bip324s_table() {
        assert_eq!(short_id("addr"), Some(1));
        assert_eq!(short_id("ping"), Some(18));
        assert_eq!(short_id("addrv2"), Some(28));
        assert_eq!(short_id("version"), None);
        assert_eq!(short_id(""), None);
        for (i, name) in V2_MESSAGE_IDS.iter().enumerate().skip(1) {
            assert_eq!(short_id(name), Some(i as u8));
        }
    }

    #[test]
    fn detection_needs_sixteen_bytes_to_say_v1_and_one_to_say_v2() {
        let m = magic();
        let v1 = encode_frame(
            NetworkId::Regtest.profile().magic,
            Command::new("version").unwrap(),
            &[],
        );
        assert_eq!(detect(m, &v1[..4]), Detected::NeedMore);
        assert_eq!(detect(m, &v1[..16]), Detected::V1);
        assert_eq!(detect(m, &[0x00]), Detected::V2);
        let mut other = v1.clone();
        other[15] = 1;
        assert_eq!(detect(m, &other[..16]), Detected::V2);
    }

    #[test]
    fn both_sides_agree_and_messages_cross_both_ways() {
        let (a, b) = connect(usize::MAX);
        assert_eq!(a.session_id, b.session_id);
        let mut enc = V2Encoder::new(a.outbound);
        let mut dec = V2Decoder::new(b.inbound, rules());
        let ping = frame(NetworkMessage::Ping(7));
        let version_like = encode_frame(
            NetworkId::Regtest.profile().magic,
            Command::new("verack").unwrap(),
            &[],
        );
        let mut wire = enc.encrypt_v1_frame(&version_like).expect("fits");
        assert_eq!(
            wire.len(),
            V2Encoder::wire_len("verack", version_like.len())
        );
        wire.extend(enc.encrypt_v1_frame(&ping).expect("fits"));
        let mut input = &wire[..];
        let f = dec.decode(&mut input).unwrap().unwrap();
        assert_eq!(f.command.as_str(), "verack");
        let f = dec.decode(&mut input).unwrap().unwrap();
        assert_eq!(f.command.as_str(), "ping");
        assert_eq!(f.payload, 7u64.to_le_bytes());
        assert!(dec.decode(&mut input).is_none());
    }

    #[test]
    fn ciphers_keep_agreeing_across_rekeys() {
        let (a, b) = connect(usize::MAX);
        let mut enc = V2Encoder::new(a.outbound);
        let mut dec = V2Decoder::new(b.inbound, rules());
        // 224 packets per key: 1,000 crosses four rekeys.
        for i in 0..1_000u64 {
            let wire = enc
                .encrypt_v1_frame(&frame(NetworkMessage::Ping(i)))
                .expect("fits");
            let mut input = &wire[..];
            let f = dec.decode(&mut input).unwrap().unwrap();
            assert_eq!(f.payload, i.to_le_bytes());
        }
    }

    #[test]
    fn a_tampered_packet_fails_authentication_for_good() {
        let (a, b) = connect(usize::MAX);
        let mut enc = V2Encoder::new(a.outbound);
        let mut dec = V2Decoder::new(b.inbound, rules());
        let mut wire = enc
            .encrypt_v1_frame(&frame(NetworkMessage::Ping(1)))
            .expect("fits");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let mut input = &wire[..];
        let e = dec.decode(&mut input).unwrap().unwrap_err();
        assert_eq!(e.kind(), "v2_bad_aead");
        assert!(e.is_fatal());
        assert!(dec.decode(&mut &[][..]).unwrap().is_err());
    }

    #[test]
    fn a_length_above_the_limit_is_refused_before_anything_is_buffered() {
        let (a, b) = connect(usize::MAX);
        let mut enc = V2Encoder::new(a.outbound);
        let mut dec = V2Decoder::new(b.inbound, rules());
        // Still before verack: the pre-handshake limit applies.
        let big = encode_frame(
            NetworkId::Regtest.profile().magic,
            Command::new("ping").unwrap(),
            &vec![0u8; 5000],
        );
        let wire = enc.encrypt_v1_frame(&big).expect("fits");
        let mut input = &wire[..3];
        let e = dec.decode(&mut input).unwrap().unwrap_err();
        assert_eq!(e.kind(), "v2_oversized_length");
    }

    #[test]
    fn a_packet_too_large_for_anything_but_a_requested_block_ends_the_session_free() {
        let p = NetworkId::Regtest.profile();
        let mut limits = p.limits;
        limits.general = 50_000;
        limits.bulk = 50_000;
        let big = encode_frame(p.magic, Command::new("block").unwrap(), &vec![0xab; 60_000]);
        for (policy, asked, kind) in [
            // Where the block limit is our policy (BSV) and a block is asked of the peer.
            (true, 1, "v2_requested_too_large"),
            // Nothing asked: no honest peer sends it.
            (true, 0, "v2_oversized_length"),
            // Where the limit is the chain's own (BTC), a larger block is invalid anyway.
            (false, 1, "v2_oversized_length"),
        ] {
            limits.bulk_is_policy = policy;
            let (a, b) = connect(usize::MAX);
            let mut enc = V2Encoder::new(a.outbound);
            let mut dec = V2Decoder::new(b.inbound, FrameDecoder::new_established(p.magic, limits));
            dec.rules_mut().set_blocks_expected(asked);
            let wire = enc.encrypt_v1_frame(&big).expect("fits");
            let e = dec.decode(&mut &wire[..3]).unwrap().unwrap_err();
            assert_eq!(e.kind(), kind);
            // Fatal either way (the packet cannot be read past), but charged only when
            // nothing of its size was asked for.
            assert!(e.is_fatal());
            let charged = crate::peer::misbehavior::cost(kind) > 0;
            assert_eq!(charged, kind == "v2_oversized_length");
        }
    }

    #[test]
    fn unknown_message_ids_are_skipped_and_the_stream_goes_on() {
        let (a, b) = connect(usize::MAX);
        let (mut out, mut dec) = (a.outbound, V2Decoder::new(b.inbound, rules()));
        let mut wire = out.encrypt_to_vec(&[31, 1, 2, 3], false).expect("fits");
        wire.extend(out.encrypt_to_vec(&[], true).expect("fits"));
        wire.extend(
            out.encrypt_to_vec(&[18, 1, 0, 0, 0, 0, 0, 0, 0], false)
                .expect("fits"),
        );
        let mut input = &wire[..];
        let e = dec.decode(&mut input).unwrap().unwrap_err();
        assert_eq!(e.kind(), "v2_unknown_message_type");
        assert!(!e.is_fatal());
        let f = dec.decode(&mut input).unwrap().unwrap();
        assert_eq!(f.command.as_str(), "ping");
    }

    #[test]
    fn garbage_without_terminator_fails_at_its_limit() {
        let (mut b, _) = V2Handshake::new(magic(), Role::Responder);
        let (_, key) = V2Handshake::with_secret(magic(), Role::Initiator, [7; 32], Vec::new());
        assert!(b.feed(&key).unwrap().send.len() > 16);
        let junk = vec![0x55u8; MAX_GARBAGE_LEN + TERMINATOR_LEN - 1];
        assert!(b.feed(&junk).unwrap().ready.is_none());
        assert_eq!(b.feed(&[0x55]).unwrap_err(), V2Error::GarbageTooLong);
    }

    #[test]
    fn a_v1_answer_is_recognised() {
        let (mut a, _) = V2Handshake::new(magic(), Role::Initiator);
        let v1 = frame(NetworkMessage::Verack);
        let mut answer = v1.clone();
        answer.resize(KEY_LEN, 0);
        let e = a.feed(&answer).unwrap_err();
        assert_eq!(e, V2Error::AnsweredV1);
        assert!(e.suggests_v1());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// meshd's SIMD ciphers and the `bip324` crate's, taken over at the same point of a
        /// session, agree byte for byte on random traffic (past a rekey), each way.
        #[test]
        fn our_ciphers_match_the_crates_on_random_traffic(
            packets in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..300), any::<bool>()),
                230..260,
            )
        ) {
            let (mut a, mut b) = connect(4096);
            for (contents, decoy) in &packets {
                let kind = if *decoy { bip324::PacketType::Decoy } else { bip324::PacketType::Genuine };
                let ours = a.outbound.encrypt_to_vec(contents, *decoy).expect("fits");
                let theirs = a.reference.1.encrypt_to_vec(contents, kind, None);
                prop_assert_eq!(&ours, &theirs);
                // The crate's packets open with ours.
                let mut len = [0u8; NUM_LENGTH_BYTES];
                len.copy_from_slice(&theirs[..NUM_LENGTH_BYTES]);
                prop_assert_eq!(b.inbound.open_len(len), theirs.len() - NUM_LENGTH_BYTES);
                let mut body = theirs[NUM_LENGTH_BYTES..].to_vec();
                prop_assert_eq!(b.inbound.open(&mut body, b""), Some(*decoy));
                prop_assert_eq!(&body[1..], &contents[..]);
                // And ours with the crate's.
                let back = b.outbound.encrypt_to_vec(contents, *decoy).expect("fits");
                let mut len = [0u8; NUM_LENGTH_BYTES];
                len.copy_from_slice(&back[..NUM_LENGTH_BYTES]);
                let rest = a.reference.0.decrypt_packet_len(len);
                prop_assert_eq!(rest, back.len() - NUM_LENGTH_BYTES);
                let mut body = back[NUM_LENGTH_BYTES..].to_vec();
                let (kind_back, plain) = a.reference.0.decrypt_in_place(&mut body, None).unwrap();
                prop_assert_eq!(kind_back == bip324::PacketType::Decoy, *decoy);
                prop_assert_eq!(&plain[1..], &contents[..]);
            }
        }

        /// However the bytes are cut, both sides complete with the same session.
        #[test]
        fn any_chunking_completes(chunk in 1usize..300) {
            let (a, b) = connect(chunk);
            prop_assert_eq!(a.session_id, b.session_id);
        }
    }
}
