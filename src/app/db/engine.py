"""The one way every process builds its database engine: API, workers, CLI and migrations (issue 14).

Why: there were three builders, and they drifted. The workers' hard-coded its pool and dropped
DB_STATEMENT_CACHE_SIZE, so behind pgbouncer in transaction mode (how Supabase's pooler on port 6543
behaves) `warm_cache` failed with `DuplicatePreparedStatementError: prepared statement "__asyncpg_stmt_1__"
already exists`, and the CLI failed the same way. Here every DB_* setting holds for every process:

- DB_POOL_SIZE / DB_MAX_OVERFLOW / DB_POOL_TIMEOUT size the pool (connections are opened on demand, so a
  worker running few jobs never opens them all); the CLI and Alembic run one unit of work: no pool.
- DB_STATEMENT_CACHE_SIZE sizes both statement caches, asyncpg's (the raw reads and the ingest batch) and
  SQLAlchemy's own prepared-statement cache. At 0 a transaction pooler may hand each transaction another
  server connection, so nothing prepared may be reused or share a name: asyncpg then sends unnamed
  statements (Parsed again in the same message sequence as the Bind, asyncpg #1058), and SQLAlchemy, which
  always prepares a named statement, names each one uniquely (its asyncpg dialect's
  `prepared_statement_name_func`) inside the transaction that uses it.
- DB_ECHO logs statements; their parameters (customer messages, secrets) never reach a log.

A connection that cannot be opened at all (refused, unreachable, timed out, a DNS failure) raises
DatabaseUnreachable, so the API's error mapping can tell it from any other OSError (a file missing from
media storage is not a database outage).
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import msgspec
from sqlalchemy import event
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, NullPool

from app.config import DatabaseSettings

APPLICATION_NAME = "whatsapp-crm"


class DatabaseUnreachable(ConnectionError):
    """No connection to Postgres could be opened (the OSError the driver raised is its cause)."""


def unique_statement_name() -> str:
    """A name no other client of a shared server connection can have chosen (transaction pooling)."""
    return f"__asyncpg_{uuid4().hex}__"


def connect_args(db: DatabaseSettings, application_name: str = APPLICATION_NAME) -> dict[str, Any]:
    """The asyncpg dialect's connection arguments for these settings."""
    args: dict[str, Any] = {"server_settings": {"application_name": application_name}}
    if db.statement_cache_size is not None:
        args["statement_cache_size"] = db.statement_cache_size
        args["prepared_statement_cache_size"] = db.statement_cache_size
        if db.statement_cache_size == 0:
            args["prepared_statement_name_func"] = unique_statement_name
    return args


def _json_text(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def build_engine(
    db: DatabaseSettings,
    *,
    application_name: str = APPLICATION_NAME,
    pooled: bool = True,
    pre_ping: bool = False,
) -> AsyncEngine:
    """The engine for `db`. `pooled=False` for one-shot processes (CLI, migrations); `pre_ping` where a
    round trip per checkout is cheap next to the work (the workers: a connection that died with a Postgres
    restart is replaced at checkout instead of failing the job that drew it)."""
    options: dict[str, Any] = {
        "echo": db.echo,
        # Statement parameters are customer messages and secrets: keep them out of error logs.
        "hide_parameters": True,
        "connect_args": connect_args(db, application_name),
        "json_serializer": _json_text,
        "json_deserializer": msgspec.json.decode,
    }
    if pooled:
        options.update(
            pool_size=db.pool_size,
            max_overflow=db.max_overflow,
            pool_timeout=db.pool_timeout,  # waiting longer answers 503 + Retry-After (app.lib.errors)
            pool_pre_ping=pre_ping,
        )
    else:
        options["poolclass"] = NullPool
    engine = create_async_engine(db.url, **options)
    event.listen(engine.sync_engine, "do_connect", _connect_or_unreachable)
    return engine


def _connect_or_unreachable(
    dialect: Dialect, record: ConnectionPoolEntry, cargs: tuple[Any, ...], cparams: dict[str, Any]
) -> Any:
    """Open the connection as the dialect would; an OSError on the way is the database being unreachable."""
    try:
        return dialect.loaded_dbapi.connect(*cargs, **cparams)
    except OSError as exc:  # TimeoutError, ConnectionRefusedError, socket.gaierror, "Multiple exceptions"
        raise DatabaseUnreachable(str(exc) or type(exc).__name__) from exc
