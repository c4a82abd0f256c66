"""Applies normalised gateway events to the database in one transaction (docs/ARCHITECTURE.md
invariants 2 to 5).

Per new message (one call of the database function crm_ingest_message, ingest/ingest_message.sql): upsert the
contact · lock (or create) the conversation row, which serialises every writer of that conversation ·
INSERT the message with seq = last_seq + 1, ON CONFLICT DO NOTHING on (instance, gateway message id) ·
only if a row went in, bump last_seq and the summary. Then the media row (pending) if any.
A duplicate never consumes a seq because the conversation is bumped after the insert, under its lock.
Status updates move forward only: the UPDATE's WHERE names the statuses that may precede the new one.
The caller commits; nothing is published from here (publishing happens after commit).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from uuid_utils.compat import uuid7 as _new_id

from app.db.models import Direction, MessageStatus, MessageType
from app.domain.conversations import ingest_sql as sql
from app.domain.conversations.storable import storable
from app.domain.gateways.events import GatewayEvent, IgnoredEvent, InboundMessage, MediaRef, StatusUpdate

log = structlog.get_logger()

PREVIEW_LENGTH = 120

# Which statuses a message may be in for a new status to apply (docs/ARCHITECTURE.md invariant 5).
STATUS_PREDECESSORS: dict[MessageStatus, tuple[MessageStatus, ...]] = {
    MessageStatus.PENDING: (),
    MessageStatus.SENT: (MessageStatus.PENDING,),
    MessageStatus.DELIVERED: (MessageStatus.PENDING, MessageStatus.SENT),
    MessageStatus.READ: (MessageStatus.PENDING, MessageStatus.SENT, MessageStatus.DELIVERED),
    MessageStatus.FAILED: (MessageStatus.PENDING, MessageStatus.SENT),
    MessageStatus.RECEIVED: (),
}


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation's inbox line right after a write (what `conversation.updated` carries)."""

    conversation_id: UUID
    instance_id: UUID
    contact_id: UUID
    contact_wa_id: str
    contact_name: str | None
    status: str
    last_message_at: datetime
    last_message_preview: str | None
    last_message_direction: str | None
    unread_count: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A message as committed: everything `message.created` needs, so publishing costs no query."""

    id: UUID
    conversation_id: UUID
    seq: int
    gateway_message_id: str
    direction: Direction
    type: MessageType
    body: str | None
    status: MessageStatus
    sent_at: datetime
    received_at: datetime
    media_id: UUID | None
    media_mime_type: str | None
    summary: ConversationSummary


@dataclass(frozen=True, slots=True)
class AppliedStatus:
    message_id: UUID
    conversation_id: UUID
    seq: int
    status: MessageStatus


@dataclass(slots=True)
class IngestResult:
    created: list[StoredMessage] = field(default_factory=list)
    statuses: list[AppliedStatus] = field(default_factory=list)
    duplicates: int = 0
    stale_statuses: int = 0  # unknown message, or a status that would move backwards
    ignored: int = 0


def preview_text(body: str | None, message_type: MessageType) -> str:
    """The inbox line for a message: its text, or its kind for media without a caption."""
    return (body or "").strip()[:PREVIEW_LENGTH] or f"[{message_type.value}]"


def raw_without_inline_media(message: InboundMessage) -> dict[str, Any]:
    """The payload to keep as JSONB, minus the base64 file (kept once, in the media row)."""
    raw = message.raw or {}
    inline = message.media.inline_base64 if message.media else None
    if not inline:
        return raw
    placeholder = f"[inline media: {len(inline)} base64 chars, stored in media row]"

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        if isinstance(value, str) and (value == inline or (len(value) > 1024 and inline in value)):
            return placeholder
        return value

    result = strip(raw)
    return result if isinstance(result, dict) else {}


class IngestService:
    """Writes a webhook's events for one instance. The caller owns the transaction and commits it."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def apply(self, *, org_id: UUID, instance_id: UUID, events: Iterable[GatewayEvent]) -> IngestResult:
        result = IngestResult()
        events = [storable(event) for event in events]  # may refuse the webhook: before any write
        now = datetime.now(UTC)
        conn = await self.session.connection()
        for event in events:
            if isinstance(event, InboundMessage):
                stored = await self._store_message(conn, org_id, instance_id, event, now)
                if stored is None:
                    result.duplicates += 1
                else:
                    result.created.append(stored)
            elif isinstance(event, StatusUpdate):
                applied = await self._apply_status(conn, instance_id, event, now)
                if applied is None:
                    result.stale_statuses += 1
                else:
                    result.statuses.append(applied)
            elif isinstance(event, IgnoredEvent):
                result.ignored += 1
                log.info("webhook event ignored", gateway_event=event.event, reason=event.reason)
        return result

    async def _store_message(
        self, conn: AsyncConnection, org_id: UUID, instance_id: UUID, message: InboundMessage, now: datetime
    ) -> StoredMessage | None:
        sent_at = min(message.sent_at, now)  # a gateway clock ahead of ours must not pin a chat to the top
        params = {
            "org_id": org_id,
            "instance_id": instance_id,
            "wa_id": message.chat_id,
            # The push name on the business's own messages is the business's, not the contact's.
            "contact_name": message.contact_name if message.direction is Direction.INBOUND else None,
            "gateway_message_id": message.gateway_message_id,
            "direction": message.direction.value,
            "type": message.type.value,
            "body": message.body,
            "status": message.status.value,
            "sent_at": sent_at,
            "raw": raw_without_inline_media(message),
            "preview": preview_text(message.body, message.type),
            "now": now,
            "message_id": _new_id(),
            "new_contact_id": _new_id(),
            "new_conversation_id": _new_id(),
        }
        row = (await conn.execute(sql.INGEST_MESSAGE, params)).first()
        if row is None:
            return None  # a redelivery of a message we already have
        media_id = (
            await self._create_media(conn, org_id, row.message_id, message.media, now)
            if message.media
            else None
        )
        return StoredMessage(
            id=row.message_id,
            conversation_id=row.conversation_id,
            seq=row.seq,
            gateway_message_id=message.gateway_message_id,
            direction=message.direction,
            type=message.type,
            body=message.body,
            status=message.status,
            sent_at=sent_at,
            received_at=now,
            media_id=media_id,
            media_mime_type=message.media.mime_type if message.media else None,
            summary=ConversationSummary(
                conversation_id=row.conversation_id,
                instance_id=instance_id,
                contact_id=row.contact_id,
                contact_wa_id=message.chat_id,
                contact_name=row.contact_name,
                status=row.status,
                last_message_at=row.last_message_at,
                last_message_preview=row.last_message_preview,
                last_message_direction=row.last_message_direction,
                unread_count=row.unread_count,
                last_seq=row.seq,
            ),
        )

    async def _create_media(
        self, conn: AsyncConnection, org_id: UUID, message_id: UUID, media: MediaRef, now: datetime
    ) -> UUID:
        media_id: UUID = _new_id()
        await conn.execute(
            sql.INSERT_MEDIA,
            {
                "id": media_id,
                "org_id": org_id,
                "message_id": message_id,
                "gateway_ref": media.gateway_ref,
                "mime_type": media.mime_type,
                "size_bytes": media.size_bytes,
                "sha256": media.sha256,
                "filename": media.filename,
                "source_url": media.url,
                "inline_base64": media.inline_base64,
                "now": now,
            },
        )
        return media_id

    async def _apply_status(
        self, conn: AsyncConnection, instance_id: UUID, event: StatusUpdate, now: datetime
    ) -> AppliedStatus | None:
        allowed_from = STATUS_PREDECESSORS.get(event.status, ())
        if not allowed_from:
            return None
        params = {
            "of_instance": instance_id,
            "of_gateway_message_id": event.gateway_message_id,
            "allowed_from": [status.value for status in allowed_from],
            "new_status": event.status,
            "now": now,
        }
        row = (await conn.execute(sql.ADVANCE_STATUS, params)).first()
        if row is None:
            return None
        return AppliedStatus(
            message_id=row.id, conversation_id=row.conversation_id, seq=row.seq, status=event.status
        )
