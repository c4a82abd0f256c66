"""/ready on a real deployment — an API process and both arq workers (`WorkerSettings`, `MediaWorkerSettings`)
on a private Postgres and a private Redis — while Postgres, then Redis, is stopped and started again, with
nothing restarted by hand.

While a part is gone /ready is 503 and names it, and /health stays 200 (the process is alive, only not
ready). Once it is back /ready turns 200 by itself and the workers' processes are the same ones. For Redis
that needs both workers to outlive the outage and to write their health checks again into the empty Redis
that comes back (a restart without persistence, as after a crash).

Reporting is not working: before the first outage and after each one, a send (the default worker, through
a gateway) and an inline image (the media worker), both enqueued by the API, must be processed. The first
round leaves each worker holding pooled Postgres connections, which the Postgres restart kills.

The transitions are printed (`pytest -s`); only generous deadlines are asserted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.config import Settings, WorkersSettings
from app.db.models import Media, MediaState, Message, MessageStatus
from app.lib.jobs import media_queue_name
from tests.fake_gateway import FakeGateway, ok
from tests.faults.harness import Json, report
from tests.kit.api import login_token
from tests.kit.data import env_for, image_webhook, jpeg, signed_headers
from tests.kit.factories import PASSWORD, Tenant
from tests.kit.ingested import tenant_with_chat
from tests.kit.processes import (
    ArqWorker,
    PrivatePostgres,
    api_processes,
    arq_worker,
    private_postgres,
    private_redis,
)

HEALTH_CHECK_S = 1.0  # WORKER_HEALTH_CHECK_SECONDS of this deployment (default 30), so recovery is prompt
DOWN_S = 3.0  # each outage: longer than any quick retry, so a worker that gives up exits within it
DEADLINE_S = 20.0  # for each transition and each job; generous, the machine is shared
MEDIA_GATEWAY = "evolution"  # images arrive inline (base64): the media worker needs no download
READY = {"status": "ok", "database": "ok", "redis": "ok", "workers": {"default": "ok", "media": "ok"}}


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


class Probe:
    """/ready and /health of one API process, polled until the answer awaited."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.statuses: Counter[int] = Counter()  # every /ready answer: not ready is 503, never a 500

    async def until(self, wanted: Callable[[httpx.Response], bool], what: str) -> tuple[Json, float]:
        """The first /ready answer that is `wanted`, and the seconds it took."""
        started = time.monotonic()
        while True:
            response = await self.http.get("/ready")
            self.statuses[response.status_code] += 1
            if wanted(response):
                return response.json(), round(time.monotonic() - started, 2)
            assert time.monotonic() - started < DEADLINE_S, (
                f"{what}: not within {DEADLINE_S} s: {response.text}"
            )
            await asyncio.sleep(0.05)

    async def health(self) -> int:
        return (await self.http.get("/health")).status_code


def ready(response: httpx.Response) -> bool:
    return response.status_code == 200


def naming(part: str) -> Callable[[httpx.Response], bool]:
    return lambda response: response.status_code == 503 and response.json().get(part) == "unavailable"


def assert_alive(workers: dict[str, ArqWorker], when: str) -> None:
    exited = {name: w.process.poll() for name, w in workers.items() if w.process.poll() is not None}
    tails = "\n".join(workers[name].logs()[-3000:] for name in exited)
    assert not exited, f"{when}: worker exited {exited}:\n{tails}"


