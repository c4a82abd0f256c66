"""The two hot reads, as the JSON bytes the API answers: through the page cache when the page is one it
keeps (first page of the inbox, latest page of a conversation), straight from Postgres otherwise.

A connection is taken only on a miss, so a cache hit takes no database connection at all. A miss reads
through plain asyncpg statements (read_sql), not an ORM session (issue 13, item 5).
"""

from __future__ import annotations

from collections.abc import Awaitable
from uuid import UUID

import msgspec

from app.domain.conversations.cache import PageCache
from app.domain.conversations.read_sql import history_page, inbox_page
from app.domain.conversations.services import ConversationFilters
from app.lib.driver_sql import DriverConnections
from app.lib.pagination import ActivityCursor

_json = msgspec.json.Encoder()


def inbox_variant(filters: ConversationFilters, limit: int) -> str:
    """Which cached inbox page: one per filter combination and page size (the fast path looks it up too)."""
    return f"{filters.instance_id or '-'}:{filters.status or '-'}:{int(filters.unread_only)}:{limit}"


def latest_variant(limit: int) -> str:
    return f"latest:{limit}"


class PageReader:
    def __init__(self, cache: PageCache, connections: DriverConnections) -> None:
        self.cache = cache
        self.connections = connections

    async def conversations(
        self,
        org_id: UUID,
        filters: ConversationFilters,
        cursor: ActivityCursor | None,
        limit: int,
        deferred: list[Awaitable[None]] | None = None,
    ) -> bytes:
        async def load() -> bytes:
            async with self.connections() as conn:
                page = await inbox_page(
                    conn,
                    org_id,
                    instance_id=filters.instance_id,
                    status=filters.status,
                    unread_only=filters.unread_only,
                    cursor=cursor,
                    limit=limit,
                )
            return _json.encode(page)

        if cursor is not None:
            return await load()
        variant = inbox_variant(filters, limit)
        return await self.cache.get_or_load(self.cache.keys.inbox_scope(org_id), variant, load, deferred)

    async def messages(
        self,
        org_id: UUID,
        conversation_id: UUID,
        *,
        before_seq: int | None = None,
        after_seq: int | None = None,
        limit: int,
        deferred: list[Awaitable[None]] | None = None,
    ) -> bytes:
        """`deferred`: see PageCache.get_or_load (the fast path answers before the Redis store)."""

        async def load() -> bytes:
            async with self.connections() as conn:
                page = await history_page(
                    conn, org_id, conversation_id, before_seq=before_seq, after_seq=after_seq, limit=limit
                )
            return _json.encode(page)

        if before_seq is not None or after_seq is not None:
            return await load()
        scope = self.cache.keys.messages_scope(org_id, conversation_id)
        return await self.cache.get_or_load(scope, latest_variant(limit), load, deferred)
