#!/usr/bin/env python3
"""A TCP relay that gives a loopback link a round-trip time and a bandwidth, for benchmarks.

The kernel here has no netem, so latency cannot come from `tc`. This relay listens on
loopback and, per accepted connection, dials the target; in each direction bytes are
forwarded as a link would: each chunk read is serialised at the rate (a token-bucket-free
model: it leaves when the link is free and its bits have been sent) and delivered after the
one-way delay. At most `--buffer` bytes wait per direction (the reader pauses, so TCP pushes
back on the sender, as a bottleneck queue would).

    python3 delay_relay.py --target 127.0.0.1:PORT --delay-ms 25 --rate-mbit 20 [--port 0]

Prints "listening on 127.0.0.1:PORT" once ready. Standard library only (asyncio).
"""

import argparse
import asyncio
import collections
import time


class Direction:
    """One direction of the link: serialisation at `rate` bytes/s, then `delay` seconds."""

    def __init__(self, rate, delay, buffer):
        self.rate = rate
        self.delay = delay
        self.buffer = buffer
        self.queue = collections.deque()
        self.queued = 0
        self.link_free_at = 0.0
        self.ready = asyncio.Event()
        self.room = asyncio.Event()
        self.room.set()
        self.closed = False

    def push(self, data):
        now = time.monotonic()
        start = max(now, self.link_free_at)
        self.link_free_at = start + len(data) / self.rate
        self.queue.append((self.link_free_at + self.delay, data))
        self.queued += len(data)
        if self.queued >= self.buffer:
            self.room.clear()
        self.ready.set()


async def pump_in(reader, d):
    try:
        while True:
            await d.room.wait()
            data = await reader.read(16384)
            if not data:
                break
            d.push(data)
    except (ConnectionError, OSError):
        pass
    d.closed = True
    d.ready.set()


async def pump_out(writer, d):
    try:
        while True:
            while not d.queue:
                if d.closed:
                    return
                d.ready.clear()
                await d.ready.wait()
            at, data = d.queue[0]
            wait = at - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            d.queue.popleft()
            d.queued -= len(data)
            if d.queued < d.buffer:
                d.room.set()
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="HOST:PORT to relay to")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--delay-ms", type=float, default=25.0, help="one-way delay")
    ap.add_argument("--rate-mbit", type=float, default=20.0, help="per direction")
    ap.add_argument("--buffer", type=int, default=256 * 1024, help="bytes queued per direction")
    args = ap.parse_args()
    host, port = args.target.rsplit(":", 1)
    rate = args.rate_mbit * 1e6 / 8
    delay = args.delay_ms / 1000.0

    async def on_client(c_reader, c_writer):
        try:
            t_reader, t_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            c_writer.close()
            return
        up = Direction(rate, delay, args.buffer)
        down = Direction(rate, delay, args.buffer)
        await asyncio.gather(
            pump_in(c_reader, up),
            pump_out(t_writer, up),
            pump_in(t_reader, down),
            pump_out(c_writer, down),
        )

    server = await asyncio.start_server(on_client, "127.0.0.1", args.port)
    print(f"listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
