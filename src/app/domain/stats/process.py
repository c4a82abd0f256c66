"""What one API process has seen, and how /stats gathers every process's figures through Redis.

Counters live in the process that counts them (no I/O on the hot path); those /metrics exports too are read
from their Prometheus counters, not kept twice (`app.lib.metrics`, issue 14). Every few seconds
each API process writes a snapshot, stamped with the time, into one hash `{prefix}:stats:processes` (field
`{host}:{pid}`); /stats reads that hash — one command, however many keys the cache holds — sums the fresh
snapshots and removes the ones of processes that stopped writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable
from typing import Any, cast

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.domain.conversations.cache import PageCache
from app.domain.realtime.hub import Hub
from app.domain.stats.ingest import INGEST
from app.lib import metrics
from app.lib.dbstats import QueryCounter

log = structlog.get_logger()

SNAPSHOT_INTERVAL_S = 5.0
_STALE_S = 15  # three missed writes: the process is gone


class ProcessSnapshots:
    def __init__(self, redis: Redis, key_prefix: str, hub: Hub, cache: PageCache) -> None:
        self._redis = redis
        self._hub = hub
        self._cache = cache
        self.cache_keys = cache.keys
        self._hash = f"{key_prefix}:stats:processes"
        self._name = f"{socket.gethostname()}:{os.getpid()}"
        self._started = time.time()

    def snapshot(self) -> dict[str, Any]:
        counters = self._hub.counters
        return {
            "process": self._name,
            "written_at": time.time(),
            "started_at": int(self._started),
            "websocket": {
                **self._hub.counts(),
                "frames_sent": metrics.total(metrics.WS_FRAMES),
                "messages_routed": counters.messages_routed,
                "notifications": counters.notifications,
                "resyncs": counters.resyncs,
                "slow_consumers_dropped": counters.slow_consumers,
                "by_organisation": self._hub.counts_by_org(),
            },
            "cache": self._cache.describe(),
            "ingest": INGEST.describe(),
            "database_statements": QueryCounter.statements,
        }

    async def publish(self) -> None:
        async with asyncio.timeout(1.0):
            snapshot = msgspec.json.encode(self.snapshot()).decode()
            await cast(Awaitable[int], self._redis.hset(self._hash, self._name, snapshot))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                await self.publish()
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)

    async def collect(self) -> list[dict[str, Any]]:
        """Every live process's latest snapshot (this one's fresh); only this one if Redis is away."""
        own = self.snapshot()
        try:
            async with asyncio.timeout(1.0):
                stored = await cast(Awaitable[dict[bytes, bytes]], self._redis.hgetall(self._hash))
                snapshots = [msgspec.json.decode(value) for value in stored.values()]
                gone = [
                    s["process"] for s in snapshots if s.get("written_at", 0) < own["written_at"] - _STALE_S
                ]
                if gone:
                    await cast(Awaitable[int], self._redis.hdel(self._hash, *gone))
        except (RedisError, OSError, TimeoutError):
            return [own]
        others = [s for s in snapshots if s["process"] not in gone and s["process"] != own["process"]]
        return [own, *others]
