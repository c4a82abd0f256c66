"""Structured logs (structlog): JSON lines in production, readable lines in a terminal; secrets redacted."""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog
from litestar.logging.config import StructLoggingConfig
from litestar.plugins.structlog import StructlogConfig, StructlogPlugin

# Any event key that looks like one of these is replaced before rendering, whoever logged it.
_SECRET_KEYS = ("secret", "token", "password", "apikey", "api_key", "authorization", "signature")


def redact_secrets(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in event_dict:
        if any(marker in key.lower() for marker in _SECRET_KEYS):
            event_dict[key] = "[redacted]"
    return event_dict


def _processors(json_logs: bool) -> list[Any]:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
        structlog.processors.format_exc_info,
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
