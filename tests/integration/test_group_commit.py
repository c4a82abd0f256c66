"""Group commit (issue 13): webhooks applied together in one statement and one transaction keep every
per-message guarantee — one row per (instance, gateway id), duplicates inside one batch included; a webhook
Postgres refuses fails alone; gapless seq per conversation with two API processes writing at once."""

from __future__ import annotations

import asyncio
import json
import random
from uuid import uuid4

import asyncpg
import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.db.models import Direction, MessageStatus, WhatsAppInstance
from app.domain.ingest.batch_rows import RequestFailed
from app.domain.ingest.batcher import Applied, IngestBatcher
from tests.kit.data import env_for, fixture_for, signed_headers, status, text_message, with_message_id
from tests.kit.databases import plain_dsn
from tests.kit.factories import create_tenant
from tests.kit.processes import api_processes

GATEWAY = "evolution"


async def _rows(settings: Settings, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(plain_dsn(settings.db.url))
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def test_duplicates_inside_one_batch_store_one_row(
    engine: AsyncEngine, session: AsyncSession, settings: Settings
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    batcher = IngestBatcher(engine, max_flights=1)
    same = f"DUP-{uuid4().hex[:8]}"
    # Queued before the one flight runs: all ten are one batch.
    answers = await asyncio.gather(
        *(
            batcher.apply(
                tenant.org_id, instance.id, [text_message("5511911110000", "once", gateway_message_id=same)]
            )
            for _ in range(10)
        )
    )
    print(f"batches {batcher.stats.batches}, largest {batcher.stats.largest}")
    assert batcher.stats.batches == 1 and batcher.stats.largest == 10
    assert all(isinstance(a, Applied) for a in answers)
    created = [len(a.result.created) for a in answers if isinstance(a, Applied)]
    duplicates = [a.result.duplicates for a in answers if isinstance(a, Applied)]
    assert sorted(created) == [0] * 9 + [1] and sum(duplicates) == 9
    rows = await _rows(settings, "SELECT seq FROM messages WHERE gateway_message_id = $1", same)
    assert [r["seq"] for r in rows] == [1]
    (conversation,) = await _rows(
        settings, "SELECT last_seq, unread_count FROM conversations WHERE instance_id = $1", instance.id
    )
    assert conversation["last_seq"] == 1 and conversation["unread_count"] == 1


async def test_a_webhook_postgres_refuses_fails_alone_inside_a_busy_batch(
    engine: AsyncEngine, session: AsyncSession, settings: Settings
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    batcher = IngestBatcher(engine, max_flights=1)
    good = [
        batcher.apply(tenant.org_id, instance.id, [text_message(f"55119222{n:05d}", f"good {n}")])
        for n in range(12)
    ]
    # An instance that does not exist (deleted after it was cached): its foreign key fails, in the middle.
    foreign = batcher.apply(tenant.org_id, uuid4(), [text_message("5511922200005", "orphan")])
    answers = await asyncio.gather(*good[:6], foreign, *good[6:])
    assert batcher.stats.batches == 1 and batcher.stats.largest == 13
    refused = answers[6]
    assert isinstance(refused, RequestFailed) and refused.sqlstate == "23503", refused
    applied = [a for i, a in enumerate(answers) if i != 6]
    assert all(isinstance(a, Applied) and len(a.result.created) == 1 for a in applied)
    rows = await _rows(settings, "SELECT count(*) AS n FROM messages WHERE instance_id = $1", instance.id)
    assert rows[0]["n"] == 12
    # Statuses in the same batch as their message apply forward, in order.
    # The business's own message (statuses move outbound messages: sent → delivered → read).
    message = text_message(
        "5511922299999", "then read", gateway_message_id=f"ST-{uuid4().hex[:8]}", direction=Direction.OUTBOUND
    )
    answers = await asyncio.gather(
        batcher.apply(tenant.org_id, instance.id, [message]),
        batcher.apply(tenant.org_id, instance.id, [status(message.gateway_message_id, MessageStatus.READ)]),
        batcher.apply(
            tenant.org_id, instance.id, [status(message.gateway_message_id, MessageStatus.DELIVERED)]
        ),
    )
    results = [a.result for a in answers if isinstance(a, Applied)]
    assert len(results[0].created) == 1
    assert len(results[1].statuses) == 1 and results[2].stale_statuses == 1  # never backwards
    (row,) = await _rows(
        settings, "SELECT status FROM messages WHERE gateway_message_id = $1", message.gateway_message_id
    )
    assert row["status"] == "read"


def _body(instance: WhatsAppInstance, message_id: str, chat: str) -> bytes:
    data = with_message_id(
        GATEWAY, fixture_for(GATEWAY, "v2_messages_upsert_text", instance), message_id, text=message_id
    )
    data["data"]["key"]["remoteJid"] = f"{chat}@s.whatsapp.net"
    return json.dumps(data).encode()


async def test_200_concurrent_webhooks_over_20_chats_on_two_processes_land_gapless(
    settings: Settings, session: AsyncSession
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    chats = [f"55119333{n:05d}" for n in range(20)]
    hooks = [(f"GAP-{n:04d}", chats[n % 20]) for n in range(200)]
    random.Random(13).shuffle(hooks)
    path = f"/api/webhooks/{GATEWAY}/{instance.name}"
    with api_processes(2, env_for(settings)) as processes:
        clients = [httpx.AsyncClient(base_url=p.base_url, trust_env=False, timeout=30) for p in processes]
        try:

            async def post(i: int, message_id: str, chat: str) -> int:
                body = _body(instance, message_id, chat)
                response = await clients[i % 2].post(
                    path, content=body, headers=signed_headers(GATEWAY, body, instance)
                )
                return response.status_code

            # One webhook each first: the processes know the instance, so the burst is all ingest (not 100
            # concurrent instance lookups per process, each a pool connection of a shared Postgres).
            assert [await post(i, f"GAP-WARM-{i}", chats[i]) for i in range(2)] == [200, 200]
            codes = await asyncio.gather(*(post(i, m, c) for i, (m, c) in enumerate(hooks)))
        finally:
            for client in clients:
                await client.aclose()
        logs = "".join(p.logs() for p in processes)
    print(f"statuses {sorted(set(codes))}; batches retried: {logs.count('ingest batch retried')}")
    assert codes == [200] * 200
    rows = await _rows(
        settings,
        "SELECT c.id, c.last_seq, array_agg(m.seq ORDER BY m.seq) AS seqs FROM conversations c "
        "JOIN messages m ON m.conversation_id = c.id WHERE c.instance_id = $1 GROUP BY c.id",
        instance.id,
    )
    assert len(rows) == 20
    for row in rows:  # chats 0 and 1 also hold their warm-up message
        count = len(row["seqs"])
        assert count in (10, 11) and row["seqs"] == list(range(1, count + 1)) and row["last_seq"] == count, (
            row
        )
    assert sum(len(row["seqs"]) for row in rows) == 202
    assert "deadlock" not in logs.lower() or "ingest batch retried" in logs


async def test_a_webhook_queued_as_the_last_flight_ends_is_not_left_waiting(
    engine: AsyncEngine, session: AsyncSession
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    batcher = IngestBatcher(engine, max_flights=1)
    first = asyncio.ensure_future(
        batcher.apply(tenant.org_id, instance.id, [text_message("5511944440000", "first")])
    )
    await asyncio.sleep(0)
    (flight,) = batcher._flights
    await first
    await flight
    # The state between a flight's end and its done-callback (which drops it from the set): it still
    # counts in the set, finished. The next webhook must get a flight of its own, not wait for ever.
    batcher._flights.add(flight)
    second = await asyncio.wait_for(
        batcher.apply(tenant.org_id, instance.id, [text_message("5511944440001", "second")]), 10
    )
    assert isinstance(second, Applied) and len(second.result.created) == 1


async def test_a_second_flight_takes_off_only_once_enough_webhooks_are_queued(
    engine: AsyncEngine, session: AsyncSession, settings: Settings
):
    """Every batch costs a checkout, a round trip, a commit and a publish whatever its size: while one flight
    is out, the next webhooks wait for it unless `extra_flight_at` of them are queued."""
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    batcher = IngestBatcher(engine, max_flights=2, extra_flight_at=3)
    held_chat = "5511955550000"
    first = await batcher.apply(tenant.org_id, instance.id, [text_message(held_chat, "creates the chat")])
    assert isinstance(first, Applied)
    conversation_id = first.result.created[0].conversation_id
    locker = await asyncpg.connect(plain_dsn(settings.db.url))
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT 1 FROM conversations WHERE id = $1 FOR UPDATE", conversation_id)
        held = asyncio.ensure_future(
            batcher.apply(tenant.org_id, instance.id, [text_message(held_chat, "held")])
        )
        await asyncio.sleep(0.3)  # its flight is out, waiting on the row lock
        other = [
            asyncio.ensure_future(
                batcher.apply(tenant.org_id, instance.id, [text_message(f"55119555{n:05d}", f"other {n}")])
            )
            for n in range(1, 3)
        ]
        await asyncio.sleep(0.3)
        assert len([f for f in batcher._flights if not f.done()]) == 1  # two queued: below 3, they wait
        assert not any(f.done() for f in other)
        other.append(
            asyncio.ensure_future(
                batcher.apply(tenant.org_id, instance.id, [text_message("5511955559999", "the third")])
            )
        )
        done = await asyncio.wait_for(asyncio.gather(*other), 10)  # three queued: a second flight takes them
        assert all(isinstance(a, Applied) and len(a.result.created) == 1 for a in done)
        assert not held.done() and batcher.stats.largest == 3
        await lock.rollback()
        assert isinstance(await asyncio.wait_for(held, 10), Applied)
    finally:
        await locker.close()
