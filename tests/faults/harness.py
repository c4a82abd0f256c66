"""What the fault tests share: a gateway that retries the way real gateways do, a lean WebSocket follower
that keeps the last seq it has per conversation and comes back with `after_seq`, and the truth read back
from Postgres with the checks every fault test makes.

The follower speaks WebSocket through the kit's RawWebSocket (an asyncio.Protocol: no task per socket, no
library buffers), so one test process can hold a thousand of them on a 2-core machine next to the servers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote
from uuid import UUID

import asyncpg
import httpx
import msgspec

from app.db.models import WhatsAppInstance
from tests.kit.clients import RawWebSocket
from tests.kit.data import fixture_for, signed_headers, with_message_id
from tests.kit.databases import plain_dsn

GATEWAY = "evolution"
Json = dict[str, Any]


class Target(Protocol):
    """Where requests go: an ApiProcess, or anything else with these attributes."""

    @property
    def base_url(self) -> str: ...

    @property
    def port(self) -> int: ...


async def eventually(check: Callable[[], bool], what: Callable[[], str], timeout: float) -> None:
    """Poll a synchronous check (state kept by protocol callbacks) until true, failing after timeout."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what()}")
        await asyncio.sleep(0.05)


# -- the gateway ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Webhook:
    """One inbound text message as a gateway delivers it: the same body on every attempt."""

    message_id: str
    chat: str
    path: str
    body: bytes
    headers: dict[str, str]
    attempts: int = 0
    acked: bool = False
    deduplicated: bool = False  # acked as a duplicate: an earlier attempt had committed


def text_webhooks(instance: WhatsAppInstance, chats: Sequence[str], count: int, prefix: str) -> list[Webhook]:
    """`count` webhooks with distinct gateway message ids, round-robin over the chats (one per contact)."""
    base = fixture_for(GATEWAY, "v2_messages_upsert_text", instance)
    path = f"/api/webhooks/{GATEWAY}/{instance.name}"
    hooks = []
    for i in range(count):
        chat, message_id = chats[i % len(chats)], f"{prefix}-{i:05d}"
        data = with_message_id(GATEWAY, base, message_id, text=f"{prefix} message {i}")
        data["data"]["key"]["remoteJid"] = f"{chat}@s.whatsapp.net"
        body = json.dumps(data).encode()
        hooks.append(Webhook(message_id, chat, path, body, signed_headers(GATEWAY, body, instance)))
    return hooks


@dataclass(frozen=True, slots=True)
class Attempt:
    started: float
    ended: float
    outcome: str  # "200", another status code, or "refused" / "dropped" / "timeout"
    retry_after: str | None


class Gateway:
    """Posts webhooks like WPPConnect / Evolution / Meta do: a non-2xx answer, a refused or dropped
    connection or a timeout is retried with backoff, with the same body, until a 200 (or `give_up_s`).

    `target` may be repointed while it runs (a process restarted on another port, as a load balancer would).
    Every attempt is recorded with its times, so a test can judge what was answered during a fault.
    """

    BACKOFF_S = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0)

    def __init__(
        self,
        target: Target,
        *,
        senders: int = 6,
        rate: float | None = None,
        attempt_timeout: float = 5.0,
        give_up_s: float = 60.0,
    ) -> None:
        self.target = target
        self.senders, self.rate = senders, rate
        self.attempt_timeout, self.give_up_s = attempt_timeout, give_up_s
        self.attempts: list[Attempt] = []
        self.acked = 0
        self._unanswered: dict[int, tuple[Webhook, float]] = {}  # requests sent, not answered: since when

    @property
    def in_flight(self) -> int:
        return len(self._unanswered)

    def in_flight_longer_than(self, seconds: float) -> list[Webhook]:
        now = time.monotonic()
        return [hook for hook, sent in self._unanswered.values() if now - sent > seconds]

    @property
    def outcomes(self) -> Counter[str]:
        return Counter(a.outcome for a in self.attempts)

    def outcomes_between(self, start: float, end: float) -> Counter[str]:
        """Outcomes of attempts that started and ended inside [start, end]."""
        return Counter(a.outcome for a in self.attempts if a.started >= start and a.ended <= end)

    async def deliver(self, hooks: Sequence[Webhook]) -> None:
        """Deliver every webhook (paced at `rate` per second from now, if set); returns when all are acked."""
        queue = deque(enumerate(hooks))
        t0 = time.monotonic()
        limits = httpx.Limits(max_connections=self.senders, max_keepalive_connections=self.senders)
        async with httpx.AsyncClient(timeout=self.attempt_timeout, limits=limits, trust_env=False) as http:

            async def sender() -> None:
                while queue:
                    number, hook = queue.popleft()
                    if self.rate:
                        await asyncio.sleep(max(0.0, t0 + number / self.rate - time.monotonic()))
                    await self._until_acked(http, hook)

            await asyncio.gather(*(sender() for _ in range(self.senders)))

    async def _until_acked(self, http: httpx.AsyncClient, hook: Webhook) -> None:
        deadline = time.monotonic() + self.give_up_s
        while True:
            hook.attempts += 1
            attempt = await self._attempt(http, hook)
            self.attempts.append(attempt)
            if attempt.outcome == "200":
                self.acked += 1
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{hook.message_id}: no 200 within {self.give_up_s} s ({attempt})")
            await asyncio.sleep(self.BACKOFF_S[min(hook.attempts, len(self.BACKOFF_S)) - 1])

    async def _attempt(self, http: httpx.AsyncClient, hook: Webhook) -> Attempt:
        started = time.monotonic()
        key = id(hook)
        self._unanswered[key] = (hook, started)
        try:
            response = await http.post(
                self.target.base_url + hook.path, content=hook.body, headers=hook.headers
            )
        except httpx.TimeoutException:
            return Attempt(started, time.monotonic(), "timeout", None)
        except httpx.ConnectError:
            return Attempt(started, time.monotonic(), "refused", None)
        except httpx.TransportError:  # the connection died with the request on it
            return Attempt(started, time.monotonic(), "dropped", None)
        finally:
            del self._unanswered[key]
        ended = time.monotonic()
        if response.status_code == 200:
            ack = response.json()
            hook.acked = True
            hook.deduplicated = ack["created"] == 0 and ack["duplicates"] == 1
        return Attempt(started, ended, str(response.status_code), response.headers.get("retry-after"))


