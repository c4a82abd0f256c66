"""Fetch media through Evolution API: `POST /chat/getBase64FromMediaMessage/{instance}`, header `apikey`.

Body (chat.router.ts → BaileysStartupService.getBase64FromMediaMessage): `{"message": {"key": {"id":
<message id>}}, "convertToMp4": false}`; with no `message.message` the server looks the stored message up by
`key.id` (our gateway_ref) and downloads the file through Baileys. Answer: 201 `{"mediaType", "fileName",
"caption", "size": {…}, "mimetype", "base64"}` in v1 and v2. Errors go through the error middleware as 400
`{"status": 400, "error": "Bad Request", "response": {"message": [...]}}` (message not found, not a media
message, download failed).
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import msgspec

from app.domain.gateways.evolution.client import _read_error
from app.domain.gateways.media import (
    FetchedMedia,
    FetchTarget,
    GatewayHttp,
    decode_base64_file,
    decode_json,
    require,
    require_url,
)

GATEWAY = "evolution"


class _Answer(msgspec.Struct, rename="camel", kw_only=True):
    base64: str | None = None
    mimetype: str | None = None
    file_name: str | None = None


_answer_decoder = msgspec.json.Decoder(_Answer)


async def fetch_evolution_media(
    http: httpx.AsyncClient, target: FetchTarget, *, max_bytes: int, request_timeout: float
) -> FetchedMedia:
    base_url = require_url(target.api_base_url, target)
    token = require(target.api_token, "API key", target)
    instance = require(target.instance_name, "instance name", target)
    client = GatewayHttp(
        http,
        gateway=GATEWAY,
        trusted_urls=[base_url],
        secret=token,
        timeout=request_timeout,
        read_error=_read_error,
    )
    body = await client.fetch_json(
        "POST",
        f"{base_url}/chat/getBase64FromMediaMessage/{quote(instance, safe='')}",
        auth={"apikey": token},
        payload={"message": {"key": {"id": target.gateway_ref}}, "convertToMp4": False},
        file_limit=max_bytes,
    )
    answer = decode_json(_answer_decoder, body, GATEWAY)
    data, data_url_type = decode_base64_file(answer.base64, max_bytes=max_bytes, gateway=GATEWAY)
    return FetchedMedia(
        data=data,
        mime_type=answer.mimetype or data_url_type,
        sha256=None,
        filename=answer.file_name or None,
    )
