"""Reads of the inbox and of history, always scoped by organisation (another org's id is a 404)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import Row, Select, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Contact, Conversation, ConversationStatus, Media, MediaState, Message
from app.domain.conversations.schemas import (
    ContactOut,
    ConversationOut,
    ConversationPage,
    MediaOut,
    MessageOut,
    MessagePage,
    ReadMarker,
    media_url,
)
from app.domain.realtime.events import conversation_envelope
from app.domain.realtime.publisher import EventPublisher
from app.lib.errors import problem
from app.lib.pagination import ActivityCursor


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

    async def list_conversations(
        self, org_id: UUID, filters: ConversationFilters, cursor: ActivityCursor | None, limit: int
    ) -> ConversationPage:
        query: Select = (
            select(Conversation, Contact.wa_id, Contact.name.label("contact_name"))
            .join(Contact, Contact.id == Conversation.contact_id)
            .where(Conversation.org_id == org_id)
        )
        if filters.instance_id is not None:
            query = query.where(Conversation.instance_id == filters.instance_id)
        if filters.status is not None:
            query = query.where(Conversation.status == filters.status)
        if filters.unread_only:
            query = query.where(Conversation.unread_count > 0)
        if cursor is not None:
            # Row comparison matches the (last_message_at DESC, id DESC) index exactly.
            query = query.where(
                tuple_(Conversation.last_message_at, Conversation.id) < tuple_(cursor.at, cursor.id)
            )
        query = query.order_by(Conversation.last_message_at.desc(), Conversation.id.desc()).limit(limit + 1)
        rows = (await self.session.execute(query)).all()
        items = [_conversation_out(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = items[-1]
            next_cursor = ActivityCursor(at=last.last_message_at, id=last.id).encode()
        return ConversationPage(items=items, next_cursor=next_cursor)

    async def get_conversation(self, org_id: UUID, conversation_id: UUID) -> ConversationOut:
        row = (
            await self.session.execute(
                select(Conversation, Contact.wa_id, Contact.name.label("contact_name"))
                .join(Contact, Contact.id == Conversation.contact_id)
                .where(Conversation.id == conversation_id, Conversation.org_id == org_id)
            )
        ).one_or_none()
        if row is None:
            raise problem(404, "conversation not found")
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
            raise problem(404, "conversation not found")
        await self.session.commit()
        if self.publisher is not None:  # every open inbox of the org shows the chat as read
            snapshot = await self.get_conversation(org_id, conversation_id)
            await self.publisher.publish(org_id, [conversation_envelope(snapshot)])
        return ReadMarker(conversation_id=conversation_id, unread_count=0)


class MessageService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def history(
        self,
        org_id: UUID,
        conversation_id: UUID,
        *,
        before_seq: int | None,
        after_seq: int | None,
        limit: int,
    ) -> MessagePage:
        """A page of messages: the latest by default, else older than before_seq or newer than after_seq."""
        last_seq = (
            await self.session.execute(
                select(Conversation.last_seq).where(
                    Conversation.id == conversation_id, Conversation.org_id == org_id
                )
            )
        ).scalar_one_or_none()
        if last_seq is None:
            raise problem(404, "conversation not found")
        query = (
            select(Message, Media)
            .outerjoin(Media, Media.message_id == Message.id)
            .where(Message.conversation_id == conversation_id)
        )
        if after_seq is not None:
            query = query.where(Message.seq > after_seq).order_by(Message.seq.asc())
        else:
            if before_seq is not None:
                query = query.where(Message.seq < before_seq)
            query = query.order_by(Message.seq.desc())
        rows = (await self.session.execute(query.limit(limit))).all()
        items = [message_out(row.Message, row.Media) for row in rows]
        if after_seq is None:
            items.reverse()
        if items:
            has_before, has_after = items[0].seq > 1, items[-1].seq < last_seq
        else:  # an empty window: nothing on the side we looked at
            has_before = after_seq is not None and after_seq > 0 and last_seq > 0
            has_after = before_seq is not None and before_seq <= last_seq
        return MessagePage(
            conversation_id=conversation_id,
            items=items,
            last_seq=last_seq,
            has_more_before=has_before,
            has_more_after=has_after,
        )


__all__ = ["ConversationFilters", "ConversationService", "MessageService"]
