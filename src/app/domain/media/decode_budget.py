"""How many bytes of decoded images one media worker process may hold at once (issue 12, finding 9).

A thumbnail's decode costs what `processing.thumbnail_cost` reads from the header (159 MB for a 150 KB
6300 x 6300 RGBA PNG). The per-job limit alone does not bound the process: MEDIA_CONCURRENCY jobs decoding at
once multiply it. So every decode first reserves its cost here, and decodes wait their turn (first come,
first served, so a large one is not starved by small ones) until the bytes in flight leave room for them:
the worker's decode memory stays within MEDIA_DECODE_BUDGET_BYTES whatever the concurrency. A decode that
alone exceeds the budget is not attempted (`admits`): the worker stores the original without a thumbnail.

The reservation is held until the thread doing the decode returns, also when the job awaiting it is
cancelled (arq's timeout): a thread cannot be stopped, and its memory is in use until it ends.

Memory given back: glibc serves each worker thread from an arena of its own, and once its dynamic mmap
threshold has risen (to the size of the largest block freed, up to 32 MiB) Pillow's 16 MiB image blocks come
from those arenas, whose free pages stay resident. Before this, four bombs left a worker 1,048 MiB larger.
After a large decode `malloc_trim(0)` hands every arena's free pages back to the kernel (a few ms); where
the C library has no `malloc_trim` (musl, macOS) nothing is done. Pillow keeps no freed blocks itself
(`Image.core.get_blocks_max()` is 0 unless PILLOW_BLOCKS_MAX says otherwise).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

TRIM_AFTER_BYTES = 32 * 1024 * 1024  # smaller decodes are served from memory glibc reuses anyway


def _load_malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def give_back_freed_memory() -> None:
    if _malloc_trim is not None:
        _malloc_trim(0)


class DecodeBudget:
    """A weighted, first-come-first-served semaphore of decoded bytes, for one event loop's jobs."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self.in_use = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._running: set[asyncio.Task[Any]] = set()

    def admits(self, cost: int) -> bool:
        return cost <= self.capacity

    async def run(self, cost: int, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` in a thread once `cost` bytes are free, holding them until the thread returns."""
        if not self.admits(cost):
            raise ValueError(f"a decode of {cost} bytes never fits a budget of {self.capacity}")
        await self._acquire(cost)
        work = asyncio.create_task(asyncio.to_thread(self._call, cost, fn, *args))
        self._running.add(work)
        work.add_done_callback(lambda _: self._done(work, cost))
        return await asyncio.shield(work)

    @staticmethod
    def _call(cost: int, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        finally:
            if cost >= TRIM_AFTER_BYTES:
                give_back_freed_memory()

    async def _acquire(self, cost: int) -> None:
        if not self._waiting and self.in_use + cost <= self.capacity:
            self.in_use += cost
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiting.append((cost, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():  # granted just as the job was cancelled
                self._release(cost)
            else:
                turn.cancel()  # skipped by _grant; the next in line may fit now
                self._grant()
            raise

    def _done(self, work: asyncio.Task[Any], cost: int) -> None:
        self._running.discard(work)
        if not work.cancelled():
            work.exception()  # retrieved: a job cancelled meanwhile has no one left to raise it to
        self._release(cost)

    def _release(self, cost: int) -> None:
        self.in_use -= cost
        self._grant()

    def _grant(self) -> None:
        while self._waiting:
            cost, turn = self._waiting[0]
            if turn.done():  # its job was cancelled while waiting
                self._waiting.popleft()
                continue
            if self.in_use + cost > self.capacity:
                return
            self._waiting.popleft()
            self.in_use += cost
            turn.set_result(None)
