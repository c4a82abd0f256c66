"""The hub's Redis subscription as an asyncio protocol: messages are handled in the read callback itself.

Why not redis-py's PubSub (issue 13): its reader is a task, so a message read from the socket waits one
more turn of the event loop before the task runs, and under webhook load a turn of the API process's loop
is long (every request's step is in it). Here `data_received` parses what arrived (hiredis, the parser
redis-py itself uses) and hands every complete message to the hub in the same call, a whole chunk at a
time; the hub writes the frames to the sockets there too (Connection.send). From the Redis socket to the
WebSocket transports, no hop through the loop's ready queue.

What it speaks is the small part of RESP a subscriber needs: AUTH (when the URL has a password), then
PSUBSCRIBE and SUBSCRIBE, and their confirmations; nothing else is ever sent on the connection. Losing it
ends `closed`, and the hub reconnects with its backoff as before.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any, cast

import hiredis
from redis.connection import SSLConnection, UnixDomainSocketConnection, parse_url

# (kind, channel, data): kind b"message" or b"pmessage", or b"subscribe"/b"psubscribe" for confirmations.
OnMessage = Callable[[bytes, bytes, bytes], None]


class SubscriptionLost(ConnectionError):
    pass


def _command(*parts: str | bytes) -> bytes:
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part.encode() if isinstance(part, str) else part
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class SubscriberProtocol(asyncio.Protocol):
    def __init__(self, on_message: OnMessage) -> None:
        self._on_message = on_message
        self._reader = hiredis.Reader()
        self._transport: asyncio.Transport | None = None
        self._auth_pending = 0
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def send(self, *commands: bytes, auth: bool = False) -> None:
        if self._transport is None or self._transport.is_closing():
            raise SubscriptionLost("not connected")
        self._auth_pending += auth
        self._transport.write(b"".join(commands))

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if isinstance(reply, hiredis.ReplyError) or self._auth_pending:
                self._auth_pending = max(0, self._auth_pending - 1)
                if isinstance(reply, hiredis.ReplyError):
                    self._fail(SubscriptionLost(f"Redis refused: {reply}"))
                    return
                continue
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind == b"pmessage" and len(reply) == 4:
                self._on_message(kind, reply[2], reply[3])
            elif kind == b"message" and len(reply) == 3:
                self._on_message(kind, reply[1], reply[2])
            elif kind in (b"subscribe", b"psubscribe"):
                self._on_message(kind, reply[1], b"")

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(SubscriptionLost(str(exc) if exc else "Redis closed the connection"))

    def _fail(self, exc: Exception) -> None:
        if not self.closed.done():
            self.closed.set_exception(exc)
            self.closed.exception()  # retrieved: whoever awaits it sees it, nobody else is warned
        if self._transport is not None:
            self._transport.close()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def subscribe(
    redis_url: str,
    patterns: list[str],
    channels: list[str],
    on_message: OnMessage,
    connect_timeout_s: float = 5.0,
) -> SubscriberProtocol:
    """Connect, authenticate and send the subscriptions; confirmations arrive through `on_message`."""
    options: dict[str, Any] = parse_url(redis_url)  # type: ignore[no-untyped-call]
    loop = asyncio.get_running_loop()

    def factory() -> SubscriberProtocol:
        return SubscriberProtocol(on_message)

    async with asyncio.timeout(connect_timeout_s):
        if options.get("connection_class") is UnixDomainSocketConnection:
            _, protocol = await loop.create_unix_connection(factory, options["path"])
        else:
            tls = ssl.create_default_context() if options.get("connection_class") is SSLConnection else None
            _, protocol = await loop.create_connection(
                factory, options.get("host", "localhost"), options.get("port", 6379), ssl=tls
            )
    commands = []
    if options.get("password"):
        credentials = [options["username"]] if options.get("username") else []
        commands.append(_command("AUTH", *credentials, options["password"]))
    if patterns:
        commands.append(_command("PSUBSCRIBE", *patterns))
    if channels:
        commands.append(_command("SUBSCRIBE", *channels))
    protocol.send(*commands, auth=bool(options.get("password")))
    return protocol
