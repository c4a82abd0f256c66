"""The seed's table, measured: N agents either poll (the old design: the inbox and their open conversation
every 3 s) or hold one WebSocket subscribed to their open conversation, against one API process, with the
same message traffic (webhooks at a fixed rate, round robin over the team's inbox) in both designs.

Counted per run, from the client side: the requests the server answered (polling: the GETs; WebSocket: each
agent's first load of the inbox and its conversation, the upgrade, the `subscribe` frame, and the pong to
each protocol ping once connected), the frames delivered, and how long a new message took to show in each
agent's inbox (webhook POST start to the poll response that has it, or to its `conversation.updated`
frame); from the server side: its CPU seconds (its threads' run time from /proc) and the SQL statements it
counted (/stats).

Baselines in the same run: the same polling agents against a raw ASGI app answering the same bytes (the
least any Python server pays per poll), and the same WebSocket agents against the minimal Redis→WebSocket
relay of `tests.kit.ws_relay`, fed the same frames at the same rate; and the webhook traffic with no
agent at all (what the API spends on ingest alone).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from tests.bench.world import (
    INBOX_PATH,
    MARK,
    PAGE_PATH,
    PREVIEW_MARK,
    World,
    body_text,
    find_key,
    find_numbers,
)
from tests.kit.clients import HttpConnection
from tests.kit.measure import cpu_seconds_fine as cpu_seconds
from tests.kit.measure import percentile_ms, raise_fd_limit
from tests.kit.processes import PRODUCTION_WS_ARGS, ApiProcess, raw_server, spawned, wait_ready
from tests.kit.ws_relay import relay_processes

POLL_S = 3.0  # the old frontend's interval
HEARTBEAT_S = float(
    PRODUCTION_WS_ARGS[PRODUCTION_WS_ARGS.index("--ws-ping-interval") + 1]
)  # pings per socket
_PREVIEW_MARK_STR = PREVIEW_MARK.decode()
_LAST_SEQ = b'"last_seq":'
# The seed's claims (README of the seed): requests per minute at 10 / 100 / 1,000 users.
SEED_POLLING_PER_USER = 100
SEED_WEBSOCKET = {10: 50, 100: 200, 1000: 1000}


# -- the message traffic ---------------------------------------------------------------------------------


class Traffic:
    """Messages at `rate` per second until stopped, each numbered (world.numbers) and timed from its start."""

    def __init__(self, world: World, rate: float, send: Callable[[int], Awaitable[int]]) -> None:
        self.world, self.rate, self._send = world, rate, send
        self.t0: dict[int, float] = {}
        self.acks: list[float] = []
        self.statuses: dict[int, int] = {}
        self.failures = 0
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, start: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        k = 0
        while not self._stop.is_set():
            delay = start + k / self.rate - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), delay)
                continue
            (number,) = self.world.numbers(1)
            task = asyncio.create_task(self._one(number))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            k += 1
        if tasks:
            await asyncio.wait(tasks, timeout=30)

    async def _one(self, number: int) -> None:
        self.t0[number] = started = time.perf_counter()
        try:
            status = await self._send(number)
        except Exception:
            self.failures += 1
            return
        self.acks.append(time.perf_counter() - started)
        self.statuses[status] = self.statuses.get(status, 0) + 1


class WebhookSender:
    """Posts message `n` to the team's conversation n % count through the API, as the gateway would."""

    def __init__(self, world: World, port: int) -> None:
        self.world, self.port = world, port
        self.pool: list[HttpConnection] = []

    async def __call__(self, number: int) -> int:
        conn = self.pool.pop() if self.pool else await HttpConnection.open("127.0.0.1", self.port)
        chat = number % self.world.conversation_count
        status, _, _ = await conn.post(*self.world.webhook(chat, f"SUITE-{number:08d}", body_text(number)))
        self.pool.append(conn)
        return status

    async def close(self) -> None:
        for conn in self.pool:
            with contextlib.suppress(Exception):
                await conn.close()
        self.pool.clear()


