//! Property tests: every message type survives encode → frame → decode unchanged.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

use bitcoin::absolute::LockTime;
use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::p2p::address::{AddrV2, AddrV2Message, Address};
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::p2p::message_blockdata::{GetBlocksMessage, GetHeadersMessage, Inventory};
use bitcoin::p2p::message_compact_blocks::SendCmpct;
use bitcoin::p2p::message_network::{Reject, RejectReason, VersionMessage};
use bitcoin::p2p::ServiceFlags;
use bitcoin::{
    Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence, Transaction, TxIn,
    TxMerkleNode, TxOut, Txid, Witness, Wtxid,
};
use proptest::prelude::*;

use super::*;
use crate::network::NetworkId;

fn hash32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn socket() -> impl Strategy<Value = SocketAddr> {
    prop_oneof![
        (any::<u32>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((Ipv4Addr::from(ip), port))),
        (any::<u128>(), any::<u16>())
            .prop_map(|(ip, port)| SocketAddr::from((Ipv6Addr::from(ip), port))),
    ]
}

fn address() -> impl Strategy<Value = Address> {
    (socket(), any::<u64>()).prop_map(|(s, f)| Address::new(&s, ServiceFlags::from(f)))
}

fn header() -> impl Strategy<Value = Header> {
    (
        any::<i32>(),
        hash32(),
        hash32(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(|(v, p, m, t, b, n)| Header {
            version: Version::from_consensus(v),
            prev_blockhash: BlockHash::from_byte_array(p),
            merkle_root: TxMerkleNode::from_byte_array(m),
            time: t,
            bits: CompactTarget::from_consensus(b),
            nonce: n,
        })
}

fn transaction() -> impl Strategy<Value = Transaction> {
    (
        hash32(),
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..40),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..40),
        any::<bool>(),
    )
        .prop_map(|(prev, vout, sig, value, spk, witness)| Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(Txid::from_byte_array(prev), vout),
                script_sig: ScriptBuf::from_bytes(sig),
                sequence: Sequence::MAX,
                witness: if witness {
                    Witness::from_slice(&[vec![1u8, 2, 3]])
                } else {
                    Witness::new()
                },
            }],
            output: vec![TxOut {
                value: Amount::from_sat(value % 2_100_000_000_000_000),
                script_pubkey: ScriptBuf::from_bytes(spk),
            }],
        })
}

fn inventory() -> impl Strategy<Value = Inventory> {
    prop_oneof![
        hash32().prop_map(|h| Inventory::Block(BlockHash::from_byte_array(h))),
        hash32().prop_map(|h| Inventory::Transaction(Txid::from_byte_array(h))),
        hash32().prop_map(|h| Inventory::WTx(Wtxid::from_byte_array(h))),
    ]
}

fn network_message() -> impl Strategy<Value = NetworkMessage> {
    use NetworkMessage as N;
    prop_oneof![
        (
            any::<u32>(),
            any::<u64>(),
            any::<i64>(),
            address(),
            address(),
            any::<u64>(),
            "[ -~]{0,64}",
            any::<i32>(),
            any::<bool>()
        )
            .prop_map(
                |(
                    version,
                    s,
                    timestamp,
                    receiver,
                    sender,
                    nonce,
                    user_agent,
                    start_height,
                    relay,
                )| {
                    N::Version(VersionMessage {
                        version,
                        services: ServiceFlags::from(s),
                        timestamp,
                        receiver,
                        sender,
                        nonce,
                        user_agent,
                        start_height,
                        relay,
                    })
                }
            ),
        Just(N::Verack),
        Just(N::SendHeaders),
        Just(N::GetAddr),
        Just(N::MemPool),
        Just(N::WtxidRelay),
        Just(N::SendAddrV2),
        any::<u64>().prop_map(N::Ping),
        any::<u64>().prop_map(N::Pong),
        proptest::collection::vec((any::<u32>(), address()), 0..20).prop_map(N::Addr),
        proptest::collection::vec(
            (any::<u32>(), any::<u64>(), any::<u32>(), any::<u16>()),
            0..20
        )
        .prop_map(|v| {
            N::AddrV2(
                v.into_iter()
                    .map(|(time, s, ip, port)| AddrV2Message {
                        time,
                        services: ServiceFlags::from(s),
                        addr: AddrV2::Ipv4(Ipv4Addr::from(ip)),
                        port,
                    })
                    .collect(),
            )
        }),
        proptest::collection::vec(inventory(), 0..20).prop_map(N::Inv),
        proptest::collection::vec(inventory(), 0..20).prop_map(N::GetData),
        proptest::collection::vec(inventory(), 0..20).prop_map(N::NotFound),
        (
            any::<u32>(),
            proptest::collection::vec(hash32(), 0..20),
            hash32()
        )
            .prop_map(|(version, l, stop)| {
                N::GetHeaders(GetHeadersMessage {
                    version,
                    locator_hashes: l.into_iter().map(BlockHash::from_byte_array).collect(),
                    stop_hash: BlockHash::from_byte_array(stop),
                })
            }),
        (
            any::<u32>(),
            proptest::collection::vec(hash32(), 0..20),
            hash32()
        )
            .prop_map(|(version, l, stop)| {
                N::GetBlocks(GetBlocksMessage {
                    version,
                    locator_hashes: l.into_iter().map(BlockHash::from_byte_array).collect(),
                    stop_hash: BlockHash::from_byte_array(stop),
                })
            }),
        proptest::collection::vec(header(), 0..30).prop_map(N::Headers),
        (header(), proptest::collection::vec(transaction(), 1..4))
            .prop_map(|(header, txdata)| N::Block(Block { header, txdata })),
        transaction().prop_map(N::Tx),
        ("[a-z]{1,12}", "[ -~]{0,40}", hash32()).prop_map(|(m, reason, h)| {
            N::Reject(Reject {
                message: m.into(),
                ccode: RejectReason::Invalid,
                reason: reason.into(),
                hash: bitcoin::hashes::sha256d::Hash::from_byte_array(h),
            })
        }),
        (0i64..=2_100_000_000_000_000).prop_map(N::FeeFilter),
        (any::<bool>(), any::<u64>()).prop_map(|(send_compact, version)| N::SendCmpct(SendCmpct {
            send_compact,
            version
        })),
    ]
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        8 => network_message().prop_map(Message::Network),
        1 => (any::<u32>(), proptest::option::of("[a-zA-Z,]{0,30}")).prop_map(|(max_recv_payload_length, stream_policies)| {
            Message::Protoconf(Protoconf { max_recv_payload_length, stream_policies })
        }),
        1 => ("[a-z]{1,12}", proptest::collection::vec(any::<u8>(), 0..100))
            .prop_filter("not a known command", |(c, _)| !message::KNOWN_COMMANDS.contains(&c.as_str()))
            .prop_map(|(c, payload)| Message::Unknown { command: Command::new(&c).expect("valid"), payload }),
    ]
}

