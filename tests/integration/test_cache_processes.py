"""The read cache across real API processes: a write through one process is visible through another long
before any TTL could explain it, and Redis going away (stopped, or cut off by the network while it keeps
its data) costs the cache, never a correct answer."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db.models import Message
from app.domain.conversations.cache import _REDIS_BACKOFF_S
from tests.kit.api import TEXT_GATEWAY, login_token, post_text
from tests.kit.data import env_for
from tests.kit.factories import PASSWORD, Tenant, create_tenant
from tests.kit.processes import ApiProcess, api_processes, private_redis
from tests.kit.tcp_relay import relay_to

Json = dict[str, Any]
INBOX = "/api/whatsapp-optimized/conversations"
STATS = "/api/whatsapp-optimized/stats"
# Long enough that only an invalidation can explain a fresh page within these tests.
LONG_TTL = "600"


class Agent:
    """An agent's and an admin's view of one API process, over HTTP."""

    def __init__(self, process: ApiProcess, token: str, admin_token: str) -> None:
        self.process = process
        self.http = httpx.AsyncClient(base_url=process.base_url, timeout=10.0, trust_env=False)
        self.headers = {"Authorization": f"Bearer {token}"}
        self.admin = {"Authorization": f"Bearer {admin_token}"}

    @classmethod
    async def login(cls, process: ApiProcess, tenant: Tenant) -> Agent:
        token = await login_token(process.base_url, tenant.agent.email, PASSWORD)
        admin_token = await login_token(process.base_url, tenant.admin.email, PASSWORD)
        return cls(process, token, admin_token)

    async def close(self) -> None:
        await self.http.aclose()

    async def get(self, url: str, **params: Any) -> Json:
        response = await self.http.get(url, params=params, headers=self.headers)
        assert response.status_code == 200, f"{url}: {response.status_code} {response.text}"
        body: Json = response.json()
        return body

    async def history(self, conversation_id: str) -> Json:
        return await self.get(f"/api/whatsapp-optimized/messages/{conversation_id}")

    async def inbox(self) -> Json:
        return await self.get(INBOX)

    async def cache(self) -> Json:
        response = await self.http.get(STATS, headers=self.admin)
        assert response.status_code == 200, response.text
        cache: Json = response.json()["process"]["cache"]
        return cache

    async def wait_memory_live(self, live: bool = True, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while (await self.cache())["memory"]["live"] is not live:
            assert time.monotonic() < deadline, f"memory live never became {live}"
            await asyncio.sleep(0.05)

    async def read_from_memory(self, url: str) -> Json:
        """GET until one answer came from this process's L1: the page is cached there now."""
        deadline = time.monotonic() + 10
        while True:
            hits = (await self.cache())["memory"]["hits"]
            body = await self.get(url)
            if (await self.cache())["memory"]["hits"] > hits:
                return body
            assert time.monotonic() < deadline, f"{url} was never served from memory"


def bodies(page: Json) -> list[str]:
    return [m["body"] for m in page["items"]]