class RelayPublisher:
    """What the API publishes for message `n`, straight into the relay's channel: `message.created` to the
    message's room and `conversation.updated` once to every socket (each socket is in one room)."""

    def __init__(self, world: World, channel: str, rooms: list[str], frames: dict[str, str]) -> None:
        self.world, self.channel, self.rooms = world, channel, sorted(set(rooms))
        self.created, self.updated = (
            _template(frames, "message.created"),
            _template(frames, "conversation.updated"),
        )
        self.redis = Redis.from_url(os.environ["REDIS_URL"])

    async def __call__(self, number: int) -> int:
        room = self.world.conversations[number % self.world.conversation_count]
        marker = f"{MARK}{number:07d}"
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.publish(self.channel, f"{room}\n{self.created[0]}{marker}{self.created[1]}")
            for target in self.rooms:
                pipe.publish(self.channel, f"{target}\n{self.updated[0]}{marker}{self.updated[1]}")
            await pipe.execute()
        return 200

    async def close(self) -> None:
        await self.redis.aclose()


def _template(frames: dict[str, str], kind: str) -> tuple[str, str]:
    """A frame the API sent, split around its message number (fallback: a small synthetic frame)."""
    sample = frames.get(kind)
    if sample is not None:
        at = sample.find(MARK)
        if at >= 0:
            return sample[:at], sample[at + len(MARK) + 7 :]
    if kind == "conversation.updated":
        return '{"type":"conversation.updated","conversation":{"last_message_preview":"', '"}}'
    return '{"type":"message.created","message":{"body":"', '"}}'


# -- polling agents --------------------------------------------------------------------------------------


@dataclass
class PollCounts:
    requests: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    reconnects: int = 0
    seen: list[float] = field(default_factory=list)  # per (agent, message): webhook start -> in a poll

    def answered(self, status: int, elapsed: float) -> None:
        self.requests += 1
        self.statuses[status] = self.statuses.get(status, 0) + 1
        self.latencies.append(elapsed)


class PollingAgent:
    """One browser tab of the old design: GET the inbox, then the open conversation, every 3 s."""

    def __init__(self, port: int, token: str, conversation: str, counts: PollCounts) -> None:
        host = f"127.0.0.1:{port}"
        headers = {"authorization": f"Bearer {token}"}
        self.port, self.counts = port, counts
        self.inbox = HttpConnection.request(host, INBOX_PATH, headers)
        self.page = HttpConnection.request(host, PAGE_PATH.format(conversation), headers)
        self.conn: HttpConnection | None = None

    async def open(self) -> None:
        self.conn = await HttpConnection.open("127.0.0.1", self.port)

    async def _get(self, request: bytes) -> bytes:
        for attempt in (0, 1):  # a keep-alive connection the server closed: reopen once, as a browser does
            try:
                if self.conn is None:
                    await self.open()
                assert self.conn is not None
                status, body, elapsed = await self.conn.get(request)
            except (OSError, asyncio.IncompleteReadError, ValueError):
                await self.close()
                if attempt:
                    self.counts.errors += 1
                    return b""
                self.counts.reconnects += 1
                continue
            self.counts.answered(status, elapsed)
            return body
        return b""

    async def run(self, start: float, end: float, t0: dict[int, float], offset: float) -> None:
        top, first_poll = -1, math.inf
        k = 0
        while (due := start + offset + k * POLL_S) < end:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            first_poll = min(first_poll, time.perf_counter())
            inbox = await self._get(self.inbox)
            await self._get(self.page)
            now = time.perf_counter()
            numbers = find_numbers(inbox, PREVIEW_MARK)
            for n in numbers:  # new in this inbox, and posted since this tab was opened
                if n > top and t0.get(n, -math.inf) >= first_poll:
                    self.counts.seen.append(now - t0[n])
            top = max([top, *numbers])
            k += 1

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


# -- WebSocket agents ------------------------------------------------------------------------------------


class CountingConnection(ClientConnection):
    """websockets' client connection, counting the protocol pings it answers (each is one pong sent)."""

    pings = 0

    def process_event(self, event: Any) -> None:
        if isinstance(event, Frame) and event.opcode is Opcode.PING:
            CountingConnection.pings += 1
        super().process_event(event)


