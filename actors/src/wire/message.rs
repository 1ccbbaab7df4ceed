//! Message payloads: decoded and encoded through rust-bitcoin, plus BSV's `protoconf`.
//!
//! [`Message::decode`] turns a checksum-verified [`Frame`] into a typed message. Every
//! message of the protocol meshd speaks (version, verack, ping, pong, addr, addrv2,
//! sendaddrv2, getaddr, inv, getdata, notfound, getheaders, getblocks, headers, block, tx,
//! reject, sendheaders, feefilter, sendcmpct, cmpctblock, getblocktxn, blocktxn, wtxidrelay,
//! mempool) is decoded by rust-bitcoin's
//! consensus decoders, except `cmpctblock` and `getblocktxn`, whose indexes are wider on BSV
//! than rust-bitcoin allows (see [`super::compact`]); `protoconf` (BSV) is parsed here
//! because rust-bitcoin does not know it, and meshd's own `overlayaddr` in
//! [`super::overlay_announce`];
//! any other command comes out as [`Message::Unknown`], which callers count and ignore.
//!
//! Item counts are checked against Core's limits from the leading compact size, before the
//! items are decoded, so a list is never decoded only to be thrown away.

use bitcoin::consensus::encode::{self, Decodable, Encodable, VarInt};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::Magic;

use super::compact::{decode_getblocktxn, CompactBlock, IndexWidth, TxnRequest};
use super::frame::{payload_checksum, Command, Extent, Frame};
use crate::constants::{
    BSV_LEGACY_PAYLOAD, FRAME_HEADER_LEN, MAX_ADDR_PER_MESSAGE, MAX_HEADERS_PER_MESSAGE,
    MAX_INV_PER_MESSAGE, MAX_LOCATOR_HASHES, MAX_USER_AGENT_LEN,
};
use crate::network::Chain;

/// BSV's protocol-configuration message (`protoconf`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protoconf {
    /// Largest ordinary payload the sender is willing to receive.
    pub max_recv_payload_length: u32,
    /// Stream policies the sender supports (field 2, optional).
    pub stream_policies: Option<String>,
}

impl Protoconf {
    /// Parses a `protoconf` payload. Unknown trailing fields are allowed, as the spec demands.
    pub fn decode(payload: &[u8]) -> Result<Protoconf, encode::Error> {
        let mut r = payload;
        let fields = VarInt::consensus_decode_from_finite_reader(&mut r)?.0;
        if fields == 0 {
            return Err(encode::Error::ParseFailed("protoconf with zero fields"));
        }
        let max_recv_payload_length = u32::consensus_decode_from_finite_reader(&mut r)?;
        let stream_policies = if fields >= 2 {
            Some(String::consensus_decode_from_finite_reader(&mut r)?)
        } else {
            None
        };
        Ok(Protoconf {
            max_recv_payload_length,
            stream_policies,
        })
    }

    /// Encodes a `protoconf` payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        let fields: u64 = if self.stream_policies.is_some() { 2 } else { 1 };
        // Writing to a Vec cannot fail.
        let _ = VarInt(fields).consensus_encode(&mut out);
        let _ = self.max_recv_payload_length.consensus_encode(&mut out);
        if let Some(p) = &self.stream_policies {
            let _ = p.consensus_encode(&mut out);
        }
        out
    }
}

/// A decoded message.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// A message rust-bitcoin knows.
    Network(NetworkMessage),
    /// BSV `protoconf`.
    Protoconf(Protoconf),
    /// `cmpctblock`, with the index width of the peer's chain.
    CmpctBlock(Box<CompactBlock>),
    /// A peer's `getblocktxn`, indexes kept encoded (see [`TxnRequest`]). Ours go as
    /// rust-bitcoin's `GetBlockTxn`.
    GetBlockTxn(TxnRequest),
    /// meshd's `overlayaddr`: the sender's libp2p overlay (see [`super::overlay_announce`]).
    OverlayAddr(super::overlay_announce::OverlayAnnounce),
    /// A command we do not know or do not read; counted and ignored.
    Unknown {
        /// The command.
        command: Command,
        /// The raw payload (empty when the frame decoder skipped it unread).
        payload: Vec<u8>,
    },
}

