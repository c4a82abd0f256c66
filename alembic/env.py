"""Alembic environment for the plain CLI: `alembic upgrade head` with DATABASE_URL in the environment.

advanced-alchemy's stock env.py expects to run inside its own Litestar CLI; this one does not.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection

from app.config import ConfigurationError, DatabaseSettings, load_dotenv, normalise_database_url
from app.db.engine import APPLICATION_NAME, build_engine
from app.db.models import metadata
from app.lib.env_fields import load_section

config = context.config


def _database() -> DatabaseSettings:
    """DATABASE_URL (or the URL a test hands over) and every DB_* setting, as the application reads them."""
    load_dotenv()
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit(
            "DATABASE_URL is not set (use `just migrate`, which starts the embedded database if needed)"
        )
    try:
        return load_section(DatabaseSettings, url=normalise_database_url(url))
    except ConfigurationError as exc:
        raise SystemExit(str(exc)) from None


def _configure(connection: Connection | None = None, url: str | None = None) -> None:
    context.configure(
        connection=connection,
        url=url,
        target_metadata=metadata,
        compare_type=True,
        compare_server_default=True,
        render_as_batch=False,
        literal_binds=connection is None,
    )


def run_migrations_offline() -> None:
    _configure(url=_database().url)
    with context.begin_transaction():
        context.run_migrations()


def _run_sync(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    # The application's engine (DB_STATEMENT_CACHE_SIZE=0 behind a transaction pooler), without a pool.
    engine = build_engine(_database(), application_name=f"{APPLICATION_NAME}-migrate", pooled=False)
    async with engine.connect() as connection:
        await connection.run_sync(_run_sync)
    await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    connection = config.attributes.get("connection")
    if connection is not None:  # tests hand over a live sync connection
        _run_sync(connection)
    else:
        asyncio.run(run_migrations_online())
