//! Streaming frame codec for the Bitcoin P2P wire format, as a sans-IO core.
//!
//! A frame is `magic(4) command(12) length(4, LE) checksum(4) payload(length)`. The
//! [`FrameDecoder`] is fed byte chunks of any size (one byte at a time works) and yields
//! [`Frame`]s or typed [`FrameError`]s. The header is validated as soon as its 24 bytes are in:
//! a wrong magic, a malformed command or a length above the limit is reported before a single
//! payload byte is buffered, and the payload buffer grows only as bytes arrive, never to the
//! claimed length up front. A checksum mismatch drops that one message and keeps the stream in
//! sync; the other header errors are fatal, since nothing after them can be trusted.
//!
//! Until the peer's `verack` has been framed a much smaller payload limit applies
//! ([`MAX_PRE_HANDSHAKE_PAYLOAD`]): the decoder lifts it itself when it frames a `verack`, so
//! the switch happens at exactly the right byte with no race against the handshake logic.

use bitcoin::hashes::{sha256d, Hash};
use bitcoin::p2p::Magic;

use crate::constants::{FRAME_HEADER_LEN, MAX_PRE_HANDSHAKE_PAYLOAD};
use crate::network::PayloadLimits;

/// A validated 12-byte command field: printable ASCII, then NUL padding only.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Command {
    bytes: [u8; 12],
    len: u8,
}

impl Command {
    /// Validates a raw command field.
    pub fn from_wire(bytes: [u8; 12]) -> Option<Command> {
        let len = bytes.iter().position(|&b| b == 0).unwrap_or(12);
        let (name, padding) = bytes.split_at(len);
        let printable = name.iter().all(|b| (0x20..=0x7e).contains(b));
        if len == 0 || !printable || padding.iter().any(|&b| b != 0) {
            return None;
        }
        Some(Command {
            bytes,
            len: len as u8,
        })
    }

    /// Builds a command from a name of at most 12 printable ASCII characters.
    pub fn new(name: &str) -> Option<Command> {
        if name.len() > 12 {
            return None;
        }
        let mut bytes = [0u8; 12];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Command::from_wire(bytes)
    }

    /// The command name.
    pub fn as_str(&self) -> &str {
        // Only printable ASCII passes `from_wire`, so this is always valid UTF-8.
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// The 12 bytes as they appear on the wire.
    pub fn to_wire(self) -> [u8; 12] {
        self.bytes
    }
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One complete, checksum-verified frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's command.
    pub command: Command,
    /// The payload; its checksum has been verified.
    pub payload: Vec<u8>,
}

impl Frame {
    /// Size of the frame on the wire, header included.
    pub fn wire_len(&self) -> usize {
        FRAME_HEADER_LEN + self.payload.len()
    }
}

/// A violation found while framing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The frame does not start with this network's magic (wrong network, or garbage).
    #[error("wrong magic {got:02x?}, expected {expected:02x?}")]
    BadMagic {
        /// Magic bytes received.
        got: [u8; 4],
        /// Magic bytes of our network.
        expected: [u8; 4],
    },
    /// The command is not printable ASCII followed by NUL padding.
    #[error("malformed command field {raw:02x?}")]
    MalformedCommand {
        /// The raw command field.
        raw: [u8; 12],
    },
    /// The claimed payload length is above the limit for this command.
    #[error("{command} payload of {length} bytes exceeds the limit of {limit}")]
    Oversized {
        /// The command.
        command: Command,
        /// Claimed length.
        length: u32,
        /// Limit in force.
        limit: u32,
    },
    /// The payload does not match the header's checksum; the message was dropped.
    #[error(
        "bad checksum on {command}: header says {expected:02x?}, payload hashes to {actual:02x?}"
    )]
    BadChecksum {
        /// The command.
        command: Command,
        /// Checksum in the header.
        expected: [u8; 4],
        /// Checksum of the payload received.
        actual: [u8; 4],
    },
}

impl FrameError {
    /// Whether the stream can no longer be trusted (everything but a bad checksum).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, FrameError::BadChecksum { .. })
    }

    /// A short stable name, used as a metric label and in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::BadMagic { .. } => "bad_magic",
            FrameError::MalformedCommand { .. } => "malformed_command",
            FrameError::Oversized { .. } => "oversized",
            FrameError::BadChecksum { .. } => "bad_checksum",
        }
    }
}