@dataclass
class WsCounts:
    http: PollCounts = field(default_factory=PollCounts)  # each agent's first load, before its socket
    upgrades: int = 0
    client_frames: int = 0  # frames the clients sent (subscribe)
    subscribed: int = 0
    failed: int = 0
    lost: int = 0  # sockets the server closed
    frames: dict[str, int] = field(default_factory=dict)
    seen: list[float] = field(default_factory=list)  # per (agent, message): webhook start -> its frame
    samples: dict[str, str] = field(default_factory=dict)

    def on_frame(self, text: str, now: float, joined: float, t0: dict[int, float]) -> None:
        kind = _kind(text)
        self.frames[kind] = self.frames.get(kind, 0) + 1
        if kind == "conversation.updated":
            for n in find_numbers(text, _PREVIEW_MARK_STR):
                if t0.get(n, -math.inf) >= joined:
                    self.seen.append(now - t0[n])
        if kind not in self.samples and MARK in text:
            self.samples[kind] = text


def _kind(text: str) -> str:
    if text.startswith('{"type":"'):  # msgspec writes the tag first, with no space
        return text[9 : text.find('"', 9)]
    kind = json.loads(text).get("type")  # the relay's own frames (json.dumps)
    return kind if isinstance(kind, str) else "?"


async def _recv_until(conn: ClientConnection, wanted: str, counts: WsCounts) -> None:
    async with asyncio.timeout(60):
        while True:
            text = await conn.recv()
            text = text if isinstance(text, str) else text.decode()
            kind = _kind(text)
            if kind == wanted:
                return
            counts.frames[kind] = counts.frames.get(kind, 0) + 1
            if kind in ("error", "resync"):
                raise RuntimeError(f"server answered {text[:200]}")


class WebSocketAgent:
    """One browser tab of the new design: load the inbox and the open conversation once, then one socket
    subscribed to that conversation (after the seq it has), reading every frame."""

    def __init__(self, url: str, conversation: str, counts: WsCounts, http: tuple[int, str] | None) -> None:
        self.url, self.conversation, self.counts, self.http = url, conversation, counts, http
        self.conn: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None

    async def start(self, at: float, t0: dict[int, float]) -> None:
        await asyncio.sleep(max(0.0, at - time.perf_counter()))
        after_seq = 0
        try:
            if self.http is not None:
                port, token = self.http
                first = PollingAgent(port, token, self.conversation, self.counts.http)
                await first._get(first.inbox)
                page = await first._get(first.page)
                await first.close()
                at_seq = page.rfind(_LAST_SEQ)
                if at_seq >= 0:
                    digits = page[at_seq + len(_LAST_SEQ) :].split(b",", 1)[0].split(b"}", 1)[0]
                    after_seq = int(digits)
            self.conn = await connect(
                self.url,
                proxy=None,
                compression=None,
                open_timeout=60,
                close_timeout=2,
                create_connection=CountingConnection,
            )
            self.counts.upgrades += 1
            await _recv_until(self.conn, "ready", self.counts)
            subscribe = {"type": "subscribe", "conversation_id": self.conversation, "after_seq": after_seq}
            await self.conn.send(json.dumps(subscribe))
            self.counts.client_frames += 1
            await _recv_until(self.conn, "replay.done", self.counts)
        except (OSError, TimeoutError, ConnectionClosed, RuntimeError):
            self.counts.failed += 1
            return
        self.counts.subscribed += 1
        self.reader = asyncio.create_task(self._read(self.conn, time.perf_counter(), t0))

    async def _read(self, conn: ClientConnection, joined: float, t0: dict[int, float]) -> None:
        on_frame, clock = self.counts.on_frame, time.perf_counter
        try:
            async for text in conn:
                on_frame(text if isinstance(text, str) else text.decode(), clock(), joined, t0)
        except ConnectionClosed:
            pass
        self.counts.lost += 1

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.reader
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()


# -- the runs --------------------------------------------------------------------------------------------


def _ms(samples: list[float], q: float) -> float | None:
    return round(percentile_ms(samples, q), 2) if samples else None


def _per_min(count: float, seconds: float) -> float:
    return count * 60.0 / seconds if seconds > 0 else math.nan


