"""Hostile input gets a clear 4xx and writes nothing; odd honest input is stored (issue 12, findings 7, 10).

Each case is one of the attack's reproductions: NUL and control characters in a webhook's instance name,
JSON nested past the recursion limit on the login and send routes (unauthenticated or not), a cursor
whose time leaves datetime's range in UTC, seq numbers past BIGINT, all 500s with a traceback before. And a
lone UTF-16 surrogate escape (`"\\ud83d"`, what Node's JSON.stringify writes for half an emoji) used to
refuse the whole webhook: the message was lost; now it is stored with U+FFFD in its place.

The unauthenticated cases run against a real API process (uvicorn, `app.asgi:app`) from a loopback
address of their own; the others against the app in-process. Nothing here is mocked.
"""

from __future__ import annotations

import base64
import json
import secrets
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.db.models import Contact, GatewayKind, Message, Organization, WhatsAppInstance
from app.domain.conversations.controllers import SEQ_MAX
from app.domain.gateways.instances import IncompleteInstance, InstanceService
from tests.kit.api import from_address
from tests.kit.clients import WsClient
from tests.kit.data import TEXT_FIXTURES, fixture_for, signed_headers, with_message_id
from tests.kit.factories import PASSWORD, create_tenant
from tests.kit.processes import ApiProcess
from tests.security.support import (
    NOTHING,
    WEBHOOK_AUTH_LIMIT,
    Client,
    bearer,
    history,
    login,
    org_rows,
    row_counts,
    seed_org,
    valid_token,
)

GATEWAYS = ["wppconnect", "evolution", "cloudapi"]
# Percent-encoded as they arrive in a request line; each decodes to a name no instance can have.
BAD_NAMES = ["x%00", "%00", "a%0Ab", "x%7F", "x%C2%85", "n" * 101]
# Past the ~1,000 the interpreter allows and up to what the 1 MiB body limit lets through.
DEPTHS = [1_100, 100_000]
ADDRESS = "127.0.0.9"  # this module's failures count against an address of its own


def nested(depth: int, *, objects: bool = False) -> bytes:
    if objects:
        return b'{"a":' * depth + b"1" + b"}" * depth
    return b"[" * depth + b"]" * depth


def assert_problem(response: httpx.Response, status: int) -> None:
    assert response.status_code == status, (response.status_code, response.text[:300])
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status and problem["title"], problem


def assert_no_traceback(process: ApiProcess) -> None:
    logs = process.logs()
    assert "unhandled error" not in logs and "Traceback" not in logs, logs[-2000:]


# --- finding 7, unauthenticated: a real API process --------------------------------------------------------


