"""WPPConnect Server webhooks → normalised gateway events.

Message events: `onmessage` (received messages only), `onanymessage` (older servers; also the business's own
messages), `onselfmessage` (newer servers, own messages when webhook.onSelfMessage is on) and `unreadmessages`
(backlog sent at start-up). Delivery receipts: `onack`. Everything else (presence, qrcode, status-find,
reactions, calls, …) is acknowledged and ignored. WPPConnect signs nothing, so the instance's shared secret
must travel in the webhook URL or a header.
"""

from __future__ import annotations

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
from app.domain.gateways.webhook_helpers import (
    base64_decoded_size,
    decode_or_reject,
    decode_untyped,
    presented_secrets,
    received_now,
    require_shared_secret,
    sha256_hex,
    utc_from_epoch,
    wrong_shape,
)
from app.domain.gateways.wppconnect.schemas import WppMessageKey, WppWebhook, WppWid, webhook_decoder

MESSAGE_EVENTS = frozenset({"onmessage", "onanymessage", "onselfmessage", "unreadmessages"})
ACK_EVENT = "onack"

_MEDIA_TYPES = {
    "image": MessageType.IMAGE,
    "video": MessageType.VIDEO,
    "ptv": MessageType.VIDEO,  # round "video note"
    "audio": MessageType.AUDIO,
    "ptt": MessageType.AUDIO,  # voice note
    "document": MessageType.DOCUMENT,
    "sticker": MessageType.STICKER,
}
# WA-JS message types that are chat bookkeeping rather than something a person wrote.
_NOT_CONTENT = frozenset(
    {
        "notification",
        "notification_template",
        "group_notification",
        "gp2",
        "broadcast_notification",
        "e2e_notification",
        "call_log",
        "protocol",
        "ciphertext",
        "revoked",
        "reaction",
        "poll_update",
        "pin_message",
        "keep_in_chat",
        "debug",
    }
)
# WA-JS AckType: negative codes are failures (FAILED=-1, EXPIRED=-2, CONTENT_TOO_BIG=-4, …).
_ACK_STATUSES = {
    0: MessageStatus.PENDING,  # CLOCK
    1: MessageStatus.SENT,  # SENT (server)
    2: MessageStatus.DELIVERED,  # RECEIVED (device)
    3: MessageStatus.READ,
    4: MessageStatus.READ,  # PLAYED (audio/video): read as far as the CRM cares
}

_Content = tuple[MessageType, str | None, MediaRef | None]  # type, text (or caption), media


class WppConnectAdapter:
    kind: str = "wppconnect"

    def verify_head(self, head: WebhookHead, instance: InstanceCredentials) -> bool:
        # The secret only ever travels in a header or the URL: the body never needs reading to verify.
        require_shared_secret(presented_secrets(head), instance.webhook_secret)
        return True

    def verify(self, request: WebhookRequest, instance: InstanceCredentials) -> None:
        self.verify_head(request, instance)

    def parse(self, body: bytes) -> list[GatewayEvent]:
        return parse_webhook(body)


def parse_webhook(body: bytes) -> list[GatewayEvent]:
    webhook = decode_or_reject(webhook_decoder, body, "WPPConnect webhook")
    event = webhook.event.lower()
    if event in MESSAGE_EVENTS:
        return addressed_to([_message_event(webhook, body)], webhook.session)
    if event == ACK_EVENT:
        return addressed_to([_ack_event(webhook)], webhook.session)
    return [IgnoredEvent(event=webhook.event, reason="event not handled")]


def _message_event(webhook: WppWebhook, body: bytes) -> GatewayEvent:
    message_id = _message_id(webhook)
    own = _is_own(webhook)
    # Own messages: `from` is the business itself, the chat is `to`. Received: the chat is `from`.
    peer = (webhook.to if own else webhook.from_) or _wid_text(webhook.chat_id)
    # Normalised first: "+" or "@c.us" come out empty, which is as good as no chat id at all.
    chat_id = normalise_chat_id(peer or "")
    if not chat_id:
        raise wrong_shape(f"WPPConnect {webhook.event} has no chat id (from/to/chatId)")
    if is_status_broadcast(peer):
        return IgnoredEvent(event=webhook.event, reason="status broadcast (stories), not a chat")
    wa_type = (webhook.type or "chat").lower()
    if wa_type in _NOT_CONTENT:
        return IgnoredEvent(event=webhook.event, reason=f"message type {wa_type!r} is not chat content")

    message_type, text, media = _content(webhook, message_id, wa_type)
    raw: dict[str, Any] = decode_untyped(body)  # the message is the whole body
    return InboundMessage(
        gateway_message_id=message_id,
        chat_id=chat_id,
        contact_name=None if own or is_group(chat_id) else _contact_name(webhook),
        direction=Direction.OUTBOUND if own else Direction.INBOUND,
        type=message_type,
        body=text,
        sent_at=utc_from_epoch(webhook.t or webhook.timestamp) or received_now(),
        status=_own_message_status(webhook.ack) if own else MessageStatus.RECEIVED,
        media=media,
        raw=raw,
    )