async def _traffic_alone(world: World, api: ApiProcess, rate: float, seconds: float) -> dict[str, Any]:
    sender = WebhookSender(world, api.port)
    traffic = Traffic(world, rate, sender)
    cpu0, wall = cpu_seconds(api.pid), time.perf_counter()
    task = asyncio.create_task(traffic.run(wall))
    await asyncio.sleep(seconds)
    traffic.stop()
    await task
    cpu, wall = cpu_seconds(api.pid) - cpu0, time.perf_counter() - wall
    await sender.close()
    return {
        "seconds": round(wall, 2),
        "webhooks": len(traffic.acks),
        "webhook_statuses": traffic.statuses,
        "cpu_s_per_min": round(_per_min(cpu, wall), 3),
        "ack_p50_ms": _ms(traffic.acks, 50),
        "ack_p99_ms": _ms(traffic.acks, 99),
    }


ServerStats = Callable[[], Awaitable[dict[str, Any]]]


async def _no_stats() -> dict[str, Any]:
    return {}


def _stats_delta(before: dict[str, Any], after: dict[str, Any], seconds: float) -> dict[str, Any]:
    """Server-side counters over a window, per minute (what the API itself counted, from /stats)."""
    return {
        f"server_{key}_per_min": round(_per_min(after[key] - value, seconds))
        for key, value in before.items()
        if isinstance(value, int) and isinstance(after.get(key), int)
    }


async def _polling_run(
    world: World,
    agents: int,
    port: int,
    pid: int,
    window: float,
    traffic: Traffic | None,
    stats: ServerStats = _no_stats,
) -> dict[str, Any]:
    begun = time.perf_counter()
    counts = PollCounts()
    clients = [PollingAgent(port, world.tokens[i], world.open_conversation(i), counts) for i in range(agents)]
    gate = asyncio.Semaphore(100)

    async def opened(client: PollingAgent) -> None:
        async with gate:
            await client.open()

    await asyncio.gather(*(opened(c) for c in clients))  # tabs already open: TCP connects not counted
    stats0 = await stats()
    start = time.perf_counter() + 0.1
    end = start + window
    cpu0 = cpu_seconds(pid)
    traffic_task = asyncio.create_task(traffic.run(start)) if traffic else None
    t0 = traffic.t0 if traffic else {}
    try:
        # Tabs opened at different moments: agent i's polls fall at a random point of the i-th of `agents`
        # equal slices of the interval, so every window counts the same number of polls, give or take one.
        await asyncio.gather(
            *(c.run(start, end, t0, (i + random.random()) * POLL_S / agents) for i, c in enumerate(clients))
        )
        elapsed = time.perf_counter() - start
        cpu = cpu_seconds(pid) - cpu0
    finally:
        if traffic is not None and traffic_task is not None:
            traffic.stop()
            await traffic_task
        await asyncio.gather(*(c.close() for c in clients))
    server = _stats_delta(stats0, await stats(), elapsed)
    return {
        "wall_s": round(time.perf_counter() - begun, 1),
        "agents": agents,
        "window_s": window,
        "requests": counts.requests,
        "requests_per_min": round(_per_min(counts.requests, window)),
        "statuses": counts.statuses,
        "errors": counts.errors,
        "reconnects": counts.reconnects,
        "get_p50_ms": _ms(counts.latencies, 50),
        "get_p99_ms": _ms(counts.latencies, 99),
        "cpu_s": round(cpu, 3),
        "cpu_s_per_min": round(_per_min(cpu, elapsed), 3),
        "seen_p50_ms": _ms(counts.seen, 50),
        "seen_p99_ms": _ms(counts.seen, 99),
        "seen_samples": len(counts.seen),
        **server,
        **(_traffic_figures(traffic) if traffic else {}),
    }


def _traffic_figures(traffic: Traffic) -> dict[str, Any]:
    return {
        "webhooks": len(traffic.acks),
        "webhook_statuses": traffic.statuses,
        "webhook_failures": traffic.failures,
        "ack_p50_ms": _ms(traffic.acks, 50),
        "ack_p99_ms": _ms(traffic.acks, 99),
    }


