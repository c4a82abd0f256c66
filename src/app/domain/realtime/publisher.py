"""Publishing after commit (docs/ARCHITECTURE.md invariant 7): best effort, never failing the request.

The same round trip (one script) makes the read cache's pages stale everywhere (PageCache.bumps); this
process drops its own in-memory copies before and after it, so the writer's next read sees its write.

A publish lost here (Redis down, process killed right after commit) is not a lost message: every API
process compares its rooms with Postgres every few seconds and replays what its sockets missed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any
from uuid import UUID

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.domain.conversations.cache import PageCache
from app.domain.realtime.events import Envelope, EventKind, envelope_encoder, org_channel

log = structlog.get_logger()

_PUBLISH_TIMEOUT_S = 0.5  # a hung Redis must not hold a webhook's 200
# One command for a whole publish (issue 13): the version bumps, the invalidation message, then each
# organisation's envelopes. As a pipeline of plain commands it was 2 per scope + 2 — ~18 for a batch of 7
# webhooks, each packed and its answer parsed by redis-py: ~10% of a webhook's CPU in the API. A script
# also keeps the order whatever happens: Redis runs it whole or (NOSCRIPT, then loaded and sent again by
# redis-py) not at all, so nothing is published twice and no frame leaves before its page is stale.
# KEYS: version keys. ARGV: their ttl, the invalidation channel and message, then channel/payload pairs.
_PUBLISH = """
for i = 1, #KEYS do
  redis.call('INCR', KEYS[i])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
if #KEYS > 0 then redis.call('PUBLISH', ARGV[2], ARGV[3]) end
for i = 4, #ARGV, 2 do redis.call('PUBLISH', ARGV[i], ARGV[i + 1]) end
return #KEYS
"""


class EventPublisher:
    def __init__(self, redis: Redis, key_prefix: str, cache: PageCache) -> None:
        self._redis = redis
        self._prefix = key_prefix
        self._cache = cache
        self._script = redis.register_script(_PUBLISH)

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
        """Several organisations' envelopes (a group-committed ingest batch, issue 13) in one pipeline: one
        Redis round trip for every envelope, version bump and invalidation of the batch."""
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
        bumps = self._cache.bumps(stale)
        args: list[Any] = [bumps.ttl_s, bumps.channel, bumps.message]
        for org_id, envelopes in envelopes_by_org.items():
            if envelopes:  # one message per organisation, its envelopes in commit order
                args += [org_channel(self._prefix, org_id), envelope_encoder.encode(envelopes)]
        try:
            async with asyncio.timeout(_PUBLISH_TIMEOUT_S):
                await self._script(keys=bumps.scopes, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._cache.invalidation_failed(stale)
            orgs = [str(org_id) for org_id in envelopes_by_org]
            log.warning("publish failed; catch-up will deliver", org_ids=orgs, error=type(exc).__name__)
            return False
        finally:
            # A read of ours during the round trip may have put back the page as Redis still had it.
            self._cache.invalidate(stale)
        self._cache.invalidation_sent(bumps.carried)
        return True