/// A payload that does not decode, or breaks a protocol limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// The payload is not a valid encoding of its command.
    #[error("malformed {command} payload: {reason}")]
    Malformed {
        /// The command.
        command: Command,
        /// What the decoder said.
        reason: String,
    },
    /// A list holds more items than the protocol allows.
    #[error("{command} carries {count} items, more than the limit of {max}")]
    TooManyItems {
        /// The command.
        command: Command,
        /// Items claimed.
        count: u64,
        /// Limit.
        max: usize,
    },
    /// Bytes left over after the payload was decoded.
    #[error("{command} payload has {extra} trailing bytes")]
    TrailingBytes {
        /// The command.
        command: Command,
        /// Bytes left over.
        extra: usize,
    },
    /// The version message's user agent is longer than Core accepts.
    #[error("user agent of {len} bytes exceeds {MAX_USER_AGENT_LEN}")]
    UserAgentTooLong {
        /// Its length.
        len: usize,
    },
}

impl PayloadError {
    /// A short stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            PayloadError::Malformed { .. } => "malformed_payload",
            PayloadError::TooManyItems { .. } => "too_many_items",
            PayloadError::TrailingBytes { .. } => "trailing_bytes",
            PayloadError::UserAgentTooLong { .. } => "user_agent_too_long",
        }
    }
}

/// How strictly the decoded length must match the payload length.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Tail {
    /// The whole payload must be consumed.
    Exact,
    /// Extra bytes are allowed (fields added by later protocol versions).
    Lenient,
}

fn decode_as<T: Decodable>(
    command: Command,
    payload: &[u8],
    tail: Tail,
) -> Result<T, PayloadError> {
    let mut r = payload;
    let value =
        T::consensus_decode_from_finite_reader(&mut r).map_err(|e| PayloadError::Malformed {
            command,
            reason: e.to_string(),
        })?;
    if tail == Tail::Exact && !r.is_empty() {
        return Err(PayloadError::TrailingBytes {
            command,
            extra: r.len(),
        });
    }
    Ok(value)
}

/// Decodes the whole payload with `decode` (a decoder of our own).
fn decode_with<T>(
    command: Command,
    payload: &[u8],
    decode: impl FnOnce(&mut &[u8]) -> Result<T, encode::Error>,
) -> Result<T, PayloadError> {
    let mut r = payload;
    let value = decode(&mut r).map_err(|e| PayloadError::Malformed {
        command,
        reason: e.to_string(),
    })?;
    if !r.is_empty() {
        return Err(PayloadError::TrailingBytes {
            command,
            extra: r.len(),
        });
    }
    Ok(value)
}

/// Reads the leading compact-size count of a list payload, at `offset`, without decoding it.
fn check_count(
    command: Command,
    payload: &[u8],
    offset: usize,
    max: usize,
) -> Result<(), PayloadError> {
    let mut r = payload.get(offset..).unwrap_or(&[]);
    let count = VarInt::consensus_decode_from_finite_reader(&mut r)
        .map_err(|e| PayloadError::Malformed {
            command,
            reason: e.to_string(),
        })?
        .0;
    if count > max as u64 {
        return Err(PayloadError::TooManyItems {
            command,
            count,
            max,
        });
    }
    Ok(())
}

/// `headers` carries each header followed by a transaction count, read and ignored as Core
/// does.
fn decode_headers(
    command: Command,
    payload: &[u8],
) -> Result<Vec<bitcoin::block::Header>, PayloadError> {
    check_count(command, payload, 0, MAX_HEADERS_PER_MESSAGE)?;
    let malformed = |e: encode::Error| PayloadError::Malformed {
        command,
        reason: e.to_string(),
    };
    let mut r = payload;
    let count = VarInt::consensus_decode_from_finite_reader(&mut r)
        .map_err(malformed)?
        .0;
    let mut headers = Vec::with_capacity(count as usize);
    for _ in 0..count {
        headers.push(
            bitcoin::block::Header::consensus_decode_from_finite_reader(&mut r)
                .map_err(malformed)?,
        );
        // Core reads the transaction count and ignores it ("assume it is 0"): a non-zero one
        // is not misbehaviour.
        VarInt::consensus_decode_from_finite_reader(&mut r).map_err(malformed)?;
    }
    if !r.is_empty() {
        return Err(PayloadError::TrailingBytes {
            command,
            extra: r.len(),
        });
    }
    Ok(headers)
}

