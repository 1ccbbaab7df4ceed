#!/usr/bin/env python3
"""A small Bitcoin regtest peer that serves a pre-mined header chain, for header-sync benchmarks.

Independent of meshd: the standard library only (hashlib, socket, struct, threading). It mines
N regtest headers off the regtest genesis (nBits 0x207fffff, so about two tries per header),
then listens on loopback and, per connection, handshakes (version/verack), answers pings, and
answers `getheaders` with up to 2,000 headers after the first locator hash it knows, ending at
the stop hash when one is given, as Bitcoin Core does. For SPV clients that sync with
`getblocks` (bcoin on regtest, which has no checkpoints for headers-first) it also answers
`getblocks` with an inv of up to 500 blocks (and Core's hashContinue: the tip announced once
the last of them is asked for) and `getdata` for filtered blocks with a `merkleblock` whose one
transaction is the header's merkle root (no block bodies: anything else is `notfound`). Every reply is a frame built once and kept, so the server costs almost nothing per
request.

    python3 header_server.py --headers 200000 [--port 0] [--cache FILE] [--services 0xd]

Prints "listening on 127.0.0.1:PORT tip HASH" once ready, then serves until killed.
"""

import argparse
import hashlib
import os
import socket
import struct
import threading
import time

MAGIC = bytes.fromhex("fabfb5da")  # regtest
GENESIS = struct.pack(
    "<I32s32sIII",
    1,
    b"\0" * 32,
    bytes.fromhex("4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b")[::-1],
    1296688602,
    0x207FFFFF,
    2,
)
GENESIS_HASH = "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206"
BITS = 0x207FFFFF
TARGET = 0x7FFFFF << (8 * (0x20 - 3))
MAX_HEADERS = 2000


