#!/usr/bin/env python3
"""Two BSV regtest peers that speak compact blocks as the SV node does, against meshd.

Standard library only, written from BIP152 and the SV node's code (net_processing.cpp,
blockencodings.cpp), not from meshd's: what the SV node does differently from Bitcoin Core is
that it offers and honours `sendcmpct` version 1 only (short ids of txids: BSV has no
witnesses), and that its prefilled and `getblocktxn` indexes are 32-bit, so a block of more
than 65,536 transactions travels compact. The script plays two peers over loopback:

- SOURCE gives meshd blocks: it announces them with `headers`, answers meshd's
  `getdata(MSG_CMPCT_BLOCK)` with a version-1 `cmpctblock` and meshd's `getblocktxn` with
  `blocktxn`, or with the whole block when more than 99% is asked (as the SV node).
- SINK asks meshd for high-bandwidth pushes (`sendcmpct(1, 1)`), takes the `cmpctblock` meshd
  pushes, asks for what it lacks with `getblocktxn`, rebuilds the block from the `blocktxn`
  (or takes the whole block, the SV node's answer when more than 99% is asked) and checks
  its merkle root.

Two blocks cross: a small one whose transactions partly sit in meshd's pool (fed by SOURCE
beforehand), and a large one of BIG_BLOCK_TXS transactions with a transaction prefilled past
index 65,535 (and, both ways, `getblocktxn` indexes past it). It prints one JSON line per
finding and exits 0 when every check held, 1 with a reason otherwise.

    sv_compact_peer.py HOST:PORT [--big-txs N]
"""

import argparse
import hashlib
import json
import os
import socket
import struct
import sys
import time

MAGIC = bytes.fromhex("dab5bffa")  # BSV regtest, as the SV node's chainparams
PROTOCOL_VERSION = 70016  # the SV node's PROTOCOL_VERSION
NODE_NETWORK = 1
MSG_TX, MSG_BLOCK, MSG_CMPCT_BLOCK = 1, 2, 4
REGTEST_BITS = 0x207FFFFF
GENESIS = bytes.fromhex(
    "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206")[::-1]
TIMEOUT = 60.0


def sha256d(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def varint(n):
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    if n <= 0xFFFFFFFF:
        return b"\xfe" + struct.pack("<I", n)
    return b"\xff" + struct.pack("<Q", n)


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, n):
        if self.at + n > len(self.data):
            raise ValueError("short payload")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def u8(self):
        return self.take(1)[0]

    def u32(self):
        return struct.unpack("<I", self.take(4))[0]

    def u64(self):
        return struct.unpack("<Q", self.take(8))[0]

    def varint(self):
        first = self.u8()
        if first < 0xFD:
            return first
        width = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        return int.from_bytes(self.take(width), "little")

    def tx(self):
        """One transaction (no witness on BSV), returned as its bytes."""
        start = self.at
        self.take(4)
        for _ in range(self.varint()):
            self.take(36)
            self.take(self.varint())
            self.take(4)
        for _ in range(self.varint()):
            self.take(8)
            self.take(self.varint())
        self.take(4)
        return self.data[start:self.at]

    def done(self):
        return self.at == len(self.data)


# SipHash-2-4 (Aumasson and Bernstein), for BIP152's short ids.
MASK = (1 << 64) - 1


def rotl(x, b):
    return ((x << b) | (x >> (64 - b))) & MASK


def siphash24(k0, k1, msg):
    v0, v1 = k0 ^ 0x736F6D6570736575, k1 ^ 0x646F72616E646F6D
    v2, v3 = k0 ^ 0x6C7967656E657261, k1 ^ 0x7465646279746573

    def rounds(n):
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & MASK
            v1 = rotl(v1, 13) ^ v0
            v0 = rotl(v0, 32)
            v2 = (v2 + v3) & MASK
            v3 = rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & MASK
            v3 = rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & MASK
            v1 = rotl(v1, 17) ^ v2
            v2 = rotl(v2, 32)

    full = len(msg) - len(msg) % 8
    for i in range(0, full, 8):
        m = int.from_bytes(msg[i:i + 8], "little")
        v3 ^= m
        rounds(2)
        v0 ^= m
    last = (len(msg) & 0xFF) << 56 | int.from_bytes(msg[full:], "little")
    v3 ^= last
    rounds(2)
    v0 ^= last
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


