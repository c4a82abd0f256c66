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
    by_conversation: dict[UUID, list[bytes]] = {}
    for key in page_keys:
        conversation_id = keys.conversation_of_page(key.decode())
        if conversation_id is not None:
            by_conversation.setdefault(conversation_id, []).append(key)

    idle_since = datetime.now(UTC) - timedelta(seconds=settings.idle_after_s)
    active: set[UUID] = set()
    ids = list(by_conversation)
    async with ctx["sessionmaker"]() as session:
        for start in range(0, len(ids), _SCAN_BATCH):
            batch = ids[start : start + _SCAN_BATCH]
            active.update(
                (
                    await session.scalars(
                        select(Conversation.id).where(
                            Conversation.id.in_(batch), Conversation.last_message_at >= idle_since
                        )
                    )
                ).all()
            )
    idle = [key for cid, cid_keys in by_conversation.items() if cid not in active for key in cid_keys]
    removed_idle = await _delete(redis, idle)

    idle_set = set(idle)
    remaining = [key for key in page_keys if key not in idle_set]
    removed_over_budget = 0
    excess = len(remaining) - settings.redis_max_keys
    if excess > 0:
        async with redis.pipeline(transaction=False) as pipe:
            for key in remaining:
                pipe.object("idletime", key)
            idle_times = await pipe.execute(raise_on_error=False)
        least_recent = sorted(
            zip(remaining, idle_times, strict=True),
            key=lambda pair: pair[1] if isinstance(pair[1], int) else -1,
            reverse=True,
        )
        removed_over_budget = await _delete(redis, [key for key, _ in least_recent[:excess]])

    result = {
        "scanned": len(page_keys),
        "removed_idle": removed_idle,
        "removed_over_budget": removed_over_budget,
        "kept": len(page_keys) - removed_idle - removed_over_budget,
    }
    report = redis.hset(keys.l2_report_key(), mapping={**result, "ran_at": int(time.time())})
    await cast(Awaitable[int], report)  # redis-py types hset for both its sync and async clients
    log.info("cache expired", **result)
    return result


async def _delete(redis: Redis, keys: list[bytes]) -> int:
    removed = 0
    for start in range(0, len(keys), _SCAN_BATCH):
        removed += await redis.unlink(*keys[start : start + _SCAN_BATCH])
    return removed
