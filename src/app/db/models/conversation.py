from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base, str_enum


class ConversationStatus(enum.StrEnum):
    OPEN = "open"
    PENDING = "pending"
    CLOSED = "closed"


class Conversation(Base):
    """The chat between one instance (our number) and one contact, with a summary kept by ingest.

    `last_seq` is the highest message `seq` handed out; the row lock taken to bump it is what makes
    seq gapless under concurrency (docs/ARCHITECTURE.md invariant 3).
    """

    __tablename__ = "conversations"
    __table_args__ = (
        UniqueConstraint("instance_id", "contact_id", name="uq_conversations_instance_contact"),
        # The inbox list: most recent activity first, keyset on (last_message_at, id), per org and per filter.
        Index("ix_conversations_org_activity", "org_id", text("last_message_at DESC"), text("id DESC")),
        Index(
            "ix_conversations_org_instance_activity",
            "org_id",
            "instance_id",
            text("last_message_at DESC"),
            text("id DESC"),
        ),
        Index(
            "ix_conversations_org_status_activity",
            "org_id",
            "status",
            text("last_message_at DESC"),
            text("id DESC"),
        ),
        Index(
            "ix_conversations_org_unread_activity",
            "org_id",
            text("last_message_at DESC"),
            text("id DESC"),
            postgresql_where=text("unread_count > 0"),
        ),
    )

    org_id: Mapped[UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    instance_id: Mapped[UUID] = mapped_column(ForeignKey("whatsapp_instances.id", ondelete="CASCADE"))
    contact_id: Mapped[UUID] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"), index=True)
    status: Mapped[ConversationStatus] = mapped_column(
        str_enum(ConversationStatus, "conversation_status"),
        default=ConversationStatus.OPEN,
        server_default=ConversationStatus.OPEN.value,
    )
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    last_message_at: Mapped[datetime] = mapped_column(DateTimeUTC(timezone=True))
    last_message_preview: Mapped[str | None] = mapped_column(String(200), default=None)
    last_message_direction: Mapped[str | None] = mapped_column(String(16), default=None)
    unread_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