def gateway_counts(hooks: Sequence[Webhook], gateway: Gateway) -> Json:
    outcomes = gateway.outcomes
    return {
        "sent": len(hooks),
        "acked": sum(h.acked for h in hooks),
        "attempts": len(gateway.attempts),
        "retries": len(gateway.attempts) - len(hooks),
        "acked_as_duplicate": sum(h.deduplicated for h in hooks),
        "outcomes": dict(sorted(outcomes.items())),
        "slowest_attempt_s": round(max((a.ended - a.started for a in gateway.attempts), default=0.0), 2),
    }


# -- the WebSocket follower ----------------------------------------------------------------------


class _Message(msgspec.Struct):
    gateway_message_id: str | None = None


class _Created(msgspec.Struct):
    conversation_id: str
    seq: int
    message: _Message


_created = msgspec.json.Decoder(_Created)
_CREATED = b'{"type":"message.created"'  # msgspec writes the tag first
_INBOX_LINE = b'{"type":"conversation.updated"'


@dataclass(slots=True)
class Room:
    """What one socket received for one conversation, judged frame by frame as a client would."""

    conversation_id: str
    last: int = 0  # the last seq this client has: what it passes as after_seq
    received: list[tuple[int, str | None]] = field(default_factory=list)  # (seq, gateway id) accepted
    duplicates: int = 0  # seq <= last: already received
    gaps: list[tuple[int, int]] = field(default_factory=list)  # (expected, got)
    replays_done: int = 0
    # What happened, in order, compactly: "s0" subscribe after_seq=0, "5" message seq 5, "dup5", "gap7",
    # "done7" replay.done seq=7, "resync", "unavailable", "lost" (socket gone).
    trail: list[str] = field(default_factory=list)


@dataclass
class FollowerStats:
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0  # attempts refused, timed out or answered without 101
    resyncs: int = 0
    unavailable: int = 0  # `error unavailable` answers to a subscribe (database down)
    other_errors: list[Json] = field(default_factory=list)
    close_codes: Counter[int] = field(default_factory=Counter)
    frames: int = 0


