"""Evolution API webhooks → normalised gateway events.

`messages.upsert` is a message, received or sent by the business from its phone (`key.fromMe`);
`messages.update` a delivery receipt. `send.message` (messages sent through Evolution's own API) is ignored:
whoever called the API records the message, and a second copy from the webhook could race that record.
Everything else (connection, qrcode, presence, contacts, chats, groups, …) is acknowledged and ignored.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from app.db.models import Direction, MessageStatus, MessageType
from app.domain.gateways.base import InstanceCredentials, WebhookHead, WebhookRequest
from app.domain.gateways.chat_ids import is_group, is_status_broadcast, normalise_chat_id
from app.domain.gateways.events import (
    GatewayEvent,
    IgnoredEvent,
    InboundMessage,
    MediaRef,
    StatusUpdate,
    addressed_to,
)
from app.domain.gateways.evolution.schemas import (
    EvolutionContent,
    EvolutionKey,
    EvolutionLocation,
    EvolutionLong,
    EvolutionMedia,
    EvolutionMessageRecord,
    EvolutionNumber,
    EvolutionStatusRecord,
    EvolutionWebhook,
    apikey_decoder,
    update_decoder,
    upsert_decoder,
    webhook_decoder,
)
from app.domain.gateways.webhook_helpers import (
    decode_or_none,
    decode_or_reject,
    decode_untyped,
    presented_secrets,
    received_now,
    require_shared_secret,
    sha256_hex,
    utc_from_epoch,
    utc_from_iso,
    wrong_shape,
)

# Evolution's wa.StatusMessage, by name (v1 and v2 webhooks) and by Baileys' numeric code (raw updates).
_STATUS_BY_NAME = {
    "ERROR": MessageStatus.FAILED,
    "PENDING": MessageStatus.PENDING,
    "SERVER_ACK": MessageStatus.SENT,
    "DELIVERY_ACK": MessageStatus.DELIVERED,
    "READ": MessageStatus.READ,
    "PLAYED": MessageStatus.READ,
}
_STATUS_BY_CODE = dict(enumerate(_STATUS_BY_NAME.values()))  # 0 ERROR … 5 PLAYED
_PHONE_JID_SUFFIXES = ("@s.whatsapp.net", "@c.us")
_WRAPPER_DEPTH = 4  # ephemeral → viewOnce → … nesting seen in practice is 2

_Content = tuple[MessageType, str | None, MediaRef | None]  # type, text (or caption), media


class EvolutionAdapter:
    kind: str = "evolution"

    def verify_head(self, head: WebhookHead, instance: InstanceCredentials) -> bool:
        # A secret in a header or the URL decides alone (a wrong one is refused before any upload); only
        # without one is the body's `apikey` read. An instance without a secret is refused either way.
        presented = presented_secrets(head)
        if presented or not instance.webhook_secret:
            require_shared_secret(presented, instance.webhook_secret)
            return True
        return False

    def verify(self, request: WebhookRequest, instance: InstanceCredentials) -> None:
        if self.verify_head(request, instance):
            return
        apikey = _body_apikey(request.body)
        require_shared_secret([apikey] if apikey else [], instance.webhook_secret)

    def parse(self, body: bytes) -> list[GatewayEvent]:
        return parse_webhook(body)


def parse_webhook(body: bytes) -> list[GatewayEvent]:
    webhook = decode_or_reject(webhook_decoder, body, "Evolution webhook")
    event = canonical_event(webhook.event)
    if event == "messages.upsert":
        return addressed_to(_messages(webhook, event), webhook.instance)
    if event == "messages.update":
        return addressed_to(_receipts(webhook, event), webhook.instance)
    if event == "send.message":
        return [IgnoredEvent(event=event, reason="sent through the Evolution API; recorded by the sender")]
    return [IgnoredEvent(event=event, reason="event not handled")]


def canonical_event(name: str) -> str:
    """Spell the event as Evolution's docs do: MESSAGES_UPSERT and messages-upsert → messages.upsert."""
    return name.strip().lower().replace("_", ".").replace("-", ".")


def _body_apikey(body: bytes | bytearray) -> str | None:
    # Reads nothing but `apikey`: a body that is not an object, or not readable JSON at all (bad UTF-8,
    # nesting past the recursion limit), simply has none, so verification answers 401 rather than 500.
    found = decode_or_none(apikey_decoder, body)
    return found.apikey if found is not None else None


