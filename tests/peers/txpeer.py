#!/usr/bin/env python3
"""A small v1 peer that feeds a node transactions, for the soak (scripts/soak.sh).

Standard library only. It handshakes with a regtest node, then every INTERVAL seconds makes a
new transaction (one input spending a random outpoint, one P2PKH-shaped output: it passes
Bitcoin Core's context-free checks), announces it with `inv`, and serves it on `getdata`, as
a real peer relays. It answers pings, ignores everything else, and reconnects when the node
restarts or drops it.

    txpeer.py HOST:PORT [--interval SECONDS]
"""

import argparse
import hashlib
import os
import socket
import struct
import threading
import time

MAGIC = bytes.fromhex("fabfb5da")  # regtest


def sha256d(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def frame(cmd, payload):
    return MAGIC + cmd.encode().ljust(12, b"\0") + struct.pack("<I", len(payload)) + \
        sha256d(payload)[:4] + payload


def varint(n):
    return bytes([n]) if n < 0xfd else b"\xfd" + struct.pack("<H", n)


def version():
    addr = struct.pack("<Q", 0) + bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]) + \
        struct.pack(">H", 18444)
    agent = b"/txpeer.py:0.1/"
    return struct.pack("<iQq", 70016, 0, int(time.time())) + addr + addr + os.urandom(8) + \
        varint(len(agent)) + agent + struct.pack("<i", 0) + b"\x01"


def make_tx():
    prevout = os.urandom(32) + struct.pack("<I", 0)
    script_sig = b"\x51"
    script_pubkey = b"\x76\xa9\x14" + os.urandom(20) + b"\x88\xac"
    return struct.pack("<i", 2) + varint(1) + prevout + varint(len(script_sig)) + \
        script_sig + struct.pack("<I", 0xFFFFFFFF) + varint(1) + struct.pack("<q", 10_000) + \
        varint(len(script_pubkey)) + script_pubkey + struct.pack("<I", 0)


def read_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def session(host, port, interval):
    sock = socket.create_connection((host, port), timeout=30)
    lock = threading.Lock()
    pending = {}

    def send(cmd, payload):
        with lock:
            sock.sendall(frame(cmd, payload))

    send("version", version())
    alive = {"ok": True}

    def reader():
        try:
            while True:
                header = read_exact(sock, 24)
                cmd = header[4:16].rstrip(b"\0").decode()
                length = struct.unpack("<I", header[16:20])[0]
                payload = read_exact(sock, length)
                if cmd == "version":
                    send("verack", b"")
                elif cmd == "ping":
                    send("pong", payload)
                elif cmd == "getdata":
                    count = payload[0]
                    for i in range(count):
                        item = payload[1 + 36 * i: 37 + 36 * i]
                        tx = pending.pop(item[4:], None)
                        if tx is not None:
                            send("tx", tx)
        except (OSError, ConnectionError):
            alive["ok"] = False

    threading.Thread(target=reader, daemon=True).start()
    time.sleep(1)
    sent = 0
    while alive["ok"]:
        tx = make_tx()
        txid = sha256d(tx)
        pending[txid] = tx
        if len(pending) > 1000:
            pending.pop(next(iter(pending)))
        send("inv", varint(1) + struct.pack("<I", 1) + txid)
        sent += 1
        time.sleep(interval)
    return sent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("target")
    ap.add_argument("--interval", type=float, default=1.0)
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    while True:
        try:
            session(host, int(port), args.interval)
        except OSError:
            pass
        time.sleep(2)


if __name__ == "__main__":
    main()
