//! Streaming frame codec for the Bitcoin P2P wire format, as a sans-IO core.
//!
//! A frame is `magic(4) command(12) length(4, LE) checksum(4) payload(length)`. The
//! [`FrameDecoder`] is fed byte chunks of any size (one byte at a time works) and yields
//! [`Frame`]s or typed [`FrameError`]s. The header is validated as soon as its 24 bytes are in:
//! a wrong magic, a malformed command or a length above the network's limit is reported before
//! a single payload byte is buffered, and the payload buffer grows only as bytes arrive, never
//! to the claimed length up front. Those errors are fatal, since nothing after them can be
//! trusted; the others leave the decoder at a frame boundary.
//!
//! What is kept of a payload depends on its command's [`PayloadShape`], so that no peer makes
//! us hold more than a valid message of that command needs:
//! - a command meshd does not read is skipped unread ([`Extent::Skipped`]);
//! - a payload longer than any valid one of its command is skipped unread and reported
//!   ([`FrameError::Overlong`]): a 4 MB `ping` costs no buffer;
//! - `inv`, `getdata` and `notfound` are read in parts of [`ITEMS_PER_PART`] items, each handed
//!   out as a list of its own ([`Extent::Part`]), so a 50,000-entry list is never held whole;
//! - everything else is buffered whole and its checksum checked: a mismatch drops that one
//!   message and keeps the stream in sync.
//!
//! Until the peer's `verack` has been framed a much smaller payload limit applies
//! ([`MAX_PRE_HANDSHAKE_PAYLOAD`]): the decoder lifts it itself when it frames a `verack`, so
//! the switch happens at exactly the right byte with no race against the handshake logic.

use bitcoin::consensus::encode::{Decodable, Encodable, VarInt};
use bitcoin::hashes::{sha256, sha256d, Hash, HashEngine};
use bitcoin::p2p::Magic;
use bitcoin::BlockHash;

use super::message::{payload_shape, PayloadShape};
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

/// How much of a message a [`Frame`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// The whole payload, its checksum verified.
    Whole,
    /// One part of a long item list (`inv`, `getdata`, `notfound`): at most
    /// [`ITEMS_PER_PART`] items, re-encoded as a list of their own. The checksum covers the
    /// whole message, so it is checked when the last part is read: a bad one drops that part
    /// (the items of earlier parts, each as harmless as the same item sent in a message of its
    /// own, have been handed on).
    Part {
        /// Whether this is the message's last part.
        last: bool,
    },
    /// Read and dropped unread: a command nothing in meshd reads (see
    /// [`PayloadShape::Ignored`]); the payload is empty.
    Skipped,
}

/// One complete frame, or one part of a long list (see [`Extent`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The frame's command.
    pub command: Command,
    /// The payload (whole and verified, one re-encoded part, or empty when skipped).
    pub payload: Vec<u8>,
    /// Which of those it is.
    pub extent: Extent,
    /// Bytes it took on the wire (header included for whole frames and a list's first part).
    wire_len: usize,
}

impl Frame {
    /// A whole frame holding `payload`.
    pub fn whole(command: Command, payload: Vec<u8>) -> Frame {
        let wire_len = FRAME_HEADER_LEN + payload.len();
        Frame {
            command,
            payload,
            extent: Extent::Whole,
            wire_len,
        }
    }

