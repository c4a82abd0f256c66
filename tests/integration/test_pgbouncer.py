"""Everything that talks to Postgres, through a real pgbouncer in transaction mode with
DB_STATEMENT_CACHE_SIZE=0 (how Supabase's pooler on port 6543 behaves; issue 14): migrations, the CLI,
and real API and worker processes doing an ingest, a media job, a send and the cache jobs.

What used to fail here: the worker's `warm_cache` (`DuplicatePreparedStatementError: prepared statement
"__asyncpg_stmt_1__" already exists`: the workers' engine dropped the setting), media left pending, the
failed job's result not stored, and the CLI reporting the clash as a uniqueness error. pgbouncer keeps few
server connections for many clients (tests/kit/pgbouncer.py), so a statement name one client chose is
found by the next on the same server connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import UUID, uuid4

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory
from arq import ArqRedis
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.db.models import Media, MediaState, Message, MessageStatus
from app.domain.conversations.cache import CacheKeys
from app.lib.jobs import queue_name
from tests.fake_gateway import FakeGateway, ok
from tests.kit.api import eventually, login_token, open_jobs, post_text
from tests.kit.data import env_for, image_webhook, jpeg, signed_headers
from tests.kit.databases import ROOT, alembic_config, plain_dsn, scratch_database
from tests.kit.factories import PASSWORD
from tests.kit.ingested import tenant_with_chat
from tests.kit.pgbouncer import PgBouncer, pgbouncer
from tests.kit.processes import api_processes, arq_worker

BIN = Path(sys.executable).parent
DONE, FAILED = "\u25cf", "\u00d7"  # how arq's log line ends a job's outcome
CLASH = "prepared statement"  # in the driver's error for a clash or a statement the server does not have


@pytest.fixture(scope="module")
def bouncer(database_url: str) -> Iterator[PgBouncer]:
    with pgbouncer(database_url) as running:
        yield running


@pytest.fixture(scope="module")
def pooled(settings: Settings, bouncer: PgBouncer) -> Settings:
    """The run's settings reached through pgbouncer, as README says for Supabase's pooler: statement cache
    0, LISTEN on a direct connection, and a key prefix of their own (the workers take its whole queue)."""
    db = dataclasses.replace(
        settings.db, url=bouncer.url(settings.db.url), statement_cache_size=0, listen_url=settings.db.url
    )
    redis = dataclasses.replace(settings.redis, key_prefix=f"{settings.redis.key_prefix}-pgb")
    return dataclasses.replace(settings, db=db, redis=redis)


def test_migrations_run_through_pgbouncer(service_urls: tuple[str, str], bouncer: PgBouncer) -> None:
    with scratch_database(service_urls[0], "crm_pgbouncer", migrate=False) as url:
        env = {**os.environ, "DATABASE_URL": bouncer.url(url), "DB_STATEMENT_CACHE_SIZE": "0"}
        upgrade = subprocess.run(
            [BIN / "alembic", "upgrade", "head"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert upgrade.returncode == 0, upgrade.stderr[-3000:]

        async def current() -> str:
            conn = await asyncpg.connect(plain_dsn(url))
            try:
                return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
            finally:
                await conn.close()

        head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
        assert asyncio.run(current()) == head


def _cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env_for(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_runs_through_pgbouncer_and_names_a_real_conflict(pooled: Settings) -> None:
    # Each command is a new client on the same few server connections, which keep what earlier clients
    # prepared: the second command clashed with the first's statement names.
    slug = f"pooled-{uuid4().hex[:8]}"
    org = _cli(pooled, "admin", "create-org", "Pooled Support", "--slug", slug, "--json")
    assert org.returncode == 0, org.stderr
    assert json.loads(org.stdout)["slug"] == slug
    agent_args = ["--org", slug, "--email", f"ana@{slug}.test", "--name", "Ana", "--password", PASSWORD]
    agent = _cli(pooled, "admin", "create-agent", *agent_args, "--json")
    assert agent.returncode == 0, agent.stderr
    instance = _cli(
        pooled, "admin", "create-instance", "--org", slug, "--gateway", "evolution", "--name", slug
    )
    assert instance.returncode == 0, instance.stderr

    again = _cli(pooled, "admin", "create-org", "Pooled Again", "--slug", slug)
    assert again.returncode == 1
    assert "already exists or conflicts with existing data" in again.stderr
    assert "organizations" in again.stderr and CLASH not in again.stderr, again.stderr
    assert "Traceback" not in again.stderr


@pytest.fixture
async def jobs(pooled: Settings) -> AsyncIterator[ArqRedis]:
    pool = await open_jobs(pooled.redis.url, queue_name(pooled.redis.key_prefix))
    yield pool
    keys = [key async for key in pool.scan_iter(match=f"{pooled.redis.key_prefix}:*")]
    if keys:
        await pool.delete(*keys)
    await pool.aclose()


async def test_ingest_media_send_and_cache_jobs_run_through_pgbouncer(
    pooled: Settings, session: AsyncSession, engine: AsyncEngine, jobs: ArqRedis, redis: Redis
) -> None:
    async with FakeGateway() as gateway:
        gateway.respond(r"/send-message$", ok("wppconnect", "true_5511944440000@c.us_3EB0POOLED01"))
        tenant, conversation_id = await tenant_with_chat(session, engine, gateway.base_url)
        evolution = tenant.instance("evolution")
        with (
            api_processes(1, env_for(pooled)) as [api],
            arq_worker(pooled) as worker,
            arq_worker(pooled, "MediaWorkerSettings") as media_worker,
        ):
            # Ingest: the webhook's group-committed batch (a raw asyncpg statement) through the pooler.
            await post_text(api, evolution, "3EB0POOLEDTEXT1", "olá pelo pooler")

            async def texts() -> int:
                return int(
                    await session.scalar(
                        select(func.count())
                        .select_from(Message)
                        .where(Message.org_id == tenant.org_id, Message.body == "olá pelo pooler")
                    )
                    or 0
                )

            assert await texts() == 1

            # A media job: the media worker downloads nothing (inline), processes and stores it.
            body = json.dumps(image_webhook(evolution, "3EB0POOLEDIMG01", jpeg(64, 48))).encode()
            async with httpx.AsyncClient(base_url=api.base_url, trust_env=False) as http:
                answer = await http.post(
                    f"/api/webhooks/evolution/{evolution.name}",
                    content=body,
                    headers=signed_headers("evolution", body, evolution),
                )
            assert answer.status_code == 200, answer.text

            async def media_ready() -> bool:
                session.expire_all()
                states = (
                    await session.scalars(select(Media.state).where(Media.org_id == tenant.org_id))
                ).all()
                assert MediaState.FAILED not in states, media_worker.logs()[-3000:]
                return states == [MediaState.READY]

            await eventually(media_ready, "the image processed by the media worker", timeout=60)

            # A send: the API stores it, the worker sends it and records the gateway's id.
            token = await login_token(api.base_url, tenant.agent.email, PASSWORD)
            async with httpx.AsyncClient(base_url=api.base_url, trust_env=False) as http:
                sent = await http.post(
                    f"/api/whatsapp-optimized/messages/{conversation_id}",
                    json={"text": "enviado pelo pooler", "client_message_id": "pooled-1"},
                    headers={"Authorization": f"Bearer {token}"},
                )
            assert sent.status_code == 201, sent.text
            message_id = UUID(sent.json()["id"])

            async def delivered() -> bool:
                session.expire_all()
                message = await session.get_one(Message, message_id)
                assert message.status is not MessageStatus.FAILED, message.error
                return message.status is MessageStatus.SENT

            await eventually(delivered, "the send recorded as sent", timeout=30)
            assert len(gateway.requests) == 1

            # The cache jobs, which failed here first: warm_cache's result is stored, and is a success.
            queue = queue_name(pooled.redis.key_prefix)
            job = await jobs.enqueue_job("warm_cache", _job_id=f"{queue}:warm_cache:{uuid4()}")
            assert job is not None
            await job.result(timeout=60)  # raises the job's failure
            info = await job.result_info()
            assert info is not None and info.success, info
            # expire_cache runs as its cron only, which keeps no result: its outcome is arq's log line.
            expire = f"cron:{queue}:expire"
            assert await jobs.enqueue_job(expire, _job_id=f"{queue}:expire:{uuid4()}") is not None

            async def expired() -> bool:
                assert f"← {expire} {FAILED}" not in worker.logs(), worker.logs()[-3000:]
                return f"← {expire} {DONE}" in worker.logs()

            await eventually(expired, "expire_cache done", timeout=60)
            # warm_cache wrote pages of this org's conversations to Redis.
            pages = [
                key async for key in redis.scan_iter(match=CacheKeys(pooled.redis.key_prefix).page_pattern())
            ]
            assert any(str(tenant.org_id).encode() in key for key in pages), pages

            for process in (worker, media_worker):
                assert CLASH not in process.logs(), process.logs()[-3000:]
            assert CLASH not in api.logs(), api.logs()[-3000:]
