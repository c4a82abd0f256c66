"""Send text through the WhatsApp Cloud API: `POST {graph}/{version}/{phone_number_id}/messages`.

Request (Meta "Text messages" reference): `Authorization: Bearer <access token>`, body `{"messaging_product":
"whatsapp", "recipient_type": "individual", "to": <wa_id>, "type": "text", "text": {"body", "preview_url"}}`.
Answer: 200 `{"messaging_product", "contacts": [{"input", "wa_id"}], "messages": [{"id": "wamid…"}]}`; the
wamid is what the `statuses` webhooks reference. Errors are Graph API errors, `{"error": {"message", "type",
"code", "error_subcode", "error_data": {"details"}, "fbtrace_id"}}`, mostly with HTTP 400 — rate limits and
Meta's own hiccups included, so for those the error code, not the HTTP status, decides about retrying.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from app.domain.gateways.sending import (
    DEFAULT_TIMEOUT_SECONDS,
    GatewayError,
    SendFailed,
    SendTarget,
    SentMessage,
    decode_answer,
    post_json,
    require,
    require_url,
    text_of,
    unusable_answer,
)

GATEWAY = "cloudapi"
DEFAULT_BASE_URL = "https://graph.facebook.com/v21.0"
_DEFAULT_VERSION = "v21.0"
_VERSIONED = re.compile(r"/v\d+(\.\d+)?$")
_CODE_PREFIX = re.compile(r"^\(#\d+\)\s*")

# Graph/Cloud API codes that mean "not now" rather than "not this": throttling (4, 80007 and 130429
# throughput, 131048 spam rate, 131056 pair rate) and trouble at Meta (1, 2, 131000, 131016, 133004).
_RETRYABLE_CODES = frozenset({1, 2, 4, 80007, 130429, 131000, 131016, 131048, 131056, 133004})


class _Message(msgspec.Struct, kw_only=True):
    id: str | None = None


class _Answer(msgspec.Struct, kw_only=True):
    messages: list[_Message] = []


_answer_decoder = msgspec.json.Decoder(_Answer)


class CloudApiSender:
    def __init__(self, http: httpx.AsyncClient, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._http = http
        self._timeout = timeout

    async def send_text(self, target: SendTarget, to: str, text: str) -> SentMessage:
        token = require(target.api_token, "access token", target)
        phone_number_id = require(target.phone_number_id, "phone number id", target)
        if "@" in to:
            # Our chat ids keep a suffix only for what is not a phone: groups, hidden numbers, channels.
            kind = "groups" if to.endswith("@g.us") else f"chat ids like {to.partition('@')[2]!r}"
            raise SendFailed(f"{GATEWAY} cannot send to {kind}", retryable=False)
        payload = {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"body": text, "preview_url": False},
        }
        body = await post_json(
            self._http,
            f"{graph_base(target)}/{quote(phone_number_id, safe='')}/messages",
            payload=payload,
            headers={"authorization": f"Bearer {token}"},
            secret=token,
            gateway=GATEWAY,
            read_error=_read_error,
            timeout_seconds=self._timeout,
        )
        answer = decode_answer(_answer_decoder, body, GATEWAY)
        message_id = answer.messages[0].id if answer.messages else None
        if not message_id:
            raise unusable_answer(GATEWAY, "message id (messages[0].id)")
        return SentMessage(gateway_message_id=message_id)


def graph_base(target: SendTarget) -> str:
    """The Graph API root with its version: the instance's URL (versioned if given without one) or Meta's."""
    if target.api_base_url is None or not target.api_base_url.strip():
        return DEFAULT_BASE_URL
    base = require_url(target.api_base_url, target)
    return base if _VERSIONED.search(base) else f"{base}/{_DEFAULT_VERSION}"


def _read_error(body: Any) -> GatewayError:
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        return GatewayError(text_of(body))
    message = text_of(error.get("message"))
    error_data = error.get("error_data")
    details = text_of(error_data.get("details")) if isinstance(error_data, dict) else None
    code = error.get("code")
    text = message
    if details:
        # Messages read "(#131030) <title>"; details usually start with the title and then explain.
        title = _CODE_PREFIX.sub("", message or "")
        text = details if not title or details.startswith(title) else f"{message}: {details}"
    if code is not None:
        text = f"{text or 'error'} (code {code})"
    if error.get("fbtrace_id"):
        text = f"{text} [fbtrace_id {error['fbtrace_id']}]"  # what Meta support asks for
    retryable = True if _as_int(code) in _RETRYABLE_CODES else None
    return GatewayError(text, retryable=retryable)


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
