"""Send text through Evolution API: `POST /message/sendText/{instance}` with header `apikey: <key>`.

Body: v2 `{"number", "text"}` (validate/message.schema.ts textMessageSchema), v1 `{"number", "textMessage":
{"text"}}`. `number` is a phone number or a full jid (groups: "…@g.us"); the server resolves it. Answer: 201
with the sent Baileys WAMessage, `{"key": {"remoteJid", "fromMe": true, "id"}, "message", "status": "PENDING",
…}` in both versions; `key.id` is what later `messages.update` webhooks reference.

Errors go through the server's error middleware: `{"status": <code>, "error": "Bad Request", "response":
{"message": [...]}}`, where the list holds schema complaints (strings or {property, message}) or, for a
number not on WhatsApp, `{"exists": false, "jid", "number"}`.

Which version answers is not configured anywhere: the v2 body is sent first, and a 400 complaining about the
missing `textMessage` (v1's schema) makes us resend in v1 shape (and the sender remembers it for that server).
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

GATEWAY = "evolution"

# jsonschema's messages: 'instance requires property "textMessage"' (v1) / '… property "text"' (v2).
_WANTS_V1 = re.compile(r'requires property \\?"textMessage\\?"')
_WANTS_V2 = re.compile(r'requires property \\?"text\\?"')


class _Key(msgspec.Struct, kw_only=True):
    id: str | None = None


class _Answer(msgspec.Struct, kw_only=True):
    key: _Key | None = None


_answer_decoder = msgspec.json.Decoder(_Answer)


class EvolutionSender:
    def __init__(self, http: httpx.AsyncClient, *, timeout: float = DEFAULT_TIMEOUT_SECONDS) -> None:
        self._http = http
        self._timeout = timeout
        # Base URLs seen running v1: saves a sender that is kept around the extra round trip per message.
        # Only a shortcut, the fallback works both ways.
        self._v1_servers: set[str] = set()

    async def send_text(self, target: SendTarget, to: str, text: str) -> SentMessage:
        base_url = require_url(target.api_base_url, target)
        token = require(target.api_token, "API key", target)
        instance = require(target.instance_name, "instance name", target)
        url = f"{base_url}/message/sendText/{quote(instance, safe='')}"
        v1 = base_url in self._v1_servers
        try:
            body = await self._post(url, token, _payload(to, text, v1=v1))
        except SendFailed as failure:
            if failure.status_code != 400 or not (_WANTS_V2 if v1 else _WANTS_V1).search(failure.reason):
                raise
            # Wrong API version guessed: the same message in the other shape, once.
            v1 = not v1
            body = await self._post(url, token, _payload(to, text, v1=v1))
        if v1:
            self._v1_servers.add(base_url)
        else:
            self._v1_servers.discard(base_url)
        answer = decode_answer(_answer_decoder, body, GATEWAY)
        if answer.key is None or not answer.key.id:
            raise unusable_answer(GATEWAY, "message id (key.id)")
        return SentMessage(gateway_message_id=answer.key.id)

    async def _post(self, url: str, token: str, payload: dict[str, Any]) -> bytes:
        return await post_json(
            self._http,
            url,
            payload=payload,
            headers={"apikey": token},
            secret=token,
            gateway=GATEWAY,
            read_error=_read_error,
            timeout_seconds=self._timeout,
        )


def _payload(to: str, text: str, *, v1: bool) -> dict[str, Any]:
    if v1:
        return {"number": to, "textMessage": {"text": text}}
    return {"number": to, "text": text}


def _read_error(body: Any) -> GatewayError:
    if not isinstance(body, dict):
        return GatewayError(text_of(body))
    response = body.get("response")
    messages = response.get("message") if isinstance(response, dict) else body.get("message")
    if isinstance(messages, list):
        unknown = [item for item in messages if isinstance(item, dict) and item.get("exists") is False]
        if unknown:
            numbers = ", ".join(str(item.get("number") or item.get("jid")) for item in unknown)
            return GatewayError(f"not on WhatsApp: {numbers}", retryable=False)
    return GatewayError(text_of(messages) or text_of(body.get("error")))
