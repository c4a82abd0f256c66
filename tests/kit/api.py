"""What tests ask of the app over its HTTP API and WebSocket, in-process (`AsyncTestClient`) or of a running
API process: log in, send a message, post a text webhook, open a conversation's room and read its replay.
Issue 14 item 2: these stood in test modules (test_outbound, test_realtime, security/test_webhook_entry)
that other test modules imported; tests import the kit, never each other.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from uuid import UUID

import httpx
from arq import ArqRedis, create_pool
from arq.connections import RedisSettings as ArqRedisSettings

from app.db.models import WhatsAppInstance
from app.lib.jobs import deserialize_job, serialize_job
from tests.kit.clients import WsClient
from tests.kit.data import fixture_for, signed_headers, with_message_id
from tests.kit.factories import PASSWORD, Tenant, create_tenant

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient
    from sqlalchemy.ext.asyncio import AsyncSession

    from tests.kit.processes import ApiProcess

TEXT_GATEWAY = "evolution"  # the gateway `post_text` speaks: address `tenant.instance(TEXT_GATEWAY)`


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30.0) -> None:
    """Until `check()` is true, failing after `timeout` with `what`."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def login(client: AsyncTestClient[Litestar], email: str, password: str = PASSWORD) -> dict[str, str]:
    """The bearer header of an agent logged in through the in-process app."""
    response = await client.post("/api/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def send(
    client: AsyncTestClient[Litestar], headers: dict[str, str], conversation_id: UUID, text: str, key: str
) -> httpx.Response:
    """An agent's text to a conversation through the in-process app, `key` its client_message_id."""
    return await client.post(
        f"/api/whatsapp-optimized/messages/{conversation_id}",
        json={"text": text, "client_message_id": key},
        headers=headers,
    )


@asynccontextmanager
async def from_address(address: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client whose connections leave from `address` (any 127.0.0.x reaches the loopback servers)."""
    transport = httpx.AsyncHTTPTransport(local_address=address)
    async with httpx.AsyncClient(transport=transport, timeout=10.0, trust_env=False) as client:
        yield client


def assert_throttled(response: httpx.Response) -> None:
    """A 429 problem-details answer with a Retry-After of at most a minute."""
    assert response.status_code == 429, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 429
    assert 0 < int(response.headers["retry-after"]) <= 60


async def post_signed(base_url: str, gateway: str, instance: WhatsAppInstance, body: bytes) -> httpx.Response:
    """A webhook body posted to a real API process as its gateway signs it (header secret or signature)."""
    async with httpx.AsyncClient(base_url=base_url, trust_env=False) as client:
        return await client.post(
            f"/api/webhooks/{gateway}/{instance.name}",
            content=body,
            headers=signed_headers(gateway, body, instance),
        )


async def post_text(
    process: ApiProcess, instance: WhatsAppInstance, message_id: str, text: str, chat: str = ""
) -> None:
    """An Evolution text webhook to a real API process, answered 200."""
    gateway = TEXT_GATEWAY
    data = with_message_id(
        gateway, fixture_for(gateway, "v2_messages_upsert_text", instance), message_id, text=text
    )
    if chat:
        data["data"]["key"]["remoteJid"] = f"{chat}@s.whatsapp.net"
    response = await post_signed(process.base_url, gateway, instance, json.dumps(data).encode())
    assert response.status_code == 200, response.text


async def first_conversation(process: ApiProcess, token: str) -> str:
    """The id of the first line of the agent's inbox."""
    async with httpx.AsyncClient(base_url=process.base_url, trust_env=False) as client:
        response = await client.get(
            "/api/whatsapp-optimized/conversations", headers={"Authorization": f"Bearer {token}"}
        )
    return str(response.json()["items"][0]["id"])


async def open_room(process: ApiProcess, token: str, conversation_id: str, after_seq: int | None) -> WsClient:
    """A socket past `ready`, its subscribe to the conversation sent (its answer not read yet)."""
    client = await WsClient.connect(process.ws_url, token)
    assert (await client.recv_json())["type"] == "ready"
    await client.send_json({"type": "subscribe", "conversation_id": conversation_id, "after_seq": after_seq})
    return client


async def created_seqs_until_done(client: WsClient, conversation_id: str) -> list[int]:
    """The seqs of the `message.created` frames of a subscribe's replay, read until its `replay.done`."""
    seqs: list[int] = []
    while True:
        frame = await client.recv_json()
        if frame["type"] == "replay.done":
            assert frame["conversation_id"] == conversation_id
            return seqs
        if frame["type"] == "message.created":
            seqs.append(frame["seq"])


async def login_token(base_url: str, email: str, password: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as http:
        response = await http.post("/api/auth/login", json={"email": email, "password": password})
        response.raise_for_status()
        return str(response.json()["access_token"])


async def tenant_with_conversation(session: AsyncSession, process: ApiProcess) -> tuple[Tenant, str, str]:
    """A new tenant whose Evolution instance got one text through `process`: (tenant, agent token, id of
    the conversation it opened)."""
    tenant = await create_tenant(session)
    await post_text(process, tenant.instance(TEXT_GATEWAY), "SEED-1", "first")
    token = await login_token(process.base_url, tenant.agent.email, PASSWORD)
    return tenant, token, await first_conversation(process, token)


async def open_jobs(redis_url: str, queue: str) -> ArqRedis:
    """An arq pool on `queue` as the API and the workers open it (the project's job serializer)."""
    return await create_pool(
        ArqRedisSettings.from_dsn(redis_url),
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        default_queue_name=queue,
    )
