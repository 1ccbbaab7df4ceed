#!/usr/bin/env python3
"""An independent BIP324 (v2 encrypted transport) peer, written from the BIP's text for
meshd's interop tests. It shares no code with meshd or the Rust `bip324` crate:
ElligatorSwift and the x-only ECDH come from PyPI's `btclib_secp256k1`, ChaCha20,
ChaCha20-Poly1305 and HKDF from `cryptography`; FSChaCha20, FSChaCha20Poly1305, the key
schedule, the packet format and the handshake are written here.

    v2peer.py vectors DIR          check BIP324's published vectors (packet encoding: every
                                   derived key, session id, terminators and ciphertext;
                                   ElligatorSwift decoding) against this implementation
    v2peer.py connect HOST:PORT    initiator: v2 handshake, version/verack, pings across a
                                   rekey, getheaders; prints one JSON line of what it saw
    v2peer.py listen PORT          responder: the same for one inbound connection; prints
                                   "listening" first

Network magic: regtest for connect/listen, mainnet for the vectors (as the BIP uses).
"""

import csv
import json
import os
import socket
import struct
import sys
import time

from btclib_secp256k1 import ellswift
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

REKEY_INTERVAL = 224
REGTEST_MAGIC = bytes.fromhex("fabfb5da")
MAINNET_MAGIC = bytes.fromhex("f9beb4d9")
MAX_GARBAGE = 4095
IGNORE_BIT = 0x80
# BIP324 one-byte message ids (index = id; 0 = a 12-byte command follows).
SHORT_IDS = ["", "addr", "block", "blocktxn", "cmpctblock", "feefilter", "filteradd",
             "filterclear", "filterload", "getblocks", "getblocktxn", "getdata", "getheaders",
             "headers", "inv", "mempool", "merkleblock", "notfound", "ping", "pong",
             "sendcmpct", "tx", "getcfilters", "cfilter", "getcfheaders", "cfheaders",
             "getcfcheckpt", "cfcheckpt", "addrv2"]
REGTEST_GENESIS = bytes.fromhex(
    "0f9188f13cb7b2c71f2a335e3a4fc328bf5beb436012afca590b1a11466e2206")[::-1]


def chacha20_block(key, nonce12, counter):
    """One 64-byte ChaCha20 block (RFC 8439) at `counter`."""
    full_nonce = counter.to_bytes(4, "little") + nonce12
    enc = Cipher(algorithms.ChaCha20(key, full_nonce), mode=None).encryptor()
    return enc.update(b"\x00" * 64)


