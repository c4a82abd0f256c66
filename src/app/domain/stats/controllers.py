"""`GET /api/whatsapp-optimized/stats` for admins: what this process sees (cache layers, database
statements, sockets). Deployment-wide figures join it with the stats issue."""

from __future__ import annotations

import os

from litestar import Controller, get
from litestar.di import NamedDependency

from app.domain.accounts.auth import requires_admin
from app.domain.conversations.reads import PageReader
from app.domain.realtime.hub import Hub
from app.lib.dbstats import QueryCounter
from app.lib.schema import Schema


class ProcessStats(Schema):
    pid: int
    cache: dict[str, object]
    database_statements: int
    websocket: dict[str, int]


class Stats(Schema):
    process: ProcessStats


class StatsController(Controller):
    path = "/api/whatsapp-optimized"
    tags = ["stats"]
    guards = [requires_admin]

    @get("/stats", summary="Cache, database and socket figures of the process that answers (admins)")
    async def stats(self, pages: NamedDependency[PageReader], hub: NamedDependency[Hub]) -> Stats:
        return Stats(
            process=ProcessStats(
                pid=os.getpid(),
                cache=pages.cache.describe(),
                database_statements=QueryCounter.statements,
                websocket=hub.counts(),
            )
        )
