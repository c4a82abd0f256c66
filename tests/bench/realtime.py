"""`just bench-realtime`: webhook POST start -> `message.created` frame at every agent of the room, p50/p99,
across 2 API processes, next to a minimal Redis -> WebSocket relay measured in the same run; and the
memory one API process spends per idle socket. Prints figures; it passes or fails nothing.

    uv run python -m tests.bench.realtime [--rate 500] [--seconds 6] [--rooms 300] [--agents-per-room 3]
                                          [--orgs N (default: one per room)] [--idle 5000]

Every room is an organisation of its own by default, so a message reaches its room's 3 sockets and no one
else: `conversation.updated` goes to every socket of the org, and with all 900 sockets in one org 500
webhooks/s are 450,000 inbox frames/s, which two cores can neither send nor (the bench client) read; such a
run measures that, not room delivery. `--orgs 100` (9 sockets each) or `--orgs 1` show bigger orgs.

DATABASE_URL and REDIS_URL come from the environment (`just` starts throw-away servers); the run works in a
scratch database and a Redis key prefix of its own. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from uuid import UUID

import asyncpg
import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.config import Settings
from app.domain.accounts.auth import TokenIssuer
from tests.bench.realtime_clients import Recorder, RoomSockets, body_for, drain, paced
from tests.bench.realtime_idle import IdleResult, idle_memory
from tests.bench.realtime_report import ApiStats, print_report
from tests.kit import runner
from tests.kit.clients import HttpConnection
from tests.kit.data import env_for, evolution_body, make_settings
from tests.kit.databases import plain_dsn
from tests.kit.factories import Tenant, create_tenant
from tests.kit.measure import cpu_seconds, machine_jiffies, quiet_gc, raise_fd_limit
from tests.kit.processes import PRODUCTION_WS_ARGS, ApiProcess, api_processes
from tests.kit.ws_relay import relay_processes

HTTP_CONNECTIONS_PER_PROCESS = 16  # to start with; more are opened when all are busy
DRAIN_S = 10.0


def _settings(database_url: str) -> Settings:
    # Subscribing 900 sockets is one frame each, but the limit must never be what is measured.
    return make_settings(database_url, realtime={"frames_per_second": 10_000.0})


class Scenario:
    """Tenants, one conversation per room (made by a first webhook each), and the tokens to watch them."""

    def __init__(self, args: argparse.Namespace, settings: Settings, tenants: list[Tenant]) -> None:
        self.args, self.tenants = args, tenants
        issuer = TokenIssuer(settings.auth)
        self.tokens = [issuer.issue(t.agent) for t in tenants]  # what POST /api/auth/login would return
        self.chats = [f"55119{r:08d}" for r in range(args.rooms)]
        self.rooms: list[str] = []
        self.last_seqs: list[int] = []

    def tenant_of(self, room: int) -> int:
        return room % len(self.tenants)

    def webhook(self, room: int, message_id: str, text: str) -> tuple[str, bytes, dict[str, str]]:
        instance = self.tenants[self.tenant_of(room)].instance("evolution")
        headers = {"Content-Type": "application/json", "X-Webhook-Secret": instance.webhook_secret}
        body = evolution_body(instance.name, message_id, self.chats[room], text)
        return f"/api/webhooks/evolution/{instance.name}", body, headers

    def socket_targets(self, ws_urls: list[str], query: bool) -> list[tuple[str, str, int]]:
        """(url, room, after_seq) per socket. Messages of room r are posted to process r % 2 (see `send`);
        agents alternate starting on the other one, so most deliveries cross processes."""
        targets = []
        for r, room in enumerate(self.rooms):
            for a in range(self.args.agents_per_room):
                url = ws_urls[(r + 1 + a) % len(ws_urls)]
                url += f"/ws?token={self.tokens[self.tenant_of(r)]}" if query else ""
                targets.append((url, room, self.last_seqs[r]))
        return targets


async def _create_rooms(scenario: Scenario, procs: list[ApiProcess], database_url: str) -> None:
    conns = [await HttpConnection.open("127.0.0.1", p.port) for p in procs]
    try:
        for r in range(len(scenario.chats)):
            status, payload, _ = await conns[r % len(conns)].post(*scenario.webhook(r, f"SETUP{r:08d}", "hi"))
            if status != 200:
                raise RuntimeError(f"setup webhook answered {status}: {payload[:300]!r}")
    finally:
        for conn in conns:
            await conn.close()
    db = await asyncpg.connect(plain_dsn(database_url))
    try:
        rows = await db.fetch(
            "SELECT ct.wa_id, c.id, c.last_seq FROM conversations c JOIN contacts ct ON ct.id = c.contact_id"
        )
    finally:
        await db.close()
    by_chat: dict[str, tuple[UUID, int]] = {row["wa_id"]: (row["id"], row["last_seq"]) for row in rows}
    scenario.rooms = [str(by_chat[chat][0]) for chat in scenario.chats]
    scenario.last_seqs = [by_chat[chat][1] for chat in scenario.chats]


async def _api_run(scenario: Scenario, procs: list[ApiProcess], recorder: Recorder) -> ApiStats:
    args = scenario.args
    sockets = RoomSockets(recorder)
    pools: list[asyncio.Queue[HttpConnection]] = []
    stats = ApiStats()
    try:
        await sockets.open_all(scenario.socket_targets([p.ws_url for p in procs], query=True))
        for proc in procs:
            pool: asyncio.Queue[HttpConnection] = asyncio.Queue()
            for _ in range(HTTP_CONNECTIONS_PER_PROCESS):
                stats.connections += 1
                pool.put_nowait(await HttpConnection.open("127.0.0.1", proc.port))
            pools.append(pool)
        requests = [
            scenario.webhook(n % args.rooms, f"RT{n:08d}", body_for(n)) for n in range(recorder.total)
        ]

        async def send(n: int) -> None:
            # A new keep-alive connection when all are busy, as a gateway would open one: waiting for a
            # free one would hide queueing from the latency (coordinated omission).
            proc = (n % args.rooms) % len(pools)
            pool = pools[proc]
            if pool.empty():
                stats.connections += 1
                pool.put_nowait(await HttpConnection.open("127.0.0.1", procs[proc].port))
            conn = pool.get_nowait()
            try:
                recorder.t0[n] = time.perf_counter()
                status, _, _ = await conn.post(*requests[n])
                recorder.acked[n] = time.perf_counter()
                stats.statuses[status] = stats.statuses.get(status, 0) + 1
            finally:
                pool.put_nowait(conn)

        cpu_before, machine_before = [cpu_seconds(p.pid) for p in procs], machine_jiffies()
        wall, bench_cpu = time.perf_counter(), time.process_time()
        with quiet_gc():
            stats.achieved, stats.failures = await paced(recorder, args.rate, send)
            # CPU over the load window only: a long drain (missing frames) would dilute it.
            wall = time.perf_counter() - wall
            stats.api_cpu = [(cpu_seconds(p.pid) - b) / wall for p, b in zip(procs, cpu_before, strict=True)]
            stats.bench_cpu = (time.process_time() - bench_cpu) / wall
            busy, total = (a - b for a, b in zip(machine_jiffies(), machine_before, strict=True))
            stats.machine_busy = busy / total * (os.cpu_count() or 1)
            await drain(recorder, len(recorder.measured()) * args.agents_per_room, DRAIN_S)
        stats.lost = sockets.lost  # before close(): only what the server closed
        return stats
    finally:
        await sockets.close()
        for pool in pools:
            while not pool.empty():
                await pool.get_nowait().close()


async def _relay_run(
    scenario: Scenario, urls: list[str], recorder: Recorder, channel: str, frame: str
) -> float:
    sockets = RoomSockets(recorder)
    await sockets.open_all(scenario.socket_targets(urls, query=False))
    redis = Redis.from_url(os.environ["REDIS_URL"])
    template_body = body_for(0)
    args = scenario.args
    payloads = [
        f"{scenario.rooms[n % args.rooms]}\n{frame.replace(template_body, body_for(n))}".encode()
        for n in range(recorder.total)
    ]

    async def send(n: int) -> None:
        recorder.t0[n] = time.perf_counter()
        await redis.publish(channel, payloads[n])

    try:
        with quiet_gc():
            achieved, _ = await paced(recorder, args.rate, send)
            await drain(recorder, len(recorder.measured()) * args.agents_per_room, DRAIN_S)
    finally:
        await sockets.close()
        await redis.aclose()
    return achieved


async def _idle(args: argparse.Namespace, env: dict[str, str], token: str) -> IdleResult:
    """Memory per idle socket, in a fresh API process of its own."""
    with api_processes(1, env, extra_args=PRODUCTION_WS_ARGS) as (proc,):
        async with httpx.AsyncClient(base_url=proc.base_url, trust_env=False, timeout=10) as http:

            async def server_count() -> int:
                info = await http.get(
                    "/api/whatsapp-optimized/websocket/info", headers={"Authorization": f"Bearer {token}"}
                )
                return int(info.json()["process"]["connections"])

            return await idle_memory(proc.pid, proc.port, token, args.idle, server_count)


def _recorder(args: argparse.Namespace) -> Recorder:
    warm = int(args.rate * args.warmup)
    return Recorder(total=warm + int(args.rate * args.seconds), first=warm)


async def run(args: argparse.Namespace, database_url: str) -> None:
    raise_fd_limit(args.idle + 4 * args.rooms * args.agents_per_room + 1000)
    settings = _settings(database_url)
    engine = create_async_engine(database_url)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        tenants = [await create_tenant(session) for _ in range(args.orgs or args.rooms)]
    await engine.dispose()
    scenario = Scenario(args, settings, tenants)
    # DB pool 20 + 10 overflow per process, as in _settings. The simulated agents of an organisation share
    # its token, so the per-agent socket cap is lifted.
    env = env_for(settings, WS_MAX_SOCKETS_PER_AGENT=str(10**6))

    api = _recorder(args)
    with api_processes(2, env, extra_args=PRODUCTION_WS_ARGS) as procs:
        await _create_rooms(scenario, procs, database_url)
        api_stats = await _api_run(scenario, procs, api)

    relay = _recorder(args)
    # The frame the API sent, so the relay moves the same bytes; its body is swapped per message.
    frame = api.sample_frame or '{"type":"message.created","message":{"body":"rt-0000000"}}'
    frame = frame.replace(frame[frame.find('"body":"rt-') + 8 :][:10], body_for(0))
    channel = f"{settings.redis.key_prefix}:relay"
    with relay_processes(2, os.environ["REDIS_URL"], channel) as relays:
        relay_rate = await _relay_run(scenario, [r.url for r in relays], relay, channel, frame)

    idle = await _idle(args, env, scenario.tokens[0]) if args.idle else None

    print_report(args, api, relay, api_stats, relay_rate, idle)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=500.0, help="webhooks (and relay publishes) per second")
    parser.add_argument("--seconds", type=float, default=6.0, help="measured load duration")
    # Pools grow to size and caches fill in the first ~2 s of load; a server in production is warm.
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before measuring")
    parser.add_argument("--rooms", type=int, default=300)
    parser.add_argument("--agents-per-room", type=int, default=3)
    parser.add_argument(
        "--orgs", type=int, default=0, help="rooms spread over this many organisations (0: one per room)"
    )
    parser.add_argument(
        "--idle", type=int, default=5000, help="idle sockets for the memory figure (0: not measured)"
    )
    runner.add_timeout(parser, 900.0)
    runner.run(run, parser.parse_args(argv), "crm_bench_rt")


if __name__ == "__main__":
    main()