class Follower:
    """An agent's tab: one socket, several rooms. It reconnects by itself when the socket goes (backoff,
    bounded), re-subscribes every room with after_seq = the last seq it has, and on `resync` or
    `error unavailable` subscribes that room again."""

    BACKOFF_S = (0.05, 0.1, 0.25, 0.5, 1.0)
    HANDSHAKE_TIMEOUT_S = 15.0
    RESUBSCRIBE_DELAY_S = 0.3

    def __init__(
        self, target: Target, token: str, conversation_ids: Iterable[str], give_up_s: float = 60
    ) -> None:
        self.target, self.token, self.give_up_s = target, token, give_up_s
        self.rooms = {cid: Room(cid) for cid in conversation_ids}
        self.stats = FollowerStats()
        self._socket: RawWebSocket | None = None
        self._pending: deque[str] = deque()  # subscribes awaiting their answer, in order (served in order)
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.ready = False
        self.failure: str | None = None  # a reconnect that gave up

    # -- connection ----------------------------------------------------------------------------
    async def connect(self) -> None:
        """Connect (retrying with backoff until give_up_s) and subscribe every room from its last seq."""
        deadline = time.monotonic() + self.give_up_s
        failures = 0
        while not self._closing:
            try:
                await self._open()
                return
            except (OSError, TimeoutError) as exc:
                self.stats.connect_failures += 1
                if time.monotonic() > deadline:
                    raise AssertionError(f"could not connect within {self.give_up_s} s: {exc}") from exc
                await asyncio.sleep(self.BACKOFF_S[min(failures, len(self.BACKOFF_S) - 1)])
                failures += 1

    async def _open(self) -> None:
        path = f"/ws?token={quote(self.token)}"
        socket: RawWebSocket | None = None

        def lost() -> None:
            if socket is not None:
                self._on_lost(socket)

        socket = await RawWebSocket.open(
            self.target.port, path, self._on_text, lost, timeout=self.HANDSHAKE_TIMEOUT_S
        )
        self._socket, self.ready = socket, False
        self._pending.clear()
        self.stats.connects += 1
        if socket.lost:  # gone between the handshake and now: its loss was not ours to handle yet
            self._on_lost(socket)
            return
        for room in self.rooms.values():
            self._subscribe(room)

    def _subscribe(self, room: Room) -> None:
        if self._socket is None:
            return
        self._pending.append(room.conversation_id)
        room.trail.append(f"s{room.last}")
        self._socket.send_json(
            {"type": "subscribe", "conversation_id": room.conversation_id, "after_seq": room.last}
        )

    def _on_lost(self, socket: RawWebSocket) -> None:
        if socket is not self._socket:
            return
        self._socket = None
        self.stats.close_codes[socket.close_code or 1006] += 1
        for room in self.rooms.values():
            room.trail.append("lost")
        if not self._closing:
            self.stats.reconnects += 1
            self._spawn(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            await self.connect()
        except AssertionError as exc:
            self.failure = str(exc)

    def resubscribe(self, conversation_id: str) -> None:
        """Subscribe to a room again on the same socket, with after_seq = the last seq it has."""
        self._subscribe(self.rooms[conversation_id])

    def drop(self) -> None:
        """Cut the connection without a close frame; the follower reconnects by itself."""
        if self._socket is not None:
            self._socket.abort()

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._socket is not None:
            self._socket.abort()

    def _spawn(self, work: Any) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resubscribe_later(self, room: Room) -> None:
        await asyncio.sleep(self.RESUBSCRIBE_DELAY_S)
        self._subscribe(room)

    # -- frames --------------------------------------------------------------------------------
    def _on_text(self, data: bytes) -> None:
        self.stats.frames += 1
        if data.startswith(_INBOX_LINE):
            return
        if data.startswith(_CREATED):
            frame = _created.decode(data)
            room = self.rooms.get(frame.conversation_id)
            if room is not None:
                self._created(room, frame.seq, frame.message.gateway_message_id)
            return
        message = json.loads(data)
        kind = message["type"]
        if kind == "ready":
            self.ready = True
        elif kind == "replay.done":
            cid = message["conversation_id"]
            if self._pending and self._pending[0] == cid:
                self._pending.popleft()
            room = self.rooms[cid]
            room.replays_done += 1
            room.trail.append(f"done{message['seq']}")
        elif kind == "resync":
            self.stats.resyncs += 1
            cid = message.get("conversation_id")
            if cid is not None and cid in self.rooms:  # no conversation: the server closes; we reconnect
                self.rooms[cid].trail.append("resync")
                self._subscribe(self.rooms[cid])
        elif kind == "error" and message["code"] == "unavailable" and self._pending:
            self.stats.unavailable += 1
            room = self.rooms[self._pending.popleft()]
            room.trail.append("unavailable")
            self._spawn(self._resubscribe_later(room))
        elif kind == "error":
            self.stats.other_errors.append(message)

    def _created(self, room: Room, seq: int, gateway_id: str | None) -> None:
        if seq == room.last + 1:
            room.received.append((seq, gateway_id))
            room.last = seq
            room.trail.append(str(seq))
        elif seq <= room.last:
            room.duplicates += 1
            room.trail.append(f"dup{seq}")
        else:
            room.gaps.append((room.last + 1, seq))
            room.trail.append(f"gap{seq}")
            room.received.append((seq, gateway_id))
            room.last = seq


async def start_followers(followers: Sequence[Follower], concurrency: int = 100) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(follower: Follower) -> None:
        async with gate:
            await follower.connect()

    await asyncio.gather(*(one(f) for f in followers))


async def close_followers(followers: Iterable[Follower]) -> None:
    for follower in followers:
        await follower.close()


async def wait_caught_up(followers: Sequence[Follower], truth: Truth, timeout: float) -> None:
    """Until every room of every follower has the conversation's last seq in Postgres."""

    def behind() -> list[str]:
        lagging = [
            f"{room.conversation_id[:8]} at {room.last}/{truth.last_seq[room.conversation_id]}"
            for follower in followers
            for room in follower.rooms.values()
            if room.last < truth.last_seq[room.conversation_id]
        ]
        return lagging

    await eventually(
        lambda: not behind(), lambda: f"{len(behind())} rooms behind, e.g. {behind()[:5]}", timeout
    )


def follower_counts(followers: Sequence[Follower], truth: Truth) -> Json:
    """Exactly-once-in-order, room by room: every client started at after_seq=0, so it must have received
    the conversation's messages 1..last_seq, each once, in seq order, with Postgres's gateway ids."""
    expected = delivered = duplicates = lost = out_of_order = wrong_message = 0
    gaps: list[tuple[int, int]] = []
    for follower in followers:
        for room in follower.rooms.values():
            want = truth.messages[room.conversation_id]
            expected += len(want)
            delivered += len(room.received)
            duplicates += room.duplicates
            gaps += room.gaps
            seqs = [seq for seq, _ in room.received]
            lost += len(set(range(1, len(want) + 1)) - set(seqs))
            out_of_order += sum(1 for a, b in itertools.pairwise(seqs) if b != a + 1)
            wrong_message += sum(1 for got, should in zip(room.received, want, strict=False) if got != should)
    stats = [f.stats for f in followers]
    odd = [
        f"{room.conversation_id[:8]}: {' '.join(room.trail)}"
        for follower in followers
        for room in follower.rooms.values()
        if room.duplicates or room.gaps
    ]
    return {
        "clients": len(followers),
        "rooms": sum(len(f.rooms) for f in followers),
        "expected": expected,
        "delivered": delivered,
        "duplicates": duplicates,
        "lost": lost,
        "out_of_order": out_of_order,
        "gaps": len(gaps),
        "wrong_message": wrong_message,
        "connects": sum(s.connects for s in stats),
        "reconnects": sum(s.reconnects for s in stats),
        "connect_failures": sum(s.connect_failures for s in stats),
        "resyncs": sum(s.resyncs for s in stats),
        "unavailable": sum(s.unavailable for s in stats),
        "other_errors": sum(len(s.other_errors) for s in stats),
        "gave_up": sum(f.failure is not None for f in followers),
        "close_codes": dict(sum((s.close_codes for s in stats), Counter())),
        "trails_of_rooms_with_anomalies": odd[:10],
    }


def assert_exactly_once_in_order(counts: Json) -> None:
    names = ("duplicates", "lost", "out_of_order", "gaps", "wrong_message", "other_errors", "gave_up")
    bad = {k: counts[k] for k in names}
    assert counts["delivered"] == counts["expected"] and not any(bad.values()), counts


# -- reads over HTTP --------------------------------------------------------------------------------

INBOX = "/api/whatsapp-optimized/conversations"


def history_path(conversation_id: str) -> str:
    return f"/api/whatsapp-optimized/messages/{conversation_id}"


class Reader:
    """An agent reading pages from one API process (and its admin reading that process's cache figures)."""

    def __init__(self, target: Target, token: str, admin_token: str) -> None:
        self.http = httpx.AsyncClient(base_url=target.base_url, timeout=10.0, trust_env=False)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.admin = {"Authorization": f"Bearer {admin_token}"}

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, path: str) -> httpx.Response:
        return await self.http.get(path, headers=self.headers)

    async def page(self, path: str) -> Json:
        response = await self.get(path)
        assert response.status_code == 200, f"{path}: {response.status_code} {response.text}"
        body: Json = response.json()
        return body

    async def memory(self) -> Json:
        response = await self.http.get("/api/whatsapp-optimized/stats", headers=self.admin)
        assert response.status_code == 200, response.text
        memory: Json = response.json()["process"]["cache"]["memory"]
        return memory

    async def memory_live(self) -> bool:
        """From /websocket/info, which needs no database."""
        response = await self.get("/api/whatsapp-optimized/websocket/info")
        assert response.status_code == 200, response.text
        return bool(response.json()["cache"]["memory_live"])

    async def wait_memory_live(self, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while not await self.memory_live():
            assert time.monotonic() < deadline, "the memory layer never became live"
            await asyncio.sleep(0.05)

    async def page_from_memory(self, path: str, timeout: float = 10.0) -> Json:
        """GET until one answer came from this process's memory layer: the page is cached there now."""
        deadline = time.monotonic() + timeout
        while True:
            hits = (await self.memory())["hits"]
            body = await self.page(path)
            if (await self.memory())["hits"] > hits:
                return body
            assert time.monotonic() < deadline, f"{path} was never served from memory"


def history_matches(page: Json, truth: Truth, conversation_id: str) -> bool:
    """The latest page is exactly the newest messages of Postgres (seq and gateway id), last_seq included."""
    want = truth.messages[conversation_id][-len(page["items"]) :] if page["items"] else []
    got = [(m["seq"], m["gateway_message_id"]) for m in page["items"]]
    full = len(page["items"]) == min(50, len(truth.messages[conversation_id]))
    return bool(full and got == want and page["last_seq"] == truth.last_seq[conversation_id])


def inbox_matches(page: Json, truth: Truth) -> bool:
    lines = {line["id"]: line["last_seq"] for line in page["items"]}
    return all(lines.get(cid) == last for cid, last in truth.last_seq.items())


# -- the truth in Postgres -----------------------------------------------------------------------


@dataclass
class Truth:
    conversation_of_chat: dict[str, str]  # wa_id -> conversation id
    last_seq: dict[str, int]  # conversation id -> conversations.last_seq
    messages: dict[str, list[tuple[int, str | None]]]  # conversation id -> (seq, gateway id) by seq
    rows_per_gateway_id: Counter[str]


async def read_truth(database_url: str, instance_ids: Iterable[UUID]) -> Truth:
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        ids = list(instance_ids)
        conversations = await conn.fetch(
            "SELECT c.id, ct.wa_id, c.last_seq FROM conversations c JOIN contacts ct ON ct.id = c.contact_id"
            " WHERE c.instance_id = ANY($1::uuid[])",
            ids,
        )
        rows = await conn.fetch(
            "SELECT conversation_id, seq, gateway_message_id FROM messages"
            " WHERE instance_id = ANY($1::uuid[]) ORDER BY conversation_id, seq",
            ids,
        )
    finally:
        await conn.close()
    messages: dict[str, list[tuple[int, str | None]]] = {str(r["id"]): [] for r in conversations}
    for row in rows:
        messages[str(row["conversation_id"])].append((row["seq"], row["gateway_message_id"]))
    return Truth(
        conversation_of_chat={r["wa_id"]: str(r["id"]) for r in conversations},
        last_seq={str(r["id"]): r["last_seq"] for r in conversations},
        messages=messages,
        rows_per_gateway_id=Counter(str(r["gateway_message_id"]) for r in rows),
    )


async def stored_gateway_ids(database_url: str, gateway_ids: Iterable[str]) -> set[str]:
    """Which of these gateway message ids have a row (committed) right now."""
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT gateway_message_id FROM messages WHERE gateway_message_id = ANY($1::text[])",
            list(gateway_ids),
        )
    finally:
        await conn.close()
    return {row["gateway_message_id"] for row in rows}


