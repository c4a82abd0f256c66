"""Publishing after commit (docs/ARCHITECTURE.md invariant 7): best effort, never failing the request.

The same round trip (one script) makes the read cache's pages stale everywhere (PageCache.send_bumps); this
process drops its own in-memory copies before and after it, so the writer's next read sees its write.

A publish lost here (Redis down, process killed right after commit) is not a lost message: every API
process compares its rooms with Postgres every few seconds and replays what its sockets missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from uuid import UUID

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.domain.conversations.cache import PageCache
from app.domain.realtime.events import Envelope, EventKind, envelope_encoder, org_channel

log = structlog.get_logger()

_PUBLISH_TIMEOUT_S = 0.5  # a hung Redis must not hold a webhook's 200


class EventPublisher:
    def __init__(self, redis: Redis, key_prefix: str, cache: PageCache) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._cache = cache

    async def publish(
        self, org_id: UUID, envelopes: list[Envelope], *, history_rewritten: Iterable[UUID] = ()
    ) -> bool:
        """Send the envelopes to every API process; False if Redis could not take them (logged).

        `history_rewritten`: conversations whose cached history is stale though no room event says so (a
        repair job).
        """
        if not envelopes:
            return True
        return await self.publish_batch({org_id: envelopes}, history_rewritten={org_id: history_rewritten})

    async def publish_batch(
        self,
        envelopes_by_org: Mapping[UUID, list[Envelope]],
        *,
        history_rewritten: Mapping[UUID, Iterable[UUID]] | None = None,
    ) -> bool:
        """Several organisations' envelopes (a group-committed ingest batch, issue 13) with the cache's
        version bumps and invalidation, in one script (PageCache.send_bumps): one Redis round trip."""
        rewritten = history_rewritten or {}
        if not any(envelopes_by_org.values()) and not any(rewritten.values()):
            return True
        keys = self._cache.keys
        stale: set[str] = set()
        for org_id, envelopes in envelopes_by_org.items():
            # Room events change a conversation's history; inbox events change the org's conversation list.
            # The publisher knows events; the cache knows only scopes (issue 13).
            for envelope in envelopes:
                if envelope.kind is EventKind.CONVERSATION:
                    stale.add(keys.inbox_scope(org_id))
                else:
                    stale.add(keys.messages_scope(org_id, envelope.conversation_id))
        for org_id, conversations in rewritten.items():
            stale.update(keys.messages_scope(org_id, cid) for cid in conversations)
        self._cache.invalidate(stale)
        publishes = [  # one message per organisation, its envelopes in commit order
            (org_channel(self._prefix, org_id), envelope_encoder.encode(envelopes))
            for org_id, envelopes in envelopes_by_org.items()
            if envelopes
        ]
        try:
            async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
                await self._cache.send_bumps(stale, publishes)
        except (RedisError, OSError, TimeoutError) as exc:
            orgs = [str(org_id) for org_id in envelopes_by_org]
            log.warning("publish failed; catch-up will deliver", org_ids=orgs, error=type(exc).__name__)
            return False
        finally:
            # A read of ours during the round trip may have put back the page as Redis still had it.
            self._cache.invalidate(stale)
        return True
