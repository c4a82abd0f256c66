"""Throw-away databases on the test server, built by the real Alembic scripts, and a run's Redis key space
dropped (tests and benchmarks)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from app.config import normalise_database_url

ROOT = Path(__file__).resolve().parents[2]


def plain_dsn(url: str) -> str:
    """The asyncpg/libpq form of a SQLAlchemy URL."""
    return normalise_database_url(url).replace("postgresql+asyncpg://", "postgresql://", 1)


def alembic_config(url: str) -> Config:
    config = Config(str(ROOT / "alembic.ini"))
    config.attributes["database_url"] = url
    return config


def _admin(server_url: str, sql: str) -> None:
    async def run() -> None:
        conn = await asyncpg.connect(plain_dsn(server_url))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@contextmanager
def scratch_database(server_url: str, prefix: str, *, migrate: bool = True) -> Iterator[str]:
    """A new database on the server of `server_url` (migrated to head unless told not to), dropped on exit.

    Call it from synchronous code (it runs its own event loop for the admin statements).
    """
    name = f"{prefix}_{secrets.token_hex(4)}"
    server = make_url(normalise_database_url(server_url))
    _admin(server_url, f'CREATE DATABASE "{name}"')
    try:
        url = server.set(database=name).render_as_string(hide_password=False)
        if migrate:
            command.upgrade(alembic_config(url), "head")
        yield url
    finally:
        _admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def drop_redis_keys(url: str, prefix: str) -> int:
    """Unlink every key under `prefix:` (a run's own key space); how many there were."""
    redis = Redis.from_url(url)
    dropped = 0
    try:
        batch: list[bytes] = []
        async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                dropped += await redis.unlink(*batch)
                batch.clear()
        if batch:
            dropped += await redis.unlink(*batch)
    finally:
        await redis.aclose()
    return dropped