def siphash_self_test():
    """SipHash-2-4's published 64-bit vectors (the paper's key 00..0f, messages 00..n-1)."""
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    expect = {0: 0x726FDB47DD0E0E31, 1: 0x74F839C593DC67FD, 8: 0x93F5F5799A932462,
              15: 0xA129CA6149BE45E5}
    for n, want in expect.items():
        got = siphash24(k0, k1, bytes(range(n)))
        if got != want:
            raise SystemExit(f"siphash self-test failed at {n}: {got:#x}")


def short_id_keys(header, nonce):
    h = hashlib.sha256(header + struct.pack("<Q", nonce)).digest()
    return int.from_bytes(h[0:8], "little"), int.from_bytes(h[8:16], "little")


def short_id(keys, txid):
    return siphash24(keys[0], keys[1], txid) & 0xFFFFFFFFFFFF


def make_tx(tag):
    """A transaction passing the context-free checks: one made-up input, one output."""
    prevout = os.urandom(28) + struct.pack("<I", tag) + struct.pack("<I", 0)
    script_pubkey = b"\x76\xa9\x14" + os.urandom(20) + b"\x88\xac"
    return struct.pack("<i", 1) + varint(1) + prevout + varint(1) + b"\x51" + \
        struct.pack("<I", 0xFFFFFFFF) + varint(1) + struct.pack("<q", 1000) + \
        varint(len(script_pubkey)) + script_pubkey + struct.pack("<I", 0)


def coinbase(height):
    script_sig = bytes([4]) + struct.pack("<I", height) + os.urandom(8)
    return struct.pack("<i", 1) + varint(1) + bytes(32) + b"\xff\xff\xff\xff" + \
        varint(len(script_sig)) + script_sig + b"\xff\xff\xff\xff" + varint(1) + \
        struct.pack("<q", 50 * 100_000_000) + varint(1) + b"\x51" + struct.pack("<I", 0)


def merkle_root(txids):
    level = list(txids)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def target(bits):
    return (bits & 0xFFFFFF) << (8 * ((bits >> 24) - 3))


class Block:
    def __init__(self, parent, height, txs):
        self.txs = [coinbase(height)] + txs
        self.txids = [sha256d(t) for t in self.txs]
        root = merkle_root(self.txids)
        when = int(time.time()) - 600 + height
        nonce = 0
        while True:
            header = struct.pack("<i", 0x20000000) + parent + root + \
                struct.pack("<III", when, REGTEST_BITS, nonce)
            hash_ = sha256d(header)
            if int.from_bytes(hash_, "little") <= target(REGTEST_BITS):
                break
            nonce += 1
        self.header, self.hash = header, hash_

    def hex(self):
        return self.hash[::-1].hex()

    def serialize(self):
        return self.header + varint(len(self.txs)) + b"".join(self.txs)

    def compact(self, nonce, prefill):
        """A version-1 cmpctblock: short ids of txids, `prefill` (sorted indexes) given
        whole, each as its gap from the previous one (32-bit on BSV)."""
        keys = short_id_keys(self.header, nonce)
        ids = [short_id(keys, self.txids[i]).to_bytes(6, "little")
               for i in range(len(self.txs)) if i not in prefill]
        out = self.header + struct.pack("<Q", nonce) + varint(len(ids)) + b"".join(ids)
        out += varint(len(prefill))
        last = -1
        for i in prefill:
            out += varint(i - last - 1) + self.txs[i]
            last = i
        return out


