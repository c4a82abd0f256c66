"""Per-process registry of sockets and rooms, fed by one Redis pattern subscription.

Every API process subscribes to all organisations' channels once (PSUBSCRIBE), so joining a room is a
dictionary insert, not a Redis round trip, and there is no window in which a new room is not yet
subscribed. Messages are dispatched, and their frames written, in the subscription's read callback
(realtime/subscription.py, issue 13): under webhook load a frame takes no turn of the busy event loop
between the Redis socket and the WebSocket transports.

Rooms are plain dicts of sets, deleted when their last socket leaves: nothing grows with churn
(the Litestar channels leaks, litestar #4867/#4871/#4894, do not apply).

Two loops run for the life of the process: the listener (reconnects with backoff when Redis goes away) and
the catch-up check, which compares each local room with Postgres every few seconds and fills what a lost
publish left out; it also runs at once after the listener reconnects.

The same connection carries the read cache's invalidation channel: each message drops the pages it names
from this process's memory. That layer is only used while the subscription is confirmed (from Redis's reply
until the connection is lost), since an invalidation missed would leave a stale page for a whole TTL; on
(re)subscribing, the bumps this process could not send while Redis was away go out first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

import msgspec
import structlog
from redis.exceptions import RedisError

from app.config import RealtimeSettings
from app.domain.realtime.connection import CLOSE_GOING_AWAY, CLOSE_UNAUTHORIZED, Connection
from app.domain.realtime.events import (
    Envelope,
    EventKind,
    envelope_decoder,
    envelopes_decoder,
    org_channel_pattern,
    org_of_channel,
)
from app.domain.realtime.history import History
from app.domain.realtime.subscription import SubscriberProtocol, subscribe
from app.lib import metrics

log = structlog.get_logger()

_BACKOFF_S = (0.1, 0.25, 0.5, 1.0, 2.0)


class InvalidatedCache(Protocol):
    """What the hub asks of the read cache whose invalidation channel it carries (the conversations'
    PageCache): the hub knows channels and callbacks, never pages, keys or envelopes (issue 13)."""

    def invalidation_channel(self) -> str: ...

    def invalidate(self, scopes: Iterable[str]) -> None: ...

    def set_memory_live(self, live: bool) -> None: ...

    async def send_unbumped(self) -> None: ...


@dataclass(slots=True)
class SocketCounters:
    """Since this process started (the stats endpoint sums them over processes). Frames sent are
    Prometheus's `crm_websocket_frames_sent_total` alone (one set of counters, app.lib.metrics)."""

    messages_routed: int = 0  # message.created events that reached this process
    notifications: int = 0  # sockets those events were handed to
    resyncs: int = 0
    slow_consumers: int = 0  # closed because their queue filled