    /// Size of the frame on the wire; the parts of a list add up to the message's size.
    pub fn wire_len(&self) -> usize {
        self.wire_len
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
    /// The payload is longer than any valid message of its command (within the network's
    /// limit, so the stream stays in sync): it is skipped unread.
    #[error("{command} payload of {length} bytes is longer than any valid one ({max}); skipped")]
    Overlong {
        /// The command.
        command: Command,
        /// Claimed length.
        length: u32,
        /// Longest valid payload.
        max: u32,
    },
    /// A `block` this peer was not asked for: skipped unread (Core never sends one unasked;
    /// it announces blocks by `headers`, `inv` or `cmpctblock`). Also a `cmpctblock` or
    /// `blocktxn` above BSV's ordinary limit when none may come.
    #[error("unrequested {command} of {length} bytes; skipped")]
    Unrequested {
        /// The command.
        command: Command,
        /// Its length.
        length: u32,
    },
    /// A `tx` larger than any meshd relays (see
    /// [`BTC_MAX_RELAYED_TX`](crate::constants::BTC_MAX_RELAYED_TX)): skipped unread. Not
    /// misbehaviour; Core too refuses to relay it.
    #[error("tx of {length} bytes is larger than any relayed ({max}); skipped")]
    TxTooLarge {
        /// Its length.
        length: u32,
        /// The network's relay limit.
        max: u32,
    },
    /// A `block` we asked this peer for, larger than our limit (a BSV block above
    /// `max-block-message-size`), or a `cmpctblock` or `blocktxn` above it from a peer
    /// that may send one: skipped unread but for the lead that names the block (a header's
    /// 80 bytes, a `blocktxn`'s 32-byte hash). Reported once that is read, so that the
    /// block's hash tells which request failed; free of points when it answers one.
    #[error("requested {command} of {length} bytes is above our limit of {limit}; skipped")]
    RequestedTooLarge {
        /// The command.
        command: Command,
        /// Its length.
        length: u32,
        /// Limit in force.
        limit: u32,
        /// The hash of the block's header (its first 80 bytes); `None` when the payload is
        /// shorter than a header.
        block: Option<BlockHash>,
    },
    /// An item list whose count does not match its length, or is not a canonical compact
    /// size; the rest of it is skipped unread.
    #[error("malformed {command} list: {reason}")]
    MalformedList {
        /// The command.
        command: Command,
        /// What is wrong.
        reason: &'static str,
    },
    /// v2: a packet failed authentication (tampering, or a broken stream).
    #[error("v2 packet failed authentication")]
    V2BadAead,
    /// v2: a packet's length is above the largest message the limits admit.
    #[error("v2 packet of {length} bytes exceeds the limit of {limit}")]
    V2Oversized {
        /// Contents length the packet claims.
        length: u32,
        /// Limit in force.
        limit: u32,
    },
    /// v2: a packet above every limit but that of a `block` we asked this peer for, where
    /// that limit is our policy (a BSV block above `max-block-message-size`). Unlike v1 it
    /// cannot be read past: a packet is authenticated as a whole, so skipping it would mean
    /// buffering it. The connection ends, free of points since we asked for it, and the
    /// blocks in flight from the peer are asked of other announcers.
    #[error("v2 packet of {length} bytes, likely a requested block, exceeds our limit of {limit}")]
    V2RequestedTooLarge {
        /// Contents length the packet claims.
        length: u32,
        /// Limit in force.
        limit: u32,
    },
    /// v2: a message type with no meaning (an unassigned one-byte id, a malformed long
    /// form, or none at all): ignored, as Core does.
    #[error("v2 message type {id:?} unknown; ignored")]
    V2UnknownMessageType {
        /// The one-byte id (0: a malformed long form; `None`: no type byte at all).
        id: Option<u8>,
    },
}

impl FrameError {
    /// Whether the stream can no longer be trusted (a bad magic, command or length); after the
    /// others the decoder is still at a frame boundary.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            FrameError::BadMagic { .. }
                | FrameError::MalformedCommand { .. }
                | FrameError::Oversized { .. }
                | FrameError::V2BadAead
                | FrameError::V2Oversized { .. }
                | FrameError::V2RequestedTooLarge { .. }
        )
    }

    /// A short stable name, used as a metric label and in logs.
    pub fn kind(&self) -> &'static str {
        match self {
            FrameError::BadMagic { .. } => "bad_magic",
            FrameError::MalformedCommand { .. } => "malformed_command",
            FrameError::Oversized { .. } => "oversized",
            FrameError::BadChecksum { .. } => "bad_checksum",
            FrameError::Overlong { .. } => "overlong_payload",
            FrameError::MalformedList { .. } => "malformed_payload",
            FrameError::Unrequested { .. } => "unrequested_block",
            FrameError::TxTooLarge { .. } => "tx_too_large",
            FrameError::RequestedTooLarge { .. } => "requested_too_large",
            FrameError::V2BadAead => "v2_bad_aead",
            FrameError::V2Oversized { .. } => "v2_oversized_length",
            FrameError::V2RequestedTooLarge { .. } => "v2_requested_too_large",
            FrameError::V2UnknownMessageType { .. } => "v2_unknown_message_type",
        }
    }
}

/// Items per part of a long list.
///
/// # Security
/// A 50,000-entry `inv` is 1.8 MB; read whole it would be buffered, then decoded into as much
/// again. In parts of 1,000 (36 KB) only the parts the actors have not yet handled are held,
/// and those under the reader's byte credit.
pub const ITEMS_PER_PART: usize = 1000;

/// A whole payload being buffered.
#[derive(Debug)]
struct PendingPayload {
    command: Command,
    length: usize,
    checksum: [u8; 4],
    payload: Vec<u8>,
}

/// A list of fixed-size items being read in parts.
struct ListReader {
    command: Command,
    item_len: usize,
    max_items: usize,
    checksum: [u8; 4],
    /// Payload bytes not read yet.
    remaining: usize,
    /// The whole payload's double SHA-256, so far.
    engine: sha256::HashEngine,
    /// The leading compact size, as it arrives.
    count_bytes: [u8; 9],
    count_filled: usize,
    /// Set once the count is read.
    count: Option<u64>,
    /// Item bytes of the current part.
    part: Vec<u8>,
    /// Wire bytes read since the last part was handed out.
    part_wire_len: usize,
}

impl std::fmt::Debug for ListReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListReader")
            .field("command", &self.command)
            .field("remaining", &self.remaining)
            .field("count", &self.count)
            .field("part_len", &self.part.len())
            .finish_non_exhaustive()
    }
}

/// What the rules say of a message from its command and length (see
/// `FrameDecoder::admission`).
enum Admission {
    /// Read it whole.
    Whole,
    /// Read it as a list of fixed-size items.
    List { item_len: usize, max_items: usize },
    /// A command nothing reads: skip it, reporting it as skipped.
    Ignored,
    /// Invalid in a way that keeps the stream in sync: skip it and report this error.
    Refused(FrameError),
}

/// A payload being read past.
#[derive(Debug)]
struct Skipping {
    command: Command,
    remaining: usize,
    wire_len: usize,
    /// Hand out a [`Extent::Skipped`] frame at the end (an ignored command), or nothing (the
    /// error was already reported).
    report: bool,
    /// A requested block too large to read: its header is kept as it passes, and the error
    /// reported with the header's hash once it is in.
    header: Option<Box<HeaderCapture>>,
}

/// The first [`BLOCK_HEADER_LEN`] bytes of a skipped block, and the error to report with
/// their hash.
#[derive(Debug)]
struct HeaderCapture {
    bytes: [u8; BLOCK_HEADER_LEN],
    filled: usize,
    /// What names the block: a header's 80 bytes (`block`, `cmpctblock`), hashed, or a
    /// `blocktxn`'s leading 32-byte block hash.
    len: usize,
    error: FrameError,
}