class Peer:
    def __init__(self, name, addr):
        self.name = name
        self.sock = socket.create_connection(addr, timeout=TIMEOUT)
        self.buf = b""
        self.chain = []  # Blocks we serve, in height order

    def send(self, cmd, payload=b""):
        self.sock.sendall(MAGIC + cmd.encode().ljust(12, b"\0") +
                          struct.pack("<I", len(payload)) + sha256d(payload)[:4] + payload)

    def read_exact(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError(f"{self.name}: meshd closed the connection")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv(self):
        head = self.read_exact(24)
        if head[:4] != MAGIC:
            raise ValueError(f"{self.name}: wrong magic {head[:4].hex()}")
        cmd = head[4:16].rstrip(b"\0").decode()
        (length,) = struct.unpack("<I", head[16:20])
        payload = self.read_exact(length)
        if sha256d(payload)[:4] != head[20:24]:
            raise ValueError(f"{self.name}: bad checksum on {cmd}")
        return cmd, payload

    def wait_for(self, want, what, deadline=TIMEOUT):
        """Serves meshd (ping, getheaders, getdata) until `want(cmd, payload)` returns a
        value, which is returned."""
        end = time.time() + deadline
        while time.time() < end:
            self.sock.settimeout(max(0.1, end - time.time()))
            try:
                cmd, payload = self.recv()
            except socket.timeout:
                break
            got = want(cmd, payload)
            if got is not None:
                return got
            self.serve(cmd, payload)
        fail(f"{self.name}: no {what} within {deadline:.0f} s")

    def serve(self, cmd, payload):
        if cmd == "ping":
            self.send("pong", payload)
        elif cmd == "getheaders":
            r = Reader(payload)
            r.u32()
            locator = [r.take(32) for _ in range(r.varint())]
            start = 0
            for i, b in enumerate(self.chain):
                if b.hash in locator:
                    start = i + 1
            heads = self.chain[start:]
            self.send("headers", varint(len(heads)) +
                      b"".join(b.header + b"\x00" for b in heads))
        elif cmd == "getdata":
            r = Reader(payload)
            for _ in range(r.varint()):
                kind, hash_ = r.u32(), r.take(32)
                for b in self.chain:
                    if b.hash == hash_ and kind & 0xFF == MSG_BLOCK:
                        self.send("block", b.serialize())
                    elif b.hash == hash_ and kind == MSG_CMPCT_BLOCK:
                        self.send("cmpctblock", b.compact(0x5EED, [0]))

    def handshake(self):
        addr = struct.pack("<Q", 0) + bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]) + \
            struct.pack(">H", 18444)
        agent = b"/Bitcoin SV:1.1.0/"
        self.send("version", struct.pack("<iQq", PROTOCOL_VERSION, NODE_NETWORK,
                                         int(time.time())) + addr + addr + os.urandom(8) +
                  varint(len(agent)) + agent + struct.pack("<i", 0) + b"\x01")
        version = self.wait_for(lambda c, p: p if c == "version" else None, "version")
        self.send("verack")
        self.wait_for(lambda c, _p: True if c == "verack" else None, "verack")
        # The SV node follows verack with protoconf (its receive limit) and sendcmpct(0, 1).
        self.send("protoconf", varint(2) + struct.pack("<I", 2 * 1024 * 1024) +
                  varint(7) + b"Default")
        self.send("sendcmpct", b"\x00" + struct.pack("<Q", 1))
        return Reader(version).u32()


def fail(why):
    print(json.dumps({"error": why}), flush=True)
    sys.exit(1)


def report(**kw):
    print(json.dumps(kw), flush=True)


def meshd_sendcmpct(peer):
    """meshd's sendcmpct: on BSV only version 1 (a version 2 would be of wtxids)."""
    def want(cmd, payload):
        if cmd == "sendcmpct":
            return payload[0], struct.unpack("<Q", payload[1:9])[0]
        return None
    announce, version = peer.wait_for(want, "sendcmpct")
    if version != 1:
        fail(f"{peer.name}: meshd offered compact blocks version {version} on BSV")
    return announce


