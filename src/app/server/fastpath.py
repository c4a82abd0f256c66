"""A plain ASGI layer in front of Litestar that answers the hottest request there is — an agent re-reading a
page this process holds in memory — without the framework's per-request machinery.

It answers only when everything is already known: a GET of the inbox's first page or a conversation's
latest page with no query but `limit`, a bearer token Litestar's JWT middleware has verified before (see
VerifiedTokens), and the page in the memory layer while that layer is live. Anything else — a miss, an
unknown token, another parameter, any doubt — goes to Litestar unchanged, which answers exactly as it
would have (and fills the cache and the token memory for next time). The bytes are the ones Litestar
answered, and the CORS headers are computed as Litestar's CORS middleware computes them (a test compares
the two paths header for header).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from uuid import UUID

from litestar.config.cors import CORSConfig

from app.domain.accounts.auth import VerifiedTokens
from app.domain.conversations.cache import PageCache
from app.domain.conversations.reads import inbox_variant, latest_variant
from app.domain.conversations.services import ConversationFilters
from app.lib.logging import request_id_of

# Plain ASGI types: this layer sits outside Litestar and speaks the bare protocol.
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

_PREFIX = "/api/whatsapp-optimized/"
_MESSAGES = _PREFIX + "messages/"
_INBOX = _PREFIX + "conversations"
_NO_FILTERS = ConversationFilters()
_DEFAULT_LIMIT = 50
_MAX_LIMIT = 100


def _limit(query_string: bytes) -> int | None:
    """The page size of a query that is empty or exactly `limit=N` (1..100); None for anything else."""
    if not query_string:
        return _DEFAULT_LIMIT
    name, _, value = query_string.partition(b"=")
    if name != b"limit" or not value.isdigit() or len(value) > 3:
        return None
    limit = int(value)
    return limit if 1 <= limit <= _MAX_LIMIT else None


class CachedPageFastPath:
    def __init__(self, app: ASGIApp, cache: PageCache, tokens: VerifiedTokens, cors: CORSConfig) -> None:
        self.app = app
        self.cache = cache
        self.tokens = tokens
        self.cors = cors
        self.served = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            page = self._cached_page(scope)
            if page is not None:
                await self._answer(scope, page, send)
                return
        await self.app(scope, receive, send)

    def _cached_page(self, scope: Scope) -> bytes | None:
        if not self.cache.memory_live:
            return None
        path: str = scope["path"]
        if not path.startswith(_PREFIX):
            return None
        limit = _limit(scope["query_string"])
        if limit is None:
            return None
        token = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme != "Bearer":
                    return None
                break
        known = self.tokens.get(token) if token else None
        if known is None:
            return None
        org_id = known[1].org_id
        keys = self.cache.keys
        if path == _INBOX:
            return self.cache.peek(keys.inbox_scope(org_id), inbox_variant(_NO_FILTERS, limit))
        if path.startswith(_MESSAGES):
            raw_id = path[len(_MESSAGES) :]
            if len(raw_id) != 36:  # the canonical form only; Litestar judges any other spelling
                return None
            try:
                conversation_id = UUID(raw_id)
            except ValueError:
                return None
            return self.cache.peek(keys.messages_scope(org_id, conversation_id), latest_variant(limit))
        return None

    async def _answer(self, scope: Scope, page: bytes, send: Send) -> None:
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(page)).encode()),
            (b"x-request-id", request_id_of(scope).encode()),
        ]
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin is not None:
            headers += simple_cors_headers(self.cors, origin.decode("latin-1"), has_header(scope, b"cookie"))
        self.served += 1
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
