"""Memory per idle WebSocket: the RSS growth of one fresh API process while N authenticated sockets sit open.

The client side is the kit's RawWebSocket (one asyncio.Protocol per socket, the handshake by hand): a
websockets client per socket would cost the bench process far more than the server spends, and only the
server's memory is measured.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

from tests.kit.clients import RawWebSocket, close_all
from tests.kit.measure import rss_kib

_SETTLE_S = 3.0


@dataclass
class IdleResult:
    held: int
    before_kb: int
    after_kb: int
    failed: int

    @property
    def kb_per_connection(self) -> float:
        return (self.after_kb - self.before_kb) / self.held if self.held else float("nan")


async def idle_memory(
    pid: int,
    port: int,
    token: str,
    count: int,
    server_count: Callable[[], Awaitable[int]],
    concurrency: int = 100,
) -> IdleResult:
    gate = asyncio.Semaphore(concurrency)
    writers: list[RawWebSocket] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                writers.append(await RawWebSocket.open(port, f"/ws?token={quote(token)}"))
            except (OSError, ConnectionError, TimeoutError):
                failed += 1

    async def batch(n: int) -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    try:
        # A few sockets opened and closed first, so one-off costs (lazy imports, caches, the first pool
        # connection) land in the baseline. Only a few: memory a big batch frees is reused by the next one
        # and would make the per-connection figure look smaller than it is.
        await batch(min(20, count))
        await close_all(writers)
        writers.clear()
        failed = 0
        await asyncio.sleep(_SETTLE_S)
        before = rss_kib(pid)
        await batch(count)
        await asyncio.sleep(_SETTLE_S)
        after = rss_kib(pid)
        # What the server itself counts, not what the client believes it holds.
        held = await server_count()
        return IdleResult(held=held, before_kb=before, after_kb=after, failed=failed)
    finally:
        await close_all(writers)