def read_cmpctblock(payload):
    """Decodes a version-1 cmpctblock with the SV node's 32-bit prefilled indexes."""
    r = Reader(payload)
    header, nonce = r.take(80), r.u64()
    ids = [int.from_bytes(r.take(6), "little") for _ in range(r.varint())]
    prefilled, last = {}, -1
    for _ in range(r.varint()):
        last += r.varint() + 1
        if last > 0xFFFFFFFF:
            fail("prefilled index past 32 bits")
        prefilled[last] = r.tx()
    if not r.done():
        fail("bytes left after the cmpctblock")
    return header, nonce, ids, prefilled


def read_getblocktxn(payload):
    r = Reader(payload)
    hash_, indexes, last = r.take(32), [], -1
    for _ in range(r.varint()):
        last += r.varint() + 1
        indexes.append(last)
    if not r.done():
        fail("bytes left after the getblocktxn")
    return hash_, indexes


def blocktxn(block, indexes):
    return block.hash + varint(len(indexes)) + b"".join(block.txs[i] for i in indexes)


def give_block(source, block, pooled, prefill):
    """SOURCE announces `block`, answers meshd's compact request, and the getblocktxn it
    sends for what its pool lacks (all but `pooled` and `prefill`)."""
    source.chain.append(block)
    source.send("headers", varint(1) + block.header + b"\x00")

    def asked(cmd, payload):
        if cmd != "getdata":
            return None
        r = Reader(payload)
        items = [(r.u32(), r.take(32)) for _ in range(r.varint())]
        return next((k for k, h in items if h == block.hash), None)
    kind = source.wait_for(asked, f"getdata for block {block.hex()}")
    if kind != MSG_CMPCT_BLOCK:
        fail(f"the lone tip block was asked as type {kind}, not MSG_CMPCT_BLOCK")
    source.send("cmpctblock", block.compact(0x5EED, prefill))
    want = [i for i in range(len(block.txs)) if i not in prefill and i not in pooled]
    if not want:
        return
    hash_, indexes = source.wait_for(
        lambda c, p: read_getblocktxn(p) if c == "getblocktxn" else None, "getblocktxn")
    if hash_ != block.hash or indexes != want:
        fail(f"meshd asked for {len(indexes)} transactions (up to index "
             f"{max(indexes, default=-1)}), expected {len(want)} (up to {max(want)})")
    # The SV node's -maxblocktxnpercent (99): nearly all asked is answered with the block.
    whole = len(indexes) * 100 > len(block.txs) * 99
    report(peer="source", block=block.hex(), getblocktxn=len(indexes),
           highest_index=max(indexes), answered_with="block" if whole else "blocktxn")
    if whole:
        source.send("block", block.serialize())
    else:
        source.send("blocktxn", blocktxn(block, indexes))