async def _websocket_run(
    world: World,
    agents: int,
    url_of: Callable[[int], str],
    http_of: Callable[[int], tuple[int, str] | None],
    pid: int,
    window: float,
    traffic: Traffic,
    spread: float,
    stats: ServerStats = _no_stats,
) -> tuple[dict[str, Any], WsCounts]:
    begun = time.perf_counter()
    counts = WsCounts()
    CountingConnection.pings = 0
    clients = [
        WebSocketAgent(url_of(i), world.open_conversation(i), counts, http_of(i)) for i in range(agents)
    ]
    start = time.perf_counter() + 0.1
    cpu0 = cpu_seconds(pid)
    traffic_task = asyncio.create_task(traffic.run(start))
    try:
        await asyncio.gather(
            *(
                c.start(start + (i + random.random()) * spread / agents, traffic.t0)
                for i, c in enumerate(clients)
            )
        )
        stats1 = await stats()  # its own cost falls in the connect phase
        steady_from = time.perf_counter()
        cpu1, frames1, pings1 = cpu_seconds(pid), dict(counts.frames), CountingConnection.pings
        sent1 = counts.client_frames
        await asyncio.sleep(window)
        steady = time.perf_counter() - steady_from
        cpu2, frames2, pings2 = cpu_seconds(pid), dict(counts.frames), CountingConnection.pings
        sent2 = counts.client_frames
    finally:
        traffic.stop()
        await traffic_task
        await asyncio.sleep(0.3)  # the last frames
        lost = counts.lost
        await asyncio.gather(*(c.close() for c in clients))
    server = _stats_delta(stats1, await stats(), steady)
    setup_requests = counts.http.requests + counts.upgrades + sent1
    steady_frames = {k: v - frames1.get(k, 0) for k, v in frames2.items() if v - frames1.get(k, 0)}
    pongs_per_min = counts.subscribed * 60.0 / HEARTBEAT_S  # each open socket answers the server's pings
    steady_requests_per_min = _per_min(sent2 - sent1, steady) + pongs_per_min
    setup_s = steady_from - start
    return {
        "wall_s": round(time.perf_counter() - begun, 1),
        "agents": agents,
        "window_s": window,
        "setup_s": round(setup_s, 2),
        "subscribed": counts.subscribed,
        "failed": counts.failed,
        "closed_by_server": lost,
        "setup_requests": setup_requests,
        "setup_http_statuses": counts.http.statuses,
        "steady_client_frames": sent2 - sent1,
        "pings_counted": pings2 - pings1,
        "pongs_per_min": round(pongs_per_min, 1),
        "steady_requests_per_min": round(steady_requests_per_min),
        "first_minute_requests": round(setup_requests + steady_requests_per_min),
        "frames_per_min": round(_per_min(sum(steady_frames.values()), steady)),
        "frames_by_type_per_min": {k: round(_per_min(v, steady)) for k, v in sorted(steady_frames.items())},
        "setup_cpu_s": round(cpu1 - cpu0, 3),
        "cpu_s_per_min": round(_per_min(cpu2 - cpu1, steady), 3),
        "first_minute_cpu_s": round(cpu1 - cpu0 + _per_min(cpu2 - cpu1, steady), 3),
        "seen_p50_ms": _ms(counts.seen, 50),
        "seen_p99_ms": _ms(counts.seen, 99),
        "seen_samples": len(counts.seen),
        **server,
        **_traffic_figures(traffic),
    }, counts


def _seed_claims(agents: int) -> dict[str, Any]:
    return {
        "polling_requests_per_min": SEED_POLLING_PER_USER * agents,
        "websocket_requests_per_min": SEED_WEBSOCKET.get(agents),
        "scaled": agents not in SEED_WEBSOCKET,
    }


