"""One conversation and its read marker, always scoped by organisation (another org's id is a 404); the
ORM rows → response structs the other writers share. The inbox and history pages read through plain asyncpg
(read_sql.py, issue 13).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import Row, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Contact, Conversation, ConversationStatus, Media, MediaState, Message
from app.domain.conversations.schemas import (
    ContactOut,
    ConversationOut,
    MediaOut,
    MessageOut,
    ReadMarker,
    media_url,
)
from app.domain.realtime.events import conversation_envelope
from app.domain.realtime.publisher import EventPublisher
from app.lib.domain_errors import NotFound


@dataclass(frozen=True, slots=True)
class ConversationFilters:
    instance_id: UUID | None = None
    status: ConversationStatus | None = None
    unread_only: bool = False


def _conversation_out(row: Row) -> ConversationOut:
    conversation: Conversation = row.Conversation
    return ConversationOut(
        id=conversation.id,
        instance_id=conversation.instance_id,
        contact=ContactOut(id=conversation.contact_id, wa_id=row.wa_id, name=row.contact_name),
        status=conversation.status.value,
        last_message_at=conversation.last_message_at,
        last_message_preview=conversation.last_message_preview,
        last_message_direction=conversation.last_message_direction,
        unread_count=conversation.unread_count,
        last_seq=conversation.last_seq,
    )


def media_out(media: Media) -> MediaOut:
    ready = media.state is MediaState.READY
    return MediaOut(
        id=media.id,
        state=media.state.value,
        mime_type=media.content_type or media.mime_type,
        size_bytes=media.size_bytes,
        filename=media.filename,
        url=media_url(media.id),
        thumbnail_url=f"{media_url(media.id)}/thumbnail" if ready and media.has_thumbnail else None,
        width=media.width,
        height=media.height,
        error=media.error if media.state is MediaState.FAILED else None,
    )


def message_out(message: Message, media: Media | None) -> MessageOut:
    return MessageOut(
        id=message.id,
        conversation_id=message.conversation_id,
        seq=message.seq,
        gateway_message_id=message.gateway_message_id,
        direction=message.direction.value,
        type=message.type.value,
        body=message.body,
        status=message.status.value,
        sent_at=message.sent_at,
        received_at=message.received_at,
        media=None if media is None else media_out(media),
    )


class ConversationService:
    def __init__(self, session: AsyncSession, publisher: EventPublisher | None = None) -> None:
        self.session = session
        self.publisher = publisher

    async def get_conversation(self, org_id: UUID, conversation_id: UUID) -> ConversationOut:
        row = (
            await self.session.execute(
                select(Conversation, Contact.wa_id, Contact.name.label("contact_name"))
                .join(Contact, Contact.id == Conversation.contact_id)
                .where(Conversation.id == conversation_id, Conversation.org_id == org_id)
            )
        ).one_or_none()
        if row is None:
            raise NotFound("conversation not found")
        return _conversation_out(row)

    async def mark_read(self, org_id: UUID, conversation_id: UUID) -> ReadMarker:
        updated = (
            await self.session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id, Conversation.org_id == org_id)
                .values(unread_count=0, updated_at=datetime.now(UTC))
                .returning(Conversation.id)
            )
        ).scalar_one_or_none()
        if updated is None:
            await self.session.rollback()
            raise NotFound("conversation not found")
        await self.session.commit()
        if self.publisher is not None:  # every open inbox of the org shows the chat as read
            snapshot = await self.get_conversation(org_id, conversation_id)
            await self.publisher.publish(org_id, [conversation_envelope(snapshot)])
        return ReadMarker(conversation_id=conversation_id, unread_count=0)


__all__ = ["ConversationFilters", "ConversationService", "media_out", "message_out"]
