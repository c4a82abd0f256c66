"""Structured logs (structlog): JSON lines in production, readable lines in a terminal; secrets redacted."""

from __future__ import annotations

import logging
import random
import re
from collections.abc import MutableMapping
from typing import Any

import structlog
from litestar.config.app import AppConfig
from litestar.logging.config import StructLoggingConfig
from litestar.plugins.structlog import StructlogConfig, StructlogPlugin
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.lib.redaction import REDACTED, SECRET_MARKERS, redact_event_query_strings


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Any event key that looks like a secret's name is replaced before rendering, whoever logged it."""
    for key in event_dict:
        if any(marker in key.lower() for marker in SECRET_MARKERS):
            event_dict[key] = REDACTED
    return event_dict


def _processors(json_logs: bool) -> list[Any]:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.format_exc_info,
        redact_event_query_strings,  # after the traceback is text: a URL in an error message counts too
    ]
    renderer = (
        structlog.processors.JSONRenderer() if json_logs else structlog.dev.ConsoleRenderer(colors=False)
    )
    return [*shared, renderer]


def configure_logging(level: str = "INFO", json_logs: bool = True) -> None:
    """For processes without the Litestar plugin (workers, CLI)."""
    structlog.configure(
        processors=_processors(json_logs),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(),
        cache_logger_on_first_use=True,
    )


def structlog_plugin(level: str, json_logs: bool) -> StructlogPlugin:
    # Request/response middleware logging is off: it would log query strings (WebSocket tokens, webhook
    # secrets) and costs time on every webhook; handlers log what matters themselves.
    return StructlogPlugin(
        config=StructlogConfig(
            structlog_logging_config=StructLoggingConfig(
                processors=_processors(json_logs),
                wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
                logger_factory=structlog.PrintLoggerFactory(),
                # Client errors (4xx) are answers, not incidents; server errors are logged with their
                # traceback by app.lib.errors.internal_error_handler.
                log_exceptions="never",
            ),
            enable_middleware_logging=False,
        )
    )


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def request_id_of(scope: Scope | MutableMapping[str, Any]) -> str:
    """The caller's X-Request-ID if it is a sane token, else a new id."""
    supplied = next((v for k, v in scope["headers"] if k == b"x-request-id"), b"").decode("latin-1")
    if _REQUEST_ID.match(supplied):
        return supplied
    # A correlation id, not a secret: 128 bits of the process's PRNG (reseeded in every forked worker) in
    # uuid4().hex's shape, without the getrandom() system call uuid4 makes per request (issue 13: system
    # calls are what the hot reads spend their time on).
    return f"{random.getrandbits(128):032x}"


def outermost_request_ids(app_config: AppConfig) -> AppConfig:
    """on_app_init, after the JWT middleware put itself first: every line of a request, its 401 included,
    carries the request id, and every response (error responses too, via before_send) answers it."""
    app_config.middleware.insert(0, request_ids)
    app_config.before_send.append(answer_request_id)
    return app_config


def request_ids(app: ASGIApp) -> ASGIApp:
    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope["state"]["request_id"] = request_id
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await app(scope, receive, send)

    return middleware


async def answer_request_id(message: Message, scope: Scope) -> None:
    if message["type"] == "http.response.start":
        request_id = scope.get("state", {}).get("request_id") or request_id_of(scope)
        message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]


async def bind_job(ctx: dict[str, Any]) -> None:
    """arq's on_job_start, run in the job's own task: every line the job logs carries its id and try."""
    structlog.contextvars.bind_contextvars(job_id=ctx.get("job_id"), job_try=ctx.get("job_try"))
