"""Slow and numerous clients against a real API process (issue 12, finding 5).

An attacker with no secret at all held 400 half-requests open for ever, and with `ulimit -n 256` 300 of them
made `/health` fail for everyone with nothing logged. Here, on loopback and bounded: half request heads and
silent connections are closed within HTTP_HEADER_TIMEOUT_SECONDS while /health answers; a webhook body that
stalls (or trickles) is ended by HTTP_BODY_IDLE_TIMEOUT_SECONDS / HTTP_BODY_TIMEOUT_SECONDS and stores
nothing; beyond HTTP_MAX_CONNECTIONS (idle HTTP connections and WebSockets alike) a connection gets 503 at
once, and /health answers again as soon as they are gone. Every hit is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.server.http_protocol import connection_limit
from tests.faults.harness import GATEWAY, stored_gateway_ids, text_webhooks
from tests.kit.clients import WsClient
from tests.kit.data import env_for
from tests.kit.factories import create_tenant
from tests.kit.processes import ApiProcess, api_processes
from tests.security.support import valid_token

HALF_HEAD = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "


async def _open(
    api: ApiProcess, first_bytes: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    if first_bytes:
        writer.write(first_bytes)
        await writer.drain()
    return reader, writer


async def _until_closed(reader: asyncio.StreamReader, started: float, timeout: float) -> tuple[float, bytes]:
    """(seconds until the server closed the connection, what it sent); (inf, b"") if it never did."""
    try:
        async with asyncio.timeout(timeout):
            data = await reader.read()  # to EOF
    except TimeoutError:
        return float("inf"), b""
    except ConnectionResetError:
        data = b""
    return time.monotonic() - started, data


async def _health(api: ApiProcess) -> tuple[int, float]:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=api.base_url, timeout=5.0, trust_env=False) as http:
        status = (await http.get("/health")).status_code
    return status, time.monotonic() - started


def _log_events(api: ApiProcess, event: str) -> list[dict[str, object]]:
    lines = []
    for line in api.logs().splitlines():
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == event:
                lines.append(entry)
    return lines


def _close_all(writers: list[asyncio.StreamWriter]) -> None:
    for writer in writers:
        writer.close()


async def test_half_request_heads_and_silent_connections_are_closed_while_health_answers(
    settings: Settings,
) -> None:
    """40 connections send half a request head, 10 send nothing, 5 finish one request and send half of the
    next (kept alive): with HTTP_HEADER_TIMEOUT_SECONDS=1 the server answers each 408 (or closes it) within
    the timeout, logs each once with its address, and /health answers meanwhile."""
    head_timeout = 1.0
    with api_processes(1, env_for(settings, HTTP_HEADER_TIMEOUT_SECONDS=str(head_timeout))) as (api,):
        started = time.monotonic()
        half = [await _open(api, HALF_HEAD) for _ in range(40)]
        silent = [await _open(api) for _ in range(10)]
        kept_alive = []
        for _ in range(5):
            reader, writer = await _open(api, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            response_head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
            assert response_head.startswith("http/1.1 200")
            length = response_head.split("content-length: ", 1)[1].split("\r\n", 1)[0]
            await reader.readexactly(int(length))  # the whole answer: the connection stays open
            writer.write(HALF_HEAD)
            kept_alive.append((reader, writer, time.monotonic()))
        try:
            health_status, health_s = await _health(api)  # while the 55 are held
            closed = await asyncio.gather(
                *(_until_closed(r, started, timeout=8) for r, _ in half + silent),
                *(_until_closed(r, t, timeout=8) for r, _, t in kept_alive),
            )
        finally:
            _close_all([w for _, w in half + silent] + [w for _, w, _ in kept_alive])
        seconds = sorted(s for s, _ in closed)
        answered_408 = sum(data.startswith(b"HTTP/1.1 408") for _, data in closed)
        logged = _log_events(api, "http request head timed out")
        print(
            f"slow heads: {len(closed)} connections, closed after p50 {seconds[len(seconds) // 2]:.2f} s, "
            f"max {seconds[-1]:.2f} s (timeout {head_timeout} s); {answered_408} answered 408; "
            f"/health {health_status} in {health_s * 1000:.0f} ms meanwhile; {len(logged)} log lines"
        )
        assert seconds[-1] < head_timeout + 3, "a connection with half a request head was never closed"
        assert answered_408 == len(closed)
        assert health_status == 200 and health_s < 1.0
        assert len(logged) == len(closed)
        assert all(str(entry["client"]).startswith("127.0.0.1:") for entry in logged)
        assert (await _health(api))[0] == 200


async def test_a_webhook_body_that_stalls_or_trickles_is_ended_and_stores_nothing(
    settings: Settings, session: AsyncSession
) -> None:
    """A correctly authenticated webhook (secret in the header, so the handler reads the body) whose body
    stops half way is ended after HTTP_BODY_IDLE_TIMEOUT_SECONDS; one that trickles a byte every 0.3 s
    (never idle that long) after HTTP_BODY_TIMEOUT_SECONDS. Nothing is stored; the same webhook whole is."""
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    stalled, trickled, whole = text_webhooks(instance, ["5541900000001"], 3, "slow-body")
    env = env_for(settings, HTTP_BODY_IDLE_TIMEOUT_SECONDS="1", HTTP_BODY_TIMEOUT_SECONDS="2.5")

    def head(hook_body: bytes, headers: dict[str, str], path: str) -> bytes:
        lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(hook_body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    with api_processes(1, env) as (api,):
        started = time.monotonic()
        reader, writer = await _open(api, head(stalled.body, stalled.headers, stalled.path))
        writer.write(stalled.body[: len(stalled.body) // 2])
        stall_s, stall_answer = await _until_closed(reader, started, timeout=8)
        writer.close()

        started = time.monotonic()
        reader, writer = await _open(api, head(trickled.body, trickled.headers, trickled.path))

        async def trickle() -> None:
            with contextlib.suppress(ConnectionError):
                for byte in trickled.body[:30]:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(0.3)

        feeding = asyncio.create_task(trickle())
        trickle_s, trickle_answer = await _until_closed(reader, started, timeout=12)
        feeding.cancel()
        writer.close()

        async with httpx.AsyncClient(base_url=api.base_url, timeout=10.0, trust_env=False) as http:
            answer = await http.post(whole.path, content=whole.body, headers=whole.headers)
        stored = await stored_gateway_ids(settings.db.url, [stalled.message_id, trickled.message_id])
        logged = _log_events(api, "http request body timed out")
        print(
            f"slow bodies: stalled ended after {stall_s:.2f} s (idle 1 s), trickled after {trickle_s:.2f} s "
            f"(overall 2.5 s); answers {stall_answer[:12]!r} / {trickle_answer[:12]!r}; "
            f"{len(logged)} log lines; stored {sorted(stored)}"
        )
        assert stall_s < 1 + 3 and trickle_s < 2.5 + 3, "a stalled request body was never ended"
        assert stall_answer.startswith(b"HTTP/1.1 408") and trickle_answer.startswith(b"HTTP/1.1 408")
        assert stored == set()
        assert answer.status_code == 200 and answer.json()["created"] == 1, answer.text
        assert len(logged) == 2 and {entry["path"] for entry in logged} == {stalled.path}
        assert instance.webhook_secret not in api.logs()


async def test_connections_beyond_the_cap_get_503_and_health_answers_once_they_are_gone(
    settings: Settings, session: AsyncSession
) -> None:
    """HTTP_MAX_CONNECTIONS=12: 6 idle HTTP connections and 6 WebSockets fill it; every further connection
    is answered 503 at once (or refused), logged; when they go, /health answers 200 again."""
    tenant = await create_tenant(session)
    token = valid_token(settings, tenant)
    env = env_for(settings, HTTP_MAX_CONNECTIONS="12", HTTP_HEADER_TIMEOUT_SECONDS="30")
    with api_processes(1, env) as (api,):
        idle = [await _open(api, HALF_HEAD) for _ in range(6)]
        sockets = [await WsClient.connect(api.ws_url, token) for _ in range(6)]
        try:
            for ws in sockets:
                assert (await ws.recv_json())["type"] == "ready"
            answers = []
            for _ in range(20):
                reader, writer = await _open(api, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answers.append((await _until_closed(reader, time.monotonic(), timeout=5))[1])
                writer.close()
            outcomes = [data.split(b"\r\n", 1)[0].decode() or "closed" for data in answers]
            refused_503 = sum(o.startswith("HTTP/1.1 503") for o in outcomes)
            retry_after = all(
                b"retry-after: 1" in d.lower() for d in answers if d.startswith(b"HTTP/1.1 503")
            )
        finally:
            _close_all([w for _, w in idle])
            for ws in sockets:
                await ws.close()
        await asyncio.sleep(0.2)  # the server sees them go
        after_status, _ = await _health(api)
        logged = _log_events(api, "connection limit reached; refusing connections")
        print(
            f"connection cap 12 (6 idle HTTP + 6 WebSockets): 20 more connections -> {refused_503} x 503, "
            f"{outcomes.count('closed')} closed without an answer, "
            f"{20 - refused_503 - outcomes.count('closed')} served; /health after: {after_status}; "
            f"{len(logged)} log lines (at most one a second)"
        )
        assert all(o.startswith("HTTP/1.1 503") or o == "closed" for o in outcomes), outcomes
        assert refused_503 > 0 and retry_after
        assert after_status == 200
        assert logged and logged[0]["limit"] == 12


def test_the_default_connection_cap_leaves_room_for_the_process_own_files() -> None:
    """0 derives the cap from the soft RLIMIT_NOFILE: 10k sockets need a limit above ~11.5k files."""
    assert connection_limit(0, 256) == 128
    assert connection_limit(0, 1024) == 896
    assert connection_limit(0, 65536) == 57344
    assert connection_limit(0, 12000) == 10500
    assert connection_limit(500, 1024) == 500
