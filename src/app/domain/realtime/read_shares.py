"""A process-wide limit on concurrent reads, with a share per agent inside it.

One semaphore for every replay of a process (WS_REPLAY_CONCURRENCY) keeps a reconnect storm off the pool
webhooks commit through, but it is a single line: one agent's subscribe flood, under the per-socket rate
limit and over several sockets, queued hundreds of reads ahead of everyone else and took another org's
subscribe → replay.done from 8 ms to 1.3 s (issue 12, finding 5).

So a read first waits for its agent's own turn (at most `per_key` of one agent's reads hold or wait for a
process-wide slot), then for a slot. With `per_key` below `total` an agent can never hold every slot, and
the shared line never holds more than `per_key` reads of one agent: another agent's read waits behind at
most that many of the flooder's, whatever the flood. The per-agent semaphores exist only while that agent
has a read running or waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager


class _Share:
    __slots__ = ("semaphore", "users")

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.users = 0  # reads holding or waiting for this share


class ReadShares:
    def __init__(self, total: int, per_key: int) -> None:
        self.total = max(1, total)
        self.per_key = max(1, min(per_key, self.total))
        self._slots = asyncio.Semaphore(self.total)
        self._shares: dict[Hashable, _Share] = {}

    @asynccontextmanager
    async def slot(self, key: Hashable | None) -> AsyncIterator[None]:
        """A process-wide slot; with a key, only within that key's share (None: the process's own reads,
        e.g. the catch-up check, which no client can multiply)."""
        if key is None:
            async with self._slots:
                yield
            return
        share = self._shares.get(key)
        if share is None:
            share = self._shares[key] = _Share(self.per_key)
        share.users += 1
        try:
            async with share.semaphore, self._slots:
                yield
        finally:
            share.users -= 1
            if share.users == 0 and self._shares.get(key) is share:
                del self._shares[key]
