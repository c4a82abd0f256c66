"""Reading a webhook's body: a size limit per gateway, and a bounded amount of unverified reading in flight.

Issue 12 (finding 2): 40 concurrent 23 MiB bodies from one address, each refused 401 once read, took an API
process from 467 to 2,023 MiB. Only an instance name was needed: Cloud API's signature is over the body and
Evolution's in-body `apikey` is in it, so both must be read before they can be refused. Hence:

- A limit per gateway. WPPConnect and Evolution push media inline as base64 (WEBHOOK_MAX_BODY_BYTES, 24 MiB);
  Cloud API never does — media comes by id and its webhooks are KBs — so it gets
  WEBHOOK_CLOUDAPI_MAX_BODY_BYTES (1 MiB). A Content-Length over the limit is refused (413) before a byte is
  read; a chunked body is refused the moment it passes the limit, the rest never buffered.
- Unverified reads share a per-process budget: at most WEBHOOK_UNVERIFIED_READS bodies and
  WEBHOOK_UNVERIFIED_BYTES bytes (each body counts its Content-Length, else its gateway's limit) are read at
  once before their request is verified. A request that cannot get its share within UNVERIFIED_READ_WAIT_S
  is answered 503 with Retry-After and its body is never read: Evolution and Meta retry, and memory stays
  bounded however many arrive. A share is given back once the body is verified, or refused and dropped.
  Requests their headers already verified (WPPConnect; Evolution's header or `?token=` secret) hold the
  instance's secret and never wait for a share. Small bodies may pass big ones waiting for bytes: first fit,
  so a few attackers' 23 MiB uploads do not queue a gateway's KB-sized webhooks behind them.
- One copy of a body while it is unverified: with a Content-Length it is read into one buffer of that size
  (no list of chunks joined into a second copy), a refused body's buffer is freed at once, and only a
  verified body is copied into the `bytes` the parsers take.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

import structlog
from litestar.exceptions import InternalServerException
from litestar.plugins.problem_details import ProblemDetailsException

from app.config import AppSettings
from app.db.models import GatewayKind
from app.domain.gateways.base import WebhookUnauthorized
from app.lib.errors import problem

log = structlog.get_logger()

UNVERIFIED_READ_WAIT_S = 1.0  # how long a request waits for a share of the budget before its 503
RETRY_AFTER_S = 2

# Judges an unverified body (raises WebhookUnauthorized to refuse it); the buffer must not be kept.
Verify = Callable[[bytearray], None]
# What the webhook service is handed: read this request's body for that gateway, verifying it first if asked.
ReadBody = Callable[[GatewayKind, Verify | None], Awaitable[bytes]]


class BodySource(Protocol):
    """What reading a body needs of a request: Litestar's Request, or the lean path's view of the bare
    ASGI scope (app.server.webhook_path.ScopeBody). A client gone before the body ended raises Litestar's
    InternalServerException, as Request.stream does."""

    @property
    def content_length(self) -> int | None: ...

    def stream(self) -> AsyncIterator[bytes]: ...


def too_large(limit: int) -> ProblemDetailsException:
    return problem(413, f"the body is larger than this gateway's limit of {limit} bytes")


@dataclass
class UnverifiedReads:
    """The per-process budget of bodies read before their request is verified: a count and bytes.

    Taking and giving back a share is synchronous (no lock to await), so a cancelled request can never
    leave its share taken.
    """

    max_reads: int
    max_bytes: int
    wait_s: float = UNVERIFIED_READ_WAIT_S
    reads_in_flight: int = 0
    bytes_in_flight: int = 0
    refused: int = 0  # requests answered 503 for want of a share, since start
    _waiters: list[asyncio.Future[None]] = field(default_factory=list, repr=False)

    def _fits(self, size: int) -> bool:
        return self.reads_in_flight < self.max_reads and self.bytes_in_flight + size <= self.max_bytes

    def _take(self, size: int) -> None:
        self.reads_in_flight += 1
        self.bytes_in_flight += size

    def _give_back(self, size: int) -> None:
        self.reads_in_flight -= 1
        self.bytes_in_flight -= size
        for waiter in self._waiters:  # every waiter checks again whether it fits now
            if not waiter.done():
                waiter.set_result(None)

    async def share(self, size: int) -> Callable[[], None]:
        """Wait (at most `wait_s`) until `size` bytes and one read fit, take them, and return the function
        that gives them back; 503 + Retry-After if they do not fit in time."""
        size = min(size, self.max_bytes)  # a body as large as the whole budget is read alone
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while not self._fits(size):
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except TimeoutError:
                self.refused += 1
                log.warning(
                    "unverified webhook body not read: the read budget is taken",
                    reads_in_flight=self.reads_in_flight,
                    bytes_in_flight=self.bytes_in_flight,
                    bytes_asked=size,
                )
                busy = problem(503, "too many unverified webhook bodies are being read; retry shortly")
                busy.headers = {"Retry-After": str(RETRY_AFTER_S)}
                raise busy from None
            finally:
                self._waiters.remove(waiter)
        self._take(size)
        return partial(self._give_back, size)


@contextmanager
def _freed_on_error(buffer: bytearray) -> Iterator[None]:
    """A body that is refused (too large, unverified, cut off) frees its memory now, not once the error has
    been answered: the traceback would keep the buffer alive until then."""
    try:
        yield
    except BaseException:
        buffer.clear()
        raise


async def _read(request: BodySource, limit: int, announced: int | None) -> bytearray:
    """The body, streamed into one buffer (of the announced size, when there is one), at most `limit`."""
    buffer = bytearray(announced or 0)  # zero pages: memory becomes resident only as the body arrives
    filled = 0
    with _freed_on_error(buffer):
        try:
            view = memoryview(buffer) if announced is not None else None
            try:
                async for chunk in request.stream():
                    end = filled + len(chunk)
                    if end > limit:
                        raise too_large(limit)
                    if view is None:
                        buffer += chunk
                    elif end > len(view):  # uvicorn enforces Content-Length; kept honest here as well
                        raise problem(400, "the body is longer than its Content-Length")
                    else:
                        view[filled:end] = chunk
                    filled = end
            finally:
                if view is not None:
                    view.release()  # before any resize or clear of the buffer
        except InternalServerException:  # Litestar's "client disconnected prematurely"
            raise problem(400, "the client disconnected before the body ended") from None
        if announced is not None and filled != announced:
            raise problem(400, "the body is shorter than its Content-Length")
    return buffer


@dataclass(frozen=True)
class WebhookBodies:
    """Body limits per gateway and the unverified-read budget of this process (one, made by create_app)."""

    limits: Mapping[GatewayKind, int]
    unverified: UnverifiedReads

    @classmethod
    def from_settings(cls, app: AppSettings) -> WebhookBodies:
        limits = {kind: app.webhook_max_body_bytes for kind in GatewayKind}
        # WEBHOOK_MAX_BODY_BYTES stays the ceiling of every gateway's limit.
        limits[GatewayKind.CLOUDAPI] = min(app.webhook_cloudapi_max_body_bytes, app.webhook_max_body_bytes)
        # The budget holds at least one body of the largest limit, or such a body could never be read.
        budget = max(app.webhook_unverified_bytes, *limits.values())
        return cls(limits, UnverifiedReads(max_reads=max(1, app.webhook_unverified_reads), max_bytes=budget))

    @property
    def largest_limit(self) -> int:
        return max(self.limits.values())

    def reader(self, request: BodySource) -> ReadBody:
        return partial(self.read, request)

    async def read(self, request: BodySource, gateway: GatewayKind, verify: Verify | None) -> bytes:
        """The request's body, at most the gateway's limit. With `verify` (the request is not verified by
        its headers), read under a share of the unverified budget and judged before anything else sees it."""
        limit = self.limits[gateway]
        announced = request.content_length
        if announced is not None and announced > limit:
            raise too_large(limit)
        if verify is None:
            return bytes(await _read(request, limit, announced))
        give_back = await self.unverified.share(announced if announced is not None else limit)
        try:
            buffer = await _read(request, limit, announced)
            try:
                verify(buffer)
            except WebhookUnauthorized:
                buffer.clear()
                raise
            return bytes(buffer)
        finally:
            give_back()
