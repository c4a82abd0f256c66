"""`GET /api/whatsapp-optimized/stats` for admins: what this process sees (cache layers, database
statements, sockets) and, from Redis, the shared cache layer as the worker's last expire_cache found it."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable
from typing import cast

from litestar import Controller, get
from litestar.di import NamedDependency
from redis.exceptions import RedisError

from app.domain.accounts.auth import requires_admin
from app.domain.conversations.reads import PageReader
from app.domain.realtime.hub import Hub
from app.lib.dbstats import QueryCounter
from app.lib.deps import RedisClient
from app.lib.schema import Schema


class ProcessStats(Schema):
    pid: int
    cache: dict[str, object]
    database_statements: int
    websocket: dict[str, int]


class Stats(Schema):
    process: ProcessStats
    cache_redis: dict[str, int]  # pages kept/removed and bytes at the last expire_cache run; {} before one


class StatsController(Controller):
    path = "/api/whatsapp-optimized"
    tags = ["stats"]
    guards = [requires_admin]

    @get("/stats", summary="Cache, database and socket figures of the process that answers (admins)")
    async def stats(
        self, pages: NamedDependency[PageReader], hub: NamedDependency[Hub], redis: RedisClient
    ) -> Stats:
        try:
            async with asyncio.timeout(0.5):
                report = await cast(
                    Awaitable[dict[bytes, bytes]], redis.hgetall(pages.cache.keys.l2_report_key())
                )
        except (RedisError, OSError, TimeoutError):
            report = {}
        return Stats(
            cache_redis={key.decode(): int(value) for key, value in report.items()},
            process=ProcessStats(
                pid=os.getpid(),
                cache=pages.cache.describe(),
                database_statements=QueryCounter.statements,
                websocket=hub.counts(),
            ),
        )
