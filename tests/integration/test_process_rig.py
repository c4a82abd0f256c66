"""The process rig itself: real uvicorn processes sharing the run's Postgres and Redis, a Redis that comes
back on its port, and the WebSocket client (against a local echo server: the app's /ws has its own tests)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import time
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncSession
from websockets.asyncio.server import ServerConnection, serve

from app.config import Settings
from tests.kit.api import login_token
from tests.kit.clients import WsClient
from tests.kit.data import env_for
from tests.kit.factories import PASSWORD, create_tenant
from tests.kit.processes import api_processes, private_redis


def test_env_for_reproduces_the_settings(settings: Settings) -> None:
    # The child's Settings.from_env must give the test's settings; only the login limit is raised on purpose.
    auth = dataclasses.replace(settings.auth, login_attempts_per_minute=100_000)
    with mock.patch.dict(os.environ, env_for(settings), clear=True):
        assert Settings.from_env() == dataclasses.replace(settings, auth=auth)


async def test_two_processes_share_jwt_secret_and_database(settings: Settings, session: AsyncSession) -> None:
    tenant = await create_tenant(session)
    with api_processes(2, env_for(settings)) as (a, b):
        assert a.port != b.port and a.pid != b.pid
        async with httpx.AsyncClient(timeout=10.0, trust_env=False) as http:
            for proc in (a, b):
                assert (await http.get(proc.base_url + "/health")).status_code == 200, proc.logs()
                ready = (await http.get(proc.base_url + "/ready")).json()
                # Both reach Postgres and Redis; no worker runs here, so neither is ready (own test).
                assert (ready["database"], ready["redis"], ready["status"]) == ("ok", "ok", "unavailable")
            # A token issued by A is accepted by B: same secret, and B finds the agent in the same database.
            token = await login_token(a.base_url, tenant.agent.email, PASSWORD)
            response = await http.get(
                f"{b.base_url}/api/whatsapp-optimized/conversations",
                headers={"Authorization": f"Bearer {token}"},
            )
            assert response.status_code == 200, response.text


def test_terminate_is_prompt_and_releases_the_port(settings: Settings) -> None:
    with api_processes(1, env_for(settings)) as [proc]:
        started = time.monotonic()
        code = proc.terminate()
        assert time.monotonic() - started < 5
        # uvicorn re-raises the SIGTERM it handled once it has shut down cleanly.
        assert code in (0, -signal.SIGTERM), proc.logs()
        assert proc.terminate() == code  # idempotent, as the context exit calls it again
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", proc.port), timeout=1).close()
        with socket.socket() as sock:  # a new server can bind it (TIME_WAIT allowed, as servers do)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", proc.port))


def test_a_process_that_cannot_start_fails_with_its_log(settings: Settings) -> None:
    # "" counts as unset (and keeps a ./.env from supplying one): the settings refuse to load.
    with (
        pytest.raises(RuntimeError, match="DATABASE_URL and REDIS_URL must be set"),
        api_processes(1, env_for(settings, REDIS_URL="")),
    ):
        pass


def test_private_redis_comes_back_on_the_same_port() -> None:
    with private_redis() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            assert client.ping()
            port = server.port
            server.stop()
            with pytest.raises(redis.ConnectionError):
                client.ping()
            server.start()
            assert server.port == port and server.url.endswith(f":{port}/0")
            assert client.ping()
            server.restart(down_seconds=0.1)
            assert client.ping()
        finally:
            client.close()


async def _echo(conn: ServerConnection) -> None:
    """Greets with what the handshake carried, echoes frames, and closes with 4001 when asked."""
    assert conn.request is not None  # set once the handshake is done, which it is in a handler
    target = urlsplit(conn.request.path)
    hello = {"path": target.path, "token": parse_qs(target.query).get("token")}
    await conn.send(json.dumps({**hello, "origin": conn.request.headers.get("Origin")}))
    async for raw in conn:
        if json.loads(raw).get("close"):
            await conn.close(4001, "asked to")
            return
        await conn.send(raw)


async def test_ws_client_against_an_echo_server() -> None:
    async with serve(_echo, "127.0.0.1", 0) as server:
        url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        async with await WsClient.connect(url, "a b&c", origin="http://localhost:5173") as ws:
            hello = await ws.recv_json()
            assert hello == {"path": "/ws", "token": ["a b&c"], "origin": "http://localhost:5173"}
            for n in range(3):
                await ws.send_json({"n": n})
            assert await ws.recv_until(lambda m: m.get("n") == 1) == {"n": 1}  # skips n=0
            assert await ws.drain() == [{"n": 2}]
            with pytest.raises(TimeoutError):
                await ws.recv_json(timeout=0.1)
            assert ws.close_code is None
            await ws.send_json({"close": True})
            assert await ws.expect_close() == 4001
            assert (ws.close_code, ws.close_reason) == (4001, "asked to")
