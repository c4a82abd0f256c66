"""A webhook's events as rows of crm_ingest_batch() (ingest_batch.sql), and its outcome rows back as an
IngestResult (issue 13).

Preparing runs in the webhook's own request, before it joins a batch: what can refuse the webhook
(`storable`: 422) refuses it alone, and the batcher's single task only sends and reads. The rules mirror
IngestService (conversations/ingest.py), which the demo data and the tests still use (both call
crm_ingest_message() per message, so the database rules are one; these Python rules are kept twice):

- a message's sent_at is capped at now; the push name on the business's own messages is not the contact's;
- `raw` is stored without the inline base64 file (that goes once, into the media row);
- a status whose every predecessor is none (PENDING, RECEIVED) never applies: counted stale, not sent;
- the lock order key is (org, chat id, instance) of the webhook's first message (ingest_batch.sql).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import msgspec
from uuid_utils import uuid7 as _fast_id
from uuid_utils.compat import uuid7 as _new_id

from app.db.models import Direction
from app.domain.conversations.ingest import (
    STATUS_PREDECESSORS,
    AppliedStatus,
    ConversationSummary,
    IngestResult,
    StoredMessage,
    preview_text,
    raw_without_inline_media,
)
from app.domain.conversations.storable import storable
from app.domain.gateways.events import GatewayEvent, IgnoredEvent, InboundMessage, StatusUpdate

# The columns of crm_ingest_batch() after p_now, in order.
COLUMNS = (
    "request",
    "is_status",
    "org_id",
    "instance_id",
    "wa_id",
    "contact_name",
    "gateway_message_id",
    "direction",
    "type",
    "body",
    "status",
    "allowed_from",
    "sent_at",
    "raw",
    "preview",
    "message_id",
    "new_contact_id",
    "new_conversation_id",
    "media_id",
    "media_ref",
    "media_mime",
    "media_size",
    "media_sha256",
    "media_filename",
    "media_url",
    "media_inline",
)
_PLACEHOLDERS = ", ".join(f"${n}" for n in range(2, len(COLUMNS) + 2))  # every value is a bind parameter
INGEST_BATCH = (
    "SELECT request_index, event_index, outcome, message_id, conversation_id, seq, contact_id, contact_name, "
    "status, last_message_at, last_message_preview, last_message_direction, unread_count, sqlstate, error "
    "FROM crm_ingest_batch($1, " + _PLACEHOLDERS + ")"
)
_json = msgspec.json.Encoder()
_NO_KEY = ("\uffff",)  # status-only webhooks lock message rows, never contacts: after every message


@dataclass(slots=True)
class PreparedWebhook:
    """One webhook's rows (tuples in COLUMNS order minus `request`) and what its result needs back."""

    org_id: UUID
    instance_id: UUID
    rows: list[tuple[Any, ...]]
    events: list[InboundMessage | StatusUpdate]  # the event of each row
    stale: int
    ignored: int
    size: int  # bytes of text it carries, for the batch's byte bound
    lock_key: tuple[str, ...]


def _message_row(
    org_id: UUID, instance_id: UUID, message: InboundMessage, now: datetime
) -> tuple[tuple[Any, ...], int]:
    media = message.media
    raw = _json.encode(raw_without_inline_media(message)).decode()
    row = (
        False,
        org_id,
        instance_id,
        message.chat_id,
        message.contact_name if message.direction is Direction.INBOUND else None,
        message.gateway_message_id,
        message.direction.value,
        message.type.value,
        message.body,
        message.status.value,
        None,
        min(message.sent_at, now),
        raw,
        preview_text(message.body, message.type),
        # Ids the function uses only if it inserts the row; it returns the ids it used. uuid_utils' own
        # UUIDs (asyncpg sends their .bytes) cost a fifth of stdlib ones; the media id stays stdlib (it is
        # handed on, to the media job and the frame).
        _fast_id(),
        _fast_id(),
        _fast_id(),
        _new_id() if media else None,
        media.gateway_ref if media else None,
        media.mime_type if media else None,
        media.size_bytes if media else None,
        media.sha256 if media else None,
        media.filename if media else None,
        media.url if media else None,
        media.inline_base64 if media else None,
    )
    size = len(raw) + len(message.body or "") + len((media.inline_base64 or "") if media else "")
    return row, size


