"""Outbound text through each gateway's HTTP API, against a real local HTTP server playing the gateway."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import httpx
import pytest

from app.domain.gateways.cloudapi.client import graph_base
from app.domain.gateways.events import StatusUpdate
from app.domain.gateways.sending import SendFailed, SendTarget, get_sender
from app.domain.gateways.wppconnect import parse_webhook as parse_wppconnect
from tests.fake_gateway import FakeGateway, Reply, garbage, hang, ok, status

TOKEN = "s3cr3t-T0KEN-value-4242"
NUMBER = "5511999990000"
TEXT = "Olá! Seu pedido saiu."
GROUP = "120363041234567890@g.us"
TIMEOUT = 0.5

SEND_PATHS = {
    "wppconnect": r"^/api/loja-centro/send-message$",
    "evolution": r"^/message/sendText/loja-centro$",
    "cloudapi": r"^/v21\.0/1098765432/messages$",
}
# An error answer as each gateway spells it, echoing the token to prove it never reaches `reason`.
ERROR_BODIES: dict[str, Any] = {
    "wppconnect": {"status": "Error", "message": "Error sending the message.", "error": f"bad {TOKEN}"},
    "evolution": {"status": 400, "error": "Bad Request", "response": {"message": [f"bad {TOKEN}"]}},
    "cloudapi": {"error": {"message": f"(#100) bad {TOKEN}", "code": 100, "fbtrace_id": "Ab1"}},
}
# A 2xx JSON answer of none of the gateways' shapes: no message id anywhere.
NO_ID = {"status": "success", "response": [{}], "key": {}, "messages": []}
GATEWAYS = list(SEND_PATHS)


@pytest.fixture
async def gw() -> AsyncIterator[FakeGateway]:
    async with FakeGateway() as gateway:
        yield gateway


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def target(gateway: str, base_url: str) -> SendTarget:
    phone_number_id = "1098765432" if gateway == "cloudapi" else None
    return SendTarget(gateway, "loja-centro", base_url, TOKEN, phone_number_id)


async def send(gateway: str, gw: FakeGateway, http: httpx.AsyncClient, to: str = NUMBER) -> str:
    sender = get_sender(gateway, http, timeout=TIMEOUT)
    sent = await sender.send_text(target(gateway, gw.base_url), to, TEXT)
    return sent.gateway_message_id


async def failure(gateway: str, gw: FakeGateway, http: httpx.AsyncClient, **changes: Any) -> SendFailed:
    sender = get_sender(gateway, http, timeout=TIMEOUT)
    with pytest.raises(SendFailed) as caught:
        await sender.send_text(replace(target(gateway, gw.base_url), **changes), NUMBER, "oi")
    assert TOKEN not in caught.value.reason
    assert TOKEN not in str(caught.value) and TOKEN not in repr(caught.value)
    return caught.value


async def test_wppconnect_id_is_the_one_onack_carries(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(SEND_PATHS["wppconnect"], ok("wppconnect"))
    message_id = await send("wppconnect", gw, http)
    [request] = gw.requests
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.headers["content-type"] == "application/json"
    assert request.json == {"phone": NUMBER, "message": TEXT, "isGroup": False}
    assert message_id.startswith(f"true_{NUMBER}@c.us_3EB0")
    # The receipt for this message must find it: same id as the webhook adapter reads from `onack`.
    key_id = message_id.rsplit("_", 1)[1]
    onack = {"event": "onack", "ack": 2, "id": {"fromMe": True, "remote": f"{NUMBER}@c.us", "id": key_id}}
    [event] = parse_wppconnect(json.dumps(onack).encode())
    assert isinstance(event, StatusUpdate) and event.gateway_message_id == message_id


async def test_wppconnect_object_id(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    serialized = f"true_{NUMBER}@c.us_3EB0AA"
    key = {"fromMe": True, "remote": f"{NUMBER}@c.us", "id": "3EB0AA", "_serialized": serialized}
    gw.respond(SEND_PATHS["wppconnect"], status(201, {"status": "success", "response": [{"id": key}]}))
    assert await send("wppconnect", gw, http) == serialized


async def test_evolution_v2_body(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(SEND_PATHS["evolution"], ok("evolution", message_id="BAE5F00D"))
    assert await send("evolution", gw, http) == "BAE5F00D"
    [request] = gw.requests
    assert request.headers["apikey"] == TOKEN
    assert "authorization" not in request.headers
    assert request.json == {"number": NUMBER, "text": TEXT}


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [
        ("wppconnect", {"phone": "120363041234567890", "message": TEXT, "isGroup": True}),
        ("evolution", {"number": GROUP, "text": TEXT}),
    ],
)
async def test_groups(gateway: str, expected: Any, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(SEND_PATHS[gateway], ok(gateway, message_id="MSG1"))
    assert await send(gateway, gw, http, to=GROUP) == "MSG1"
    assert gw.requests[0].json == expected


async def test_evolution_v1_server(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    v1_complaint = {"status": 400, "response": {"message": ['instance requires property "textMessage"']}}
    gw.respond(SEND_PATHS["evolution"], status(400, v1_complaint), ok("evolution", message_id="BAE5V1"))
    sender = get_sender("evolution", http, timeout=TIMEOUT)
    for _ in range(2):
        sent = await sender.send_text(target("evolution", gw.base_url), NUMBER, "oi")
        assert sent.gateway_message_id == "BAE5V1"
    bodies = [request.json for request in gw.requests]
    v1_body = {"number": NUMBER, "textMessage": {"text": "oi"}}
    # The second message goes straight out in v1 shape: the sender remembered the server's version.
    assert bodies == [{"number": NUMBER, "text": "oi"}, v1_body, v1_body]


async def test_cloudapi_text(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(SEND_PATHS["cloudapi"], ok("cloudapi", message_id="wamid.HBgNNTUxMQ=="))
    assert await send("cloudapi", gw, http) == "wamid.HBgNNTUxMQ=="
    [request] = gw.requests
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.json == {
        "messaging_product": "whatsapp",
        "recipient_type": "individual",
        "to": NUMBER,
        "type": "text",
        "text": {"body": TEXT, "preview_url": False},
    }


async def test_cloudapi_version_in_base_url(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(r"^/v19\.0/1098765432/messages$", ok("cloudapi"))
    sender = get_sender("cloudapi", http, timeout=TIMEOUT)
    sent = await sender.send_text(target("cloudapi", f"{gw.base_url}/v19.0/"), NUMBER, "oi")
    assert sent.gateway_message_id.startswith("wamid.")
    # No base URL: Meta's Graph API; a base URL without a version gets the default one.
    assert (
        graph_base(replace(target("cloudapi", ""), api_base_url=None)) == "https://graph.facebook.com/v21.0"
    )
    assert graph_base(target("cloudapi", "https://graph.facebook.com/")).endswith(".com/v21.0")


async def test_cloudapi_refuses_groups(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    sender = get_sender("cloudapi", http, timeout=TIMEOUT)
    with pytest.raises(SendFailed) as caught:
        await sender.send_text(target("cloudapi", gw.base_url), GROUP, "oi")
    assert not caught.value.retryable and "group" in caught.value.reason
    assert gw.requests == []


async def test_cloudapi_rate_limit_on_400(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    throttled = {"error": {"message": "(#130429) Rate limit hit", "type": "OAuthException", "code": 130429}}
    gw.respond(SEND_PATHS["cloudapi"], status(400, throttled))
    failed = await failure("cloudapi", gw, http)
    assert failed.retryable and "Rate limit hit" in failed.reason and failed.status_code == 400


async def test_evolution_unknown_number(gw: FakeGateway, http: httpx.AsyncClient) -> None:
    unknown = {"exists": False, "jid": f"{NUMBER}@s.whatsapp.net", "number": NUMBER}
    gw.respond(SEND_PATHS["evolution"], status(400, {"status": 400, "response": {"message": [unknown]}}))
    failed = await failure("evolution", gw, http)
    assert not failed.retryable and f"not on WhatsApp: {NUMBER}" in failed.reason


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_client_error_is_final(gateway: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(SEND_PATHS[gateway], status(400, ERROR_BODIES[gateway]))
    failed = await failure(gateway, gw, http)
    assert not failed.retryable and failed.status_code == 400
    assert "bad [redacted]" in failed.reason and "HTTP 400" in failed.reason


@pytest.mark.parametrize("gateway", GATEWAYS)
@pytest.mark.parametrize("code", [429, 500, 502, 503])
async def test_server_errors_are_retryable(
    gateway: str, code: int, gw: FakeGateway, http: httpx.AsyncClient
) -> None:
    gw.respond(SEND_PATHS[gateway], status(code, ERROR_BODIES[gateway]))
    failed = await failure(gateway, gw, http)
    assert failed.retryable and f"HTTP {code}" in failed.reason


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_unauthorized_is_final(gateway: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(SEND_PATHS[gateway], status(401, f"token {TOKEN} rejected"))  # even as plain text
    failed = await failure(gateway, gw, http)
    assert not failed.retryable and "rejected" in failed.reason


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_timeout_is_retryable(gateway: str, gw: FakeGateway, http: httpx.AsyncClient) -> None:
    gw.respond(SEND_PATHS[gateway], hang(TIMEOUT * 6))
    failed = await failure(gateway, gw, http)
    assert failed.retryable and "did not answer" in failed.reason
    assert len(gw.requests) == 1


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_unreachable_gateway_is_retryable(gateway: str, http: httpx.AsyncClient) -> None:
    async with FakeGateway() as gone:
        pass  # closed again: nothing listens on its port any more
    failed = await failure(gateway, gone, http)
    assert failed.retryable and "unreachable" in failed.reason


@pytest.mark.parametrize("gateway", GATEWAYS)
@pytest.mark.parametrize(
    ("reply", "says"), [(garbage(), "unreadable"), (status(201, NO_ID), "no message id")]
)
async def test_unusable_answer_is_final(
    gateway: str, reply: Reply, says: str, gw: FakeGateway, http: httpx.AsyncClient
) -> None:
    # Final although the gateway may have sent the message: a retry could deliver it twice.
    gw.respond(SEND_PATHS[gateway], reply)
    failed = await failure(gateway, gw, http)
    assert not failed.retryable and says in failed.reason


@pytest.mark.parametrize(
    ("gateway", "missing"),
    [
        ("wppconnect", {"api_base_url": None}),
        ("wppconnect", {"api_token": ""}),
        ("wppconnect", {"api_base_url": "wpp.example.com:21465"}),
        ("evolution", {"api_base_url": "  "}),
        ("evolution", {"api_token": None}),
        ("evolution", {"instance_name": ""}),
        ("cloudapi", {"api_token": None}),
        ("cloudapi", {"phone_number_id": None}),
        ("cloudapi", {"api_base_url": "graph.facebook.com"}),
    ],
)
async def test_missing_credentials(
    gateway: str, missing: dict[str, Any], gw: FakeGateway, http: httpx.AsyncClient
) -> None:
    failed = await failure(gateway, gw, http, **missing)
    assert not failed.retryable and "configured" in failed.reason
    assert gw.requests == []


def test_unknown_gateway_is_final(http: httpx.AsyncClient) -> None:
    with pytest.raises(SendFailed) as caught:
        get_sender("telegram", http)
    assert not caught.value.retryable