def _messages(webhook: EvolutionWebhook, event: str) -> list[GatewayEvent]:
    decoded = decode_or_reject(upsert_decoder, webhook.data, f"Evolution {event} data")
    raw = decode_untyped(webhook.data)
    records, raws = (decoded, raw) if isinstance(decoded, list) else ([decoded], [raw])
    fallback_time = utc_from_iso(webhook.date_time)
    return [_message(record, part, event, fallback_time) for record, part in zip(records, raws, strict=True)]


def _message(
    record: EvolutionMessageRecord, raw: dict[str, Any], event: str, fallback_time: datetime | None
) -> GatewayEvent:
    key = record.key
    if is_status_broadcast(key.remote_jid):
        return IgnoredEvent(event=event, reason="status broadcast (stories), not a chat")
    content = _unwrap(record.message)
    found = _content(content, record.message, key.id) if content is not None else None
    if found is None:
        return IgnoredEvent(event=event, reason=f"message type {record.message_type!r} is not chat content")
    message_type, text, media = found
    own = key.from_me
    chat_id = normalise_chat_id(_chat_jid(key))
    if not chat_id:  # "", "+" or "@s.whatsapp.net": no chat to file the message under
        raise wrong_shape(f"Evolution {event} has no chat id (key.remoteJid)")
    push_name = (record.push_name or "").strip() or None
    return InboundMessage(
        gateway_message_id=key.id,
        chat_id=chat_id,
        contact_name=None if own or is_group(chat_id) else push_name,
        direction=Direction.OUTBOUND if own else Direction.INBOUND,
        type=message_type,
        body=text,
        sent_at=_sent_at(record.message_timestamp) or fallback_time or received_now(),
        status=_own_message_status(record.status) if own else MessageStatus.RECEIVED,
        media=media,
        raw=raw,
    )


def _receipts(webhook: EvolutionWebhook, event: str) -> list[GatewayEvent]:
    decoded = decode_or_reject(update_decoder, webhook.data, f"Evolution {event} data")
    records = decoded if isinstance(decoded, list) else [decoded]
    fallback_at = utc_from_iso(webhook.date_time)  # when Evolution saw the receipt
    return [_receipt(record, event, fallback_at) for record in records]


def _receipt(record: EvolutionStatusRecord, event: str, fallback_at: datetime | None) -> GatewayEvent:
    key, change = record.key, record.update
    message_id = record.key_id or record.id or (key.id if key else None)
    if not message_id:
        raise wrong_shape(f"Evolution {event} has no message id (keyId, id or key.id)")
    remote_jid = record.remote_jid or (key.remote_jid if key else None)
    from_me = record.from_me if record.from_me is not None else (key.from_me if key else None)
    raw_status = record.status if record.status is not None else (change.status if change else None)
    if is_status_broadcast(remote_jid):
        return IgnoredEvent(event=event, reason="status broadcast (stories), not a chat")
    if from_me is False:
        # The business reading a customer's message: inbound messages stay "received".
        return IgnoredEvent(event=event, reason="receipt for a message we received")
    status = _status_of(raw_status)
    if status is None:
        # "DELETED"/"EDITED" (v2), poll votes without status, …
        return IgnoredEvent(event=event, reason=f"status {raw_status!r} is not a delivery status")
    return StatusUpdate(
        gateway_message_id=message_id,
        chat_id=normalise_chat_id(remote_jid or "") or None,
        status=status,
        at=utc_from_epoch(record.datetime, "datetime") or fallback_at,
    )


def _content(content: EvolutionContent, outer: EvolutionContent | None, message_id: str) -> _Content | None:
    """What the message says, or None for non-chat content (reactions, protocol messages, poll votes…).

    `outer` is the message before unwrapping: Evolution puts `base64`/`mediaUrl` there, not on the inner one.
    """
    if content.conversation is not None:
        return MessageType.TEXT, content.conversation, None
    if content.extended_text_message is not None:  # v1; v2 folds it into `conversation`
        return MessageType.TEXT, content.extended_text_message.text, None
    for message_type, media in _media_of(content):
        if media is not None:
            return message_type, media.caption, _media_ref(media, outer or content, message_id)
    location = content.location_message or content.live_location_message
    if location is not None:
        return MessageType.LOCATION, _location_text(location), None
    return _other_content(content)


def _media_of(content: EvolutionContent) -> list[tuple[MessageType, EvolutionMedia | None]]:
    wrapper = content.document_with_caption_message  # v1; v2 unwraps it itself
    wrapped_document = wrapper.message.document_message if wrapper and wrapper.message else None
    return [
        (MessageType.IMAGE, content.image_message),
        (MessageType.VIDEO, content.video_message),
        (MessageType.VIDEO, content.ptv_message),
        (MessageType.AUDIO, content.audio_message),
        (MessageType.DOCUMENT, content.document_message or wrapped_document),
        (MessageType.STICKER, content.sticker_message),
    ]


