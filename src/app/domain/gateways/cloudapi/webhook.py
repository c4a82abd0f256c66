"""WhatsApp Cloud API webhooks → normalised gateway events, plus the subscription handshake.

POSTs are signed: `X-Hub-Signature-256: sha256=<hex HMAC-SHA256(app secret, raw body)>`. The GET handshake
echoes `hub.challenge` when `hub.verify_token` is the one configured. Meta retries non-2xx answers for days,
so anything well-formed but unhandled is an IgnoredEvent, never an error.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from app.db.models import Direction, MessageStatus, MessageType
from app.domain.gateways.base import (
    InstanceCredentials,
    WebhookHead,
    WebhookRejected,
    WebhookRequest,
    WebhookUnauthorized,
)
from app.domain.gateways.chat_ids import normalise_chat_id
from app.domain.gateways.cloudapi.schemas import (
    CloudChange,
    CloudError,
    CloudLocation,
    CloudMedia,
    CloudMessage,
    CloudStatus,
    messages_value_decoder,
    webhook_decoder,
)
from app.domain.gateways.events import (
    GatewayEvent,
    IgnoredEvent,
    InboundMessage,
    MediaRef,
    StatusUpdate,
    addressed_to,
)
from app.domain.gateways.webhook_helpers import (
    decode_or_reject,
    decode_untyped,
    header_value,
    is_sha256_hex,
    received_now,
    sha256_hex,
    utc_from_epoch,
    wrong_shape,
)

SIGNATURE_HEADER = "x-hub-signature-256"
BUSINESS_ACCOUNT_OBJECT = "whatsapp_business_account"
MESSAGES_FIELD = "messages"
ECHOES_FIELD = "smb_message_echoes"

_MEDIA_TYPES = {
    "image": MessageType.IMAGE,
    "audio": MessageType.AUDIO,
    "video": MessageType.VIDEO,
    "document": MessageType.DOCUMENT,
    "sticker": MessageType.STICKER,
}
_STATUSES = {
    "sent": MessageStatus.SENT,
    "delivered": MessageStatus.DELIVERED,
    "read": MessageStatus.READ,
    "played": MessageStatus.READ,  # voice messages
    "failed": MessageStatus.FAILED,
}

_Content = tuple[MessageType, str | None, MediaRef | None]  # type, text (or caption), media


class CloudApiAdapter:
    kind: str = "cloudapi"

    def verify_head(self, head: WebhookHead, instance: InstanceCredentials) -> bool:
        # The signature is over the body: only its presence and form can be judged before reading it.
        _signature_of(head, instance)
        return False

    def verify(self, request: WebhookRequest, instance: InstanceCredentials) -> None:
        verify_signature(request, instance)

    def parse(self, body: bytes) -> list[GatewayEvent]:
        return parse_webhook(body)


def _signature_of(head: WebhookHead, instance: InstanceCredentials) -> str:
    """The hex signature the request presents, refused unless present and well-formed."""
    if not instance.webhook_secret:
        raise WebhookUnauthorized("no app secret is configured for this instance")
    header = header_value(head, SIGNATURE_HEADER).strip()
    if not header:
        raise WebhookUnauthorized("X-Hub-Signature-256 missing")
    algorithm, _, signature = header.partition("=")
    if algorithm.lower() != "sha256" or not is_sha256_hex(signature):
        raise WebhookUnauthorized("X-Hub-Signature-256 malformed")
    return signature


def verify_signature(request: WebhookRequest, instance: InstanceCredentials) -> None:
    """The body must be signed with the app secret (stored as the instance's webhook secret)."""
    signature = _signature_of(request, instance)
    expected = hmac.new(instance.webhook_secret.encode(), request.body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), signature.lower().encode()):
        raise WebhookUnauthorized("X-Hub-Signature-256 does not match the body")


def verify_subscription(query: Mapping[str, str], instance: InstanceCredentials) -> str:
    """Answer Meta's GET handshake: the challenge, if mode and verify token are right."""
    if query.get("hub.mode") != "subscribe":
        raise WebhookUnauthorized("hub.mode must be 'subscribe'")
    if not instance.verify_token:
        raise WebhookUnauthorized("no verify token is configured for this instance")
    token = query.get("hub.verify_token", "")
    if not token:
        raise WebhookUnauthorized("hub.verify_token missing")
    if not hmac.compare_digest(token.encode(), instance.verify_token.encode()):
        raise WebhookUnauthorized("hub.verify_token does not match")
    challenge = query.get("hub.challenge", "")
    if not challenge:
        raise WebhookRejected("hub.challenge missing", status_code=400)
    return challenge


def parse_webhook(body: bytes) -> list[GatewayEvent]:
    webhook = decode_or_reject(webhook_decoder, body, "Cloud API webhook")
    if webhook.object != BUSINESS_ACCOUNT_OBJECT:
        return [IgnoredEvent(event=webhook.object, reason="not a WhatsApp Business Account webhook")]
    events: list[GatewayEvent] = []
    for entry in webhook.entry:
        for change in entry.changes:
            if change.field in (MESSAGES_FIELD, ECHOES_FIELD):
                events += _change_events(change)
            else:
                events.append(IgnoredEvent(event=change.field, reason="webhook field not handled"))
    return events


