from __future__ import annotations

import enum
from datetime import datetime
from typing import Any
from uuid import UUID

from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base, str_enum


class Direction(enum.StrEnum):
    INBOUND = "inbound"
    OUTBOUND = "outbound"


class MessageType(enum.StrEnum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
    VIDEO = "video"
    DOCUMENT = "document"
    STICKER = "sticker"
    LOCATION = "location"
    OTHER = "other"


class MessageStatus(enum.StrEnum):
    """Lifecycle of a message. Outbound: pending → sent → delivered → read (failed from pending/sent).

    Inbound messages are `received` and never move.
    """

    RECEIVED = "received"
    PENDING = "pending"
    SENT = "sent"
    DELIVERED = "delivered"
    READ = "read"
    FAILED = "failed"


class Message(Base):
    """One WhatsApp message. `seq` orders a conversation without gaps; the gateway id de-duplicates."""

    __tablename__ = "messages"
    __table_args__ = (
        # History reads are keyset scans on this index (before_seq / after_seq).
        UniqueConstraint("conversation_id", "seq", name="uq_messages_conversation_seq"),
        # The de-duplication arbiter (docs/ARCHITECTURE.md invariant 2): INSERT … ON CONFLICT DO NOTHING.
        UniqueConstraint("instance_id", "gateway_message_id", name="uq_messages_instance_gateway_id"),
        # An agent's retry of the same send returns the same message (idempotency key from the client).
        UniqueConstraint("conversation_id", "client_message_id", name="uq_messages_conversation_client_id"),
        # The worker's sweep for outbound messages whose send job was never enqueued or never ran.
        Index("ix_messages_pending_outbound", "created_at", postgresql_where=text("status = 'pending'")),
    )

    org_id: Mapped[UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    conversation_id: Mapped[UUID] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    instance_id: Mapped[UUID] = mapped_column(ForeignKey("whatsapp_instances.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(BigInteger)
    # NULL while an outbound message has not been accepted by the gateway yet.
    gateway_message_id: Mapped[str | None] = mapped_column(String(255), default=None)
    direction: Mapped[Direction] = mapped_column(str_enum(Direction, "message_direction"))
    type: Mapped[MessageType] = mapped_column(str_enum(MessageType, "message_type"))
    body: Mapped[str | None] = mapped_column(Text, default=None)
    status: Mapped[MessageStatus] = mapped_column(str_enum(MessageStatus, "message_status"))
    sent_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))  # the gateway's timestamp
    received_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))  # when we committed it
    raw: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    # Outbound messages written by an agent in the CRM:
    client_message_id: Mapped[str | None] = mapped_column(String(64), default=None)
    author_id: Mapped[UUID | None] = mapped_column(ForeignKey("agents.id", ondelete="SET NULL"), default=None)
    # Set while a send is in flight; still set on a retry means a worker died mid-send (see send_message).
    sending_since: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    send_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    error: Mapped[str | None] = mapped_column(Text, default=None)  # why the gateway refused it
