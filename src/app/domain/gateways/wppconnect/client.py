"""Send text through WPPConnect Server: `POST /api/{session}/send-message`.

Request (messageController.sendMessage): `Authorization: Bearer <token>`, body `{"phone", "message",
"isGroup"}` where `phone` is the number or group id without its "@…" suffix; the server's contactToArray
middleware adds "@c.us"/"@g.us" (and "@lid"/"@newsletter" when isLid/isNewsletter say so).

Answer: 201 `{"status": "success", "response": [<message>], "mapper": "return"}`, one message per phone.
With the default (WA-JS) provider the message is WAPI's serialised message, whose `id` is the serialised key
"true_<remote>@c.us_<id>" — exactly the `_serialized` the later `onack` webhook carries. Older versions sent
the key as an object; both are read. Errors: 401 `{"message"|"error": …}` (token), 404 `{"status":
"Disconnected", "message": …}` (session not started), 400 `{"message": "O número … não existe."}`, 500
`{"status": "Error", "message": "Error sending the message.", "error": …}`.
"""

from __future__ import annotations

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
from app.domain.gateways.wppconnect.schemas import WppMessageKey, WppWid

GATEWAY = "wppconnect"


class _Sent(msgspec.Struct, rename="camel", kw_only=True):
    id: str | WppMessageKey | None = None


class _Answer(msgspec.Struct, kw_only=True):
    status: str | None = None
    response: list[_Sent] | None = None


_answer_decoder = msgspec.json.Decoder(_Answer)


class WppConnectSender:
    def __init__(self, http: httpx.AsyncClient, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._http = http
        self._timeout = timeout

    async def send_text(self, target: SendTarget, to: str, text: str) -> SentMessage:
        base_url = require_url(target.api_base_url, target)
        token = require(target.api_token, "API token", target)
        session = require(target.instance_name, "session name", target)
        body = await post_json(
            self._http,
            f"{base_url}/api/{quote(session, safe='')}/send-message",
            payload=_payload(to, text),
            headers={"authorization": f"Bearer {token}"},
            secret=token,
            gateway=GATEWAY,
            read_error=_read_error,
            timeout_seconds=self._timeout,
        )
        return SentMessage(gateway_message_id=_message_id(decode_answer(_answer_decoder, body, GATEWAY)))


def _payload(to: str, text: str) -> dict[str, Any]:
    user, _, server = to.partition("@")
    payload: dict[str, Any] = {"phone": user, "message": text, "isGroup": server == "g.us"}
    # Hidden-number contacts and channels need their flag, or the server would append "@c.us".
    if server == "lid":
        payload["isLid"] = True
    elif server == "newsletter":
        payload["isNewsletter"] = True
    return payload


def _message_id(answer: _Answer) -> str:
    if answer.status is not None and answer.status.lower() != "success":
        raise SendFailed(f"{GATEWAY} answered status {answer.status!r}", retryable=False)
    sent = answer.response[0] if answer.response else None
    key = sent.id if sent else None
    if isinstance(key, WppMessageKey):
        if key.serialized:
            return key.serialized
        remote = key.remote.serialized if isinstance(key.remote, WppWid) else key.remote
        if key.id and remote and key.from_me is not None:
            # Same spelling as the webhook adapter builds for receipts without `_serialized`.
            return f"{str(key.from_me).lower()}_{remote}_{key.id}"
    elif key:
        return key
    raise unusable_answer(GATEWAY, "message id (response[0].id)")


def _read_error(body: Any) -> GatewayError:
    if not isinstance(body, dict):
        return GatewayError(text_of(body))
    message, error = text_of(body.get("message")), text_of(body.get("error"))
    # The 500 answer's message is always the generic "Error sending the message."; `error` says why.
    parts = [part for part in (message, error) if part]
    return GatewayError("; ".join(parts) or None)
