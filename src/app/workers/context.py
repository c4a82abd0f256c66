"""What every job finds in its arq context, made once per worker: settings, database sessions, an HTTP
client for gateways, and the publisher that tells WebSocket clients about status changes."""

from __future__ import annotations

from typing import Any

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.config import get_settings
from app.domain.realtime.publisher import EventPublisher
from app.lib.logging import configure_logging


async def startup(ctx: dict[str, Any]) -> None:
    settings = get_settings()
    configure_logging(settings.app.log_level, settings.app.log_json)
    engine = create_async_engine(settings.db.url, pool_size=5, max_overflow=5, hide_parameters=True)
    redis = Redis.from_url(settings.redis.url)
    ctx["settings"] = settings
    ctx["engine"] = engine
    ctx["sessionmaker"] = async_sessionmaker(engine, expire_on_commit=False)
    ctx["http"] = httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False)
    ctx["publisher_redis"] = redis
    ctx["publisher"] = EventPublisher(redis, settings.redis.key_prefix, settings.cache)


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()
    await ctx["publisher_redis"].aclose()
    await ctx["engine"].dispose()
