"""The fast path answers a page it read from Postgres first and stores it in Redis after (issue 13): a write
landing between the answer and the store leaves no stale page in Redis — the compare-and-set judges the
version seen before loading, whenever it runs. (That the page is stored once the request has ended:
tests/integration/test_fast_path.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from redis.asyncio import Redis

from app.config import Settings
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.realtime.publisher import EventPublisher
from tests.kit.page_cache import Loader, created, history_scope


async def test_a_store_deferred_past_a_write_is_refused(redis: Redis, settings: Settings):
    keys = CacheKeys(settings.redis.key_prefix)
    org_id, conversation_id, scope = history_scope(keys)
    reader = PageCache(redis, keys, settings.cache)
    deferred: list[Awaitable[None]] = []
    page = await reader.get_or_load(scope, "latest:50", Loader(b'{"read":"before"}'), deferred)
    assert page == b'{"read":"before"}' and len(deferred) == 1
    assert reader.stats.redis.stores == 0  # answered; not stored yet

    publisher = EventPublisher(redis, settings.redis.key_prefix, PageCache(redis, keys, settings.cache))
    assert await publisher.publish(org_id, [created(conversation_id, 2)])  # a write, before the store
    await deferred[0]
    assert (reader.stats.redis.refused, reader.stats.redis.stores) == (1, 0)
    assert await redis.get(keys.page_key(scope, "latest:50")) is None

    deferred.clear()  # without a write in between, the deferred store lands
    await reader.get_or_load(scope, "latest:50", Loader(b'{"read":"after"}'), deferred)
    await asyncio.gather(*deferred)
    assert reader.stats.redis.stores == 1
    assert (await redis.get(keys.page_key(scope, "latest:50")) or b"").endswith(b'{"read":"after"}')
