"""Fetch media through the WhatsApp Cloud API: two GETs, both with `Authorization: Bearer <access token>`.

1. `GET {graph}/{version}/{media-id}` (Meta "Media" reference, "Retrieve media URL") answers
   `{"messaging_product": "whatsapp", "url", "mime_type", "sha256", "file_size", "id"}`; `file_size` comes
   as a number or a string, `sha256` as hex here (webhooks carry base64): normalised to lower-case hex.
2. `GET <url>` ("Download media") answers the raw bytes. The URL (lookaside.fbsbx.com) expires after about
   five minutes, so it is fetched right away and never stored; the media id itself expires after 30 days.

The graph root is the one the Cloud API sender uses (the instance's base URL, else Meta's). The media URL is
off that origin in production: it must be https to public addresses (see app.domain.gateways.media).
Errors are Graph API errors `{"error": {"message", "code", …}}`; throttling codes are retryable even on 400.
"""

from __future__ import annotations

from urllib.parse import quote

import httpx
import msgspec

from app.domain.gateways.cloudapi.client import _read_error, graph_base
from app.domain.gateways.media import (
    FetchedMedia,
    FetchFailed,
    FetchTarget,
    GatewayHttp,
    content_type_of,
    decode_json,
    require,
)
from app.domain.gateways.sending import SendFailed, SendTarget
from app.domain.gateways.webhook_helpers import sha256_hex

GATEWAY = "cloudapi"


class _MediaInfo(msgspec.Struct, kw_only=True):
    url: str | None = None
    mime_type: str | None = None
    sha256: str | None = None
    file_size: int | str | None = None


_info_decoder = msgspec.json.Decoder(_MediaInfo)


async def fetch_cloudapi_media(
    http: httpx.AsyncClient, target: FetchTarget, *, max_bytes: int, request_timeout: float
) -> FetchedMedia:
    token = require(target.api_token, "access token", target)
    graph = _graph_base(target)
    client = GatewayHttp(
        http,
        gateway=GATEWAY,
        trusted_urls=[graph],
        secret=token,
        timeout=request_timeout,
        read_error=_read_error,
    )
    auth = {"authorization": f"Bearer {token}"}
    body = await client.fetch_json("GET", f"{graph}/{quote(target.gateway_ref.strip(), safe='')}", auth=auth)
    info = decode_json(_info_decoder, body, GATEWAY)
    if not info.url:
        raise FetchFailed(f"{GATEWAY} answer has no media URL (url)", retryable=False)
    declared_size = _as_int(info.file_size)
    if declared_size is not None and declared_size > max_bytes:
        raise FetchFailed(f"file larger than {max_bytes} bytes", retryable=False)
    # Meta wants the same token on the media URL, although it is on another host.
    download = await client.download(info.url, auth=auth, max_bytes=max_bytes, what="media URL")
    if not download.body:
        raise FetchFailed(f"{GATEWAY} media URL answered an empty file", retryable=False)
    return FetchedMedia(
        data=download.body,
        mime_type=info.mime_type or content_type_of(download.content_type),
        sha256=sha256_hex(info.sha256),
        filename=None,
    )


def _graph_base(target: FetchTarget) -> str:
    """Exactly the sender's Graph API root (versioned), for the same instance settings."""
    as_sender = SendTarget(target.gateway, target.instance_name, target.api_base_url, target.api_token, None)
    try:
        return graph_base(as_sender)
    except SendFailed as exc:
        raise FetchFailed(exc.reason, retryable=False) from None


def _as_int(value: int | str | None) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None
