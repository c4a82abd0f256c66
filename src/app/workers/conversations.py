"""Conversation maintenance jobs. Each is safe to run twice: it recomputes from the messages table."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import structlog
from sqlalchemy import select, update

from app.db.models import Conversation, Message
from app.domain.conversations.ingest import preview_text
from app.domain.conversations.services import ConversationService
from app.domain.realtime.events import conversation_envelope

log = structlog.get_logger()


async def reconcile_conversation(ctx: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    """Rebuild a conversation's summary (last seq, newest message preview and time) from its messages.

    For after a manual repair or a bulk import that bypassed ingest. The unread count is left alone: it
    also depends on read markers, which the messages table does not hold. Open inboxes get the new summary,
    and the cached inbox and history pages are made stale.
    """
    cid = UUID(conversation_id)
    async with ctx["sessionmaker"]() as session:
        newest = (
            await session.execute(
                select(Message.seq, Message.body, Message.type, Message.direction, Message.sent_at)
                .where(Message.conversation_id == cid)
                .order_by(Message.sent_at.desc(), Message.seq.desc())
                .limit(1)
            )
        ).one_or_none()
        if newest is None:
            return {"conversation_id": conversation_id, "messages": 0}
        last_seq = (
            await session.execute(
                select(Message.seq)
                .where(Message.conversation_id == cid)
                .order_by(Message.seq.desc())
                .limit(1)
            )
        ).scalar_one()
        preview = preview_text(newest.body, newest.type)
        await session.execute(
            update(Conversation)
            .where(Conversation.id == cid)
            .values(
                last_seq=last_seq,
                last_message_at=newest.sent_at,
                last_message_preview=preview,
                last_message_direction=newest.direction.value,
            )
        )
        await session.commit()
        org_id = (
            await session.execute(select(Conversation.org_id).where(Conversation.id == cid))
        ).scalar_one()
        snapshot = await ConversationService(session).get_conversation(org_id, cid)
    await ctx["publisher"].publish(org_id, [conversation_envelope(snapshot)], history_rewritten=[cid])
    log.info("conversation reconciled", conversation_id=conversation_id, last_seq=last_seq)
    return {"conversation_id": conversation_id, "last_seq": last_seq}