fn expect_empty(
    command: Command,
    payload: &[u8],
    msg: NetworkMessage,
) -> Result<NetworkMessage, PayloadError> {
    if payload.is_empty() {
        Ok(msg)
    } else {
        Err(PayloadError::TrailingBytes {
            command,
            extra: payload.len(),
        })
    }
}

impl Message {
    /// Decodes a verified frame.
    /// Decodes with BTC's rules (see [`Message::decode_for`]).
    pub fn decode(frame: Frame) -> Result<Message, PayloadError> {
        Message::decode_for(frame, Chain::Btc)
    }

    /// Decodes a frame from a peer on `chain` (compact-block indexes are 32 bits on BSV).
    pub fn decode_for(frame: Frame, chain: Chain) -> Result<Message, PayloadError> {
        use NetworkMessage as N;
        if frame.extent == Extent::Skipped {
            return Ok(Message::Unknown {
                command: frame.command,
                payload: Vec::new(),
            });
        }
        let c = frame.command;
        let p = frame.payload.as_slice();
        let exact = Tail::Exact;
        let msg = match c.as_str() {
            "version" => {
                // Later versions append fields (BSV: association id); allow them.
                let v: bitcoin::p2p::message_network::VersionMessage =
                    decode_as(c, p, Tail::Lenient)?;
                if v.user_agent.len() > MAX_USER_AGENT_LEN {
                    return Err(PayloadError::UserAgentTooLong {
                        len: v.user_agent.len(),
                    });
                }
                N::Version(v)
            }
            "verack" => expect_empty(c, p, N::Verack)?,
            "sendheaders" => expect_empty(c, p, N::SendHeaders)?,
            "getaddr" => expect_empty(c, p, N::GetAddr)?,
            "mempool" => expect_empty(c, p, N::MemPool)?,
            "wtxidrelay" => expect_empty(c, p, N::WtxidRelay)?,
            "sendaddrv2" => expect_empty(c, p, N::SendAddrV2)?,
            "ping" => N::Ping(decode_as(c, p, exact)?),
            "pong" => N::Pong(decode_as(c, p, exact)?),
            "addr" => {
                check_count(c, p, 0, MAX_ADDR_PER_MESSAGE)?;
                N::Addr(decode_as(c, p, exact)?)
            }
            "addrv2" => {
                check_count(c, p, 0, MAX_ADDR_PER_MESSAGE)?;
                N::AddrV2(decode_as(c, p, exact)?)
            }
            "inv" => {
                check_count(c, p, 0, MAX_INV_PER_MESSAGE)?;
                N::Inv(decode_as(c, p, exact)?)
            }
            "getdata" => {
                check_count(c, p, 0, MAX_INV_PER_MESSAGE)?;
                N::GetData(decode_as(c, p, exact)?)
            }
            "notfound" => {
                check_count(c, p, 0, MAX_INV_PER_MESSAGE)?;
                N::NotFound(decode_as(c, p, exact)?)
            }
            "getheaders" => {
                check_count(c, p, 4, MAX_LOCATOR_HASHES)?;
                N::GetHeaders(decode_as(c, p, exact)?)
            }
            "getblocks" => {
                check_count(c, p, 4, MAX_LOCATOR_HASHES)?;
                N::GetBlocks(decode_as(c, p, exact)?)
            }
            "headers" => N::Headers(decode_headers(c, p)?),
            "block" => N::Block(decode_as(c, p, exact)?),
            "tx" => N::Tx(decode_as(c, p, exact)?),
            "reject" => N::Reject(decode_as(c, p, Tail::Lenient)?),
            "feefilter" => {
                let fee: i64 = decode_as(c, p, exact)?;
                if !(0..=21_000_000 * 100_000_000).contains(&fee) {
                    return Err(PayloadError::Malformed {
                        command: c,
                        reason: format!("feefilter {fee} outside the money range"),
                    });
                }
                N::FeeFilter(fee)
            }
            "filterload" => N::FilterLoad(decode_as(c, p, exact)?),
            "filteradd" => N::FilterAdd(decode_as(c, p, exact)?),
            "filterclear" => expect_empty(c, p, N::FilterClear)?,
            "merkleblock" => N::MerkleBlock(decode_as(c, p, exact)?),
            "sendcmpct" => N::SendCmpct(decode_as(c, p, exact)?),
            "cmpctblock" => {
                let width = IndexWidth::of(chain);
                let cmpct = decode_with(c, p, |r| CompactBlock::decode(r, width))?;
                return Ok(Message::CmpctBlock(Box::new(cmpct)));
            }
            "getblocktxn" => {
                // After the block hash: the indexes asked for, at most one per transaction
                // a block can hold (16-bit indexes on BTC; on BSV, one per payload byte).
                let (width, max) = match chain {
                    Chain::Btc => (IndexWidth::Bits16, MAX_BLOCKTXN_INDEXES),
                    Chain::Bsv => (IndexWidth::Bits32, p.len()),
                };
                check_count(c, p, 32, max)?;
                let request = decode_with(c, p, |r| decode_getblocktxn(r, width, max))?;
                return Ok(Message::GetBlockTxn(request));
            }
            "blocktxn" => N::BlockTxn(decode_as(c, p, exact)?),
            "protoconf" => {
                if p.len() > BSV_LEGACY_PAYLOAD as usize {
                    return Err(PayloadError::Malformed {
                        command: c,
                        reason: "protoconf larger than 1 MiB".into(),
                    });
                }
                return Protoconf::decode(p).map(Message::Protoconf).map_err(|e| {
                    PayloadError::Malformed {
                        command: c,
                        reason: e.to_string(),
                    }
                });
            }
            super::overlay_announce::OVERLAY_ADDR_COMMAND => {
                return super::overlay_announce::OverlayAnnounce::decode(p)
                    .map(Message::OverlayAddr)
                    .map_err(|e| PayloadError::Malformed {
                        command: c,
                        reason: e.to_string(),
                    });
            }
            _ => {
                return Ok(Message::Unknown {
                    command: c,
                    payload: frame.payload,
                })
            }
        };
        Ok(Message::Network(msg))
    }

