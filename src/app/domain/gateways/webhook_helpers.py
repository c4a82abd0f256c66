"""Pieces the webhook adapters share: decoding with the right rejection, timestamps, secrets, file hashes.

Every decode of a gateway's JSON goes through here, so lone UTF-16 surrogates are handled once for all
gateways (issue 12: one `"\\ud83d"` anywhere, even under an ignored key, used to refuse the whole webhook).

Pure functions: no I/O, no clock except where a gateway sent no time at all.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import string
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec

from app.domain.gateways.base import WebhookHead, WebhookRejected, WebhookUnauthorized
from app.lib.query_token import TOKEN, AmbiguousQueryToken, query_token

T = TypeVar("T")
# What the decoders take: a body (a bytearray while it is still unverified, app.domain.ingest.bodies)
# or a Raw slice of one.
JsonPayload = bytes | bytearray | msgspec.Raw

# Epoch numbers above this are milliseconds: 1e11 seconds is the year 5138, 1e11 milliseconds is 1973.
_MILLISECONDS_FROM = 100_000_000_000
_HEX_DIGITS = frozenset(string.hexdigits)
_BASE64_BODY = re.compile(r"[A-Za-z0-9+/]*")


# What a decode may raise besides msgspec's own errors: invalid UTF-8 inside a JSON string surfaces as
# UnicodeDecodeError, nesting deeper than the interpreter's recursion limit as RecursionError. Both mean
# "not JSON we can read" (400), never a server error.
UNREADABLE_JSON = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)

# A `\u` escape of a UTF-16 surrogate that is not half of a pair: Node's JSON.stringify writes one for
# an emoji cut in half (a truncated push name), and msgspec refuses the whole document for it. Scanned left
# to right, an escaped backslash is consumed first, so the `u` after `\\` is never taken for an escape.
_BACKSLASH_PAIR_OR_SURROGATE_ESCAPE = re.compile(
    rb"\\\\"  # an escaped backslash: kept
    rb"|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"  # a surrogate pair, one character: kept
    rb"|\\u[dD][89a-fA-F][0-9a-fA-F]{2}"  # a lone surrogate: U+FFFD
)
_REPLACEMENT_ESCAPE = rb"\ufffd"  # six bytes, like the escape it replaces
_LONE_SURROGATE_LENGTH = len(_REPLACEMENT_ESCAPE)


def _replace_lone(match: re.Match[bytes]) -> bytes:
    token = match.group()
    return _REPLACEMENT_ESCAPE if len(token) == _LONE_SURROGATE_LENGTH else token


def lone_surrogates_replaced(payload: JsonPayload) -> bytes | None:
    """The JSON with each lone surrogate escape turned into U+FFFD (as ingest does with NUL, which
    Postgres refuses), or None when it has none. The message then lands with U+FFFD where its gateway's
    client had half a character, instead of being lost whole."""
    data = bytes(payload)
    replaced = _BACKSLASH_PAIR_OR_SURROGATE_ESCAPE.sub(_replace_lone, data)
    return replaced if replaced != data else None


def _decode(decode: Callable[[JsonPayload], T], payload: JsonPayload) -> T:
    """`decode(payload)`, again over `lone_surrogates_replaced(payload)` if msgspec refused the JSON itself
    (never for the wrong shape): nothing is scanned or copied on the common path."""
    try:
        return decode(payload)
    except msgspec.ValidationError:
        raise
    except msgspec.DecodeError:
        readable = lone_surrogates_replaced(payload)
        if readable is None:
            raise
    return decode(readable)


def decode_or_reject(decoder: msgspec.json.Decoder[T], payload: JsonPayload, what: str) -> T:
    """Decode with a typed decoder; broken JSON is a 400, JSON of the wrong shape a 422.

    For the schemas here (no enums or literals) msgspec's messages name the path and the expected type,
    never the offending value, so they are safe to hand back to the caller.
    """
    try:
        return _decode(decoder.decode, payload)
    except msgspec.ValidationError as exc:  # subclass of DecodeError: must come first
        raise WebhookRejected(f"{what} has an unexpected shape: {exc}", status_code=422) from exc
    except UNREADABLE_JSON as exc:
        raise WebhookRejected(f"{what} is not valid JSON: {exc}", status_code=400) from exc


def wrong_shape(detail: str) -> WebhookRejected:
    return WebhookRejected(detail, status_code=422)


def decode_untyped(payload: JsonPayload) -> Any:
    """The same JSON as plain dicts and lists, for the `raw` column (called after a typed decode passed).

    A typed decode skips unknown fields without building them, so junk it never looked at (bad UTF-8, deep
    nesting) can still fail here: the same 400 as any unreadable body.
    """
    try:
        return _decode(msgspec.json.decode, payload)
    except UNREADABLE_JSON as exc:
        raise WebhookRejected(f"webhook body is not valid JSON: {exc}", status_code=400) from exc


def decode_or_none(decoder: msgspec.json.Decoder[T], payload: JsonPayload) -> T | None:
    """Decode, or None for anything unreadable or of the wrong shape (a body read only for one field)."""
    try:
        return _decode(decoder.decode, payload)
    except UNREADABLE_JSON:
        return None


def utc_from_epoch(value: int | float | str | None, what: str = "timestamp") -> datetime | None:
    """Seconds or milliseconds since the epoch, as a number or numeric string, to an aware UTC datetime."""
    if value is None or value == "":
        return None
    try:
        number = float(value)
        if number >= _MILLISECONDS_FROM:
            number /= 1000
        return datetime.fromtimestamp(number, tz=UTC)
    except (ValueError, OverflowError, OSError) as exc:
        raise wrong_shape(f"{what} is not an epoch time") from exc


def utc_from_iso(value: str | None) -> datetime | None:
    """An ISO-8601 string to aware UTC, or None when absent or unreadable (only ever used as a fallback)."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 9999-12-31T23:59:59-01:00 and its like fall outside datetime's range in UTC
        return None


