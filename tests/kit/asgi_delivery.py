"""One POST straight into the ASGI app, its body handed over a chunk at a time only when the app asks for
it, counting the chunks it read and the database connections checked out when it first read one: how a
test sees that a forgery the headers can refuse costs no upload. `live_app` runs the app's lifespan in the
caller's task. Issue 14 item 2: these stood in security/test_webhook_entry, which test_webhook_bodies
imported them from.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar

from app.config import Settings
from app.server.core import create_app

CHUNK = 64 * 1024


@dataclass
class Delivery:
    status: int
    answer: dict[str, Any]
    chunks_read: int  # body chunks the app asked for
    chunks_total: int
    connections_while_reading: int | None  # database connections checked out when the body was first read


async def deliver(
    app: Litestar,
    path: str,
    headers: dict[str, str],
    body: bytes,
    query: str = "",
    *,
    announce_length: bool = True,
) -> Delivery:
    """One POST straight into the ASGI app, its body handed over a chunk at a time only when asked for
    (without `announce_length`, as a chunked upload: no Content-Length)."""
    chunks = [body[i : i + CHUNK] for i in range(0, len(body), CHUNK)] or [b""]
    read = 0
    connections: list[int] = []
    pool = app.plugins.get(SQLAlchemyPlugin).config[0].get_engine().pool

    async def receive() -> dict[str, Any]:
        nonlocal read
        if read >= len(chunks):
            return {"type": "http.disconnect"}
        if read == 0:
            connections.append(pool.checkedout())
        read += 1
        return {"type": "http.request", "body": chunks[read - 1], "more_body": read < len(chunks)}

    started: dict[str, Any] = {}
    parts: list[bytes] = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.update(message)
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    raw_headers = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    raw_headers.append((b"host", b"test"))
    if announce_length:
        raw_headers.append((b"content-length", str(len(body)).encode()))
    await app(post_scope(path, raw_headers, query.encode(), "192.0.2.50"), receive, send)  # type: ignore[arg-type]
    answer = json.loads(b"".join(parts) or b"{}")
    return Delivery(started["status"], answer, read, len(chunks), connections[0] if connections else None)


def post_scope(path: str, headers: list[tuple[bytes, bytes]], query: bytes, client: str) -> dict[str, Any]:
    """The ASGI scope of a POST as uvicorn builds it (for driving an app without a server)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": query,
        "headers": headers,
        "client": (client, 40000),
        "server": ("test", 80),
    }


@asynccontextmanager
async def live_app(settings: Settings) -> AsyncIterator[Litestar]:
    """The app with its lifespan run in the caller's task (a fixture's teardown runs in another one)."""
    # No catch-up queries in the background: the pool's count must be the request's alone.
    quiet = dataclasses.replace(
        settings, realtime=dataclasses.replace(settings.realtime, catch_up_interval_s=3600)
    )
    app = create_app(quiet)
    async with app.lifespan():
        yield app
