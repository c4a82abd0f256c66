"""Fixtures of the security suite: the app as uvicorn serves it (fast path in front of Litestar), and two
organisations, A (the caller) and B (the victim), each with data of its own; the media worker's context."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.server.core import create_asgi
from tests.kit.data import env_for
from tests.kit.media import media_worker_context
from tests.kit.processes import ApiProcess, api_processes
from tests.security.support import (
    LOGIN_LIMIT,
    WEBHOOK_AUTH_LIMIT,
    WEBHOOK_LIMIT,
    Orgs,
    Served,
    seed_org,
    wait_memory_live,
)


@pytest.fixture
async def served(settings: Settings) -> AsyncIterator[Served]:
    """The full ASGI stack (`app.asgi:app`): fast path, then Litestar; its memory layer live."""
    asgi = create_asgi(settings)
    async with AsyncTestClient(app=asgi) as client:  # type: ignore[arg-type]
        await wait_memory_live(asgi)
        yield Served(client, asgi)


@pytest.fixture
async def world(engine: AsyncEngine, session: AsyncSession, settings: Settings) -> Orgs:
    a = await seed_org(engine, session, settings, texts=2)
    b = await seed_org(engine, session, settings, texts=4, can_send=True)
    return Orgs(a, b)


@pytest.fixture(scope="session")
def processes(settings: Settings) -> Iterator[list[ApiProcess]]:
    """Two real API processes (uvicorn) on this run's Postgres, Redis and media directory. Their Redis
    namespace is their own (login counts, events, cache), and they trust no proxy, so a client cannot
    change its address with X-Forwarded-For."""
    env = env_for(
        settings,
        LOGIN_ATTEMPTS_PER_MINUTE=str(LOGIN_LIMIT),
        WEBHOOK_AUTH_FAILURES_PER_MINUTE=str(WEBHOOK_AUTH_LIMIT),
        WEBHOOK_MAX_BODY_BYTES=str(WEBHOOK_LIMIT),
        REDIS_KEY_PREFIX=f"crm-security-{secrets.token_hex(4)}",
        FORWARDED_ALLOW_IPS="192.0.2.1",
        WS_CATCH_UP_SECONDS="1",
    )
    with api_processes(2, env) as started:
        yield started


@pytest.fixture
async def worker_ctx(engine: AsyncEngine, settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """What the media worker's startup builds, on this run's database, Redis and storage directory."""
    async with media_worker_context(engine, settings) as ctx:
        yield ctx
