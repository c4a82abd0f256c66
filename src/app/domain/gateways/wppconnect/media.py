"""Fetch media through WPPConnect Server: `GET /api/{session}/get-media-by-message/{messageId}`.

Request (sessionController.getMediaByMessage, routes/index.ts): `Authorization: Bearer <token>`, the
serialised message id ("true_<chat>@c.us_<id>", our gateway_ref) in the path. The server looks the message up
in WhatsApp Web and decrypts its file. Answer: 200 `{"base64": "<file>", "mimetype": "<type>"}` (no file
name, no digest). Errors: 400 `{"status": "error", "message": "Message not found" | "Message does not contain
media"}`, 500 `{"status": "error", "message": "The session is not active", "error": …}` for anything that
throws (session down, decryption failed), 401 for a bad token.

The sibling `POST /api/{session}/download-media` `{"messageId"}` answers the same shape but sits behind the
statusConnection middleware, which turns a disconnected session into a final-looking 404; the GET route
reports it as a retryable 500.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import msgspec

from app.domain.gateways.media import (
    FetchedMedia,
    FetchTarget,
    GatewayHttp,
    decode_base64_file,
    decode_json,
    require,
    require_url,
)
from app.domain.gateways.wppconnect.client import _read_error

GATEWAY = "wppconnect"


class _Answer(msgspec.Struct, kw_only=True):
    base64: str | None = None
    mimetype: str | None = None


_answer_decoder = msgspec.json.Decoder(_Answer)


async def fetch_wppconnect_media(
    http: httpx.AsyncClient, target: FetchTarget, *, max_bytes: int, request_timeout: float
) -> FetchedMedia:
    base_url = require_url(target.api_base_url, target)
    token = require(target.api_token, "API token", target)
    session = require(target.instance_name, "session name", target)
    client = GatewayHttp(
        http,
        gateway=GATEWAY,
        trusted_urls=[base_url],
        secret=token,
        timeout=request_timeout,
        read_error=_read_error,
    )
    body = await client.fetch_json(
        "GET",
        f"{base_url}/api/{quote(session, safe='')}/get-media-by-message/{quote(target.gateway_ref, safe='')}",
        auth={"authorization": f"Bearer {token}"},
        file_limit=max_bytes,
    )
    answer = decode_json(_answer_decoder, body, GATEWAY)
    data, data_url_type = decode_base64_file(answer.base64, max_bytes=max_bytes, gateway=GATEWAY)
    return FetchedMedia(data=data, mime_type=answer.mimetype or data_url_type, sha256=None, filename=None)
