"""A scriptable stand-in for WPPConnect, Evolution and the Cloud API: a real HTTP server on 127.0.0.1.

    async with FakeGateway() as gw:
        gw.respond(r"/send-message$", ok("wppconnect", message_id="true_5511…@c.us_3EB0…"))
        gw.respond(r"/messages$", status(400, {"error": {...}}), ok("cloudapi"))  # one after the other
        ... gw.base_url ... gw.requests[0].json ...

Each rule maps a path regex (re.search on the path, query excluded) to actions used in turn, the last one
repeating. The newest matching rule wins, so a test can override a broader one. Unscripted paths get 404.
A tiny HTTP/1.1 server over asyncio streams (one request per connection, `Connection: close`) keeps the rig
free of threads and extra dependencies while going through a real socket, as the senders do in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # names lower-cased
    body: bytes

    @property
    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    delay: float = 0.0  # seconds to wait before answering
    headers: tuple[tuple[str, str], ...] = ()  # more response headers, sent as they are (raw bytes)


Action = Reply | Callable[[RecordedRequest], Reply]


def status(code: int, body: Any = None) -> Reply:
    """Answer `code` with `body`: bytes/str as they are, anything else as JSON."""
    if isinstance(body, bytes | str):
        raw = body.encode() if isinstance(body, str) else body
        return Reply(code, raw, content_type="text/plain")
    return Reply(code, b"" if body is None else json.dumps(body).encode())


def redirect(location: str | None, code: int = 302) -> Reply:
    """A redirect to `location`, sent byte for byte as given (None: a redirect with no Location at all)."""
    return Reply(
        code, headers=() if location is None else (("Location", location),), content_type="text/plain"
    )


def hang(seconds: float) -> Reply:
    """Answer only after `seconds` (longer than the client's timeout, for timeout tests)."""
    return Reply(200, b"{}", delay=seconds)


def garbage() -> Reply:
    """A 200 that is not JSON: what a misconfigured proxy or a login page looks like."""
    return Reply(200, b"<html><body>Welcome to nginx!</body></html>", content_type="text/html")


def ok(gateway: str, message_id: str | None = None) -> Callable[[RecordedRequest], Reply]:
    """A successful send in `gateway`'s own answer shape, carrying `message_id` (generated when None)."""
    builders = {"wppconnect": _wppconnect_ok, "evolution": _evolution_ok, "cloudapi": _cloudapi_ok}
    build = builders[gateway]
    return lambda request: build(request.json or {}, message_id)


def _wppconnect_ok(sent: dict[str, Any], message_id: str | None) -> Reply:
    # messageController.sendMessage: 201 {status, response: [WAPI serialised message], mapper}.
    chat = f"{sent.get('phone')}@{'g.us' if sent.get('isGroup') else 'c.us'}"
    serialized = message_id or f"true_{chat}_3EB0{secrets.token_hex(8).upper()}"
    message = {
        "id": serialized,
        "body": sent.get("message"),
        "type": "chat",
        "t": int(time.time()),
        "from": "5511988887777@c.us",
        "to": chat,
        "chatId": chat,
        "fromMe": True,
        "ack": 1,
        "isGroupMsg": bool(sent.get("isGroup")),
    }
    return Reply(201, json.dumps({"status": "success", "response": [message], "mapper": "return"}).encode())


def _evolution_ok(sent: dict[str, Any], message_id: str | None) -> Reply:
    # sendText: 201 with the Baileys WAMessage; v2 folds the text into `conversation`.
    number = str(sent.get("number", ""))
    jid = number if "@" in number else f"{number}@s.whatsapp.net"
    text = sent.get("text") or (sent.get("textMessage") or {}).get("text")
    answer = {
        "key": {"remoteJid": jid, "fromMe": True, "id": message_id or f"BAE5{secrets.token_hex(6).upper()}"},
        "pushName": "",
        "status": "PENDING",
        "message": {"conversation": text},
        "messageType": "conversation",
        "messageTimestamp": int(time.time()),
        "instanceId": "a8e7f4a2-0000-4000-8000-000000000000",
        "source": "unknown",
    }
    return Reply(201, json.dumps(answer).encode())


def _cloudapi_ok(sent: dict[str, Any], message_id: str | None) -> Reply:
    wamid = message_id or f"wamid.HBgN{secrets.token_hex(16).upper()}"
    to = sent.get("to")
    answer = {
        "messaging_product": "whatsapp",
        "contacts": [{"input": to, "wa_id": to}],
        "messages": [{"id": wamid}],
    }
    return Reply(200, json.dumps(answer).encode())


@dataclass
class _Rule:
    pattern: re.Pattern[str]
    actions: list[Action]
    used: int = 0

    def next_action(self) -> Action:
        action = self.actions[min(self.used, len(self.actions) - 1)]
        self.used += 1
        return action


@dataclass
class FakeGateway:
    requests: list[RecordedRequest] = field(default_factory=list)
    _rules: list[_Rule] = field(default_factory=list)
    _server: asyncio.Server | None = None
    _handlers: set[asyncio.Task[None]] = field(default_factory=set)
    _closing: asyncio.Event = field(default_factory=asyncio.Event)
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def respond(self, path_regex: str, *actions: Action) -> None:
        if not actions:
            raise ValueError("respond() needs at least one action")
        self._rules.append(_Rule(re.compile(path_regex), list(actions)))

    async def __aenter__(self) -> FakeGateway:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        # Wakes hanging replies so they end on their own (cancelling them makes asyncio log noise).
        self._closing.set()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            request = await _read_request(reader)
            if request is not None:
                self.requests.append(request)
                reply = self._reply_for(request)
                if reply.delay:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._closing.wait(), reply.delay)
                if not self._closing.is_set():
                    writer.write(_encode(reply))
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up (timeout tests): nothing to answer
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _reply_for(self, request: RecordedRequest) -> Reply:
        for rule in reversed(self._rules):
            if rule.pattern.search(request.path):
                action = rule.next_action()
                return action if isinstance(action, Reply) else action(request)
        return status(404, {"error": f"no script for {request.method} {request.path}"})


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    head = await reader.readuntil(b"\r\n\r\n")
    request_line, *header_lines = head.decode("latin-1").split("\r\n")
    if not request_line:
        return None
    method, target, _ = request_line.split(" ", 2)
    headers = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    parts = urlsplit(target)
    return RecordedRequest(method, parts.path, parts.query, headers, body)


def _encode(reply: Reply) -> bytes:
    reason = "OK" if reply.status < 400 else "Error"
    head = (
        f"HTTP/1.1 {reply.status} {reason}\r\n"
        f"Content-Type: {reply.content_type}\r\n"
        f"Content-Length: {len(reply.body)}\r\n"
        + "".join(f"{name}: {value}\r\n" for name, value in reply.headers)
        + "Connection: close\r\n\r\n"
    )
    return head.encode("utf-8", "surrogateescape") + reply.body
