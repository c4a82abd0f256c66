"""Agents sending messages: persisted idempotently, sent once by the worker, status published and updated."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import httpx
import pytest
from arq import Retry
from litestar import Litestar
from litestar.testing import AsyncTestClient
from redis.asyncio import Redis
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Message
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.realtime.publisher import EventPublisher
from app.workers.sending import INTERRUPTED, MAX_ATTEMPTS, send_message
from tests.fake_gateway import FakeGateway, garbage, ok, status
from tests.kit.api import login, send
from tests.kit.factories import Tenant
from tests.kit.ingested import tenant_with_chat

Client = AsyncTestClient[Litestar]
GATEWAY = "wppconnect"


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as fake:
        yield fake


@pytest.fixture
async def worker_ctx(engine: AsyncEngine, settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """The context arq's startup builds (app.workers.context), on the test's database and Redis."""
    redis = Redis.from_url(settings.redis.url)
    async with httpx.AsyncClient(trust_env=False) as http:
        yield {
            "settings": settings,
            "sessionmaker": async_sessionmaker(engine, expire_on_commit=False),
            "http": http,
            "publisher": EventPublisher(
                redis,
                settings.redis.key_prefix,
                PageCache(redis, CacheKeys(settings.redis.key_prefix), settings.cache),
            ),
        }
    await redis.aclose()


async def stored(session: AsyncSession, message_id: str) -> Message:
    session.expire_all()
    return await session.get_one(Message, UUID(message_id))


async def test_send_persists_pending_message_once_per_client_message_id(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: FakeGateway
):
    tenant, conversation_id = await tenant_with_chat(session, engine, gateway.base_url)
    headers = await login(client, tenant.agent.email)
    first = await send(client, headers, conversation_id, "Olá! Posso ajudar?", "tab1-0001")
    assert first.status_code == 201, first.text
    body = first.json()
    assert (body["seq"], body["status"], body["direction"], body["gateway_message_id"]) == (
        2,
        "pending",
        "outbound",
        None,
    )

    retries = await asyncio.gather(
        *(send(client, headers, conversation_id, "Olá! Posso ajudar?", "tab1-0001") for _ in range(10))
    )
    assert {r.status_code for r in retries} == {200}
    assert {r.json()["id"] for r in retries} == {body["id"]}
    count = await session.scalar(
        select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id)
    )
    assert count == 2
    listing = (await client.get("/api/whatsapp-optimized/conversations", headers=headers)).json()["items"][0]
    assert (listing["last_message_preview"], listing["unread_count"], listing["last_seq"]) == (
        "Olá! Posso ajudar?",
        0,
        2,
    )


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({"text": "", "client_message_id": "k1"}, 400),
        ({"text": "x" * 4097, "client_message_id": "k1"}, 400),
        ({"text": "hi", "client_message_id": ""}, 400),
        ({"text": "hi", "client_message_id": "has spaces"}, 400),
        ({"text": "hi"}, 400),
    ],
)
async def test_bad_send_requests_are_400_and_write_nothing(
    client: Client, session: AsyncSession, engine: AsyncEngine, payload: dict[str, Any], code: int
):
    tenant, conversation_id = await tenant_with_chat(session, engine, "http://127.0.0.1:9")
    response = await client.post(
        f"/api/whatsapp-optimized/messages/{conversation_id}",
        json=payload,
        headers=await login(client, tenant.agent.email),
    )
    assert response.status_code == code
    assert response.headers["content-type"].startswith("application/problem+json")
    count = await session.scalar(
        select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id)
    )
    assert count == 1


async def test_send_to_another_org_is_404_and_without_credentials_is_422(
    client: Client, session: AsyncSession, engine: AsyncEngine
):
    ours, _ = await tenant_with_chat(session, engine, "http://127.0.0.1:9")
    _, their_conversation = await tenant_with_chat(session, engine, "http://127.0.0.1:9")
    headers = await login(client, ours.agent.email)
    assert (await send(client, headers, their_conversation, "hi", "k-404")).status_code == 404

    no_credentials, conversation_id = await tenant_with_chat(session, engine, None)
    refused = await send(
        client, await login(client, no_credentials.agent.email), conversation_id, "hi", "k-422"
    )
    assert refused.status_code == 422 and "cannot send" in refused.json()["detail"]
    count = await session.scalar(
        select(func.count()).select_from(Message).where(Message.conversation_id == conversation_id)
    )
    assert count == 1


async def _pending_message(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: FakeGateway
) -> tuple[Tenant, str]:
    tenant, conversation_id = await tenant_with_chat(session, engine, gateway.base_url)
    response = await send(
        client,
        await login(client, tenant.agent.email),
        conversation_id,
        "Seu pedido saiu",
        secrets.token_hex(6),
    )
    return tenant, response.json()["id"]


async def test_job_sends_once_and_a_second_run_sends_nothing(
    client: Client,
    session: AsyncSession,
    engine: AsyncEngine,
    gateway: FakeGateway,
    worker_ctx: dict[str, Any],
):
    gateway.respond(r".*", ok(GATEWAY, "true_5511944440000@c.us_3EB0SENT0001"))
    _, message_id = await _pending_message(client, session, engine, gateway)

    assert await send_message(worker_ctx, message_id) == "sent"
    assert await send_message(worker_ctx, message_id) == "skipped: already sent"
    assert len(gateway.requests) == 1
    sent = await stored(session, message_id)
    assert (sent.status.value, sent.gateway_message_id, sent.sending_since) == (
        "sent",
        "true_5511944440000@c.us_3EB0SENT0001",
        None,
    )
    request = gateway.requests[0]
    assert request.headers["authorization"] == "Bearer gateway-token"
    assert request.json["message"] == "Seu pedido saiu"


async def test_gateway_refusal_fails_the_message_with_its_reason(
    client: Client,
    session: AsyncSession,
    engine: AsyncEngine,
    gateway: FakeGateway,
    worker_ctx: dict[str, Any],
):
    gateway.respond(r".*", status(400, {"status": "error", "message": "number not on WhatsApp"}))
    _, message_id = await _pending_message(client, session, engine, gateway)
    result = await send_message(worker_ctx, message_id)
    assert result.startswith("failed")
    failed = await stored(session, message_id)
    assert failed.status.value == "failed" and failed.error and "gateway-token" not in failed.error


async def test_retryable_failures_retry_with_backoff_then_fail(
    client: Client,
    session: AsyncSession,
    engine: AsyncEngine,
    gateway: FakeGateway,
    worker_ctx: dict[str, Any],
):
    gateway.respond(r".*", status(503, {"message": "busy"}), garbage())
    _, message_id = await _pending_message(client, session, engine, gateway)
    with pytest.raises(Retry):
        await send_message(worker_ctx, message_id)
    retried = await stored(session, message_id)
    assert (retried.status.value, retried.sending_since, retried.send_attempts) == ("pending", None, 1)
    assert (await send_message(worker_ctx, message_id)).startswith("failed")  # garbage is not retryable
    assert len(gateway.requests) == 2

    gateway.respond(r".*", status(500, {"message": "down"}))
    _, second_id = await _pending_message(client, session, engine, gateway)
    for _ in range(MAX_ATTEMPTS - 1):
        with pytest.raises(Retry):
            await send_message(worker_ctx, second_id)
    assert (await send_message(worker_ctx, second_id)).startswith("failed")
    assert (await stored(session, second_id)).send_attempts == MAX_ATTEMPTS


async def test_a_send_interrupted_by_a_dead_worker_is_failed_not_sent_twice(
    client: Client,
    session: AsyncSession,
    engine: AsyncEngine,
    gateway: FakeGateway,
    worker_ctx: dict[str, Any],
):
    gateway.respond(r".*", ok(GATEWAY))
    _, message_id = await _pending_message(client, session, engine, gateway)
    # What a worker killed between claiming and settling leaves behind:
    await session.execute(
        update(Message)
        .where(Message.id == UUID(message_id))
        .values(sending_since=func.now(), send_attempts=1)
    )
    await session.commit()
    assert await send_message(worker_ctx, message_id) == "failed: interrupted earlier"
    assert gateway.requests == []
    failed = await stored(session, message_id)
    assert (failed.status.value, failed.error) == ("failed", INTERRUPTED)


async def test_a_later_ack_webhook_moves_the_sent_message_forward(
    client: Client,
    session: AsyncSession,
    engine: AsyncEngine,
    gateway: FakeGateway,
    worker_ctx: dict[str, Any],
):
    gateway_id = "true_5511944440000@c.us_3EB0ACKED0001"
    gateway.respond(r".*", ok(GATEWAY, gateway_id))
    tenant, message_id = await _pending_message(client, session, engine, gateway)
    assert await send_message(worker_ctx, message_id) == "sent"
    instance = tenant.instance(GATEWAY)
    ack = {
        "event": "onack",
        "session": instance.name,
        "ack": 3,
        "id": {
            "fromMe": True,
            "remote": "5511944440000@c.us",
            "id": "3EB0ACKED0001",
            "_serialized": gateway_id,
        },
        "to": "5511944440000@c.us",
    }
    response = await client.post(
        f"/api/webhooks/{GATEWAY}/{instance.name}",
        json=ack,
        headers={"X-Webhook-Secret": instance.webhook_secret},
    )
    assert response.status_code == 200 and response.json()["statuses"] == 1
    assert (await stored(session, message_id)).status.value == "read"


async def test_the_gateways_echo_of_our_own_send_adopts_the_pending_row(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: FakeGateway
):
    """WPPConnect's onselfmessage (and Evolution's fromMe upsert) for a message the CRM is sending right now
    can arrive before the send job stored the gateway's id: it must not become a second message."""
    tenant, message_id = await _pending_message(client, session, engine, gateway)
    await session.execute(
        update(Message).where(Message.id == UUID(message_id)).values(sending_since=func.now())
    )
    await session.commit()
    instance = tenant.instance(GATEWAY)
    gateway_id = "true_5511944440000@c.us_3EB0ECHO0001"
    echo = {
        "event": "onselfmessage",
        "session": instance.name,
        "id": gateway_id,
        "fromMe": True,
        "from": "5511900000000@c.us",
        "to": "5511944440000@c.us",
        "body": "Seu pedido saiu",
        "type": "chat",
        "t": 1764000000,
    }
    response = await client.post(
        f"/api/webhooks/{GATEWAY}/{instance.name}",
        json=echo,
        headers={"X-Webhook-Secret": instance.webhook_secret},
    )
    assert response.status_code == 200 and response.json()["created"] == 0, response.text
    adopted = await stored(session, message_id)
    assert adopted.gateway_message_id == gateway_id
    count = await session.scalar(
        select(func.count()).select_from(Message).where(Message.conversation_id == adopted.conversation_id)
    )
    assert count == 2  # the customer's first message and ours, nothing more
