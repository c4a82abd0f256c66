"""Webhook authentication: a gateway's request is stored only with its instance's own credential — the shared
secret (WPPConnect, Evolution) or the HMAC-SHA256 signature of the exact body (Cloud API). Everything else is
a 401 problem and writes no row anywhere; secrets never come back in an answer.
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.db.models import GatewayKind, WhatsAppInstance
from tests.kit.data import fixture_for, signed_headers, with_message_id
from tests.kit.factories import InstanceFactory, Tenant, create_tenant
from tests.security.support import NOTHING, row_counts

Client = AsyncTestClient[Litestar]
GATEWAYS = ["wppconnect", "evolution", "cloudapi"]
SHARED_SECRET_GATEWAYS = ["wppconnect", "evolution"]
TEXT = {"wppconnect": "onmessage_text", "evolution": "v2_messages_upsert_text", "cloudapi": "inbound_text"}


def text_body(
    gateway: str, instance: WhatsAppInstance, message_id: str = "SEC0001", text: str = "hi"
) -> bytes:
    data = with_message_id(gateway, fixture_for(gateway, TEXT[gateway], instance), message_id, text=text)
    data.pop("apikey", None)  # Evolution's body secret: only where a case puts it
    return json.dumps(data).encode()


def hub_signature(secret: str | bytes, body: bytes) -> str:
    key = secret.encode() if isinstance(secret, str) else secret
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


async def post(
    client: Client,
    gateway: str,
    name: str,
    body: bytes,
    headers: dict[str, str],
    params: dict[str, str] | None = None,
) -> Any:
    return await client.post(
        f"/api/webhooks/{gateway}/{name}",
        content=body,
        headers={"content-type": "application/json", **headers},
        params=params,
    )


def assert_refused(response: Any, *secrets: str, status: int = 401) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status and problem["title"]
    for secret in secrets:
        assert secret not in response.text


async def second_instance(session: AsyncSession, tenant: Tenant, gateway: str) -> WhatsAppInstance:
    instance = InstanceFactory.build(org_id=tenant.org_id, gateway=GatewayKind(gateway))
    session.add(instance)
    await session.commit()
    session.expunge(instance)
    return instance


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_no_credential_is_401_and_stores_nothing(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: str
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    body = text_body(gateway, instance)
    for headers in ({}, {"x-webhook-secret": ""}, {"authorization": "Bearer "}, {"x-hub-signature-256": ""}):
        assert_refused(await post(client, gateway, instance.name, body, headers), instance.webhook_secret)
    assert await row_counts(engine, tenant.org_id) == NOTHING


def wrong_shared_secrets(secret: str, body: bytes) -> list[tuple[dict[str, str], dict[str, str]]]:
    """(headers, query) pairs, each presenting something that is not the instance's secret."""
    near_misses = [
        secret.upper() if secret != secret.upper() else secret.lower(),
        secret + "x",
        secret[:-1],
        " ",
    ]
    cases: list[tuple[dict[str, str], dict[str, str]]] = []
    for wrong in near_misses:
        cases += [
            ({"x-webhook-secret": wrong}, {}),
            ({"authorization": f"Bearer {wrong}"}, {}),
            ({}, {"token": wrong}),
        ]
    cases += [
        ({"authorization": f"Basic {secret}"}, {}),  # only a Bearer credential carries the secret
        ({"x-hub-signature-256": hub_signature(secret, body)}, {}),  # a signature is not the secret
        ({"x-webhook-secret": "wrong", "authorization": "Bearer also-wrong"}, {"token": "still-wrong"}),
    ]
    return cases


