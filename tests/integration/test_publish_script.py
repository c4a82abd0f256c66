"""A publish is one Redis script (issue 13, realtime/publisher.py): the version bumps, the invalidation
message and each organisation's envelopes, whole or not at all — so a script Redis has forgotten (restarted,
SCRIPT FLUSH) is loaded and sent again without anything published twice or out of order."""

from __future__ import annotations

import secrets
from uuid import uuid4

from redis.asyncio import Redis

from app.config import Settings
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.realtime.events import Envelope, EventKind, envelopes_decoder, org_channel
from app.domain.realtime.publisher import EventPublisher
from tests.kit.processes import private_redis


async def test_a_publish_is_whole_and_once_even_after_redis_forgot_the_script(settings: Settings) -> None:
    # A Redis of this test's own: SCRIPT FLUSH must not touch the run's other tests.
    with private_redis() as server:
        redis = Redis.from_url(server.url)
        try:
            await _publish_twice_with_a_flush_between(redis, settings)
        finally:
            await redis.aclose()


async def _publish_twice_with_a_flush_between(redis: Redis, settings: Settings) -> None:
    prefix = f"crm-publish-{secrets.token_hex(4)}"
    keys = CacheKeys(prefix)
    cache = PageCache(redis, keys, settings.cache)
    publisher = EventPublisher(redis, prefix, cache)
    org_a, org_b, conversation = uuid4(), uuid4(), uuid4()
    room = Envelope(EventKind.MESSAGE_CREATED, conversation, 1, '{"type":"message.created"}')
    inbox = Envelope(EventKind.CONVERSATION, conversation, 1, '{"type":"conversation.updated"}')
    listener = redis.pubsub()
    await listener.subscribe(
        org_channel(prefix, org_a), org_channel(prefix, org_b), keys.invalidation_channel()
    )
    try:
        for _ in range(3):  # the subscribe confirmations
            await listener.get_message(timeout=1.0)
        for flushed in (True, False):
            if flushed:
                await redis.script_flush()  # as after a Redis restart: NOSCRIPT on the first call
            assert await publisher.publish_batch({org_a: [room, inbox], org_b: [inbox]})
        received: list[tuple[str, bytes]] = []
        while (message := await listener.get_message(timeout=0.5)) is not None:
            received.append((message["channel"].decode(), message["data"]))
        invalidation = keys.invalidation_channel()
        channels = [channel for channel, _ in received]
        # Per publish, in order: the invalidation (pages stale first), then one message per organisation.
        assert channels == [invalidation, org_channel(prefix, org_a), org_channel(prefix, org_b)] * 2
        assert [
            len(envelopes_decoder.decode(data)) for channel, data in received if channel != invalidation
        ] == [
            2,
            1,
            2,
            1,
        ]
        # Each publish bumped each scope it touched once.
        assert int(await redis.get(keys.messages_scope(org_a, conversation)) or 0) == 2
        assert int(await redis.get(keys.inbox_scope(org_a)) or 0) == 2
        assert int(await redis.get(keys.inbox_scope(org_b)) or 0) == 2
    finally:
        await listener.aclose()
