"""The instances recent webhooks were addressed to, kept for a few seconds in each API process.

A gateway sends a stream of webhooks to one instance. Looking the instance up in Postgres for each of them
cost a transaction of its own before the body could be read (the lookup must end before a slow upload,
see WebhookService) — a third of a webhook's database round trips. With the instance remembered, a webhook
reads its body and verifies it with no database work, and its only transaction is the ingest.

The price: a change to an instance (secret rotated, deactivated, deleted) reaches each process within
`WEBHOOK_INSTANCE_CACHE_SECONDS` (default 5; 0 turns this off). An ingest for an instance deleted meanwhile
fails its foreign key and answers 404, as an unknown instance does. Only found instances are kept: a name
nobody configured always asks Postgres, so probing fills nothing.

Concurrent lookups of one name share one query (`look_up_once`): a process that starts, or whose entry just
expired, under a burst of webhooks for one instance — a gateway's backlog, or 200 concurrent guesses of its
secret — asks Postgres once, not once per request (each a pool connection: a burst of 200 exhausted the pool
and answered 503, issue 13, once the webhook throttle stopped serialising requests before the lookup).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from app.db.models import GatewayKind
from app.domain.gateways.instances import ReceivingInstance


class RecentInstances:
    def __init__(
        self, ttl_s: float, max_entries: int = 1024, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[GatewayKind, str], tuple[float, ReceivingInstance]] = OrderedDict()
        self._lookups: dict[tuple[GatewayKind, str], asyncio.Task[ReceivingInstance | None]] = {}

    def get(self, gateway: GatewayKind, name: str) -> ReceivingInstance | None:
        entry = self._entries.get((gateway, name))
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[(gateway, name)]
            return None
        return entry[1]

    async def look_up_once(
        self,
        gateway: GatewayKind,
        name: str,
        look_up: Callable[[], Awaitable[ReceivingInstance | None]],
    ) -> ReceivingInstance | None:
        """`look_up()`'s answer, shared by every caller asking for this name while it runs (and kept, if
        found). The query runs in a task of its own: a caller that goes away does not cancel it for the
        others."""
        key = (gateway, name)
        task = self._lookups.get(key)
        if task is None:
            task = asyncio.ensure_future(look_up())
            self._lookups[key] = task
            task.add_done_callback(lambda _: self._lookups.pop(key, None))
        instance = await asyncio.shield(task)
        if instance is not None:
            self.put(instance)
        return instance

    def put(self, instance: ReceivingInstance) -> None:
        if self.ttl_s <= 0:
            return
        key = (instance.gateway, instance.name)
        self._entries[key] = (self._clock() + self.ttl_s, instance)
        self._entries.move_to_end(key)
        if len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def forget(self, gateway: GatewayKind, name: str) -> None:
        self._entries.pop((gateway, name), None)
