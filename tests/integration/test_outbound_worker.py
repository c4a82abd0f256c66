"""The whole send path with real processes: API process A persists, a real `arq` worker sends through a
fake gateway (a real local HTTP server), and an agent's socket on API process B sees pending → sent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from tests.fake_gateway import FakeGateway, ok
from tests.kit.api import login_token
from tests.kit.clients import WsClient
from tests.kit.data import env_for
from tests.kit.factories import PASSWORD
from tests.kit.ingested import tenant_with_chat
from tests.kit.processes import ROOT, ApiProcess


@pytest.fixture
def worker(settings: Settings) -> Iterator[subprocess.Popen[bytes]]:
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "arq", "app.workers.WorkerSettings"],
            cwd=ROOT,
            env=env_for(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield process
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            log.seek(0)
            sys.stderr.write(log.read().decode(errors="replace")[-3000:])


async def test_agent_sends_and_watches_pending_become_sent(
    api_pair: list[ApiProcess],
    worker: subprocess.Popen[bytes],
    session: AsyncSession,
    engine: AsyncEngine,
):
    a, b = api_pair
    async with FakeGateway() as gateway:
        gateway.respond(r"/send-message$", ok("wppconnect", "true_5511944440000@c.us_3EB0WORKER01"))
        tenant, conversation_id = await tenant_with_chat(session, engine, gateway.base_url)
        token = await login_token(a.base_url, tenant.agent.email, PASSWORD)
        socket = await WsClient.connect(b.ws_url, token)
        assert (await socket.recv_json())["type"] == "ready"
        await socket.send_json({"type": "subscribe", "conversation_id": str(conversation_id), "after_seq": 1})
        await socket.recv_until(lambda f: f["type"] == "replay.done")

        async with httpx.AsyncClient(base_url=a.base_url, trust_env=False) as http:
            response = await http.post(
                f"/api/whatsapp-optimized/messages/{conversation_id}",
                json={"text": "Já enviamos!", "client_message_id": "worker-e2e-1"},
                headers={"Authorization": f"Bearer {token}"},
            )
        assert response.status_code == 201, response.text
        message_id = response.json()["id"]

        created = await socket.recv_until(lambda f: f["type"] == "message.created")
        assert (created["seq"], created["message"]["status"]) == (2, "pending")
        updated = await socket.recv_until(lambda f: f["type"] == "message.updated", timeout=20)
        assert (updated["message_id"], updated["status"], updated["seq"]) == (message_id, "sent", 2)
        await asyncio.sleep(0.5)
        assert len(gateway.requests) == 1 and gateway.requests[0].json["message"] == "Já enviamos!"
        await socket.close()