async def wait_for(check: Any, what: str, timeout: float = 5.0) -> Any:
    """Poll an async check until it returns something truthy, failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def setup_conversation(session: AsyncSession, process: ApiProcess) -> tuple[Tenant, Agent, str]:
    tenant = await create_tenant(session)
    await post_text(process, tenant.instance(TEXT_GATEWAY), "SEED-1", "first")
    agent = await Agent.login(process, tenant)
    conversation_id = str((await agent.inbox())["items"][0]["id"])
    return tenant, agent, conversation_id


async def test_a_write_through_a_reaches_the_cached_pages_of_b_by_invalidation(
    settings: Settings, session: AsyncSession
):
    env = env_for(settings, CACHE_MEMORY_TTL_SECONDS=LONG_TTL)
    with api_processes(2, env) as (a, b):
        tenant, on_b, conversation_id = await setup_conversation(session, b)
        try:
            await on_b.wait_memory_live()
            url = f"/api/whatsapp-optimized/messages/{conversation_id}"
            assert bodies(await on_b.read_from_memory(url)) == ["first"]
            assert (await on_b.read_from_memory(INBOX))["items"][0]["last_message_preview"] == "first"
            before = await on_b.cache()
            assert before["memory"]["max_bytes"] == settings.cache.memory_max_bytes

            await post_text(a, tenant.instance(TEXT_GATEWAY), "FROM-A-1", "written through A")

            async def b_shows_it() -> bool:
                return bodies(await on_b.history(conversation_id)) == ["first", "written through A"]

            async def b_inbox_shows_it() -> bool:
                line = (await on_b.inbox())["items"][0]
                return bool(line["last_message_preview"] == "written through A" and line["last_seq"] == 2)

            # 5 s against a 600 s TTL: only B's subscription dropping its copies explains it.
            await wait_for(b_shows_it, "B's history shows A's write")
            await wait_for(b_inbox_shows_it, "B's inbox shows A's write")
            after = await on_b.cache()
            assert after["memory"]["invalidations"] >= before["memory"]["invalidations"] + 2
            assert after["memory"]["expirations"] == 0
            # and B caches the new page again
            assert bodies(await on_b.read_from_memory(url)) == ["first", "written through A"]
        finally:
            await on_b.close()


async def test_redis_stopped_mid_test_costs_only_the_cache(settings: Settings, session: AsyncSession):
    with (
        private_redis() as redis,
        api_processes(1, env_for(settings, REDIS_URL=redis.url, CACHE_MEMORY_TTL_SECONDS=LONG_TTL)) as (
            process,
        ),
    ):
        tenant, agent, conversation_id = await setup_conversation(session, process)
        try:
            await agent.wait_memory_live()
            url = f"/api/whatsapp-optimized/messages/{conversation_id}"
            assert bodies(await agent.read_from_memory(url)) == ["first"]
            await agent.read_from_memory(INBOX)

            redis.stop()
            assert bodies(await agent.history(conversation_id)) == ["first"]
            assert (await agent.inbox())["items"][0]["last_message_preview"] == "first"
            await post_text(process, tenant.instance(TEXT_GATEWAY), "DOWN-1", "while Redis is down")
            stored = await session.scalar(  # this org's: test_realtime_edges posts a "DOWN-1" of its own
                select(Message).where(Message.gateway_message_id == "DOWN-1", Message.org_id == tenant.org_id)
            )
            assert stored is not None and stored.body == "while Redis is down"
            assert bodies(await agent.history(conversation_id)) == ["first", "while Redis is down"]
            line = (await agent.inbox())["items"][0]
            assert (line["last_message_preview"], line["last_seq"]) == ("while Redis is down", 2)
            await agent.wait_memory_live(False)  # the subscription is gone: L1 must not be trusted
            assert (await agent.cache())["redis"]["errors"] > 0

            redis.start()
            assert bodies(await agent.history(conversation_id)) == ["first", "while Redis is down"]
            await agent.wait_memory_live(True)
            assert bodies(await agent.read_from_memory(url)) == ["first", "while Redis is down"]
            assert (await agent.read_from_memory(INBOX))["items"][0]["last_seq"] == 2
            # Writes invalidate again once Redis is back.
            await post_text(process, tenant.instance(TEXT_GATEWAY), "UP-1", "after the restart")
            assert bodies(await agent.history(conversation_id))[-1] == "after the restart"
            assert (await agent.inbox())["items"][0]["last_message_preview"] == "after the restart"
        finally:
            await agent.close()


async def test_a_write_made_while_redis_was_unreachable_stays_visible_after_it_is_back(
    settings: Settings, session: AsyncSession
):
    """Redis unreachable for a moment (it keeps running, with its pages): the webhook commits, its publish
    fails, so the version of the conversation's pages is never bumped. Once Redis is reachable again, the
    page cached in Redis before the write must not be served as current."""
    with (
        relay_to(settings.redis.url) as (relay, relayed_url),
        api_processes(1, env_for(settings, REDIS_URL=relayed_url, CACHE_MEMORY_TTL_SECONDS=LONG_TTL)) as (
            process,
        ),
    ):
        tenant, agent, conversation_id = await setup_conversation(session, process)
        try:
            await agent.wait_memory_live()
            url = f"/api/whatsapp-optimized/messages/{conversation_id}"
            assert bodies(await agent.read_from_memory(url)) == ["first"]  # in L1, and in Redis (L2)
            assert (await agent.cache())["redis"]["stores"] >= 1

            relay.cut()
            await post_text(process, tenant.instance(TEXT_GATEWAY), "CUT-1", "written while cut off")
            assert bodies(await agent.history(conversation_id)) == ["first", "written while cut off"]
            await agent.wait_memory_live(False)

            relay.restore()
            await agent.wait_memory_live(True)
            await asyncio.sleep(_REDIS_BACKOFF_S + 0.2)  # past the cache's pause after a Redis error
            for _ in range(3):
                page = await agent.history(conversation_id)
                assert bodies(page) == ["first", "written while cut off"], (
                    "a page cached before the write is served again after Redis came back"
                )
                assert page["last_seq"] == 2
        finally:
            await agent.close()
