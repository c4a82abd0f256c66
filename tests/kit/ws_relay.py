"""The baseline of the real-time benchmark: the least a Redis -> WebSocket relay has to do.

`python -m tests.kit.ws_relay PORT REDIS_URL CHANNEL` serves WebSockets on 127.0.0.1:PORT, speaks
just enough of the app's protocol for the same bench client (ready, subscribe, replay.done), SUBSCRIBEs to
one Redis channel whose messages are "<room>\\n<frame>", and writes each frame to the sockets of that room.
No auth, no database, no queues, no per-room seq bookkeeping: what is left is Redis, the event loop and the
WebSocket writes, the floor any Python relay on this machine stands on.

It runs in processes of its own, like the API, so it does not share the bench process's CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

from redis.asyncio import Redis
from websockets.asyncio.server import ServerConnection, broadcast, serve

from tests.kit.measure import free_port
from tests.kit.processes import ROOT, STOP_TIMEOUT

START_TIMEOUT = 60.0  # two cores shared with other work: an interpreter can take seconds to start

_rooms: dict[str, set[ServerConnection]] = {}


async def _handler(conn: ServerConnection) -> None:
    await conn.send('{"type":"ready"}')
    joined: list[str] = []
    try:
        async for text in conn:
            frame = json.loads(text)
            if frame.get("type") == "subscribe":
                room = str(frame["conversation_id"])
                _rooms.setdefault(room, set()).add(conn)
                joined.append(room)
                await conn.send(json.dumps({"type": "replay.done", "conversation_id": room, "seq": 0}))
    finally:
        for room in joined:
            _rooms.get(room, set()).discard(conn)


async def _relay(redis_url: str, channel: str) -> None:
    client = Redis.from_url(redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    async for message in pubsub.listen():
        room, _, frame = message["data"].decode().partition("\n")
        broadcast(_rooms.get(room, ()), frame)  # writes now, never waits for a slow socket


async def _serve(port: int, redis_url: str, channel: str) -> None:
    async with serve(_handler, "127.0.0.1", port, compression=None, max_queue=None):
        await _relay(redis_url, channel)


class Relay(NamedTuple):
    url: str  # ws://127.0.0.1:PORT/
    port: int
    pid: int


@contextmanager
def relay_processes(count: int, redis_url: str, channel: str) -> Iterator[list[Relay]]:
    """`count` relays, each yielded once it accepts connections; all stopped on exit. Their output (only
    websockets' complaints about sockets a bench drops without a close frame) is discarded."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        relays = []
        for _ in range(count):
            port = free_port()
            cmd = [sys.executable, "-m", "tests.kit.ws_relay", str(port), redis_url, channel]
            proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            procs.append(proc)
            relays.append(Relay(f"ws://127.0.0.1:{port}/", port, proc.pid))
        deadline = time.monotonic() + START_TIMEOUT
        for proc, relay in zip(procs, relays, strict=True):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"relay exited with {proc.returncode}")
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", relay.port), 0.2):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("relay did not start")
                time.sleep(0.05)
        yield relays
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), sys.argv[2], sys.argv[3]))
