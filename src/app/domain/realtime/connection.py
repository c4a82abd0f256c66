"""One agent's WebSocket: its rooms, its bounded outgoing queue, and the seam between replay and live.

Per room the connection remembers the highest seq it has sent (`delivered`). Live `message.created`
events at delivered+1 go straight out; older ones are duplicates and dropped; newer ones mean a gap (an
out-of-order publish from another process, or a lost one), so the room is filled from Postgres first.
While a replay or fill runs, live events for that room wait in `pending` and are merged after it.

Most sockets are idle most of the time, and an API process holds thousands, so an idle one costs only what
it must: the handler's own task reads the client's frames (no reader task), and the outgoing deque, the
writer task and the wait for room in it exist only while frames are waiting to go out. `__slots__`
throughout: no instance dict per socket.

Frames first (issue 13): a frame for a socket with nothing queued is written to the transport at once,
from the hub's own call, when the server offers a `FrameWriter` (app.server.ws_protocol). Only a socket
whose transport is paused (a slow reader), or that already has frames waiting, gets the queue and the
writer task; that is where order and the slow-consumer limit are kept, as before. Under webhook load
each task hop costs a full turn of a busy event loop, so the common case takes none.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import UUID

import msgspec
import structlog
from litestar import WebSocket

from app.config import RealtimeSettings
from app.domain.accounts.auth import CurrentAgent
from app.domain.realtime.events import Envelope, EventKind
from app.domain.realtime.frames import (
    Error,
    MessageCreated,
    Ping,
    Pong,
    ReplayDone,
    Resync,
    ServerFrame,
    Subscribe,
    Unsubscribe,
    client_frame_decoder,
    encode,
)
from app.domain.realtime.history import History
from app.lib import metrics
from app.lib.frame_writer import FrameWriter, frame_writer_of

if TYPE_CHECKING:
    from app.domain.realtime.hub import Hub

log = structlog.get_logger()

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_MANY_SOCKETS = 4429  # the agent already holds WS_MAX_SOCKETS_PER_AGENT sockets on this process


@dataclass(slots=True)
class RoomCursor:
    delivered: int  # highest message seq this socket has been sent
    busy: bool = True  # replay or gap fill running: live events wait in `pending`
    pending: list[Envelope] = field(default_factory=list)


class TokenBucket:
    """Client frames allowed per second, with a burst; flooding beyond it closes the socket."""

    __slots__ = ("capacity", "clock", "rate", "refused", "stamp", "tokens")

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.capacity = rate, 2 * rate
        self.tokens, self.clock, self.stamp = self.capacity, clock, clock()
        self.refused = 0

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return True
        self.refused += 1
        return False


class Connection:
    __slots__ = (
        "_direct",
        "_fills",
        "_out",
        "_space",
        "_writer",
        "agent",
        "bucket",
        "closing",
        "history",
        "hub",
        "id",
        "max_queued",
        "rooms",
        "settings",
        "socket",
    )

    def __init__(
        self, socket: WebSocket, agent: CurrentAgent, hub: Hub, history: History, settings: RealtimeSettings
    ) -> None:
        self.id = secrets.token_urlsafe(9)
        self.agent = agent
        self.socket = socket
        self.hub = hub
        self.history = history
        self.settings = settings
        self.rooms: dict[UUID, RoomCursor] = {}
        self.closing: tuple[int, str] | None = None
        self.bucket = TokenBucket(settings.frames_per_second)
        self.max_queued = max(settings.queue_size, 2)  # frames waiting; None (the close) not counted
        # Only while frames wait: the frames (None: close after them), the task sending them, and the
        # event a replay waits on for room in the deque.
        self._out: deque[str | None] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._space: asyncio.Event | None = None
        self._fills: set[asyncio.Task[None]] | None = None
        self._direct: FrameWriter | None = frame_writer_of(socket.scope)

    @property
    def org_id(self) -> UUID:
        return self.agent.org_id

    async def run(self) -> None:
        """The socket's life, in the handler's task: read the client's frames until it leaves or the socket
        is closed (the ASGI server answers our close with `websocket.disconnect`), then let what is queued
        go out, the close frame last."""
        try:
            await self._read()
        except Exception:
            log.exception("websocket failed", connection_id=self.id)
        self.close_soon(1000, "")  # the client left or its frames ended; a no-op when we closed it
        if (writer := self._writer) is not None:
            await asyncio.wait({writer}, timeout=5)

    def cancel_tasks(self) -> None:
        for task in (*(self._fills or ()), self._writer):
            if task is not None:
                task.cancel()

    # -- outgoing -------------------------------------------------------------------------------
    def queued(self) -> int:
        return len(self._out) if self._out is not None else 0

    def send(self, frame: str, data: bytes | None = None) -> None:
        """Write or queue a frame without waiting (the hub's path): a full queue means a slow consumer.
        `data`: the frame's UTF-8 bytes when the caller has them (encoded once for a whole room)."""
        if self.closing is not None or self._write_now(frame, data):
            return
        if self.queued() >= self.max_queued:
            log.warning("websocket consumer too slow", connection_id=self.id, user_id=str(self.agent.id))
            self.close_soon(CLOSE_TRY_AGAIN_LATER, "slow consumer", resync=True)
            return
        self._push(frame)

    def send_frame(self, frame: ServerFrame) -> None:
        self.send(encode(frame))

    async def send_in_order(self, frame: ServerFrame) -> None:
        """Queue a frame, waiting for room (replays: only this connection's own tasks wait)."""
        while self.closing is None and self.queued() >= self.max_queued:
            if self._space is None:
                self._space = asyncio.Event()
            await self._space.wait()
        if self.closing is None:
            text = encode(frame)
            if not self._write_now(text, None):
                self._push(text)

    def _write_now(self, frame: str, data: bytes | None) -> bool:
        """Written to the transport now: nothing is queued before it and the transport takes data."""
        direct = self._direct
        if direct is None or self._out is not None:
            return False
        if not direct.write_text_now(frame.encode() if data is None else data):
            return False
        metrics.WS_FRAMES.inc()
        return True

    def close_soon(self, code: int, reason: str, *, resync: bool = False, drop_queued: bool = False) -> None:
        """Tell the client why and close. With a resync, what is queued is dropped (the client reloads
        anyway), as it is when the client may no longer see it (`drop_queued`: a revoked token); otherwise
        it goes out first — e.g. the `rate_limited` warning before a flooding close."""
        if self.closing is not None:
            return
        self.closing = (code, reason)
        if self._out is not None and (resync or drop_queued or len(self._out) >= self.max_queued):
            self._out.clear()
        if reason == "slow consumer":
            self.hub.counters.slow_consumers += 1
        if resync:
            self.hub.counters.resyncs += 1
            self._push(encode(Resync(reason=reason)))
        self._push(None)
        self._wake_replays()  # they see `closing` and stop

    def _push(self, frame: str | None) -> None:
        out = self._out
        if out is None:
            out = self._out = deque()
        out.append(frame)
        if self._writer is None:
            self._writer = asyncio.create_task(self._write(out))

    def _wake_replays(self) -> None:
        if self._space is not None:
            self._space.set()
            self._space = None

    async def _write(self, out: deque[str | None]) -> None:
        """Send what is queued, in order, and end when nothing is left (the next frame starts a new one)."""
        try:
            while out:
                frame = out.popleft()
                if len(out) < self.max_queued:
                    self._wake_replays()
                if frame is None:
                    code, reason = self.closing or (1000, "")
                    await self.socket.close(code=code, reason=reason)
                    return
                await self.socket.send_text(frame)
                metrics.WS_FRAMES.inc()
        except Exception as exc:  # the client is gone: the reader gets `websocket.disconnect` and ends
            log.info("websocket send failed", connection_id=self.id, error=type(exc).__name__)
            if self.closing is None:
                self.closing = (1006, "send failed")
            out.clear()
            self._wake_replays()
        finally:
            self._writer = None
            if self._out is out and not out:
                self._out = None

    # -- incoming -------------------------------------------------------------------------------
    async def _read(self) -> None:
        while self.closing is None:
            event = await self.socket.receive()
            if event["type"] == "websocket.disconnect":
                return
            text = event.get("text")
            if not isinstance(text, str):
                self.send_frame(Error(code="invalid_frame", detail="frames are JSON text"))
                continue
            if (
                len(text) > self.settings.max_frame_bytes
                or len(text.encode()) > self.settings.max_frame_bytes
            ):
                self.send_frame(
                    Error(code="frame_too_large", detail=f"at most {self.settings.max_frame_bytes} bytes")
                )
                continue
            if not self.bucket.take():
                if self.bucket.refused == 1:
                    self.send_frame(Error(code="rate_limited", detail="too many frames; slow down"))
                elif self.bucket.refused > self.bucket.capacity:
                    self.close_soon(CLOSE_POLICY, "flooding")
                continue
            try:
                frame = client_frame_decoder.decode(text)
            except msgspec.ValidationError as exc:
                self.send_frame(Error(code="invalid_frame", detail=str(exc)))
                continue
            except (msgspec.DecodeError, RecursionError):  # nested past the recursion limit (issue 12)
                self.send_frame(Error(code="invalid_frame", detail="not valid JSON"))
                continue
            if isinstance(frame, Ping):
                self.send_frame(Pong())
            elif isinstance(frame, Subscribe):
                await self.subscribe(frame.conversation_id, frame.after_seq)
            elif isinstance(frame, Unsubscribe):
                self.unsubscribe(frame.conversation_id)

    async def subscribe(self, conversation_id: UUID, after_seq: int | None) -> None:
        if after_seq is not None and after_seq < 0:
            self.send_frame(Error(code="invalid_frame", detail="after_seq must be >= 0"))
            return
        try:
            last_seq = await self.history.room_last_seq(self.org_id, conversation_id, self.agent.id)
        except Exception as exc:  # database unavailable: the socket stays up, the client may retry
            log.warning("websocket subscribe failed", connection_id=self.id, error=type(exc).__name__)
            self.send_frame(Error(code="unavailable", detail="could not subscribe now; try again"))
            return
        if last_seq is None:  # unknown, or another organisation's: the same answer, nothing leaked
            self.send_frame(Error(code="not_found", detail=f"conversation {conversation_id} not found"))
            return
        self.unsubscribe(conversation_id)
        # Join first, read second: whatever commits after the read arrives live and waits in `pending`.
        cursor = RoomCursor(delivered=last_seq if after_seq is None else min(after_seq, last_seq))
        self.rooms[conversation_id] = cursor
        self.hub.join(self, conversation_id)
        await self._fill(conversation_id, cursor)

    def unsubscribe(self, conversation_id: UUID) -> None:
        if self.rooms.pop(conversation_id, None) is not None:
            self.hub.leave(self, conversation_id)

    # -- room events ----------------------------------------------------------------------------
    def room_event(self, envelope: Envelope, data: bytes | None = None) -> None:
        cursor = self.rooms.get(envelope.conversation_id)
        if cursor is not None:
            self._deliver(envelope.conversation_id, cursor, envelope, data)

    def ensure_caught_up(self, conversation_id: UUID, last_seq: int) -> None:
        """The periodic check found the room ahead of this socket (a publish was lost): fill the gap."""
        cursor = self.rooms.get(conversation_id)
        if cursor is not None and not cursor.busy and cursor.delivered < last_seq:
            cursor.busy = True
            self._spawn(self._fill(conversation_id, cursor))

    def _deliver(
        self, conversation_id: UUID, cursor: RoomCursor, envelope: Envelope, data: bytes | None = None
    ) -> None:
        if cursor.busy:
            cursor.pending.append(envelope)
            if len(cursor.pending) > self.max_queued:
                self.close_soon(CLOSE_TRY_AGAIN_LATER, "slow consumer", resync=True)
            return
        if envelope.kind is EventKind.MESSAGE_CREATED:
            if envelope.seq <= cursor.delivered:
                return  # already sent (by a replay, or a second publish of the same event)
            if envelope.seq > cursor.delivered + 1:
                cursor.busy = True
                cursor.pending.append(envelope)
                self._spawn(self._fill(conversation_id, cursor))
                return
            cursor.delivered = envelope.seq
        self.send(envelope.frame, data)

    async def _fill(self, conversation_id: UUID, cursor: RoomCursor) -> None:
        """Send every message after `delivered` from Postgres, then merge what arrived live meanwhile."""
        try:
            while True:
                page = await self.history.messages_after(
                    conversation_id, cursor.delivered, self.settings.replay_page, self.agent.id
                )
                for message in page:
                    if self.rooms.get(conversation_id) is not cursor or self.closing is not None:
                        return  # re-subscribed (or left) meanwhile: the new subscription replays itself
                    await self.send_in_order(MessageCreated(conversation_id, message.seq, message))
                    cursor.delivered = message.seq
                if len(page) < self.settings.replay_page:
                    break
        except Exception:
            log.exception(
                "websocket replay failed", connection_id=self.id, conversation_id=str(conversation_id)
            )
            if self.rooms.get(conversation_id) is cursor:
                # Leave the room first: nothing more is sent for it until the client subscribes again.
                self.unsubscribe(conversation_id)
                self.hub.counters.resyncs += 1
                self.send_frame(Resync(conversation_id=conversation_id, reason="replay failed"))
            return
        if self.rooms.get(conversation_id) is not cursor:
            return  # unsubscribed (or subscribed afresh) while we were reading
        pending, cursor.pending = sorted(cursor.pending, key=lambda e: e.seq), []
        cursor.busy = False
        await self.send_in_order(ReplayDone(conversation_id=conversation_id, seq=cursor.delivered))
        for envelope in pending:
            self._deliver(conversation_id, cursor, envelope)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        if self._fills is None:
            self._fills = set()
        task = asyncio.create_task(work)
        self._fills.add(task)
        task.add_done_callback(self._fills.discard)
