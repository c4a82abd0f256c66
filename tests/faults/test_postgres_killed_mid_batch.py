"""Postgres stopped (`pg_ctl stop -m fast`: sessions terminated mid-statement) while group-committed ingest
batches are in flight under a busy gateway (issue 13). Every request of a batch whose statement or commit
failed is answered 503 with Retry-After — never a 2xx, never a 500 — nothing of such a batch is written
(one statement, one transaction), and once Postgres is back the gateway's retries land every message
exactly once, with gapless seq."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.config import Settings
from tests.faults.harness import (
    GATEWAY,
    Gateway,
    assert_persisted_exactly_once,
    eventually,
    gateway_counts,
    postgres_counts,
    read_truth,
    report,
    text_webhooks,
)
from tests.kit.data import env_for
from tests.kit.factories import create_tenant
from tests.kit.processes import PrivatePostgres, api_processes, private_postgres

MESSAGES = 400
SENDERS = 16  # enough at once that batches hold several webhooks
DOWN_S = 1.0


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


async def test_postgres_killed_mid_batch_fails_the_batch_with_503_and_retries_land_once(
    settings: Settings, postgres: PrivatePostgres
) -> None:
    started = time.monotonic()
    engine = create_async_engine(postgres.url, poolclass=NullPool)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        tenant = await create_tenant(session)
    await engine.dispose()
    instance = tenant.instance(GATEWAY)
    chats = [f"55419{n:07d}" for n in range(20)]
    hooks = text_webhooks(instance, chats, MESSAGES, "batch")

    with api_processes(1, env_for(settings, DATABASE_URL=postgres.url)) as (api,):
        gateway = Gateway(api, senders=SENDERS)
        window: dict[str, float] = {}

        async def kill_mid_load() -> None:
            await eventually(lambda: gateway.acked >= 100, lambda: "100 acked", 60)
            window["stopping"] = time.monotonic()
            window["in_flight"] = gateway.in_flight
            await asyncio.to_thread(postgres.stop)
            window["down"] = time.monotonic()
            await asyncio.sleep(DOWN_S)
            await asyncio.to_thread(postgres.start)
            window["up"] = time.monotonic()

        await asyncio.gather(gateway.deliver(hooks), kill_mid_load())
        logs = api.logs()

    truth = await read_truth(postgres.url, [instance.id])
    sent = gateway_counts(hooks, gateway)
    stored = postgres_counts(truth, hooks)
    answers = Counter(
        f"{a.outcome} {'with' if a.retry_after else 'without'} Retry-After" for a in gateway.attempts
    )
    failed = [json.loads(line) for line in logs.splitlines() if '"ingest batch failed"' in line]
    errors = Counter(entry["error"] for entry in failed)
    cut = sum(entry["webhooks"] for entry in failed)  # requests of the failed batches: each got its 503
    report(
        "postgres_killed_mid_batch",
        fault=f"pg_ctl stop -m fast with {int(window['in_flight'])} webhooks in flight, down {DOWN_S} s",
        webhooks=sent,
        answers=dict(answers),
        failed_batches=len(failed),
        batch_errors=dict(errors),
        requests_in_failed_batches=cut,
        postgres=stored,
        runtime_s=round(time.monotonic() - started, 1),
    )
    assert failed  # batches were refused or cut by the stop
    assert sent["acked"] == MESSAGES
    # Every non-2xx answer is a 503 a gateway retries; never a 500, never a 2xx without a commit.
    assert set(answers) <= {"200 without Retry-After", "503 with Retry-After"}, answers
    assert answers["503 with Retry-After"] == cut, answers  # every request of a failed batch, no other
    assert_persisted_exactly_once(stored, sent=MESSAGES)