#[derive(Debug)]
struct PendingPayload {
    command: Command,
    length: usize,
    checksum: [u8; 4],
    payload: Vec<u8>,
}

/// Streaming frame decoder. See the module documentation.
#[derive(Debug)]
pub struct FrameDecoder {
    magic: [u8; 4],
    limits: PayloadLimits,
    pre_handshake: bool,
    header: [u8; FRAME_HEADER_LEN],
    header_filled: usize,
    pending: Option<PendingPayload>,
    failed: Option<FrameError>,
}

impl FrameDecoder {
    /// A decoder for `magic`, starting with the pre-handshake limit.
    pub fn new(magic: Magic, limits: PayloadLimits) -> FrameDecoder {
        FrameDecoder {
            magic: magic.to_bytes(),
            limits,
            pre_handshake: true,
            header: [0; FRAME_HEADER_LEN],
            header_filled: 0,
            pending: None,
            failed: None,
        }
    }

    /// A decoder that applies the network limits from the start (for tests and benchmarks
    /// that frame post-handshake traffic).
    pub fn new_established(magic: Magic, limits: PayloadLimits) -> FrameDecoder {
        let mut d = FrameDecoder::new(magic, limits);
        d.pre_handshake = false;
        d
    }

    /// Whether the pre-handshake limit is still in force.
    pub fn in_pre_handshake(&self) -> bool {
        self.pre_handshake
    }

    /// Replaces the post-handshake limits (a BSV peer's protoconf does not change what *we*
    /// accept, but an operator's live config change may).
    pub fn set_limits(&mut self, limits: PayloadLimits) {
        self.limits = limits;
    }

    fn limit_for(&self, command: &Command) -> u32 {
        if self.pre_handshake {
            MAX_PRE_HANDSHAKE_PAYLOAD
        } else {
            self.limits.for_command(command.as_str())
        }
    }

    /// Consumes bytes from the front of `input` until one frame or error is produced, or the
    /// input is used up (then `None`: feed more). After a fatal error every later call returns
    /// that error again without consuming input.
    pub fn decode(&mut self, input: &mut &[u8]) -> Option<Result<Frame, FrameError>> {
        if let Some(err) = &self.failed {
            return Some(Err(err.clone()));
        }
        loop {
            if let Some(pending) = &mut self.pending {
                let wanted = pending.length - pending.payload.len();
                let take = wanted.min(input.len());
                pending.payload.extend_from_slice(&input[..take]);
                *input = &input[take..];
                if pending.payload.len() < pending.length {
                    return None;
                }
                let PendingPayload {
                    command,
                    checksum,
                    payload,
                    ..
                } = self.pending.take()?;
                let actual = payload_checksum(&payload);
                if actual != checksum {
                    return Some(Err(FrameError::BadChecksum {
                        command,
                        expected: checksum,
                        actual,
                    }));
                }
                if command.as_str() == "verack" {
                    self.pre_handshake = false;
                }
                return Some(Ok(Frame { command, payload }));
            }

            let take = (FRAME_HEADER_LEN - self.header_filled).min(input.len());
            self.header[self.header_filled..self.header_filled + take]
                .copy_from_slice(&input[..take]);
            self.header_filled += take;
            *input = &input[take..];
            // Check the magic as soon as its 4 bytes are in, so garbage is refused at once.
            if self.header_filled >= 4 && self.header[..4] != self.magic {
                let mut got = [0u8; 4];
                got.copy_from_slice(&self.header[..4]);
                return Some(Err(self.fail(FrameError::BadMagic {
                    got,
                    expected: self.magic,
                })));
            }
            if self.header_filled < FRAME_HEADER_LEN {
                return None;
            }
            self.header_filled = 0;
            let header = self.header;
            match self.parse_header(&header) {
                Ok(pending) => self.pending = Some(pending),
                Err(e) => return Some(Err(self.fail(e))),
            }
        }
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        err
    }

    fn parse_header(&self, header: &[u8; FRAME_HEADER_LEN]) -> Result<PendingPayload, FrameError> {
        let mut raw = [0u8; 12];
        raw.copy_from_slice(&header[4..16]);
        let command = Command::from_wire(raw).ok_or(FrameError::MalformedCommand { raw })?;
        let length = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
        let limit = self.limit_for(&command);
        if length > limit {
            return Err(FrameError::Oversized {
                command,
                length,
                limit,
            });
        }
        let mut checksum = [0u8; 4];
        checksum.copy_from_slice(&header[20..24]);
        Ok(PendingPayload {
            command,
            length: length as usize,
            checksum,
            // Deliberately empty: capacity grows with the bytes that actually arrive.
            payload: Vec::new(),
        })
    }
}