proptest! {
    #[test]
    fn every_message_type_round_trips(msg in message()) {
        let p = NetworkId::Regtest.profile();
        let bytes = msg.encode(p.magic);
        let mut dec = FrameDecoder::new_established(p.magic, p.limits);
        let mut input = bytes.as_slice();
        let frame = dec.decode(&mut input).expect("a frame").expect("valid frame");
        prop_assert!(input.is_empty());
        prop_assert_eq!(frame.command, msg.command());
        let back = Message::decode(frame).expect("decodes");
        let expected = match msg {
            // Commands meshd does not read are skipped unread.
            Message::Unknown { command, .. } => Message::Unknown { command, payload: Vec::new() },
            other => other,
        };
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn arbitrary_payloads_never_panic(cmd_idx in 0usize..message::KNOWN_COMMANDS.len(), payload in proptest::collection::vec(any::<u8>(), 0..400)) {
        let command = Command::new(message::KNOWN_COMMANDS[cmd_idx]).expect("valid");
        let _ = Message::decode(Frame::whole(command, payload));
    }
}

#[test]
fn oversized_lists_are_refused_before_decoding() {
    // An inv claiming 50,001 entries with no bytes behind the count.
    let mut payload = Vec::new();
    bitcoin::consensus::Encodable::consensus_encode(
        &bitcoin::consensus::encode::VarInt(50_001),
        &mut payload,
    )
    .unwrap();
    let err = Message::decode(Frame::whole(Command::new("inv").unwrap(), payload)).unwrap_err();
    assert!(matches!(
        err,
        PayloadError::TooManyItems { count: 50_001, .. }
    ));
}

#[test]
fn protoconf_parses_as_the_bsv_node_sends_it() {
    // numberOfFields=2, maxRecvPayloadLength=2 MiB, streamPolicies="BlockPriority,Default".
    let mut payload = vec![0x02];
    payload.extend_from_slice(&(2u32 * 1024 * 1024).to_le_bytes());
    let policies = b"BlockPriority,Default";
    payload.push(policies.len() as u8);
    payload.extend_from_slice(policies);
    let m = Message::decode(Frame::whole(Command::new("protoconf").unwrap(), payload)).unwrap();
    assert_eq!(
        m,
        Message::Protoconf(Protoconf {
            max_recv_payload_length: 2 * 1024 * 1024,
            stream_policies: Some("BlockPriority,Default".into())
        })
    );
    let zero = Message::decode(Frame::whole(Command::new("protoconf").unwrap(), vec![0]));
    assert!(zero.is_err(), "zero fields is a protocol violation");
}

#[test]
fn unknown_commands_come_out_as_unknown() {
    let m = Message::decode(Frame::whole(Command::new("xversion").unwrap(), vec![1, 2])).unwrap();
    assert!(matches!(m, Message::Unknown { ref payload, .. } if payload == &[1, 2]));
    assert_eq!(command_label("xversion"), "other");
    assert_eq!(command_label("headers"), "headers");
}
