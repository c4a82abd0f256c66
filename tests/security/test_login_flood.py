"""Logins under hostile load cannot cost a webhook (issue 12, finding 1): a flood from one address is refused
by a throttle the flood cannot switch off, password checks hold no pooled connection while hashing, and a
pool that is exhausted anyway answers 503 with Retry-After, never 500.

Real API processes on this run's Postgres and Redis; every load is bounded and loopback only. Figures are
printed (`pytest -s`); timing is asserted only as a generous guard against starvation.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.db.models import WhatsAppInstance
from tests.kit.data import env_for, signed_headers, text_body
from tests.kit.databases import plain_dsn
from tests.kit.factories import create_tenant
from tests.kit.processes import api_processes
from tests.security.support import row_counts

LOGIN_LIMIT = 10


@asynccontextmanager
async def client_at(address: str, connections: int = 100) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.AsyncHTTPTransport(
        local_address=address, limits=httpx.Limits(max_connections=connections)
    )
    async with httpx.AsyncClient(transport=transport, timeout=30.0, trust_env=False) as client:
        yield client


async def deliver_over(
    gateway: httpx.AsyncClient,
    base_url: str,
    instance: WhatsAppInstance,
    count: int,
    seconds: float,
    tag: str,
) -> list[tuple[int, float]]:
    """`count` verified webhooks spread evenly over `seconds`, each timed: (status, ack seconds)."""

    async def one(i: int) -> tuple[int, float]:
        await asyncio.sleep(i * seconds / count)
        body = text_body("wppconnect", instance, f"{tag}{i:04d}")
        started = time.perf_counter()
        response = await gateway.post(
            f"{base_url}/api/webhooks/wppconnect/{instance.name}",
            content=body,
            headers=signed_headers("wppconnect", body, instance),
        )
        return response.status_code, time.perf_counter() - started

    return await asyncio.gather(*(one(i) for i in range(count)))


async def flood_from_another_process(
    port: int, address: str, path: str, count: int, template: str
) -> Counter[int]:
    """`count` concurrent POSTs from `address`, sent by `tests.security.flooder` in a process of its own, so
    this process's loop (which times the webhooks' acks) is not the one opening 600 connections."""
    flooder = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.security.flooder",
        str(port),
        address,
        path,
        str(count),
        template,
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(flooder.communicate(), 60)
    assert flooder.returncode == 0
    return Counter({int(status): n for status, n in json.loads(out).items()})


def ack_figures(acks: list[tuple[int, float]]) -> str:
    seconds = sorted(s for _, s in acks)
    p99 = seconds[min(len(seconds) - 1, round(0.99 * (len(seconds) - 1)))]
    return (
        f"webhook ack p50 {statistics.median(seconds) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {seconds[-1] * 1000:.0f} ms"
    )


async def test_login_flood_does_not_starve_ingest(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
):
    flood, webhooks = 600, 80
    tenant = await create_tenant(session)
    wpp = tenant.instance("wppconnect")
    env = env_for(
        settings,
        LOGIN_ATTEMPTS_PER_MINUTE=str(LOGIN_LIMIT),
        LOGIN_FAILURES_PER_ACCOUNT=str(LOGIN_LIMIT),
        REDIS_KEY_PREFIX=f"crm-login-flood-{secrets.token_hex(4)}",
    )
    with api_processes(1, env) as [api]:
        async with client_at("127.0.0.41") as gateway:

            async def flood_all() -> Counter[int]:
                await asyncio.sleep(0.5)  # a few webhooks first, the rest while the flood lands
                template = json.dumps({"email": tenant.agent.email, "password": "guess {i}"})
                return await flood_from_another_process(
                    api.port, "127.0.0.40", "/api/auth/login", flood, template
                )

            logins, acks = await asyncio.gather(
                flood_all(), deliver_over(gateway, api.base_url, wpp, webhooks, 4.0, "FLOOD")
            )
        unavailable = api.logs().count("throttle unavailable")
    webhook_statuses = Counter(status for status, _ in acks)
    print(
        f"\n{flood} concurrent bad logins from one address: {dict(logins)}; {webhooks} webhooks: "
        f"{dict(webhook_statuses)}; {ack_figures(acks)}; 'throttle unavailable' logged {unavailable}x"
    )
    assert logins[401] <= LOGIN_LIMIT, logins  # the guesses evaluated
    assert logins[401] + logins[429] == flood, logins  # no 500, no 503
    assert webhook_statuses == {200: webhooks}, webhook_statuses
    assert max(s for _, s in acks) < 1.0, ack_figures(acks)  # starvation guard (the bug: 13 s)
    assert unavailable == 0
    assert (await row_counts(engine, tenant.org_id))["messages"] == webhooks


async def test_logins_hash_without_holding_a_pooled_connection(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
):
    """A pool of one: a login that kept its connection while scrypt ran made every webhook wait behind
    every login. Logins from many clients (no address limit here) share that pool with a gateway."""
    logins, webhooks = 60, 40
    tenant = await create_tenant(session)
    wpp = tenant.instance("wppconnect")
    env = env_for(
        settings,
        DB_POOL_SIZE="1",
        DB_MAX_OVERFLOW="0",
        DB_POOL_TIMEOUT="3",
        REDIS_KEY_PREFIX=f"crm-login-pool-{secrets.token_hex(4)}",
    )
    with api_processes(1, env) as [api]:
        async with client_at("127.0.0.42", logins) as agents, client_at("127.0.0.43") as gateway:

            async def attempt(i: int) -> httpx.Response:
                body = {"email": tenant.agent.email, "password": f"wrong {i}"}
                return await agents.post(f"{api.base_url}/api/auth/login", json=body)

            answers, acks = await asyncio.gather(
                asyncio.gather(*(attempt(i) for i in range(logins))),
                deliver_over(gateway, api.base_url, wpp, webhooks, 2.0, "POOLED"),
            )
    login_statuses = Counter(a.status_code for a in answers)
    webhook_statuses = Counter(status for status, _ in acks)
    print(
        f"\n{logins} concurrent logins on a pool of 1: {dict(login_statuses)}; {webhooks} webhooks: "
        f"{dict(webhook_statuses)}; {ack_figures(acks)}"
    )
    assert webhook_statuses == {200: webhooks}, webhook_statuses
    assert max(s for _, s in acks) < 1.0, ack_figures(acks)  # the bug: every login's scrypt queued ahead
    # Logins wait their turn (LOGIN_CONCURRENCY); one that waited too long is told to retry, never a 500.
    assert set(login_statuses) <= {401, 503}, login_statuses
    assert all("retry-after" in a.headers for a in answers if a.status_code == 503)
    assert (await row_counts(engine, tenant.org_id))["messages"] == webhooks


async def test_an_exhausted_pool_answers_503_with_retry_after(settings: Settings, session: AsyncSession):
    """The only connection of the pool is held by a webhook waiting on a lock; a login then waits for the
    pool past DB_POOL_TIMEOUT. advanced-alchemy wraps that timeout in a RepositoryError: 503, not 500."""
    tenant = await create_tenant(session)
    wpp = tenant.instance("wppconnect")
    env = env_for(
        settings,
        DB_POOL_SIZE="1",
        DB_MAX_OVERFLOW="0",
        DB_POOL_TIMEOUT="1",
        REDIS_KEY_PREFIX=f"crm-pool-{secrets.token_hex(4)}",
    )
    with api_processes(1, env) as [api]:
        async with client_at("127.0.0.44") as http:
            locker = await asyncpg.connect(plain_dsn(settings.db.url))
            try:
                lock = locker.transaction()
                await lock.start()
                await locker.execute("LOCK TABLE conversations IN ACCESS EXCLUSIVE MODE")
                body = text_body("wppconnect", wpp, "HELD")
                held = asyncio.ensure_future(
                    http.post(
                        f"{api.base_url}/api/webhooks/wppconnect/{wpp.name}",
                        content=body,
                        headers=signed_headers("wppconnect", body, wpp),
                    )
                )
                deadline = time.monotonic() + 10
                while not await locker.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'conversations'::regclass"
                ):
                    assert time.monotonic() < deadline, "the webhook never waited on the lock"
                    await asyncio.sleep(0.05)
                login = await http.post(
                    f"{api.base_url}/api/auth/login", json={"email": tenant.agent.email, "password": "x"}
                )
                await lock.rollback()
            finally:
                await locker.close()
            webhook = await held
    print(
        f"\nlogin with the pool exhausted: {login.status_code} {login.text[:120]}; held webhook: "
        f"{webhook.status_code}"
    )
    assert login.status_code == 503, (login.status_code, login.text)
    assert login.headers["content-type"].startswith("application/problem+json")
    assert int(login.headers["retry-after"]) > 0
    assert webhook.status_code == 200, webhook.text  # it committed once the lock went
