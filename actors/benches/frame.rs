//! Hot-path benchmarks of the wire codec: framing plus checksum (and payload decoding) of a
//! full `headers` message (2000 headers) and of a 1 MB `block` message.
//!
//! Run: `cargo bench -p meshd-actors --bench frame`. Figures go in BENCHMARKS.md.

use std::hint::black_box;

use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::{
    absolute::LockTime, Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshd_actors::network::NetworkId;
use meshd_actors::wire::{FrameDecoder, Message};

fn headers_message() -> Vec<u8> {
    let headers: Vec<Header> = (0..2000u32)
        .map(|i| Header {
            version: Version::from_consensus(0x2000_0000),
            prev_blockhash: BlockHash::from_byte_array([i as u8; 32]),
            merkle_root: TxMerkleNode::from_byte_array([(i >> 8) as u8; 32]),
            time: 1_700_000_000 + i,
            bits: CompactTarget::from_consensus(0x207f_ffff),
            nonce: i,
        })
        .collect();
    Message::Network(NetworkMessage::Headers(headers)).encode(NetworkId::Regtest.profile().magic)
}

fn block_message(target_bytes: usize) -> Vec<u8> {
    let mut txdata = Vec::new();
    let mut size = 0;
    let mut i = 0u32;
    while size < target_bytes {
        let tx = Transaction {
            version: bitcoin::transaction::Version::TWO,
            lock_time: LockTime::ZERO,
            input: vec![TxIn {
                previous_output: OutPoint::new(Txid::from_byte_array([i as u8; 32]), i),
                script_sig: ScriptBuf::from_bytes(vec![0x51; 107]),
                sequence: Sequence::MAX,
                witness: Witness::new(),
            }],
            output: (0..2)
                .map(|_| TxOut {
                    value: Amount::from_sat(5000),
                    script_pubkey: ScriptBuf::from_bytes(vec![0x76; 25]),
                })
                .collect(),
        };
        size += bitcoin::consensus::serialize(&tx).len();
        txdata.push(tx);
        i += 1;
    }
    let header = Header {
        version: Version::from_consensus(0x2000_0000),
        prev_blockhash: BlockHash::all_zeros(),
        merkle_root: TxMerkleNode::all_zeros(),
        time: 1_700_000_000,
        bits: CompactTarget::from_consensus(0x207f_ffff),
        nonce: 0,
    };
    Message::Network(NetworkMessage::Block(Block { header, txdata }))
        .encode(NetworkId::Regtest.profile().magic)
}

fn frame_only(bytes: &[u8]) -> usize {
    let p = NetworkId::Regtest.profile();
    let mut dec = FrameDecoder::new_established(p.magic, p.limits);
    let mut input = bytes;
    let frame = dec.decode(&mut input).expect("frame").expect("valid");
    frame.payload.len()
}

fn frame_and_decode(bytes: &[u8]) -> Message {
    let p = NetworkId::Regtest.profile();
    let mut dec = FrameDecoder::new_established(p.magic, p.limits);
    let mut input = bytes;
    let frame = dec.decode(&mut input).expect("frame").expect("valid");
    Message::decode(frame).expect("decodes")
}

fn benches(c: &mut Criterion) {
    let headers = headers_message();
    let mut g = c.benchmark_group("headers_2000");
    g.throughput(Throughput::Elements(2000));
    g.bench_function("frame_checksum", |b| {
        b.iter(|| frame_only(black_box(&headers)))
    });
    g.bench_function("frame_checksum_decode", |b| {
        b.iter(|| frame_and_decode(black_box(&headers)))
    });
    g.finish();

    let block = block_message(1_000_000);
    let mut g = c.benchmark_group("block_1mb");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("frame_checksum", |b| {
        b.iter(|| frame_only(black_box(&block)))
    });
    g.bench_function("frame_checksum_decode", |b| {
        b.iter(|| frame_and_decode(black_box(&block)))
    });
    g.finish();
}

criterion_group!(frame, benches);
criterion_main!(frame);