def received_now() -> datetime:
    """Stand-in for a message that carries no time at all: better an approximate time than a lost message."""
    return datetime.now(tz=UTC)


def header_value(request: WebhookHead, name: str) -> str:
    """A header by lower-case name ("" when absent), whatever case the mapping's keys happen to have."""
    value = request.headers.get(name)
    if value is None:
        value = next((v for k, v in request.headers.items() if k.lower() == name), None)
    return value or ""


def webhook_query(params: Mapping[str, str], query_string: bytes) -> dict[str, str]:
    """The query a webhook's verification sees: `token` only as one plain `?token=` (app.lib.query_token);
    a query that spells it otherwise is refused (401) rather than guessed at."""
    query = {name: value for name, value in params.items() if name != TOKEN}
    try:
        token = query_token(query_string)
    except AmbiguousQueryToken as exc:
        raise WebhookUnauthorized(f"pass the secret as one plain ?{TOKEN}=") from exc
    if token is not None:
        query[TOKEN] = token
    return query


def presented_secrets(request: WebhookHead) -> list[str]:
    """Every place a per-instance shared secret may arrive in: X-Webhook-Secret, Bearer token, ?token=."""
    found = [header_value(request, "x-webhook-secret")]
    scheme, _, credentials = header_value(request, "authorization").strip().partition(" ")
    if scheme.lower() == "bearer":
        found.append(credentials)
    found.append(request.query.get("token", ""))
    return [value.strip() for value in found if value and value.strip()]


def require_shared_secret(presented: Iterable[str], expected: str) -> None:
    """Raise WebhookUnauthorized unless one of the presented values equals the instance's secret.

    Every candidate is compared (no early exit) in constant time; the messages never echo a value.
    """
    if not expected:
        # An empty secret would match an empty header: refuse rather than accept anyone.
        raise WebhookUnauthorized("no webhook secret is configured for this instance")
    candidates = list(presented)
    if not candidates:
        raise WebhookUnauthorized("webhook secret missing")
    expected_bytes = expected.encode()
    matched = False
    for candidate in candidates:
        matched |= hmac.compare_digest(candidate.encode(), expected_bytes)
    if not matched:
        raise WebhookUnauthorized("webhook secret does not match")


def is_sha256_hex(text: str) -> bool:
    return len(text) == 64 and all(char in _HEX_DIGITS for char in text)


def sha256_hex(value: str | None) -> str | None:
    """A file's SHA-256 as lower-case hex, whether the gateway sent hex or base64 (Baileys, WA Web do).

    One encoding lets the media worker compare it with hashlib's hexdigest. Anything else is dropped
    (the original stays in `raw`).
    """
    if not value:
        return None
    text = value.strip()
    if is_sha256_hex(text):
        return text.lower()
    try:
        digest = base64.b64decode(text.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    return digest.hex() if len(digest) == 32 else None


def base64_decoded_size(text: str) -> int | None:
    """Size in bytes of the data a standard base64 string encodes, or None if it is not plain base64.

    Checks the alphabet without decoding (the payload may be megabytes; handlers must not decode media).
    """
    if not text or len(text) % 4:
        return None
    body = text.rstrip("=")
    if len(text) - len(body) > 2:
        return None
    if not _BASE64_BODY.fullmatch(body):
        return None
    return len(text) * 3 // 4 - (len(text) - len(body))
