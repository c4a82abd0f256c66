"""What every job finds in its arq context: settings and a session factory, made once per worker."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.config import get_settings
from app.lib.logging import configure_logging


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    configure_logging(settings.app.log_level, settings.app.log_json)
    engine = create_async_engine(settings.db.url, pool_size=5, max_overflow=5)
    ctx["settings"] = settings
    ctx["engine"] = engine
    ctx["sessionmaker"] = async_sessionmaker(engine, expire_on_commit=False)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["engine"].dispose()