    /// The command this message travels under.
    pub fn command(&self) -> Command {
        match self {
            Message::Network(m) => Command::new(m.command().as_ref())
                .unwrap_or_else(|| Command::new("unknown").expect("valid")),
            Message::Protoconf(_) => Command::new("protoconf").expect("valid command"),
            Message::CmpctBlock(_) => Command::new("cmpctblock").expect("valid command"),
            Message::GetBlockTxn(_) => Command::new("getblocktxn").expect("valid command"),
            Message::OverlayAddr(_) => {
                Command::new(super::overlay_announce::OVERLAY_ADDR_COMMAND).expect("valid command")
            }
            Message::Unknown { command, .. } => *command,
        }
    }

    /// Encodes the whole frame (header and payload) for `magic`.
    pub fn encode(&self, magic: Magic) -> Vec<u8> {
        let mut out = Vec::with_capacity(FRAME_HEADER_LEN + 64);
        out.resize(FRAME_HEADER_LEN, 0);
        match self {
            // Writing to a Vec cannot fail.
            Message::Network(m) => {
                let _ = m.consensus_encode(&mut out);
            }
            Message::Protoconf(p) => out.extend_from_slice(&p.encode()),
            Message::CmpctBlock(c) => {
                let _ = c.consensus_encode(&mut out);
            }
            Message::GetBlockTxn(r) => {
                let _ = r.consensus_encode(&mut out);
            }
            Message::OverlayAddr(a) => out.extend_from_slice(&a.encode()),
            Message::Unknown { payload, .. } => out.extend_from_slice(payload),
        }
        let payload_len = (out.len() - FRAME_HEADER_LEN) as u32;
        let checksum = payload_checksum(&out[FRAME_HEADER_LEN..]);
        out[0..4].copy_from_slice(&magic.to_bytes());
        out[4..16].copy_from_slice(&self.command().to_wire());
        out[16..20].copy_from_slice(&payload_len.to_le_bytes());
        out[20..24].copy_from_slice(&checksum);
        out
    }

