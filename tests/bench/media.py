"""`just bench-media`: webhook acknowledgement latency with and without a saturated media worker in the same
run, and images processed per second. Prints figures with ✓/✗ against the goals; exits 0 either way
(timings on shared machines are noisy).

    uv run python -m tests.bench.media [--quick] [--seconds 15] [--images 320] [--senders 16] [--rate R]
                                       [--media-workers 1] [--media-concurrency 4] [--worker-nice 0]
                                       [--poll-delay S] [--drain-limit 40]

One API process (uvicorn, as in the other benchmarks) with MEDIA_STORAGE_URL a file:// temp directory:
  setup  the media worker(s) (`python -m arq app.workers.MediaWorkerSettings`, as `just worker-media`)
         start with the API and are paused (SIGSTOP) once they poll their empty queue; then image webhooks
         (Evolution v2 `messages.upsert` with the JPEG inline in base64: 1600x1200, ~350 KB, each made
         distinct by a JPEG comment segment, and every 10th repeating an earlier file to show dedupe) are
         posted through the API: their jobs wait in the queue.
  A      baseline: text webhooks for `--seconds`, from `--senders` closed-loop senders as in bench-ingest
         (or `--rate` webhooks/s, open loop, latency counted from each request's scheduled time).
  B      the worker(s) resume (SIGCONT) on that backlog; once the first image is ready the same text load
         runs again. Goal: ack p99 B/A <= 1.2x. The queue must still hold jobs at the end of B (saturated
         all along).
  A'     the worker paused (SIGSTOP: no CPU, nothing lost) and the text load a third time, so the drift
         of a shared machine between phases shows next to the ratio.
  drain  the worker resumed (SIGCONT), alone, until the backlog is done or `--drain-limit`.
Images/s: media rows that turned ready within B (under the text load) and within the drain (alone).
Checks: processings == 1 for every ready row; one stored original per distinct file.

`--poll-delay` runs the worker with MediaWorkerSettings but arq's poll_delay changed (`TunedMediaWorker
Settings` below): arq starts at most max_jobs jobs per poll, so with jobs shorter than its 0.5 s default a
worker runs at most MEDIA_CONCURRENCY / 0.5 s jobs per second, whatever the CPU.

DATABASE_URL and REDIS_URL come from the environment (`just` starts throw-away servers); the run works in a
scratch database, a Redis key prefix of its own and temp directories, all removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import signal
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
from arq.constants import health_check_key_suffix
from PIL import Image, ImageFilter
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.config import MediaSettings, Settings
from app.lib.jobs import media_queue_name
from tests.kit import runner
from tests.kit.clients import HttpConnection
from tests.kit.data import env_for, evolution_body, fixture_for, make_settings
from tests.kit.databases import plain_dsn
from tests.kit.factories import create_tenant
from tests.kit.measure import cpu_seconds, machine_jiffies, percentile_ms, quiet_gc
from tests.kit.processes import PRODUCTION_WS_ARGS, ArqWorker, api_processes

GATEWAY = "evolution"
IMAGE_SIZE = (1600, 1200)  # 1.9 MP, the fixture's declared size: a phone photo as WhatsApp sends it
DUPLICATE_EVERY = 10  # every 10th image webhook carries the file of an earlier one
IMAGE_CHATS = 20  # image messages are spread over these chats; the text load uses others
TEXT_CHATS = 500  # as bench-ingest
PRELOAD_SENDERS = 4
GOAL_RATIO = 1.2
NOISY_REST_CORES = 0.5  # CPU beyond this run's processes (Redis, the host, neighbours) above which...
NOISY_DRIFT = 1.5  # ...or A vs A' p99 apart by more than this, the ratio is flagged as unreliable
ARQ_POLL_DELAY = 0.5  # arq's default, which MediaWorkerSettings keeps
WORKER_SETTINGS = "app.workers.MediaWorkerSettings"
TUNED_SETTINGS = "tests.bench.media.TunedMediaWorkerSettings"
_POLL_DELAY_ENV = "MEDIA_BENCH_POLL_DELAY"
_B64, _ID, _JID = "@@B64@@", "@@ID@@", "@@JID@@"


def __getattr__(name: str) -> Any:
    """`arq tests.bench.media.TunedMediaWorkerSettings` (--poll-delay): the media worker's settings with
    another poll delay. Built on first access, in the worker process only: app.workers reads its settings
    from the environment at import."""
    if name == "TunedMediaWorkerSettings":
        from app.workers import MediaWorkerSettings

        # arq reads a settings class's own __dict__ (nothing inherited), or a dict: this is the dict.
        return {**vars(MediaWorkerSettings), "poll_delay": float(os.environ[_POLL_DELAY_ENV])}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# -- the images -------------------------------------------------------------------------------------------


def _base_jpeg() -> bytes:
    """A photo-like JPEG (gradients and blurred noise): as large, and as costly to decode, as a phone
    picture of this size, not the few KB of a flat colour."""
    gradient = Image.linear_gradient("L").resize(IMAGE_SIZE)
    noise = Image.effect_noise(IMAGE_SIZE, 40)
    mirrored = gradient.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    image = Image.merge("RGB", (gradient, noise, mirrored)).filter(ImageFilter.GaussianBlur(1))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def _variant(base: bytes, n: int) -> bytes:
    """`base` with a COM (comment) segment after SOI: the same pixels and the same work for the worker,
    but bytes and sha256 of its own, without encoding 1.9 MP per image."""
    comment = f"bench image {n}".encode()
    return base[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + base[2:]


@dataclass
class Images:
    base: bytes
    count: int
    shas: set[str] = field(default_factory=set)  # of the files sent

    @staticmethod
    def source_of(i: int) -> int:
        """Which distinct file webhook `i` carries: its own, or for every 10th an earlier one's."""
        return i - DUPLICATE_EVERY // 2 if i % DUPLICATE_EVERY == DUPLICATE_EVERY - 1 else i

    @property
    def distinct(self) -> int:
        return len({self.source_of(i) for i in range(self.count)})

    def bodies(self, instance: Any) -> Iterator[bytes]:
        """The webhooks, each built when taken (a few hundred at ~0.5 MB each are not held at once)."""
        payload: dict[str, Any] = fixture_for(GATEWAY, "v2_messages_upsert_image_base64", instance)
        payload["data"]["key"].update(id=_ID, remoteJid=_JID)
        payload["data"]["message"]["base64"] = _B64
        head, tail = json.dumps(payload).split(_B64)
        for i in range(self.count):
            data = _variant(self.base, self.source_of(i))
            self.shas.add(hashlib.sha256(data).hexdigest())
            jid = f"55118{i % IMAGE_CHATS:08d}@s.whatsapp.net"
            head_i, tail_i = (p.replace(_ID, f"MEDIABENCH{i:06d}").replace(_JID, jid) for p in (head, tail))
            yield head_i.encode() + base64.b64encode(data) + tail_i.encode()


