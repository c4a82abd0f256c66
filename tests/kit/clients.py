"""The clients tests and benchmarks talk to a server with, one of each kind (issue 14: the raw WebSocket
handshake stood four times in tests/, the HTTP load client twice):

- `RawWebSocket`: RFC 6455's client side over an asyncio.Protocol of its own (no task per socket, no library
  buffers), so one process can hold thousands next to the servers it measures; it can stop reading
  (`pause_reading`) to play a slow consumer, and `StalledClient` is the same handshake and frames over a
  blocking socket with a tiny receive buffer, for tests that never run an event loop in the client.
- `WsClient`: the `websockets` library, JSON frames, every wait bounded: what a test reads frames with.
- `HttpConnection`: a minimal HTTP/1.1 keep-alive client for load (httpx spends more CPU per request than
  the server under test).

What tests ask of the app with these (log in, send, post a webhook, open a room): tests/kit/api.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Origin

Json = dict[str, Any]

# -- the raw WebSocket -------------------------------------------------------------------------------------


def upgrade_request(port: int, path: str) -> bytes:
    """The HTTP/1.1 upgrade a browser sends for ws://127.0.0.1:port/path."""
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final client frame, masked as RFC 6455 5.3 requires (0x1 text, 0x8 close, 0xA pong)."""
    mask, n = os.urandom(4), len(payload)
    if n < 126:
        header = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    key = (mask * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")
    return header + mask + masked


def _ignore(_: bytes) -> None:
    pass


class RawWebSocket(asyncio.Protocol):
    """RFC 6455 client side, just enough: handshake, text frames out (masked), text / ping / close in.
    `on_text` gets every whole text (or binary) message; `on_lost` runs once the socket is gone after the
    handshake."""

    def __init__(
        self,
        request: bytes,
        on_text: Callable[[bytes], None] = _ignore,
        on_lost: Callable[[], None] = lambda: None,
    ) -> None:
        self._request, self._on_text, self._on_lost = request, on_text, on_lost
        self._buffer = bytearray()
        self._fragments: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.upgraded: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.close_code: int | None = None
        self.lost = False

    @classmethod
    async def open(
        cls,
        port: int,
        path: str,
        on_text: Callable[[bytes], None] = _ignore,
        on_lost: Callable[[], None] = lambda: None,
        *,
        timeout: float = 30.0,
    ) -> RawWebSocket:
        """Connected and upgraded within `timeout`; ConnectionError if the server answered without a 101."""
        ws = cls(upgrade_request(port, path), on_text, on_lost)
        async with asyncio.timeout(timeout):
            try:
                await asyncio.get_running_loop().create_connection(lambda: ws, "127.0.0.1", port)
                await ws.upgraded
            except BaseException:
                ws.abort()
                raise
        return ws

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.closed.done():
            self.closed.set_result(None)
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError(f"closed during the handshake: {exc}"))
        else:
            self._on_lost()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self.upgraded.done():
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end])
            del self._buffer[: end + 4]
            if not head.startswith(b"HTTP/1.1 101"):
                self.upgraded.set_exception(ConnectionError(head.decode(errors="replace")[:300]))
                self.abort()
                return
            self.upgraded.set_result(None)
        self._frames()

    def _frames(self) -> None:
        buf, pos = self._buffer, 0
        while len(buf) - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length, header = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
            if len(buf) - pos < header + length:
                break
            payload = bytes(buf[pos + header : pos + header + length])
            pos += header + length
            self._frame(first & 0x80 != 0, first & 0x0F, payload)
        del buf[:pos]

    def _frame(self, fin: bool, opcode: int, payload: bytes) -> None:
        if opcode in (0x0, 0x1, 0x2):
            self._fragments.append(payload)
            if fin:
                whole, self._fragments = b"".join(self._fragments), []
                self._on_text(whole)
        elif opcode == 0x8:  # close: answer with the same code, then the server closes TCP
            self.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            self._send(0x8, payload[:2])
        elif opcode == 0x9:
            self._send(0xA, payload)

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(client_frame(opcode, payload))

    def send_json(self, obj: Json) -> None:
        self._send(0x1, json.dumps(obj).encode())

    def pause_reading(self) -> None:
        """Stop reading: what the server sends waits in the kernel buffers (a slow consumer)."""
        if self.transport is not None:
            self.transport.pause_reading()

    def close(self) -> None:
        """Close TCP (FIN) without a close frame."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection without a close frame (RST): a network cut, a laptop lid."""
        if self.transport is not None:
            self.transport.abort()


async def close_all(sockets: list[RawWebSocket], timeout: float = 10.0) -> None:
    """Close every socket and wait (bounded) until each is gone."""
    for ws in sockets:
        ws.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(ws.closed for ws in sockets), return_exceptions=True)


class StalledClient:
    """The raw client over a blocking socket that can stop reading entirely: the receive buffer is set
    before connect (so the advertised TCP window stays small) and nothing after the 101's head is read."""

    def __init__(self, port: int, path: str, *, receive_buffer: int = 4096) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(upgrade_request(port, path))
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(1)  # byte by byte: nothing after the headers is consumed
        if not response.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(response.decode(errors="replace"))

    def send_text(self, text: str) -> None:
        self.sock.sendall(client_frame(0x1, text.encode()))

    def read_all(self, timeout: float = 5.0) -> bytes:
        """Everything the server sent until it closed the connection (or `timeout` of silence)."""
        self.sock.settimeout(timeout)
        chunks = []
        try:
            while chunk := self.sock.recv(65536):
                chunks.append(chunk)
        except TimeoutError:
            pass
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


# -- the library WebSocket client ----------------------------------------------------------------------


class WsClient:
    """JSON frames over one WebSocket connection (the `websockets` library), with every wait bounded."""

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


# -- the load client -----------------------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that writes a prepared request and reads one Content-Length
    framed response: the load client of the benches, which share two cores with what they measure."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, f"{host}:{port}")

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes, float]:
        """(status, body, seconds until the full response arrived)."""
        head = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        return await self.get(("\r\n".join(head) + "\r\n\r\n").encode() + body)

    @staticmethod
    def request(host: str, path: str, headers: dict[str, str]) -> bytes:
        """A GET prepared once, to `get` many times."""
        head = [f"GET {path} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(head) + "\r\n\r\n").encode()

    async def get(self, request: bytes) -> tuple[int, bytes, float]:
        """`request` (prepared) sent, and (status, body, seconds until the full response arrived); the
        response head is read in one call."""
        started = time.perf_counter()
        self.writer.write(request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        at = head.lower().find(b"\r\ncontent-length:")
        length = int(head[at + 17 : head.index(b"\r\n", at + 2)]) if at >= 0 else 0
        body = await self.reader.readexactly(length) if length else b""
        return int(head[9:12]), body, time.perf_counter() - started

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()
