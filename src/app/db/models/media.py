from __future__ import annotations

import enum
from uuid import UUID

from sqlalchemy import BigInteger, ForeignKey, Index, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base, str_enum


class MediaState(enum.StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


class Media(Base):
    """The file behind a media message. Created `pending` at ingest; a worker fetches and processes it."""

    __tablename__ = "media"
    # Workers look for work to resume; the finished majority stays out of this index.
    __table_args__ = (Index("ix_media_pending", "created_at", postgresql_where=text("state = 'pending'")),)

    org_id: Mapped[UUID] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[UUID] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), unique=True)
    gateway_ref: Mapped[str] = mapped_column(String(500))  # what the gateway's media API needs
    mime_type: Mapped[str | None] = mapped_column(String(255), default=None)
    size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    sha256: Mapped[str | None] = mapped_column(String(64), default=None)
    filename: Mapped[str | None] = mapped_column(String(500), default=None)
    source_url: Mapped[str | None] = mapped_column(Text, default=None)
    # Base64 exactly as the webhook carried it, so the worker need not ask the gateway again; it is cleared
    # once the worker has stored the decoded file.
    inline_base64: Mapped[str | None] = mapped_column(Text, default=None, deferred=True)
    state: Mapped[MediaState] = mapped_column(
        str_enum(MediaState, "media_state"),
        default=MediaState.PENDING,
    )
    error: Mapped[str | None] = mapped_column(Text, default=None)
