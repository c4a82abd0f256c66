"""What one API process has seen, and how /stats gathers every process's figures through Redis.

Counters live in the process that counts them (a dict increment on the hot path, no I/O). Every few seconds
each API process writes a snapshot to `{prefix}:stats:proc:{host}:{pid}` with a short TTL; /stats reads all
live snapshots and sums them, so the figures cover the deployment and a dead process drops out on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from typing import Any

import msgspec
import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.domain.conversations.cache import PageCache
from app.domain.realtime.hub import Hub
from app.domain.stats.ingest import INGEST
from app.lib.dbstats import QueryCounter

log = structlog.get_logger()

SNAPSHOT_INTERVAL_S = 5.0
_SNAPSHOT_TTL_S = 15  # three missed writes: the process is gone


class ProcessSnapshots:
    def __init__(self, redis: Redis, key_prefix: str, hub: Hub, cache: PageCache) -> None:
        self._redis = redis
        self._hub = hub
        self._cache = cache
        self.cache_keys = cache.keys
        self._key_root = f"{key_prefix}:stats:proc:"
        self._key = f"{self._key_root}{socket.gethostname()}:{os.getpid()}"
        self._started = time.time()

    def snapshot(self) -> dict[str, Any]:
        counters = self._hub.counters
        return {
            "process": self._key[len(self._key_root) :],
            "started_at": int(self._started),
            "websocket": {
                **self._hub.counts(),
                "frames_sent": counters.frames_sent,
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
            await self._redis.set(self._key, msgspec.json.encode(self.snapshot()), ex=_SNAPSHOT_TTL_S)

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
                keys = [key async for key in self._redis.scan_iter(match=f"{self._key_root}*", count=500)]
                values = await self._redis.mget(keys) if keys else []
        except (RedisError, OSError, TimeoutError):
            return [own]
        others = [msgspec.json.decode(value) for key, value in zip(keys, values, strict=True) if value]
        return [own, *(s for s in others if s.get("process") != own["process"])]
