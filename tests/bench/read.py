"""`just bench-read`: the cached latest page of a conversation (GET /api/whatsapp-optimized/messages/{id})
in req/s and p50/p99, next to a raw ASGI endpoint answering the same bytes (tests.kit.raw_asgi), with the
same load generator and connections in the same run; Postgres statements per cached request; and the API
process's RSS after reading 1k and then 100k more distinct conversations with a fixed L1 budget. Prints
figures; it passes or fails nothing (timings on shared machines are noisy).

    uv run python -m tests.bench.read [--quick] [--seconds 5] [--rounds 2] [--connections 16]
                                      [--conversations 100000] [--budget-mib 8] [--cold]

The RSS part reads each conversation's page from the L2 (Redis), prefilled with the pages the API itself
would store (checked byte for byte on one), so 100k reads take ~50 s instead of ~4 min through Postgres
and the ORM on 2 cores; `--cold` reads them from Postgres instead. L1 holds them either way.

DATABASE_URL and REDIS_URL come from the environment (`just` starts throw-away servers); the run works in a
scratch database and a Redis key prefix of its own. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
import msgspec
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.config import Settings
from app.domain.accounts.auth import TokenIssuer
from app.domain.conversations.cache import CacheKeys
from app.domain.conversations.schemas import MessageOut, MessagePage
from tests.kit import runner
from tests.kit.clients import HttpConnection
from tests.kit.data import env_for, make_settings
from tests.kit.databases import drop_redis_keys, plain_dsn
from tests.kit.factories import create_tenant, seed_conversations
from tests.kit.measure import cpu_seconds, percentile_ms, quiet_gc, rss_kib
from tests.kit.processes import ApiProcess, api_server, raw_server, spawned, wait_ready

HOT_MESSAGES = 120  # more than a page: the latest page is full (50) and says has_more_before
COLD_MESSAGES = 3
WARM_SET = 1_000  # conversations read before the first RSS sample
PAGE_PATH = "/api/whatsapp-optimized/messages/{}"
STATS_PATH = "/api/whatsapp-optimized/stats"
FLOOR_PATH = "/health"  # Litestar with no auth, no cache, no database: the framework's own cost
PAGE_LIMIT = 50  # the API's default page size, the variant the page cache keeps
_MIB = 1024 * 1024

# -- the client -------------------------------------------------------------------------------------------


@dataclass
class Load:
    """What one target answered over its runs."""

    name: str
    pid: int
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    wrong_bodies: int = 0
    server_cpu: float = 0.0  # CPU seconds of the server process
    client_cpu: float = 0.0  # CPU seconds of this process
    runs: list[float] = field(default_factory=list)  # req/s per run

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else float("nan")


async def _hammer(
    port: int, request: bytes, expected: bytes, connections: int, seconds: float, load: Load | None
) -> None:
    """`connections` keep-alive connections, each sending the next request when the last one answered, for
    `seconds` (a closed loop: the figure is throughput at this concurrency, latency includes queueing)."""
    conns = [await HttpConnection.open("127.0.0.1", port) for _ in range(connections)]
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    wrong = 0

    async def worker(conn: HttpConnection, deadline: float) -> None:
        nonlocal wrong
        clock = time.perf_counter
        while clock() < deadline:
            status, body, elapsed = await conn.get(request)
            latencies.append(elapsed)
            statuses[status] = statuses.get(status, 0) + 1
            if body != expected:
                wrong += 1

    try:
        with quiet_gc():
            server_cpu, client_cpu = (cpu_seconds(load.pid) if load else 0.0), time.process_time()
            started = time.perf_counter()
            await asyncio.gather(*(worker(c, started + seconds) for c in conns))
            elapsed = time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()
    if load is None:
        return
    load.requests += len(latencies)
    load.seconds += elapsed
    load.latencies += latencies
    for status, count in statuses.items():
        load.statuses[status] = load.statuses.get(status, 0) + count
    load.wrong_bodies += wrong
    load.server_cpu += cpu_seconds(load.pid) - server_cpu
    load.client_cpu += time.process_time() - client_cpu
    load.runs.append(len(latencies) / elapsed)


async def _read_each(
    port: int, paths: Iterable[str], headers: dict[str, str], concurrency: int
) -> dict[int, int]:
    """GET every path once over `concurrency` keep-alive connections; statuses counted."""
    host = f"127.0.0.1:{port}"
    queue = iter(paths)
    statuses: dict[int, int] = {}

    async def worker() -> None:
        conn = await HttpConnection.open("127.0.0.1", port)
        try:
            for path in queue:
                status, _, _ = await conn.get(HttpConnection.request(host, path, headers))
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


# -- the data ---------------------------------------------------------------------------------------------


async def _prefill_l2(
    database_url: str, settings: Settings, org_id: UUID, conversations: list[UUID]
) -> tuple[float, int, bytes]:
    """Put the latest page of these conversations into the L2 (Redis), as an API process that had read
    them would (tagged with version 0: no write since), so reading them costs this API process a Redis GET
    instead of Postgres. The pages are built from the same schema and encoder as app.domain.conversations
    .reads; the run checks one against what the API itself loads from Postgres.

    Returns (seconds, bytes of pages, the first conversation's page)."""
    started = time.perf_counter()
    keys, encoder = CacheKeys(settings.redis.key_prefix), msgspec.json.Encoder()
    conn = await asyncpg.connect(plain_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT c.id AS cid, c.last_seq, m.id, m.seq, m.gateway_message_id, m.direction, m.type, m.body, "
            "m.status, m.sent_at, m.received_at FROM conversations c "
            "JOIN LATERAL (SELECT * FROM messages m WHERE m.conversation_id = c.id ORDER BY m.seq DESC "
            "LIMIT $2) m ON true WHERE c.id = ANY($1::uuid[]) ORDER BY c.id, m.seq",
            conversations,
            PAGE_LIMIT,
        )
    finally:
        await conn.close()
    pages: dict[UUID, list[asyncpg.Record]] = {}
    for row in rows:
        pages.setdefault(row["cid"], []).append(row)
    redis = Redis.from_url(settings.redis.url)
    total, first = 0, b""
    try:
        pipe = redis.pipeline(transaction=False)
        for n, (cid, page_rows) in enumerate(pages.items(), 1):
            items = [
                MessageOut(
                    id=r["id"],
                    conversation_id=cid,
                    seq=r["seq"],
                    gateway_message_id=r["gateway_message_id"],
                    direction=r["direction"],
                    type=r["type"],
                    body=r["body"],
                    status=r["status"],
                    sent_at=r["sent_at"],
                    received_at=r["received_at"],
                    media=None,  # the seed has no media
                )
                for r in page_rows
            ]
            last_seq = page_rows[0]["last_seq"]
            page = encoder.encode(
                MessagePage(
                    conversation_id=cid,
                    items=items,
                    last_seq=last_seq,
                    has_more_before=items[0].seq > 1,
                    has_more_after=items[-1].seq < last_seq,
                )
            )
            total += len(page)
            first = first or (page if cid == conversations[0] else b"")
            scope = keys.messages_scope(org_id, cid)
            pipe.set(
                keys.page_key(scope, f"latest:{PAGE_LIMIT}"), b"0\n" + page, ex=settings.cache.redis_ttl_s
            )
            if n % 2000 == 0:
                await pipe.execute()
        await pipe.execute()
    finally:
        await redis.aclose()
    return time.perf_counter() - started, total, first


# -- the run ----------------------------------------------------------------------------------------------


def _settings(database_url: str, budget: int) -> Settings:
    # The bench's admin reads the process figures of /stats: it is a deployment admin (factory agents are
    # @example.com).
    return make_settings(
        database_url,
        key_prefix="crm-bench-read",
        auth={"deployment_admins": ["@example.com"]},
        cache={"memory_max_bytes": budget},
    )


@dataclass
class Throughput:
    raw: Load
    api: Load
    floor: Load
    order: list[str]
    statements: int
    hits: int
    redis_hits: int
    live: bool
    page: bytes


@dataclass
class Memory:
    reads: int
    seconds: float
    statuses: dict[int, int]
    rss_kb: int
    cache: dict[str, Any]


@dataclass
class Rss:
    source: str
    baseline_kb: int
    first: Memory
    second: Memory
    full: Memory | None  # just after L1 first filled up, within the second phase


class Bench:
    def __init__(
        self,
        args: argparse.Namespace,
        api: ApiProcess,
        raw: ApiProcess,
        http: httpx.AsyncClient,
        page_file: Path,
    ) -> None:
        self.args, self.api, self.raw, self.http, self.page_file = args, api, raw, http, page_file
        self.headers = {"authorization": str(http.headers["authorization"])}

    async def stats(self) -> dict[str, Any]:
        response = await self.http.get(STATS_PATH)
        response.raise_for_status()
        process: dict[str, Any] = response.json()["process"]
        return process

    async def throughput(self, hot: UUID) -> Throughput:
        args, path = self.args, PAGE_PATH.format(hot)
        live = False
        for _ in range(100):  # the hub subscribes after startup; until then L1 is bypassed
            if live := bool((await self.stats())["cache"]["memory"]["live"]):
                break
            await asyncio.sleep(0.05)
        for _ in range(5):
            response = await self.http.get(path)
            response.raise_for_status()
        page = response.content
        live = live and bool((await self.stats())["cache"]["memory"]["live"])
        self.page_file.write_bytes(page)  # the raw endpoint reads it at its first request
        raw = wait_ready(self.raw)
        loads = {"raw": Load("raw ASGI", raw.pid), "api": Load("cached GET", self.api.pid)}
        ports = {"raw": raw.port, "api": self.api.port}
        requests = {t: HttpConnection.request(f"127.0.0.1:{p}", path, self.headers) for t, p in ports.items()}
        # Unmeasured first (--warmup s each): connections, the servers' first requests, this process's caches.
        for target in ("raw", "api"):
            await _hammer(ports[target], requests[target], page, args.connections, args.warmup, None)
        # /stats itself runs SQL (the org's figures): what one call adds is measured and taken off.
        first = await self.stats()
        before = await self.stats()
        stats_cost = before["database_statements"] - first["database_statements"]
        order: list[str] = []
        for round_ in range(args.rounds):  # ABBA: raw api, api raw, ...: a drifting machine favours neither
            for target in ("raw", "api") if round_ % 2 == 0 else ("api", "raw"):
                order.append(target)
                await _hammer(
                    ports[target], requests[target], page, args.connections, args.seconds, loads[target]
                )
        after = await self.stats()
        raw.terminate()  # idle from here on, but not kept
        floor = Load("/health", self.api.pid)
        health = (await self.http.get(FLOOR_PATH)).content
        request = HttpConnection.request(f"127.0.0.1:{self.api.port}", FLOOR_PATH, self.headers)
        await _hammer(self.api.port, request, health, args.connections, args.seconds, floor)
        m0, m1 = before["cache"], after["cache"]
        return Throughput(
            raw=loads["raw"],
            api=loads["api"],
            floor=floor,
            order=order,
            statements=after["database_statements"] - before["database_statements"] - stats_cost,
            hits=m1["memory"]["hits"] - m0["memory"]["hits"],
            redis_hits=m1["redis"]["hits"] - m0["redis"]["hits"],
            live=live,
            page=page,
        )

    async def read_each(self, ids: list[UUID]) -> Memory:
        started = time.perf_counter()
        paths = (PAGE_PATH.format(i) for i in ids)
        statuses = await _read_each(self.api.port, paths, self.headers, self.args.read_concurrency)
        seconds = time.perf_counter() - started
        await asyncio.sleep(self.args.settle)  # let the last responses' buffers go before sampling
        rss = rss_kib(self.api.pid)
        return Memory(len(ids), seconds, statuses, rss, (await self.stats())["cache"])

    async def rss(self, database_url: str, settings: Settings, org_id: UUID, cold: list[UUID]) -> Rss:
        baseline = rss_kib(self.api.pid)
        if not self.args.cold:
            # What the API loads from Postgres for one conversation, to compare with the prefilled bytes.
            response = await self.http.get(PAGE_PATH.format(cold[0]))
            response.raise_for_status()
            seconds, size, sample = await _prefill_l2(database_url, settings, org_id, cold)
            same = "byte-identical" if sample == response.content else "DIFFERENT (check _prefill_l2)"
            print(
                f"  L2 prefill: {len(cold):,} pages ({_mib(size)}) put in Redis in {seconds:.1f} s; "
                f"{same} to the API's own page of the same conversation",
                flush=True,
            )
        first = await self.read_each(cold[:WARM_SET])
        print(f"  ... read {first.reads:,} conversations in {first.seconds:.1f} s", flush=True)
        rest = cold[WARM_SET:]
        # Also sample once L1 has just filled up: from there on RSS should stay flat, however many are read.
        memory = first.cache["memory"]
        fill = int(memory["max_bytes"] / (memory["bytes"] / max(memory["keys"], 1)) * 1.25)
        full = None
        if fill < len(rest) // 2:
            full = await self.read_each(rest[:fill])
            rest = rest[fill:]
            print(f"  ... read {full.reads:,} more in {full.seconds:.1f} s (L1 full)", flush=True)
        second = await self.read_each(rest)
        if full is not None:  # the figures of the whole second phase
            second.reads += full.reads
            second.seconds += full.seconds
            for status, count in full.statuses.items():
                second.statuses[status] = second.statuses.get(status, 0) + count
        source = "Postgres (--cold)" if self.args.cold else "L2 (Redis)"
        return Rss(source, baseline, first, second, full)


async def run(args: argparse.Namespace, database_url: str) -> None:
    total_started = time.perf_counter()
    budget = int(args.budget_mib * _MIB)
    settings = _settings(database_url, budget)
    engine = create_async_engine(database_url)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        tenant = await create_tenant(session)
    await engine.dispose()
    print(
        f"read benchmark: 1 API process (uvicorn, 1 worker), {os.cpu_count()} CPUs, L1 budget {_mib(budget)} "
        f"(CACHE_MEMORY_MAX_BYTES={budget}), L1 TTL {settings.cache.memory_ttl_s:g} s"
        + ("  [--quick]" if args.quick else ""),
        flush=True,
    )
    started = time.perf_counter()
    hot, cold = await seed_conversations(
        database_url,
        tenant,
        WARM_SET + args.conversations,
        hot_messages=HOT_MESSAGES,
        cold_messages=COLD_MESSAGES,
    )
    print(
        f"  seeded {len(cold):,} conversations x {COLD_MESSAGES} messages + 1 hot conversation x "
        f"{HOT_MESSAGES} messages in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    token = TokenIssuer(settings.auth).issue(tenant.admin)
    env = env_for(settings, CACHE_MEMORY_MAX_BYTES=str(budget))
    try:
        with (
            tempfile.TemporaryDirectory(prefix="bench-read-") as tmp,
            # The raw endpoint starts with the API (their start-ups overlap) and reads the page's bytes,
            # written once the API has answered them, at its first request.
            spawned(api_server(env), raw_server(env, {"": Path(tmp) / "page.json"})) as (api, raw),
        ):
            wait_ready(api)
            async with httpx.AsyncClient(
                base_url=api.base_url,
                headers={"Authorization": f"Bearer {token}"},
                trust_env=False,
                timeout=30,
            ) as http:
                bench = Bench(args, api, raw, http, Path(tmp) / "page.json")
                throughput = await bench.throughput(hot)
                _print_throughput(args, throughput)
                rss = await bench.rss(database_url, settings, tenant.org_id, cold)
                _print_rss(rss)
    finally:
        dropped = await drop_redis_keys(settings.redis.url, settings.redis.key_prefix)
    print(f"  cleanup: {dropped:,} Redis keys dropped; total {time.perf_counter() - total_started:.0f} s")
    _print_summary(args, budget, throughput, rss)


# -- the report -------------------------------------------------------------------------------------------


def _ms(samples: list[float]) -> str:
    return f"p50 {percentile_ms(samples, 50):6.2f} ms  p99 {percentile_ms(samples, 99):6.2f} ms"


def _mib(n: float) -> str:
    return f"{n / _MIB:.1f} MiB"


def _print_throughput(args: argparse.Namespace, tp: Throughput) -> None:
    print(
        f"  hot page: GET {PAGE_PATH.format('{id}')} (latest {PAGE_LIMIT} of {HOT_MESSAGES} messages), "
        f"{len(tp.page):,} bytes; L1 live before the runs: {tp.live}"
    )
    print(
        f"  throughput: {args.connections} keep-alive connections (closed loop), {args.seconds:g} s per run, "
        f"run order {' '.join(tp.order)} after {args.warmup:g} s unmeasured each; same client, headers and "
        "bytes"
    )
    for load in (tp.raw, tp.api, tp.floor):
        runs = ", ".join(f"{r:,.0f}" for r in load.runs)
        print(
            f"    {load.name:<10} {load.rate:7,.0f} req/s  {_ms(load.latencies)}   "
            f"({load.requests:,} requests, runs {runs}; statuses {load.statuses}, wrong bodies "
            f"{load.wrong_bodies}; server CPU {load.server_cpu / load.seconds:.0%} = "
            f"{load.server_cpu / load.requests * 1e6:.0f} µs/request, "
            f"client CPU {load.client_cpu / load.seconds:.0%})"
        )
    print(
        f"    ratio cached/raw = {tp.api.rate / tp.raw.rate:.2f}   (goal >= 0.5; Litestar /health with no "
        f"auth, cache or database, after the pairs: {tp.floor.rate / tp.raw.rate:.2f} of raw)"
    )
    per_request = tp.statements / tp.api.requests if tp.api.requests else float("nan")
    print(
        f"  postgres statements per cached request: {per_request:.3f}   ({tp.statements} statements over "
        f"{tp.api.requests:,} requests; L1 hits +{tp.hits:,}, L2 hits +{tp.redis_hits:,})"
    )
    if tp.statements:
        print(f"  WARNING: the cached runs sent {tp.statements} SQL statements to Postgres; expected 0")


def _print_rss(rss: Rss) -> None:
    first, second, full = rss.first, rss.second, rss.full
    samples = [(f"{first.reads:,}", first), (f"{second.reads:,} more", second)]
    if full is not None:
        samples.insert(1, (f"{full.reads:,} more", full))
    for label, m in samples:
        mem = m.cache["memory"]
        print(
            f"  RSS after reading {label:<14} {m.rss_kb / 1024:6.1f} MiB   L1 {mem['keys']:,} keys, "
            f"{_mib(mem['bytes'])} of {_mib(mem['max_bytes'])}, evictions {mem['evictions']:,}, "
            f"expirations {mem['expirations']:,}   ({m.reads / m.seconds:,.0f} reads/s from {rss.source}, "
            f"statuses {m.statuses}; postgres loads so far {m.cache['postgres_loads']:,})"
        )
    grown = (second.cache["memory"]["bytes"] - first.cache["memory"]["bytes"]) / _MIB
    print(
        f"    RSS {second.rss_kb / first.rss_kb - 1:+.1%} (goal within ±10%); "
        f"{(second.rss_kb - first.rss_kb) / 1024:+.1f} MiB RSS for {grown:+.1f} MiB of L1 bytes counted; "
        f"RSS before both {rss.baseline_kb / 1024:.1f} MiB"
    )
    if full is not None:
        print(
            f"    from L1 full ({full.reads:,} more) to the end: RSS {second.rss_kb / full.rss_kb - 1:+.1%} "
            f"({full.rss_kb / 1024:.1f} -> {second.rss_kb / 1024:.1f} MiB)"
        )


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def _print_summary(args: argparse.Namespace, budget: int, tp: Throughput, rss: Rss) -> None:
    ratio = tp.api.rate / tp.raw.rate
    per_request = tp.statements / tp.api.requests if tp.api.requests else float("nan")
    first, second = rss.first, rss.second
    growth = second.rss_kb / first.rss_kb - 1
    final_bytes = second.cache["memory"]["bytes"]
    quick = " (--quick: 10k, not 100k)" if args.quick else ""
    rows = [
        (
            ratio >= 0.5,
            "cached GET >= 0.5x raw ASGI req/s",
            f"{ratio:.2f}x  ({tp.api.rate:,.0f} vs {tp.raw.rate:,.0f} req/s; p50 "
            f"{percentile_ms(tp.api.latencies, 50):.2f} vs {percentile_ms(tp.raw.latencies, 50):.2f} ms, "
            f"p99 {percentile_ms(tp.api.latencies, 99):.2f} vs {percentile_ms(tp.raw.latencies, 99):.2f} ms)",
        ),
        (tp.statements == 0, "0 Postgres queries per cached GET", f"{per_request:.3f}"),
        (
            abs(growth) <= 0.10,
            f"RSS 1k vs +{second.reads // 1000}k within ±10%",
            f"{growth:+.1%}  ({first.rss_kb / 1024:.1f} -> {second.rss_kb / 1024:.1f} MiB; "
            f"the L1 budget alone is {budget / 1024 / first.rss_kb:.0%} of the first){quick}",
        ),
        (final_bytes <= budget, "L1 bytes <= budget", f"{_mib(final_bytes)} of {_mib(budget)}"),
    ]
    print("summary")
    for ok, goal, figure in rows:
        print(f"  {_mark(ok)} {goal:<36} {figure}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="~20 s: 10k conversations, 1 pair of 2 s runs")
    parser.add_argument("--seconds", type=float, default=None, help="per measured run (default 5; quick 2)")
    parser.add_argument(
        "--rounds", type=int, default=None, help="raw/api pairs, order alternating (default 2)"
    )
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--warmup", type=float, default=None, help="unmeasured load per target first (default 1; quick 0.5)"
    )
    parser.add_argument(
        "--settle", type=float, default=None, help="seconds before each RSS sample (default 1; quick 0.5)"
    )
    parser.add_argument(
        "--conversations",
        type=int,
        default=None,
        help="read after the first 1k (default 100000; quick 10000)",
    )
    parser.add_argument("--read-concurrency", type=int, default=32)
    parser.add_argument("--budget-mib", type=float, default=8.0, help="CACHE_MEMORY_MAX_BYTES in MiB")
    parser.add_argument(
        "--cold", action="store_true", help="RSS part: read pages from Postgres, not a prefilled L2 (slower)"
    )
    runner.add_timeout(parser, 900.0)
    args = parser.parse_args(argv)
    quick = args.quick
    args.seconds = args.seconds or (2.0 if quick else 5.0)
    args.rounds = args.rounds or (1 if quick else 2)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if quick else 1.0)
    args.settle = args.settle if args.settle is not None else (0.5 if quick else 1.0)
    args.conversations = args.conversations or (10_000 if quick else 100_000)

    runner.run(run, args, "crm_bench_read", uvloop=True)


if __name__ == "__main__":
    main()