# -- processes and CPU ------------------------------------------------------------------------------------


def _cpu_of(pids: list[int]) -> dict[int, float]:
    """CPU seconds of each process still there."""
    seconds = {}
    for pid in pids:
        with suppress(OSError):
            seconds[pid] = cpu_seconds(pid)
    return seconds


@dataclass
class CpuSample:
    wall: float
    api: float
    workers: float
    client: float
    postgres: dict[int, float]  # per backend of this run's database
    machine_busy: int
    machine_total: int

    @classmethod
    def take(cls, api_pid: int, worker_pids: list[int], postgres_pids: list[int]) -> CpuSample:
        busy, total = machine_jiffies()
        return cls(
            time.perf_counter(),
            cpu_seconds(api_pid),
            sum(_cpu_of(worker_pids).values()),
            time.process_time(),
            _cpu_of(postgres_pids),
            busy,
            total,
        )


@dataclass
class Cpu:
    """CPU used over a phase, in cores (1.0 = one core busy all along)."""

    api: float
    workers: float
    client: float
    postgres: float  # the backends of this run's database (not the server's shared WAL writer etc.)
    machine: float  # the whole host: this run's processes and any neighbour's

    @classmethod
    def between(cls, a: CpuSample, b: CpuSample) -> Cpu:
        wall = b.wall - a.wall
        share = (b.machine_busy - a.machine_busy) / max(b.machine_total - a.machine_total, 1)
        postgres = sum(seconds - a.postgres.get(pid, 0.0) for pid, seconds in b.postgres.items())
        return cls(
            (b.api - a.api) / wall,
            (b.workers - a.workers) / wall,
            (b.client - a.client) / wall,
            postgres / wall,
            share * (os.cpu_count() or 1),
        )

    @property
    def rest(self) -> float:
        """Redis, Postgres's shared processes, the kernel and neighbours: the host beyond the above."""
        return max(self.machine - self.api - self.workers - self.client - self.postgres, 0.0)


