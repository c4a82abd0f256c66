"""Memory per idle WebSocket: the RSS growth of one fresh API process while N authenticated sockets sit open.

The client side is bare asyncio streams doing the HTTP upgrade by hand (as tests/raw_ws.py does): a
websockets client per socket would cost the bench process far more than the server spends, and only the
server's memory is measured. The sockets never read after the handshake; the `ready` frame waits in the
client's kernel buffer, which is not the server's memory.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote

_SETTLE_S = 3.0


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


async def _open(port: int, token: str) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws?token={quote(token)} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(head.decode(errors="replace"))
    return writer


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
    writers: list[asyncio.StreamWriter] = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        async with gate:
            try:
                writers.append(await _open(port, token))
            except (OSError, ConnectionError, TimeoutError):
                failed += 1

    async def batch(n: int) -> None:
        await asyncio.gather(*(one() for _ in range(n)))

    try:
        # A few sockets opened and closed first, so one-off costs (lazy imports, caches, the first pool
        # connection) land in the baseline. Only a few: memory a big batch frees is reused by the next one
        # and would make the per-connection figure look smaller than it is.
        await batch(min(20, count))
        await _close(writers)
        writers.clear()
        failed = 0
        await asyncio.sleep(_SETTLE_S)
        before = rss_kb(pid)
        await batch(count)
        await asyncio.sleep(_SETTLE_S)
        after = rss_kb(pid)
        # What the server itself counts, not what the client believes it holds.
        held = await server_count()
        return IdleResult(held=held, before_kb=before, after_kb=after, failed=failed)
    finally:
        await _close(writers)


async def _close(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(10):
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)