def _ack_event(webhook: WppWebhook) -> GatewayEvent:
    message_id = _message_id(webhook)
    if webhook.ack is None:
        raise wrong_shape("WPPConnect onack has no ack")
    if not _is_own(webhook):
        return IgnoredEvent(event=webhook.event, reason="receipt for a message we received")
    status = MessageStatus.FAILED if webhook.ack < 0 else _ACK_STATUSES.get(webhook.ack)
    if status is None:
        return IgnoredEvent(event=webhook.event, reason=f"unknown ack {webhook.ack}")
    remote = webhook.id.remote if isinstance(webhook.id, WppMessageKey) else None
    peer = _wid_text(remote) or webhook.to or _wid_text(webhook.chat_id)
    # No receipt time in the payload (`t` is when the message was sent).
    return StatusUpdate(
        gateway_message_id=message_id,
        chat_id=normalise_chat_id(peer or "") or None,
        status=status,
    )


def _content(webhook: WppWebhook, message_id: str, wa_type: str) -> _Content:
    if wa_type == "chat":
        return MessageType.TEXT, webhook.body, None
    if wa_type == "location":
        return MessageType.LOCATION, _location_text(webhook), None  # `body` is a map thumbnail
    media_type = _MEDIA_TYPES.get(wa_type)
    if media_type is None:
        # vcard, list/buttons replies, polls, orders…: keep what text there is.
        return MessageType.OTHER, webhook.body or webhook.caption, None
    inline, body_text = _split_media_body(webhook)
    media = MediaRef(
        gateway_ref=message_id,  # GET /api/{session}/get-media-by-message/{id}
        mime_type=webhook.mimetype,
        size_bytes=webhook.size,
        sha256=sha256_hex(webhook.filehash),
        filename=webhook.filename,
        url=webhook.file_url,
        inline_base64=inline,
    )
    return media_type, webhook.caption or body_text, media


def _split_media_body(webhook: WppWebhook) -> tuple[str | None, str | None]:
    """Tell what `body` of a media message holds: (whole file as base64, text).

    With webhook.autoDownload the server replaces `body` with the file in base64. Without it WA-JS leaves a
    JPEG thumbnail there for images, videos and documents, which must not pass for the file: base64 counts
    as the file only when it decodes to the message's `size`. Anything that is not base64 is text (a caption,
    on old WA-JS versions).
    """
    body = webhook.body
    if not body:
        return None, None
    decoded_size = base64_decoded_size(body)
    if decoded_size is None:
        return None, body
    if webhook.size is None or abs(decoded_size - webhook.size) <= webhook.size // 100:
        return body, None
    return None, None


def _location_text(webhook: WppWebhook) -> str | None:
    if webhook.loc and webhook.loc.strip():
        return webhook.loc.strip()
    if webhook.lat is not None and webhook.lng is not None:
        return f"{webhook.lat},{webhook.lng}"
    return None


def _own_message_status(ack: int | None) -> MessageStatus:
    """Own messages arrive once they left the phone: sent, unless the payload already knows better."""
    if ack is None:
        return MessageStatus.SENT
    if ack < 0:
        return MessageStatus.FAILED
    if ack >= 2:
        return _ACK_STATUSES.get(ack, MessageStatus.READ)
    return MessageStatus.SENT


def _message_id(webhook: WppWebhook) -> str:
    key = webhook.id
    if isinstance(key, WppMessageKey):
        if key.serialized:
            return key.serialized
        remote = _wid_text(key.remote)
        if key.id and remote and key.from_me is not None:
            # Same spelling as the string ids of message events, so receipts find their message.
            return f"{str(key.from_me).lower()}_{remote}_{key.id}"
    elif key:
        return key
    raise wrong_shape(f"WPPConnect {webhook.event} has no message id")


def _is_own(webhook: WppWebhook) -> bool:
    key = webhook.id
    if isinstance(key, WppMessageKey) and key.from_me is not None:
        return key.from_me
    if webhook.from_me is not None:
        return webhook.from_me
    # Serialised ids start with the fromMe flag: "true_5511…@c.us_3EB0…".
    return isinstance(key, str) and key.startswith("true_")


def _contact_name(webhook: WppWebhook) -> str | None:
    sender = webhook.sender
    candidates = [webhook.notify_name]
    if sender is not None:
        candidates += [sender.pushname, sender.verified_name, sender.name]
    return next((name.strip() for name in candidates if name and name.strip()), None)


def _wid_text(wid: str | WppWid | None) -> str | None:
    if isinstance(wid, WppWid):
        if wid.serialized:
            return wid.serialized
        return f"{wid.user}@{wid.server}" if wid.user and wid.server else None
    return wid or None
