"""Logins get a bounded share of the process (issue 12, finding 1b): at most LOGIN_CONCURRENCY password
checks at once per process (default: half the CPUs it may use, 1 to 4), the others wait their turn.

A password check is one short read (its connection goes back to the pool before hashing) and one scrypt in
a worker thread (16 MiB and tens of milliseconds of CPU). Unbounded, a login flood from many addresses would
run dozens of those at once, take the pool's connections and the CPU that webhook commits need, and hold
16 MiB each. A login that waits longer than `WAIT_S` for its turn answers 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from app.lib.errors import problem

WAIT_S = 5.0


class LoginSlots:
    def __init__(self, concurrency: int) -> None:
        self._slots = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def taken(self) -> AsyncIterator[None]:
        try:
            async with asyncio.timeout(WAIT_S):
                await self._slots.acquire()
        except TimeoutError:
            refusal = problem(503, "too many logins in progress; retry later")
            refusal.headers = {"Retry-After": "1"}
            raise refusal from None
        try:
            yield
        finally:
            self._slots.release()
