"""Agents' outbound messages: persisted first (pending, next seq), sent by the worker after commit.

The send itself never happens in the request: `send_message` (app.workers.sending) does it, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession
from uuid_utils.compat import uuid7

from app.db.models import (
    Contact,
    Conversation,
    Direction,
    GatewayKind,
    Message,
    MessageStatus,
    MessageType,
    WhatsAppInstance,
)
from app.domain.conversations.ingest import ConversationSummary, preview_text
from app.domain.conversations.schemas import MessageOut
from app.domain.conversations.services import message_out
from app.lib.domain_errors import NotFound, Unprocessable


def missing_send_credentials(instance: WhatsAppInstance) -> str | None:
    """Why this instance cannot send, or None when it can."""
    if not instance.api_token:
        return "the instance has no gateway API token"
    if instance.gateway is GatewayKind.CLOUDAPI:
        return None if instance.phone_number_id else "the instance has no Cloud API phone_number_id"
    return None if instance.api_base_url else "the instance has no gateway base URL"


@dataclass(frozen=True, slots=True)
class Outbound:
    message: MessageOut
    summary: ConversationSummary
    created: bool  # False: the same client_message_id was sent before; nothing new was written


class OutboundService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def create(
        self, *, org_id: UUID, author_id: UUID, conversation_id: UUID, text: str, client_message_id: str
    ) -> Outbound:
        """Append a pending outbound message (idempotent by client_message_id) and commit."""
        row = (
            await self.session.execute(
                select(Conversation, Contact, WhatsAppInstance)
                .join(Contact, Contact.id == Conversation.contact_id)
                .join(WhatsAppInstance, WhatsAppInstance.id == Conversation.instance_id)
                .where(Conversation.id == conversation_id, Conversation.org_id == org_id)
                # The conversation row lock orders this message among concurrent ones (gapless seq) and
                # makes a concurrent retry with the same client_message_id wait, then find ours.
                .with_for_update(of=Conversation)
            )
        ).one_or_none()
        if row is None:
            raise NotFound("conversation not found")
        conversation, contact, instance = row
        existing = await self.session.scalar(
            select(Message).where(
                Message.conversation_id == conversation_id, Message.client_message_id == client_message_id
            )
        )
        if existing is not None:
            replay = Outbound(message_out(existing, None), _summary(conversation, contact), created=False)
            await self.session.rollback()  # releases the lock; expires the rows read above
            return replay
        if (reason := missing_send_credentials(instance)) is not None:
            await self.session.rollback()
            raise Unprocessable(f"cannot send: {reason}")
        now = datetime.now(UTC)
        message = Message(
            id=uuid7(),
            org_id=org_id,
            conversation_id=conversation_id,
            instance_id=instance.id,
            seq=conversation.last_seq + 1,
            gateway_message_id=None,
            direction=Direction.OUTBOUND,
            type=MessageType.TEXT,
            body=text,
            status=MessageStatus.PENDING,
            sent_at=now,
            received_at=now,
            raw={},
            client_message_id=client_message_id,
            author_id=author_id,
        )
        self.session.add(message)
        # The row is locked above; the ORM writes these with the message in one flush. These mirror the
        # seq and summary rules of crm_ingest_message() (src/app/domain/ingest/ingest_message.sql) for a
        # business message: next seq, newest preview/time/direction, unread back to 0.
        conversation.last_seq = message.seq
        conversation.last_message_at = now
        conversation.last_message_preview = preview_text(text, MessageType.TEXT)
        conversation.last_message_direction = Direction.OUTBOUND.value
        conversation.unread_count = 0  # answering a chat reads it
        summary = _summary(conversation, contact)
        await self.session.commit()
        return Outbound(message_out(message, None), summary, created=True)


def _summary(conversation: Conversation, contact: Contact) -> ConversationSummary:
    return ConversationSummary(
        conversation_id=conversation.id,
        instance_id=conversation.instance_id,
        contact_id=contact.id,
        contact_wa_id=contact.wa_id,
        contact_name=contact.name,
        status=conversation.status.value,
        last_message_at=conversation.last_message_at,
        last_message_preview=conversation.last_message_preview,
        last_message_direction=conversation.last_message_direction,
        unread_count=conversation.unread_count,
        last_seq=conversation.last_seq,
    )
