#!/usr/bin/env python3
"""A small SOCKS5 proxy (RFC 1928/1929) for meshd's proxy tests, standard library only.

It accepts any username and password and writes one JSON line per request to --log (the
credentials and the target), so a test can check stream isolation (distinct credentials per
connection). Names given with --map NAME=HOST:PORT resolve only here, standing in for onion
names that only Tor can reach. --mode makes it hostile: `bad-version` answers the method
selection with version 4, `close-mid-handshake` closes after the method selection,
`truncated-address` sends half a bound address and closes.

Prints the port it listens on, then serves until killed.
"""

import argparse
import asyncio
import json
import socket
import struct
import sys


async def read_exact(reader, n):
    return await reader.readexactly(n)


async def pipe(reader, writer):
    try:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


class Proxy:
    def __init__(self, args):
        self.mode = args.mode
        self.log = open(args.log, "a", buffering=1) if args.log else None
        self.map = {}
        for m in args.map:
            name, _, target = m.partition("=")
            host, _, port = target.rpartition(":")
            self.map[name.lower()] = (host, int(port))

    def record(self, **fields):
        if self.log:
            self.log.write(json.dumps(fields) + "\n")

    async def handle(self, reader, writer):
        try:
            await self.serve(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            pass
        finally:
            try:
                writer.close()
            except Exception:
                pass

    async def serve(self, reader, writer):
        ver, n = await read_exact(reader, 2)
        if ver != 5:
            return
        methods = await read_exact(reader, n)
        if self.mode == "bad-version":
            writer.write(b"\x04\x00")
            await writer.drain()
            return
        user = password = None
        if 2 in methods:
            writer.write(b"\x05\x02")
            await writer.drain()
            if self.mode == "close-mid-handshake":
                return
            _, ulen = await read_exact(reader, 2)
            user = (await read_exact(reader, ulen)).decode(errors="replace")
            (plen,) = await read_exact(reader, 1)
            password = (await read_exact(reader, plen)).decode(errors="replace")
            writer.write(b"\x01\x00")
        elif 0 in methods:
            writer.write(b"\x05\x00")
            if self.mode == "close-mid-handshake":
                await writer.drain()
                return
        else:
            writer.write(b"\x05\xff")
            await writer.drain()
            return
        ver, cmd, _, atyp = await read_exact(reader, 4)
        if atyp == 1:
            host = socket.inet_ntop(socket.AF_INET, await read_exact(reader, 4))
        elif atyp == 4:
            host = socket.inet_ntop(socket.AF_INET6, await read_exact(reader, 16))
        elif atyp == 3:
            (ln,) = await read_exact(reader, 1)
            host = (await read_exact(reader, ln)).decode(errors="replace")
        else:
            return
        (port,) = struct.unpack(">H", await read_exact(reader, 2))
        self.record(user=user, password=password, target=f"{host}:{port}")
        if self.mode == "truncated-address":
            writer.write(b"\x05\x00\x00\x01\x7f\x00")
            await writer.drain()
            return
        # Only mapped names resolve here: any other name is unknown (reply 4, as Tor's).
        dest = self.map.get(host.lower()) if atyp == 3 else (host, port)
        if cmd != 1 or dest is None:
            writer.write(b"\x05\x04\x00\x01" + b"\x00" * 6)
            await writer.drain()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(dest[0], dest[1])
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + b"\x00" * 6)
            await writer.drain()
            return
        writer.write(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + b"\x00\x00")
        await writer.drain()
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log")
    ap.add_argument("--map", action="append", default=[])
    ap.add_argument(
        "--mode",
        default="ok",
        choices=["ok", "bad-version", "close-mid-handshake", "truncated-address"],
    )
    args = ap.parse_args()
    proxy = Proxy(args)
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        sys.exit(0)