/// How many leading bytes of a skipped `command` name its block (see [`HeaderCapture`]).
fn naming_len(command: &Command) -> usize {
    if command.as_str() == "blocktxn" {
        BLOCK_HASH_LEN
    } else {
        BLOCK_HEADER_LEN
    }
}

/// The block named by the leading `bytes` of a `command` payload, if they are all there.
fn named_block(command: &Command, bytes: &[u8]) -> Option<BlockHash> {
    let len = naming_len(command);
    let lead = bytes.get(..len)?;
    Some(if len == BLOCK_HASH_LEN {
        let mut raw = [0u8; BLOCK_HASH_LEN];
        raw.copy_from_slice(lead);
        BlockHash::from_byte_array(raw)
    } else {
        BlockHash::from_raw_hash(sha256d::Hash::hash(lead))
    })
}

/// Bytes of a block hash (a `blocktxn` starts with one).
const BLOCK_HASH_LEN: usize = 32;

/// Bytes of a serialized block header.
const BLOCK_HEADER_LEN: usize = 80;

#[derive(Debug)]
enum Pending {
    Whole(PendingPayload),
    List(ListReader),
    Skip(Skipping),
}

/// Streaming frame decoder. See the module documentation.
#[derive(Debug)]
pub struct FrameDecoder {
    magic: [u8; 4],
    limits: PayloadLimits,
    pre_handshake: bool,
    header: [u8; FRAME_HEADER_LEN],
    header_filled: usize,
    pending: Option<Pending>,
    failed: Option<FrameError>,
    /// Blocks we asked this peer for and have not received (`None`: not gated).
    blocks_expected: Option<u32>,
    /// A compact block or its missing transactions may come (we asked the peer to push
    /// compact blocks, or sent it `getblocktxn`): such a message above the ordinary limit
    /// is read only then (or while a block is expected).
    compact_expected: bool,
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
            blocks_expected: None,
            compact_expected: false,
        }
    }

    /// Gates `block` frames: beyond `n` more, they are skipped unread
    /// ([`FrameError::Unrequested`]). Each one read lowers the count.
    pub fn set_blocks_expected(&mut self, n: u32) {
        self.blocks_expected = Some(n);
    }

    /// Whether a `cmpctblock` or `blocktxn` may come unasked by `getdata` (see the field).
    pub fn set_compact_expected(&mut self, expected: bool) {
        self.compact_expected = expected;
    }

    /// What is left of the count given to [`set_blocks_expected`](Self::set_blocks_expected).
    pub fn blocks_expected(&self) -> Option<u32> {
        self.blocks_expected
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

    /// The largest payload any command may have now (the pre-handshake limit, or the larger
    /// of the network's ordinary and bulk limits): what a v2 packet may claim before its
    /// message type can be read.
    pub fn largest_payload(&self) -> u32 {
        if self.pre_handshake {
            MAX_PRE_HANDSHAKE_PAYLOAD
        } else {
            self.limits.general.max(self.limits.bulk)
        }
    }

    /// Whether a packet too large for any command may still be a `block` we asked for that
    /// is above our policy limit only (see [`FrameError::V2RequestedTooLarge`]).
    pub fn may_be_requested_block_above_policy(&self) -> bool {
        !self.pre_handshake
            && (self.blocks_expected > Some(0) || self.compact_expected)
            && self.limits.bulk_is_policy
    }

    /// Admits one authenticated message (a v2 packet: no checksum, already in memory) by
    /// the rules a v1 header is checked by: the command's limit, the block gate, the relay
    /// limit for transactions and the payload shapes. `wire_len` is its size on the wire.
    pub fn admit(
        &mut self,
        command: Command,
        payload: Vec<u8>,
        wire_len: usize,
    ) -> Result<Frame, FrameError> {
        let (extent, payload) = match self.admission(command, payload.len() as u32)? {
            Admission::Refused(FrameError::RequestedTooLarge {
                command,
                length,
                limit,
                ..
            }) => {
                // The packet is in memory already: its lead names the block.
                let block = named_block(&command, &payload);
                return Err(FrameError::RequestedTooLarge {
                    command,
                    length,
                    limit,
                    block,
                });
            }
            Admission::Refused(err) => return Err(err),
            Admission::Ignored => (Extent::Skipped, Vec::new()),
            Admission::List { .. } | Admission::Whole => (Extent::Whole, payload),
        };
        if command.as_str() == "verack" {
            self.pre_handshake = false;
        }
        Ok(Frame {
            command,
            payload,
            extent,
            wire_len,
        })
    }

    fn limit_for(&self, command: &Command) -> u32 {
        if self.pre_handshake {
            MAX_PRE_HANDSHAKE_PAYLOAD
        } else {
            self.limits.for_command(command.as_str())
        }
    }

    /// Consumes bytes from the front of `input` until one frame (or list part) or error is
    /// produced, or the input is used up (then `None`: feed more). After a fatal error every
    /// later call returns that error again without consuming input.
    pub fn decode(&mut self, input: &mut &[u8]) -> Option<Result<Frame, FrameError>> {
        if let Some(err) = &self.failed {
            return Some(Err(err.clone()));
        }
        loop {
            match self.pending.take() {
                Some(Pending::Whole(pending)) => return self.read_whole(pending, input),
                Some(Pending::List(list)) => return self.read_list(list, input),
                Some(Pending::Skip(skip)) => match self.skip(skip, input) {
                    Some(out) => return Some(out),
                    None if self.pending.is_some() => return None,
                    None => continue,
                },
                None => {}
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
                Ok((pending, None)) => self.pending = Some(pending),
                Ok((pending, Some(err))) => {
                    self.pending = Some(pending);
                    return Some(Err(err));
                }
                Err(e) => return Some(Err(self.fail(e))),
            }
        }
    }

    fn read_whole(
        &mut self,
        mut pending: PendingPayload,
        input: &mut &[u8],
    ) -> Option<Result<Frame, FrameError>> {
        let wanted = pending.length - pending.payload.len();
        let take = wanted.min(input.len());
        pending.payload.extend_from_slice(&input[..take]);
        *input = &input[take..];
        if pending.payload.len() < pending.length {
            self.pending = Some(Pending::Whole(pending));
            return None;
        }
        let PendingPayload {
            command,
            checksum,
            payload,
            ..
        } = pending;
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
        Some(Ok(Frame::whole(command, payload)))
    }

    /// Reads a list until a part is complete, the message ends, or the input does.
    fn read_list(
        &mut self,
        mut list: ListReader,
        input: &mut &[u8],
    ) -> Option<Result<Frame, FrameError>> {
        let part_bytes = ITEMS_PER_PART * list.item_len;
        loop {
            if list.count.is_none() && list.remaining > 0 && !input.is_empty() {
                // The compact size, one byte at a time: its first byte says how long it is.
                let byte = input[0];
                *input = &input[1..];
                list.engine.input(&[byte]);
                list.remaining -= 1;
                list.part_wire_len += 1;
                list.count_bytes[list.count_filled] = byte;
                list.count_filled += 1;
                if list.count_filled == compact_size_len(list.count_bytes[0]) {
                    match list_count(&list) {
                        Ok(count) => list.count = Some(count),
                        Err(reason) => return Some(Err(self.skip_rest(list, reason))),
                    }
                }
                continue;
            }
            if list.count.is_some() && list.remaining > 0 && !input.is_empty() {
                let room = part_bytes - list.part.len();
                let take = room.min(list.remaining).min(input.len());
                list.part.extend_from_slice(&input[..take]);
                list.engine.input(&input[..take]);
                *input = &input[take..];
                list.remaining -= take;
                list.part_wire_len += take;
                if list.part.len() == part_bytes && list.remaining > 0 {
                    let part = take_part(&mut list, false);
                    self.pending = Some(Pending::List(list));
                    return Some(Ok(part));
                }
                continue;
            }
            if list.remaining > 0 {
                self.pending = Some(Pending::List(list));
                return None;
            }
            // The whole payload is in.
            if list.count.is_none() {
                return Some(Err(self.skip_rest(list, "no item count")));
            }
            let hash = sha256d::Hash::from_engine(list.engine.clone());
            let mut actual = [0u8; 4];
            actual.copy_from_slice(&hash.as_byte_array()[..4]);
            if actual != list.checksum {
                return Some(Err(FrameError::BadChecksum {
                    command: list.command,
                    expected: list.checksum,
                    actual,
                }));
            }
            return Some(Ok(take_part(&mut list, true)));
        }
    }

    /// Reports a malformed list and reads past what is left of it.
    fn skip_rest(&mut self, list: ListReader, reason: &'static str) -> FrameError {
        self.pending = Some(Pending::Skip(Skipping {
            command: list.command,
            remaining: list.remaining,
            wire_len: 0,
            report: false,
            header: None,
        }));
        FrameError::MalformedList {
            command: list.command,
            reason,
        }
    }

    fn skip(&mut self, mut skip: Skipping, input: &mut &[u8]) -> Option<Result<Frame, FrameError>> {
        let take = skip.remaining.min(input.len());
        let mut captured = None;
        if let Some(capture) = skip.header.as_mut() {
            let n = (capture.len - capture.filled).min(take);
            capture.bytes[capture.filled..capture.filled + n].copy_from_slice(&input[..n]);
            capture.filled += n;
            let short = skip.remaining == take;
            if capture.filled == capture.len || short {
                captured = skip.header.take();
            }
        }
        *input = &input[take..];
        skip.remaining -= take;
        skip.wire_len += take;
        if let Some(capture) = captured {
            let HeaderCapture {
                bytes,
                filled,
                mut error,
                ..
            } = *capture;
            if let FrameError::RequestedTooLarge { block, command, .. } = &mut error {
                *block = named_block(command, &bytes[..filled]);
            }
            if skip.remaining > 0 {
                self.pending = Some(Pending::Skip(skip));
            }
            return Some(Err(error));
        }
        if skip.remaining > 0 {
            self.pending = Some(Pending::Skip(skip));
            return None;
        }
        skip.report.then(|| {
            Ok(Frame {
                command: skip.command,
                payload: Vec::new(),
                extent: Extent::Skipped,
                wire_len: skip.wire_len,
            })
        })
    }

    fn fail(&mut self, err: FrameError) -> FrameError {
        self.failed = Some(err.clone());
        err
    }

    /// What the rules say of a message from its command and length alone (shared by v1
    /// headers and v2 packets). `Err` is fatal: a length above the command's limit.
    fn admission(&mut self, command: Command, length: u32) -> Result<Admission, FrameError> {
        let limit = self.limit_for(&command);
        if length > limit
            && command.as_str() == "block"
            && self.blocks_expected > Some(0)
            && self.limits.bulk_is_policy
        {
            // Asked for, and above our policy only: the stream stays in sync (its length is
            // known), so skip it.
            self.blocks_expected = self.blocks_expected.map(|n| n - 1);
            return Ok(Admission::Refused(FrameError::RequestedTooLarge {
                command,
                length,
                limit,
                block: None,
            }));
        }
        if length > limit
            && matches!(command.as_str(), "cmpctblock" | "blocktxn")
            && !self.pre_handshake
            && (self.compact_expected || self.blocks_expected > Some(0))
            && self.limits.bulk_is_policy
        {
            // A compact block or `blocktxn` of a block above our policy, from a peer that may
            // send one (we asked it to push, asked it for one, or sent it `getblocktxn`):
            // skipped as such a block is, named by its lead. The Connection matches it to
            // its ask and tells Sync; nothing is counted off here (it is not a `block`).
            return Ok(Admission::Refused(FrameError::RequestedTooLarge {
                command,
                length,
                limit,
                block: None,
            }));
        }
        if length > limit {
            return Err(FrameError::Oversized {
                command,
                length,
                limit,
            });
        }
        if matches!(command.as_str(), "cmpctblock" | "blocktxn")
            && !self.pre_handshake
            && length > self.limits.general
            && !self.compact_expected
            && self.blocks_expected == Some(0)
        {
            // Bulk-sized (BSV) and nothing of the kind expected: skipped unread, free.
            return Ok(Admission::Refused(FrameError::Unrequested {
                command,
                length,
            }));
        }
        if command.as_str() == "block" {
            match self.blocks_expected {
                Some(0) => {
                    return Ok(Admission::Refused(FrameError::Unrequested {
                        command,
                        length,
                    }))
                }
                Some(n) => self.blocks_expected = Some(n - 1),
                None => {}
            }
        }
        if command.as_str() == "getblocktxn"
            && !self.pre_handshake
            && length > self.limits.getblocktxn()
        {
            // Within the frame limit but longer than any decodable one (BTC: more than a
            // 16-bit index reaches): skipped unread, as Core's failed decoding drops it,
            // and charged as any overlong payload is (meshd's policy: Core charges none,
            // but no honest peer can send one).
            return Ok(Admission::Refused(FrameError::Overlong {
                command,
                length,
                max: self.limits.getblocktxn(),
            }));
        }
        if command.as_str() == "tx" && length > self.limits.relayed_tx && !self.pre_handshake {
            return Ok(Admission::Refused(FrameError::TxTooLarge {
                length,
                max: self.limits.relayed_tx,
            }));
        }
        let shape = payload_shape(command.as_str());
        let max = shape.max_len();
        Ok(match shape {
            PayloadShape::Ignored => Admission::Ignored,
            PayloadShape::Bounded(_) | PayloadShape::Items { .. } if length > max => {
                Admission::Refused(FrameError::Overlong {
                    command,
                    length,
                    max,
                })
            }
            PayloadShape::Items {
                item_len,
                max_items,
            } => Admission::List {
                item_len,
                max_items,
            },
            PayloadShape::Bounded(_) | PayloadShape::Content => Admission::Whole,
        })
    }

    /// What to do with the payload that follows `header`, and a (non-fatal) error to report
    /// at once if it is to be skipped as invalid.
    fn parse_header(
        &mut self,
        header: &[u8; FRAME_HEADER_LEN],
    ) -> Result<(Pending, Option<FrameError>), FrameError> {
        let mut raw = [0u8; 12];
        raw.copy_from_slice(&header[4..16]);
        let command = Command::from_wire(raw).ok_or(FrameError::MalformedCommand { raw })?;
        let length = u32::from_le_bytes([header[16], header[17], header[18], header[19]]);
        let admission = self.admission(command, length)?;
        let mut checksum = [0u8; 4];
        checksum.copy_from_slice(&header[20..24]);
        let skip = |report| Skipping {
            command,
            remaining: length as usize,
            wire_len: FRAME_HEADER_LEN,
            report,
            header: None,
        };
        Ok(match admission {
            Admission::Refused(error @ FrameError::RequestedTooLarge { .. }) => {
                let mut skipping = skip(false);
                skipping.header = Some(Box::new(HeaderCapture {
                    bytes: [0; BLOCK_HEADER_LEN],
                    filled: 0,
                    len: naming_len(&command),
                    error,
                }));
                (Pending::Skip(skipping), None)
            }
            Admission::Refused(err) => (Pending::Skip(skip(false)), Some(err)),
            Admission::Ignored => (Pending::Skip(skip(true)), None),
            Admission::List {
                item_len,
                max_items,
            } => {
                let list = ListReader {
                    command,
                    item_len,
                    max_items,
                    checksum,
                    remaining: length as usize,
                    engine: sha256d::Hash::engine(),
                    count_bytes: [0; 9],
                    count_filled: 0,
                    count: None,
                    part: Vec::new(),
                    part_wire_len: FRAME_HEADER_LEN,
                };
                (Pending::List(list), None)
            }
            Admission::Whole => (
                Pending::Whole(PendingPayload {
                    command,
                    length: length as usize,
                    checksum,
                    // Deliberately empty: capacity grows with the bytes that actually arrive.
                    payload: Vec::new(),
                }),
                None,
            ),
        })
    }
}

