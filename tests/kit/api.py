"""What tests ask of the app over its HTTP API and WebSocket, in-process (`AsyncTestClient`) or of a running
API process: log in, post a text webhook, open a conversation's room (issue 14 item 2: out of
tests/kit/clients.py, which keeps the clients themselves and had grown past 400 lines).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import httpx

from app.db.models import WhatsAppInstance
from tests.kit.clients import WsClient
from tests.kit.data import fixture_for, signed_headers, with_message_id
from tests.kit.factories import PASSWORD

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.testing import AsyncTestClient

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
    body = json.dumps(data).encode()
    async with httpx.AsyncClient(base_url=process.base_url, trust_env=False) as client:
        response = await client.post(
            f"/api/webhooks/{gateway}/{instance.name}",
            content=body,
            headers=signed_headers(gateway, body, instance),
        )
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


async def login_token(base_url: str, email: str, password: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as http:
        response = await http.post("/api/auth/login", json={"email": email, "password": password})
        response.raise_for_status()
        return str(response.json()["access_token"])
