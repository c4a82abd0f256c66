"""The read cache in one process (AsyncTestClient over the real app, and PageCache on the real Redis):
cached pages are the bytes Postgres would give and cost no SQL, writes are visible to the next read, the
L2 version check refuses pages loaded before a write, concurrent misses load once, and a dead Redis only
costs the cache."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID, uuid4

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Conversation, Message, WhatsAppInstance
from app.domain.conversations.cache import CacheKeys, PageCache, version_ttl_s
from app.domain.conversations.ingest import IngestService
from app.domain.realtime.publisher import EventPublisher
from app.lib.dbstats import QueryCounter
from app.server.core import create_app
from tests.kit.api import login
from tests.kit.data import fixture_for, post_webhook, text_message, with_message_id
from tests.kit.factories import Tenant, create_tenant
from tests.kit.measure import free_port
from tests.kit.page_cache import Loader, created, history_scope
from tests.kit.processes import private_redis

Client = AsyncTestClient[Litestar]
Json = dict[str, Any]
GATEWAY = "evolution"
INBOX = "/api/whatsapp-optimized/conversations"
STATS = "/api/whatsapp-optimized/stats"
CHAT = "5511999990000"


def history_url(conversation_id: UUID | str) -> str:
    return f"/api/whatsapp-optimized/messages/{conversation_id}"


def new_message_id() -> str:
    return f"3EB0{secrets.token_hex(8).upper()}"


async def cache_stats(client: Client, admin: dict[str, str]) -> Json:
    response = await client.get(STATS, headers=admin)
    assert response.status_code == 200, response.text
    cache: Json = response.json()["process"]["cache"]
    return cache


async def wait_memory_live(client: Client, admin: dict[str, str], timeout: float = 10.0) -> None:
    """L1 is used only once the hub's subscription is confirmed; poll /stats until it is."""
    deadline = time.monotonic() + timeout
    while not (await cache_stats(client, admin))["memory"]["live"]:
        assert time.monotonic() < deadline, "the in-memory cache never went live"
        await asyncio.sleep(0.02)


