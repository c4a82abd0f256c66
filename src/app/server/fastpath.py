"""A plain ASGI layer in front of Litestar that answers the hottest requests there are — an agent reading
the inbox or a conversation's history — without the framework's per-request machinery.

It answers only with a bearer token Litestar's JWT middleware has verified before (see VerifiedTokens) and
only the plainest spellings of the two reads (app.server.fast_reads). A page this process holds in memory
(the inbox's first page, a conversation's latest page, while the memory layer is live) is answered from
there; any other such read (issue 13, item 5: uncached reads were 6-9x raw asyncpg, about half of it
Litestar) through the same PageReader the controllers call, so the page cache's rules hold unchanged. If
that read raises anything at all — another org's id, Postgres down — nothing has been sent yet and the
request goes to Litestar, which reads again and answers as it always does (404, 503 problem documents).
Anything else — an unknown token, another parameter, any doubt — goes to Litestar unchanged, which
answers exactly as it would have (and fills the cache and the token memory for next time). The bytes are
the ones Litestar answers, and the CORS headers are computed as Litestar's CORS middleware computes them
(a test compares the two paths header for header). Requests answered here are counted in `served`
(from memory) and `loaded` (read), not in Litestar's request metrics.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from uuid import UUID

import structlog
from litestar.config.cors import CORSConfig

from app.domain.accounts.auth import VerifiedTokens
from app.domain.conversations.cache import PageCache
from app.domain.conversations.reads import PageReader, inbox_variant, latest_variant
from app.domain.conversations.services import ConversationFilters
from app.lib.logging import request_id_of
from app.server.fast_reads import INBOX, MESSAGES, PREFIX, HistoryRead, InboxRead, parse_history, parse_inbox

# Plain ASGI types: this layer sits outside Litestar and speaks the bare protocol.
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_NO_FILTERS = ConversationFilters()


class CachedPageFastPath:
    def __init__(
        self, app: ASGIApp, cache: PageCache, tokens: VerifiedTokens, cors: CORSConfig, pages: PageReader
    ) -> None:
        self.app = app
        self.cache = cache
        self.tokens = tokens
        self.cors = cors
        self.pages = pages
        self.served = 0  # answered from memory
        self.loaded = 0  # answered by reading through PageReader

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"].startswith(PREFIX):
            read = self._read_of(scope)
            if read is not None:
                org_id, request = read
                page = self._cached_page(org_id, request)
                if page is not None:
                    self.served += 1
                    await self._answer(scope, page, send, request_id_of(scope))
                    return
                request_id = request_id_of(scope)
                deferred: list[Awaitable[None]] = []  # the page's store in Redis, after the answer
                try:
                    with structlog.contextvars.bound_contextvars(request_id=request_id):
                        page = await self._load(org_id, request, deferred)
                except Exception:  # nothing sent yet: Litestar reads again and answers as it always does
                    page = None
                if page is not None:
                    self.loaded += 1
                    try:
                        await self._answer(scope, page, send, request_id)
                    finally:
                        for store in deferred:
                            await store
                    return
        await self.app(scope, receive, send)

    def _read_of(self, scope: Scope) -> tuple[UUID, HistoryRead | InboxRead] | None:
        path: str = scope["path"]
        if path == INBOX:
            request: HistoryRead | InboxRead | None = parse_inbox(scope["query_string"])
        elif path.startswith(MESSAGES):
            request = parse_history(path, scope["query_string"])
        else:
            return None
        if request is None:
            return None
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme != "Bearer":
                    return None
                break
        known = self.tokens.get(token) if token else None
        return None if known is None else (known[1].org_id, request)

    def _cached_page(self, org_id: UUID, request: HistoryRead | InboxRead) -> bytes | None:
        if not self.cache.memory_live:
            return None
        keys = self.cache.keys
        if isinstance(request, InboxRead):
            if request.cursor is not None:
                return None
            return self.cache.peek(keys.inbox_scope(org_id), inbox_variant(_NO_FILTERS, request.limit))
        if request.before_seq is not None or request.after_seq is not None:
            return None
        scope = keys.messages_scope(org_id, request.conversation_id)
        return self.cache.peek(scope, latest_variant(request.limit))

    async def _load(
        self, org_id: UUID, request: HistoryRead | InboxRead, deferred: list[Awaitable[None]]
    ) -> bytes:
        if isinstance(request, InboxRead):
            return await self.pages.conversations(
                org_id, _NO_FILTERS, request.cursor, request.limit, deferred
            )
        return await self.pages.messages(
            org_id,
            request.conversation_id,
            before_seq=request.before_seq,
            after_seq=request.after_seq,
            limit=request.limit,
            deferred=deferred,
        )

    async def _answer(self, scope: Scope, page: bytes, send: Send, request_id: str) -> None:
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(page)).encode()),
            (b"x-request-id", request_id.encode()),
        ]
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin is not None:
            headers += simple_cors_headers(self.cors, origin.decode("latin-1"), has_header(scope, b"cookie"))
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": page})


def simple_cors_headers(cors: CORSConfig, origin: str, has_cookie: bool) -> list[tuple[bytes, bytes]]:
    """As litestar.middleware._internal.cors.CORSMiddleware.send_wrapper does for a simple request."""
    headers: dict[str, str] = dict(cors.simple_headers)
    if (cors.is_allow_all_origins and has_cookie) or (
        not cors.is_allow_all_origins and cors.is_origin_allowed(origin=origin)
    ):
        headers["Access-Control-Allow-Origin"] = origin
        headers["Vary"] = "Origin"
    headers["Access-Control-Allow-Headers"] = ", ".join(sorted(set(cors.allow_headers)))
    headers["Access-Control-Allow-Methods"] = ", ".join(sorted(set(cors.allow_methods)))
    return [(name.lower().encode(), value.encode("latin-1")) for name, value in headers.items()]


def has_header(scope: Scope, header: bytes) -> bool:
    return any(name == header for name, _ in scope["headers"])
