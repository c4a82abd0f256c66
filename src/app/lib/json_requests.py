"""A JSON body nested too deeply to decode is the client's error (400) on every route, never a 500.

Litestar decodes a `data:` body with msgspec and answers msgspec's DecodeError with 400, but a document
nested past the interpreter's recursion limit makes msgspec raise RecursionError, which Litestar lets
through: ~1,100 `[` on /api/auth/login answered 500 with a full traceback, before any authentication
(issue 12). The webhook routes decode their bodies themselves (app.domain.gateways.webhook_helpers).
"""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import ClientException
from litestar.types import Empty

NESTED_TOO_DEEPLY = "request body is not JSON this API can read: nested too deeply"


class JsonDepthGuardedRequest(Request[Any, Any, Any]):
    """The app's request class (`Litestar(request_class=...)`): `json()` refuses what msgspec cannot nest."""

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            # Nothing is cached on the connection: a second read fails the same way.
            self._json = self._connection_state.json = Empty
            raise ClientException(NESTED_TOO_DEEPLY) from None