def _media_ref(media: EvolutionMedia, carrier: EvolutionContent, message_id: str) -> MediaRef:
    return MediaRef(
        gateway_ref=message_id,  # POST /chat/getBase64FromMediaMessage/{instance} {message: {key: {id}}}
        mime_type=media.mimetype,
        size_bytes=_integer(media.file_length),
        sha256=sha256_hex(media.file_sha256),
        filename=media.file_name,
        url=carrier.media_url,  # S3/MinIO copy; the WhatsApp CDN url is encrypted, so not offered
        inline_base64=carrier.base64,
    )


def _other_content(content: EvolutionContent) -> _Content | None:
    """Contacts, button/list replies, polls: kept as OTHER with their visible text."""
    card = content.contact_message or content.contacts_array_message
    if card is not None:
        return MessageType.OTHER, card.display_name, None
    reply = (
        content.buttons_response_message
        or content.template_button_reply_message
        or content.list_response_message
    )
    if reply is not None:
        return MessageType.OTHER, reply.selected_display_text or reply.title, None
    poll = content.poll_creation_message or content.poll_creation_message_v3
    if poll is not None:
        return MessageType.OTHER, poll.name, None
    return None


def _unwrap(content: EvolutionContent | None) -> EvolutionContent | None:
    """Disappearing and view-once messages wrap the real content in `{message: {...}}`."""
    for _ in range(_WRAPPER_DEPTH):
        if content is None:
            return None
        wrapper = (
            content.ephemeral_message
            or content.view_once_message
            or content.view_once_message_v2
            or content.view_once_message_v2_extension
        )
        if wrapper is None or wrapper.message is None:
            return content
        content = wrapper.message
    return content


def _chat_jid(key: EvolutionKey) -> str:
    """The chat's jid, preferring the phone-number jid when Baileys gives a hidden "@lid" id and its alt."""
    if key.remote_jid.endswith("@lid"):
        # senderPn is the sender's number: the chat's only when the sender is the other party.
        alternatives = [key.remote_jid_alt] if key.from_me else [key.remote_jid_alt, key.sender_pn]
        for alternative in alternatives:
            if alternative and alternative.endswith(_PHONE_JID_SUFFIXES):
                return alternative
    return key.remote_jid


def _location_text(location: EvolutionLocation) -> str | None:
    described = ", ".join(part.strip() for part in (location.name, location.address) if part and part.strip())
    if described:
        return described
    if location.degrees_latitude is not None and location.degrees_longitude is not None:
        return f"{location.degrees_latitude},{location.degrees_longitude}"
    return None


def _status_of(value: str | int | None) -> MessageStatus | None:
    if isinstance(value, str):
        name = value.strip().upper()
        # isdecimal, not isdigit: "²" is a digit that int() refuses.
        return _STATUS_BY_CODE.get(int(name)) if name.isdecimal() else _STATUS_BY_NAME.get(name)
    if isinstance(value, int):
        return _STATUS_BY_CODE.get(value)
    return None


def _own_message_status(value: str | int | None) -> MessageStatus:
    """Own messages arrive once they left the phone: sent, unless the payload already knows better."""
    status = _status_of(value)
    if status in (MessageStatus.DELIVERED, MessageStatus.READ, MessageStatus.FAILED):
        return status
    return MessageStatus.SENT


def _sent_at(value: EvolutionNumber) -> datetime | None:
    """messageTimestamp: seconds, milliseconds (Evolution's fallback path), a numeric string or a Long."""
    if isinstance(value, EvolutionLong):
        return utc_from_epoch(_integer(value), "messageTimestamp")
    if isinstance(value, str) and not value.strip().lstrip("-").replace(".", "", 1).isdigit():
        parsed = utc_from_iso(value)
        if parsed is None:
            raise wrong_shape("Evolution messageTimestamp is neither an epoch number nor ISO-8601")
        return parsed
    return utc_from_epoch(value, "messageTimestamp")


def _integer(value: EvolutionNumber) -> int | None:
    """A size or timestamp in any of Baileys' spellings; None when unreadable (sizes are only a hint)."""
    if isinstance(value, EvolutionLong):
        return (value.low & 0xFFFFFFFF) + (value.high << 32)
    if value is None:
        return None
    try:
        return int(float(value))
    except (ValueError, OverflowError):
        return None
