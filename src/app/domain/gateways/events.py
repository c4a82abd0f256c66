"""Normalised events every gateway adapter produces.

Adapters turn a gateway's raw webhook body into a list of these; the ingest service knows nothing else
about gateways. Timestamps are timezone-aware UTC datetimes; ids are the gateway's own strings.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

# The message vocabulary is the database's (app.db.models.message); adapters speak it too (issue 13).
from app.db.models.message import Direction, MessageStatus, MessageType


class MediaRef(msgspec.Struct, frozen=True, kw_only=True):
    """Where the bytes of a media message can be had later; nothing is downloaded at ingest.

    `gateway_ref` is what the gateway's media API needs (Cloud API media id, WPPConnect/Evolution message id);
    `inline_base64` is set when the webhook itself carried the file as base64 (kept verbatim, not decoded).
    `sha256` is lower-case hex whatever the gateway sent (adapters convert base64 digests).
    """

    gateway_ref: str
    mime_type: str | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    filename: str | None = None
    url: str | None = None
    inline_base64: str | None = None


class InboundMessage(msgspec.Struct, frozen=True, kw_only=True, tag="message", tag_field="kind"):
    """A chat message: from a contact (inbound) or sent by the business from its phone (outbound)."""

    gateway_message_id: str
    chat_id: str  # the contact's (or group's) WhatsApp id, e.g. "5511999999999" or "1203...@g.us", normalised
    contact_name: str | None
    direction: Direction
    type: MessageType
    body: str | None  # text, or media caption, or a short description (location name)
    sent_at: datetime
    status: MessageStatus
    media: MediaRef | None = None
    raw: dict[str, Any] | None = None  # this message's part of the webhook body, stored as JSONB
    # The gateway account the payload says it is for (WPPConnect session, Evolution instance, Cloud API
    # phone_number_id); checked against the instance in the URL so one instance cannot write as another.
    account: str | None = None


class StatusUpdate(msgspec.Struct, frozen=True, kw_only=True, tag="status", tag_field="kind"):
    """Delivery status of a message we (or the business's phone) sent."""

    gateway_message_id: str
    chat_id: str | None
    status: MessageStatus
    at: datetime | None = None
    account: str | None = None  # as on InboundMessage


class IgnoredEvent(msgspec.Struct, frozen=True, kw_only=True, tag="ignored", tag_field="kind"):
    """A well-formed event we do not handle (presence, connection state, …): acknowledged and logged."""

    event: str
    reason: str


GatewayEvent = InboundMessage | StatusUpdate | IgnoredEvent


def addressed_to(events: list[GatewayEvent], account: str | None) -> list[GatewayEvent]:
    """The events, each stamped with the account the payload names (None: the payload names none)."""
    if not account:
        return events
    return [
        msgspec.structs.replace(event, account=account) if not isinstance(event, IgnoredEvent) else event
        for event in events
    ]
