"""Cache upkeep in Redis (the L2 every API process shares); each API process bounds its own L1.

`warm_cache` precomputes the pages agents open first: the latest history page of the most recently active
conversations and each of their orgs' first inbox page. It reads through the same `PageReader` as the API,
so a page already current in Redis is left alone and a page made stale mid-load is not stored (the
version check): running it twice, or on two workers at once, only costs the reads.

`expire_cache` deletes pages of conversations idle past a threshold (or gone), then, if more pages remain
than the key budget, the ones read least recently. Deleting a page can only cause a miss, never a wrong
answer, so concurrent runs are harmless too. What it removed is returned (arq keeps it as the job result)
and recorded under `{prefix}:cache:l2` for the stats endpoint.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from datetime import UTC, datetime, timedelta
from typing import Any, cast
from uuid import UUID

import structlog
from litestar.exceptions import HTTPException
from redis.asyncio import Redis
from sqlalchemy import select

from app.db.models import Conversation
from app.domain.conversations.cache import CacheKeys
from app.domain.conversations.reads import PageReader
from app.domain.conversations.services import ConversationFilters

log = structlog.get_logger()

_SCAN_BATCH = 1000


async def warm_cache(ctx: dict[str, Any]) -> dict[str, int]:
    settings = ctx["settings"].cache
    pages: PageReader = ctx["pages"]
    async with ctx["sessionmaker"]() as session:
        recent = (
            await session.execute(
                select(Conversation.org_id, Conversation.id)
                .order_by(Conversation.last_message_at.desc())
                .limit(settings.warm_conversations)
            )
        ).all()
    loads_before = pages.cache.stats.loads
    for org_id, conversation_id in recent:
        try:
            await pages.messages(org_id, conversation_id, limit=settings.page_size)
        except HTTPException:  # deleted since we listed it
            continue
    orgs = {org_id for org_id, _ in recent}
    for org_id in orgs:
        await pages.conversations(org_id, ConversationFilters(), None, settings.page_size)
    result = {
        "conversations": len(recent),
        "organisations": len(orgs),
        "loaded": pages.cache.stats.loads - loads_before,
    }
    log.info("cache warmed", **result)
    return result


async def expire_cache(ctx: dict[str, Any]) -> dict[str, int]:
    settings = ctx["settings"].cache
    redis: Redis = ctx["publisher_redis"]
    keys = CacheKeys(ctx["settings"].redis.key_prefix)
    page_keys = [key async for key in redis.scan_iter(match=keys.page_pattern(), count=_SCAN_BATCH)]

    idle = await _pages_of_idle_conversations(ctx, keys, page_keys)
    removed_idle = await _delete(redis, idle)
    idle_set = set(idle)
    remaining = [key for key in page_keys if key not in idle_set]
    over_budget = await _least_recently_read(redis, remaining, len(remaining) - settings.redis_max_keys)
    removed_over_budget = await _delete(redis, over_budget)
    over_set = set(over_budget)
    kept = [key for key in remaining if key not in over_set]

    result = {
        "scanned": len(page_keys),
        "removed_idle": removed_idle,
        "removed_over_budget": removed_over_budget,
        "kept": len(kept),
        "kept_bytes": await _total_size(redis, kept),
    }
    report = redis.hset(keys.l2_report_key(), mapping={**result, "ran_at": int(time.time())})
    await cast(Awaitable[int], report)  # redis-py types hset for both its sync and async clients
    log.info("cache expired", **result)
    return result


async def _pages_of_idle_conversations(
    ctx: dict[str, Any], keys: CacheKeys, page_keys: list[bytes]
) -> list[bytes]:
    by_conversation: dict[UUID, list[bytes]] = {}
    for key in page_keys:
        conversation_id = keys.conversation_of_page(key.decode())
        if conversation_id is not None:
            by_conversation.setdefault(conversation_id, []).append(key)
    idle_since = datetime.now(UTC) - timedelta(seconds=ctx["settings"].cache.idle_after_s)
    active: set[UUID] = set()
    ids = list(by_conversation)
    async with ctx["sessionmaker"]() as session:
        for start in range(0, len(ids), _SCAN_BATCH):
            batch = ids[start : start + _SCAN_BATCH]
            query = select(Conversation.id).where(
                Conversation.id.in_(batch), Conversation.last_message_at >= idle_since
            )
            active.update((await session.scalars(query)).all())
    return [key for cid, cid_keys in by_conversation.items() if cid not in active for key in cid_keys]


async def _least_recently_read(redis: Redis, page_keys: list[bytes], count: int) -> list[bytes]:
    if count <= 0:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for key in page_keys:
            pipe.object("idletime", key)
        # An LFU-configured Redis refuses IDLETIME: those keys sort as most recent (kept).
        idle_times = await pipe.execute(raise_on_error=False)
    ranked = sorted(
        zip(page_keys, idle_times, strict=True),
        key=lambda pair: pair[1] if isinstance(pair[1], int) else -1,
        reverse=True,
    )
    return [key for key, _ in ranked[:count]]


async def _total_size(redis: Redis, page_keys: list[bytes]) -> int:
    async with redis.pipeline(transaction=False) as pipe:
        for key in page_keys:
            pipe.strlen(key)
        return sum(await pipe.execute())


async def _delete(redis: Redis, keys: list[bytes]) -> int:
    removed = 0
    for start in range(0, len(keys), _SCAN_BATCH):
        removed += await redis.unlink(*keys[start : start + _SCAN_BATCH])
    return removed