async def get_ok(client: Client, url: str, headers: dict[str, str], **params: Any) -> Any:
    response = await client.get(url, params=params, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response


async def get_cached(
    client: Client, url: str, headers: dict[str, str], admin: dict[str, str], **params: Any
) -> Json:
    """GET until an answer came from L1 (a memory hit), so the page is known to be cached right now.

    The hub's copy of a write's event can drop a page just after a request put it back; the loop simply
    reads again until a read is served from memory."""
    deadline = time.monotonic() + 10
    while True:
        hits = (await cache_stats(client, admin))["memory"]["hits"]
        response = await get_ok(client, url, headers, **params)
        if (await cache_stats(client, admin))["memory"]["hits"] > hits:
            body: Json = response.json()
            return body
        assert time.monotonic() < deadline, f"{url} was never served from memory"


async def post_text(client: Client, tenant: Tenant, text: str, *, message_id: str | None = None) -> Json:
    instance = tenant.instance(GATEWAY)
    data = with_message_id(
        GATEWAY,
        fixture_for(GATEWAY, "v2_messages_upsert_text", instance),
        message_id or new_message_id(),
        text=text,
    )
    response = await post_webhook(client, GATEWAY, instance, data)
    assert response.status_code == 200, response.text
    body: Json = response.json()
    return body


async def ingest_texts(engine: AsyncEngine, tenant: Tenant, chat: str, texts: list[str]) -> UUID:
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        result = await IngestService(session).apply(
            org_id=tenant.org_id,
            instance_id=tenant.instance(GATEWAY).id,
            events=[text_message(chat, text) for text in texts],
        )
        await session.commit()
    return result.created[0].conversation_id


async def conversation_row(session: AsyncSession, conversation_id: UUID) -> Conversation:
    session.expire_all()
    return await session.get_one(Conversation, conversation_id)


# -- through the API ---------------------------------------------------------------------------------


async def test_a_cached_page_is_the_same_bytes_as_postgres_gives_and_costs_no_sql(
    client: Client, session: AsyncSession, engine: AsyncEngine, settings: Settings
):
    tenant = await create_tenant(session)
    conversation_id = await ingest_texts(engine, tenant, CHAT, [f"m{i}" for i in range(1, 61)])
    await ingest_texts(engine, tenant, "5511999990001", ["another chat"])
    headers, admin = await login(client, tenant.agent.email), await login(client, tenant.admin.email)
    await wait_memory_live(client, admin)
    url = history_url(conversation_id)

    loads = (await cache_stats(client, admin))["postgres_loads"]
    first = await get_ok(client, url, headers)  # nothing cached for a new org: read from Postgres
    assert (await cache_stats(client, admin))["postgres_loads"] == loads + 1
    page = first.json()
    assert [m["seq"] for m in page["items"]] == list(range(11, 61))
    assert (page["last_seq"], page["has_more_before"], page["has_more_after"]) == (60, True, False)

    statements = QueryCounter.statements
    second = await get_ok(client, url, headers)
    assert QueryCounter.statements == statements, "a cache hit sent SQL"
    assert second.content == first.content
    # The uncached window path (before_seq) over the same 50 messages answers the very same bytes.
    assert (await get_ok(client, url, headers, before_seq=61)).content == first.content

    # Another page size is another variant: its own miss, then its own hit, equal to its window.
    small = await get_ok(client, url, headers, limit=10)
    statements = QueryCounter.statements
    assert (await get_ok(client, url, headers, limit=10)).content == small.content
    assert QueryCounter.statements == statements
    assert (await get_ok(client, url, headers, limit=10, before_seq=61)).content == small.content
    assert [m["seq"] for m in small.json()["items"]] == list(range(51, 61))

    inbox_first = await get_ok(client, INBOX, headers)
    statements = QueryCounter.statements
    inbox_second = await get_ok(client, INBOX, headers)
    assert QueryCounter.statements == statements
    assert inbox_second.content == inbox_first.content
    assert [c["last_message_preview"] for c in inbox_first.json()["items"]] == ["another chat", "m60"]
    # The inbox's second page (a cursor) reads Postgres and continues where the cached first page ends.
    head = (await get_ok(client, INBOX, headers, limit=1)).json()
    tail = (await get_ok(client, INBOX, headers, limit=1, cursor=head["next_cursor"])).json()
    assert [c["id"] for c in head["items"] + tail["items"]] == [c["id"] for c in inbox_first.json()["items"]]

    # A second app (another process's worth: empty L1) gets the same bytes from Redis, also without SQL.
    async with AsyncTestClient(app=create_app(settings)) as other:
        # A token's first use on a process reads its agent's standing once (revocations.py); not a page.
        await get_ok(other, "/api/whatsapp-optimized/websocket/info", headers)
        statements = QueryCounter.statements
        assert (await get_ok(other, url, headers)).content == first.content
        assert (await get_ok(other, INBOX, headers)).content == inbox_first.content
        assert QueryCounter.statements == statements
        assert (await cache_stats(other, admin))["redis"]["hits"] >= 2


async def test_writes_are_visible_to_the_next_read(client: Client, session: AsyncSession):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    await session.execute(  # credentials, so the API accepts outbound sends (no worker runs here)
        update(WhatsAppInstance)
        .where(WhatsAppInstance.id == instance.id)
        .values(api_base_url="http://127.0.0.1:9", api_token="gateway-token")
    )
    await session.commit()
    await post_text(client, tenant, "first")
    headers, admin = await login(client, tenant.agent.email), await login(client, tenant.admin.email)
    await wait_memory_live(client, admin)
    conversation_id = (await get_ok(client, INBOX, headers)).json()["items"][0]["id"]
    url = history_url(conversation_id)

    # 1. an inbound message (webhook ingest)
    await get_cached(client, url, headers, admin)
    await get_cached(client, INBOX, headers, admin)
    await post_text(client, tenant, "second")
    history = (await get_ok(client, url, headers)).json()
    assert [(m["seq"], m["body"]) for m in history["items"]] == [(1, "first"), (2, "second")]
    assert history["last_seq"] == 2
    line = (await get_ok(client, INBOX, headers)).json()["items"][0]
    assert (line["last_message_preview"], line["unread_count"], line["last_seq"]) == ("second", 2, 2)

    # 2. an agent's outbound send
    await get_cached(client, url, headers, admin)
    await get_cached(client, INBOX, headers, admin)
    sent = await client.post(url, json={"text": "reply", "client_message_id": "ryw-1"}, headers=headers)
    assert sent.status_code == 201, sent.text
    last = (await get_ok(client, url, headers)).json()["items"][-1]
    assert (last["seq"], last["body"], last["direction"]) == (3, "reply", "outbound")
    assert last["status"] == "pending"
    line = (await get_ok(client, INBOX, headers)).json()["items"][0]
    assert (line["last_message_preview"], line["last_message_direction"], line["last_seq"]) == (
        "reply",
        "outbound",
        3,
    )

    # 3. the read marker (the reply above already zeroed the count: a new message makes one unread)
    await post_text(client, tenant, "third")
    assert (await get_cached(client, INBOX, headers, admin))["items"][0]["unread_count"] == 1
    marked = await client.post(f"{INBOX}/{conversation_id}/read", headers=headers)
    assert marked.status_code == 200, marked.text
    assert (await get_ok(client, INBOX, headers)).json()["items"][0]["unread_count"] == 0

    # 4. a status webhook on a message sent from the phone
    own_id = new_message_id()
    own = with_message_id(GATEWAY, fixture_for(GATEWAY, "v2_messages_upsert_from_me", instance), own_id)
    assert (await post_webhook(client, GATEWAY, instance, own)).json()["created"] == 1
    cached = await get_cached(client, url, headers, admin)
    assert (cached["items"][-1]["gateway_message_id"], cached["items"][-1]["status"]) == (own_id, "sent")
    read = fixture_for(GATEWAY, "v2_messages_update_read", instance)
    read["data"]["keyId"] = own_id
    assert (await post_webhook(client, GATEWAY, instance, read)).json()["statuses"] == 1
    last = (await get_ok(client, url, headers)).json()["items"][-1]
    assert (last["gateway_message_id"], last["status"]) == (own_id, "read")


async def test_no_stale_page_is_left_after_concurrent_writes_and_reads(client: Client, session: AsyncSession):
    tenant = await create_tenant(session)
    await post_text(client, tenant, "seed")
    headers, admin = await login(client, tenant.agent.email), await login(client, tenant.admin.email)
    await wait_memory_live(client, admin)
    conversation_id = (await get_ok(client, INBOX, headers)).json()["items"][0]["id"]
    url = history_url(conversation_id)
    await get_cached(client, url, headers, admin)
    await get_cached(client, INBOX, headers, admin)

    writes = 40

    async def read_history() -> None:
        await get_ok(client, url, headers)

    async def read_inbox() -> None:
        await get_ok(client, INBOX, headers)

    jobs = []
    for i in range(writes):
        jobs += [post_text(client, tenant, f"burst {i}"), read_history(), read_inbox(), read_history()]
    await asyncio.gather(*jobs)

    row = await conversation_row(session, UUID(conversation_id))
    assert row.last_seq == writes + 1
    stored = await session.scalar(
        select(func.count()).select_from(Message).where(Message.conversation_id == row.id)
    )
    assert stored == writes + 1
    history = await get_ok(client, url, headers)
    page = history.json()
    assert page["last_seq"] == row.last_seq
    assert [m["seq"] for m in page["items"]] == list(range(1, writes + 2))
    # The same window read around the cache: identical bytes.
    assert history.content == (await get_ok(client, url, headers, before_seq=row.last_seq + 1)).content
    line = (await get_ok(client, INBOX, headers)).json()["items"][0]
    assert (line["last_seq"], line["unread_count"], line["last_message_preview"]) == (
        row.last_seq,
        row.unread_count,
        row.last_message_preview,
    )
    assert row.unread_count == writes + 1
    # and it stays right once the hub has heard every event (nothing stale was put back meanwhile)
    await asyncio.sleep(0.3)
    assert (await get_ok(client, url, headers)).content == history.content
    assert (await get_ok(client, INBOX, headers)).json()["items"][0]["last_seq"] == row.last_seq


async def test_another_orgs_conversation_is_404_and_caches_nothing(
    client: Client, session: AsyncSession, redis: Redis, settings: Settings
):
    owner, intruder = await create_tenant(session), await create_tenant(session)
    await post_text(client, owner, "confidential quote: R$ 12.345")
    owner_headers = await login(client, owner.agent.email)
    owner_admin = await login(client, owner.admin.email)
    await wait_memory_live(client, owner_admin)
    conversation_id = (await get_ok(client, INBOX, owner_headers)).json()["items"][0]["id"]
    url = history_url(conversation_id)
    owners_page = await get_cached(client, url, owner_headers, owner_admin)
    keys_before = (await cache_stats(client, owner_admin))["memory"]["keys"]

    headers = await login(client, intruder.agent.email)
    for _ in range(2):  # the second time too: no page was cached for the intruder by the first
        for target in (url, f"{INBOX}/{conversation_id}"):
            response = await client.get(target, headers=headers)
            assert response.status_code == 404, target
            assert "confidential" not in response.text
        assert (await client.get(url, params={"before_seq": 5}, headers=headers)).status_code == 404
    assert (await cache_stats(client, owner_admin))["memory"]["keys"] == keys_before
    keys = CacheKeys(settings.redis.key_prefix)
    intruder_pages = [k async for k in redis.scan_iter(match=f"{keys.root}:p:{intruder.org_id}:*")]
    assert intruder_pages == []
    owner_pages = [k async for k in redis.scan_iter(match=f"{keys.root}:p:{owner.org_id}:*")]
    assert owner_pages  # the owner's page is in Redis, under the owner's org only
    assert all(str(owner.org_id) in k.decode() for k in owner_pages)
    # and the owner is still served their page
    assert (await get_ok(client, url, owner_headers)).json() == owners_page


# -- PageCache against the real Redis ------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(settings: Settings) -> CacheKeys:
    return CacheKeys(settings.redis.key_prefix)


async def test_a_page_loaded_across_a_write_is_not_stored_in_redis(
    redis: Redis, keys: CacheKeys, settings: Settings
):
    org_id, conversation_id, scope = history_scope(keys)
    reader = PageCache(redis, keys, settings.cache)  # L1 off: only the Redis layer is exercised
    before = Loader(b'{"read":"before the write"}', gated=True)
    loading = asyncio.create_task(reader.get_or_load(scope, "latest:50", before))
    await before.started.wait()  # the reader has seen the version and is reading Postgres

    writer = PageCache(redis, keys, settings.cache)  # another process's
    publisher = EventPublisher(redis, settings.redis.key_prefix, writer)
    assert await publisher.publish(org_id, [created(conversation_id, 2)])
    before.release.set()
    assert await loading == b'{"read":"before the write"}'  # its own caller still gets what it read
    assert (reader.stats.redis.refused, reader.stats.redis.stores) == (1, 0)
    assert await redis.get(keys.page_key(scope, "latest:50")) is None

    after = Loader(b'{"read":"after the write"}')
    assert await reader.get_or_load(scope, "latest:50", after) == b'{"read":"after the write"}'
    assert after.calls == 1 and reader.stats.redis.stores == 1
    # Now Redis holds the current page: a fresh cache is served it without loading.
    unused = Loader(b"must not be called")
    fresh = PageCache(redis, keys, settings.cache)
    assert await fresh.get_or_load(scope, "latest:50", unused) == b'{"read":"after the write"}'
    assert (unused.calls, fresh.stats.redis.hits) == (0, 1)
    # A later write makes that page stale for everybody.
    assert await publisher.publish(org_id, [created(conversation_id, 3)])
    newest = Loader(b'{"read":"after the second write"}')
    assert await fresh.get_or_load(scope, "latest:50", newest) == b'{"read":"after the second write"}'
    assert (newest.calls, fresh.stats.redis.stale) == (1, 1)


async def test_a_staged_invalidation_also_refuses_the_store(
    redis: Redis, keys: CacheKeys, settings: Settings
):
    _, _, scope = history_scope(keys)
    reader = PageCache(redis, keys, settings.cache)
    inbox = keys.inbox_scope(uuid4())
    before = Loader(b"stale inbox", gated=True)
    loading = asyncio.create_task(reader.get_or_load(inbox, "-:-:0:50", before))
    await before.started.wait()
    await PageCache(redis, keys, settings.cache).send_bumps({inbox, scope})
    before.release.set()
    await loading
    assert reader.stats.redis.refused == 1
    assert await redis.get(keys.page_key(inbox, "-:-:0:50")) is None
    assert 0 < await redis.ttl(inbox) <= version_ttl_s(settings.cache)


async def test_memory_layer_refuses_a_load_begun_before_an_invalidation_and_does_not_let_later_reads_join_it(
    redis: Redis, keys: CacheKeys, settings: Settings
):
    _, _, scope = history_scope(keys)
    cache = PageCache(redis, keys, settings.cache)
    cache.set_memory_live(True)  # as the hub does once its subscription is confirmed
    before = Loader(b"before", gated=True)
    first = asyncio.create_task(cache.get_or_load(scope, "latest:50", before))
    await before.started.wait()
    cache.invalidate([scope])  # the write's event, heard by this process
    after = Loader(b"after")
    # A read that starts after the write must not wait for (and get) the load that began before it.
    assert await cache.get_or_load(scope, "latest:50", after) == b"after"
    assert (after.calls, cache.stats.coalesced) == (1, 0)
    before.release.set()
    assert await first == b"before"
    assert cache.stats.memory.refused == 1
    unused = Loader(b"must not be called")
    assert await cache.get_or_load(scope, "latest:50", unused) == b"after"  # from memory
    assert unused.calls == 0 and cache.stats.memory.hits == 1


async def test_the_writers_next_read_sees_its_write_even_if_a_read_ran_while_it_published(
    keys: CacheKeys, settings: Settings
):
    """EventPublisher drops this process's L1 copies, then bumps the versions in Redis. A read of the same
    page in between finds Redis's page still current and puts it back into L1; once publish has returned,
    the writer's next read must not get that pre-write page."""
    org_id, conversation_id, scope = history_scope(keys)
    with private_redis() as server:  # its writes are paused below: a Redis of this test's own
        client, admin = Redis.from_url(server.url), Redis.from_url(server.url)
        try:
            cache = PageCache(client, keys, settings.cache)
            cache.set_memory_live(True)
            publisher = EventPublisher(client, settings.redis.key_prefix, cache)
            assert (
                await cache.get_or_load(scope, "latest:50", Loader(b"before the write"))
                == b"before the write"
            )

            await admin.execute_command("CLIENT", "PAUSE", "5000", "WRITE")  # the bump waits; reads do not
            try:
                publishing = asyncio.create_task(publisher.publish(org_id, [created(conversation_id, 2)]))
                while cache.stats.memory.invalidations == 0:  # publish dropped the local copy and waits
                    await asyncio.sleep(0)
                # A read concurrent with the write may answer either page; this one gets Redis's old one.
                concurrent = Loader(b"after the write")
                assert await cache.get_or_load(scope, "latest:50", concurrent) == b"before the write"
                assert concurrent.calls == 0
            finally:
                await admin.execute_command("CLIENT", "UNPAUSE")
            assert await publishing

            after = Loader(b"after the write")
            assert await cache.get_or_load(scope, "latest:50", after) == b"after the write", (
                "the writer's read after publish() returned got the page from before its write"
            )
        finally:
            await client.aclose()
            await admin.aclose()


async def test_concurrent_misses_of_one_page_load_it_once(redis: Redis, keys: CacheKeys, settings: Settings):
    _, _, scope = history_scope(keys)
    cache = PageCache(redis, keys, settings.cache)
    loader = Loader(b'{"items":[]}', gated=True)
    readers = [asyncio.create_task(cache.get_or_load(scope, "latest:50", loader)) for _ in range(20)]
    await loader.started.wait()
    loader.release.set()
    assert await asyncio.gather(*readers) == [b'{"items":[]}'] * 20
    assert (loader.calls, cache.stats.loads, cache.stats.coalesced) == (1, 1, 19)

    # A failed load fails everyone who waited for it, and the next read loads again.
    class Boom(Exception):
        pass

    gate = asyncio.Event()
    calls = 0

    async def failing() -> bytes:
        nonlocal calls
        calls += 1
        await gate.wait()
        raise Boom

    _, _, other = history_scope(keys)
    waiting = [asyncio.create_task(cache.get_or_load(other, "latest:50", failing)) for _ in range(5)]
    while calls == 0:
        await asyncio.sleep(0.001)
    gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, Boom) for r in results) and calls == 1
    retry = Loader(b"loaded again")
    assert await cache.get_or_load(other, "latest:50", retry) == b"loaded again"
    assert retry.calls == 1


