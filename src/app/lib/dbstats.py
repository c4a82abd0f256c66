"""How many SQL statements this process has sent to Postgres: the proof that a cache hit sends none."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine


class QueryCounter:
    statements = 0


def _count(*_: Any) -> None:
    QueryCounter.statements += 1


def count_queries(engine: AsyncEngine) -> None:
    if not event.contains(engine.sync_engine, "before_cursor_execute", _count):
        event.listen(engine.sync_engine, "before_cursor_execute", _count)