@pytest.mark.parametrize("gateway", SHARED_SECRET_GATEWAYS)
async def test_a_wrong_shared_secret_anywhere_is_401(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: str
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    body = text_body(gateway, instance)
    for headers, query in wrong_shared_secrets(instance.webhook_secret, body):
        response = await post(client, gateway, instance.name, body, headers, query)
        assert_refused(response, instance.webhook_secret)
    if gateway == "evolution":  # Evolution may carry the secret in the body's `apikey`
        for wrong in ("B6D711FCDE4D4FD5936544120E713976", instance.webhook_secret + "x", ""):
            data = json.loads(body) | {"apikey": wrong}
            assert_refused(await post(client, gateway, instance.name, json.dumps(data).encode(), {}))
    assert await row_counts(engine, tenant.org_id) == NOTHING

    # The right secret in each place is accepted (so the refusals above were about the secret alone).
    for i, (headers, query) in enumerate(
        [
            ({"x-webhook-secret": instance.webhook_secret}, {}),
            ({"authorization": f"Bearer {instance.webhook_secret}"}, {}),
            ({}, {"token": instance.webhook_secret}),
        ]
    ):
        accepted = await post(
            client, gateway, instance.name, text_body(gateway, instance, f"OK{i}"), headers, query
        )
        assert accepted.status_code == 200, accepted.text
    assert (await row_counts(engine, tenant.org_id))["messages"] == 3


async def test_a_wrong_cloudapi_signature_is_401(client: Client, session: AsyncSession, engine: AsyncEngine):
    tenant = await create_tenant(session)
    instance = tenant.instance("cloudapi")
    secret = instance.webhook_secret
    body = text_body("cloudapi", instance)
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    signatures = [
        "sha256=" + "0" * 64,
        hub_signature("not-the-app-secret", body),
        hub_signature(secret + "x", body),
        hub_signature(b"", body),
        "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest(),  # Meta's legacy header value
        "sha512=" + hmac.new(secret.encode(), body, hashlib.sha512).hexdigest(),
        digest,  # no algorithm prefix
        "sha256=" + digest[:-2],  # truncated
        "sha256=" + digest + "00",
        "sha256=" + hashlib.sha256(body).hexdigest(),  # a plain hash, no key
        "sha256=" + hashlib.sha256(secret.encode() + body).hexdigest(),  # key-prefix MAC, not HMAC
        "sha256=" + digest.replace(digest[0], "g" if digest[0] != "g" else "h", 1),  # not hex
    ]
    for signature in signatures:
        assert_refused(
            await post(client, "cloudapi", instance.name, body, {"x-hub-signature-256": signature}), secret
        )
    # A shared secret is no substitute for the signature on Cloud API.
    for headers, query in (({"x-webhook-secret": secret}, {}), ({"authorization": f"Bearer {secret}"}, {})):
        assert_refused(await post(client, "cloudapi", instance.name, body, headers, query), secret)
    assert_refused(await post(client, "cloudapi", instance.name, body, {}, {"token": secret}), secret)
    assert await row_counts(engine, tenant.org_id) == NOTHING

    accepted = await post(
        client, "cloudapi", instance.name, body, {"x-hub-signature-256": "sha256=" + digest.upper()}
    )
    assert accepted.status_code == 200, accepted.text  # the same signature in upper-case hex is the same


async def test_a_cloudapi_signature_over_a_different_body_is_401(
    client: Client, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    instance = tenant.instance("cloudapi")
    signed = text_body("cloudapi", instance, "wamid.SIGNED", "the text that was signed")
    signature = hub_signature(instance.webhook_secret, signed)
    data = json.loads(signed)
    variants = [
        text_body("cloudapi", instance, "wamid.SIGNED", "a text the attacker wrote"),
        text_body("cloudapi", instance, "wamid.OTHER", "the text that was signed"),
        json.dumps(data, indent=2).encode(),  # the same JSON, other bytes
        json.dumps(data, sort_keys=True).encode(),
        signed + b" ",
        b" " + signed,
        signed.replace(b'"messages"', b'"messages" '),
    ]
    for body in variants:
        assert body != signed
        response = await post(client, "cloudapi", instance.name, body, {"x-hub-signature-256": signature})
        assert_refused(response, instance.webhook_secret)
    assert await row_counts(engine, tenant.org_id) == NOTHING
    accepted = await post(client, "cloudapi", instance.name, signed, {"x-hub-signature-256": signature})
    assert accepted.status_code == 200 and accepted.json()["created"] == 1


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_valid_request_replayed_to_another_instance_of_the_same_org_is_refused(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: str
):
    tenant = await create_tenant(session)
    first = tenant.instance(gateway)
    other = await second_instance(session, tenant, gateway)
    body = text_body(gateway, first)
    headers = signed_headers(gateway, body, first)  # exactly what the first instance's gateway sent
    assert_refused(
        await post(client, gateway, other.name, body, headers), first.webhook_secret, other.webhook_secret
    )
    # With the other instance's own credential, a body addressed to the first is still refused whole.
    response = await post(client, gateway, other.name, body, signed_headers(gateway, body, other))
    assert_refused(response, status=422)
    assert await row_counts(engine, tenant.org_id) == NOTHING


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_valid_request_replayed_to_another_orgs_instance_is_refused(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: str
):
    ours, theirs = await create_tenant(session), await create_tenant(session)
    instance, victim = ours.instance(gateway), theirs.instance(gateway)
    for addressed_to in (instance, victim):
        body = text_body(gateway, addressed_to)
        response = await post(client, gateway, victim.name, body, signed_headers(gateway, body, instance))
        assert_refused(response, instance.webhook_secret, victim.webhook_secret)
    assert await row_counts(engine, ours.org_id) == NOTHING
    assert await row_counts(engine, theirs.org_id) == NOTHING


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_replayed_valid_request_stores_nothing_new(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: str
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    body = text_body(gateway, instance, "REPLAYED1")
    headers = signed_headers(gateway, body, instance)
    first = await post(client, gateway, instance.name, body, headers)
    assert first.status_code == 200 and first.json()["created"] == 1
    stored = await row_counts(engine, tenant.org_id)
    for _ in range(3):
        again = await post(client, gateway, instance.name, body, headers)
        assert again.status_code == 200 and (again.json()["created"], again.json()["duplicates"]) == (0, 1)
    assert await row_counts(engine, tenant.org_id) == stored


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_an_instance_without_a_secret_accepts_nothing(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: str
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    async with async_sessionmaker(engine)() as s:
        await s.execute(
            update(WhatsAppInstance).where(WhatsAppInstance.id == instance.id).values(webhook_secret="")
        )
        await s.commit()
    body = text_body(gateway, instance)
    attempts: list[tuple[dict[str, str], dict[str, str]]] = [
        ({}, {}),
        ({"x-webhook-secret": ""}, {}),
        ({"authorization": "Bearer"}, {}),
        ({}, {"token": ""}),
        ({"x-hub-signature-256": hub_signature(b"", body)}, {}),  # an HMAC keyed with the empty secret
    ]
    for headers, query in attempts:
        assert_refused(await post(client, gateway, instance.name, body, headers, query))
    if gateway == "evolution":
        data = json.loads(body) | {"apikey": ""}
        assert_refused(await post(client, gateway, instance.name, json.dumps(data).encode(), {}))
    assert await row_counts(engine, tenant.org_id) == NOTHING


@pytest.mark.parametrize("gateway", GATEWAYS)
async def test_a_deactivated_instance_accepts_nothing(
    client: Client, session: AsyncSession, engine: AsyncEngine, gateway: str
):
    tenant = await create_tenant(session)
    instance = tenant.instance(gateway)
    async with async_sessionmaker(engine)() as s:
        await s.execute(
            update(WhatsAppInstance).where(WhatsAppInstance.id == instance.id).values(is_active=False)
        )
        await s.commit()
    body = text_body(gateway, instance)
    response = await post(client, gateway, instance.name, body, signed_headers(gateway, body, instance))
    assert_refused(response, instance.webhook_secret, status=404)
    assert await row_counts(engine, tenant.org_id) == NOTHING


async def test_the_cloudapi_handshake_needs_the_instances_verify_token(client: Client, session: AsyncSession):
    ours, theirs = await create_tenant(session), await create_tenant(session)
    instance = ours.instance("cloudapi")
    url = f"/api/webhooks/cloudapi/{instance.name}"
    challenge = "1158201444"
    good = {"hub.mode": "subscribe", "hub.verify_token": instance.verify_token, "hub.challenge": challenge}
    refused = [
        {k: v for k, v in good.items() if k != "hub.verify_token"},
        good | {"hub.verify_token": ""},
        good | {"hub.verify_token": "wrong"},
        good | {"hub.verify_token": instance.verify_token + "x"},
        good | {"hub.verify_token": theirs.instance("cloudapi").verify_token},  # another org's token
        good | {"hub.verify_token": instance.webhook_secret},  # the app secret is not the verify token
        good | {"hub.mode": "unsubscribe"},
    ]
    for params in refused:
        response = await client.get(url, params=params)
        assert_refused(response, instance.verify_token)
        assert challenge not in response.text
    response = await client.get(url, params=good)
    assert (response.status_code, response.text) == (200, challenge)
    # Someone else's instance name with our token: refused as well.
    response = await client.get(f"/api/webhooks/cloudapi/{theirs.instance('cloudapi').name}", params=good)
    assert_refused(response)
    for gateway in SHARED_SECRET_GATEWAYS:  # no handshake exists for the others
        other = ours.instance(gateway)
        params = copy.deepcopy(good) | {"hub.verify_token": other.verify_token or ""}
        response = await client.get(f"/api/webhooks/{gateway}/{other.name}", params=params)
        assert_refused(response, status=404)
        assert challenge not in response.text


async def test_a_cloudapi_instance_without_a_phone_number_id_accepts_nothing(
    client: Client, session: AsyncSession, engine: AsyncEngine
):
    """One Meta app secret signs the webhooks of all the app's numbers: without its phone number id an
    instance could not tell its own from the others', so it refuses them all, saying what to configure."""
    tenant = await create_tenant(session)
    instance = tenant.instance("cloudapi")
    other_number = text_body("cloudapi", await second_instance(session, tenant, "cloudapi"))
    async with async_sessionmaker(engine)() as s:
        await s.execute(
            update(WhatsAppInstance).where(WhatsAppInstance.id == instance.id).values(phone_number_id=None)
        )
        await s.commit()
    for body in (text_body("cloudapi", instance), other_number):
        response = await post(
            client, "cloudapi", instance.name, body, signed_headers("cloudapi", body, instance)
        )
        assert_refused(response, instance.webhook_secret, status=422)
        assert "phone_number_id" in response.json()["detail"]
    # Unsigned, the signature is what is refused: only the app secret's holder learns the configuration.
    unsigned = await post(client, "cloudapi", instance.name, other_number, {})
    assert_refused(unsigned, status=401)
    assert "phone_number_id" not in unsigned.text
    assert await row_counts(engine, tenant.org_id) == NOTHING


async def test_a_cloudapi_payload_naming_no_phone_number_id_is_refused(
    client: Client, session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    instance = tenant.instance("cloudapi")
    for metadata in ({}, {"phone_number_id": ""}, None):
        data = json.loads(text_body("cloudapi", instance))
        value = data["entry"][0]["changes"][0]["value"]
        if metadata is None:
            del value["metadata"]
        else:
            value["metadata"] = metadata
        body = json.dumps(data).encode()
        response = await post(
            client, "cloudapi", instance.name, body, signed_headers("cloudapi", body, instance)
        )
        assert_refused(response, status=422)
        assert "phone_number_id" in response.json()["detail"]
    assert await row_counts(engine, tenant.org_id) == NOTHING
