"""WebSocket edges with real processes: auth and origin, bad frames, flooding, slow consumers, SIGTERM,
a Redis restart under connected clients, and room churn that must leave no memory behind."""

from __future__ import annotations

import asyncio
import json
import struct
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from tests.kit.api import (
    TEXT_GATEWAY,
    created_seqs_until_done,
    login_token,
    open_room,
    post_text,
    tenant_with_conversation,
)
from tests.kit.clients import StalledClient, WsClient
from tests.kit.data import env_for
from tests.kit.factories import PASSWORD, create_tenant
from tests.kit.measure import rss_kib
from tests.kit.processes import ApiProcess, api_processes, private_redis

NIL = "00000000-0000-0000-0000-000000000000"


async def ready_client(process: ApiProcess, token: str) -> WsClient:
    client = await WsClient.connect(process.ws_url, token)
    assert (await client.recv_json())["type"] == "ready"
    return client


async def test_refused_connections_get_4401_or_4403(
    api_pair: list[ApiProcess], session: AsyncSession, settings: Settings
):
    a, _ = api_pair
    tenant = await create_tenant(session)
    token = await login_token(a.base_url, tenant.agent.email, PASSWORD)
    expired = jwt.encode(
        {
            "sub": str(tenant.agent.id),
            "org_id": str(tenant.org_id),
            "role": "agent",
            "exp": datetime.now(UTC) - timedelta(seconds=5),
            "iat": datetime.now(UTC) - timedelta(hours=1),
        },
        settings.auth.jwt_secret,
        algorithm="HS256",
    )
    cases = [
        (None, "/ws", None, 4401),
        ("not-a-jwt", "/ws", None, 4401),
        (expired, "/ws", None, 4401),
        (None, f"/ws?userId={tenant.agent.id}", None, 4401),  # the seed's ?userId= proves nothing
        (token, "/ws", "https://evil.example", 4403),
    ]
    for case_token, path, origin, code in cases:
        client = await WsClient.connect(a.ws_url, case_token, path=path, origin=origin)
        assert await client.expect_close() == code, (path, origin)
    allowed = await WsClient.connect(a.ws_url, token, origin=settings.app.cors_allowed_origins[0])
    assert (await allowed.recv_json())["type"] == "ready"
    await allowed.close()


async def test_bad_frames_get_error_frames_and_the_socket_stays_usable(
    api_pair: list[ApiProcess], session: AsyncSession
):
    a, _ = api_pair
    _, token, _ = await tenant_with_conversation(session, a)
    client = await ready_client(a, token)
    bad = [
        ("not json", "invalid_frame"),
        ('{"type": "dance"}', "invalid_frame"),
        ('{"type": "subscribe"}', "invalid_frame"),
        ('{"type": "subscribe", "conversation_id": "1234"}', "invalid_frame"),
        (f'{{"type": "subscribe", "conversation_id": "{NIL}"}}', "not_found"),
        (f'{{"type": "subscribe", "conversation_id": "{NIL}", "after_seq": -1}}', "invalid_frame"),
        ('{"type": "ping", "pad": "' + "x" * 10_000 + '"}', "frame_too_large"),
    ]
    for text, code in bad:
        await client._conn.send(text)
        frame = await client.recv_json()
        assert (frame["type"], frame["code"]) == ("error", code), text
    await client._conn.send(b"\x00binary")
    assert (await client.recv_json())["code"] == "invalid_frame"
    await client.send_json({"type": "ping"})
    assert await client.recv_json() == {"type": "pong"}
    await client.close()


async def test_flooding_is_refused_then_closed_without_touching_other_sockets(
    api_pair: list[ApiProcess], session: AsyncSession
):
    a, _ = api_pair
    _, token, _ = await tenant_with_conversation(session, a)
    flooder, bystander = await ready_client(a, token), await ready_client(a, token)
    for _ in range(400):
        await flooder.send_json({"type": "ping"})
    refused = {"type": "error", "code": "rate_limited", "detail": "too many frames; slow down"}
    # Read until the refusal (a loaded machine may take a while to answer the burst's first pongs).
    frame = await flooder.recv_until(lambda f: f == refused, timeout=15)
    assert frame == refused
    assert await flooder.expect_close() == 1008
    await bystander.send_json({"type": "ping"})
    assert await bystander.recv_json() == {"type": "pong"}
    await bystander.close()


async def test_slow_consumer_gets_resync_and_is_closed_while_others_and_ingest_keep_going(
    settings: Settings, session: AsyncSession
):
    with api_processes(1, env_for(settings, WS_QUEUE_SIZE="8")) as (process,):
        tenant, token, conversation_id = await tenant_with_conversation(session, process)
        # A reader that never reads: its socket buffers fill, then the server's queue for it.
        slow = StalledClient(process.port, f"/ws?token={token}")
        slow.send_text(json.dumps({"type": "subscribe", "conversation_id": conversation_id}))
        healthy = await open_room(process, token, conversation_id, after_seq=None)
        assert await created_seqs_until_done(healthy, conversation_id) == []

        # Far more than socket buffers hold (loopback buffers grow to several MB).
        big, count = "x" * 60_000, 250
        for i in range(count):
            await post_text(process, tenant.instance(TEXT_GATEWAY), f"FLOOD-{i}", f"{i} {big}")
        seqs = []
        while len(seqs) < count:
            frame = await healthy.recv_json(timeout=10)
            if frame["type"] == "message.created":
                seqs.append(frame["seq"])
        assert seqs == list(range(2, count + 2))

        received = await asyncio.to_thread(slow.read_all)
        slow.close()
        assert b'"type":"resync"' in received
        assert b"\x88" in received and struct.pack("!H", 1013) in received  # close frame, code 1013
        assert received.count(b'"type":"message.created"') < count
        async with httpx.AsyncClient(base_url=process.base_url, trust_env=False) as client:
            info = (
                await client.get(
                    "/api/whatsapp-optimized/websocket/info", headers={"Authorization": f"Bearer {token}"}
                )
            ).json()
        assert info["process"]["connections"] == 1  # the slow one is gone, its memory with it
        await healthy.close()


