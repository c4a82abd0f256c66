"""The WebSocket protocol: every frame either side may send, as msgspec tagged unions on `type`.

Client → server: subscribe {conversation_id, after_seq?} · unsubscribe {conversation_id} · ping.
Server → client: ready · message.created · message.updated · conversation.updated · media.ready ·
replay.done · pong · error · resync.

Every message event carries (conversation_id, seq): seq is gapless per conversation, so a client that sees a
jump knows it missed something and subscribes again with after_seq = the last seq it has.
"""

from __future__ import annotations

from uuid import UUID

import msgspec
import msgspec.inspect

from app.domain.conversations.schemas import ConversationOut, MediaOut, MessageOut

PROTOCOL_VERSION = 1


class _ClientFrame(msgspec.Struct, tag_field="type", forbid_unknown_fields=False, frozen=True):
    pass


class Subscribe(_ClientFrame, frozen=True, tag="subscribe"):
    """Join a conversation's room; with after_seq, first replay every message with seq > after_seq."""

    conversation_id: UUID
    after_seq: int | None = msgspec.field(default=None)


class Unsubscribe(_ClientFrame, frozen=True, tag="unsubscribe"):
    conversation_id: UUID


class Ping(_ClientFrame, frozen=True, tag="ping"):
    pass


ClientFrame = Subscribe | Unsubscribe | Ping
client_frame_decoder = msgspec.json.Decoder(ClientFrame)


class _ServerFrame(msgspec.Struct, tag_field="type", frozen=True):
    """Subclasses are frozen too (msgspec inherits it; the class keyword keeps type checkers in step)."""

    pass


class Ready(_ServerFrame, frozen=True, tag="ready"):
    user_id: UUID
    connection_id: str
    heartbeat_s: int
    protocol: int = PROTOCOL_VERSION


class MessageCreated(_ServerFrame, frozen=True, tag="message.created"):
    conversation_id: UUID
    seq: int
    message: MessageOut


class MessageUpdated(_ServerFrame, frozen=True, tag="message.updated"):
    conversation_id: UUID
    seq: int
    message_id: UUID
    status: str


class ConversationUpdated(_ServerFrame, frozen=True, tag="conversation.updated"):
    """The inbox line changed (new message, read marker, status): sent to every connection of the org."""

    conversation: ConversationOut


class MediaReady(_ServerFrame, frozen=True, tag="media.ready"):
    conversation_id: UUID
    seq: int
    message_id: UUID
    media: MediaOut


class ReplayDone(_ServerFrame, frozen=True, tag="replay.done"):
    """Everything up to `seq` has been sent; live events follow."""

    conversation_id: UUID
    seq: int


class Pong(_ServerFrame, frozen=True, tag="pong"):
    pass


class Error(_ServerFrame, frozen=True, tag="error"):
    code: str  # invalid_frame · frame_too_large · rate_limited · not_found · unavailable
    detail: str


class Resync(_ServerFrame, frozen=True, tag="resync"):
    """The server could not keep this connection up to date: reload (the conversation, or everything)."""

    conversation_id: UUID | None = None
    reason: str = ""


ServerFrame = (
    Ready
    | MessageCreated
    | MessageUpdated
    | ConversationUpdated
    | MediaReady
    | ReplayDone
    | Pong
    | Error
    | Resync
)
CLIENT_FRAME_TYPES = frozenset(msgspec.inspect.type_info(t).tag for t in (Subscribe, Unsubscribe, Ping))  # type: ignore[attr-defined]
SERVER_FRAME_TYPES = frozenset(
    msgspec.inspect.type_info(t).tag  # type: ignore[attr-defined]
    for t in (
        Ready,
        MessageCreated,
        MessageUpdated,
        ConversationUpdated,
        MediaReady,
        ReplayDone,
        Pong,
        Error,
        Resync,
    )
)
_encoder = msgspec.json.Encoder()


def encode(frame: ServerFrame) -> str:
    return _encoder.encode(frame).decode()