def _change_events(change: CloudChange) -> list[GatewayEvent]:
    value = decode_or_reject(messages_value_decoder, change.value, f"Cloud API {change.field} value")
    raw_value: dict[str, Any] = decode_untyped(change.value)
    names = {
        contact.wa_id: contact.profile.name
        for contact in value.contacts
        if contact.wa_id and contact.profile and contact.profile.name
    }
    events: list[GatewayEvent] = []
    for message, raw in zip(value.messages, raw_value.get("messages", []), strict=True):
        events.append(_message(message, raw, change.field, names, own=False))
    for echo, raw in zip(value.message_echoes, raw_value.get("message_echoes", []), strict=True):
        events.append(_message(echo, raw, change.field, names, own=True))
    events += [_status(status, change.field) for status in value.statuses]
    events = addressed_to(events, value.metadata.phone_number_id if value.metadata else None)
    if not events:
        # e.g. a value that only reports errors (rate limits, unsupported payloads)
        reason = _describe(value.errors) or "no messages or statuses"
        events.append(IgnoredEvent(event=change.field, reason=reason))
    return events


def _message(
    message: CloudMessage, raw: dict[str, Any], field: str, names: dict[str, str], *, own: bool
) -> GatewayEvent:
    # Echoes (sent by the business from the WhatsApp Business app): the chat is the recipient.
    peer = (message.to if own else message.from_) or ""
    # Normalised first: "+" or "@c.us" come out empty, which is as good as no chat id at all.
    chat_id = normalise_chat_id(peer)
    if not chat_id:
        raise wrong_shape(f"Cloud API {field} message has no {'to' if own else 'from'}")
    found = _content(message)
    if found is None:
        return IgnoredEvent(event=field, reason=f"message type {message.type!r} is not chat content")
    message_type, text, media = found
    return InboundMessage(
        gateway_message_id=message.id,
        chat_id=chat_id,
        contact_name=None if own else names.get(peer),
        direction=Direction.OUTBOUND if own else Direction.INBOUND,
        type=message_type,
        body=text,
        sent_at=utc_from_epoch(message.timestamp) or received_now(),
        status=MessageStatus.SENT if own else MessageStatus.RECEIVED,
        media=media,
        raw=raw,
    )


def _content(message: CloudMessage) -> _Content | None:
    """What the message says, or None for what is not chat content (reactions, system notices, …)."""
    kind = message.type or ""
    if kind == "text":
        return MessageType.TEXT, message.text.body if message.text else None, None
    media_type = _MEDIA_TYPES.get(kind)
    if media_type is not None:
        media: CloudMedia | None = getattr(message, kind)
        if media is None:
            raise wrong_shape(f"Cloud API {kind} message has no {kind} object")
        return media_type, media.caption, _media_ref(media)
    if kind == "location":
        return MessageType.LOCATION, _location_text(message.location), None
    if kind == "interactive" and message.interactive:
        reply = message.interactive.button_reply or message.interactive.list_reply
        flow = message.interactive.nfm_reply
        text = reply.title if reply else (flow.body or flow.name) if flow else None
        return MessageType.OTHER, text, None
    if kind == "button":
        return MessageType.OTHER, message.button.text if message.button else None, None
    if kind == "contacts":
        card = message.contacts[0] if message.contacts else None
        return MessageType.OTHER, card.name.formatted_name if card and card.name else None, None
    if kind in ("unsupported", "unknown", "order"):
        # Something arrived the API cannot show (polls, edits, …): the agent should still see it.
        return MessageType.OTHER, _describe(message.errors), None
    return None


def _media_ref(media: CloudMedia) -> MediaRef:
    return MediaRef(
        gateway_ref=media.id,
        mime_type=media.mime_type,
        sha256=sha256_hex(media.sha256),
        filename=media.filename,
        url=media.url,
    )


def _status(status: CloudStatus, field: str) -> GatewayEvent:
    mapped = _STATUSES.get(status.status.lower())
    if mapped is None:
        return IgnoredEvent(event=field, reason=f"status {status.status!r} is not a delivery status")
    return StatusUpdate(
        gateway_message_id=status.id,
        chat_id=normalise_chat_id(status.recipient_id or "") or None,
        status=mapped,
        at=utc_from_epoch(status.timestamp),
    )


def _location_text(location: CloudLocation | None) -> str | None:
    if location is None:
        return None
    described = ", ".join(part.strip() for part in (location.name, location.address) if part and part.strip())
    if described:
        return described
    if location.latitude is not None and location.longitude is not None:
        return f"{location.latitude},{location.longitude}"
    return None


def _describe(errors: list[CloudError]) -> str | None:
    described = [(error.message or error.title, error.code) for error in errors]
    return "; ".join(f"{text} ({code})" for text, code in described if text) or None
