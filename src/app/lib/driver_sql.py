"""Plain asyncpg statements on a connection of the application's SQLAlchemy pool, for the hot reads.

Why (issue 13, item 5): an uncached history window cost 3.4 ms in process against 0.7 ms for raw asyncpg
running the same queries. The difference was the ORM, not Postgres: a session, its BEGIN and ROLLBACK
round trips, statement construction and its cache key, greenlet switches, and ORM instances built for
every row and then copied into the response structs. A read of committed rows needs none of it.

So the reads take a connection from the same pool (its size, timeout and `DB_STATEMENT_CACHE_SIZE` hold:
asyncpg prepares each statement text once per connection and reuses it) and send fixed SQL with no
transaction: in autocommit each statement reads one consistent snapshot, which is what READ COMMITTED
gave the session's statements anyway. Each statement is counted with the ORM's (the proof that a cache hit
sends none, app.lib.dbstats). A connection lost mid-statement is invalidated in the pool, and the error
raised as SQLAlchemy's OperationalError, so the request answers 503 exactly as an ORM read does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

from app.lib.dbstats import QueryCounter
from app.lib.errors import is_database_unavailable


class DriverConnection:
    """One pooled asyncpg connection, lent for the duration of a read."""

    __slots__ = ("_pooled", "_raw")

    def __init__(self, pooled: PoolProxiedConnection, raw: asyncpg.Connection) -> None:
        self._pooled = pooled
        self._raw = raw

    async def fetch(self, sql: str, *args: Any) -> Sequence[asyncpg.Record]:
        QueryCounter.statements += 1
        try:
            rows: list[asyncpg.Record] = await self._raw.fetch(sql, *args)
            return rows
        except asyncpg.PostgresError as exc:
            if not (is_database_unavailable(exc) or self._raw.is_closed()):
                raise  # the statement failed; the connection is fine
            self._pooled.invalidate(exc)  # never lend this connection again
            raise OperationalError(None, None, exc, connection_invalidated=True) from exc
        except BaseException as exc:
            # Lost, cancelled or timed out mid-statement: its state is unknown, so it leaves the pool.
            self._pooled.invalidate(exc if isinstance(exc, Exception) else None)
            if isinstance(exc, (asyncpg.InterfaceError, OSError)):
                raise OperationalError(None, None, exc, connection_invalidated=True) from exc
            raise


class DriverConnections:
    """`async with connections() as conn:` a connection of `engine`'s pool, returned when the block ends."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[DriverConnection]:
        # The pool's own connection record, without a Connection object around it: checkout, and a checkin
        # whose reset is a no-op (no transaction was begun); invalidate() closes it without awaiting.
        pooled = await self.engine.raw_connection()
        try:
            raw = pooled.driver_connection
            assert isinstance(raw, asyncpg.Connection)
            yield DriverConnection(pooled, raw)
        finally:
            pooled.close()


__all__ = ["DriverConnection", "DriverConnections"]
