"""Builders of normalised gateway events, for tests that exercise ingest below the adapters."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

from app.domain.gateways.events import (
    Direction,
    InboundMessage,
    MediaRef,
    MessageStatus,
    MessageType,
    StatusUpdate,
)


def text_message(
    chat_id: str = "5511999990000",
    body: str = "hello",
    *,
    gateway_message_id: str | None = None,
    direction: Direction = Direction.INBOUND,
    contact_name: str | None = "Customer",
    sent_at: datetime | None = None,
) -> InboundMessage:
    return InboundMessage(
        gateway_message_id=gateway_message_id or f"MSG{secrets.token_hex(8).upper()}",
        chat_id=chat_id,
        contact_name=contact_name,
        direction=direction,
        type=MessageType.TEXT,
        body=body,
        sent_at=sent_at or datetime.now(UTC),
        status=MessageStatus.RECEIVED if direction is Direction.INBOUND else MessageStatus.SENT,
        raw={"body": body},
    )


def image_message(chat_id: str = "5511999990000", *, inline_base64: str | None = None) -> InboundMessage:
    return InboundMessage(
        gateway_message_id=f"IMG{secrets.token_hex(8).upper()}",
        chat_id=chat_id,
        contact_name="Customer",
        direction=Direction.INBOUND,
        type=MessageType.IMAGE,
        body="a caption",
        sent_at=datetime.now(UTC),
        status=MessageStatus.RECEIVED,
        media=MediaRef(gateway_ref="media-ref-1", mime_type="image/jpeg", inline_base64=inline_base64),
        raw={"body": inline_base64 or "", "caption": "a caption"},
    )


def status(gateway_message_id: str, new_status: MessageStatus) -> StatusUpdate:
    return StatusUpdate(gateway_message_id=gateway_message_id, chat_id=None, status=new_status)