def postgres_counts(truth: Truth, hooks: Sequence[Webhook]) -> Json:
    """Every webhook's message stored exactly once; seq gapless 1..last_seq in every conversation."""
    sent = {h.message_id for h in hooks}
    rows = truth.rows_per_gateway_id
    seq_gaps = sum(
        1
        for cid, items in truth.messages.items()
        if [seq for seq, _ in items] != list(range(1, truth.last_seq[cid] + 1))
    )
    return {
        "persisted": sum(1 for gid in sent if rows[gid] >= 1),
        "rows": sum(rows.values()),
        "duplicated": sum(1 for gid in sent if rows[gid] > 1),
        "missing": len(sent - rows.keys()),
        "unexpected": len(rows.keys() - sent),
        "conversations": len(truth.messages),
        "conversations_with_seq_gaps": seq_gaps,
    }


def assert_persisted_exactly_once(counts: Json, sent: int) -> None:
    assert counts["persisted"] == counts["rows"] == sent, counts
    assert counts["duplicated"] == counts["missing"] == counts["unexpected"] == 0, counts
    assert counts["conversations_with_seq_gaps"] == 0, counts


def report(test: str, **sections: Json | str | int | float) -> None:
    """One block per test on stdout (`pytest -s` shows it)."""
    lines = [f"[{test}]"] + [f"  {name}: {value}" for name, value in sections.items()]
    print("\n".join(lines), flush=True)
