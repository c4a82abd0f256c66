"""Keep tokens and secrets that travel in query strings out of every log line (issue 12, finding 11).

uvicorn writes the path and query string of every request (access log) and of every WebSocket handshake
(`"WebSocket /ws?token=…" [accepted]`). /ws carries the agent's token there and webhook routes may carry
the gateway's secret (`?token=`, `hub.verify_token`), under whatever spelling a caller chooses: a name may
be percent-encoded (`%74oken`, which every parser decodes to `token`) or in another case (`TOKEN`, refused
but still a secret). Redacting by literal name let both through, so:

- on /ws and webhook routes the whole query string is replaced (`/ws?[redacted]`): no spelling survives;
- elsewhere each parameter whose decoded, lower-cased name looks secret has its value replaced.

The rule runs on uvicorn's and Litestar's stdlib log records (message, arguments and traceback text) and
on structlog events (a processor, after tracebacks are rendered), so an error line cannot carry one either.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, MutableMapping
from typing import Any
from urllib.parse import unquote_plus

REDACTED = "[redacted]"
# A name containing one of these is a secret, whoever logs it (also app.lib.logging's event keys).
SECRET_MARKERS = ("secret", "token", "password", "apikey", "api_key", "authorization", "signature")

# A path and its query string as they appear in a log line (uvicorn logs the path quoted, the query raw).
_PATH_AND_QUERY = re.compile(r"(?P<path>/[^\s?#\"'<>]*)\?(?P<query>[^\s#\"'<>]*)")
# Routes whose query strings carry credentials by design: redacted whole.
_SECRET_QUERY_PATHS = re.compile(r"(?:^|/)ws/?$|/webhooks/")
_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "litestar", "asyncio", "")


def _secret_name(raw_name: str) -> bool:
    name = unquote_plus(raw_name).lower()
    return any(marker in name for marker in SECRET_MARKERS)


def _redact_parameters(query: str) -> str:
    parts = []
    for part in query.split("&"):
        name, sep, _ = part.partition("=")
        parts.append(f"{name}={REDACTED}" if sep and _secret_name(name) else part)
    return "&".join(parts)


def _redact_match(match: re.Match[str]) -> str:
    path, query = match["path"], match["query"]
    if _SECRET_QUERY_PATHS.search(path):
        return f"{path}?{REDACTED}" if query else f"{path}?"
    return f"{path}?{_redact_parameters(query)}"


def redact_query_strings(text: str) -> str:
    """`text` with the credentials of every path-and-query it contains replaced."""
    return _PATH_AND_QUERY.sub(_redact_match, text) if "?" in text else text


def _redact_value(value: Any) -> Any:
    return redact_query_strings(value) if isinstance(value, str) else value


class RedactQueryTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        template = record.msg if isinstance(record.msg, str) else str(record.msg)
        if redact_query_strings(template) != template:
            # The query is in the template itself ("… /ws?token=%s"): redact the formatted line instead.
            record.msg, record.args = redact_query_strings(record.getMessage()), ()
        elif isinstance(record.args, Mapping):
            record.args = {key: _redact_value(value) for key, value in record.args.items()}
        elif record.args:
            # Argument by argument, so formatters that read them (uvicorn's access log) keep working.
            record.args = tuple(_redact_value(arg) for arg in record.args)
        if record.exc_info and not record.exc_text:
            # Rendered here, once: the handler's formatter then uses this text instead of its own.
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_query_strings(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_query_strings(record.stack_info)
        return True


def redact_event_query_strings(
    _: Any, __: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: the same redaction for every string value of an event (traceback included)."""
    for key, value in event_dict.items():
        if isinstance(value, str) and "?" in value:
            event_dict[key] = redact_query_strings(value)
    return event_dict


def redact_server_logs() -> None:
    """Install once per process on the loggers uvicorn and Litestar write to, and on their handlers (which
    also see the records of child loggers)."""
    redactor = RedactQueryTokens()
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        for holder in (logger, *logger.handlers):
            if not any(isinstance(f, RedactQueryTokens) for f in holder.filters):
                holder.addFilter(redactor)
