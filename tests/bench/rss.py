"""Server RSS with 10 / 100 / 1,000 connected users: each one an agent of the team with its own token, one
WebSocket subscribed to its open conversation, idle (no message traffic while sampling). A fresh API process;
the same sockets against the minimal Redis→WebSocket relay in the same run as the floor.

The client side is the kit's RawWebSocket (the HTTP upgrade by hand, one asyncio.Protocol per socket,
plus one masked `subscribe` frame): a websockets client per socket would cost this process far more than
the server spends.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx

from tests.bench.world import World
from tests.kit.clients import RawWebSocket, close_all
from tests.kit.measure import raise_fd_limit, rss_kib
from tests.kit.processes import ApiProcess, wait_ready
from tests.kit.ws_relay import relay_processes


async def _open(port: int, path: str, conversation: str) -> RawWebSocket:
    ws = await RawWebSocket.open(port, path)
    ws.send_json({"type": "subscribe", "conversation_id": conversation})
    return ws


async def _series(
    pid: int,
    port: int,
    path_of: Callable[[int], str],
    conversation_of: Callable[[int], str],
    steps: list[int],
    settle: float,
    server_count: Callable[[], Awaitable[int | None]] | None = None,
) -> tuple[int, list[dict[str, Any]], int, int | None]:
    """RSS (KB) before any socket, then at each step of connected users; how many sockets failed; and
    the sockets the server itself counted at the last step (not what the client believes it holds)."""
    writers: list[RawWebSocket] = []
    failed = 0
    gate = asyncio.Semaphore(100)

    async def one(i: int) -> None:
        nonlocal failed
        async with gate:
            try:
                writers.append(await _open(port, path_of(i), conversation_of(i)))
            except (OSError, ConnectionError, TimeoutError):
                failed += 1

    try:
        # A few sockets opened and closed first, so one-off costs (imports, pools) land in the baseline.
        await asyncio.gather(*(one(i) for i in range(min(20, steps[0]))))
        await close_all(writers)
        writers.clear()
        failed = 0
        await asyncio.sleep(settle)
        before = rss_kib(pid)
        samples = []
        for users in steps:
            await asyncio.gather(*(one(i) for i in range(len(writers) + failed, users)))
            if server_count is not None:  # every socket registered (and subscribed) before sampling
                deadline = time.monotonic() + 10
                while ((await server_count()) or 0) < len(writers) and time.monotonic() < deadline:
                    await asyncio.sleep(0.1)
            await asyncio.sleep(settle)
            samples.append({"users": users, "held": len(writers), "rss_kb": rss_kib(pid)})
        return before, samples, failed, (await server_count() if server_count else None)
    finally:
        await close_all(writers)


async def run(world: World, api: ApiProcess, steps: list[int], settle: float) -> dict[str, Any]:
    """`api`: a fresh API process of the suite's (maybe still starting), which nothing has used yet."""
    raise_fd_limit(2 * max(steps) + 1000)
    channel = f"{world.settings.redis.key_prefix}:suite-rss-relay"
    with relay_processes(1, os.environ["REDIS_URL"], channel) as (relay,):
        wait_ready(api)
        await world.ensure_conversations(api.port)

        def api_path(i: int) -> str:
            return f"/ws?token={quote(world.tokens[i])}"

        async with httpx.AsyncClient(base_url=api.base_url, trust_env=False, timeout=10) as http:

            async def server_count() -> int | None:
                info = await http.get(
                    "/api/whatsapp-optimized/websocket/info",
                    headers={"Authorization": f"Bearer {world.tokens[0]}"},
                )
                return info.json().get("process", {}).get("connections") if info.status_code == 200 else None

            api_before, api_samples, api_failed, counted = await _series(
                api.pid, api.port, api_path, world.open_conversation, steps, settle, server_count
            )
        relay_before, relay_samples, relay_failed, _ = await _series(
            relay.pid, relay.port, lambda _i: "/", world.open_conversation, steps, settle
        )
    rows = []
    first = api_samples[0]["rss_kb"]
    for ours, floor in zip(api_samples, relay_samples, strict=True):
        rows.append(
            {
                "users": ours["users"],
                "held": ours["held"],
                "rss_mib": round(ours["rss_kb"] / 1024, 1),
                "growth_vs_first_pct": round((ours["rss_kb"] / first - 1) * 100, 1),
                "kb_per_user": round((ours["rss_kb"] - api_before) / ours["users"], 1),
                "relay_rss_mib": round(floor["rss_kb"] / 1024, 1),
                "relay_held": floor["held"],
                "relay_kb_per_user": round((floor["rss_kb"] - relay_before) / floor["users"], 1),
                "ratio": round(ours["rss_kb"] / floor["rss_kb"], 2),
            }
        )
    return {
        "settle_s": settle,
        "api_rss_before_mib": round(api_before / 1024, 1),
        "relay_rss_before_mib": round(relay_before / 1024, 1),
        "failed": api_failed,
        "relay_failed": relay_failed,
        "server_counted_connections": counted,
        "rows": rows,
    }
