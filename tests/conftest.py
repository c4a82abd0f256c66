"""Test rig: real Postgres and Redis (from the environment, else embedded), one fresh database per run.

The run's database is created here and built by `alembic upgrade head`, so the migrations are what every
test exercises. Tests isolate themselves by creating their own organisation; nothing is truncated.

Under pytest-xdist (issue 14: `just test` runs on 2 workers) each worker is a run of its own: its own
database and its own Redis key prefix, both named after the worker (`gw0`, ...) so a leftover is traceable.
The tiers (markers) are given by tests/tiers.py.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from arq import ArqRedis
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.config import (
    Settings,
)
from app.lib.embedded import dev_services
from app.lib.jobs import media_queue_name
from tests.kit.api import open_jobs
from tests.kit.data import env_for, make_settings
from tests.kit.databases import scratch_database
from tests.kit.processes import ApiProcess, api_processes

pytest_plugins = ["tests.tiers"]

# "gw0", "gw1", ... under pytest-xdist; "main" in a run of one process.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")


@pytest.fixture(scope="session")
def service_urls() -> Iterator[tuple[str, str]]:
    with (
        tempfile.TemporaryDirectory(prefix="crm-test-") as state,
        dev_services(Path(state), ephemeral=True) as urls,
    ):
        yield urls.database_url, urls.redis_url


@pytest.fixture(scope="session")
def database_url(service_urls: tuple[str, str]) -> Iterator[str]:
    """A database of this run's own, migrated to head with the real Alembic scripts, dropped afterwards."""
    with scratch_database(service_urls[0], f"crm_test_{WORKER}") as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(service_urls: tuple[str, str]) -> str:
    return service_urls[1]


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this run's processed media is stored (the API serves it from here)."""
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str, media_dir: Path) -> Settings:
    return make_settings(
        database_url,
        redis_url,
        environment="test",
        key_prefix=f"crm-test-{WORKER}",  # make_settings adds -<random>
        log_level=os.environ.get("TEST_LOG_LEVEL", "WARNING"),
        media={"storage_url": media_dir.resolve().as_uri()},
        db={"pool_size": 20, "max_overflow": 20},
        # Many logins per minute from one test client: the limit itself has its own test.
        auth={
            "token_ttl_seconds": 600,
            "login_attempts_per_minute": 10_000,
            "login_failures_per_account": 10_000,  # tests guess wrong on purpose; the limit has its own test
            # Every in-process test client is one address, and many tests post wrong secrets on purpose.
            "webhook_auth_failures_per_minute": 10_000,
            # Factory agents are @example.com: their admins see deployment figures (the scoping has a test).
            "deployment_admins": ["@example.com"],
        },
    )


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(settings.db.url, pool_size=10, max_overflow=10)
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        yield session


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def app(settings: Settings) -> Litestar:
    from app.server.core import create_app

    # A fresh app per test: AsyncTestClient may run it on another loop (docs/ARCHITECTURE.md pitfalls).
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=app) as client:
        yield client


def pytest_configure(config: Any) -> None:
    os.environ.setdefault("APP_ENV", "test")


@pytest.fixture(scope="session")
def api_pair(settings: Settings) -> Iterator[list[ApiProcess]]:
    """Two real API processes on two ports sharing this run's Postgres and Redis."""
    with api_processes(2, env_for(settings, WS_CATCH_UP_SECONDS="1")) as processes:
        yield processes


@pytest.fixture
async def arq_pool(settings: Settings) -> AsyncIterator[ArqRedis]:
    """An arq pool on the media queue, as the API and the media worker open it (same serializer)."""
    pool = await open_jobs(settings.redis.url, media_queue_name(settings.redis.key_prefix))
    yield pool
    await pool.aclose()
