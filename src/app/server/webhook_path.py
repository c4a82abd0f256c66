"""The lean path for webhooks: a plain ASGI layer in front of Litestar that runs the webhook use case
(WebhookIntake) without the framework's per-request machinery (issue 13).

Measured on the ingest bench (issue 13): Litestar's routing, dependency injection, the middleware stack
(request ids, JWT exclusion check, CORS, exception middleware, Prometheus' wrapped send) and
advanced-alchemy's per-request session and closing hook cost more CPU per webhook than the webhook's own
work; even a 404 before any database work topped out below 900/s on two cores.

What it keeps, each the same code or the same objects as Litestar's route:
- the whole use case, checks included, is WebhookIntake's, which the Litestar route calls too: throttle,
  instance cache, verification before the body, the unverified read budget, body limits. It is handed a view
  of the bare scope (`scope_head`, ScopeBody) instead of Litestar's Request and Headers, which cost ~7 us a
  webhook to build (issue 13); the headers as Litestar's Headers.get reads them (the first of a repeated
  name), the query as Litestar's query_params (the last), the address as Litestar's `client`. A Litestar
  Request is built only to render an error;
- errors are rendered by Litestar's own exception handlers for that route (problem details, Retry-After),
  through Litestar's Response, so the bytes are Litestar's;
- request ids (X-Request-ID in, out, and bound to every log line) as app.lib.logging does;
- the same Prometheus series as Litestar's middleware (same labels), counted directly instead of through a
  wrapped ASGI send.

It serves only `POST /api/webhooks/{gateway}/{instance}` without an Origin header (CORS is Litestar's);
anything else, including every GET handshake, goes to Litestar unchanged. The route stays declared in
Litestar, so it stays in the OpenAPI document. A test compares both paths' answers for the same requests.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

import msgspec
import structlog
from litestar import Litestar
from litestar.exceptions import InternalServerException
from litestar.handlers import HTTPRouteHandler
from litestar.middleware._internal.exceptions.middleware import get_exception_handler
from litestar.plugins.prometheus import PrometheusMiddleware
from litestar.routes import HTTPRoute

from app.domain.gateways.base import WebhookHead
from app.domain.gateways.webhook_helpers import webhook_query
from app.domain.ingest.intake import WebhookIntake
from app.lib.logging import request_id_of
from app.lib.metrics import prometheus_config

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

PREFIX = "/api/webhooks/"
TEMPLATE = "/api/webhooks/{gateway}/{instance}"
_ROUTE_PATH = "/api/webhooks/{gateway:str}/{instance:str}"
_encoder = msgspec.json.Encoder()
_JSON = (b"content-type", b"application/json")


def webhook_route_handler(app: Litestar) -> HTTPRouteHandler:
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path == _ROUTE_PATH and "POST" in route.route_handler_map:
            return route.route_handler_map["POST"][0]
    raise LookupError(f"no POST {_ROUTE_PATH} route")


def webhook_names(scope: Scope) -> tuple[str, str] | None:
    """(gateway, instance) of a webhook POST this layer serves; None for anything Litestar should see."""
    path: str = scope["path"]
    if scope["method"] != "POST" or not path.startswith(PREFIX):
        return None
    gateway, slash, instance = path[len(PREFIX) :].partition("/")
    if not slash or not gateway or not instance or "/" in instance:
        return None
    if any(name == b"origin" for name, _ in scope["headers"]):
        return None  # CORS headers are Litestar's to add
    return gateway, instance


def scope_head(scope: Scope) -> WebhookHead:
    """The head of a webhook from the bare scope, read as Litestar's Request would read it."""
    headers: dict[str, str] = {}
    for name, value in reversed(scope["headers"]):  # reversed: the first of a repeated name wins
        headers[name.decode("latin-1").lower()] = value.decode("latin-1")
    query_string: bytes = scope["query_string"]
    params = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    return WebhookHead(headers=headers, query=webhook_query(params, query_string))


class ScopeBody:
    """The request body straight from ASGI `receive` (ingest.bodies reads it within the gateway's limit).
    A disconnect before the body ends raises what Litestar's Request.stream raises."""

    __slots__ = ("_receive", "content_length")

    def __init__(self, receive: Receive, headers: Mapping[str, str]) -> None:
        self._receive = receive
        length = headers.get("content-length")
        self.content_length = int(length) if length is not None and length.isdigit() else None

    async def stream(self) -> AsyncIterator[bytes]:
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise InternalServerException("client disconnected prematurely")
            body: bytes = message.get("body", b"")
            if body:
                yield body
            if not message.get("more_body", False):
                return