def sha256d(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


SPACING = 60  # seconds between headers: 925,000 of them still end in the past (2013)


def mine(n):
    """N headers (80 bytes each) on top of genesis, SPACING seconds apart."""
    headers = []
    prev = sha256d(GENESIS)
    assert prev[::-1].hex() == GENESIS_HASH
    t0 = 1296688602
    for height in range(1, n + 1):
        merkle = hashlib.sha256(struct.pack("<I", height)).digest()
        head = struct.pack("<I32s32sII", 0x20000000, prev, merkle, t0 + SPACING * height, BITS)
        nonce = 0
        while True:
            raw = head + struct.pack("<I", nonce)
            h = sha256d(raw)
            if int.from_bytes(h, "little") <= TARGET:
                break
            nonce += 1
        headers.append(raw)
        prev = h
    return headers


def compact_size(n):
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + struct.pack("<H", n)
    return b"\xfe" + struct.pack("<I", n)


def frame(command, payload):
    return (
        MAGIC
        + command.encode().ljust(12, b"\0")
        + struct.pack("<I", len(payload))
        + sha256d(payload)[:4]
        + payload
    )


def net_addr():
    return struct.pack("<Q", 0) + b"\0" * 10 + b"\xff\xff" + bytes([127, 0, 0, 1]) + struct.pack(">H", 0)


class Chain:
    def __init__(self, headers):
        self.headers = headers
        # Hash (wire order) -> height; genesis is height 0.
        self.height_of = {sha256d(GENESIS): 0}
        for i, raw in enumerate(headers):
            self.height_of[sha256d(raw)] = i + 1
        self.replies = {}
        self.lock = threading.Lock()

    def headers_after(self, height, stop=None):
        """Up to 2,000 headers after `height`, ending at height `stop` when it is above it
        (a getheaders' stop hash, as Core serves it)."""
        count = MAX_HEADERS
        if stop is not None and stop > height:
            count = min(count, stop - height)
        with self.lock:
            reply = self.replies.get((height, count))
            if reply is None:
                batch = self.headers[height : height + count]
                payload = compact_size(len(batch)) + b"".join(raw + b"\0" for raw in batch)
                reply = frame("headers", payload)
                self.replies[(height, count)] = reply
            return reply

    def inv_after(self, height, stop=None):
        """A `getblocks` answer: an inv of up to 500 block hashes after `height` (to `stop`),
        as Core gives it, for SPV clients (bcoin) that sync with getblocks; and its last
        hash."""
        end = min(len(self.headers), height + MAX_BLOCKS_INV)
        if stop is not None and height < stop < end:
            end = stop
        hashes = [sha256d(raw) for raw in self.headers[height:end]]
        payload = compact_size(len(hashes)) + b"".join(
            struct.pack("<I", MSG_BLOCK) + h for h in hashes
        )
        return frame("inv", payload), (hashes[-1] if hashes else None)

    def filtered_blocks(self, payload):
        """A `getdata` answer: a `merkleblock` per filtered block asked for (the block's one
        transaction is its merkle root, matching no filter), `notfound` for the rest (no
        block bodies here)."""
        out = []
        missing = []
        for kind, h in parse_inv(payload):
            height = self.height_of.get(h)
            if (kind & 0xFF) == MSG_FILTERED_BLOCK and height:
                raw = self.headers[height - 1]
                # Header, one transaction, one hash (the root), one flag byte: no match.
                body = raw + struct.pack("<I", 1) + b"\x01" + raw[36:68] + b"\x01\x00"
                out.append(frame("merkleblock", body))
            else:
                missing.append(struct.pack("<I", kind) + h)
        if missing:
            out.append(frame("notfound", compact_size(len(missing)) + b"".join(missing)))
        return b"".join(out)


def parse_inv(payload):
    """(type, hash) pairs of an inv/getdata payload."""
    count, off = payload[0], 1
    if count == 0xFD:
        (count,) = struct.unpack("<H", payload[1:3])
        off = 3
    elif count == 0xFE:
        (count,) = struct.unpack("<I", payload[1:5])
        off = 5
    items = []
    for i in range(count):
        item = payload[off + 36 * i : off + 36 * (i + 1)]
        if len(item) < 36:
            break
        items.append((struct.unpack("<I", item[:4])[0], item[4:]))
    return items


MSG_BLOCK = 2
MSG_FILTERED_BLOCK = 3
MAX_BLOCKS_INV = 500


def read_exact(sock, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def serve(sock, chain, services):
    tip = len(chain.headers)
    version = (
        struct.pack("<iQq", 70016, services, int(time.time()))
        + net_addr()
        + net_addr()
        + os.urandom(8)
        + compact_size(len(b"/header-server:0.1/"))
        + b"/header-server:0.1/"
        + struct.pack("<i?", tip, False)
    )
    sock.sendall(frame("version", version))
    hash_continue = None
    try:
        while True:
            header = read_exact(sock, 24)
            if header[:4] != MAGIC:
                return
            command = header[4:16].rstrip(b"\0").decode()
            (length,) = struct.unpack("<I", header[16:20])
            payload = read_exact(sock, length)
            if command == "version":
                sock.sendall(frame("verack", b""))
            elif command == "ping":
                sock.sendall(frame("pong", payload))
            elif command in ("getheaders", "getblocks"):
                count, off = payload[4], 5
                if count >= 0xFD:
                    (count,) = struct.unpack("<H", payload[5:7])
                    off = 7
                start = 0
                for i in range(count):
                    h = payload[off + 32 * i : off + 32 * (i + 1)]
                    if h in chain.height_of:
                        start = chain.height_of[h]
                        break
                stop = chain.height_of.get(payload[off + 32 * count : off + 32 * (count + 1)])
                if command == "getheaders":
                    sock.sendall(chain.headers_after(start, stop))
                else:
                    reply, last = chain.inv_after(start, stop)
                    # Core's hashContinue: a full inv whose last block is asked for is
                    # followed by an inv of the tip, which makes the client ask for more.
                    hash_continue = last if start + MAX_BLOCKS_INV < tip else None
                    sock.sendall(reply)
            elif command == "getdata":
                reply = chain.filtered_blocks(payload)
                if hash_continue is not None and hash_continue in payload:
                    reply += frame("inv", b"\x01" + struct.pack("<I", MSG_BLOCK) + sha256d(chain.headers[-1]))
                    hash_continue = None
                sock.sendall(reply)
    except (ConnectionError, OSError):
        pass
    finally:
        sock.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--headers", type=int, default=200000)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cache", help="file to keep the mined headers in between runs")
    ap.add_argument(
        "--services",
        type=lambda x: int(x, 0),
        default=1,
        help="service bits in our version (0xd for SPV clients that want bloom)",
    )
    args = ap.parse_args()
    headers = None
    if args.cache and os.path.exists(args.cache):
        data = open(args.cache, "rb").read()
        if len(data) == 80 * args.headers:
            headers = [data[i : i + 80] for i in range(0, len(data), 80)]
    if headers is None:
        headers = mine(args.headers)
        if args.cache:
            with open(args.cache + ".tmp", "wb") as f:
                f.write(b"".join(headers))
            os.replace(args.cache + ".tmp", args.cache)
    chain = Chain(headers)
    for start in range(0, len(headers) + 1, MAX_HEADERS):
        chain.headers_after(start)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(16)
    tip = sha256d(headers[-1])[::-1].hex() if headers else GENESIS_HASH
    print(f"listening on 127.0.0.1:{listener.getsockname()[1]} tip {tip}", flush=True)
    while True:
        sock, _ = listener.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=serve, args=(sock, chain, args.services), daemon=True).start()


if __name__ == "__main__":
    main()
