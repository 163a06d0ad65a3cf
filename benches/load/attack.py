#!/usr/bin/env python3
"""Abusive clients for benches/load/attack.sh, bounded in time (they stop by themselves).

    attack.py KIND HOST PORT N SECONDS [PATH]

KIND:
  silent     N connections that send nothing
  reopen     the same, each one closed by the server opened again at once
  slowloris  N connections sending a request head one header line every 2 s, never ending it
  slowpost   N POSTs with Content-Length 1 MB, sending one byte every 5 s
  stalled    N GETs of PATH whose responses are never read (small receive buffers)

Prints "ready" once the N connections were opened, then at the end one JSON line: opened,
closed_by_server, and for silent ones the longest time a connection stayed open (s).
"""
import asyncio
import json
import socket
import sys
import time


async def connect(host, port, rcvbuf=None):
    loop = asyncio.get_running_loop()
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.setblocking(False)
    await loop.sock_connect(s, (host, port))
    return s


class Stats:
    def __init__(self):
        self.opened = 0
        self.closed = 0
        self.longest = 0.0


async def closed_by_server(s):
    """Waits until the server closes `s` (EOF or reset); drains whatever it sends."""
    loop = asyncio.get_running_loop()
    try:
        while await loop.sock_recv(s, 65536):
            pass
    except OSError:
        pass


async def silent(host, port, stats, end, reopen):
    while time.monotonic() < end:
        try:
            s = await connect(host, port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        stats.opened += 1
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(closed_by_server(s), max(0.0, end - time.monotonic()))
            stats.closed += 1
            stats.longest = max(stats.longest, time.monotonic() - t0)
        except asyncio.TimeoutError:
            pass
        finally:
            s.close()
        if not reopen:
            return


async def trickle(host, port, stats, end, head, step, every):
    """Sends `head`, then `step` every `every` seconds until the server closes or time ends."""
    loop = asyncio.get_running_loop()
    try:
        s = await connect(host, port)
    except OSError:
        return
    stats.opened += 1
    gone = asyncio.ensure_future(closed_by_server(s))
    try:
        await loop.sock_sendall(s, head)
        while time.monotonic() < end:
            done, _ = await asyncio.wait([gone], timeout=min(every, max(0.0, end - time.monotonic())))
            if done:
                stats.closed += 1
                return
            await loop.sock_sendall(s, step)
    except OSError:
        stats.closed += 1
    finally:
        gone.cancel()
        s.close()


async def stalled(host, port, stats, end, path):
    loop = asyncio.get_running_loop()
    try:
        s = await connect(host, port, rcvbuf=4096)
    except OSError:
        return
    stats.opened += 1
    try:
        await loop.sock_sendall(s, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await asyncio.sleep(max(0.0, end - time.monotonic()))
    finally:
        s.close()


async def main():
    kind, host, port, n, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    path = sys.argv[6] if len(sys.argv) > 6 else "/"
    end = time.monotonic() + seconds
    stats = Stats()
    if kind in ("silent", "reopen"):
        make = lambda: silent(host, port, stats, end, kind == "reopen")
    elif kind == "slowloris":
        make = lambda: trickle(host, port, stats, end, b"GET / HTTP/1.1\r\nHost: x\r\n", b"X-a: b\r\n", 2.0)
    elif kind == "slowpost":
        make = lambda: trickle(host, port, stats, end, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n", b"x", 5.0)
    elif kind == "stalled":
        make = lambda: stalled(host, port, stats, end, path)
    else:
        sys.exit(f"unknown kind {kind}")
    tasks = []
    # Opened in batches, so the listen backlog is not the limit being measured.
    for i in range(n):
        tasks.append(asyncio.ensure_future(make()))
        if i % 200 == 199:
            await asyncio.sleep(0.02)
    while stats.opened < n and time.monotonic() < end:
        await asyncio.sleep(0.05)
    print("ready", flush=True)
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"kind": kind, "opened": stats.opened, "closed_by_server": stats.closed,
                      "longest_open_s": round(stats.longest, 2)}), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