class _Metrics:
    """Litestar's Prometheus series for this route (PrometheusMiddleware's own metric objects and labels)."""

    def __init__(self) -> None:
        config = prometheus_config()
        self._source = PrometheusMiddleware(app=None, config=config)  # type: ignore[arg-type]
        self._app_name = config.app_name
        labels = self._labels(200)
        self.in_progress = self._source.requests_in_progress(labels).labels(*labels.values())
        self._by_status: dict[int, tuple[Any, Any, Any | None]] = {}

    def _labels(self, status: int) -> dict[str, str | int | float]:
        return {"method": "POST", "path": TEMPLATE, "status_code": status, "app_name": self._app_name}

    def observe(self, status: int, seconds: float) -> None:
        series = self._by_status.get(status)
        if series is None:
            labels = self._labels(status)
            values = labels.values()
            series = (
                self._source.request_count(labels).labels(*values),
                self._source.request_time(labels).labels(*values),
                self._source.requests_error_count(labels).labels(*values) if status >= 500 else None,
            )
            self._by_status[status] = series
        count, duration, errors = series
        count.inc()
        duration.observe(seconds)
        if errors is not None:
            errors.inc()


class WebhookPath:
    def __init__(self, app: ASGIApp, litestar: Litestar, intake: WebhookIntake) -> None:
        self.app = app
        self.litestar = litestar
        self.intake = intake
        self.route_handler = webhook_route_handler(litestar)
        self.exception_handlers = self.route_handler.resolve_exception_handlers()
        self.type_encoders = self.route_handler.resolve_type_encoders()
        self.metrics = _Metrics()
        self.served = 0
        self.enabled = True  # False: every webhook goes to Litestar (to compare the two, or measure this)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        names = webhook_names(scope) if scope["type"] == "http" and self.enabled else None
        if names is None:
            await self.app(scope, receive, send)
            return
        await self._serve(scope, receive, send, *names)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, gateway: str, instance: str) -> None:
        started = time.perf_counter()
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        answered_id = (b"x-request-id", request_id.encode())
        status = 500
        self.served += 1
        self.metrics.in_progress.inc()
        try:
            with structlog.contextvars.bound_contextvars(request_id=request_id):
                try:
                    head = scope_head(scope)
                    client = scope.get("client")
                    ack = await self.intake.receive_parts(
                        client[0] if client else "unknown",
                        head,
                        ScopeBody(receive, head.headers),
                        gateway,
                        instance,
                    )
                except Exception as exc:
                    request = self._request(scope, receive, gateway, instance)
                    status = await self._error(scope, receive, send, request, exc, answered_id)
                    return
                body = _encoder.encode(ack)
                headers = [_JSON, (b"content-length", str(len(body)).encode()), answered_id]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                status = 200
        finally:
            self.metrics.in_progress.dec()
            self.metrics.observe(status, time.perf_counter() - started)

    def _request(self, scope: Scope, receive: Receive, gateway: str, instance: str) -> Any:
        """A Litestar Request for this route, as its router would have built it (to render an error)."""
        scope["litestar_app"] = self.litestar
        scope["app"] = self.litestar
        scope["route_handler"] = self.route_handler
        scope["path_params"] = {"gateway": gateway, "instance": instance}
        scope["path_template"] = TEMPLATE
        return self.litestar.request_class(scope, receive)  # type: ignore[arg-type]

    async def _error(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: Any,
        exc: Exception,
        answered_id: tuple[bytes, bytes],
    ) -> int:
        """Answer as Litestar's exception middleware would for this route; the status sent."""
        handler = get_exception_handler(self.exception_handlers, exc)
        assert handler is not None  # server_error_handlers has one for Exception
        response = handler(request, exc)
        sent = 500

        async def with_request_id(message: MutableMapping[str, Any]) -> None:
            nonlocal sent
            if message["type"] == "http.response.start":
                sent = message["status"]
                message["headers"] = [*message.get("headers", []), answered_id]
            await send(message)

        asgi = response.to_asgi_response(app=None, request=request, type_encoders=self.type_encoders)
        await asgi(scope, receive, with_request_id)  # type: ignore[arg-type]
        return sent
