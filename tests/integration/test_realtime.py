"""Real-time delivery with real processes: two API servers, one Postgres, one Redis, real WebSockets."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from uuid import UUID

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.models import Contact, Conversation
from app.domain.conversations.ingest import IngestService
from tests.kit.api import (
    TEXT_GATEWAY,
    created_seqs_until_done,
    open_room,
    post_text,
    tenant_with_conversation,
)
from tests.kit.clients import WsClient
from tests.kit.data import text_message
from tests.kit.processes import ApiProcess


async def collect_created(client: WsClient, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(frames) < count:
            frame = await client.recv_json(timeout=timeout)
            if frame["type"] == "message.created":
                frames.append(frame)
    return frames


async def test_webhook_on_process_a_reaches_client_on_process_b(
    api_pair: list[ApiProcess], session: AsyncSession
):
    a, b = api_pair
    tenant, token, conversation_id = await tenant_with_conversation(session, a)
    client = await open_room(b, token, conversation_id, after_seq=1)
    assert await created_seqs_until_done(client, conversation_id) == []

    await post_text(a, tenant.instance(TEXT_GATEWAY), "LIVE-1", "hello from A")
    created = await client.recv_until(lambda f: f["type"] == "message.created")
    assert (created["conversation_id"], created["seq"], created["message"]["body"]) == (
        conversation_id,
        2,
        "hello from A",
    )
    inbox = await client.recv_until(lambda f: f["type"] == "conversation.updated")
    assert inbox["conversation"]["id"] == conversation_id
    assert inbox["conversation"]["unread_count"] == 2
    await client.close()


async def test_reconnect_with_after_seq_receives_exactly_the_missed_messages(
    api_pair: list[ApiProcess], session
):  # type: ignore[no-untyped-def]
    a, b = api_pair
    tenant, token, conversation_id = await tenant_with_conversation(session, a)
    client = await open_room(b, token, conversation_id, after_seq=0)
    assert await created_seqs_until_done(client, conversation_id) == [1]
    await client.close()

    for i in range(50):  # while the agent is offline, half through each process
        await post_text(api_pair[i % 2], tenant.instance(TEXT_GATEWAY), f"MISSED-{i}", f"missed {i}")

    again = await open_room(b, token, conversation_id, after_seq=1)
    assert await created_seqs_until_done(again, conversation_id) == list(range(2, 52))
    await post_text(a, tenant.instance(TEXT_GATEWAY), "AFTER-1", "live again")
    live = await again.recv_until(lambda f: f["type"] == "message.created")
    assert live["seq"] == 52
    assert [f for f in await again.drain(0.5) if f["type"] == "message.created"] == []  # no duplicate
    await again.close()


async def test_messages_arriving_during_replay_are_neither_lost_nor_repeated(
    api_pair: list[ApiProcess], session
):  # type: ignore[no-untyped-def]
    a, b = api_pair
    tenant, token, conversation_id = await tenant_with_conversation(session, a)
    for i in range(30):
        await post_text(a, tenant.instance(TEXT_GATEWAY), f"BEFORE-{i}", f"before {i}")

    async def keep_posting() -> None:
        for i in range(40):
            await post_text(api_pair[i % 2], tenant.instance(TEXT_GATEWAY), f"DURING-{i}", f"during {i}")

    poster = asyncio.create_task(keep_posting())
    client = await open_room(b, token, conversation_id, after_seq=0)
    await poster
    frames = await collect_created(client, 71)
    assert [f["seq"] for f in frames] == list(range(1, 72))
    assert [f for f in await client.drain(1.5) if f["type"] == "message.created"] == []
    await client.close()


async def test_a_lost_publish_still_reaches_subscribers(
    api_pair: list[ApiProcess], session, engine: AsyncEngine
):  # type: ignore[no-untyped-def]
    """A message committed without any publish (as if the process died right after commit) arrives anyway."""
    a, b = api_pair
    tenant, token, conversation_id = await tenant_with_conversation(session, a)
    client = await open_room(b, token, conversation_id, after_seq=1)
    assert await created_seqs_until_done(client, conversation_id) == []

    async with async_sessionmaker(engine, expire_on_commit=False)() as writer:
        wa_id = (
            await writer.execute(
                select(Contact.wa_id)
                .join(Conversation, Conversation.contact_id == Contact.id)
                .where(Conversation.id == UUID(conversation_id))
            )
        ).scalar_one()
        await IngestService(writer).apply(
            org_id=tenant.org_id,
            instance_id=tenant.instance(TEXT_GATEWAY).id,
            events=[text_message(wa_id, "committed, never published", gateway_message_id="SILENT-1")],
        )
        await writer.commit()

    created = await client.recv_until(lambda f: f["type"] == "message.created", timeout=5.0)
    assert (created["seq"], created["message"]["body"]) == (2, "committed, never published")
    await client.close()


async def test_other_organisations_conversation_is_not_found_and_their_events_stay_theirs(
    api_pair: list[ApiProcess], session
):  # type: ignore[no-untyped-def]
    a, b = api_pair
    ours, our_token, our_conversation = await tenant_with_conversation(session, a)
    theirs, _, their_conversation = await tenant_with_conversation(session, a)
    client = await WsClient.connect(b.ws_url, our_token)
    assert (await client.recv_json())["type"] == "ready"
    await client.send_json({"type": "subscribe", "conversation_id": their_conversation})
    error = await client.recv_json()
    assert error == {
        "type": "error",
        "code": "not_found",
        "detail": f"conversation {their_conversation} not found",
    }

    await post_text(a, theirs.instance(TEXT_GATEWAY), "THEIRS-2", "their secret")
    await post_text(a, ours.instance(TEXT_GATEWAY), "OURS-2", "ours")
    inbox = await client.recv_until(lambda f: f["type"] == "conversation.updated")
    assert inbox["conversation"]["id"] == our_conversation
    assert "their secret" not in json.dumps(await client.drain(0.5))
    await client.close()
