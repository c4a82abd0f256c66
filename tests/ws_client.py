"""A small WebSocket client for tests, over the `websockets` library: JSON frames, timeouts, close codes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

Json = dict[str, Any]


class WsClient:
    """JSON frames over one WebSocket connection, with every wait bounded."""

    def __init__(self, conn: ClientConnection) -> None:
        self._conn = conn

    @classmethod
    async def connect(
        cls,
        ws_url: str,
        token: str | None,
        *,
        origin: str | None = None,
        path: str = "/ws",
        **options: Any,  # passed to websockets' connect (e.g. max_queue for a deliberately slow reader)
    ) -> WsClient:
        query = f"?{urlencode({'token': token})}" if token is not None else ""
        conn = await connect(
            f"{ws_url}{path}{query}",
            origin=Origin(origin) if origin is not None else None,
            proxy=None,  # websockets honours *_PROXY variables by default; loopback must go direct
            open_timeout=5.0,
            close_timeout=2.0,
            **options,
        )
        return cls(conn)

    async def __aenter__(self) -> WsClient:
        return self

    async def __aexit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        await self.close()

    @property
    def close_code(self) -> int | None:
        return self._conn.close_code

    @property
    def close_reason(self) -> str | None:
        return self._conn.close_reason

    async def send_json(self, obj: Any) -> None:
        await self._conn.send(json.dumps(obj))

    async def recv_json(self, timeout: float = 5.0) -> Json:
        """The next frame; TimeoutError if none arrives in time (websockets makes cancelling recv safe)."""
        async with asyncio.timeout(timeout):
            message: Json = json.loads(await self._conn.recv())
        return message

    async def recv_until(self, predicate: Callable[[Json], bool], timeout: float = 5.0) -> Json:
        """The first frame matching predicate within timeout; earlier frames are dropped."""
        async with asyncio.timeout(timeout):
            while True:
                message: Json = json.loads(await self._conn.recv())
                if predicate(message):
                    return message

    async def drain(self, timeout: float = 0.2) -> list[Json]:
        """Every frame arriving within timeout (stops early if the connection closes)."""
        messages: list[Json] = []
        with contextlib.suppress(TimeoutError, ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    messages.append(json.loads(await self._conn.recv()))
        return messages

    async def expect_close(self, timeout: float = 5.0) -> int:
        """Wait for the server to close (frames meanwhile are dropped); 1006 if it sent no close frame."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await self._conn.recv()
        return self._conn.close_code or 1006

    async def close(self) -> None:
        await self._conn.close()
