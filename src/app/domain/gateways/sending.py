"""Outbound text through a gateway: the contract every sender fulfils, and the HTTP plumbing they share.

A sender turns (instance, chat id, text) into one HTTP call and returns the id the gateway gave the message,
the same id its later delivery receipts carry. Failures are SendFailed, split into retryable (the gateway may
well accept the same request later: timeouts, connection errors, 5xx, 429) and final (the request itself is
wrong: 4xx, missing credentials, an answer we cannot read). Nothing here logs, and no reason ever contains the
instance's token: reasons end up in the database and in front of agents.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import httpx
import msgspec

T = TypeVar("T")

# Per request, on top of whatever the caller configured on its client: WPPConnect waits for the server
# ack before answering, which takes a few seconds on a slow phone link.
DEFAULT_TIMEOUT_SECONDS = 10.0
_MAX_REASON = 300
_REDACTED = "[redacted]"


@dataclass(frozen=True)
class SendTarget:
    """Where and as whom to send, copied by the caller from the instance row."""

    gateway: str
    instance_name: str  # WPPConnect session / Evolution instance name
    api_base_url: str | None
    api_token: str | None
    phone_number_id: str | None  # Cloud API only


@dataclass(frozen=True)
class SentMessage:
    gateway_message_id: str


class SendFailed(Exception):
    """The gateway did not take the message. `reason` is short, human-readable and free of secrets."""

    def __init__(self, reason: str, *, retryable: bool, status_code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.status_code = status_code  # HTTP status, when the gateway answered at all

    def __repr__(self) -> str:
        return f"SendFailed({self.reason!r}, retryable={self.retryable})"


class GatewaySender(Protocol):
    async def send_text(self, target: SendTarget, to: str, text: str) -> SentMessage: ...


@dataclass(frozen=True)
class GatewayError:
    """What a gateway's error body says: its text, and whether it knows better than the HTTP status."""

    text: str | None
    retryable: bool | None = None


ErrorReader = Callable[[Any], GatewayError]


def get_sender(
    gateway: str, http: httpx.AsyncClient, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> GatewaySender:
    # Imported here: the clients import this module for the contract.
    from app.domain.gateways.cloudapi.client import CloudApiSender
    from app.domain.gateways.evolution.client import EvolutionSender
    from app.domain.gateways.wppconnect.client import WppConnectSender

    senders: dict[str, type[CloudApiSender | EvolutionSender | WppConnectSender]] = {
        "wppconnect": WppConnectSender,
        "evolution": EvolutionSender,
        "cloudapi": CloudApiSender,
    }
    sender = senders.get(gateway)
    if sender is None:
        raise SendFailed(f"unknown gateway {gateway!r}", retryable=False)
    return sender(http, timeout=timeout)


def require(value: str | None, what: str, target: SendTarget) -> str:
    """A credential or setting the send cannot do without; missing is final until someone configures it."""
    if value is None or not value.strip():
        raise SendFailed(
            f"{target.gateway} instance {target.instance_name!r} has no {what} configured", retryable=False
        )
    return value.strip()


def require_url(value: str | None, target: SendTarget) -> str:
    """The gateway's base URL, without trailing slash; a malformed one is as final as a missing one."""
    url = require(value, "API base URL", target).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SendFailed(
            f"{target.gateway} instance {target.instance_name!r} has no valid API base URL configured "
            "(http:// or https:// expected)",
            retryable=False,
        )
    return url


def redact(text: str, secret: str | None) -> str:
    if secret:
        text = text.replace(secret, _REDACTED)
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


async def post_json(
    http: httpx.AsyncClient,
    url: str,
    *,
    payload: Mapping[str, Any],
    headers: Mapping[str, str],
    secret: str,
    gateway: str,
    read_error: ErrorReader,
    timeout_seconds: float,
) -> bytes:
    """POST `payload`; return the body of a 2xx answer, raise SendFailed for anything else."""
    try:
        response = await http.post(
            url,
            content=msgspec.json.encode(payload),
            headers={"content-type": "application/json", "accept": "application/json", **headers},
            timeout=timeout_seconds,
        )
    # `from None`: httpx errors hold the request, and with it the auth header.
    except httpx.TimeoutException:
        raise SendFailed(f"{gateway} did not answer within {timeout_seconds:g}s", retryable=True) from None
    except httpx.TransportError as exc:
        detail = redact(f"{type(exc).__name__}: {exc}", secret)
        raise SendFailed(f"{gateway} unreachable ({detail})", retryable=True) from None
    except httpx.HTTPError as exc:  # e.g. a body that fails to decompress: as unreadable as garbage
        detail = redact(f"{type(exc).__name__}: {exc}", secret)
        raise SendFailed(f"{gateway} answer unreadable ({detail})", retryable=False) from None
    if response.is_success:
        return response.content
    raise _http_failure(response, gateway=gateway, secret=secret, read_error=read_error)


def _http_failure(
    response: httpx.Response, *, gateway: str, secret: str, read_error: ErrorReader
) -> SendFailed:
    status = response.status_code
    try:
        error = read_error(msgspec.json.decode(response.content))
    except msgspec.DecodeError:
        error = GatewayError(_snippet(response.content))
    # 408/429 and 5xx: the gateway (or a proxy in front of it) is busy or down, not refusing the message.
    retryable = status in (408, 429) or status >= 500
    if error.retryable is not None:
        retryable = error.retryable
    reason = f"{gateway} answered HTTP {status}"
    if error.text:
        reason += f": {error.text}"
    return SendFailed(redact(reason, secret), retryable=retryable, status_code=status)


def decode_answer(decoder: msgspec.json.Decoder[T], body: bytes, gateway: str) -> T:
    """A 2xx body we cannot read is final: resending might deliver the message twice."""
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:  # ValidationError included
        raise SendFailed(
            f"{gateway} accepted the request but its answer is unreadable: {exc}", retryable=False
        ) from None


def unusable_answer(gateway: str, what: str) -> SendFailed:
    return SendFailed(f"{gateway} accepted the request but its answer has no {what}", retryable=False)


def text_of(value: Any) -> str | None:
    """Flatten the error payloads gateways produce (strings, lists of strings, {message: …} objects)."""
    if isinstance(value, str):
        return value.strip() or None
    if isinstance(value, Mapping):
        for key in ("message", "text", "error", "details"):
            found = text_of(value.get(key))
            if found:
                return found
        return None
    if isinstance(value, list):
        parts = [part for part in (text_of(item) for item in value) if part]
        return "; ".join(parts) or None
    return None


def _snippet(body: bytes) -> str | None:
    text = body.decode("utf-8", errors="replace").strip()
    return " ".join(text.split())[:120] or None
