"""A plain ASGI layer in front of Litestar that refuses, at the door, logins from an address this process
already knows is over its budget (issue 12, finding 1).

600 concurrent wrong-password logins from one address: the throttle refuses all but the budget, but each
refusal still went through the whole framework — middleware, routing, the guard, problem rendering — about
0.3 ms of this process's one event loop apiece, and every webhook sharing that loop waited behind them at
each of its awaits (ack p99 0.6 to 1 s). Here such a login is answered in one step, with the bytes and headers
Litestar's 429 has (a test compares the two); nothing is counted or asked of Redis, since the address's
window is already spent (`app.lib.throttle.LocalWindows`). Anything else — any doubt — goes on unchanged.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.config.cors import CORSConfig

from app.domain.accounts.throttle import LoginThrottle
from app.lib.errors import problem_from_http_exception
from app.lib.logging import request_id_of
from app.server.fastpath import ASGIApp, Receive, Scope, Send, has_header, simple_cors_headers

LOGIN_PATH = "/api/auth/login"


class RefusedLoginShedding:
    def __init__(self, app: ASGIApp, throttle: LoginThrottle, cors: CORSConfig) -> None:
        self.app = app
        self.throttle = throttle
        self.cors = cors
        self.shed = 0  # logins refused here, since start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == LOGIN_PATH and scope["method"] == "POST":
            client = scope.get("client")
            refusal = self.throttle.refused_locally(client[0] if client else "unknown")
            if refusal is not None:
                self.shed += 1
                await self._answer(scope, problem_from_http_exception(refusal), send)
                return
        await self.app(scope, receive, send)

    async def _answer(self, scope: Scope, refusal: Any, send: Send) -> None:
        # As ProblemDetailsException.to_response renders it (app.lib.errors.problem builds no instance).
        document: dict[str, Any] = {"status": refusal.status_code, "type": refusal.type_}
        document["title"] = refusal.title
        if refusal.detail is not None:
            document["detail"] = refusal.detail
        body = msgspec.json.encode(document)
        throttle_headers = refusal.headers or {}
        headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in throttle_headers.items()]
        headers += [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id_of(scope).encode()),
        ]
        origin = next((value for name, value in scope["headers"] if name == b"origin"), None)
        if origin is not None:
            headers += simple_cors_headers(self.cors, origin.decode("latin-1"), has_header(scope, b"cookie"))
        await send({"type": "http.response.start", "status": refusal.status_code, "headers": headers})
        await send({"type": "http.response.body", "body": body})
