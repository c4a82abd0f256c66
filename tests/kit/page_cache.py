"""What tests of the page cache on the real Redis hand it: a page loader that counts its calls and can be
held, a fresh conversation's history scope, and the `message.created` envelope a write publishes.
Issue 14 item 2: these stood in test_read_cache, which test_deferred_store imported them from.
"""

from __future__ import annotations

import asyncio
import json
from uuid import UUID, uuid4

from app.domain.conversations.cache import CacheKeys
from app.domain.realtime.events import Envelope, EventKind


class Loader:
    """A page loader that counts its calls and, when gated, waits for the test to release it."""

    def __init__(self, value: bytes, *, gated: bool = False) -> None:
        self.value, self.calls = value, 0
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        if not gated:
            self.release.set()

    async def __call__(self) -> bytes:
        self.calls += 1
        self.started.set()
        await self.release.wait()
        return self.value


def history_scope(keys: CacheKeys) -> tuple[UUID, UUID, str]:
    """(org id, conversation id, the cache scope of its history) of a conversation nobody else uses."""
    org_id, conversation_id = uuid4(), uuid4()
    return org_id, conversation_id, keys.messages_scope(org_id, conversation_id)


def created(conversation_id: UUID, seq: int) -> Envelope:
    return Envelope(EventKind.MESSAGE_CREATED, conversation_id, seq, json.dumps({"type": "message.created"}))
