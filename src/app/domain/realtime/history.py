"""The database reads the WebSocket side needs, each in a short session of its own.

A socket lives for hours; holding a session (and a pooled connection) for its life would exhaust the pool
with idle agents, so every read opens and closes its own (docs/ARCHITECTURE.md pitfalls).

Those short reads still come from the pool webhooks commit through, and a reconnect storm (every socket of
a process back at once, each subscribing with `after_seq`) starts hundreds of them together. At most
`concurrency` run at a time (WS_REPLAY_CONCURRENCY); the rest wait here, in line, instead of in the pool,
where each webhook would have queued behind them. Within that limit each agent has a share
(WS_REPLAY_CONCURRENCY_PER_AGENT, see read_shares.py), so one agent's flood of subscribes cannot hold the
line another agent's subscribe waits in (issue 12).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Conversation, Media, Message
from app.domain.conversations.schemas import MessageOut
from app.domain.conversations.services import message_out
from app.domain.realtime.read_shares import ReadShares


class History:
    def __init__(self, sessionmaker: Callable[[], AsyncSession], concurrency: int, per_agent: int) -> None:
        self._sessionmaker = sessionmaker
        self._reads = ReadShares(concurrency, per_agent)
        self.concurrency = self._reads.total

    async def room_last_seq(self, org_id: UUID, conversation_id: UUID, reader: UUID) -> int | None:
        """The conversation's last seq, or None when it does not exist for this organisation; `reader`
        is the agent asking (its share of the reads)."""
        async with self._reads.slot(reader), self._sessionmaker() as session:
            last_seq: int | None = await session.scalar(
                select(Conversation.last_seq).where(
                    Conversation.id == conversation_id, Conversation.org_id == org_id
                )
            )
            return last_seq

    async def messages_after(
        self, conversation_id: UUID, after_seq: int, limit: int, reader: UUID
    ) -> list[MessageOut]:
        async with self._reads.slot(reader), self._sessionmaker() as session:
            rows = (
                await session.execute(
                    select(Message, Media)
                    .outerjoin(Media, Media.message_id == Message.id)
                    .where(Message.conversation_id == conversation_id, Message.seq > after_seq)
                    .order_by(Message.seq)
                    .limit(limit)
                )
            ).all()
            return [message_out(row.Message, row.Media) for row in rows]

    async def last_seqs(self, conversation_ids: Sequence[UUID]) -> dict[UUID, int]:
        """The process's own periodic check: one read however many sockets, so no agent's share."""
        async with self._reads.slot(None), self._sessionmaker() as session:
            rows = await session.execute(
                select(Conversation.id, Conversation.last_seq).where(Conversation.id.in_(conversation_ids))
            )
            return {row.id: row.last_seq for row in rows}
