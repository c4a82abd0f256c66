"""ReadShares: a flooding key never holds every slot, and its queue is its own (issue 12, finding 5)."""

from __future__ import annotations

import asyncio

from app.domain.realtime.read_shares import ReadShares


async def test_a_key_with_many_waiting_reads_leaves_a_slot_for_another_key() -> None:
    shares = ReadShares(total=2, per_key=1)
    release = asyncio.Event()
    holding = 0

    async def flooder_read() -> None:
        nonlocal holding
        async with shares.slot("a"):
            holding += 1
            await release.wait()
            holding -= 1

    flood = [asyncio.create_task(flooder_read()) for _ in range(10)]
    await asyncio.sleep(0)
    async with asyncio.timeout(1):  # B gets the slot A cannot take, while all ten of A's wait
        async with shares.slot("b"):
            assert holding == 1
        async with shares.slot(None):  # the process's own reads share the slots, no key's queue
            pass
    release.set()
    await asyncio.gather(*flood)
    assert shares._shares == {}  # nothing is kept for keys with no read


async def test_a_cancelled_wait_gives_its_place_back() -> None:
    shares = ReadShares(total=1, per_key=1)
    async with shares.slot("a"):
        waiting = asyncio.create_task(_hold(shares, "a"))
        await asyncio.sleep(0)
        waiting.cancel()
        await asyncio.gather(waiting, return_exceptions=True)
    async with asyncio.timeout(1), shares.slot("a"):
        pass
    assert shares._shares == {}


async def _hold(shares: ReadShares, key: str) -> None:
    async with shares.slot(key):
        await asyncio.sleep(10)