def _status_row(org_id: UUID, instance_id: UUID, event: StatusUpdate) -> tuple[Any, ...]:
    allowed = ",".join(status.value for status in STATUS_PREDECESSORS.get(event.status, ()))
    return (True, org_id, instance_id, None, None, event.gateway_message_id, None, None, None,
            event.status.value, allowed, None, None, None, None, None, None, None,
            None, None, None, None, None, None, None)  # fmt: skip


def prepare(
    org_id: UUID, instance_id: UUID, events: Sequence[GatewayEvent], now: datetime
) -> PreparedWebhook:
    """The webhook's rows; WebhookRejected (422) if an event cannot be stored, before any write."""
    checked = [storable(event) for event in events]
    prepared = PreparedWebhook(org_id, instance_id, [], [], 0, 0, 0, _NO_KEY)
    for event in checked:
        if isinstance(event, InboundMessage):
            row, size = _message_row(org_id, instance_id, event, now)
            prepared.rows.append(row)
            prepared.events.append(event)
            prepared.size += size
            if prepared.lock_key is _NO_KEY:
                prepared.lock_key = (str(org_id), event.chat_id, str(instance_id))
        elif isinstance(event, StatusUpdate):
            if not STATUS_PREDECESSORS.get(event.status, ()):
                prepared.stale += 1
                continue
            prepared.rows.append(_status_row(org_id, instance_id, event))
            prepared.events.append(event)
            prepared.size += 64
        elif isinstance(event, IgnoredEvent):
            prepared.ignored += 1
    return prepared


def columns(batch: Sequence[PreparedWebhook]) -> list[list[Any]]:
    """The batch as crm_ingest_batch()'s parallel arrays; request indexes are positions in `batch`."""
    arrays: list[list[Any]] = [[] for _ in COLUMNS]
    request = arrays[0]
    rest = arrays[1:]
    for index, webhook in enumerate(batch):
        for row in webhook.rows:
            request.append(index)
            for array, value in zip(rest, row, strict=True):
                array.append(value)
    return arrays


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """Postgres refused this webhook's events (its subtransaction rolled back); the rest of the batch
    committed."""

    sqlstate: str
    error: str


def results(
    batch: Sequence[PreparedWebhook], rows: Sequence[Any], now: datetime
) -> list[IngestResult | RequestFailed]:
    """Each webhook's outcome from crm_ingest_batch()'s rows (event_index is 1-based over the batch)."""
    offsets: list[int] = []
    offset = 1
    for webhook in batch:
        offsets.append(offset)
        offset += len(webhook.rows)
    answers: list[IngestResult | RequestFailed] = [
        IngestResult(stale_statuses=webhook.stale, ignored=webhook.ignored) for webhook in batch
    ]
    for row in rows:
        index = row[0]
        outcome = row[2]
        answer = answers[index]
        if outcome == "failed":
            answers[index] = RequestFailed(row[13], row[14])
            continue
        assert isinstance(answer, IngestResult)
        webhook = batch[index]
        position = row[1] - offsets[index]
        if outcome == "created":
            message = webhook.events[position]
            assert isinstance(message, InboundMessage)
            answer.created.append(_stored(webhook, position, message, row, now))
        elif outcome == "duplicate":
            answer.duplicates += 1
        elif outcome == "status":
            event = webhook.events[position]
            assert isinstance(event, StatusUpdate)
            answer.statuses.append(AppliedStatus(row[3], row[4], row[5], event.status))
        else:
            answer.stale_statuses += 1
    return answers


def _stored(
    webhook: PreparedWebhook, position: int, message: InboundMessage, row: Any, now: datetime
) -> StoredMessage:
    columns_of = webhook.rows[position]
    media_id = columns_of[17]
    return StoredMessage(
        id=row[3],
        conversation_id=row[4],
        seq=row[5],
        gateway_message_id=message.gateway_message_id,
        direction=message.direction,
        type=message.type,
        body=message.body,
        status=message.status,
        sent_at=columns_of[11],
        received_at=now,
        media_id=media_id,
        media_mime_type=message.media.mime_type if message.media else None,
        summary=ConversationSummary(
            conversation_id=row[4],
            instance_id=webhook.instance_id,
            contact_id=row[6],
            contact_wa_id=message.chat_id,
            contact_name=row[7],
            status=row[8],
            last_message_at=row[9],
            last_message_preview=row[10],
            last_message_direction=row[11],
            unread_count=row[12],
            last_seq=row[5],
        ),
    )
