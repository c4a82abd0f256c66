"""`just bench-ingest`: committed webhooks/s and acknowledgement latency at 16 concurrent senders, next to raw
asyncpg single-row INSERTs at 16 connections measured in the same run on the same server. Prints figures;
it passes or fails nothing (timings on shared machines are noisy).

    uv run python -m tests.bench.ingest [--requests 8000] [--senders 16] [--api-workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from uuid import uuid4

import asyncpg
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from app.server.run import proxy_cli_args
from tests.kit import runner
from tests.kit.clients import HttpConnection
from tests.kit.data import evolution_body
from tests.kit.databases import plain_dsn
from tests.kit.factories import create_tenant
from tests.kit.measure import free_port, percentile_ms


async def _run_senders(
    port: int, path: str, bodies: list[bytes], headers: dict[str, str], senders: int
) -> tuple[float, list[float], dict[int, int]]:
    queue = iter(bodies)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def sender() -> None:
        conn = await HttpConnection.open("127.0.0.1", port)
        try:
            for body in queue:
                status, _, elapsed = await conn.post(path, body, headers)
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(elapsed)
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(sender() for _ in range(senders)))
    return time.perf_counter() - started, latencies, statuses


async def _raw_inserts(dsn: str, total: int, connections: int) -> tuple[float, list[float]]:
    """Single-row INSERTs of a message-sized row, each its own committed transaction."""
    pool = await asyncpg.create_pool(dsn, min_size=connections, max_size=connections)
    await pool.execute(
        "CREATE TABLE bench_raw (id uuid PRIMARY KEY, conversation_id uuid, seq bigint, "
        "gateway_message_id text UNIQUE, body text, raw jsonb, created_at timestamptz DEFAULT now())"
    )
    latencies: list[float] = []
    remaining = iter(range(total))
    conversation = uuid4()

    async def worker() -> None:
        async with pool.acquire() as conn:
            stmt = await conn.prepare(
                "INSERT INTO bench_raw (id, conversation_id, seq, gateway_message_id, body, raw) "
                "VALUES ($1, $2, $3, $4, $5, $6)"
            )
            for i in remaining:
                t = time.perf_counter()
                await stmt.fetch(uuid4(), conversation, i, f"RAW{i}", "hello", '{"k": "v"}')
                latencies.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    await pool.execute("DROP TABLE bench_raw")
    await pool.close()
    return elapsed, latencies


async def run(args: argparse.Namespace, database_url: str) -> None:
    engine = create_async_engine(database_url)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        tenant = await create_tenant(session)
    await engine.dispose()
    instance = tenant.instance("evolution")

    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "LOG_LEVEL": "WARNING",
        "APP_ENV": "bench",
        "JWT_SECRET": secrets.token_urlsafe(32),  # outside dev/test a full-length secret is required
        "DB_POOL_SIZE": str(args.senders),
        "DB_MAX_OVERFLOW": "4",
        # A run of its own in Redis, and the HTTP floor's 404s (unknown instance: failed verifications, on
        # purpose) must not spend the webhook throttle's budget of the address the webhooks come from.
        "REDIS_KEY_PREFIX": f"crm-bench-ingest-{secrets.token_hex(4)}",
        "WEBHOOK_AUTH_FAILURES_PER_MINUTE": str(10**9),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "app.asgi:app",
            "--port",
            str(port),
            "--workers",
            str(args.api_workers),
            "--no-access-log",
            *proxy_cli_args(env.get("FORWARDED_ALLOW_IPS")),  # as app.server.run: trust no proxy by default
            "--log-level",
            "warning",
        ],
        env=env,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        path = f"/api/webhooks/evolution/{instance.name}"
        headers = {"Content-Type": "application/json", "X-Webhook-Secret": instance.webhook_secret}
        chats = [f"55119{n:08d}" for n in range(args.conversations)]

        def bodies(prefix: str, count: int) -> list[bytes]:
            return [
                evolution_body(instance.name, f"{prefix}{i:08d}", chats[i % len(chats)], f"message {i}")
                for i in range(count)
            ]

        await _run_senders(port, path, bodies("WARM", args.requests // 10), headers, args.senders)
        elapsed, latencies, statuses = await _run_senders(
            port, path, bodies("BENCH", args.requests), headers, args.senders
        )
        # The same client against a route that answers 404 before any database work: the cost of HTTP,
        # routing and the problem response alone, i.e. the ceiling any webhook handler here could reach.
        floor_elapsed, floor_latencies, floor_statuses = await _run_senders(
            port, "/api/webhooks/no-such-gateway/x", [b"{}"] * args.requests, headers, args.senders
        )
        conn = await asyncpg.connect(plain_dsn(database_url))
        stored = await conn.fetchval("SELECT count(*) FROM messages WHERE gateway_message_id LIKE 'BENCH%'")
        gaps = await conn.fetchval(
            "SELECT count(*) FROM conversations c WHERE c.last_seq <> "
            "(SELECT count(*) FROM messages m WHERE m.conversation_id = c.id)"
        )
        await conn.close()
        raw_elapsed, raw_latencies = await _raw_inserts(plain_dsn(database_url), args.requests, args.senders)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(20)

    rate, raw_rate, floor_rate = (args.requests / t for t in (elapsed, raw_elapsed, floor_elapsed))
    print(
        f"ingest benchmark: {args.requests} webhooks, {args.senders} senders, "
        f"{args.conversations} conversations, {args.api_workers} API worker(s), {os.cpu_count()} CPUs"
    )
    print(
        f"  webhooks   {rate:8.0f}/s   ack p50 {percentile_ms(latencies, 50):6.2f} ms   "
        f"p99 {percentile_ms(latencies, 99):6.2f} ms   statuses {statuses}"
    )
    print(
        f"  raw INSERT {raw_rate:8.0f}/s   p50 {percentile_ms(raw_latencies, 50):6.2f} ms   "
        f"p99 {percentile_ms(raw_latencies, 99):6.2f} ms   (asyncpg, {args.senders} connections)"
    )
    print(
        f"  HTTP floor {floor_rate:8.0f}/s   p50 {percentile_ms(floor_latencies, 50):6.2f} ms   "
        f"p99 {percentile_ms(floor_latencies, 99):6.2f} ms   (404 before any database work; {floor_statuses})"
    )
    print(
        f"  ratio webhooks/raw = {rate / raw_rate:.2f}   (goal, issue 13: >= 0.25; "
        f"HTTP floor/raw = {floor_rate / raw_rate:.2f})"
    )
    print(f"  check: {stored} of {args.requests} messages stored; conversations with a seq gap: {gaps}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=8000)
    parser.add_argument("--senders", type=int, default=16)
    parser.add_argument("--conversations", type=int, default=500)
    parser.add_argument("--api-workers", type=int, default=1)
    runner.add_timeout(parser, 600.0)
    runner.run(run, parser.parse_args(argv), "crm_bench")


if __name__ == "__main__":
    main()