async def test_a_reader_cancelled_mid_load_does_not_fail_the_readers_waiting_for_it(
    redis: Redis, keys: CacheKeys, settings: Settings
):
    _, _, scope = history_scope(keys)
    cache = PageCache(redis, keys, settings.cache)
    first_loader = Loader(b"never finished", gated=True)
    leader = asyncio.create_task(cache.get_or_load(scope, "latest:50", first_loader))
    await first_loader.started.wait()
    own = Loader(b"loaded by the follower")
    follower = asyncio.create_task(cache.get_or_load(scope, "latest:50", own))
    await asyncio.sleep(0.01)  # the follower is waiting for the leader's load
    leader.cancel()  # its client went away
    with contextlib.suppress(asyncio.CancelledError):
        await leader
    assert await follower == b"loaded by the follower"
    assert own.calls == 1


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts and never answers: a hung Redis."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_redis_down_or_hung_costs_only_the_cache(keys: CacheKeys, settings: Settings):
    _, _, scope = history_scope(keys)
    clock = FakeClock()
    down = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        cache = PageCache(down, keys, settings.cache, clock=clock)
        loader = Loader(b'{"from":"postgres"}')
        assert await cache.get_or_load(scope, "latest:50", loader) == b'{"from":"postgres"}'
        assert (cache.stats.redis.errors, cache.stats.loads) == (1, 1)
        # Within the back-off, Redis is not tried again: no error, straight to the loader.
        assert await cache.get_or_load(scope, "latest:50", loader) == b'{"from":"postgres"}'
        assert (cache.stats.redis.errors, loader.calls) == (1, 2)
        clock.now += 1.0
        assert await cache.get_or_load(scope, "latest:50", loader) == b'{"from":"postgres"}'
        assert (cache.stats.redis.errors, loader.calls) == (2, 3)
        described = cache.describe()["redis"]
        assert isinstance(described, dict) and described["errors"] == 2  # what /stats shows
    finally:
        await down.aclose()

    async with silent_server() as port:
        hung = Redis.from_url(f"redis://127.0.0.1:{port}/0")
        try:
            cache = PageCache(hung, keys, settings.cache, clock=clock)
            loader = Loader(b'{"from":"postgres"}')
            async with asyncio.timeout(10):  # the cache's own Redis timeout ends it long before this
                assert await cache.get_or_load(scope, "latest:50", loader) == b'{"from":"postgres"}'
            assert (cache.stats.redis.errors, loader.calls) == (1, 1)
        finally:
            with contextlib.suppress(Exception):
                await hung.aclose()
