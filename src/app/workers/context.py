"""What every job finds in its arq context, made once per worker: settings, database sessions, an HTTP
client for gateways, the publisher that tells WebSocket clients (and the read cache) about status changes,
and a page reader writing to the Redis cache layer only (a worker serves no reads, so it keeps no L1)."""

from __future__ import annotations

import os
import time
from typing import Any

import httpx
from prometheus_client import start_http_server
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker

from app.config import get_settings
from app.db.engine import APPLICATION_NAME, build_engine
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.conversations.reads import PageReader
from app.domain.media.decode_budget import DecodeBudget
from app.domain.media.storage import MediaStorage
from app.domain.realtime.publisher import EventPublisher
from app.lib.driver_sql import DriverConnections
from app.lib.jobs import WARM_CACHE, queue_name
from app.lib.logging import configure_logging
from app.workers.redis_retry import mark_worker_running


async def startup(ctx: dict[str, Any]) -> None:
    await _common(ctx)
    settings = ctx["settings"]
    # Warm at start too, not only on the cron; the job id makes workers starting together warm once.
    # arq's job ids are global to the Redis: they carry the queue so deployments sharing one stay apart.
    queue = queue_name(settings.redis.key_prefix)
    started = int(time.time()) // 60
    await ctx["redis"].enqueue_job(WARM_CACHE, _job_id=f"{queue}:{WARM_CACHE}:{started}", _queue_name=queue)


async def _common(ctx: dict[str, Any]) -> None:
    mark_worker_running()  # from here on the arq pool waits out a Redis outage (app.workers.redis_retry)
    settings = get_settings()
    configure_logging(settings.app.log_level, settings.app.log_json)
    port = os.environ.get("WORKER_METRICS_PORT")
    if port:  # this worker's own /metrics, for a Prometheus that cannot reach the API's directory
        start_http_server(int(port), addr=os.environ.get("WORKER_METRICS_HOST", "127.0.0.1"))
    # Every DB_* setting, as the API's (app.db.engine), with a pre-ping: arq does not retry a plain exception,
    # so a job drawing a connection that died with a Postgres restart would wait for a sweep. One round trip
    # per job is nothing next to a gateway call; the API, on the hot path, goes without.
    engine = build_engine(settings.db, application_name=f"{APPLICATION_NAME}-worker", pre_ping=True)
    redis = Redis.from_url(settings.redis.url)
    ctx["settings"] = settings
    ctx["engine"] = engine
    ctx["sessionmaker"] = async_sessionmaker(engine, expire_on_commit=False)
    ctx["http"] = httpx.AsyncClient(timeout=httpx.Timeout(10.0), trust_env=False)
    ctx["publisher_redis"] = redis
    cache = PageCache(redis, CacheKeys(settings.redis.key_prefix), settings.cache)
    ctx["publisher"] = EventPublisher(redis, settings.redis.key_prefix, cache)
    ctx["pages"] = PageReader(cache, DriverConnections(engine))


async def shutdown(ctx: dict[str, Any]) -> None:
    await ctx["http"].aclose()
    await ctx["publisher_redis"].aclose()
    await ctx["engine"].dispose()


async def startup_media(ctx: dict[str, Any]) -> None:
    """The media worker: the same context, plus the storage processed media goes to and the budget its image
    decodes share (no cache warming)."""
    await _common(ctx)
    ctx["media_storage"] = MediaStorage.from_url(ctx["settings"].media.storage_url)
    ctx["decode_budget"] = DecodeBudget(ctx["settings"].media.decode_budget_bytes)