/// First four bytes of the double SHA-256 of `payload`.
pub fn payload_checksum(payload: &[u8]) -> [u8; 4] {
    let hash = sha256d::Hash::hash(payload);
    let mut out = [0u8; 4];
    out.copy_from_slice(&hash.as_byte_array()[..4]);
    out
}

/// Encodes one frame: header then payload.
pub fn encode_frame(magic: Magic, command: Command, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
    out.extend_from_slice(&magic.to_bytes());
    out.extend_from_slice(&command.to_wire());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&payload_checksum(payload));
    out.extend_from_slice(payload);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::NetworkId;
    use proptest::prelude::*;

    fn regtest() -> (Magic, PayloadLimits) {
        let p = NetworkId::Regtest.profile();
        (p.magic, p.limits)
    }

    fn decode_all(dec: &mut FrameDecoder, bytes: &[u8]) -> Vec<Result<Frame, FrameError>> {
        let mut out = Vec::new();
        let mut input = bytes;
        while let Some(r) = dec.decode(&mut input) {
            let fatal = matches!(&r, Err(e) if e.is_fatal());
            out.push(r);
            if fatal {
                break;
            }
        }
        out
    }

    fn header(magic: [u8; 4], command: &[u8; 12], length: u32, checksum: [u8; 4]) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&magic);
        h.extend_from_slice(command);
        h.extend_from_slice(&length.to_le_bytes());
        h.extend_from_slice(&checksum);
        h
    }

    fn cmd(name: &str) -> Command {
        Command::new(name).unwrap()
    }

    #[test]
    fn command_validation_follows_core() {
        assert!(Command::new("version").is_some());
        assert!(Command::new("sendaddrv2").is_some());
        assert!(Command::new("").is_none());
        assert!(Command::new("waytoolongcommand").is_none());
        let mut raw = *b"ping\0\0\0\0\0\0\0\0";
        raw[6] = b'x';
        assert!(Command::from_wire(raw).is_none(), "non-NUL after NUL");
        assert!(Command::from_wire(*b"pi\x01g\0\0\0\0\0\0\0\0").is_none());
        assert!(
            Command::from_wire(*b"abcdefghijkl").is_some(),
            "12 chars, no NUL"
        );
    }

    #[test]
    fn wrong_magic_is_fatal_after_four_bytes() {
        let (magic, limits) = regtest();
        let mut dec = FrameDecoder::new(magic, limits);
        let mut input: &[u8] = &[0xf9, 0xbe, 0xb4, 0xd9, 1, 2, 3];
        match dec.decode(&mut input) {
            Some(Err(FrameError::BadMagic { got, .. })) => {
                assert_eq!(got, [0xf9, 0xbe, 0xb4, 0xd9])
            }
            other => panic!("{other:?}"),
        }
        // Poisoned: later input is not consumed and the error repeats.
        let mut more: &[u8] = &[0; 30];
        assert!(matches!(
            dec.decode(&mut more),
            Some(Err(FrameError::BadMagic { .. }))
        ));
        assert_eq!(more.len(), 30);
    }

    #[test]
    fn oversized_length_disconnects_without_allocating() {
        let (magic, limits) = regtest();
        let mut dec = FrameDecoder::new_established(magic, limits);
        let h = header(magic.to_bytes(), b"block\0\0\0\0\0\0\0", u32::MAX, [0; 4]);
        let r = decode_all(&mut dec, &h);
        assert!(matches!(
            r.as_slice(),
            [Err(FrameError::Oversized {
                length: u32::MAX,
                limit: 4_000_000,
                ..
            })]
        ));
        assert!(dec.pending.is_none());
    }

    #[test]
    fn pre_handshake_limit_applies_until_the_peers_verack() {
        let (magic, limits) = regtest();
        let mut dec = FrameDecoder::new(magic, limits);
        let big = vec![0u8; 2000];
        let r = decode_all(&mut dec, &encode_frame(magic, cmd("addr"), &big));
        assert!(matches!(
            r.as_slice(),
            [Err(FrameError::Oversized { limit: 1024, .. })]
        ));

        let mut dec = FrameDecoder::new(magic, limits);
        let mut stream = encode_frame(magic, cmd("verack"), &[]);
        stream.extend(encode_frame(magic, cmd("addr"), &big));
        let r = decode_all(&mut dec, &stream);
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|f| f.is_ok()));
    }

    #[test]
    fn bad_checksum_drops_one_message_and_stays_in_sync() {
        let (magic, limits) = regtest();
        let mut dec = FrameDecoder::new(magic, limits);
        let mut bad = encode_frame(magic, cmd("ping"), &[1, 2, 3, 4, 5, 6, 7, 8]);
        bad[20] ^= 0xff;
        let mut stream = bad;
        stream.extend(encode_frame(magic, cmd("pong"), &[9; 8]));
        let r = decode_all(&mut dec, &stream);
        assert!(
            matches!(&r[0], Err(FrameError::BadChecksum { command, .. }) if command.as_str() == "ping")
        );
        assert_eq!(r[1].as_ref().unwrap().command.as_str(), "pong");
    }

    #[test]
    fn malformed_command_is_fatal() {
        let (magic, limits) = regtest();
        let mut dec = FrameDecoder::new(magic, limits);
        let h = header(magic.to_bytes(), b"pi\0g\0\0\0\0\0\0\0\0", 0, [0; 4]);
        assert!(matches!(
            decode_all(&mut dec, &h).as_slice(),
            [Err(FrameError::MalformedCommand { .. })]
        ));
    }

    fn arb_frame() -> impl Strategy<Value = (String, Vec<u8>)> {
        (
            "[a-z]{1,12}",
            proptest::collection::vec(any::<u8>(), 0..600usize),
        )
    }

    proptest! {
        #[test]
        fn random_chunking_decodes_identically(
            frames in proptest::collection::vec(arb_frame(), 1..8),
            cuts in proptest::collection::vec(1usize..97, 1..64),
        ) {
            let (magic, limits) = regtest();
            let mut stream = encode_frame(magic, cmd("verack"), &[]);
            for (c, p) in &frames {
                stream.extend(encode_frame(magic, cmd(c), p));
            }
            let whole = decode_all(&mut FrameDecoder::new(magic, limits), &stream);
            let mut dec = FrameDecoder::new(magic, limits);
            let mut chunked = Vec::new();
            let mut rest: &[u8] = &stream;
            let mut i = 0;
            while !rest.is_empty() {
                let n = cuts[i % cuts.len()].min(rest.len());
                i += 1;
                let mut chunk = &rest[..n];
                while let Some(r) = dec.decode(&mut chunk) {
                    chunked.push(r);
                }
                prop_assert!(chunk.is_empty());
                rest = &rest[n..];
            }
            prop_assert_eq!(&whole, &chunked);
            prop_assert_eq!(whole.len(), frames.len() + 1);
        }

        #[test]
        fn one_byte_at_a_time_works(payload in proptest::collection::vec(any::<u8>(), 0..300usize)) {
            let (magic, limits) = regtest();
            let bytes = encode_frame(magic, cmd("tx"), &payload);
            let mut dec = FrameDecoder::new(magic, limits);
            let mut got = Vec::new();
            for b in &bytes {
                let mut one: &[u8] = std::slice::from_ref(b);
                if let Some(r) = dec.decode(&mut one) { got.push(r.unwrap()); }
            }
            prop_assert_eq!(got, vec![Frame { command: cmd("tx"), payload }]);
        }

        #[test]
        fn hostile_headers_never_panic_and_give_typed_errors(bytes in proptest::collection::vec(any::<u8>(), 0..200usize)) {
            let (magic, limits) = regtest();
            let mut dec = FrameDecoder::new(magic, limits);
            let mut stream = magic.to_bytes().to_vec();
            stream.extend(bytes);
            let _ = decode_all(&mut dec, &stream);
        }

        #[test]
        fn any_length_above_the_limit_is_refused(extra in 1u32..=(u32::MAX - 4_000_000)) {
            let (magic, limits) = regtest();
            let mut dec = FrameDecoder::new_established(magic, limits);
            let h = header(magic.to_bytes(), b"headers\0\0\0\0\0", 4_000_000 + extra, [0;4]);
            let r = decode_all(&mut dec, &h);
            let is_oversized = matches!(r.as_slice(), [Err(FrameError::Oversized { .. })]);
            prop_assert!(is_oversized);
        }
    }
}
