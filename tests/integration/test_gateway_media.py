"""Inbound media through each gateway's HTTP API, against real local HTTP servers playing the gateway.

FakeGateway covers JSON answers, status codes and hangs; RawServer (tests/kit/raw_http.py) writes responses
by hand for what FakeGateway cannot say: redirects, bodies without Content-Length, a Content-Length that
lies, a slow drip.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.domain.gateways import media as media_module
from app.domain.gateways.media import FetchedMedia, FetchFailed, FetchTarget, fetch_media
from tests.fake_gateway import FakeGateway, Reply, garbage, hang, status
from tests.kit.media import DATA, EVO_REF, MEDIA_ID, PATHS, REFS, WPP_REF, media_info
from tests.kit.raw_http import RawServer, drip, endless_body, json_answer, lying_length, redirect

TOKEN = "s3cr3t-T0KEN-value-4242"
TIMEOUT = 0.5
MAX_BYTES = 100_000
B64 = base64.b64encode(DATA).decode()
GATEWAYS = list(PATHS)
# Error answers as each gateway spells them, echoing the token to prove it never reaches `reason`.
ERROR_BODIES: dict[str, Any] = {
    "wppconnect": {"status": "error", "message": f"Message not found {TOKEN}"},
    "evolution": {"status": 404, "error": "Not Found", "response": {"message": [f"not found {TOKEN}"]}},
    "cloudapi": {"error": {"message": f"(#100) Unsupported get request {TOKEN}", "code": 100}},
}


def base64_answer(gateway: str, encoded: str = B64, mimetype: str | None = "image/jpeg") -> Reply:
    body: dict[str, Any] = {"base64": encoded, "mimetype": mimetype}
    if gateway == "evolution":
        body |= {"mediaType": "imageMessage", "fileName": "foto.jpg", "caption": None, "size": {}}
        return Reply(201, json.dumps(body).encode())
    return status(200, body)


def target(gateway: str, base_url: str | None, **changes: Any) -> FetchTarget:
    return replace(FetchTarget(gateway, "loja-centro", base_url, TOKEN, REFS[gateway]), **changes)


async def fetch(
    http: httpx.AsyncClient, gateway: str, base_url: str | None, *, max_bytes: int = MAX_BYTES, **changes: Any
) -> FetchedMedia:
    return await fetch_media(http, target(gateway, base_url, **changes), max_bytes=max_bytes, timeout=TIMEOUT)


async def failure(
    http: httpx.AsyncClient, gateway: str, base_url: str | None, *, max_bytes: int = MAX_BYTES, **changes: Any
) -> FetchFailed:
    with pytest.raises(FetchFailed) as caught:
        await fetch(http, gateway, base_url, max_bytes=max_bytes, **changes)
    failed = caught.value
    # Every failure of this module goes through here: the token never shows, whatever went wrong.
    assert TOKEN not in failed.reason and TOKEN.lower() not in failed.reason.lower()
    assert TOKEN not in str(failed) and TOKEN not in repr(failed)
    assert failed.__cause__ is None or TOKEN not in str(failed.__cause__)
    return failed


def assert_authorised(gateway: str, headers: dict[str, str]) -> None:
    if gateway == "evolution":
        assert headers["apikey"] == TOKEN and "authorization" not in headers
    else:
        assert headers["authorization"] == f"Bearer {TOKEN}"


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as gateway:
        yield gateway


@pytest.fixture
async def raw() -> AsyncIterator[RawServer]:
    async with RawServer() as server:
        yield server


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(trust_env=False) as client:
        yield client


# --- success ---------------------------------------------------------------------------------------------


async def test_wppconnect_media(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS["wppconnect"], base64_answer("wppconnect"))
    fetched = await fetch(http, "wppconnect", gw.base_url)
    assert fetched == FetchedMedia(data=DATA, mime_type="image/jpeg", sha256=None, filename=None)
    [request] = gw.requests
    assert request.method == "GET"
    assert request.path == f"/api/loja-centro/get-media-by-message/{quote(WPP_REF, safe='')}"
    assert_authorised("wppconnect", request.headers)


async def test_wppconnect_data_url(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS["wppconnect"], base64_answer("wppconnect", f"data:audio/ogg;base64,{B64}", None))
    fetched = await fetch(http, "wppconnect", gw.base_url)
    assert fetched.data == DATA and fetched.mime_type == "audio/ogg"


async def test_evolution_media(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS["evolution"], base64_answer("evolution"))
    fetched = await fetch(http, "evolution", gw.base_url)
    assert fetched == FetchedMedia(data=DATA, mime_type="image/jpeg", sha256=None, filename="foto.jpg")
    [request] = gw.requests
    assert request.method == "POST"
    assert request.json == {"message": {"key": {"id": EVO_REF}}, "convertToMp4": False}
    assert_authorised("evolution", request.headers)


@pytest.mark.parametrize(
    "stated",
    [
        hashlib.sha256(DATA).hexdigest().upper(),
        base64.b64encode(hashlib.sha256(DATA).digest()).decode(),  # as webhooks spell it
    ],
)
async def test_cloudapi_two_steps(stated: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    media_url = f"{gw.base_url}/whatsapp_business/attachments/?mid={MEDIA_ID}&ext=1700000000&hash=ATu"
    gw.respond(PATHS["cloudapi"], media_info(media_url, sha256=stated, file_size=str(len(DATA))))
    gw.respond(r"^/whatsapp_business/attachments/$", Reply(200, DATA, content_type="image/jpeg"))
    fetched = await fetch(http, "cloudapi", gw.base_url)
    expected_sha = hashlib.sha256(DATA).hexdigest()
    assert fetched == FetchedMedia(data=DATA, mime_type="image/jpeg", sha256=expected_sha, filename=None)
    info, download = gw.requests
    assert (info.method, info.path) == ("GET", f"/v21.0/{MEDIA_ID}")
    assert (download.method, download.path) == ("GET", "/whatsapp_business/attachments/")
    assert download.query == f"mid={MEDIA_ID}&ext=1700000000&hash=ATu"
    for request in (info, download):
        assert_authorised("cloudapi", request.headers)


async def test_cloudapi_versioned_base_and_content_type(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    info = status(200, {"url": f"{gw.base_url}/file", "id": MEDIA_ID})  # no mime_type, sha256, file_size
    gw.respond(rf"^/v19\.0/{MEDIA_ID}$", info)
    gw.respond(r"^/file$", Reply(200, DATA, content_type="image/webp; charset=binary"))
    fetched = await fetch(http, "cloudapi", f"{gw.base_url}/v19.0/")
    assert fetched.data == DATA and fetched.mime_type == "image/webp" and fetched.sha256 is None


async def test_same_origin_redirects_are_followed(raw: RawServer, http: httpx.AsyncClient) -> None:
    raw.on(PATHS["wppconnect"], redirect("/moved"))
    raw.on(r"^/moved$", redirect(f"{raw.base_url}/final", code=307))
    raw.on(r"^/final$", json_answer({"base64": B64, "mimetype": "image/png"}))
    fetched = await fetch(http, "wppconnect", raw.base_url)
    assert fetched.data == DATA and fetched.mime_type == "image/png"
    assert [request.path for request in raw.requests][1:] == ["/moved", "/final"]
    for request in raw.requests:  # same origin: the token travels along
        assert_authorised("wppconnect", request.headers)


async def test_post_redirected_with_302_becomes_get(raw: RawServer, http: httpx.AsyncClient) -> None:
    raw.on(PATHS["evolution"], redirect("/elsewhere"))
    raw.on(r"^/elsewhere$", json_answer({"base64": B64, "mimetype": "image/png"}))
    assert (await fetch(http, "evolution", raw.base_url)).data == DATA
    first, second = raw.requests
    assert (first.method, second.method, second.body) == ("POST", "GET", b"")


# --- gateway failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_not_found_is_final(gateway: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS[gateway], status(404, ERROR_BODIES[gateway]))
    failed = await failure(http, gateway, gw.base_url)
    assert not failed.retryable and failed.status_code == 404
    assert "HTTP 404" in failed.reason and "[redacted]" in failed.reason


@pytest.mark.parametrize("gateway", GATEWAYS)
@pytest.mark.parametrize("code", [429, 500, 503])
async def test_busy_gateway_is_retryable(
    gateway: str, code: int, gw: FakeGateway, http: httpx.AsyncClient
) -> None:
    gw.respond(PATHS[gateway], status(code, ERROR_BODIES[gateway]))
    failed = await failure(http, gateway, gw.base_url)
    assert failed.retryable and f"HTTP {code}" in failed.reason


async def test_cloudapi_download_errors(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS["cloudapi"], media_info(f"{gw.base_url}/file"))
    gw.respond(r"^/file$", status(503, f"upstream {TOKEN} unavailable"), status(404, "expired"))
    assert (await failure(http, "cloudapi", gw.base_url)).retryable
    assert not (await failure(http, "cloudapi", gw.base_url)).retryable


async def test_cloudapi_throttling_on_400_is_retryable(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    throttled = {"error": {"message": "(#4) Application request limit reached", "code": 4}}
    gw.respond(PATHS["cloudapi"], status(400, throttled))
    failed = await failure(http, "cloudapi", gw.base_url)
    assert failed.retryable and failed.status_code == 400


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_timeout_is_retryable(gateway: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS[gateway], hang(TIMEOUT * 6))
    failed = await failure(http, gateway, gw.base_url)
    assert failed.retryable and str(TIMEOUT) in failed.reason


async def test_cloudapi_download_hangs(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS["cloudapi"], media_info(f"{gw.base_url}/file"))
    gw.respond(r"^/file$", hang(TIMEOUT * 6))
    assert (await failure(http, "cloudapi", gw.base_url)).retryable


async def test_slow_drip_hits_the_overall_deadline(raw: RawServer, http: httpx.AsyncClient) -> None:
    # Each byte comes well within the read timeout; only the deadline on the whole fetch ends it.
    raw.on(PATHS["cloudapi"], json_answer({"url": f"{raw.base_url}/file", "id": MEDIA_ID}))
    raw.on(r"^/file$", drip(TIMEOUT / 10))
    failed = await failure(http, "cloudapi", raw.base_url)
    assert failed.retryable and "did not deliver the file within" in failed.reason


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_unreachable_gateway_is_retryable(gateway: str, http: httpx.AsyncClient) -> None:
    async with FakeGateway() as gone:
        pass  # closed again: nothing listens on its port any more
    failed = await failure(http, gateway, gone.base_url)
    assert failed.retryable and "unreachable" in failed.reason


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_garbage_is_final(gateway: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS[gateway], garbage())
    failed = await failure(http, gateway, gw.base_url)
    assert not failed.retryable and "unreadable" in failed.reason


@pytest.mark.parametrize("gateway", ["wppconnect", "evolution"])
@pytest.mark.parametrize(
    ("encoded", "says"),
    [
        ("not base64 at all!", "invalid base64"),
        (B64[:-1], "invalid base64"),  # truncated
        (f"{B64[:100]}\n{B64[100:]}", "invalid base64"),  # validate=True: no stray characters
        ("data:image/png,plain", "not base64"),
        ("", "no file data"),
    ],
)
async def test_bad_base64_is_final(
    gateway: str, encoded: str, says: str, gw: FakeGateway, http: httpx.AsyncClient
) -> None:
    gw.respond(PATHS[gateway], base64_answer(gateway, encoded))
    failed = await failure(http, gateway, gw.base_url)
    assert not failed.retryable and says in failed.reason


@pytest.mark.parametrize("gateway", ["wppconnect", "evolution"])
async def test_answer_without_base64_is_final(gateway: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS[gateway], Reply(201, b'{"status": "success", "mimetype": "image/jpeg"}'))
    failed = await failure(http, gateway, gw.base_url)
    assert not failed.retryable and "no file data" in failed.reason


async def test_cloudapi_info_without_url_is_final(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS["cloudapi"], status(200, {"id": MEDIA_ID, "mime_type": "image/jpeg"}))
    failed = await failure(http, "cloudapi", gw.base_url)
    assert not failed.retryable and "no media URL" in failed.reason


# --- size limits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("gateway", ["wppconnect", "evolution"])
async def test_base64_over_the_limit_is_refused_before_decoding(
    gateway: str, gw: FakeGateway, http: httpx.AsyncClient
) -> None:
    # Small enough to arrive whole, one byte too many once decoded.
    gw.respond(PATHS[gateway], base64_answer(gateway))
    failed = await failure(http, gateway, gw.base_url, max_bytes=len(DATA) - 1)
    assert not failed.retryable and failed.reason == f"file larger than {len(DATA) - 1} bytes"
    # Exactly at the limit is fine.
    assert (await fetch(http, gateway, gw.base_url, max_bytes=len(DATA))).data == DATA


@pytest.mark.parametrize("gateway", ["wppconnect", "evolution"])
async def test_json_body_over_the_limit(gateway: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    # Far more base64 than max_bytes can encode to: refused on the body's size, never parsed.
    huge = base64.b64encode(b"\0" * 300_000).decode()
    gw.respond(PATHS[gateway], base64_answer(gateway, huge))
    failed = await failure(http, gateway, gw.base_url, max_bytes=1000)
    assert not failed.retryable and failed.reason == "file larger than 1000 bytes"


@pytest.mark.parametrize("gateway", ["wppconnect", "evolution"])
async def test_content_length_over_the_limit(gateway: str, raw: RawServer, http: httpx.AsyncClient) -> None:
    # The server announces 1 GB and sends nothing: waiting for the body would end in a (retryable) timeout.
    raw.on(PATHS[gateway], lying_length(1_000_000_000))
    failed = await failure(http, gateway, raw.base_url)
    assert not failed.retryable and failed.reason == f"file larger than {MAX_BYTES} bytes"


async def test_cloudapi_content_length_over_the_limit(raw: RawServer, http: httpx.AsyncClient) -> None:
    raw.on(PATHS["cloudapi"], json_answer({"url": f"{raw.base_url}/file", "id": MEDIA_ID}))
    raw.on(r"^/file$", lying_length(MAX_BYTES + 1))
    failed = await failure(http, "cloudapi", raw.base_url)
    assert not failed.retryable and failed.reason == f"file larger than {MAX_BYTES} bytes"


async def test_cloudapi_declared_file_size_over_the_limit(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(PATHS["cloudapi"], media_info(f"{gw.base_url}/file", file_size=MAX_BYTES + 1))
    failed = await failure(http, "cloudapi", gw.base_url)
    assert not failed.retryable and "larger than" in failed.reason
    assert len(gw.requests) == 1  # the download was not even attempted


async def test_streamed_body_stops_at_the_limit(raw: RawServer, http: httpx.AsyncClient) -> None:
    total = 64 * 1024 * 1024
    raw.on(PATHS["cloudapi"], json_answer({"url": f"{raw.base_url}/video", "id": MEDIA_ID}))
    raw.on(r"^/video$", endless_body(total))
    failed = await failure(http, "cloudapi", raw.base_url, max_bytes=256 * 1024)
    assert not failed.retryable and failed.reason == f"file larger than {256 * 1024} bytes"
    await asyncio.sleep(0.05)  # let the server notice the hang-up
    # What left the server is bounded by socket buffers, not by the 64 MiB it wanted to send.
    assert raw.body_bytes_sent < total // 4


# --- where requests may go -------------------------------------------------------------------------------


async def test_redirect_to_another_local_port_is_refused(raw: RawServer, http: httpx.AsyncClient) -> None:
    async with FakeGateway() as other:
        other.respond(r".*", status(200, {"base64": B64, "mimetype": "image/jpeg"}))
        for location in (f"{other.base_url}/steal", f"https://127.0.0.1:{other.port}/steal"):
            raw.on(PATHS["wppconnect"], redirect(location))
            failed = await failure(http, "wppconnect", raw.base_url)
            assert not failed.retryable and "loopback" in failed.reason
        assert other.requests == []


@pytest.mark.parametrize(
    "location",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "https://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/latest/meta-data/",
        "http://[fe80::1]/",
    ],
)
async def test_redirect_to_cloud_metadata_is_refused(
    location: str, raw: RawServer, http: httpx.AsyncClient
) -> None:
    # Nothing listens there (nor may anything be contacted): the refusal comes before any connection.
    raw.on(PATHS["evolution"], redirect(location))
    failed = await failure(http, "evolution", raw.base_url)
    assert not failed.retryable and "link-local" in failed.reason
    assert len(raw.requests) == 1


async def test_credentials_stay_on_their_origin(
    raw: RawServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A foreign origin has to be public https, which no local server is: the destination check is relaxed
    # here so that only the header handling is under test.
    async def allow_all(url: httpx.URL, **_: Any) -> None:
        return None

    monkeypatch.setattr(media_module, "check_destination", allow_all)
    async with FakeGateway() as other:
        other.respond(r".*", status(200, {"base64": B64, "mimetype": "image/jpeg"}))
        raw.on(PATHS["wppconnect"], redirect(f"{other.base_url}/file"))
        assert (await fetch(http, "wppconnect", raw.base_url)).data == DATA
        [request] = other.requests
        assert "authorization" not in request.headers and TOKEN not in str(request.headers)
    assert_authorised("wppconnect", raw.requests[0].headers)


async def test_token_echoed_into_a_redirect_host_is_redacted(raw: RawServer, http: httpx.AsyncClient) -> None:
    raw.on(PATHS["wppconnect"], redirect(f"http://{TOKEN}.example/"))  # host names come back lower-cased
    failed = await failure(http, "wppconnect", raw.base_url)
    assert not failed.retryable and "[redacted].example" in failed.reason


async def test_too_many_redirects(raw: RawServer, http: httpx.AsyncClient) -> None:
    raw.on(PATHS["wppconnect"], redirect("/again"))
    raw.on(r"^/again$", redirect("/and-again"))  # a loop, though not to itself (refused at once)
    raw.on(r"^/and-again$", redirect("/again"))
    failed = await failure(http, "wppconnect", raw.base_url)
    assert not failed.retryable and "redirected more than 3 times" in failed.reason
    assert len(raw.requests) == 4


async def test_redirect_to_other_schemes_is_refused(raw: RawServer, http: httpx.AsyncClient) -> None:
    raw.on(PATHS["wppconnect"], redirect("file:///etc/passwd"))
    failed = await failure(http, "wppconnect", raw.base_url)
    assert not failed.retryable and "not an http(s) URL" in failed.reason


@pytest.mark.parametrize(
    ("media_url", "says"),
    [
        ("http://127.0.0.1:{other}/file", "loopback"),  # same host, other port: another origin
        ("https://10.20.30.40/file", "private"),
        ("https://192.168.0.10/file", "private"),
        ("https://[::1]/file", "loopback"),
        ("https://0.0.0.0/file", "unspecified"),
        ("https://224.0.0.251/file", "multicast"),
        ("https://100.64.1.1/file", "non-public"),  # carrier-grade NAT
        ("https://localhost:{other}/file", "loopback"),  # by name: resolved first
        ("http://93.184.216.34/file", "plain http"),  # public, but the token would travel in clear
    ],
)
async def test_cloudapi_media_url_must_be_public(
    media_url: str, says: str, gw: FakeGateway, http: httpx.AsyncClient
) -> None:
    async with FakeGateway() as other:
        other.respond(r".*", Reply(200, DATA, content_type="image/jpeg"))
        gw.respond(PATHS["cloudapi"], media_info(media_url.format(other=other.port)))
        failed = await failure(http, "cloudapi", gw.base_url)
        assert not failed.retryable and says in failed.reason
        assert other.requests == []
    assert len(gw.requests) == 1


# --- configuration ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gateway", "missing"),
    [
        ("wppconnect", {"api_base_url": None}),
        ("wppconnect", {"api_token": ""}),
        ("wppconnect", {"api_base_url": "wpp.example.com:21465"}),
        ("wppconnect", {"instance_name": " "}),
        ("evolution", {"api_base_url": "  "}),
        ("evolution", {"api_token": None}),
        ("evolution", {"instance_name": ""}),
        ("cloudapi", {"api_token": None}),
        ("cloudapi", {"api_base_url": "graph.facebook.com"}),
    ],
)
async def test_missing_credentials(
    gateway: str, missing: dict[str, Any], gw: FakeGateway, http: httpx.AsyncClient
) -> None:
    failed = await failure(http, gateway, gw.base_url, **missing)
    assert not failed.retryable and "configured" in failed.reason
    assert gw.requests == []


async def test_missing_reference_and_unknown_gateway(http: httpx.AsyncClient) -> None:
    failed = await failure(http, "cloudapi", None, gateway_ref=" ")
    assert not failed.retryable and "reference" in failed.reason
    with pytest.raises(FetchFailed) as caught:
        await fetch_media(http, FetchTarget("telegram", "x", None, TOKEN, "1"), max_bytes=MAX_BYTES)
    assert not caught.value.retryable and "unknown gateway" in caught.value.reason


def test_token_stays_out_of_repr() -> None:
    assert TOKEN not in repr(target("cloudapi", None))
    assert "data=" not in repr(FetchedMedia(data=DATA, mime_type=None, sha256=None, filename=None))
