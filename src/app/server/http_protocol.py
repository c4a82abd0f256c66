"""uvicorn's httptools protocol with the limits a server facing the internet needs (issue 12, finding 5).

An attack on `just dev` held 400 connections that sent half a request head, or half a body, and stopped:
none was ever closed, and with `ulimit -n 256` 300 of them made `/health` fail for everyone, with nothing
logged (accept() failing on EMFILE is silent). uvicorn has no timeout for a request head or body of its own
— `timeout_keep_alive` only runs between requests — and its `limit_concurrency` is checked once a head has
arrived, which a slow client never lets happen. So this small subclass of the protocol uvicorn's `auto`
picks, passed as `--http app.server.http_protocol:GuardedHttpToolsProtocol` (app.server.run's helpers do),
adds three things, each logged (structlog warning with the client address, never a query string) and
counted (`crm_http_slow_clients_total`, `crm_http_connections_refused_total`):

- head timeout: a request head (request line and headers) not complete HTTP_HEADER_TIMEOUT_SECONDS after
  the connection opened, or after the request's first byte on a kept-alive connection, gets 408 and the
  connection is closed;
- body timeouts: a body silent for HTTP_BODY_IDLE_TIMEOUT_SECONDS, or not complete within
  HTTP_BODY_TIMEOUT_SECONDS, ends the same way; the handler reading it sees the client gone (nothing is
  stored). While the application is not reading (uvicorn paused the socket because its buffer is full) the
  client is not waiting on us, so that time does not count as silence;
- a cap on open connections (HTTP and WebSocket alike: uvicorn counts both in `server_state.connections`):
  beyond HTTP_MAX_CONNECTIONS a new connection is answered 503 with Retry-After and closed at once, so the
  process never runs out of file descriptors for its pools and its own sockets. The default derives from
  RLIMIT_NOFILE (see `connection_limit`); `raise_open_files_limit` lifts the soft limit to the hard one at
  startup, so a host allowing 10k sockets gets a cap to match. Refusals are logged at most once a second.

A WebSocket connection leaves these timers behind at its upgrade: its liveness is the protocol's ping.
Each request's cycle writes through CoalescedWrites: a response's head and body in one send() (issue 13).
"""

from __future__ import annotations

import asyncio
import json
import resource
import time
from http import HTTPStatus
from typing import Any

import structlog
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from app.config import HttpServerSettings, get_settings
from app.lib import metrics
from app.server.coalesced_writes import CoalescedWrites

log = structlog.get_logger()

# File descriptors kept for what is not a client connection: the database pool and its overflow, the
# LISTEN connection, Redis connections and pub/sub, log files, the event loop's own.
RESERVED_FILES = 128
UNLIMITED_CONNECTIONS = 1_000_000


