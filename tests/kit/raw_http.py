"""A hand-written HTTP/1.1 server for what tests/fake_gateway.py cannot answer: redirects, bodies without a
Content-Length, a Content-Length that lies, a slow drip. Each route's `Handler` writes the raw response;
every request is recorded. Issue 14 item 2: it stood in tests/integration/test_gateway_media.py, which
security/test_limits.py imported it from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class RawRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[["RawServer", RawRequest, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawServer:
    requests: list[RawRequest] = field(default_factory=list)
    body_bytes_sent: int = 0
    port: int = 0
    _routes: list[tuple[re.Pattern[str], Handler]] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def on(self, path_regex: str, handler: Handler) -> None:
        self._routes.append((re.compile(path_regex), handler))

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            method, path, _ = request_line.split(" ", 2)
            headers = {}
            for line in lines:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            request = RawRequest(method, path.partition("?")[0], headers, body)
            self.requests.append(request)
            for pattern, handler in reversed(self._routes):
                if pattern.search(request.path):
                    await handler(self, request, writer)
                    break
            else:
                writer.write(_head(404, {"content-length": "0"}))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client hung up (which is what several tests want), or the server is closing
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def _head(code: int, headers: dict[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {code} Whatever", "connection: close", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def redirect(location: str, code: int = 302) -> Handler:
    async def handler(server: RawServer, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(code, {"location": location, "content-length": "0"}))

    return handler


def json_answer(body: Any) -> Handler:
    async def handler(server: RawServer, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        raw = json.dumps(body).encode()
        writer.write(_head(200, {"content-type": "application/json", "content-length": str(len(raw))}))
        writer.write(raw)

    return handler


def endless_body(total: int, chunk: int = 64 * 1024) -> Handler:
    """`total` bytes of body with no Content-Length (ended by closing), counted as they are written."""

    async def handler(server: RawServer, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"content-type": "video/mp4"}))
        piece = b"\0" * chunk
        while server.body_bytes_sent < total:
            writer.write(piece)
            server.body_bytes_sent += chunk
            await writer.drain()

    return handler


def lying_length(declared: int) -> Handler:
    """Announces `declared` bytes and then sends nothing: only the header can stop the client in time."""

    async def handler(server: RawServer, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"content-type": "application/json", "content-length": str(declared)}))
        await writer.drain()
        await asyncio.sleep(30)

    return handler


def drip(interval: float) -> Handler:
    """A body that arrives a byte at a time, each well within the read timeout."""

    async def handler(server: RawServer, request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, {"content-type": "image/jpeg", "content-length": "1000"}))
        for _ in range(1000):
            await writer.drain()
            await asyncio.sleep(interval)
            writer.write(b"x")

    return handler