class Jobs:
    """A send and an inline image through the API, awaited in Postgres: the workers really work."""

    def __init__(
        self, http: httpx.AsyncClient, engine: AsyncEngine, tenant: Tenant, conversation: UUID
    ) -> None:
        self.http, self.engine, self.tenant, self.conversation = http, engine, tenant, conversation
        self.rounds = 0

    async def run(self) -> Json:
        self.rounds += 1
        token = await login_token(str(self.http.base_url), self.tenant.agent.email, PASSWORD)
        response = await self.http.post(
            f"/api/whatsapp-optimized/messages/{self.conversation}",
            json={"text": f"round {self.rounds}", "client_message_id": f"ready-recovers-{self.rounds}"},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 201, response.text
        message_id = UUID(response.json()["id"])

        instance = self.tenant.instance(MEDIA_GATEWAY)
        gateway_id = f"3EB0READYRECOVERS{self.rounds:03d}"
        image = jpeg(64, 48, color=(40 * self.rounds, 90, 160))
        body = json.dumps(image_webhook(instance, gateway_id, image)).encode()
        webhook = await self.http.post(
            f"/api/webhooks/{MEDIA_GATEWAY}/{instance.name}",
            content=body,
            headers=signed_headers(MEDIA_GATEWAY, body, instance),
        )
        assert webhook.status_code == 200, webhook.text

        sent = select(Message.status).where(Message.id == message_id)
        media = (
            select(Media.state)
            .join(Message, Message.id == Media.message_id)
            .where(Message.instance_id == instance.id, Message.gateway_message_id == gateway_id)
        )
        return {
            "s_to_message_sent": await self._stored(sent, MessageStatus.SENT, "the send"),
            "s_to_media_ready": await self._stored(media, MediaState.READY, "the image"),
        }

    async def _stored(self, query: Select[Any], wanted: object, what: str) -> float:
        started = time.monotonic()
        sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        while True:
            async with sessions() as session:
                value = (await session.execute(query)).scalar_one_or_none()
            if value == wanted:
                return round(time.monotonic() - started, 2)
            elapsed = time.monotonic() - started
            assert elapsed < DEADLINE_S, f"{what} (round {self.rounds}): not within {DEADLINE_S} s, {value!r}"
            await asyncio.sleep(0.1)


async def outage(
    probe: Probe,
    workers: dict[str, ArqWorker],
    part: str,
    stop: Callable[[], None],
    start: Callable[[], None],
) -> Json:
    """Stop `part`, see /ready name it, start it again, see /ready 200 with the same worker processes."""
    seen: Json = {}
    stopping = time.monotonic()
    await asyncio.to_thread(stop)
    seen["stop_took_s"] = round(time.monotonic() - stopping, 2)
    seen["ready_while_down"], seen["s_to_503_after_stopped"] = await probe.until(naming(part), f"503 {part}")
    seen["health_while_down"] = await probe.health()
    await asyncio.sleep(max(0.0, stopping + DOWN_S - time.monotonic()))
    assert_alive(workers, f"{part} down")
    assert seen["health_while_down"] == 200, seen

    starting = time.monotonic()
    await asyncio.to_thread(start)
    seen["start_took_s"] = round(time.monotonic() - starting, 2)
    body, seen["s_to_200_after_started"] = await probe.until(ready, f"/ready 200 after {part} returned")
    assert body == READY, body
    assert_alive(workers, f"{part} back")
    return seen


async def test_ready_is_503_naming_postgres_or_redis_while_it_is_down_and_200_again_by_itself(
    settings: Settings, postgres: PrivatePostgres
) -> None:
    started = time.monotonic()
    engine = create_async_engine(postgres.url, poolclass=NullPool)
    async with FakeGateway() as gateway:
        gateway.respond(r"/send-message$", ok("wppconnect"))
        async with async_sessionmaker(engine, expire_on_commit=False)() as session:
            tenant, conversation_id = await tenant_with_chat(session, engine, gateway.base_url)
        with private_redis() as redis, ExitStack() as stack:
            deployed = dataclasses.replace(
                settings,
                db=dataclasses.replace(settings.db, url=postgres.url),
                redis=dataclasses.replace(settings.redis, url=redis.url),
                workers=WorkersSettings(health_check_s=HEALTH_CHECK_S),
            )
            (api,) = stack.enter_context(api_processes(1, env_for(deployed)))
            workers = {
                "default": stack.enter_context(arq_worker(deployed, "WorkerSettings")),
                "media": stack.enter_context(arq_worker(deployed, "MediaWorkerSettings")),
            }
            async with httpx.AsyncClient(base_url=api.base_url, timeout=10, trust_env=False) as http:
                probe, jobs = Probe(http), Jobs(http, engine, tenant, conversation_id)
                observed: Json = {}
                body, observed["s_to_ready_at_start"] = await probe.until(ready, "/ready with everything up")
                assert body == READY, body
                observed["jobs_at_start"] = await jobs.run()

                observed["postgres"] = await outage(probe, workers, "database", postgres.stop, postgres.start)
                observed["jobs_after_postgres_returned"] = await jobs.run()

                observed["redis"] = await outage(probe, workers, "redis", redis.stop, redis.start)
                observed["jobs_after_redis_returned"] = await jobs.run()
                assert_alive(workers, "at the end")
            report(
                "ready_recovers",
                fault=f"private Postgres stopped (pg_ctl -m fast) {DOWN_S} s, then private Redis stopped "
                f"(SIGTERM) {DOWN_S} s and started empty; workers' health check every {HEALTH_CHECK_S} s",
                **observed,
                ready_answers=dict(probe.statuses),
                runtime_s=round(time.monotonic() - started, 1),
            )
            assert set(probe.statuses) <= {200, 503}, probe.statuses
    await engine.dispose()


async def test_a_worker_stopped_while_redis_is_down_exits_by_itself(settings: Settings) -> None:
    """Waiting out an outage is for a running worker only: SIGTERM during one ends it at once (it cannot
    delete its health check, so it exits 1), where waiting for Redis would take a SIGKILL after 15 s."""
    with private_redis() as redis:
        deployed = dataclasses.replace(settings, redis=dataclasses.replace(settings.redis, url=redis.url))
        with arq_worker(deployed, "MediaWorkerSettings") as worker:
            probe = Redis.from_url(redis.url)
            health_check = f"{media_queue_name(settings.redis.key_prefix)}:health-check"
            deadline = time.monotonic() + DEADLINE_S
            while not await probe.exists(health_check):  # running: its poll loop has written it
                assert worker.process.poll() is None and time.monotonic() < deadline, worker.logs()[-3000:]
                await asyncio.sleep(0.05)
            await probe.aclose()
            await asyncio.to_thread(redis.stop)
            await asyncio.sleep(1.0)  # the poll loop is retrying now
            assert_alive({"media": worker}, "redis down")
            stopping = time.monotonic()
            await asyncio.to_thread(worker.stop)
            print(
                f"[worker_stopped_while_redis_down] exit {worker.process.returncode} "
                f"{time.monotonic() - stopping:.2f} s after SIGTERM"
            )
            assert worker.process.returncode != -signal.SIGKILL, worker.logs()[-3000:]