async def run(
    world: World,
    api: ApiProcess,
    agent_counts: list[int],
    window: float,
    baseline_window: float,
    rate: float,
    spread: float = POLL_S,
    ws_window: float | None = None,
) -> dict[str, Any]:
    """Every figure of the section, as a dict for the report. WebSocket agents connect at moments spread
    over `spread` seconds (polling agents always start spread over one poll interval), then are measured
    for `ws_window` seconds (default: `window`; its steady state needs no poll interval to be whole).

    `api` is the suite's API process (maybe still starting: its start-up overlaps the baselines'); the
    team's admin must be a deployment admin on it, to read the process's own counters in /stats."""
    ws_window = ws_window or window
    raise_fd_limit(4 * max(agent_counts) + 1000)
    rows: list[dict[str, Any]] = []
    channel = f"{world.settings.redis.key_prefix}:suite-relay"
    with (
        tempfile.TemporaryDirectory(prefix="bench-suite-poll-") as tmp,
        spawned(
            raw_server(world.env, {INBOX_PATH: Path(tmp) / "inbox.json", "": Path(tmp) / "page.json"})
        ) as (raw,),
        relay_processes(1, os.environ["REDIS_URL"], channel) as (relay,),
    ):
        wait_ready(api)
        await world.ensure_conversations(api.port)
        alone = await _traffic_alone(world, api, rate, baseline_window)
        # The bytes the raw baseline answers: what the API answers to agent 0's two requests right now.
        async with httpx.AsyncClient(base_url=api.base_url, trust_env=False, timeout=30) as http:
            auth = {"Authorization": f"Bearer {world.tokens[0]}"}
            inbox = (await http.get(INBOX_PATH, headers=auth)).raise_for_status().content
            page = (await http.get(PAGE_PATH.format(world.open_conversation(0)), headers=auth)).content
        (Path(tmp) / "inbox.json").write_bytes(inbox)
        (Path(tmp) / "page.json").write_bytes(page)
        wait_ready(raw)
        admin = httpx.AsyncClient(
            base_url=api.base_url,
            trust_env=False,
            timeout=30,
            headers={"Authorization": f"Bearer {world.admin_token}"},
        )

        async def server_stats() -> dict[str, Any]:
            try:
                response = await admin.get("/api/whatsapp-optimized/stats")
            except httpx.HTTPError:
                return {}
            doc = response.json() if response.status_code == 200 else {}
            scope = doc.get("process") or doc  # this process's own figures, where /stats gives them
            return {key: find_key(scope, key) for key in ("database_statements", "postgres_loads")}

        try:
            for agents in agent_counts:
                row: dict[str, Any] = {"agents": agents, "seed": _seed_claims(agents)}
                started = time.perf_counter()
                sender = WebhookSender(world, api.port)
                row["polling"] = await _polling_run(
                    world, agents, api.port, api.pid, window, Traffic(world, rate, sender), server_stats
                )
                await sender.close()
                row["polling_raw_asgi"] = await _polling_run(
                    world, agents, raw.port, raw.pid, baseline_window, None
                )
                sender = WebhookSender(world, api.port)
                row["websocket"], counts = await _websocket_run(
                    world,
                    agents,
                    lambda i: f"{api.ws_url}/ws?token={world.tokens[i]}",
                    lambda i: (api.port, world.tokens[i]),
                    api.pid,
                    ws_window,
                    Traffic(world, rate, sender),
                    spread,
                    server_stats,
                )
                await sender.close()
                rooms = [world.open_conversation(i) for i in range(agents)]
                publisher = RelayPublisher(world, channel, rooms, counts.samples)
                row["relay"], _ = await _websocket_run(
                    world,
                    agents,
                    lambda _i: relay.url,
                    lambda _i: None,
                    relay.pid,
                    baseline_window,
                    Traffic(world, rate, publisher),
                    0.0,  # its connect phase is not a figure: all at once
                )
                await publisher.close()
                polling, ws = row["polling"]["requests_per_min"], row["websocket"]
                row["reduction_first_minute_pct"] = _reduction(ws["first_minute_requests"], polling)
                row["reduction_steady_pct"] = _reduction(ws["steady_requests_per_min"], polling)
                rows.append(row)
                runs = ("polling", "polling_raw_asgi", "websocket", "relay")
                took = ", ".join(f"{k} {row[k]['wall_s']:g} s" for k in runs)
                print(f"   {agents} agents in {time.perf_counter() - started:.0f} s ({took})", flush=True)
        finally:
            await admin.aclose()
    return {
        "window_s": window,
        "ws_window_s": ws_window,
        "baseline_window_s": baseline_window,
        "rate_per_s": rate,
        "poll_interval_s": POLL_S,
        "connect_spread_s": spread,
        "heartbeat_s": HEARTBEAT_S,
        "conversations": world.conversation_count,
        "traffic_alone": alone,
        "raw_bytes": {"inbox": len(inbox), "page": len(page)},
        "rows": rows,
    }


def _reduction(ours: float, polling: float) -> float | None:
    return round((1 - ours / polling) * 100, 1) if polling else None
