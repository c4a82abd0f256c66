"""A media download redirected to a Location that cannot be followed fails at once (issue 12, finding 12).

Found: a malformed `Location` was taken for a transient failure and the download retried five times. A
gateway (or whoever answers in its place) that sends a broken redirect sends it again, so each case below
must be one request to the fake gateway and a final (not retryable) failure that names no secret.
"""

from __future__ import annotations

import httpx
import pytest

from app.domain.gateways.media import FetchFailed, FetchTarget, fetch_media
from tests.fake_gateway import FakeGateway, redirect

TOKEN = "gateway-api-token-0f3b2c"
MALFORMED = {
    "no Location header": None,
    "empty": "",
    "blank": "   ",
    "invalid port": "http://gateway.example:port/file",
    "unterminated IPv6": "http://[::1",
    "invalid IPv6": "https://[zz]/file",
    "empty host label": "https://a..b/file",
    "hyphen-edged label": "https://-files-.example/file",
    "percent in host": "https://files%00.example/file",
    "label over 63 bytes": f"https://{'a' * 64}.example/file",
    "scheme with no host": "http://",
    "itself": "/api/loja/get-media-by-message/false_1%40c.us_X",
}


@pytest.mark.parametrize("location", MALFORMED.values(), ids=list(MALFORMED))
async def test_a_malformed_location_fails_at_once(location: str | None) -> None:
    async with FakeGateway() as gateway, httpx.AsyncClient(trust_env=False) as http:
        gateway.respond(r"/get-media-by-message/", redirect(location))
        target = FetchTarget("wppconnect", "loja", gateway.base_url, TOKEN, "false_1@c.us_X")
        with pytest.raises(FetchFailed) as caught:
            await fetch_media(http, target, max_bytes=10_000, timeout=2.0)
        failed = caught.value
        print(f"{location!r}: {len(gateway.requests)} request(s), {failed.reason}")
        assert not failed.retryable, failed.reason
        assert "redirect refused" in failed.reason
        assert len(gateway.requests) == 1
        assert TOKEN not in failed.reason