class Hub:
    def __init__(
        self,
        redis_url: str,
        key_prefix: str,
        history: History,
        settings: RealtimeSettings,
        cache: InvalidatedCache,
    ) -> None:
        self.redis_url = redis_url
        self.key_prefix = key_prefix
        self.history = history
        self.settings = settings
        self.cache = cache
        self._orgs: dict[UUID, set[Connection]] = {}
        self._rooms: dict[UUID, set[Connection]] = {}
        self._per_agent: dict[UUID, int] = {}  # open sockets of each agent with one here
        self.counters = SocketCounters()
        self._check_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._side_tasks: set[asyncio.Task[None]] = set()
        self._subscription: SubscriberProtocol | None = None

    # -- membership -----------------------------------------------------------------------------
    def admit(self, connection: Connection) -> bool:
        """Register the socket unless its agent already holds `max_sockets_per_agent` here (issue 12:
        1,000 sockets were opened on one token in 3 s). No await between the count and the insert, so
        sockets authenticating at the same moment cannot all slip under the cap."""
        agent_id = connection.agent.id
        if self._per_agent.get(agent_id, 0) >= self.settings.max_sockets_per_agent:
            return False
        self._per_agent[agent_id] = self._per_agent.get(agent_id, 0) + 1
        self._orgs.setdefault(connection.org_id, set()).add(connection)
        metrics.WS_CONNECTIONS.inc()
        return True

    def unregister(self, connection: Connection) -> None:
        for conversation_id in list(connection.rooms):
            connection.unsubscribe(conversation_id)
        members = self._orgs.get(connection.org_id)
        if members is not None and connection in members:
            metrics.WS_CONNECTIONS.dec()
            members.discard(connection)
            if not members:
                del self._orgs[connection.org_id]
            agent_id = connection.agent.id
            if (left := self._per_agent.get(agent_id, 1) - 1) > 0:
                self._per_agent[agent_id] = left
            else:
                self._per_agent.pop(agent_id, None)

    def join(self, connection: Connection, conversation_id: UUID) -> None:
        self._rooms.setdefault(conversation_id, set()).add(connection)

    def leave(self, connection: Connection, conversation_id: UUID) -> None:
        members = self._rooms.get(conversation_id)
        if members is not None:
            members.discard(connection)
            if not members:
                del self._rooms[conversation_id]

    @property
    def connections(self) -> Iterable[Connection]:
        for members in self._orgs.values():
            yield from members

    def counts(self) -> dict[str, int]:
        return {
            "connections": sum(len(m) for m in self._orgs.values()),
            "users": len({c.agent.id for c in self.connections}),
            "rooms": len(self._rooms),
            "organisations": len(self._orgs),
        }

    def counts_for(self, org_id: UUID) -> dict[str, int]:
        """One organisation's share of this process: what its own agents may see."""
        members = self._orgs.get(org_id, set())
        rooms = {room for connection in members for room in connection.rooms}
        return {
            "connections": len(members),
            "users": len({c.agent.id for c in members}),
            "rooms": len(rooms),
        }

    def counts_by_org(self) -> dict[str, dict[str, int]]:
        return {
            str(org_id): {"connections": len(members), "users": len({c.agent.id for c in members})}
            for org_id, members in self._orgs.items()
        }

    # -- routing --------------------------------------------------------------------------------
    def dispatch(self, org_id: UUID, envelope: Envelope) -> int:
        """Hand an event to the local sockets it concerns, now (see Connection.send); returns how many got
        it. The frame is encoded to bytes once for all of them."""
        if envelope.for_room:
            targets = tuple(c for c in self._rooms.get(envelope.conversation_id, ()) if c.org_id == org_id)
            data = envelope.frame.encode() if targets else b""
            for connection in targets:
                connection.room_event(envelope, data)
        else:
            targets = tuple(self._orgs.get(org_id, ()))
            data = envelope.frame.encode() if targets else b""
            for connection in targets:
                connection.send(envelope.frame, data)
        if envelope.kind is EventKind.MESSAGE_CREATED:
            self.counters.messages_routed += 1
            self.counters.notifications += len(targets)
        if targets and envelope.for_room:
            log.info(
                "new message notified",
                conversation_id=str(envelope.conversation_id),
                seq=envelope.seq,
                kind=envelope.kind.value,
                connections=len(targets),
                users=len({c.agent.id for c in targets}),
            )
        return len(targets)

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._listen()), asyncio.create_task(self._catch_up())]

    async def stop(self) -> None:
        self.close_all(CLOSE_GOING_AWAY, "server shutting down")
        tasks = [*self._tasks, *self._side_tasks]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close_revoked(self, agent_id: UUID, generation: int) -> None:
        """An agent's tokens below `generation` were revoked: their open sockets must stop receiving now."""
        for connection in tuple(self.connections):
            agent = connection.agent
            if agent.id == agent_id and agent.token_generation < generation:
                connection.close_soon(CLOSE_UNAUTHORIZED, "token revoked", drop_queued=True)

    def close_all(self, code: int, reason: str) -> None:
        for connection in tuple(self.connections):
            connection.close_soon(code, reason)

    async def _listen(self) -> None:
        attempt = 0
        while True:
            subscription: SubscriberProtocol | None = None
            try:
                subscription = await subscribe(
                    self.redis_url,
                    [org_channel_pattern(self.key_prefix)],
                    [self.cache.invalidation_channel()],
                    self._on_message,
                )
                self._subscription = subscription
                if attempt:
                    log.info("realtime subscription restored", attempts=attempt)
                    self._check_now.set()  # whatever was published while we were away comes from Postgres
                attempt = 0
                await subscription.closed  # raises SubscriptionLost when the connection ends
            except (RedisError, OSError, TimeoutError) as exc:
                self.cache.set_memory_live(False)  # invalidations may be missed until resubscribed
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("realtime subscription lost", error=type(exc).__name__, retry_in_s=delay)
                await asyncio.sleep(delay)
            finally:
                self._subscription = None
                if subscription is not None:
                    subscription.close()

    def _on_message(self, kind: bytes, channel: bytes, data: bytes) -> None:
        """Called from the subscription's read callback, once per message, in the order Redis sent them."""
        try:
            if kind == b"pmessage":
                self._on_event(channel, data)
            elif kind == b"message":  # the cache's invalidation channel
                self.cache.invalidate(data.decode().split("\n"))
            elif kind == b"subscribe":  # Redis confirms in order: both subscriptions are active now
                self._spawn_confirmed(self._subscription)
        except Exception:  # one bad event must not stop delivery of the others
            log.exception("realtime event dispatch failed")

    def _spawn_confirmed(self, subscription: SubscriberProtocol | None) -> None:
        task = asyncio.create_task(self._confirmed(subscription))
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    async def _confirmed(self, subscription: SubscriberProtocol | None) -> None:
        """The bumps Redis missed go out, then the in-memory cache layer is used again; if Redis cannot take
        them, the subscription is dropped and the next one tries again."""
        try:
            await self.cache.send_unbumped()
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("cache invalidations not sent after resubscribing", error=type(exc).__name__)
            if subscription is not None:
                subscription.close()
            return
        if subscription is not None and subscription is self._subscription and not subscription.closed.done():
            self.cache.set_memory_live(True)

    def _on_event(self, channel: bytes, data: bytes) -> None:
        org_id = org_of_channel(self.key_prefix, channel.decode())
        if org_id is None:
            return
        try:
            envelopes = envelopes_decoder.decode(data)
        except msgspec.DecodeError:
            try:
                envelopes = [envelope_decoder.decode(data)]
            except msgspec.DecodeError:
                log.warning("undecodable realtime event dropped", channel=channel.decode())
                return
        for envelope in envelopes:
            self.dispatch(org_id, envelope)

    async def _catch_up(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._check_now.wait(), self.settings.catch_up_interval_s)
            self._check_now.clear()
            room_ids = list(self._rooms)
            if not room_ids:
                continue
            try:
                last_seqs = await self.history.last_seqs(room_ids)
            except Exception as exc:  # database down: try again next round
                log.warning("realtime catch-up check failed", error=type(exc).__name__)
                continue
            for conversation_id, last_seq in last_seqs.items():
                for connection in tuple(self._rooms.get(conversation_id, ())):
                    connection.ensure_caught_up(conversation_id, last_seq)