# -- the load ---------------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    cpu: Cpu | None = None
    ready: int = 0  # media rows that turned ready within the phase
    ready_bytes: int = 0
    queue_before: int = 0  # jobs in the media queue (arq's sorted set: waiting and running)
    queue_after: int = 0
    pending_after: int = 0  # media rows still pending at the end
    wal_bytes: int = 0  # WAL the server wrote during the phase (all its databases)

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else float("nan")

    def p(self, q: float) -> float:
        return percentile_ms(self.latencies, q)


class TextLoad:
    """Text webhooks, each a new message. Closed loop by default (as bench-ingest): `senders` keep-alive
    connections, each posting the next webhook when the last was answered. With `rate`: open loop, one
    webhook every 1/rate s over up to `senders` connections, latency from its scheduled time (a request
    waiting for a free connection counts that wait)."""

    def __init__(self, port: int, instance: Any, senders: int, rate: float | None) -> None:
        self.port, self.instance, self.senders, self.rate = port, instance, senders, rate
        self.path = f"/api/webhooks/{GATEWAY}/{instance.name}"
        self.headers = {"Content-Type": "application/json", "X-Webhook-Secret": instance.webhook_secret}
        self.chats = [f"55119{n:08d}" for n in range(TEXT_CHATS)]
        self._sent = 0

    def _body(self) -> bytes:
        n = self._sent
        self._sent += 1
        return evolution_body(self.instance.name, f"TEXT{n:08d}", self.chats[n % TEXT_CHATS], f"message {n}")

    async def run(
        self, seconds: float, phase: Phase | None, sample: Callable[[], Awaitable[CpuSample]]
    ) -> None:
        conns = [await HttpConnection.open("127.0.0.1", self.port) for _ in range(self.senders)]
        latencies: list[float] = []
        statuses: dict[int, int] = {}

        async def post(conn: HttpConnection, since: float | None) -> None:
            status, _, elapsed = await conn.post(self.path, self._body(), self.headers)
            latencies.append(elapsed if since is None else time.perf_counter() - since)
            statuses[status] = statuses.get(status, 0) + 1

        async def closed(conn: HttpConnection, deadline: float) -> None:
            while time.perf_counter() < deadline:
                await post(conn, None)

        async def open_loop(start: float, deadline: float, rate: float) -> None:
            free: asyncio.Queue[HttpConnection] = asyncio.Queue()
            for conn in conns:
                free.put_nowait(conn)
            running: set[asyncio.Task[None]] = set()

            async def one(conn: HttpConnection, due: float) -> None:
                try:
                    await post(conn, due)
                finally:
                    free.put_nowait(conn)

            n = 0
            while (due := start + n / rate) < deadline:
                if (delay := due - time.perf_counter()) > 0:
                    await asyncio.sleep(delay)
                task = asyncio.create_task(one(await free.get(), due))
                running.add(task)
                task.add_done_callback(running.discard)
                n += 1
            await asyncio.gather(*running)

        try:
            with quiet_gc():
                before = await sample()
                deadline = before.wall + seconds
                if self.rate:
                    await open_loop(before.wall, deadline, self.rate)
                else:
                    await asyncio.gather(*(closed(c, deadline) for c in conns))
                after = await sample()
        finally:
            for conn in conns:
                await conn.close()
        if phase is not None:
            phase.seconds = after.wall - before.wall
            phase.latencies, phase.statuses = latencies, statuses
            phase.cpu = Cpu.between(before, after)


async def _post_all(
    port: int, path: str, headers: dict[str, str], bodies: Iterator[bytes], senders: int
) -> dict[int, int]:
    statuses: dict[int, int] = {}

    async def sender() -> None:
        conn = await HttpConnection.open("127.0.0.1", port)
        try:
            for body in bodies:  # one shared iterator: each body is built when a sender takes it
                status, _, _ = await conn.post(path, body, headers)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*(sender() for _ in range(senders)))
    return statuses


