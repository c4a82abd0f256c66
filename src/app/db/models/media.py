from __future__ import annotations

import enum
from datetime import datetime
from uuid import UUID

from advanced_alchemy.types import DateTimeUTC
from sqlalchemy import BigInteger, Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.models.base import Base, str_enum


class MediaState(enum.StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


class Media(Base):
    """The file behind a media message. Created `pending` at ingest; a worker fetches and processes it.

    What the gateway declared (mime_type, sha256, size_bytes, filename) is kept apart from what the worker
    found in the bytes (content_type, content_sha256, width, height): the stored object's key is derived from
    content_sha256 alone.
    """

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
    content_sha256: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    content_type: Mapped[str | None] = mapped_column(String(255), default=None)
    width: Mapped[int | None] = mapped_column(Integer, default=None)
    height: Mapped[int | None] = mapped_column(Integer, default=None)
    has_thumbnail: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    # A claim: set while a worker processes the media; an old one means that worker died mid-job.
    processing_since: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    # Completed processings: 1 for every ready media, whatever the duplicates and retries (tests pin it).
    processings: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    processed_at: Mapped[datetime | None] = mapped_column(DateTimeUTC(timezone=True), default=None)
