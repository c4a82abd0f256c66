from __future__ import annotations

from datetime import datetime
from typing import Annotated
from uuid import UUID

import msgspec

from app.lib.schema import Schema


class ContactOut(Schema):
    id: UUID
    wa_id: str
    name: str | None


class ConversationOut(Schema):
    id: UUID
    instance_id: UUID
    contact: ContactOut
    status: str
    last_message_at: datetime
    last_message_preview: str | None
    last_message_direction: str | None
    unread_count: int
    last_seq: int


class ConversationPage(Schema):
    items: list[ConversationOut]
    next_cursor: str | None  # pass as ?cursor= for the next (older) page; null on the last page


MEDIA_PATH = "/api/whatsapp-optimized/media"


def media_url(media_id: UUID) -> str:
    return f"{MEDIA_PATH}/{media_id}"


class MediaOut(Schema):
    id: UUID
    state: str  # pending → ready | failed
    mime_type: str | None  # the detected type once ready; until then what the gateway declared
    size_bytes: int | None
    filename: str | None
    url: str  # GET it: 200 with the file when ready, 202 while pending, 410 if it failed
    thumbnail_url: str | None = None  # images, once ready (WebP, longest side 320 px)
    width: int | None = None
    height: int | None = None
    error: str | None = None  # why it failed


class MessageOut(Schema):
    id: UUID
    conversation_id: UUID
    seq: int
    gateway_message_id: str | None  # null until the gateway accepted an outbound message
    direction: str
    type: str
    body: str | None
    status: str
    sent_at: datetime
    received_at: datetime
    media: MediaOut | None


class MessagePage(Schema):
    """A window of history in ascending seq. seq is gapless from 1, so the bounds say what else exists."""

    conversation_id: UUID
    items: list[MessageOut]
    last_seq: int  # newest seq in the conversation
    has_more_before: bool  # ask again with before_seq = items[0].seq
    has_more_after: bool  # ask again with after_seq = items[-1].seq


class ReadMarker(Schema):
    conversation_id: UUID
    unread_count: int


class SendMessageRequest(Schema):
    # No U+0000: Postgres text cannot hold it, so it must be a validation error, not a failed INSERT.
    text: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
    # The client's idempotency key: a retry with the same key returns the same message, sent once.
    client_message_id: Annotated[
        str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
    ]