async def test_an_instance_name_with_nul_is_an_unknown_instance_and_counts_as_a_failure(
    processes: list[ApiProcess], engine: AsyncEngine, session: AsyncSession
):
    """NUL in the path reached Postgres, which refuses it in text: 500 on the POST and the GET handshake.
    Now such a name is never looked up: 404 like any unknown instance, nothing written, and counted as a
    failed verification (the address is refused once it has spent its budget)."""
    tenant = await create_tenant(session)
    process = processes[0]
    handshake = {"hub.mode": "subscribe", "hub.verify_token": "t", "hub.challenge": "c"}
    answers: list[int] = []
    async with from_address(ADDRESS) as http:
        for gateway in GATEWAYS:
            body = json.dumps(fixture_for(gateway, TEXT_FIXTURES[gateway], tenant.instance(gateway))).encode()
            response = await http.post(
                f"{process.base_url}/api/webhooks/{gateway}/x%00",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert_problem(response, 404)
            answers.append(response.status_code)
        response = await http.get(f"{process.base_url}/api/webhooks/cloudapi/x%00", params=handshake)
        assert_problem(response, 404)
        answers.append(response.status_code)
        for _ in range(WEBHOOK_AUTH_LIMIT):
            response = await http.get(f"{process.base_url}/api/webhooks/cloudapi/%00", params=handshake)
            answers.append(response.status_code)
    print(f"NUL instance names from one address: {answers}")
    # Every one counted: once the budget is spent the address is refused before any lookup.
    assert answers[-1] == 429 and answers.count(404) == WEBHOOK_AUTH_LIMIT, answers
    assert await row_counts(engine, tenant.org_id) == NOTHING
    assert_no_traceback(process)


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_an_instance_name_no_instance_can_have_is_404(
    client: Client, engine: AsyncEngine, session: AsyncSession, gateway: str
):
    """Every gateway, the POST and the GET handshake, NUL and other control characters, too long."""
    tenant = await create_tenant(session)
    body = json.dumps(fixture_for(gateway, TEXT_FIXTURES[gateway], tenant.instance(gateway))).encode()
    for name in BAD_NAMES:
        url = f"/api/webhooks/{gateway}/{name}"
        response = await client.post(url, content=body, headers={"content-type": "application/json"})
        assert_problem(response, 404)
        response = await client.get(url, params={"hub.mode": "subscribe", "hub.challenge": "c"})
        assert_problem(response, 404)
    assert await row_counts(engine, tenant.org_id) == NOTHING


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_login_body_nested_too_deeply_is_400(processes: list[ApiProcess], depth: int):
    """RecursionError inside Litestar's body decoding answered 500 with a full traceback, unauthenticated."""
    process = processes[1]
    # Two attempts per address: the processes allow LOGIN_LIMIT per minute, and other tests log in there.
    async with from_address(f"127.0.0.{10 + DEPTHS.index(depth)}") as http:
        for body in (nested(depth), nested(depth, objects=True)):
            response = await http.post(
                f"{process.base_url}/api/auth/login",
                content=body,
                headers={"content-type": "application/json"},
            )
            assert_problem(response, 400)
            assert "nested too deeply" in response.json()["detail"]
    assert_no_traceback(process)


async def test_an_instance_cannot_be_created_with_a_name_no_webhook_could_reach(session: AsyncSession):
    tenant = await create_tenant(session)
    org = await session.get(Organization, tenant.org_id)
    assert org is not None
    for name in ("a\x00b", "tab\there", "", "n" * 101):
        with pytest.raises(IncompleteInstance, match="control characters"):
            await InstanceService(session=session).create_instance(
                org=org, gateway=GatewayKind.EVOLUTION, name=name
            )


# --- finding 7, with a token: the app in-process -----------------------------------------------------------


@pytest.mark.parametrize("depth", DEPTHS)
async def test_a_send_body_nested_too_deeply_is_400_and_sends_nothing(
    client: Client, engine: AsyncEngine, session: AsyncSession, settings: Settings, depth: int
):
    org = await seed_org(engine, session, settings, can_send=True)
    token = await login(client, org.tenant.agent.email)
    before = await org_rows(engine, org.org_id)
    for body in (nested(depth), nested(depth, objects=True), b'{"text":' + nested(depth) + b"}"):
        response = await client.post(
            history(org.conversation_id),
            content=body,
            headers={**bearer(token), "content-type": "application/json"},
        )
        assert_problem(response, 400)
    assert await org_rows(engine, org.org_id) == before


def cursor(at: str) -> str:
    raw = json.dumps([at, str(uuid.uuid4())]).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("at", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"])
async def test_a_cursor_whose_time_leaves_the_utc_range_is_400(
    client: Client, engine: AsyncEngine, session: AsyncSession, settings: Settings, at: str
):
    org = await seed_org(engine, session, settings)
    token = await login(client, org.tenant.agent.email)
    response = await client.get(
        "/api/whatsapp-optimized/conversations", params={"cursor": cursor(at)}, headers=bearer(token)
    )
    assert_problem(response, 400)
    # A cursor inside the range, with any offset, still pages (it is compared in UTC).
    response = await client.get(
        "/api/whatsapp-optimized/conversations",
        params={"cursor": cursor("2999-01-01T00:00:00+14:00")},
        headers=bearer(token),
    )
    assert response.status_code == 200, response.text
    assert [item["id"] for item in response.json()["items"]] == [str(org.conversation_id)]


@pytest.mark.parametrize("param", ["before_seq", "after_seq"])
async def test_a_seq_past_bigint_is_400_and_the_bound_is_documented(
    client: Client, engine: AsyncEngine, session: AsyncSession, settings: Settings, param: str
):
    org = await seed_org(engine, session, settings)
    token = await login(client, org.tenant.agent.email)
    for value in (SEQ_MAX + 1, 2**64, 10**30):
        response = await client.get(
            history(org.conversation_id), params={param: value}, headers=bearer(token)
        )
        assert_problem(response, 400)
    at_the_bound = await client.get(
        history(org.conversation_id), params={param: SEQ_MAX}, headers=bearer(token)
    )
    assert at_the_bound.status_code == 200, at_the_bound.text
    # Documented, so clients (and the schemathesis fuzz) know the range.
    document = (await client.get("/schema/openapi.json")).json()
    operation = document["paths"]["/api/whatsapp-optimized/messages/{conversation_id}"]["get"]
    (parameter,) = [p for p in operation["parameters"] if p["name"] == param]
    assert parameter["schema"]["maximum"] == SEQ_MAX, parameter


# --- finding 10: lone surrogates ---------------------------------------------------------------------------

HALF_EMOJI = "\ud83d"  # the high half of 😀 (U+1F600), as a client that cut the string in two has it


def surrogate_bearing(gateway: str, instance: WhatsAppInstance, message_id: str) -> dict[str, Any]:
    """A text message whose text, sender name and an ignored key each end in half an emoji."""
    data = with_message_id(
        gateway, fixture_for(gateway, TEXT_FIXTURES[gateway], instance), message_id, text=f"Olá {HALF_EMOJI}"
    )
    if gateway == "wppconnect":
        data["notifyName"] = data["sender"]["pushname"] = f"Maria {HALF_EMOJI}"
        data["sender"]["formattedName"] = f"\udc00{HALF_EMOJI}"  # not read by the adapter
    elif gateway == "evolution":
        data["data"]["pushName"] = f"Maria {HALF_EMOJI}"
        data["server_url"] = f"https://evo.example.com/{HALF_EMOJI}"  # not read by the adapter
        data["apikey"] = instance.webhook_secret  # verified by the body's apikey: that read must pass too
    else:
        value = data["entry"][0]["changes"][0]["value"]
        value["contacts"][0]["profile"]["name"] = f"Maria {HALF_EMOJI}"
        value["metadata"]["display_phone_number"] = f"1555{HALF_EMOJI}"  # not read by the adapter
    return data


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_lone_surrogate_is_stored_as_a_replacement_character(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: str
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    message_id = f"surrogate-{secrets.token_hex(6)}"
    body = json.dumps(surrogate_bearing(gateway, instance, message_id)).encode()  # "\ud83d", like Node
    assert b"\\ud83d" in body
    headers = signed_headers(gateway, body, instance)
    if gateway == "evolution":
        del headers["x-webhook-secret"]
    response = await client.post(f"/api/webhooks/{gateway}/{instance.name}", content=body, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["created"] == 1

    message = (
        await session.execute(
            select(Message.body, Message.raw).where(
                Message.org_id == tenant.org_id, Message.gateway_message_id == message_id
            )
        )
    ).one()
    contact_name = await session.scalar(select(Contact.name).where(Contact.org_id == tenant.org_id))
    print(f"{gateway}: body {message.body!r}, contact {contact_name!r}")
    assert message.body == "Olá \ufffd"
    assert contact_name == "Maria \ufffd"
    raw = json.dumps(message.raw, ensure_ascii=False)
    assert "\ufffd" in raw and "\\ud83d" not in raw
    # The same body again is a duplicate of the stored message, not a second one.
    again = await client.post(f"/api/webhooks/{gateway}/{instance.name}", content=body, headers=headers)
    assert again.status_code == 200 and again.json()["duplicates"] == 1, again.text


async def test_escaped_backslashes_before_a_u_are_text_not_an_escape(client: Client, session: AsyncSession):
    r"""`"\\ud83d"` is a backslash and five letters: kept exactly, never taken for a surrogate."""
    tenant = await create_tenant(session)
    instance = tenant.instance("wppconnect")
    message_id = f"backslash-{secrets.token_hex(6)}"
    text = "path C:\\ud83d and \\\\ufffd and 😀"
    data = with_message_id(
        "wppconnect", fixture_for("wppconnect", TEXT_FIXTURES["wppconnect"], instance), message_id
    )
    data["body"] = text
    data["junk"] = HALF_EMOJI  # so the replacement runs over this body
    body = json.dumps(data).encode()
    response = await client.post(
        f"/api/webhooks/wppconnect/{instance.name}",
        content=body,
        headers=signed_headers("wppconnect", body, instance),
    )
    assert response.status_code == 200, response.text
    stored = await session.scalar(
        select(Message.body).where(Message.org_id == tenant.org_id, Message.gateway_message_id == message_id)
    )
    assert stored == text


async def test_login_with_a_lone_surrogate_is_a_client_error(client: Client, session: AsyncSession):
    """Not a webhook: nothing is lost by refusing it, and it must not be a 500."""
    tenant = await create_tenant(session)
    body = json.dumps({"email": tenant.agent.email, "password": PASSWORD + HALF_EMOJI}).encode()
    response = await client.post(
        "/api/auth/login", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code in (400, 401), response.text


async def test_a_websocket_frame_nested_too_deeply_is_refused_and_the_socket_survives(
    processes: list[ApiProcess], engine: AsyncEngine, session: AsyncSession, settings: Settings
):
    """The same RecursionError in the frame decoder closed the socket with a traceback (1011)."""
    org = await seed_org(engine, session, settings)
    client = await WsClient.connect(processes[0].ws_url, valid_token(settings, org.tenant))
    try:
        assert (await client.recv_json())["type"] == "ready"
        depth = (settings.realtime.max_frame_bytes - 40) // 2  # under the frame limit, past the recursion one
        await client._conn.send('{"type": "ping", "x": ' + "[" * depth + "]" * depth + "}")
        refused = await client.recv_json()
        assert refused["type"] == "error" and refused["code"] == "invalid_frame", refused
        await client.send_json({"type": "ping"})
        assert (await client.recv_json())["type"] == "pong"
    finally:
        await client.close()
    assert_no_traceback(processes[0])
