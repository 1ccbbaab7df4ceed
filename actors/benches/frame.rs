//! Hot-path benchmarks of the wire codec: framing plus checksum (and payload decoding) of a
//! full `headers` message (2000 headers) and of a 1 MB `block` message; and the BIP324 v2
//! transport on the same block: v1 encoding (checksum) against v2 encryption of the frame,
//! and v2 decryption and admission against v1 framing. Also one v2 key exchange (both sides,
//! in memory).
//!
//! Run: `cargo bench -p meshd-actors --bench frame`. Figures go in BENCHMARKS.md.

use std::hint::black_box;

use bip324::Role;
use bitcoin::block::{Header, Version};
use bitcoin::hashes::Hash;
use bitcoin::p2p::message::NetworkMessage;
use bitcoin::{
    absolute::LockTime, Amount, Block, BlockHash, CompactTarget, OutPoint, ScriptBuf, Sequence,
    Transaction, TxIn, TxMerkleNode, TxOut, Txid, Witness,
};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use meshd_actors::network::NetworkId;
use meshd_actors::wire::v2::{V2Decoder, V2Encoder, V2Handshake, V2Ready};
use meshd_actors::wire::{encode_frame, Command, FrameDecoder, Message};

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

/// Both ends of a fresh v2 session, in memory.
fn v2_pair() -> (V2Ready, V2Ready) {
    let magic = NetworkId::Regtest.profile().magic.to_bytes();
    let (mut a, mut to_b) = V2Handshake::new(magic, Role::Initiator);
    let (mut b, mut to_a) = V2Handshake::new(magic, Role::Responder);
    let (mut ra, mut rb) = (None, None);
    while ra.is_none() || rb.is_none() {
        let step = b.feed(&std::mem::take(&mut to_b)).expect("responder");
        to_a.extend(step.send);
        rb = rb.or(step.ready);
        let step = a.feed(&std::mem::take(&mut to_a)).expect("initiator");
        to_b.extend(step.send);
        ra = ra.or(step.ready);
    }
    (ra.unwrap(), rb.unwrap())
}

fn v2_benches(c: &mut Criterion) {
    let p = NetworkId::Regtest.profile();
    let block = block_message(1_000_000);
    let payload = block[24..].to_vec();
    let (a, b) = v2_pair();
    let packet = V2Encoder::new(a.outbound.clone())
        .encrypt_v1_frame(&block)
        .expect("a block fits a packet");
    let mut g = c.benchmark_group("v2_block_1mb");
    g.throughput(Throughput::Bytes(block.len() as u64));
    // What the sender pays per peer: v1 is the frame (checksum); v2 re-frames that frame
    // and encrypts it (the frame itself is built once, shared by every peer).
    g.bench_function("v1_encode", |bch| {
        bch.iter(|| encode_frame(p.magic, Command::new("block").unwrap(), black_box(&payload)))
    });
    g.bench_function("v2_encrypt_frame", |bch| {
        bch.iter_batched(
            || V2Encoder::new(a.outbound.clone()),
            |mut enc| enc.encrypt_v1_frame(black_box(&block)),
            criterion::BatchSize::SmallInput,
        )
    });
    // What the receiver pays: v1 framing with the checksum, v2 decryption and admission.
    g.bench_function("v1_frame_checksum", |bch| {
        bch.iter(|| frame_only(black_box(&block)))
    });
    g.bench_function("v2_decrypt_admit", |bch| {
        bch.iter_batched(
            || {
                let mut rules = FrameDecoder::new(p.magic, p.limits);
                // Past the handshake and expecting the block, as after a getdata.
                let verack = encode_frame(p.magic, Command::new("verack").unwrap(), &[]);
                rules.decode(&mut &verack[..]);
                rules.set_blocks_expected(1);
                V2Decoder::new(b.inbound.clone(), rules)
            },
            |mut dec| {
                let mut input = &packet[..];
                dec.decode(&mut input)
                    .expect("frame")
                    .expect("valid")
                    .payload
                    .len()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();

    // The AEAD alone on 16 KiB packets, against `openssl speed -evp chacha20-poly1305
    // -bytes 16384` (BENCHMARKS.md).
    let mut g = c.benchmark_group("v2_packet_16k");
    g.throughput(Throughput::Bytes(16384));
    let contents = vec![0x5au8; 16384];
    let mut sealer = a.outbound.clone();
    let mut out = Vec::with_capacity(16384 + 64);
    g.bench_function("seal", |bch| {
        bch.iter(|| {
            out.clear();
            let _ = sealer.seal_into(black_box(&contents), false, b"", &mut out);
            out.len()
        })
    });
    // FSChaCha20Poly1305 alone, in place: what `openssl speed` measures.
    let mut aead = meshd_actors::wire::fschacha::FsChaCha20Poly1305::at([0x42; 32], 0);
    let mut packet = vec![0x5au8; 16384];
    g.bench_function("aead_in_place", |bch| {
        bch.iter(|| aead.seal(b"", black_box(&mut packet)))
    });
    g.finish();

    let mut g = c.benchmark_group("v2_handshake");
    g.bench_function("both_sides_in_memory", |bch| bch.iter(v2_pair));
    g.finish();
}

criterion_group!(frame, benches, v2_benches);
criterion_main!(frame);
