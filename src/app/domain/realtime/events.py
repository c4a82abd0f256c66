"""What travels between API processes: an envelope per event, on one Redis channel per organisation.

The server frame inside is encoded once by the publisher and forwarded verbatim to every socket, so a
message notified to 900 agents is serialised once, not 900 times.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING
from uuid import UUID

import msgspec

from app.domain.conversations.ingest import AppliedStatus, ConversationSummary, IngestResult, StoredMessage
from app.domain.conversations.schemas import ContactOut, ConversationOut, MediaOut, MessageOut, media_url
from app.domain.realtime.frames import (
    ConversationUpdated,
    MediaReady,
    MessageCreated,
    MessageUpdated,
    encode,
)

if TYPE_CHECKING:
    from app.domain.conversations.outbound import Outbound


class EventKind(enum.StrEnum):
    MESSAGE_CREATED = "created"  # room event; seq is the new message's, gapless per conversation
    MESSAGE_UPDATED = "updated"  # room event; seq is the updated message's
    MEDIA_READY = "media"  # room event
    CONVERSATION = "conversation"  # inbox event, to every connection of the org


class Envelope(msgspec.Struct, array_like=True, frozen=True):
    kind: EventKind
    conversation_id: UUID
    seq: int
    frame: str  # the encoded server frame

    @property
    def for_room(self) -> bool:
        return self.kind is not EventKind.CONVERSATION


envelope_encoder = msgspec.msgpack.Encoder()
# One Redis message per organisation per publish carries its envelopes as a list, in commit order (issue 13:
# one PUBLISH per batch instead of two per message); a lone Envelope is what processes before it sent.
envelopes_decoder = msgspec.msgpack.Decoder(list[Envelope])
envelope_decoder = msgspec.msgpack.Decoder(Envelope)


def org_channel(prefix: str, org_id: UUID) -> str:
    return f"{prefix}:org:{org_id}"


def org_channel_pattern(prefix: str) -> str:
    return f"{prefix}:org:*"


def org_of_channel(prefix: str, channel: str) -> UUID | None:
    head = f"{prefix}:org:"
    try:
        return UUID(channel[len(head) :]) if channel.startswith(head) else None
    except ValueError:
        return None


def snapshot_of(summary: ConversationSummary) -> ConversationOut:
    return ConversationOut(
        id=summary.conversation_id,
        instance_id=summary.instance_id,
        contact=ContactOut(id=summary.contact_id, wa_id=summary.contact_wa_id, name=summary.contact_name),
        status=summary.status,
        last_message_at=summary.last_message_at,
        last_message_preview=summary.last_message_preview,
        last_message_direction=summary.last_message_direction,
        unread_count=summary.unread_count,
        last_seq=summary.last_seq,
    )


def conversation_envelope(snapshot: ConversationOut) -> Envelope:
    return Envelope(
        kind=EventKind.CONVERSATION,
        conversation_id=snapshot.id,
        seq=snapshot.last_seq,
        frame=encode(ConversationUpdated(conversation=snapshot)),
    )


def message_out_of(stored: StoredMessage) -> MessageOut:
    return MessageOut(
        id=stored.id,
        conversation_id=stored.conversation_id,
        seq=stored.seq,
        gateway_message_id=stored.gateway_message_id,
        direction=stored.direction.value,
        type=stored.type.value,
        body=stored.body,
        status=stored.status.value,
        sent_at=stored.sent_at,
        received_at=stored.received_at,
        media=None
        if stored.media_id is None
        else MediaOut(
            id=stored.media_id,
            state="pending",
            mime_type=stored.media_mime_type,
            size_bytes=None,
            filename=None,
            url=media_url(stored.media_id),
        ),
    )


def _created(stored: StoredMessage) -> Envelope:
    frame = MessageCreated(
        conversation_id=stored.conversation_id, seq=stored.seq, message=message_out_of(stored)
    )
    return Envelope(EventKind.MESSAGE_CREATED, stored.conversation_id, stored.seq, encode(frame))


def _updated(applied: AppliedStatus) -> Envelope:
    return status_envelope(applied.conversation_id, applied.seq, applied.message_id, applied.status.value)


def status_envelope(conversation_id: UUID, seq: int, message_id: UUID, status: str) -> Envelope:
    """A message's new delivery status (the send worker's, or a gateway receipt's)."""
    frame = MessageUpdated(conversation_id=conversation_id, seq=seq, message_id=message_id, status=status)
    return Envelope(EventKind.MESSAGE_UPDATED, conversation_id, seq, encode(frame))


def media_ready_envelope(conversation_id: UUID, seq: int, message_id: UUID, media: MediaOut) -> Envelope:
    """A message's media processed (the media worker's)."""
    frame = MediaReady(conversation_id=conversation_id, seq=seq, message_id=message_id, media=media)
    return Envelope(EventKind.MEDIA_READY, conversation_id, seq, encode(frame))


def envelopes_for_ingest(result: IngestResult) -> list[Envelope]:
    """Room events in commit order, then one inbox event per conversation (its latest summary)."""
    envelopes = [_created(stored) for stored in result.created]
    envelopes += [_updated(applied) for applied in result.statuses]
    latest: dict[UUID, ConversationSummary] = {}
    for stored in result.created:
        latest[stored.conversation_id] = stored.summary
    envelopes += [conversation_envelope(snapshot_of(summary)) for summary in latest.values()]
    return envelopes


def envelopes_for_outbound(outbound: Outbound) -> list[Envelope]:
    message = outbound.message
    frame = MessageCreated(conversation_id=message.conversation_id, seq=message.seq, message=message)
    return [
        Envelope(EventKind.MESSAGE_CREATED, message.conversation_id, message.seq, encode(frame)),
        conversation_envelope(snapshot_of(outbound.summary)),
    ]
