"""The query-token parser and the log redaction agree on every spelling (issue 12, finding 11); the process
test is tests/security/test_query_secrets_in_logs.py, these pin the rules line by line."""

from __future__ import annotations

import io
import logging

import pytest

from app.lib.query_token import AmbiguousQueryToken, query_token
from app.lib.redaction import RedactQueryTokens, redact_event_query_strings, redact_query_strings

SECRET = "eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("query", "token"),
    [
        (b"", None),
        (b"token=" + SECRET.encode(), SECRET),
        (b"a=1&token=abc%2Bd", "abc+d"),
        (b"TOKEN=abc", None),  # another parameter
        (b"tokens=abc", None),
    ],
)
def test_the_plain_token_parameter_is_read(query: bytes, token: str | None) -> None:
    assert query_token(query) == token


@pytest.mark.parametrize(
    "query", [b"%74oken=abc", b"t%6Fken=abc", b"%74%6F%6B%65%6E=abc", b"token=a&token=b"]
)
def test_another_spelling_or_a_repeat_of_token_is_ambiguous(query: bytes) -> None:
    with pytest.raises(AmbiguousQueryToken):
        query_token(query)


@pytest.mark.parametrize(
    "line",
    [
        f'127.0.0.1:1 - "GET /ws?token={SECRET} HTTP/1.1" 405',
        f'127.0.0.1:1 - "WebSocket /ws?%74oken={SECRET}" [accepted]',
        f'127.0.0.1:1 - "WebSocket /ws?TOKEN={SECRET}" 403',
        f'"POST /api/webhooks/wppconnect/x?a=1&t%6Fken={SECRET} HTTP/1.1" 401',
        f'"GET /api/webhooks/cloudapi/x?hub.mode=subscribe&hub.verify_token={SECRET} HTTP/1.1" 200',
        f"GET http://127.0.0.1:3001/ws?token={SECRET}",
        f'"GET /api/whatsapp-optimized/conversations?limit=5&%41ccess_%54oken={SECRET} HTTP/1.1" 200',
        f'"GET /api/whatsapp-optimized/conversations?Api_Key={SECRET}&limit=5 HTTP/1.1" 200',
    ],
)
def test_no_spelling_survives_redaction(line: str) -> None:
    redacted = redact_query_strings(line)
    assert SECRET not in redacted and "[redacted]" in redacted
    assert redact_query_strings(redacted) == redacted  # applied twice (logger and handler): the same


def test_other_routes_keep_their_harmless_parameters() -> None:
    line = '"GET /api/whatsapp-optimized/conversations?limit=5&cursor=abc HTTP/1.1" 200'
    assert redact_query_strings(line) == line
    assert redact_query_strings('"GET /ws?a=1 HTTP/1.1"') == '"GET /ws?[redacted] HTTP/1.1"'


def test_log_records_are_redacted_in_message_arguments_and_traceback() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger("test_query_redaction")
    logger.addHandler(handler)
    logger.addFilter(RedactQueryTokens())
    logger.propagate = False  # only this handler: not whatever another test left on the root logger
    try:
        logger.warning('%s - "WebSocket %s" [accepted]', "127.0.0.1:1", f"/ws?%74oken={SECRET}")
        logger.warning({"path": f"/ws?token={SECRET}"})
        try:
            raise ValueError(f"bad url /api/webhooks/evolution/x?token={SECRET}")
        except ValueError:
            logger.exception("failed on /ws?token=%s", SECRET)
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    assert SECRET not in output and output.count("[redacted]") >= 4, output


def test_structlog_events_are_redacted() -> None:
    event = {"event": f"GET /ws?token={SECRET}", "exception": f"Traceback: /ws?%74oken={SECRET}", "n": 1}
    assert SECRET not in str(redact_event_query_strings(None, "info", event))
