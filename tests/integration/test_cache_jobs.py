"""The worker's cache jobs against real Postgres and Redis, and the worker process's health check."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Conversation
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.conversations.ingest import IngestService
from app.domain.conversations.reads import PageReader
from app.domain.conversations.services import ConversationFilters
from app.lib.driver_sql import DriverConnections
from app.workers.cache import expire_cache, warm_cache
from tests.kit.data import env_for, text_message
from tests.kit.factories import Tenant, create_tenant
from tests.kit.processes import ROOT


def worker_ctx(settings: Settings, engine: AsyncEngine, redis: Redis) -> dict[str, Any]:
    """What app.workers.context.startup builds, on the test's database and Redis."""
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    cache = PageCache(redis, CacheKeys(settings.redis.key_prefix), settings.cache)
    return {
        "settings": settings,
        "sessionmaker": sessionmaker,
        "publisher_redis": redis,
        "pages": PageReader(cache, DriverConnections(engine)),
    }


@pytest.fixture
async def isolated(settings: Settings, redis_url: str) -> AsyncIterator[tuple[Settings, Redis]]:
    """A key prefix of this test's own: the jobs scan every page of their deployment."""
    prefix = f"{settings.redis.key_prefix}-{os.urandom(3).hex()}"
    own = dataclasses.replace(settings, redis=dataclasses.replace(settings.redis, key_prefix=prefix))
    client = Redis.from_url(redis_url)
    yield own, client
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


async def chats(engine: AsyncEngine, tenant: Tenant, count: int) -> list[UUID]:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        result = await IngestService(session).apply(
            org_id=tenant.org_id,
            instance_id=tenant.instance("evolution").id,
            events=[text_message(f"55119777{i:05d}", f"hello {i}") for i in range(count)],
        )
        await session.commit()
    return [stored.conversation_id for stored in result.created]


async def page_keys(redis: Redis, keys: CacheKeys) -> set[str]:
    return {key.decode() async for key in redis.scan_iter(match=keys.page_pattern())}


async def test_warm_cache_fills_redis_with_hot_pages_once(
    isolated: tuple[Settings, Redis], engine: AsyncEngine, session: AsyncSession
):
    settings, redis = isolated
    tenant = await create_tenant(session)
    conversations = await chats(engine, tenant, 3)
    ctx = worker_ctx(settings, engine, redis)

    first = await warm_cache(ctx)
    second = await warm_cache(ctx)

    assert first["conversations"] >= 3 and first["loaded"] == first["conversations"] + first["organisations"]
    assert second["loaded"] == 0  # everything was current: nothing read from Postgres again
    keys = CacheKeys(settings.redis.key_prefix)
    stored = await page_keys(redis, keys)
    for conversation_id in conversations:
        scope = keys.messages_scope(tenant.org_id, conversation_id)
        assert keys.page_key(scope, f"latest:{settings.cache.page_size}") in stored
    # An API process reading those pages finds them in Redis and sends no query.
    api_cache = PageCache(redis, keys, settings.cache)
    reader = PageReader(api_cache, DriverConnections(engine))
    await reader.messages(tenant.org_id, conversations[0], limit=settings.cache.page_size)
    await reader.conversations(tenant.org_id, ConversationFilters(), None, settings.cache.page_size)
    assert (api_cache.stats.redis.hits, api_cache.stats.loads) == (2, 0)


async def test_expire_cache_drops_idle_conversations_then_enforces_the_key_budget(
    isolated: tuple[Settings, Redis], engine: AsyncEngine, session: AsyncSession
):
    settings, redis = isolated
    settings = dataclasses.replace(
        settings, cache=dataclasses.replace(settings.cache, idle_after_s=3600, redis_max_keys=2)
    )
    tenant = await create_tenant(session)
    idle, *active = await chats(engine, tenant, 4)
    async with async_sessionmaker(engine)() as s:
        await s.execute(
            update(Conversation)
            .where(Conversation.id == idle)
            .values(last_message_at=datetime.now(UTC) - timedelta(hours=2))
        )
        await s.commit()
    ctx = worker_ctx(settings, engine, redis)
    pages: PageReader = ctx["pages"]
    for conversation_id in (idle, *active):  # 4 history pages + 1 inbox page, all of this tenant
        await pages.messages(tenant.org_id, conversation_id, limit=50)
    await pages.conversations(tenant.org_id, ConversationFilters(), None, 50)
    keys = CacheKeys(settings.redis.key_prefix)
    recent = keys.page_key(keys.messages_scope(tenant.org_id, active[0]), "latest:50")
    await asyncio.sleep(1.1)  # OBJECT IDLETIME counts seconds: make the other pages older than `recent`
    await redis.get(recent)

    report = await expire_cache(ctx)
    again = await expire_cache(ctx)

    kept_bytes = report.pop("kept_bytes")
    assert report == {"scanned": 5, "removed_idle": 1, "removed_over_budget": 2, "kept": 2}
    assert again == {
        "scanned": 2,
        "removed_idle": 0,
        "removed_over_budget": 0,
        "kept": 2,
        "kept_bytes": kept_bytes,
    }
    remaining = await page_keys(redis, keys)
    assert kept_bytes == sum([await redis.strlen(key) for key in remaining]) > 0
    assert recent in remaining
    assert not any(str(idle) in key for key in remaining)
    recorded = await redis.hgetall(keys.l2_report_key())  # type: ignore[misc]
    assert recorded[b"kept"] == b"2" and int(recorded[b"ran_at"]) > 0


def _arq(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "arq", "app.workers.WorkerSettings", *args],
        cwd=ROOT,
        env=env_for(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


async def test_worker_health_check_and_warm_at_start(
    isolated: tuple[Settings, Redis], engine: AsyncEngine, session: AsyncSession
):
    settings, redis = isolated
    tenant = await create_tenant(session)
    [conversation_id] = await chats(engine, tenant, 1)
    assert _arq(settings, "--check").wait(30) == 1  # no worker of this deployment has reported yet

    worker = _arq(settings)
    try:
        keys = CacheKeys(settings.redis.key_prefix)
        page = keys.page_key(keys.messages_scope(tenant.org_id, conversation_id), "latest:50")
        deadline = time.monotonic() + 20
        while not await redis.exists(page):  # warmed at start, without waiting for the cron
            assert worker.poll() is None, "worker exited"
            assert time.monotonic() < deadline, "worker did not warm the cache at start"
            await asyncio.sleep(0.2)
        assert _arq(settings, "--check").wait(30) == 0
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(15)