# -- the run ----------------------------------------------------------------------------------------------


def _settings(database_url: str, storage_url: str, concurrency: int) -> Settings:
    return make_settings(
        database_url,
        key_prefix="crm-bench-media",
        media={"storage_url": storage_url, "concurrency": concurrency},
    )


@dataclass
class Stored:
    """What the run left behind: media rows by state, and the storage directory."""

    ready: int = 0
    failed: int = 0
    pending: int = 0
    ready_bytes: int = 0
    processings_not_one: int = 0
    ready_shas: set[str] = field(default_factory=set)
    unexpected_shas: int = 0  # content hashes among the rows that are not among the files sent
    originals: set[str] = field(default_factory=set)  # the hashes stored originals are named after
    thumbnails: int = 0
    staging_files: int = 0


@dataclass
class Outcome:
    preload_seconds: float = 0.0
    preload_statuses: dict[int, int] = field(default_factory=dict)
    enqueued: int = 0
    distinct_sent: int = 0
    worker_start_s: float = 0.0  # from its start to its first poll of the queue
    first_image_s: float = 0.0  # from its resume on the backlog to the first image ready
    phases: dict[str, Phase] = field(default_factory=dict)
    stored: Stored = field(default_factory=Stored)


class Bench:
    def __init__(
        self, args: argparse.Namespace, database_url: str, settings: Settings, storage: Path
    ) -> None:
        self.args, self.database_url, self.settings, self.storage = args, database_url, settings, storage
        self.queue = media_queue_name(settings.redis.key_prefix)
        self.out = Outcome()
        self.workers: list[ArqWorker] = []

    async def _counts(self, conn: asyncpg.Connection) -> dict[str, int]:
        rows = await conn.fetch("SELECT state::text AS state, count(*) AS n FROM media GROUP BY state")
        return {row["state"]: row["n"] for row in rows}

    async def _ready_between(self, conn: asyncpg.Connection, phase: Phase, start: float, end: float) -> None:
        row = await conn.fetchrow(
            "SELECT count(*) AS n, coalesce(sum(size_bytes), 0) AS bytes FROM media WHERE state = 'ready' "
            "AND processed_at >= to_timestamp($1) AND processed_at < to_timestamp($2)",
            start,
            end,
        )
        assert row is not None
        phase.ready, phase.ready_bytes = int(row["n"]), int(row["bytes"])

    async def run(self) -> Outcome:
        args, settings, out = self.args, self.settings, self.out
        engine = create_async_engine(self.database_url)
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            tenant = await create_tenant(session)
        await engine.dispose()
        instance = tenant.instance(GATEWAY)
        env = env_for(settings)
        if args.poll_delay is not None:
            env[_POLL_DELAY_ENV] = str(args.poll_delay)
        conn = await asyncpg.connect(plain_dsn(self.database_url))
        redis = Redis.from_url(settings.redis.url)
        try:
            with tempfile.TemporaryDirectory(prefix="bench-media-logs-") as logs:
                # The worker(s) start with the API (their imports overlap) and are paused once idle,
                # before any job exists: B resumes them on the backlog.
                settings_path = WORKER_SETTINGS if args.poll_delay is None else TUNED_SETTINGS
                for n in range(args.media_workers):
                    log = Path(logs) / f"worker-{n}.log"
                    self.workers.append(ArqWorker(env, log, settings_path, nice=args.worker_nice))
                images = Images(_base_jpeg(), args.images)  # while the worker imports
                out.distinct_sent = images.distinct
                with api_processes(1, env, extra_args=PRODUCTION_WS_ARGS) as (api,):
                    await self._pause_when_idle(redis)
                    load = TextLoad(api.port, instance, args.senders, args.rate)
                    await self._preload(load, images, conn, redis)
                    await self._phases(load, api.pid, conn, redis)
            out.stored = await self._stored(conn, images)
        finally:
            for worker in self.workers:
                worker.stop()
            media_ids: list[Any] = []
            with suppress(Exception):
                media_ids = [r["id"] for r in await conn.fetch("SELECT id FROM media")]
            await conn.close()
            dropped = await _drop_redis_keys(redis, settings.redis.key_prefix, media_ids)
            await redis.aclose()
            print(f"  cleanup: {dropped:,} Redis keys dropped", flush=True)
        return out

    async def _pause_when_idle(self, redis: Redis) -> None:
        """SIGSTOP each worker once it polls its (still empty) queue: arq sets the health-check key at
        its first poll, after its start-up (imports, pools). The key is the queue's: with several workers
        a slower one may be paused mid start-up, and finishes it when B resumes it."""
        health_key = self.queue + health_check_key_suffix
        started = min(w.started for w in self.workers)
        while not await redis.exists(health_key):
            if not all(w.alive() for w in self.workers) or time.perf_counter() - started > 60:
                raise RuntimeError(f"the media worker did not start:\n{self.workers[0].tail()}")
            await asyncio.sleep(0.05)
        self.out.worker_start_s = time.perf_counter() - started
        for worker in self.workers:
            worker.signal(signal.SIGSTOP)

    async def _preload(self, load: TextLoad, images: Images, conn: asyncpg.Connection, redis: Redis) -> None:
        """The media backlog, posted through the API with no worker running: it waits in the queue."""
        started = time.perf_counter()
        bodies = images.bodies(load.instance)
        statuses = await _post_all(load.port, load.path, load.headers, bodies, PRELOAD_SENDERS)
        self.out.preload_seconds = time.perf_counter() - started
        self.out.preload_statuses = statuses
        self.out.enqueued = int(await redis.zcard(self.queue))
        print(
            f"  preload: {images.count} image webhooks ({images.distinct} distinct files, "
            f"{len(images.base) / 1024:.0f} KB JPEG {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]}) posted in "
            f"{self.out.preload_seconds:.1f} s, statuses {statuses}; "
            f"{self.out.enqueued} jobs in {self.queue}",
            flush=True,
        )
        for table in ("media", "messages", "conversations"):
            await conn.execute(f"VACUUM ANALYZE {table}")

    async def _phases(self, load: TextLoad, api_pid: int, conn: asyncpg.Connection, redis: Redis) -> None:
        args, phases = self.args, self.out.phases

        async def sample() -> CpuSample:
            postgres = await conn.fetch(
                "SELECT pid FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
            return CpuSample.take(api_pid, [w.pid for w in self.workers], [r["pid"] for r in postgres])

        async def measured(key: str, name: str) -> Phase:
            phase = phases[key] = Phase(name)
            phase.queue_before = int(await redis.zcard(self.queue))
            started, lsn = time.time(), await conn.fetchval("SELECT pg_current_wal_lsn()")
            await load.run(args.seconds, phase, sample)
            phase.wal_bytes = int(await conn.fetchval("SELECT pg_current_wal_lsn() - $1::pg_lsn", lsn))
            await self._ready_between(conn, phase, started, time.time())
            phase.queue_after = int(await redis.zcard(self.queue))
            phase.pending_after = (await self._counts(conn)).get("pending", 0)
            print(_phase_line(phase), flush=True)
            return phase

        await load.run(args.warmup, None, sample)  # connections, first requests, the API's caches
        await measured("A", "A  no media work yet")

        # B: the worker(s) resume on the backlog; the load starts once they are storing images.
        started = time.perf_counter()
        for worker in self.workers:
            worker.signal(signal.SIGCONT)
        while not (await self._counts(conn)).get("ready"):
            if not all(w.alive() for w in self.workers) or time.perf_counter() - started > 60:
                raise RuntimeError(f"the media worker processed nothing:\n{self.workers[0].tail()}")
            await asyncio.sleep(0.05)
        self.out.first_image_s = time.perf_counter() - started
        await measured("B", "B  media worker busy")

        # A': the same worker paused, its jobs untouched: the baseline again, after B.
        for worker in self.workers:
            worker.signal(signal.SIGSTOP)
        await asyncio.sleep(0.2)
        await measured("A'", "A' media worker paused")

        # Drain: the worker alone, until the backlog is done or the time limit.
        drain = phases["drain"] = Phase("drain")
        drain.queue_before = int(await redis.zcard(self.queue))
        for worker in self.workers:
            worker.signal(signal.SIGCONT)
        before, started_at = await sample(), time.time()
        while (await self._counts(conn)).get(
            "pending"
        ) and time.perf_counter() - before.wall < args.drain_limit:
            await asyncio.sleep(0.1)
        after = await sample()
        drain.seconds, drain.cpu = after.wall - before.wall, Cpu.between(before, after)
        await self._ready_between(conn, drain, started_at, time.time() + 1)
        drain.queue_after = int(await redis.zcard(self.queue))
        for worker in self.workers:
            worker.stop()  # a job still running is cancelled: its row stays pending
        drain.pending_after = (await self._counts(conn)).get("pending", 0)

    async def _stored(self, conn: asyncpg.Connection, images: Images) -> Stored:
        counts = await self._counts(conn)
        row = await conn.fetchrow(
            "SELECT count(*) FILTER (WHERE processings <> 1) AS not_one, "
            "coalesce(sum(size_bytes), 0) AS bytes FROM media WHERE state = 'ready'"
        )
        assert row is not None
        ready_shas = {
            r["content_sha256"]
            for r in await conn.fetch("SELECT DISTINCT content_sha256 FROM media WHERE state = 'ready'")
        }
        all_shas = {
            r["content_sha256"]
            for r in await conn.fetch(
                "SELECT DISTINCT content_sha256 FROM media WHERE content_sha256 IS NOT NULL"
            )
        }
        files = [p for p in self.storage.rglob("*") if p.is_file()]
        staging = [p for p in files if "#" in p.name]
        top = len(self.storage.parts)
        return Stored(
            ready=counts.get("ready", 0),
            failed=counts.get("failed", 0),
            pending=counts.get("pending", 0),
            ready_bytes=int(row["bytes"]),
            processings_not_one=int(row["not_one"]),
            ready_shas=ready_shas,
            unexpected_shas=len(all_shas - images.shas),
            originals={p.name for p in files if p.parts[top] == "originals" and p not in staging},
            thumbnails=sum(1 for p in files if p.parts[top] == "thumbnails" and p not in staging),
            staging_files=len(staging),
        )


async def _drop_redis_keys(redis: Redis, prefix: str, media_ids: list[Any]) -> int:
    """This run's keys: those under its prefix, arq's keys of its cron jobs (named after its queue), and
    arq's job, result, in-progress and retry keys of its media jobs (`process_media:{id}`, global names)."""
    keys: list[bytes | str] = []
    for pattern in (f"{prefix}:*", f"arq:*:cron:{prefix}:*"):
        keys += [key async for key in redis.scan_iter(match=pattern, count=1000)]
    for media_id in media_ids:
        keys += [f"arq:{kind}:process_media:{media_id}" for kind in ("job", "result", "in-progress", "retry")]
    dropped = 0
    for at in range(0, len(keys), 1000):
        dropped += int(await redis.unlink(*keys[at : at + 1000]))
    return dropped


# -- the report -------------------------------------------------------------------------------------------


def _cpu_line(cpu: Cpu | None) -> str:
    if cpu is None:
        return ""
    return (
        f"CPU: API {cpu.api:.0%}, media worker {cpu.workers:.0%}, Postgres (this DB) {cpu.postgres:.0%}, "
        f"client {cpu.client:.0%}, rest (Redis, host, neighbours) {cpu.rest:.0%}; "
        f"host {cpu.machine:.2f} of {os.cpu_count()} cores busy"
    )


def _phase_line(phase: Phase) -> str:
    return (
        f"  {phase.name:<24} {phase.rate:5,.0f} webhooks/s  ack p50 {phase.p(50):6.2f} ms  "
        f"p99 {phase.p(99):6.2f} ms   ({len(phase.latencies):,} in {phase.seconds:.1f} s, statuses "
        f"{phase.statuses}; media queue {phase.queue_before} -> {phase.queue_after}, "
        f"{phase.ready} images ready, WAL {phase.wal_bytes / phase.seconds / 2**20:.1f} MiB/s)\n"
        f"{' ' * 27}{_cpu_line(phase.cpu)}"
    )


def _per_s(n: int, seconds: float) -> float:
    return n / seconds if seconds else float("nan")


def _kb(total: int, n: int) -> str:
    return f"{total / n / 1024:.0f} KB" if n else "-"


def _in_flight(args: argparse.Namespace) -> int:
    return int(args.media_workers * args.media_concurrency)


def _print_outcome(args: argparse.Namespace, out: Outcome) -> None:
    b, drain, st = out.phases["B"], out.phases["drain"], out.stored
    print(
        f"  media worker(s) polling {out.worker_start_s:.1f} s after start (then paused), storing images "
        f"{out.first_image_s:.1f} s after resuming on the backlog; B began with "
        f"{b.queue_before} and ended with {b.queue_after} jobs queued ({b.pending_after} media pending)"
    )
    print(
        f"  images during B (with the text load): {b.ready} ready in {b.seconds:.1f} s = "
        f"{_per_s(b.ready, b.seconds):.1f} images/s, {_kb(b.ready_bytes, b.ready)} average"
    )
    print(
        f"  drain (worker alone): {drain.ready} ready in {drain.seconds:.1f} s = "
        f"{_per_s(drain.ready, drain.seconds):.1f} images/s; {drain.pending_after} left pending "
        f"(limit {args.drain_limit:g} s)\n    {_cpu_line(drain.cpu)}"
    )
    print(
        f"  media rows: {st.ready} ready, {st.failed} failed, {st.pending} pending of {args.images}; "
        f"{_kb(st.ready_bytes, st.ready)} per ready image; processings != 1: {st.processings_not_one}; "
        f"hashes not among the files sent: {st.unexpected_shas}"
    )
    print(
        f"  storage: {len(st.originals)} originals, {st.thumbnails} thumbnails, {st.staging_files} staging "
        f"files; distinct files among ready rows {len(st.ready_shas)}, among all sent {out.distinct_sent}"
    )


def _noise(a: Phase, b: Phase, a2: Phase) -> str:
    """A warning when the ratio says more about the machine than about the worker."""
    neighbours = max((p.cpu.rest for p in (a, b, a2) if p.cpu), default=0.0)
    drift = max(a.p(99), a2.p(99)) / min(a.p(99), a2.p(99))
    if neighbours <= NOISY_REST_CORES and drift <= NOISY_DRIFT:
        return ""
    return (
        f"  UNRELIABLE: other processes used up to {neighbours:.2f} cores, A and A' p99 differ "
        f"{drift:.2f}x; rerun on a quieter machine"
    )


def _print_summary(args: argparse.Namespace, out: Outcome) -> None:
    a, b, a2 = out.phases["A"], out.phases["B"], out.phases["A'"]
    st = out.stored
    ratio = b.p(99) / a.p(99)
    drained = st.pending == 0
    # Every ready row's file stored once; beyond those, only files of jobs cut off when the worker stopped.
    extra = st.originals - st.ready_shas
    originals_ok = st.ready_shas <= st.originals and (
        len(st.originals) == out.distinct_sent if drained else len(extra) <= _in_flight(args)
    )
    statuses = [s for p in (a, b, a2) for s in p.statuses] + list(out.preload_statuses)
    b_cpu = b.cpu or Cpu(0, 0, 0, 0, 0)
    niced = f", worker under nice -n {args.worker_nice}" if args.worker_nice else ""
    load = f"open loop {args.rate:g}/s" if args.rate else f"{args.senders} closed-loop senders"
    # arq starts at most max_jobs jobs per poll of the queue, so with jobs shorter than the poll delay
    poll_delay = ARQ_POLL_DELAY if args.poll_delay is None else args.poll_delay
    rows = [
        (
            ratio <= GOAL_RATIO,
            f"ingest ack p99 B/A <= {GOAL_RATIO}x",
            f"{ratio:.2f}x  ({b.p(99):.2f} vs {a.p(99):.2f} ms; p50 {b.p(50):.2f} vs {a.p(50):.2f} ms; "
            f"{b.rate:,.0f} vs {a.rate:,.0f} webhooks/s, {load}{niced}; A' after B: p99 "
            f"{a2.p(99):.2f} ms, B/A' {b.p(99) / a2.p(99):.2f}x)" + _noise(a, b, a2),
        ),
        (
            b.queue_after > 0 and b.pending_after > 0,
            "media worker saturated all through B",
            f"{b.queue_after} jobs still queued at B's end; CPU in B: worker {b_cpu.workers:.0%}, "
            f"API {b_cpu.api:.0%}, Postgres {b_cpu.postgres:.0%}, rest {b_cpu.rest:.0%}",
        ),
        (
            True,
            "images processed per second",
            f"{_per_s(b.ready, b.seconds):.1f}/s with the text load, "
            f"{_per_s(out.phases['drain'].ready, out.phases['drain'].seconds):.1f}/s alone "
            f"({args.media_workers} worker x MEDIA_CONCURRENCY={args.media_concurrency}, arq poll_delay "
            f"{poll_delay:g} s: at most {_in_flight(args) / poll_delay:.0f} jobs/s); "
            f"{_kb(st.ready_bytes, st.ready)} per image",
        ),
        (
            st.processings_not_one == 0 and st.failed == 0 and st.unexpected_shas == 0,
            "every ready image processed once",
            f"{st.ready} ready, processings != 1: {st.processings_not_one}, failed {st.failed}",
        ),
        (
            originals_ok,
            "one stored original per distinct file",
            f"{len(st.originals)} originals, {len(st.ready_shas)} distinct files among {st.ready} ready rows"
            + (
                f" (all {out.distinct_sent} distinct files sent)"
                if drained
                else f"; {st.pending} not drained, {len(extra)} originals of jobs cut off by the stop"
            ),
        ),
        (
            all(200 <= s < 300 for s in statuses),
            "every webhook acknowledged 2xx",
            f"A {a.statuses}, B {b.statuses}, A' {a2.statuses}, images {out.preload_statuses}",
        ),
    ]
    print("summary")
    for ok, goal, figure in rows:
        print(f"  {'✓' if ok else '✗'} {goal:<38} {figure}")


async def run(args: argparse.Namespace, database_url: str) -> None:
    total_started = time.perf_counter()
    load = (
        f"open loop at {args.rate:g} text webhooks/s over up to {args.senders} connections"
        if args.rate
        else f"{args.senders} closed-loop text senders"
    )
    tuned = "" if args.poll_delay is None else f", arq poll_delay {args.poll_delay:g} s (--poll-delay)"
    nice = f", started under nice -n {args.worker_nice}" if args.worker_nice else ", not niced"
    print(
        f"media benchmark: 1 API process (uvicorn, 1 worker), {args.media_workers} media worker process(es) "
        f"(arq, MEDIA_CONCURRENCY={args.media_concurrency}{tuned}{nice}); {os.cpu_count()} CPUs shared by "
        f"client, API, worker, Postgres and Redis; {load}, {args.seconds:g} s per phase"
        + ("  [--quick]" if args.quick else ""),
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-media-storage-") as storage:
        settings = _settings(database_url, Path(storage).resolve().as_uri(), args.media_concurrency)
        out = await Bench(args, database_url, settings, Path(storage).resolve()).run()
        _print_outcome(args, out)
    print(f"  total {time.perf_counter() - total_started:.0f} s")
    _print_summary(args, out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~30 s: 4 s phases, 100 images")
    parser.add_argument("--seconds", type=float, default=None, help="per phase (default 15; quick 4)")
    parser.add_argument("--images", type=int, default=None, help="image webhooks (default 320; quick 100)")
    parser.add_argument("--senders", type=int, default=16, help="text senders (connections), as bench-ingest")
    parser.add_argument(
        "--rate", type=float, default=None, help="open loop: text webhooks/s (default: closed)"
    )
    parser.add_argument("--warmup", type=float, default=None, help="unmeasured load before A (2 s; quick 1)")
    parser.add_argument("--media-workers", type=int, default=1, help="media worker processes")
    parser.add_argument("--media-concurrency", type=int, default=MediaSettings.concurrency)
    parser.add_argument("--worker-nice", type=int, default=0, help="start the media worker(s) under nice -n")
    parser.add_argument("--poll-delay", type=float, default=None, help="the worker's arq poll_delay (0.5)")
    parser.add_argument("--drain-limit", type=float, default=None, help="seconds (default 40; quick 5)")
    runner.add_timeout(parser, 600.0)
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (4.0 if quick else 15.0)
    args.images = args.images or (100 if quick else 320)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if quick else 2.0)
    args.drain_limit = args.drain_limit if args.drain_limit is not None else (5.0 if quick else 40.0)

    runner.run(run, args, "crm_bench_media", uvloop=True)


if __name__ == "__main__":
    main()
