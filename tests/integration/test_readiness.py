"""/ready: Postgres, Redis and both workers' recent health checks; /health only says the process is up."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

from litestar.testing import AsyncTestClient

from app.config import Settings
from app.server.core import create_app
from tests.kit.data import env_for
from tests.kit.measure import free_port
from tests.kit.processes import ROOT


def _worker(settings: Settings, name: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "arq", f"app.workers.{name}"],
        cwd=ROOT,
        env=env_for(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop(processes: Iterator[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)


async def test_ready_needs_both_workers_and_says_which_is_missing(settings: Settings):
    # A deployment prefix of this test's own: workers of other tests must not count.
    own = dataclasses.replace(
        settings, redis=dataclasses.replace(settings.redis, key_prefix=f"{settings.redis.key_prefix}-ready")
    )
    async with AsyncTestClient(app=create_app(own)) as client:
        assert (await client.get("/health")).status_code == 200
        response = await client.get("/ready")
        assert response.status_code == 503
        assert response.json()["workers"] == {
            "default": "no recent health check",
            "media": "no recent health check",
        }
        workers = [_worker(own, "WorkerSettings"), _worker(own, "MediaWorkerSettings")]
        try:
            deadline = asyncio.get_running_loop().time() + 30
            while (response := await client.get("/ready")).status_code != 200:
                assert all(w.poll() is None for w in workers), "a worker exited"
                assert asyncio.get_running_loop().time() < deadline, response.text
                await asyncio.sleep(0.2)
            body = response.json()
            assert body == {
                "status": "ok",
                "database": "ok",
                "redis": "ok",
                "workers": {"default": "ok", "media": "ok"},
            }
        finally:
            _stop(iter(workers))


async def test_ready_is_503_when_postgres_or_redis_is_unreachable(settings: Settings):
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    no_database = dataclasses.replace(
        settings, db=dataclasses.replace(settings.db, url=f"postgresql+asyncpg://postgres@{nowhere}/crm")
    )
    no_redis = dataclasses.replace(
        settings, redis=dataclasses.replace(settings.redis, url=f"redis://{nowhere}/0")
    )
    for broken, field in ((no_database, "database"), (no_redis, "redis")):
        async with AsyncTestClient(app=create_app(broken)) as client:
            assert (await client.get("/health")).status_code == 200  # alive, just not ready
            response = await client.get("/ready")
            assert response.status_code == 503
            assert response.json()[field] == "unavailable"
            assert response.json()["status"] == "unavailable"
