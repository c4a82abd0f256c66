"""The ASGI fast path answers repeat reads of in-memory pages, and the plain uncached reads (issue 13),
exactly as Litestar would, and nothing else."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from uuid import UUID

import jwt
import pytest
from litestar import Litestar
from litestar.security.jwt import Token
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from app.config import Settings
from app.domain.accounts.auth import VerifiedTokens, agent_from_token
from app.domain.accounts.revocations import TokenRevocations
from app.domain.conversations.cache import CacheKeys
from app.server.core import create_asgi
from app.server.fastpath import CachedPageFastPath
from app.server.shedding import RefusedLoginShedding
from tests.kit.api import login
from tests.kit.data import fixture_for, post_webhook, text_message, with_message_id
from tests.kit.factories import PASSWORD, Tenant, create_tenant
from tests.kit.ingested import ingest

Client = AsyncTestClient[Litestar]
INBOX = "/api/whatsapp-optimized/conversations"


@pytest.fixture
async def fast(settings: Settings) -> AsyncIterator[tuple[Client, CachedPageFastPath]]:
    asgi = create_asgi(settings)
    async with AsyncTestClient(app=asgi) as client:  # type: ignore[arg-type]
        deadline = asyncio.get_running_loop().time() + 10
        while not asgi.cache.memory_live:  # the hub's subscription makes the memory layer usable
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.02)
        yield client, asgi


async def chat(engine: AsyncEngine, session: AsyncSession) -> tuple[Tenant, str]:
    tenant = await create_tenant(session)
    await ingest(engine, tenant, [text_message("5511966660000", "hello fast path")])
    return tenant, ""


def forget_tokens(asgi: CachedPageFastPath) -> None:
    """The next request goes to Litestar (which verifies its token again and remembers it)."""
    asgi.tokens._entries.clear()


def relevant(headers: dict[str, str]) -> dict[str, str]:
    return {name: value for name, value in headers.items() if name not in {"date", "server", "x-request-id"}}


async def test_a_repeat_read_is_answered_by_the_fast_path_exactly_as_litestar_answers(
    fast: tuple[Client, CachedPageFastPath], engine: AsyncEngine, session: AsyncSession
):
    client, asgi = fast
    tenant, _ = await chat(engine, session)
    auth = await login(client, tenant.agent.email)
    conversation_id = (await client.get(INBOX, headers=auth)).json()["items"][0]["id"]
    history = f"/api/whatsapp-optimized/messages/{conversation_id}"
    variants = [
        {},
        {"Origin": "http://localhost:5173"},  # the frontend's origin (allowed)
        {"Origin": "https://evil.example"},  # not allowed: no Access-Control-Allow-Origin
        {"Origin": "http://localhost:5173", "Cookie": "a=b"},
    ]
    for path in (history, f"{history}?limit=20", INBOX, f"{INBOX}?limit=7"):
        for extra in variants:
            headers = {**auth, **extra}
            asgi.cache.memory.clear()
            forget_tokens(asgi)
            before, loaded = asgi.served, asgi.loaded
            by_litestar = await client.get(path, headers=headers)  # a miss: Litestar answers, and caches
            assert (asgi.served, asgi.loaded) == (before, loaded)
            by_fast_path = await client.get(path, headers=headers)
            assert asgi.served == before + 1, (path, extra)
            assert by_fast_path.status_code == by_litestar.status_code == 200
            assert by_fast_path.content == by_litestar.content
            assert relevant(dict(by_fast_path.headers)) == relevant(dict(by_litestar.headers)), (path, extra)


async def test_everything_else_goes_to_litestar(
    fast: tuple[Client, CachedPageFastPath], engine: AsyncEngine, session: AsyncSession, settings: Settings
):
    client, asgi = fast
    tenant, _ = await chat(engine, session)
    other, _ = await chat(engine, session)
    auth = await login(client, tenant.agent.email)
    conversation_id = (await client.get(INBOX, headers=auth)).json()["items"][0]["id"]
    history = f"/api/whatsapp-optimized/messages/{conversation_id}"
    assert (await client.get(history, headers=auth)).status_code == 200
    served, loaded = asgi.served, asgi.loaded

    forged = jwt.encode(
        {"sub": "x", "exp": datetime.now(UTC) + timedelta(minutes=5)},
        "not-the-secret-but-long-enough-for-hs256",
    )
    expired = jwt.encode(
        {
            "sub": str(tenant.agent.id),
            "org_id": str(tenant.org_id),
            "role": "agent",
            "exp": datetime.now(UTC) - timedelta(seconds=1),
        },
        settings.auth.jwt_secret,
    )
    cases = [
        (history, {}, 401),
        (history, {"Authorization": f"Bearer {forged}"}, 401),
        (history, {"Authorization": f"Bearer {expired}"}, 401),
        (history, await login(client, other.agent.email), 404),  # another org's conversation
        (f"{history}?limit=0", auth, 400),
        (f"{history}?limit=101", auth, 400),
        (f"{history}?limit=007", auth, 400),  # Litestar refuses leading zeros too
        (f"{history}?before_seq=0", auth, 400),
        (f"{history}?before_seq=2&after_seq=1", auth, 400),
        (f"{history}?before_seq=2&before_seq=3", auth, 200),
        (f"{history}?after_seq=-1", auth, 400),
        (f"{history}?after_seq={2**63}", auth, 400),
        (f"{history}?after_seq=%31", auth, 200),
        (f"{INBOX}?unread=true", auth, 200),
        (f"{INBOX}?cursor=bm90LWEtY3Vyc29y", auth, 400),  # not one this API issued
        (f"{INBOX}?cursor=", auth, 200),
        # any spelling of the id but the canonical one is Litestar's to judge
        (f"/api/whatsapp-optimized/messages/{conversation_id.replace('-', '')}", auth, 200),
    ]
    for path, headers, status in cases:
        response = await client.get(path, headers=headers)
        assert response.status_code == status, (path, response.text)
        assert (asgi.served, asgi.loaded) == (served, loaded), path  # answered by Litestar, not the fast path


async def test_a_write_makes_the_fast_path_step_aside(
    fast: tuple[Client, CachedPageFastPath], engine: AsyncEngine, session: AsyncSession
):
    client, asgi = fast
    tenant = await create_tenant(session)
    instance = tenant.instance("evolution")
    first = with_message_id(
        "evolution", fixture_for("evolution", "v1_messages_upsert_text", instance), "FASTPATH01", text="one"
    )
    assert (await post_webhook(client, "evolution", instance, first)).status_code == 200
    auth = await login(client, tenant.agent.email)
    conversation_id = (await client.get(INBOX, headers=auth)).json()["items"][0]["id"]
    history = f"/api/whatsapp-optimized/messages/{conversation_id}"
    await client.get(history, headers=auth)
    await client.get(history, headers=auth)
    served = asgi.served

    second = with_message_id(
        "evolution", fixture_for("evolution", "v1_messages_upsert_text", instance), "FASTPATH02", text="two"
    )
    assert (await post_webhook(client, "evolution", instance, second)).status_code == 200
    page = (await client.get(history, headers=auth)).json()
    assert [m["body"] for m in page["items"]] == ["one", "two"]
    assert asgi.served == served  # the stale page was gone: read again (and cached) instead
    assert (await client.get(history, headers=auth)).json() == page
    assert asgi.served == served + 1


async def test_uncached_reads_are_answered_by_the_fast_path_exactly_as_litestar_answers(
    fast: tuple[Client, CachedPageFastPath], engine: AsyncEngine, session: AsyncSession
):
    client, asgi = fast
    tenant = await create_tenant(session)
    await ingest(engine, tenant, [text_message(f"55119666{n:05d}", f"inbox line {n}") for n in range(3)])
    await ingest(engine, tenant, [text_message("5511966600000", f"more {n}") for n in range(4)])
    auth = await login(client, tenant.agent.email)
    first = (await client.get(f"{INBOX}?limit=2", headers=auth)).json()
    assert first["next_cursor"]
    conversation_id = next(c["id"] for c in first["items"] if c["last_seq"] == 5)
    history = f"/api/whatsapp-optimized/messages/{conversation_id}"
    paths = [
        f"{history}?before_seq=4",
        f"{history}?limit=2&before_seq=5",
        f"{history}?after_seq=0",
        f"{history}?after_seq=3&limit=1",
        f"{history}?after_seq=5",  # an empty window
        f"{history}?before_seq={2**63 - 1}",
        history,  # a first read: memory emptied below, the page read through the cache's layers
        f"{INBOX}?cursor={first['next_cursor']}",
        f"{INBOX}?limit=1&cursor={first['next_cursor']}",
    ]
    for path in paths:
        for extra in ({}, {"Origin": "http://localhost:5173"}, {"Origin": "https://evil.example"}):
            headers = {**auth, **extra}
            asgi.cache.memory.clear()
            forget_tokens(asgi)
            served, loaded = asgi.served, asgi.loaded
            by_litestar = await client.get(path, headers=headers)
            assert (asgi.served, asgi.loaded) == (served, loaded), path
            asgi.cache.memory.clear()
            by_fast_path = await client.get(path, headers=headers)
            assert (asgi.served, asgi.loaded) == (served, loaded + 1), (path, extra)
            assert by_fast_path.status_code == by_litestar.status_code == 200
            assert by_fast_path.content == by_litestar.content, path
            assert relevant(dict(by_fast_path.headers)) == relevant(dict(by_litestar.headers)), (path, extra)


async def test_a_read_the_fast_path_cannot_answer_goes_to_litestar_as_it_was(
    fast: tuple[Client, CachedPageFastPath], engine: AsyncEngine, session: AsyncSession
):
    """Another org's id, an unknown id: the fast path's read raises, and Litestar answers the 404 itself."""
    client, asgi = fast
    tenant, _ = await chat(engine, session)
    other, _ = await chat(engine, session)
    theirs = (await client.get(INBOX, headers=await login(client, other.agent.email))).json()["items"][0][
        "id"
    ]
    auth = await login(client, tenant.agent.email)
    await client.get(INBOX, headers=auth)  # the token is known to the fast path from here on
    loaded = asgi.loaded
    answers = []
    for conversation_id in (theirs, str(UUID(int=7))):
        for query in ("", "?before_seq=2", "?after_seq=0"):
            response = await client.get(
                f"/api/whatsapp-optimized/messages/{conversation_id}{query}", headers=auth
            )
            assert response.status_code == 404, response.text
            assert response.headers["content-type"] == "application/problem+json"
            answers.append(response.json())
    assert all(answer == answers[0] for answer in answers)  # another org's id is no different from none
    assert asgi.loaded == loaded


async def test_a_first_read_answered_by_the_fast_path_is_in_redis_once_the_request_ended(
    fast: tuple[Client, CachedPageFastPath],
    engine: AsyncEngine,
    session: AsyncSession,
    redis: Redis,
    settings: Settings,
):
    client, asgi = fast
    tenant, _ = await chat(engine, session)
    auth = await login(client, tenant.agent.email)
    conversation_id = (await client.get(f"{INBOX}?limit=3", headers=auth)).json()["items"][0]["id"]
    loaded = asgi.loaded
    response = await client.get(f"/api/whatsapp-optimized/messages/{conversation_id}", headers=auth)
    assert response.status_code == 200
    assert asgi.loaded == loaded + 1
    keys = CacheKeys(settings.redis.key_prefix)
    stored = await redis.get(
        keys.page_key(keys.messages_scope(tenant.org_id, UUID(conversation_id)), "latest:50")
    )
    assert stored is not None and stored.endswith(response.content)


def _revocations(settings: Settings) -> TokenRevocations:
    """Revocations as this process has heard them (nothing here talks to the database)."""
    engine = create_async_engine(settings.db.url)
    return TokenRevocations(engine, settings.db.url, token_ttl_s=3600, check_interval_s=30)


def test_verified_tokens_forget_the_tokens_of_a_revoked_agent(settings: Settings) -> None:
    tokens = VerifiedTokens(_revocations(settings))
    closed: list[tuple[UUID, int]] = []
    tokens.revocations.on_revoked(lambda agent_id, generation: closed.append((agent_id, generation)))
    agent_id, other_id = UUID(int=5), UUID(int=6)

    def token(sub: UUID, generation: int) -> Token:
        return Token(
            sub=str(sub),
            exp=datetime.now(UTC) + timedelta(minutes=5),
            extras={"org_id": str(UUID(int=1)), "role": "agent", "gen": generation},
        )

    old, other = token(agent_id, 0), token(other_id, 0)
    tokens.add("old", old, agent_from_token(old))
    tokens.add("other", other, agent_from_token(other))
    tokens.revocations.note(agent_id, 0)  # what the database says of an agent never revoked: nothing
    assert tokens.get("old") is not None and closed == []
    tokens.revocations.note(agent_id, 1)
    assert closed == [(agent_id, 1)]
    assert tokens.get("old") is None
    assert tokens.get("other") is not None  # another agent's token is untouched
    tokens.revocations.note(agent_id, 1)  # heard twice (NOTIFY, then the periodic reload): acted on once
    assert closed == [(agent_id, 1)]
    new = token(agent_id, 1)  # the agent's next login
    tokens.add("new", new, agent_from_token(new))
    assert tokens.get("new") is not None


def test_verified_tokens_forget_expired_tokens_and_stay_bounded(settings: Settings) -> None:
    now = [time.time()]
    tokens = VerifiedTokens(_revocations(settings), max_entries=2, clock=lambda: now[0])

    def token(sub: str, expires_in: float) -> Token:
        return Token(
            sub=sub,
            exp=datetime.fromtimestamp(now[0] + expires_in, tz=UTC),
            extras={"org_id": str(UUID(int=1)), "role": "agent"},
        )

    short, long_ = token(str(UUID(int=2)), 10), token(str(UUID(int=3)), 100)
    tokens.add("short", short, agent_from_token(short))
    tokens.add("long", long_, agent_from_token(long_))
    assert tokens.get("short") is not None
    now[0] += 10
    assert tokens.get("short") is None  # expired exactly at exp
    assert tokens.get("long") is not None
    third = token(str(UUID(int=4)), 100)
    tokens.add("a", third, agent_from_token(third))
    tokens.add("b", third, agent_from_token(third))
    assert tokens.get("long") is None  # the oldest went when the bound was passed


async def test_a_login_from_an_address_over_its_budget_is_refused_at_the_door_exactly_as_litestar_refuses_it(
    settings: Settings, session: AsyncSession
):
    """The shedding door (app.server.shedding) answers a known-over-budget address's login with Litestar's
    429: same status, body and headers (the reset figures may differ by the second that passed)."""
    budget = 3
    tenant = await create_tenant(session)
    body = {"email": tenant.agent.email, "password": "not the password"}
    for extra in ({}, {"Origin": "http://localhost:5173"}, {"Origin": "https://evil.example"}):
        limited = replace(  # a budget of its own per variant: only the first refusal goes through Litestar
            settings,
            auth=replace(settings.auth, login_attempts_per_minute=budget),
            redis=replace(settings.redis, key_prefix=f"crm-shed-{secrets.token_hex(4)}"),
        )
        asgi = create_asgi(limited)
        door = asgi.app
        assert isinstance(door, RefusedLoginShedding)
        async with AsyncTestClient(app=asgi) as client:  # type: ignore[arg-type]
            for _ in range(budget):
                assert (await client.post("/api/auth/login", json=body, headers=extra)).status_code == 401
            by_litestar = await client.post("/api/auth/login", json=body, headers=extra)
            assert door.shed == 0, extra  # counted by the guard: now this process knows the address is over
            by_the_door = await client.post("/api/auth/login", json=body, headers=extra)
            assert door.shed == 1, extra
            assert by_the_door.status_code == by_litestar.status_code == 429
            assert by_the_door.json() == by_litestar.json()
            timing = {"retry-after", "ratelimit-reset"}
            assert {k: v for k, v in relevant(dict(by_the_door.headers)).items() if k not in timing} == {
                k: v for k, v in relevant(dict(by_litestar.headers)).items() if k not in timing
            }, extra
            for name in timing:
                assert abs(int(by_the_door.headers[name]) - int(by_litestar.headers[name])) <= 1
            # The right password too: the address is over its budget.
            right = await client.post("/api/auth/login", json={**body, "password": PASSWORD}, headers=extra)
            assert right.status_code == 429
            assert door.shed == 2