/// Length of a compact size from its first byte.
fn compact_size_len(first: u8) -> usize {
    match first {
        0xfd => 3,
        0xfe => 5,
        0xff => 9,
        _ => 1,
    }
}

/// The list's item count, checked: canonical, within the limit, and matching the length.
fn list_count(list: &ListReader) -> Result<u64, &'static str> {
    let bytes = &list.count_bytes[..list.count_filled];
    let mut r = bytes;
    let count = VarInt::consensus_decode(&mut r)
        .map_err(|_| "non-canonical item count")?
        .0;
    if count > list.max_items as u64 {
        return Err("more items than the protocol allows");
    }
    if count.checked_mul(list.item_len as u64) != Some(list.remaining as u64) {
        return Err("item count does not match the payload length");
    }
    Ok(count)
}

/// Hands out the current part as a frame of its own and starts the next one.
fn take_part(list: &mut ListReader, last: bool) -> Frame {
    let items = list.part.len() / list.item_len;
    let mut payload = Vec::with_capacity(3 + list.part.len());
    // Writing to a Vec cannot fail.
    let _ = VarInt(items as u64).consensus_encode(&mut payload);
    payload.extend_from_slice(&list.part);
    list.part.clear();
    let wire_len = std::mem::take(&mut list.part_wire_len);
    Frame {
        command: list.command,
        payload,
        extent: Extent::Part { last },
        wire_len,
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
    use crate::wire::Message;
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

    /// Feeds `stream` to `dec` in pieces of the sizes in `cuts` (cycled); every piece must be
    /// consumed whole.
    fn decode_in_pieces(
        dec: &mut FrameDecoder,
        stream: &[u8],
        cuts: &[usize],
    ) -> Vec<Result<Frame, FrameError>> {
        let mut out = Vec::new();
        let mut rest = stream;
        for cut in cuts.iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let n = (*cut).min(rest.len());
            let mut piece = &rest[..n];
            while let Some(r) = dec.decode(&mut piece) {
                out.push(r);
            }
            assert!(piece.is_empty(), "a piece left unconsumed");
            rest = &rest[n..];
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

    /// An `inv` payload of `n` entries, entry `i` hashing to `i`.
    fn inv_payload(n: usize) -> Vec<u8> {
        let mut p = Vec::new();
        let _ = VarInt(n as u64).consensus_encode(&mut p);
        for i in 0..n as u32 {
            p.extend_from_slice(&1u32.to_le_bytes());
            let mut hash = [0u8; 32];
            hash[..4].copy_from_slice(&i.to_le_bytes());
            p.extend_from_slice(&hash);
        }
        p
    }

    /// The items of every part, in order, and whether only the final part is marked last.
    fn items_of(frames: &[Result<Frame, FrameError>]) -> (Vec<u8>, bool) {
        let mut items = Vec::new();
        let mut last_marks = Vec::new();
        for f in frames {
            let f = f.as_ref().expect("a part");
            let Extent::Part { last } = f.extent else {
                panic!("not a part: {f:?}")
            };
            last_marks.push(last);
            let mut r = f.payload.as_slice();
            let n = VarInt::consensus_decode(&mut r).unwrap().0 as usize;
            assert!(n <= ITEMS_PER_PART);
            assert_eq!(r.len(), n * 36);
            items.extend_from_slice(r);
        }
        let only_final =
            last_marks.iter().rev().skip(1).all(|l| !l) && last_marks.last() == Some(&true);
        (items, only_final)
    }

    #[test]
    fn a_long_inv_arrives_in_parts_that_add_up_to_it() {
        let (magic, limits) = regtest();
        let payload = inv_payload(2500);
        let wire = encode_frame(magic, cmd("inv"), &payload);
        let frames = decode_all(&mut FrameDecoder::new_established(magic, limits), &wire);
        assert_eq!(frames.len(), 3, "1,000 + 1,000 + 500");
        let (items, only_final) = items_of(&frames);
        assert_eq!(items, payload[3..], "every item, in order");
        assert!(only_final);
        let total: usize = frames.iter().map(|f| f.as_ref().unwrap().wire_len()).sum();
        assert_eq!(
            total,
            wire.len(),
            "the parts' sizes add up to the message's"
        );
        // Each part decodes as a list of its own.
        let first = Message::decode(frames[0].clone().unwrap()).unwrap();
        assert!(
            matches!(first, Message::Network(bitcoin::p2p::message::NetworkMessage::Inv(v)) if v.len() == ITEMS_PER_PART)
        );
    }

    #[test]
    fn a_bad_checksum_on_a_long_list_drops_its_last_part_and_stays_in_sync() {
        let (magic, limits) = regtest();
        let mut wire = encode_frame(magic, cmd("getdata"), &inv_payload(1500));
        wire[20] ^= 1;
        wire.extend(encode_frame(magic, cmd("ping"), &[7; 8]));
        let frames = decode_all(&mut FrameDecoder::new_established(magic, limits), &wire);
        assert_eq!(frames.len(), 3);
        assert!(matches!(
            frames[0],
            Ok(Frame {
                extent: Extent::Part { last: false },
                ..
            })
        ));
        assert!(matches!(frames[1], Err(FrameError::BadChecksum { .. })));
        assert_eq!(frames[2].as_ref().unwrap().command, cmd("ping"));
        assert!(!frames[1].as_ref().unwrap_err().is_fatal());
    }

    #[test]
    fn a_list_whose_count_lies_is_skipped_and_the_stream_stays_in_sync() {
        let (magic, limits) = regtest();
        for (payload, reason) in [
            // Claims 10 entries, carries 5.
            (
                {
                    let mut p = inv_payload(5);
                    p[0] = 10;
                    p
                },
                "item count does not match the payload length",
            ),
            // 3 as a three-byte compact size.
            (
                {
                    let mut p = vec![0xfd, 3, 0];
                    p.extend_from_slice(&inv_payload(3)[1..]);
                    p
                },
                "non-canonical item count",
            ),
            (Vec::new(), "no item count"),
        ] {
            let mut wire = encode_frame(magic, cmd("inv"), &payload);
            wire.extend(encode_frame(magic, cmd("ping"), &[7; 8]));
            let frames = decode_all(&mut FrameDecoder::new_established(magic, limits), &wire);
            assert_eq!(
                frames[0],
                Err(FrameError::MalformedList {
                    command: cmd("inv"),
                    reason
                }),
            );
            assert_eq!(frames.len(), 2, "{frames:?}");
            assert_eq!(frames[1].as_ref().unwrap().command, cmd("ping"));
        }
    }

    #[test]
    fn payloads_longer_than_any_valid_one_are_skipped_unread() {
        let (magic, limits) = regtest();
        // A 3 MB ping and a 50,001-entry inv: within the network's 4 MB, above what the
        // command allows. Only the header is read before the verdict.
        for (command, length, max) in [
            ("ping", 3_000_000u32, 8u32),
            ("inv", 3 + 50_001 * 36, 1_800_003),
        ] {
            let mut dec = FrameDecoder::new_established(magic, limits);
            let h = header(magic.to_bytes(), &cmd(command).to_wire(), length, [0; 4]);
            let r = decode_all(&mut dec, &h);
            assert_eq!(
                r,
                vec![Err(FrameError::Overlong {
                    command: cmd(command),
                    length,
                    max
                })]
            );
            assert!(!r[0].as_ref().unwrap_err().is_fatal());
            assert!(
                matches!(dec.pending, Some(Pending::Skip(_))),
                "nothing buffered"
            );
            let mut rest = vec![0u8; length as usize];
            rest.extend(encode_frame(magic, cmd("pong"), &[1; 8]));
            let r = decode_all(&mut dec, &rest);
            assert_eq!(r.len(), 1);
            assert_eq!(r[0].as_ref().unwrap().command, cmd("pong"));
        }
    }

    #[test]
    fn blocks_beyond_those_asked_for_are_skipped_unread() {
        let (magic, limits) = regtest();
        let block = encode_frame(magic, cmd("block"), &[0xab; 100_000]);
        let ping = encode_frame(magic, cmd("ping"), &[1; 8]);
        let mut stream = block.clone();
        stream.extend(&block);
        stream.extend(&ping);
        // Ungated (tests, tools): both are read.
        let r = decode_all(&mut FrameDecoder::new_established(magic, limits), &stream);
        assert!(r.iter().all(|f| f.is_ok()));
        // One asked for: the second is skipped, and the stream stays in sync.
        let mut dec = FrameDecoder::new_established(magic, limits);
        dec.set_blocks_expected(1);
        let r = decode_all(&mut dec, &stream);
        assert_eq!(r.len(), 3);
        assert_eq!(r[0].as_ref().unwrap().payload.len(), 100_000);
        assert_eq!(
            r[1],
            Err(FrameError::Unrequested {
                command: cmd("block"),
                length: 100_000
            })
        );
        assert!(!r[1].as_ref().unwrap_err().is_fatal());
        assert_eq!(r[2].as_ref().unwrap().command, cmd("ping"));
        assert_eq!(dec.blocks_expected(), Some(0));
    }

    #[test]
    fn a_requested_block_above_the_limit_is_skipped_free_and_an_unrequested_one_is_fatal() {
        let (magic, mut limits) = regtest();
        limits.bulk = 50_000;
        limits.general = 50_000;
        // Where the block limit is the chain's own (BTC), a larger block is invalid even
        // when asked for: oversized, fatal.
        let big = encode_frame(magic, cmd("block"), &[0xab; 60_000]);
        let mut dec = FrameDecoder::new_established(magic, limits);
        dec.set_blocks_expected(1);
        assert!(matches!(
            decode_all(&mut dec, &big)[0],
            Err(FrameError::Oversized { .. })
        ));
        limits.bulk_is_policy = true;
        let mut stream = encode_frame(magic, cmd("block"), &[0xab; 60_000]);
        stream.extend(encode_frame(magic, cmd("ping"), &[1; 8]));
        let mut dec = FrameDecoder::new_established(magic, limits);
        dec.set_blocks_expected(1);
        let r = decode_all(&mut dec, &stream);
        // Reported with the hash of its header (the first 80 bytes), so Sync knows which.
        let hash = BlockHash::from_raw_hash(sha256d::Hash::hash(&[0xab; 80]));
        assert_eq!(
            r[0],
            Err(FrameError::RequestedTooLarge {
                command: cmd("block"),
                length: 60_000,
                limit: 50_000,
                block: Some(hash),
            })
        );
        let kind = r[0].as_ref().unwrap_err().kind();
        assert_eq!(crate::peer::misbehavior::cost(kind), 0);
        assert_eq!(r[1].as_ref().unwrap().command, cmd("ping"));
        assert_eq!(dec.blocks_expected(), Some(0));
        // Not asked for: the limit holds as before.
        let r = decode_all(&mut dec, &stream);
        assert!(matches!(r[0], Err(FrameError::Oversized { .. })));
    }

    #[test]
    fn compact_block_data_above_our_policy_is_skipped_and_named_only_when_it_may_come() {
        let (magic, mut limits) = regtest();
        limits.bulk = 50_000;
        limits.general = 50_000;
        limits.bulk_is_policy = true;
        let hash = [0x5a; 32];
        let mut blocktxn = hash.to_vec();
        blocktxn.resize(60_000, 1);
        let mut cmpct = vec![0xab; 80];
        cmpct.resize(60_000, 2);
        let mut stream = encode_frame(magic, cmd("blocktxn"), &blocktxn);
        stream.extend(encode_frame(magic, cmd("cmpctblock"), &cmpct));
        stream.extend(encode_frame(magic, cmd("ping"), &[1; 8]));
        let mut dec = FrameDecoder::new_established(magic, limits);
        dec.set_blocks_expected(0);
        dec.set_compact_expected(true);
        assert!(dec.may_be_requested_block_above_policy(), "v2 agrees");
        let r = decode_all(&mut dec, &stream);
        assert_eq!(
            r[0],
            Err(FrameError::RequestedTooLarge {
                command: cmd("blocktxn"),
                length: 60_000,
                limit: 50_000,
                block: Some(BlockHash::from_byte_array(hash)),
            })
        );
        assert_eq!(
            r[1],
            Err(FrameError::RequestedTooLarge {
                command: cmd("cmpctblock"),
                length: 60_000,
                limit: 50_000,
                block: Some(BlockHash::from_raw_hash(sha256d::Hash::hash(&[0xab; 80]))),
            })
        );
        assert_eq!(r[2].as_ref().unwrap().command, cmd("ping"));
        // Not a block: nothing counted off the blocks expected.
        assert_eq!(dec.blocks_expected(), Some(0));
        // Nothing of the kind may come: oversized, as before.
        let mut dec = FrameDecoder::new_established(magic, limits);
        dec.set_blocks_expected(0);
        assert!(!dec.may_be_requested_block_above_policy());
        assert!(matches!(
            decode_all(&mut dec, &stream)[0],
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn a_btc_getblocktxn_longer_than_any_valid_one_is_skipped_not_fatal() {
        // Core reads any message up to 4 MB and fails to decode a getblocktxn whose indexes
        // pass 16 bits: dropped, the connection kept. meshd ended it as oversized.
        let (magic, limits) = regtest();
        let max = limits.getblocktxn();
        assert_eq!(max, 32 + 9 + (1 << 16));
        let length = max + 1;
        let mut stream = encode_frame(magic, cmd("getblocktxn"), &vec![1; length as usize]);
        stream.extend(encode_frame(magic, cmd("ping"), &[1; 8]));
        let r = decode_all(&mut FrameDecoder::new_established(magic, limits), &stream);
        assert_eq!(
            r[0],
            Err(FrameError::Overlong {
                command: cmd("getblocktxn"),
                length,
                max,
            })
        );
        assert_eq!(r[1].as_ref().unwrap().command, cmd("ping"));
        // Above the message limit it is oversized, as any message is.
        let over = encode_frame(
            magic,
            cmd("getblocktxn"),
            &vec![1; limits.general as usize + 1],
        );
        assert!(matches!(
            decode_all(&mut FrameDecoder::new_established(magic, limits), &over)[0],
            Err(FrameError::Oversized { .. })
        ));
    }

    #[test]
    fn transactions_larger_than_any_relayed_are_skipped_unread() {
        let (magic, limits) = regtest();
        let mut stream = encode_frame(magic, cmd("tx"), &vec![1; 400_001]);
        stream.extend(encode_frame(magic, cmd("ping"), &[1; 8]));
        let r = decode_all(&mut FrameDecoder::new_established(magic, limits), &stream);
        assert_eq!(
            r[0],
            Err(FrameError::TxTooLarge {
                length: 400_001,
                max: 400_000
            })
        );
        assert_eq!(r[1].as_ref().unwrap().command, cmd("ping"));
        assert_eq!(
            crate::peer::misbehavior::cost(r[0].as_ref().unwrap_err().kind()),
            0
        );
    }

    #[test]
    fn commands_meshd_does_not_read_are_skipped_without_buffering() {
        let (magic, limits) = regtest();
        let mut dec = FrameDecoder::new_established(magic, limits);
        let payload = vec![0x55; 3_000_000];
        let wire = encode_frame(magic, cmd("merkleblock"), &payload);
        let mut input = &wire[..FRAME_HEADER_LEN + 1_000_000];
        assert_eq!(dec.decode(&mut input), None);
        assert!(
            matches!(dec.pending, Some(Pending::Skip(_))),
            "nothing buffered"
        );
        let r = decode_all(&mut dec, &wire[FRAME_HEADER_LEN + 1_000_000..]);
        let f = r[0].as_ref().unwrap();
        assert_eq!(
            (f.extent, f.payload.len(), f.wire_len()),
            (Extent::Skipped, 0, wire.len())
        );
        assert!(matches!(
            Message::decode(f.clone()),
            Ok(Message::Unknown { .. })
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
            let chunked = decode_in_pieces(&mut FrameDecoder::new(magic, limits), &stream, &cuts);
            prop_assert_eq!(&whole, &chunked);
            prop_assert_eq!(whole.len(), frames.len() + 1);
        }

        #[test]
        fn lists_in_parts_do_not_depend_on_chunking(n in 0usize..2600, cuts in proptest::collection::vec(1usize..5000, 1..16)) {
            let (magic, limits) = regtest();
            let payload = inv_payload(n);
            let wire = encode_frame(magic, cmd("notfound"), &payload);
            let whole = decode_all(&mut FrameDecoder::new_established(magic, limits), &wire);
            let chunked =
                decode_in_pieces(&mut FrameDecoder::new_established(magic, limits), &wire, &cuts);
            prop_assert_eq!(&whole, &chunked);
            prop_assert_eq!(whole.len(), n.div_ceil(ITEMS_PER_PART).max(1));
            let (items, only_final) = items_of(&whole);
            prop_assert_eq!(&items[..], &payload[payload.len() - n * 36..]);
            prop_assert!(only_final);
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
            prop_assert_eq!(got, vec![Frame::whole(cmd("tx"), payload)]);
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
