#!/usr/bin/env python3
"""A peer from outside a NAT: dials HOST:PORT, does the v1 version handshake and says what the
node answered, for the port-mapping lab (tests/portmap_lab.rs). Standard library only.

    version_probe.py HOST:PORT MAGIC_HEX

Prints `handshake ok version=N agent=UA` and exits 0 once the node's `version` and `verack`
arrived; exits 1 on anything else within 10 seconds.
"""

import hashlib
import socket
import struct
import sys
import time


def sha256d(b):
    return hashlib.sha256(hashlib.sha256(b).digest()).digest()


def frame(magic, cmd, payload):
    return magic + cmd.encode().ljust(12, b"\0") + struct.pack("<I", len(payload)) + \
        sha256d(payload)[:4] + payload


def netaddr(host, port):
    ip = socket.inet_aton(host)
    return struct.pack("<Q", 0) + b"\0" * 10 + b"\xff\xff" + ip + struct.pack(">H", port)


def version_payload(host, port):
    agent = b"/version_probe:0.1/"
    return struct.pack("<iQq", 70016, 0, int(time.time())) + netaddr(host, port) + \
        netaddr("0.0.0.0", 0) + struct.pack("<Q", 0x5eed) + bytes([len(agent)]) + agent + \
        struct.pack("<i", 0) + b"\0"


def read_exact(sock, n):
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError("closed")
        out += chunk
    return out


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    port = int(port)
    magic = bytes.fromhex(sys.argv[2])
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(frame(magic, "version", version_payload(host, port)))
    got_version, got_verack, version, agent = False, False, 0, ""
    deadline = time.time() + 10
    while not (got_version and got_verack) and time.time() < deadline:
        header = read_exact(sock, 24)
        if header[:4] != magic:
            print("wrong magic", header[:4].hex())
            return 1
        cmd = header[4:16].rstrip(b"\0").decode()
        (length,) = struct.unpack("<I", header[16:20])
        payload = read_exact(sock, length)
        if cmd == "version":
            got_version = True
            (version,) = struct.unpack("<i", payload[:4])
            n = payload[80]
            agent = payload[81:81 + n].decode(errors="replace")
            sock.sendall(frame(magic, "verack", b""))
        elif cmd == "verack":
            got_verack = True
    if got_version and got_verack:
        print(f"handshake ok version={version} agent={agent}")
        return 0
    print("no handshake")
    return 1


if __name__ == "__main__":
    sys.exit(main())
