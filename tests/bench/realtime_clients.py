"""The measuring side of the real-time benchmark: room sockets, a paced load loop and the latency record.

Senders and receivers live in this one process, so `time.perf_counter()` at send and at receipt are on the
same clock. Each message carries its number in its body ("rt-0000123"); a receiver finds it with a substring
search instead of decoding the frame, which keeps the bench process's CPU (on a 2-core machine) small next
to the servers it measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

MARKER = "rt-"
_BODY_MARKER = f'"body":"{MARKER}'
_DIGITS = 7
_CREATED = '{"type":"message.created"'  # msgspec writes the tag field first


def body_for(number: int) -> str:
    return f"{MARKER}{number:0{_DIGITS}d}"


@dataclass
class Recorder:
    """POST/publish start per message number, and every (message, socket) receipt after `first`."""

    total: int
    first: int  # messages below this number are warm-up: delivered but not counted
    t0: list[float] = field(init=False)
    received: list[int] = field(init=False)
    last_receipt: list[float] = field(init=False)
    acked: list[float] = field(init=False)  # when the webhook's response had arrived (API run only)
    receipts: list[tuple[int, float]] = field(default_factory=list)  # (message, when), measured only
    other_frames: dict[str, int] = field(default_factory=dict)  # by type: conversation.updated is org-wide
    sample_frame: str = ""

    def __post_init__(self) -> None:
        self.t0 = [math.nan] * self.total
        self.received = [0] * self.total
        self.last_receipt = [math.nan] * self.total
        self.acked = [math.nan] * self.total

    def on_frame(self, text: str, now: float) -> None:
        if not text.startswith(_CREATED):
            kind = text[9 : text.find('"', 9)]  # after '{"type":"'
            self.other_frames[kind] = self.other_frames.get(kind, 0) + 1
            return
        at = text.find(_BODY_MARKER)
        if at < 0:
            return
        start = at + len(_BODY_MARKER)
        number = int(text[start : start + _DIGITS])
        if number < self.first or number >= self.total:
            return
        self.received[number] += 1
        self.last_receipt[number] = now
        self.receipts.append((number, now))
        if not self.sample_frame:
            self.sample_frame = text

    def measured(self) -> range:
        return range(self.first, self.total)

    @property
    def latencies(self) -> list[float]:
        """Per delivery: POST (or publish) start -> frame received."""
        return [now - self.t0[n] for n, now in self.receipts]

    def after_response(self) -> list[float]:
        """Per delivery: the webhook's response arrived -> frame received (negative: the frame came first)."""
        return [now - self.acked[n] for n, now in self.receipts]

    def acks(self) -> list[float]:
        return [self.acked[n] - self.t0[n] for n in self.measured() if not math.isnan(self.acked[n])]

    def deliveries(self) -> int:
        return sum(self.received[i] for i in self.measured())

    def every_agent_latencies(self, per_room: int) -> list[float]:
        """Per message: start until the last socket of its room had it (messages fully delivered only)."""
        return [self.last_receipt[i] - self.t0[i] for i in self.measured() if self.received[i] >= per_room]


async def _recv_type(conn: ClientConnection, wanted: str, timeout: float = 10.0) -> dict[str, object]:
    async with asyncio.timeout(timeout):
        while True:
            frame: dict[str, object] = json.loads(await conn.recv())
            if frame.get("type") == wanted:
                return frame
            if frame.get("type") in ("error", "resync"):
                raise RuntimeError(f"server answered {frame}")


@dataclass
class RoomSockets:
    """Every socket of a run: connected, subscribed to its room, and read by one task each."""

    recorder: Recorder
    conns: list[ClientConnection] = field(default_factory=list)
    readers: list[asyncio.Task[None]] = field(default_factory=list)
    lost: int = 0  # sockets the server closed during the run

    async def open(self, url: str, room: str, after_seq: int) -> None:
        conn = await connect(url, proxy=None, compression=None, open_timeout=10.0, close_timeout=2.0)
        self.conns.append(conn)
        await _recv_type(conn, "ready")
        await conn.send(json.dumps({"type": "subscribe", "conversation_id": room, "after_seq": after_seq}))
        await _recv_type(conn, "replay.done")
        self.readers.append(asyncio.create_task(self._read(conn)))

    async def open_all(self, targets: list[tuple[str, str, int]], concurrency: int = 50) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(target: tuple[str, str, int]) -> None:
            async with gate:
                await self.open(*target)

        await asyncio.gather(*(one(t) for t in targets))

    async def _read(self, conn: ClientConnection) -> None:
        on_frame, clock = self.recorder.on_frame, time.perf_counter
        try:
            async for text in conn:
                on_frame(text if isinstance(text, str) else text.decode(), clock())
        except ConnectionClosed:
            pass
        self.lost += 1

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(10):
                await asyncio.gather(*(c.close() for c in self.conns), return_exceptions=True)


async def paced(
    recorder: Recorder, rate: float, send: Callable[[int], Awaitable[None]], max_in_flight: int = 2000
) -> tuple[float, int]:
    """Start send(n) for every message number at `rate` per second, each as its own task, without waiting
    for earlier ones (an open-loop load: a slow server does not slow the offered rate). Returns the
    achieved start rate over the measured part, and how many sends failed."""
    failures = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def one(number: int) -> None:
        nonlocal failures
        try:
            await send(number)
        except Exception:
            failures += 1

    started = time.perf_counter()
    measured_from = started
    number = 0
    while number < recorder.total:
        due = min(recorder.total, int((time.perf_counter() - started) * rate) + 1)
        while number < due and len(in_flight) < max_in_flight:
            if number == recorder.first:
                measured_from = time.perf_counter()
            task = asyncio.create_task(one(number))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
            number += 1
        await asyncio.sleep(0.001)
    measured_for = time.perf_counter() - measured_from
    if in_flight:
        await asyncio.wait(in_flight, timeout=30)
    count = recorder.total - recorder.first
    return (count - 1) / measured_for if measured_for > 0 and count > 1 else math.nan, failures


async def drain(recorder: Recorder, expected: int, timeout: float) -> None:
    """Wait until every expected delivery arrived, or `timeout`."""
    deadline = time.monotonic() + timeout
    while recorder.deliveries() < expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