def take_push(sink, block, known):
    """SINK takes meshd's high-bandwidth push of `block`, asks for what it lacks (all but
    `known`) and checks the rebuilt block."""
    def pushed(cmd, payload):
        if cmd == "cmpctblock" and payload[:80] == block.header:
            return read_cmpctblock(payload)
        if (cmd == "inv" and block.hash in payload) or \
                (cmd == "headers" and block.header in payload):
            fail(f"block {block.hex()} announced by {cmd} to a high-bandwidth peer")
        return None
    header, nonce, ids, prefilled = sink.wait_for(pushed, f"cmpctblock {block.hex()}")
    if 0 not in prefilled or prefilled[0] != block.txs[0]:
        fail("the coinbase is not prefilled")
    if len(ids) + len(prefilled) != len(block.txs):
        fail("the cmpctblock counts the wrong number of transactions")
    keys = short_id_keys(header, nonce)
    have = {short_id(keys, block.txids[i]): block.txs[i] for i in known}
    slots, missing, at = [None] * len(block.txs), [], 0
    for i in range(len(block.txs)):
        if i in prefilled:
            slots[i] = prefilled[i]
            continue
        if ids[at] != short_id(keys, block.txids[i]):
            fail(f"short id {at} is not of txid {i} (version 1 keys on txids)")
        slots[i] = have.get(ids[at])
        if slots[i] is None:
            missing.append(i)
        at += 1
    shown = sorted(prefilled) if len(prefilled) <= 16 else len(prefilled)
    report(peer="sink", block=block.hex(), prefilled=shown,
           getblocktxn=len(missing))
    if missing:
        payload = block.hash + varint(len(missing))
        last = -1
        for i in missing:
            payload += varint(i - last - 1)
            last = i
        sink.send("getblocktxn", payload)

        # The SV node answers with the whole block when more than 99% is asked
        # (-maxblocktxnpercent), with blocktxn otherwise.
        def answer(cmd, payload):
            if cmd == "block" and payload[:80] == block.header:
                r = Reader(payload)
                r.take(80)
                txs = [r.tx() for _ in range(r.varint())]
                return "block", txs
            if cmd != "blocktxn":
                return None
            r = Reader(payload)
            if r.take(32) != block.hash:
                fail("blocktxn for another block")
            txs = [r.tx() for _ in range(r.varint())]
            if not r.done():
                fail("bytes left after the blocktxn")
            return "blocktxn", txs
        kind, txs = sink.wait_for(answer, "blocktxn or block")
        if kind == "block":
            slots = txs
        elif len(txs) != len(missing):
            fail(f"blocktxn carried {len(txs)} transactions for {len(missing)} asked")
        else:
            for i, tx in zip(missing, txs):
                slots[i] = tx
        report(peer="sink", block=block.hex(), answered_with=kind)
    if merkle_root([sha256d(t) for t in slots]) != header[36:68]:
        fail("the rebuilt block does not match its merkle root")
    report(peer="sink", block=block.hex(), rebuilt=len(slots))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("addr")
    parser.add_argument("--big-txs", type=int, default=70_000)
    args = parser.parse_args()
    siphash_self_test()
    host, port = args.addr.rsplit(":", 1)
    addr = (host, int(port))

    source, sink = Peer("source", addr), Peer("sink", addr)
    report(peer="source", meshd_version=source.handshake())
    if meshd_sendcmpct(source) != 0:
        fail("meshd asked for high-bandwidth mode in its first sendcmpct")
    sink.handshake()
    meshd_sendcmpct(sink)
    sink.send("sendcmpct", b"\x01" + struct.pack("<Q", 1))
    report(peer="sink", asked="high-bandwidth")

    # SOURCE hands meshd three transactions for its pool; SINK sees them announced (and
    # does not fetch them, so it must ask meshd for them later).
    pooled = [make_tx(i) for i in range(3)]
    txids = [sha256d(t) for t in pooled]
    source.send("inv", varint(3) + b"".join(struct.pack("<I", MSG_TX) + t for t in txids))

    def tx_asked(cmd, payload):
        if cmd != "getdata":
            return None
        r = Reader(payload)
        return [h for _ in range(r.varint()) for k, h in [(r.u32(), r.take(32))]
                if k & 0xFF == MSG_TX]
    asked = []
    while len(asked) < 3:
        asked += source.wait_for(tx_asked, "getdata for the transactions")
    for t in pooled:
        source.send("tx", t)
    seen = set()

    def announced(cmd, payload):
        if cmd != "inv":
            return None
        r = Reader(payload)
        for _ in range(r.varint()):
            r.u32()
            seen.add(r.take(32))
        return True if all(t in seen for t in txids) else None
    sink.wait_for(announced, "the pooled transactions announced")
    report(peer="sink", pooled=3)

    # A small block: three of its five transactions pooled, the fourth unseen.
    small = Block(GENESIS, 1, pooled + [make_tx(10)])
    give_block(source, small, pooled=[1, 2, 3], prefill=[0])
    take_push(sink, small, known=[])

    # A large block: more than 65,536 transactions, the last prefilled (its gap needs 32
    # bits), every other one asked with getblocktxn by index past 16 bits.
    big = Block(small.hash, 2, [make_tx(100 + i) for i in range(args.big_txs - 1)])
    give_block(source, big, pooled=[], prefill=[0, len(big.txs) - 1])
    take_push(sink, big, known=[])
    report(done=True, small=small.hex(), big=big.hex())


if __name__ == "__main__":
    main()