    /// Shorthand for a message rust-bitcoin knows.
    pub fn net(m: NetworkMessage) -> Message {
        Message::Network(m)
    }
}

/// A `block` frame of `block` for `magic`, encoded from a borrow (a kept block is framed
/// once, without a copy of its transactions), with its payload's size.
pub fn encode_block_frame(magic: Magic, block: &bitcoin::Block) -> (Vec<u8>, usize) {
    let mut out = Vec::with_capacity(FRAME_HEADER_LEN + block.total_size());
    out.resize(FRAME_HEADER_LEN, 0);
    // Writing to a Vec cannot fail.
    let _ = block.consensus_encode(&mut out);
    let payload_len = out.len() - FRAME_HEADER_LEN;
    let checksum = payload_checksum(&out[FRAME_HEADER_LEN..]);
    out[0..4].copy_from_slice(&magic.to_bytes());
    out[4..16].copy_from_slice(&Command::new("block").expect("valid command").to_wire());
    out[16..20].copy_from_slice(&(payload_len as u32).to_le_bytes());
    out[20..24].copy_from_slice(&checksum);
    (out, payload_len)
}

/// Commands meshd knows, used to keep metric labels bounded (anything else is `other`).
pub const KNOWN_COMMANDS: &[&str] = &[
    "version",
    "verack",
    "ping",
    "pong",
    "addr",
    "addrv2",
    "sendaddrv2",
    "getaddr",
    "inv",
    "getdata",
    "notfound",
    "getheaders",
    "getblocks",
    "headers",
    "block",
    "tx",
    "reject",
    "sendheaders",
    "feefilter",
    "sendcmpct",
    "cmpctblock",
    "getblocktxn",
    "blocktxn",
    "wtxidrelay",
    "mempool",
    "protoconf",
    "filterload",
    "filteradd",
    "filterclear",
    "merkleblock",
    "overlayaddr",
];

/// What the frame decoder does with a command's payload, from what its format allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadShape {
    /// Read whole; no valid payload is longer than this many bytes.
    Bounded(u32),
    /// Block or transaction content: only the network's limit bounds it.
    Content,
    /// A compact-size count then fixed-size items (`inv`, `getdata`, `notfound`), read in
    /// parts rather than whole.
    Items {
        /// Bytes per item.
        item_len: usize,
        /// Most items a valid message holds.
        max_items: usize,
    },
    /// Nothing meshd does reads it (an unknown command, or `merkleblock`, the answer to a
    /// `filterload` meshd never sends, as Core ignores it): skipped unread.
    Ignored,
}