async def test_sigterm_closes_sockets_with_1001(settings: Settings, session: AsyncSession):
    with api_processes(1, env_for(settings)) as (process,):
        tenant = await create_tenant(session)
        token = await login_token(process.base_url, tenant.agent.email, PASSWORD)
        client = await ready_client(process, token)
        process.terminate()
        assert await client.expect_close() == 1001


async def test_redis_restart_keeps_delivery_without_a_gap(settings: Settings, session: AsyncSession):
    with (
        private_redis() as redis,
        api_processes(2, env_for(settings, REDIS_URL=redis.url, WS_CATCH_UP_SECONDS="1")) as (a, b),
    ):
        tenant, token, conversation_id = await tenant_with_conversation(session, a)
        client = await open_room(b, token, conversation_id, after_seq=1)
        assert await created_seqs_until_done(client, conversation_id) == []

        await post_text(a, tenant.instance(TEXT_GATEWAY), "PRE-1", "before the restart")
        redis.stop()
        for i in range(5):  # ingest keeps committing while Redis is down
            await post_text(a, tenant.instance(TEXT_GATEWAY), f"DOWN-{i}", f"while down {i}")
        await asyncio.sleep(1.0)
        redis.start()
        for i in range(5):
            await post_text(a, tenant.instance(TEXT_GATEWAY), f"UP-{i}", f"after restart {i}")

        seqs: list[int] = []
        async with asyncio.timeout(15):
            while len(seqs) < 11:
                frame = await client.recv_json(timeout=15)
                if frame["type"] == "message.created" and frame["seq"] not in seqs:
                    seqs.append(frame["seq"])
        assert sorted(seqs) == list(range(2, 13))
        assert seqs == sorted(seqs)  # in order, no gap
        await client.close()


@pytest.mark.parametrize("cycles", [10_000])
async def test_room_churn_leaves_no_rooms_and_flat_memory(
    settings: Settings, session: AsyncSession, cycles: int
):
    with api_processes(1, env_for(settings, WS_FRAMES_PER_SECOND="1000000")) as (process,):
        _, token, conversation_id = await tenant_with_conversation(session, process)
        client = await ready_client(process, token)

        async def churn(times: int) -> None:
            for _ in range(times):
                await client.send_json(
                    {"type": "subscribe", "conversation_id": conversation_id, "after_seq": 1}
                )
                await client.recv_until(lambda f: f["type"] == "replay.done")
                await client.send_json({"type": "unsubscribe", "conversation_id": conversation_id})

        await churn(1_000)  # warm-up: pools, caches and allocator arenas settle
        before = rss_kib(process.pid)
        await churn(cycles)
        await client.send_json({"type": "ping"})
        await client.recv_until(lambda f: f["type"] == "pong")
        after = rss_kib(process.pid)
        async with httpx.AsyncClient(base_url=process.base_url, trust_env=False) as http:
            info = (
                await http.get(
                    "/api/whatsapp-optimized/websocket/info", headers={"Authorization": f"Bearer {token}"}
                )
            ).json()
        assert info["process"]["rooms"] == 0
        assert after - before < 4 * 1024, f"RSS grew {after - before} KiB over {cycles} cycles"
        await client.close()


async def test_a_client_that_stops_answering_pings_is_closed(settings: Settings, session: AsyncSession):
    # The same keepalive app.server.run configures (interval = heartbeat, timeout = two heartbeats), at 1 s.
    keepalive = ["--ws-ping-interval", "1", "--ws-ping-timeout", "2"]
    with api_processes(1, env_for(settings, WS_HEARTBEAT_SECONDS="1"), extra_args=keepalive) as (process,):
        tenant = await create_tenant(session)
        token = await login_token(process.base_url, tenant.agent.email, PASSWORD)
        silent = StalledClient(process.port, f"/ws?token={token}")  # never reads, so never answers a ping
        answering = await ready_client(process, token)  # the library answers pings by itself

        async def open_sockets() -> int:
            async with httpx.AsyncClient(base_url=process.base_url, trust_env=False) as http:
                info = await http.get(
                    "/api/whatsapp-optimized/websocket/info", headers={"Authorization": f"Bearer {token}"}
                )
            return int(info.json()["process"]["connections"])

        assert await open_sockets() == 2
        await asyncio.sleep(4.5)  # past two missed pings
        assert await open_sockets() == 1
        await answering.send_json({"type": "ping"})
        assert await answering.recv_json() == {"type": "pong"}
        silent.close()
        await answering.close()
