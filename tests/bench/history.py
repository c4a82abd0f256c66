"""History response times (GET /api/whatsapp-optimized/messages/{id}), p50/p99 at a few concurrent closed-loop
clients, per way the page is found, each next to the least that way could cost, measured in the same run:

  cached (L1)        the latest page, repeated: process memory    vs a raw ASGI endpoint answering the bytes
  cached (L2)        the latest page from Redis (L1 budget 1 B)   vs a raw Redis MGET of the same two keys
  uncached window    `?before_seq=` the page before the latest     vs raw asyncpg running the same statement
  first read         a conversation nobody read (L1, L2 miss)      vs raw asyncpg, latest page, same
                                                                     (distinct conversations)
  uncached inbox     `?cursor=` the inbox's second page            vs raw asyncpg running the same statement

The data: one conversation of 120 messages and many of 3, set-based SQL
(tests.kit.factories.seed_conversations), in an organisation of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import httpx
from redis.asyncio import Redis

from app.config import CacheSettings
from app.domain.conversations.cache import CacheKeys
from app.domain.conversations.read_sql import HISTORY_BEFORE, HISTORY_LATEST, inbox_sql
from app.lib.pagination import ActivityCursor
from tests.bench.world import (
    INBOX_PATH,
    PAGE_PATH,
    World,
    find_key,
)
from tests.kit.clients import HttpConnection
from tests.kit.databases import plain_dsn
from tests.kit.factories import seed_conversations
from tests.kit.measure import percentile_ms, quiet_gc
from tests.kit.processes import ApiProcess, api_server, raw_server, spawned, wait_ready

# The baselines run the statements the API itself sends (app.domain.conversations.read_sql), imported so
# they cannot drift: a history window is one statement (the org-scoped conversation row with its window
# joined laterally), an inbox page one keyset scan. Before issue 13 the ORM sent two for history
# (last_seq, then the window) inside BEGIN … ROLLBACK.
# The seed's claim: responses from 200-500 ms (polling design) to 50-100 ms.
SEED_CLAIM = "200-500 ms -> 50-100 ms"


@dataclass
class Timing:
    name: str
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    wrong: int = 0
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "requests": len(self.latencies),
            "per_s": round(len(self.latencies) / self.seconds) if self.seconds else None,
            "p50_ms": round(percentile_ms(self.latencies, 50), 3) if self.latencies else None,
            "p99_ms": round(percentile_ms(self.latencies, 99), 3) if self.latencies else None,
            "statuses": self.statuses,
            "wrong_bodies": self.wrong,
        }


async def _http_loop(
    port: int,
    requests: Iterator[bytes],
    connections: int,
    seconds: float,
    timing: Timing,
    expected: bytes | None = None,
) -> None:
    """`connections` keep-alive connections, each sending the next request when the last one answered."""
    conns = [await HttpConnection.open("127.0.0.1", port) for _ in range(connections)]

    async def worker(conn: HttpConnection, deadline: float) -> None:
        while time.perf_counter() < deadline:
            request = next(requests, None)
            if request is None:
                return
            status, body, elapsed = await conn.get(request)
            timing.latencies.append(elapsed)
            timing.statuses[status] = timing.statuses.get(status, 0) + 1
            if expected is not None and body != expected:
                timing.wrong += 1

    try:
        with quiet_gc():
            started = time.perf_counter()
            await asyncio.gather(*(worker(c, started + seconds) for c in conns))
            timing.seconds += time.perf_counter() - started
    finally:
        for conn in conns:
            await conn.close()


async def _call_loop(
    call: Callable[[int], Awaitable[None]], concurrency: int, seconds: float, timing: Timing
) -> None:
    """The same closed loop for an in-process client call (raw Redis, raw asyncpg); call(worker index)."""

    async def worker(index: int, deadline: float) -> None:
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            await call(index)
            timing.latencies.append(time.perf_counter() - started)
            timing.statuses[0] = timing.statuses.get(0, 0) + 1

    with quiet_gc():
        started = time.perf_counter()
        await asyncio.gather(*(worker(i, started + seconds) for i in range(concurrency)))
        timing.seconds += time.perf_counter() - started


async def _memory_live(http: httpx.AsyncClient) -> bool | None:
    """Whether the API's L1 is in use (it is once the hub's subscription is up), as /websocket/info says;
    None if it does not say."""
    for _ in range(50):
        response = await http.get("/api/whatsapp-optimized/websocket/info")
        live = find_key(response.json(), "memory_live") if response.status_code == 200 else None
        if live is None or live:
            return live
        await asyncio.sleep(0.1)
    return False


def _row(tier: str, what: str, ours: Timing, baseline: Timing, baseline_what: str) -> dict[str, Any]:
    a, b = ours.figures(), baseline.figures()
    return {
        "tier": tier,
        "what": what,
        "ours": a,
        "baseline": {**b, "what": baseline_what},
        "ratio_p50": round(a["p50_ms"] / b["p50_ms"], 2) if a["p50_ms"] and b["p50_ms"] else None,
        "ratio_p99": round(a["p99_ms"] / b["p99_ms"], 2) if a["p99_ms"] and b["p99_ms"] else None,
    }


async def run(
    world: World, api: ApiProcess, seconds: float, connections: int, cold_count: int
) -> dict[str, Any]:
    """`api` is the suite's API process, warm from the polling section (as a server in production is);
    the L2 tier gets an API process of its own (no L1), started here."""
    tenant = world.history_tenant
    started = time.perf_counter()
    hot, cold = await seed_conversations(world.database_url, tenant, cold_count)
    seed_s = time.perf_counter() - started
    headers = {"authorization": f"Bearer {world.history_admin_token}"}
    keys = CacheKeys(world.settings.redis.key_prefix)
    scope = keys.messages_scope(tenant.org_id, hot)
    rows: list[dict[str, Any]] = []
    l2_env = {**world.env, "CACHE_MEMORY_MAX_BYTES": "1"}  # no page fits: every read goes to Redis
    with (
        tempfile.TemporaryDirectory(prefix="bench-suite-history-") as tmp,
        spawned(api_server(l2_env), raw_server(world.env, {"": Path(tmp) / "page.json"})) as (l2_api, raw),
    ):
        wait_ready(api)
        host = f"127.0.0.1:{api.port}"
        latest_path = PAGE_PATH.format(hot)
        async with httpx.AsyncClient(
            base_url=api.base_url, headers=headers, trust_env=False, timeout=30
        ) as http:
            live = await _memory_live(http)
            for _ in range(5):  # fills L2 and L1, and the token memory of the fast path
                page = (await http.get(latest_path)).raise_for_status().content
            last_seq = int((await http.get(latest_path)).json()["last_seq"])
            before = max(1, last_seq - CacheSettings.page_size + 1)
            window_path = f"{latest_path}?before_seq={before}"
            window = (await http.get(window_path)).raise_for_status().content
            inbox = (await http.get(INBOX_PATH)).raise_for_status().json()
            inbox_cursor = inbox["next_cursor"]
            assert inbox_cursor, "the history organisation's inbox holds more than one page"
            inbox_page_path = f"{INBOX_PATH}?cursor={inbox_cursor}"
            inbox_page = (await http.get(inbox_page_path)).raise_for_status().content

        # cached (L1) vs raw ASGI answering the same bytes
        (Path(tmp) / "page.json").write_bytes(page)
        wait_ready(raw)
        warm = min(0.5, seconds / 2)  # unmeasured first, per target: connections, first requests
        raw_req = HttpConnection.request(f"127.0.0.1:{raw.port}", latest_path, headers)
        api_req = HttpConnection.request(host, latest_path, headers)
        await _http_loop(raw.port, itertools.repeat(raw_req), connections, warm, Timing("warm-up"))
        await _http_loop(api.port, itertools.repeat(api_req), connections, warm, Timing("warm-up"))
        l1, raw_t = Timing("cached (L1)"), Timing("raw ASGI")
        for order in (("raw", "api"), ("api", "raw")):  # ABBA: a drifting machine favours neither
            for target in order:
                if target == "raw":
                    await _http_loop(
                        raw.port, itertools.repeat(raw_req), connections, seconds / 2, raw_t, page
                    )
                else:
                    await _http_loop(api.port, itertools.repeat(api_req), connections, seconds / 2, l1, page)
        rows.append(_row("cached (L1)", "latest page, repeated", l1, raw_t, "raw ASGI endpoint, same bytes"))

        # cached (L2) vs raw Redis MGET of the version and the page
        wait_ready(l2_api)
        l2_req = HttpConnection.request(f"127.0.0.1:{l2_api.port}", latest_path, headers)
        await _http_loop(l2_api.port, itertools.repeat(l2_req), connections, warm, Timing("warm-up"))
        l2 = Timing("cached (L2)")
        await _http_loop(l2_api.port, itertools.repeat(l2_req), connections, seconds, l2, page)
        redis = Redis.from_url(world.settings.redis.url, max_connections=connections)
        page_key = keys.page_key(scope, f"latest:{CacheSettings.page_size}")

        async def mget(_index: int) -> None:
            await redis.mget(scope, page_key)

        redis_t = Timing("raw Redis")
        try:
            await _call_loop(mget, connections, warm, Timing("warm-up"))
            await _call_loop(mget, connections, seconds, redis_t)
        finally:
            await redis.aclose()
        rows.append(
            _row("cached (L2)", "latest page, L1 off", l2, redis_t, "raw Redis MGET (redis-py), same keys")
        )

        # uncached window vs raw asyncpg, the same two statements
        pool = await asyncpg.create_pool(
            plain_dsn(world.database_url), min_size=connections, max_size=connections
        )
        try:
            window_req = HttpConnection.request(host, window_path, headers)
            await _http_loop(api.port, itertools.repeat(window_req), connections, warm, Timing("warm-up"))
            uncached = Timing("uncached window")
            await _http_loop(api.port, itertools.repeat(window_req), connections, seconds, uncached, window)

            async def window_sql(_index: int) -> None:
                async with pool.acquire() as conn:
                    await conn.fetch(HISTORY_BEFORE, hot, tenant.org_id, CacheSettings.page_size, before)

            sql_t = Timing("raw asyncpg")
            await _call_loop(window_sql, connections, warm, Timing("warm-up"))
            await _call_loop(window_sql, connections, seconds, sql_t)
            rows.append(
                _row("uncached", "`?before_seq=` window", uncached, sql_t, "raw asyncpg, the same statement")
            )

            # first read: a distinct never-read conversation per request; baseline on the other half
            half = len(cold) // 2
            fresh = (HttpConnection.request(host, PAGE_PATH.format(c), headers) for c in cold[:half])
            first = Timing("first read")
            await _http_loop(api.port, fresh, connections, seconds, first)
            others: Iterator[UUID] = iter(cold[half:])

            async def latest_sql(_index: int) -> None:
                conversation = next(others, cold[-1])
                async with pool.acquire() as conn:
                    await conn.fetch(HISTORY_LATEST, conversation, tenant.org_id, CacheSettings.page_size)

            first_sql = Timing("raw asyncpg")
            await _call_loop(latest_sql, connections, seconds, first_sql)
            rows.append(
                _row(
                    "uncached",
                    "first read (L1 and L2 miss)",
                    first,
                    first_sql,
                    "raw asyncpg, same statement, distinct conversations",
                )
            )

            # the inbox's second page (a cursor: never cached) vs raw asyncpg, the same statement
            inbox_req = HttpConnection.request(host, inbox_page_path, headers)
            await _http_loop(api.port, itertools.repeat(inbox_req), connections, warm, Timing("warm-up"))
            uncached_inbox = Timing("uncached inbox")
            await _http_loop(
                api.port, itertools.repeat(inbox_req), connections, seconds, uncached_inbox, inbox_page
            )
            position = ActivityCursor.decode(inbox_cursor)
            inbox_statement = inbox_sql(False, False, False, True)

            async def inbox_raw(_index: int) -> None:
                async with pool.acquire() as conn:
                    await conn.fetch(
                        inbox_statement, tenant.org_id, CacheSettings.page_size + 1, position.at, position.id
                    )

            inbox_t = Timing("raw asyncpg")
            await _call_loop(inbox_raw, connections, warm, Timing("warm-up"))
            await _call_loop(inbox_raw, connections, seconds, inbox_t)
            rows.append(
                _row(
                    "uncached",
                    "inbox page (`?cursor=`)",
                    uncached_inbox,
                    inbox_t,
                    "raw asyncpg, the same statement",
                )
            )
        finally:
            await pool.close()
    return {
        "connections": connections,
        "seconds_per_run": seconds,
        "page_bytes": len(page),
        "window_bytes": len(window),
        "seeded_conversations": len(cold) + 1,
        "seed_s": round(seed_s, 1),
        "l1_live": live,
        "seed_claim": SEED_CLAIM,
        "rows": rows,
    }