def connection_limit(configured: int, soft_files_limit: int | None = None) -> int:
    """HTTP_MAX_CONNECTIONS, or (0) the soft RLIMIT_NOFILE less what the process needs besides clients:
    the larger of RESERVED_FILES and an eighth (1,024 files → 896 connections; 65,536 → 57,344)."""
    if configured > 0:
        return configured
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0] if soft_files_limit is None else soft_files_limit
    if soft == resource.RLIM_INFINITY or soft <= 0:
        return UNLIMITED_CONNECTIONS
    return max(16, soft - max(RESERVED_FILES, soft // 8))


def raise_open_files_limit() -> tuple[int, int]:
    """Lift the soft file limit to the hard one (Python, unlike nginx, never does); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # some hosts cap what an unprivileged process may ask for
            pass
    return soft, hard


def _problem_response(status: int, detail: str, *extra_headers: bytes) -> bytes:
    phrase = HTTPStatus(status).phrase
    body = json.dumps({"type": "about:blank", "title": phrase, "status": status, "detail": detail}).encode()
    head = [
        f"HTTP/1.1 {status} {phrase}".encode(),
        b"content-type: application/problem+json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
        *extra_headers,
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


TOO_MANY_CONNECTIONS = _problem_response(503, "too many open connections; retry shortly", b"retry-after: 1")
HEAD_TIMEOUT = _problem_response(408, "the request head did not arrive in time")
BODY_TIMEOUT = _problem_response(408, "the request body did not arrive in time")


class _Limits:
    """The settings, read once per process (uvicorn builds a protocol per connection)."""

    __slots__ = ("body_idle_s", "body_total_s", "head_s", "max_connections")

    def __init__(self, settings: HttpServerSettings) -> None:
        self.head_s = settings.header_timeout_s
        self.body_idle_s = settings.body_idle_timeout_s
        self.body_total_s = settings.body_timeout_s
        self.max_connections = connection_limit(settings.max_connections)


class _Refusals:
    """Connections refused at the cap since the last log line: one line a second at most under a flood."""

    count = 0
    logged_at = 0.0

    @classmethod
    def note(cls, open_connections: int, limit: int) -> None:
        cls.count += 1
        now = time.monotonic()
        if now - cls.logged_at >= 1.0:
            log.warning(
                "connection limit reached; refusing connections",
                refused=cls.count,
                open_connections=open_connections,
                limit=limit,
            )
            cls.count, cls.logged_at = 0, now


_limits: _Limits | None = None


def _current_limits() -> _Limits:
    global _limits
    if _limits is None:
        _limits = _Limits(get_settings().http)
    return _limits


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.limits = _current_limits()
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_open = False  # a request head has arrived and its body has not ended
        self._body_started = 0.0
        self._body_last_byte = 0.0

    # -- the connection cap ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            metrics.HTTP_CONNECTIONS_REFUSED.inc()
            _Refusals.note(len(self.connections), self.limits.max_connections)
            transport.write(TOO_MANY_CONNECTIONS)
            transport.close()
            return
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    # -- the request head -----------------------------------------------------------------------
    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(self.limits.head_s, self._head_timed_out)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()  # a kept-alive connection's next request: its head has the same time

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().on_headers_complete()
        if self.cycle is not None and self.cycle.transport is self.transport:  # a new request's cycle
            self.cycle.transport = CoalescedWrites(self.transport, self.loop)  # type: ignore[assignment]
        if not (self.parser.should_upgrade() and self._should_upgrade()):
            self._body_open = True
            self._body_started = self._body_last_byte = self.loop.time()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        metrics.HTTP_SLOW_CLIENTS.labels("head").inc()
        log.warning("http request head timed out", client=self._client_address(), seconds=self.limits.head_s)
        if self.cycle is None or self.cycle.response_complete:  # no answer of ours is being written
            self.transport.write(HEAD_TIMEOUT)
        self.transport.close()

    # -- the request body -----------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Armed only for a body that did not come whole with its head: most requests never need a timer.
        if self._body_open and self._body_timer is None and not self.transport.is_closing():
            self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        self._body_last_byte = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._body_open = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        super().on_message_complete()

    def _arm_body_timer(self) -> None:
        deadline = min(
            self._body_last_byte + self.limits.body_idle_s, self._body_started + self.limits.body_total_s
        )
        self._body_timer = self.loop.call_at(deadline, self._check_body)

    def _check_body(self) -> None:
        self._body_timer = None
        if not self._body_open or self.transport.is_closing():
            return
        now = self.loop.time()
        if self.flow.read_paused:  # the application is behind, not the client
            self._body_last_byte = now
        total = now - self._body_started
        if total < self.limits.body_total_s and now - self._body_last_byte < self.limits.body_idle_s:
            self._arm_body_timer()
            return
        self._body_open = False
        metrics.HTTP_SLOW_CLIENTS.labels("body").inc()
        log.warning(
            "http request body timed out",
            client=self._client_address(),
            method=self.scope.get("method"),
            path=self.scope.get("path"),  # never the query string: webhook secrets travel there
            seconds=round(total, 1),
        )
        cycle = self.cycle
        if cycle is not None and not cycle.response_started:
            self.transport.write(BODY_TIMEOUT)
        if cycle is not None:  # the handler's receive() now answers http.disconnect; its answer is dropped
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    # -- the rest -------------------------------------------------------------------------------
    def handle_websocket_upgrade(self) -> None:
        self._cancel_timers()
        super().handle_websocket_upgrade()

    def _cancel_timers(self) -> None:
        self._body_open = False
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    def _client_address(self) -> str:
        return f"{self.client[0]}:{self.client[1]}" if self.client else "unknown"