/// Bytes of one `inv`/`getdata`/`notfound` entry: type (4) and hash (32).
const INV_ITEM_LEN: usize = 36;
/// Longest compact size: a marker byte and a `u64`.
const MAX_COMPACT_SIZE_LEN: u32 = 9;
/// The compact size of any count up to 65,535: a marker byte and a `u16`.
const COUNT_PREFIX_LEN: u32 = 3;
/// Bytes of one `addr` entry: time (4) and a network address (26).
const ADDR_ENTRY_LEN: u32 = 30;
/// Longest address in an `addrv2` entry (Core's `MAX_ADDRV2_SIZE`).
const MAX_ADDRV2_ADDR_LEN: u32 = 512;
/// Longest `addrv2` entry: time (4), services (compact size), network id (1), address length
/// (compact size, 3 bytes for 512), address, port (2).
const MAX_ADDRV2_ENTRY_LEN: u32 = 4 + MAX_COMPACT_SIZE_LEN + 1 + 3 + MAX_ADDRV2_ADDR_LEN + 2;
/// A header in `headers`: 80 bytes and a zero transaction count.
const HEADERS_ENTRY_LEN: u32 = 81;
/// Indexes one `getblocktxn` may ask for: a transaction index is at most 16 bits in BIP152's
/// prefilled encoding (Core keeps them as `uint16_t`), so a block usable as a compact block
/// has at most this many transactions. Each differential index takes at most 3 bytes.
pub const MAX_BLOCKTXN_INDEXES: usize = 1 << 16;
/// Largest BIP37 filter (`MAX_BLOOM_FILTER_SIZE`).
const MAX_BLOOM_FILTER_LEN: u32 = 36_000;
/// Largest element `filteradd` may carry (`MAX_SCRIPT_ELEMENT_SIZE`).
const MAX_FILTERADD_LEN: u32 = 520;
/// `reject` is deprecated; its message (12), reason (Core cuts at 111) and hash (32) fit here
/// with room for the BSV node's longer reasons.
const MAX_REJECT_LEN: u32 = 1024;

impl PayloadShape {
    /// The longest valid payload of this shape (`u32::MAX` for content: the network's limit
    /// applies).
    pub fn max_len(self) -> u32 {
        match self {
            PayloadShape::Bounded(max) => max,
            PayloadShape::Items {
                item_len,
                max_items,
            } => COUNT_PREFIX_LEN.saturating_add((item_len * max_items) as u32),
            PayloadShape::Content | PayloadShape::Ignored => u32::MAX,
        }
    }
}

/// The shape of `command`'s payload (see [`PayloadShape`]).
pub fn payload_shape(command: &str) -> PayloadShape {
    use PayloadShape::Bounded;
    let count = |n: usize| COUNT_PREFIX_LEN + n as u32;
    match command {
        "verack" | "sendheaders" | "getaddr" | "mempool" | "wtxidrelay" | "sendaddrv2"
        | "filterclear" => Bounded(0),
        "ping" | "pong" | "feefilter" => Bounded(8),
        "sendcmpct" => Bounded(9),
        // Sent before verack, where the pre-handshake limit applies anyway.
        "version" => Bounded(crate::constants::MAX_PRE_HANDSHAKE_PAYLOAD),
        "addr" => Bounded(count(0) + MAX_ADDR_PER_MESSAGE as u32 * ADDR_ENTRY_LEN),
        "addrv2" => Bounded(count(0) + MAX_ADDR_PER_MESSAGE as u32 * MAX_ADDRV2_ENTRY_LEN),
        "getheaders" | "getblocks" => Bounded(4 + count(0) + (MAX_LOCATOR_HASHES as u32 + 1) * 32),
        "headers" => Bounded(count(0) + MAX_HEADERS_PER_MESSAGE as u32 * HEADERS_ENTRY_LEN),
        "reject" => Bounded(MAX_REJECT_LEN),
        "filterload" => Bounded(count(0) + MAX_BLOOM_FILTER_LEN + 4 + 4 + 1),
        "filteradd" => Bounded(count(0) + MAX_FILTERADD_LEN),
        "protoconf" => Bounded(BSV_LEGACY_PAYLOAD),
        "overlayaddr" => Bounded(super::overlay_announce::MAX_OVERLAY_ADDR_PAYLOAD),
        "inv" | "getdata" | "notfound" => PayloadShape::Items {
            item_len: INV_ITEM_LEN,
            max_items: MAX_INV_PER_MESSAGE,
        },
        // `getblocktxn`'s bound depends on the chain (see `PayloadLimits::getblocktxn`).
        "block" | "tx" | "cmpctblock" | "blocktxn" | "getblocktxn" => PayloadShape::Content,
        _ => PayloadShape::Ignored,
    }
}

/// The metric label for a command: itself if known, else `other`.
pub fn command_label(command: &str) -> &'static str {
    KNOWN_COMMANDS
        .iter()
        .find(|&&k| k == command)
        .copied()
        .unwrap_or("other")
}