class FSChaCha20:
    """BIP324's length cipher: one ChaCha20 stream per rekey period of 224 chunks."""

    def __init__(self, key):
        self.key = key
        self.block_counter = 0
        self.chunk_counter = 0
        self.keystream = b""

    def _keystream(self, n):
        while len(self.keystream) < n:
            nonce = (0).to_bytes(4, "little") + \
                (self.chunk_counter // REKEY_INTERVAL).to_bytes(8, "little")
            self.keystream += chacha20_block(self.key, nonce, self.block_counter)
            self.block_counter += 1
        out, self.keystream = self.keystream[:n], self.keystream[n:]
        return out

    def crypt(self, chunk):
        ks = self._keystream(len(chunk))
        out = bytes(a ^ b for a, b in zip(chunk, ks))
        if (self.chunk_counter + 1) % REKEY_INTERVAL == 0:
            self.key = self._keystream(32)
            self.block_counter = 0
            self.keystream = b""
        self.chunk_counter += 1
        return out


class FSChaCha20Poly1305:
    """BIP324's packet AEAD: a nonce per packet, a new key every 224 packets."""

    def __init__(self, key):
        self.key = key
        self.counter = 0

    def _nonce(self):
        return (self.counter % REKEY_INTERVAL).to_bytes(4, "little") + \
            (self.counter // REKEY_INTERVAL).to_bytes(8, "little")

    def _advance(self, nonce):
        if (self.counter + 1) % REKEY_INTERVAL == 0:
            rekey_nonce = b"\xff\xff\xff\xff" + nonce[4:]
            self.key = ChaCha20Poly1305(self.key).encrypt(rekey_nonce, b"\x00" * 32, b"")[:32]
        self.counter += 1

    def encrypt(self, aad, plaintext):
        nonce = self._nonce()
        out = ChaCha20Poly1305(self.key).encrypt(nonce, plaintext, aad)
        self._advance(nonce)
        return out

    def decrypt(self, aad, ciphertext):
        nonce = self._nonce()
        out = ChaCha20Poly1305(self.key).decrypt(nonce, ciphertext, aad)  # raises on a bad tag
        self._advance(nonce)
        return out


def hkdf32(salt, ikm, info):
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(ikm)


class Session:
    """Keys and ciphers of one side of a BIP324 connection."""

    def __init__(self, priv, ell_ours, ell_theirs, initiating, magic):
        ell_a, ell_b = (ell_ours, ell_theirs) if initiating else (ell_theirs, ell_ours)
        self.shared_secret = ellswift.xdh(ell_a, ell_b, priv, 0 if initiating else 1)
        salt = b"bitcoin_v2_shared_secret" + magic
        k = {name: hkdf32(salt, self.shared_secret, name.encode()) for name in
             ("initiator_L", "initiator_P", "responder_L", "responder_P",
              "garbage_terminators", "session_id")}
        self.keys = k
        self.session_id = k["session_id"]
        terminators = k["garbage_terminators"]
        init_term, resp_term = terminators[:16], terminators[16:]
        side, other = ("initiator", "responder") if initiating else ("responder", "initiator")
        self.send_terminator = init_term if initiating else resp_term
        self.recv_terminator = resp_term if initiating else init_term
        self.send_l = FSChaCha20(k[side + "_L"])
        self.send_p = FSChaCha20Poly1305(k[side + "_P"])
        self.recv_l = FSChaCha20(k[other + "_L"])
        self.recv_p = FSChaCha20Poly1305(k[other + "_P"])

    def encrypt(self, contents, aad=b"", ignore=False):
        header = bytes([IGNORE_BIT if ignore else 0])
        length = self.send_l.crypt(len(contents).to_bytes(3, "little"))
        return length + self.send_p.encrypt(aad, header + contents)

    def decrypt_length(self, three):
        return int.from_bytes(self.recv_l.crypt(three), "little")

    def decrypt(self, rest, aad=b""):
        """`rest`: header, contents and tag. Returns (ignore, contents)."""
        plain = self.recv_p.decrypt(aad, rest)
        return bool(plain[0] & IGNORE_BIT), plain[1:]


def check_vectors(directory):
    checked = 0
    with open(os.path.join(directory, "packet_encoding_test_vectors.csv")) as f:
        for row in csv.DictReader(f):
            h = bytes.fromhex
            s = Session(h(row["in_priv_ours"]), h(row["in_ellswift_ours"]),
                        h(row["in_ellswift_theirs"]), row["in_initiating"] == "1",
                        MAINNET_MAGIC)
            assert ellswift.decode(h(row["in_ellswift_ours"]))[1:] == h(row["mid_x_ours"])
            assert ellswift.decode(h(row["in_ellswift_theirs"]))[1:] == h(row["mid_x_theirs"])
            assert s.shared_secret == h(row["mid_shared_secret"]), row["in_idx"]
            for name, col in (("initiator_L", "mid_initiator_l"), ("initiator_P", "mid_initiator_p"),
                              ("responder_L", "mid_responder_l"), ("responder_P", "mid_responder_p")):
                assert s.keys[name] == h(row[col]), (row["in_idx"], name)
            assert s.send_terminator == h(row["mid_send_garbage_terminator"])
            assert s.recv_terminator == h(row["mid_recv_garbage_terminator"])
            assert s.session_id == h(row["out_session_id"])
            for _ in range(int(row["in_idx"])):
                s.encrypt(b"")
            contents = h(row["in_contents"]) * int(row["in_multiply"])
            out = s.encrypt(contents, h(row["in_aad"]), row["in_ignore"] == "1")
            if row["out_ciphertext"]:
                assert out == h(row["out_ciphertext"]), row["in_idx"]
            if row["out_ciphertext_endswith"]:
                assert out.endswith(h(row["out_ciphertext_endswith"])), row["in_idx"]
            checked += 1
    decoded = 0
    with open(os.path.join(directory, "ellswift_decode_test_vectors.csv")) as f:
        for row in csv.DictReader(f):
            pub = ellswift.decode(bytes.fromhex(row["ellswift"]))
            assert pub[1:] == bytes.fromhex(row["x"]), row["comment"]
            decoded += 1
    print(json.dumps({"packet_vectors": checked, "ellswift_decode_vectors": decoded}))


class Conn:
    """A socket with exact reads."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""

    def read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError("peer closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def send(self, data):
        self.sock.sendall(data)


def handshake(conn, initiating, magic):
    """BIP324's handshake; returns the session."""
    priv = os.urandom(32)
    ell_ours = ellswift.create(priv)
    garbage = os.urandom(int.from_bytes(os.urandom(2), "little") % (MAX_GARBAGE + 1))
    conn.send(ell_ours + garbage)
    ell_theirs = conn.read(64)
    if ell_theirs[:4] == magic:
        raise RuntimeError("peer answered in v1")
    s = Session(priv, ell_ours, ell_theirs, initiating, magic)
    # Our terminator, one decoy (exercising the peer's decoy handling), then the version
    # packet; the first packet carries our garbage as associated data.
    conn.send(s.send_terminator + s.encrypt(b"decoy", aad=garbage, ignore=True) + s.encrypt(b""))
    received = b""
    while not received.endswith(s.recv_terminator):
        if len(received) > MAX_GARBAGE + 16:
            raise RuntimeError("no garbage terminator")
        received += conn.read(1)
    their_garbage = received[:-16]
    aad = their_garbage
    while True:
        length = s.decrypt_length(conn.read(3))
        ignore, _contents = s.decrypt(conn.read(length + 17), aad)
        aad = b""
        if not ignore:
            return s  # the version packet


def send_msg(conn, s, command, payload):
    if command in SHORT_IDS[1:]:
        kind = bytes([SHORT_IDS.index(command)])
    else:
        kind = b"\x00" + command.encode().ljust(12, b"\x00")
    conn.send(s.encrypt(kind + payload))


def recv_msg(conn, s):
    while True:
        length = s.decrypt_length(conn.read(3))
        ignore, contents = s.decrypt(conn.read(length + 17))
        if ignore:
            continue
        if contents[0] == 0:
            return contents[1:13].rstrip(b"\x00").decode(), contents[13:]
        return SHORT_IDS[contents[0]], contents[1:]


def varint(n):
    if n < 0xfd:
        return bytes([n])
    return b"\xfd" + n.to_bytes(2, "little")


def version_payload():
    addr = (0).to_bytes(8, "little") + bytes(10) + b"\xff\xff" + bytes([127, 0, 0, 1]) + \
        (18444).to_bytes(2, "big")
    agent = b"/v2peer.py:0.1/"
    return struct.pack("<iQq", 70016, 1 | (1 << 11), int(time.time())) + addr + addr + \
        os.urandom(8) + varint(len(agent)) + agent + struct.pack("<i", 0) + b"\x01"


def session(conn, initiating):
    """Handshake, version/verack, 300 pings (so both directions cross a rekey) and a
    getheaders; returns what was seen."""
    s = handshake(conn, initiating, REGTEST_MAGIC)
    seen = {"session_id": s.session_id.hex(), "commands": []}
    if initiating:
        send_msg(conn, s, "version", version_payload())
    got_version = got_verack = False
    while not (got_version and got_verack):
        cmd, payload = recv_msg(conn, s)
        seen["commands"].append(cmd)
        if cmd == "version":
            got_version = True
            seen["peer_version"] = struct.unpack("<i", payload[:4])[0]
            seen["peer_services"] = struct.unpack("<Q", payload[4:12])[0]
            if not initiating:
                send_msg(conn, s, "version", version_payload())
            send_msg(conn, s, "verack", b"")
        elif cmd == "verack":
            got_verack = True
    pongs = 0
    for nonce in range(1, 301):
        send_msg(conn, s, "ping", nonce.to_bytes(8, "little"))
        while True:
            cmd, payload = recv_msg(conn, s)
            if cmd == "ping":
                send_msg(conn, s, "pong", payload)
            elif cmd == "pong":
                assert int.from_bytes(payload, "little") == nonce
                pongs += 1
                break
    seen["pongs"] = pongs
    # getheaders from genesis: version, one locator hash, stop hash zero.
    send_msg(conn, s, "getheaders",
             struct.pack("<I", 70016) + varint(1) + REGTEST_GENESIS + bytes(32))
    while True:
        cmd, payload = recv_msg(conn, s)
        if cmd == "headers":
            seen["headers"] = payload[0] if payload[0] < 0xfd else \
                int.from_bytes(payload[1:3], "little")
            break
        if cmd == "ping":
            send_msg(conn, s, "pong", payload)
    return seen


def main():
    if len(sys.argv) < 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    mode, arg = sys.argv[1], sys.argv[2]
    if mode == "vectors":
        check_vectors(arg)
        return
    if mode == "connect":
        host, port = arg.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=20)
        print(json.dumps(session(Conn(sock), True)), flush=True)
    elif mode == "listen":
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", int(arg)))
        server.listen(1)
        server.settimeout(30)
        print(json.dumps({"listening": server.getsockname()[1]}), flush=True)
        sock, _ = server.accept()
        sock.settimeout(20)
        print(json.dumps(session(Conn(sock), False)), flush=True)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
