"""The webhook entry point: an address that keeps failing verification for an instance is refused for a while
on that instance (counted in Redis across processes), verified gateways never are, and a forgery the headers
can already refuse costs no upload.

The throttle cases run against real API processes (uvicorn's client address and proxy-header rule included),
each from a loopback address of its own (127.0.0.x), so they neither see nor disturb each other's counts.
"""

from __future__ import annotations

import json

import pytest
from litestar import Litestar
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.db.models import WhatsAppInstance
from app.domain.gateways.base import WebhookUnauthorized
from app.domain.ingest.throttle import WebhookAuthThrottle
from app.lib.throttle_calls import ThrottleCalls
from tests.kit.api import assert_throttled, from_address
from tests.kit.asgi_delivery import deliver, live_app
from tests.kit.data import TEXT_FIXTURES, signed_headers, text_body
from tests.kit.factories import create_tenant
from tests.kit.processes import ApiProcess
from tests.security.support import NOTHING, WEBHOOK_AUTH_LIMIT, row_counts

# --- the throttle ------------------------------------------------------------------------------------------


async def test_an_address_failing_verification_for_an_instance_is_refused_even_with_the_right_secret(
    processes: list[ApiProcess], session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    wpp, cloud = tenant.instance("wppconnect"), tenant.instance("cloudapi")
    body = text_body("wppconnect", wpp, "THROTTLED1")
    base = [process.base_url for process in processes]
    # (path, headers, expected refusal): every kind of failure for one instance counts against its pair.
    guesses: list[tuple[str, dict[str, str], int]] = [
        (f"/api/webhooks/wppconnect/{wpp.name}", {"x-webhook-secret": "guess"}, 401),
        (f"/api/webhooks/wppconnect/{wpp.name}", {}, 401),
        (f"/api/webhooks/wppconnect/{wpp.name}?token=guess", {}, 401),
        (f"/api/webhooks/wppconnect/{wpp.name}", {"authorization": "Bearer guess"}, 401),
    ]
    async with from_address("127.0.0.2") as attacker:
        for attempt in range(WEBHOOK_AUTH_LIMIT):  # spread over both processes: one shared count
            path, headers, refusal = guesses[attempt % len(guesses)]
            response = await attacker.post(f"{base[attempt % 2]}{path}", content=body, headers=headers)
            assert response.status_code == refusal, (attempt, response.text)
        for url in base:
            # The right secret now: refused as well, else the one right guess would still stand out.
            response = await attacker.post(
                f"{url}/api/webhooks/wppconnect/{wpp.name}",
                content=body,
                headers=signed_headers("wppconnect", body, wpp),
            )
            assert_throttled(response)
            assert wpp.webhook_secret not in response.text
            # Forwarding headers from an untrusted peer change nothing (FORWARDED_ALLOW_IPS, as for logins).
            for spoofed in ({"x-forwarded-for": "203.0.113.9"}, {"forwarded": "for=203.0.113.10"}):
                headers = {**signed_headers("wppconnect", body, wpp), **spoofed}
                assert_throttled(
                    await attacker.post(
                        f"{url}/api/webhooks/wppconnect/{wpp.name}", content=body, headers=headers
                    )
                )
            # Another instance from the same address is judged by its own budget (test_webhook_throttle.py).
            handshake = {
                "hub.mode": "subscribe",
                "hub.verify_token": cloud.verify_token,
                "hub.challenge": "42",
            }
            answer = await attacker.get(f"{url}/api/webhooks/cloudapi/{cloud.name}", params=handshake)
            assert answer.status_code == 200 and answer.text == "42", answer.text
    assert await row_counts(engine, tenant.org_id) == NOTHING

    async with from_address("127.0.0.3") as gateway:  # another address: its own budget, untouched
        response = await gateway.post(
            f"{base[0]}/api/webhooks/wppconnect/{wpp.name}",
            content=body,
            headers=signed_headers("wppconnect", body, wpp),
        )
        assert response.status_code == 200 and response.json()["created"] == 1, response.text


async def test_verified_traffic_far_above_the_limit_is_never_throttled(
    processes: list[ApiProcess], session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    gateways = ["wppconnect", "evolution", "cloudapi"]
    sent = 0
    async with from_address("127.0.0.4") as gateway:
        for i in range(WEBHOOK_AUTH_LIMIT * 4):
            kind = gateways[i % 3]
            instance = tenant.instance(kind)
            body = text_body(kind, instance, f"VERIFIED{i:04d}")
            url = f"{processes[i % 2].base_url}/api/webhooks/{kind}/{instance.name}"
            response = await gateway.post(url, content=body, headers=signed_headers(kind, body, instance))
            assert response.status_code == 200, (i, response.text)
            sent += 1
            # Verified but unreadable: the body's fault, not a guess; it does not count either.
            broken = await gateway.post(url, content=b"{", headers=signed_headers(kind, b"{", instance))
            assert broken.status_code == 400, (i, broken.text)
    assert (await row_counts(engine, tenant.org_id))["messages"] == sent


async def test_with_redis_down_the_throttle_lets_everything_through(unused_tcp_port: int) -> None:
    url = f"redis://127.0.0.1:{unused_tcp_port}/0"
    dead = Redis.from_url(url, socket_connect_timeout=0.2)
    calls = ThrottleCalls(url)
    throttle = WebhookAuthThrottle(dead, calls, "crm-dead", per_minute=1)
    try:
        for _ in range(3):
            with pytest.raises(WebhookUnauthorized):  # the verification's own error, not Redis's; no 429
                async with throttle.judging("198.51.100.1", "wppconnect", "instance"):
                    raise WebhookUnauthorized("webhook secret does not match")
    finally:
        await dead.aclose()
        calls.close()


# --- verification before the body --------------------------------------------------------------------------


def padded(gateway: str, instance: WhatsAppInstance, message_id: str, size: int) -> bytes:
    """A real webhook of about `size` bytes (whitespace after the JSON is still the same JSON); Evolution's
    carries the instance's own secret as its `apikey`."""
    body = text_body(gateway, instance, message_id)
    if gateway == "evolution":
        body = json.dumps(json.loads(body) | {"apikey": instance.webhook_secret}).encode()
    return body + b" " * (size - len(body))


async def test_a_forgery_the_headers_refuse_is_answered_without_reading_the_body(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
):
    async with live_app(settings) as app:
        await forgeries_are_refused_unread_and_real_deliveries_read(app, session, engine)


async def forgeries_are_refused_unread_and_real_deliveries_read(
    app: Litestar, session: AsyncSession, engine: AsyncEngine
) -> None:
    tenant = await create_tenant(session)
    wpp, evo, cloud = (tenant.instance(g) for g in ("wppconnect", "evolution", "cloudapi"))
    size = 4 * 1024 * 1024  # 64 chunks; far below WEBHOOK_MAX_BODY_BYTES, so only verification refuses it
    json_type = {"content-type": "application/json"}
    refused: list[tuple[str, dict[str, str], str, int]] = [  # (path, headers, query, status)
        (f"/api/webhooks/wppconnect/{wpp.name}", json_type, "", 401),
        (f"/api/webhooks/wppconnect/{wpp.name}", {**json_type, "x-webhook-secret": "guess"}, "", 401),
        (f"/api/webhooks/wppconnect/{wpp.name}", json_type, "token=guess", 401),
        # A wrong secret outside the body decides, whatever the body's `apikey` (here the right one) says.
        (f"/api/webhooks/evolution/{evo.name}", {**json_type, "authorization": "Bearer guess"}, "", 401),
        (f"/api/webhooks/evolution/{evo.name}", json_type, "token=guess", 401),
        (f"/api/webhooks/cloudapi/{cloud.name}", json_type, "", 401),
        (f"/api/webhooks/cloudapi/{cloud.name}", {**json_type, "x-hub-signature-256": "sha256=zz"}, "", 401),
        (f"/api/webhooks/wppconnect/no-such-{wpp.name}", signed_headers("wppconnect", b"", wpp), "", 404),
        (
            f"/api/webhooks/cloudapi/no-such-{cloud.name}",
            {**json_type, "x-hub-signature-256": "sha256=" + "0" * 64},
            "",
            404,
        ),
        (f"/api/webhooks/nosuchgateway/{wpp.name}", signed_headers("wppconnect", b"", wpp), "", 404),
    ]
    for i, (path, headers, query, status) in enumerate(refused):
        gateway = path.split("/")[3] if path.split("/")[3] in TEXT_FIXTURES else "wppconnect"
        body = padded(gateway, tenant.instance(gateway), f"FORGED{i}", size)
        delivery = await deliver(app, path, headers, body, query)
        assert delivery.status == status, (path, headers, query, delivery.answer)
        assert delivery.chunks_read == 0, (
            path,
            headers,
            query,
            f"{delivery.chunks_read}/{delivery.chunks_total}",
        )
    assert await row_counts(engine, tenant.org_id) == NOTHING

    # The same route reads the whole body once the headers let it: the counter above could count.
    # (Cloud API bodies stay under its own limit, WEBHOOK_CLOUDAPI_MAX_BODY_BYTES: 1 MiB.)
    cloud_size = 512 * 1024
    expected_reads: list[tuple[str, dict[str, str], bytes, int]] = []
    for gateway, gateway_size in (("wppconnect", size), ("cloudapi", cloud_size)):
        instance = tenant.instance(gateway)
        body = padded(gateway, instance, f"REAL-{gateway}", gateway_size)
        expected_reads.append((gateway, signed_headers(gateway, body, instance), body, 200))
    # Evolution with no secret outside the body: its `apikey` is read, so the body is.
    expected_reads.append(("evolution", json_type, padded("evolution", evo, "REAL-evolution", size), 200))
    forged_signature = {**json_type, "x-hub-signature-256": "sha256=" + "0" * 64}  # judged over the body
    forged = padded("cloudapi", cloud, "FORGED-SIG", cloud_size)
    expected_reads.append(("cloudapi", forged_signature, forged, 401))
    for gateway, headers, body, status in expected_reads:
        delivery = await deliver(
            app, f"/api/webhooks/{gateway}/{tenant.instance(gateway).name}", headers, body
        )
        assert delivery.status == status, (gateway, delivery.answer)
        assert delivery.chunks_read == delivery.chunks_total > 1, gateway
        # The instance lookup's connection went back to the pool before the (maybe slow) upload.
        assert delivery.connections_while_reading == 0, gateway
    assert (await row_counts(engine, tenant.org_id))["messages"] == 3
