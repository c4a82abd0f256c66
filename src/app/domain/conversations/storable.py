"""What a gateway event must look like before ingest writes it: gateways send whatever their clients typed.

U+0000 becomes U+FFFD (Postgres refuses NUL in text and JSONB; lone UTF-16 surrogates, which msgspec
refuses, became U+FFFD when the body was decoded: app.domain.gateways.webhook_helpers), ids longer than
their column are refused (422: cutting them would merge distinct messages), display fields are cut to
their column, sizes outside BIGINT are dropped. Column sizes are read from the models, so a migration
cannot leave them stale.

A message text or caption is capped at WhatsApp's own limit, MAX_TEXT_CHARS (65,536 characters; issue 12:
before, only the 24 MiB body limit bounded it, and such a text went whole into every page, preview and
WebSocket frame). A longer one is stored, not refused — refusing would lose a message, and WPPConnect never
retries — cut to the limit with TRUNCATION_MARKER as its end, so agents see it was cut; the message's `raw`
payload keeps the text whole, so nothing is lost. (Outbound texts are refused above 4,096 characters.)
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import String
from sqlalchemy.orm import QueryableAttribute

from app.db.models import Contact, Media, Message
from app.domain.gateways.base import WebhookRejected
from app.domain.gateways.events import GatewayEvent, InboundMessage, MediaRef, StatusUpdate


def _max_length(column: QueryableAttribute[Any]) -> int:
    column_type = column.type
    assert isinstance(column_type, String), column
    assert column_type.length is not None, column
    return column_type.length


# The varchar sizes ingest writes into, read from the models so a migration cannot leave them stale.
_MESSAGE_ID_LENGTH = _max_length(Message.gateway_message_id)
_WA_ID_LENGTH = _max_length(Contact.wa_id)
_CONTACT_NAME_LENGTH = _max_length(Contact.name)
_MEDIA_REF_LENGTH = _max_length(Media.gateway_ref)
_FILENAME_LENGTH = _max_length(Media.filename)
_MIME_TYPE_LENGTH = _max_length(Media.mime_type)
_BIGINT_MAX = 2**63 - 1
MAX_TEXT_CHARS = 65_536  # WhatsApp's limit for a message text
TRUNCATION_MARKER = " […truncated]"
_NUL = "\x00"
_REPLACEMENT = "\ufffd"


def _scrub(value: str) -> str:
    return value.replace(_NUL, _REPLACEMENT) if _NUL in value else value


def _scrub_optional(value: str | None) -> str | None:
    return _scrub(value) if value is not None else None


def _scrub_json(value: Any) -> Any:
    """The payload with U+0000 replaced in every key and string: Postgres text and JSONB refuse it."""
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {_scrub(str(k)): _scrub_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_json(v) for v in value]
    return value


def _fitted_id(value: str, limit: int, what: str) -> str:
    # Ids are never cut: two long ids sharing a prefix would dedupe into one message.
    if len(value) > limit:
        raise WebhookRejected(f"{what} is longer than {limit} characters", status_code=422)
    return value


def _truncated(value: str | None, limit: int) -> str | None:
    return value[:limit] if value is not None else None  # display only: a cut name is still a name


def _capped_text(value: str | None) -> str | None:
    if value is None or len(value) <= MAX_TEXT_CHARS:
        return value
    return value[: MAX_TEXT_CHARS - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER


def _storable_media(media: MediaRef) -> MediaRef:
    size = media.size_bytes
    return msgspec.structs.replace(
        media,
        gateway_ref=_fitted_id(_scrub(media.gateway_ref), _MEDIA_REF_LENGTH, "media reference"),
        mime_type=_truncated(_scrub_optional(media.mime_type), _MIME_TYPE_LENGTH),
        # A size outside BIGINT (or negative) is not a size: it is only a hint, so drop it.
        size_bytes=size if size is not None and 0 <= size <= _BIGINT_MAX else None,
        sha256=_scrub_optional(media.sha256),
        filename=_truncated(_scrub_optional(media.filename), _FILENAME_LENGTH),
        url=_scrub_optional(media.url),
        inline_base64=_scrub_optional(media.inline_base64),
    )


def storable(event: GatewayEvent) -> GatewayEvent:
    """The event as the database can hold it, or WebhookRejected (422). Run over every event of a
    webhook before its first write, so a refused webhook stores nothing."""
    if isinstance(event, StatusUpdate):
        return msgspec.structs.replace(event, gateway_message_id=_scrub(event.gateway_message_id))
    if not isinstance(event, InboundMessage):
        return event
    return msgspec.structs.replace(
        event,
        gateway_message_id=_fitted_id(
            _scrub(event.gateway_message_id), _MESSAGE_ID_LENGTH, "gateway message id"
        ),
        chat_id=_fitted_id(_scrub(event.chat_id), _WA_ID_LENGTH, "chat id"),
        contact_name=_truncated(_scrub_optional(event.contact_name), _CONTACT_NAME_LENGTH),
        body=_capped_text(_scrub_optional(event.body)),  # the whole text stays in raw
        media=_storable_media(event.media) if event.media else None,
        raw=_scrub_json(event.raw) if event.raw is not None and _holds_nul(event.raw) else event.raw,
    )


def _holds_nul(raw: Any) -> bool:
    """Whether any key or string of the payload may hold U+0000: msgspec's C encoder writes it as \\u0000,
    so this costs an encode, not a walk of the payload in Python (issue 13); a text that spells "\\u0000"
    literally only costs the walk as well."""
    return b"\\u0000" in _json.encode(raw)


_json = msgspec.json.Encoder()
