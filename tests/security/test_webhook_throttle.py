"""The webhook verification throttle under concurrency and on a shared gateway host (issue 12, findings 3
and 6), against the two real API processes of the security suite (budget WEBHOOK_AUTH_LIMIT per pair).

Each test posts from loopback addresses of its own (127.0.0.3x), so their counts never meet another test's.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from tests.kit.api import assert_throttled, from_address
from tests.kit.data import signed_headers, text_body
from tests.kit.factories import create_tenant
from tests.kit.processes import ApiProcess
from tests.security.support import NOTHING, WEBHOOK_AUTH_LIMIT, row_counts

CONCURRENT_GUESSES = 200


async def test_concurrent_wrong_secrets_evaluate_at_most_the_budget(
    processes: list[ApiProcess], session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    wpp = tenant.instance("wppconnect")
    body = text_body("wppconnect", wpp, "GUESSED")
    async with from_address("127.0.0.30") as attacker:
        attacker.timeout = httpx.Timeout(30.0)

        async def guess(i: int) -> int:
            url = f"{processes[i % 2].base_url}/api/webhooks/wppconnect/{wpp.name}"
            headers = {"content-type": "application/json", "x-webhook-secret": f"guess-{i}"}
            return (await attacker.post(url, content=body, headers=headers)).status_code

        statuses = Counter(await asyncio.gather(*(guess(i) for i in range(CONCURRENT_GUESSES))))
    print(f"{CONCURRENT_GUESSES} concurrent wrong secrets, budget {WEBHOOK_AUTH_LIMIT}: {dict(statuses)}")
    # Each guess took its slot before it was evaluated: no more than the budget were (401), the rest 429.
    assert statuses[401] <= WEBHOOK_AUTH_LIMIT, statuses
    assert statuses[401] + statuses[429] == CONCURRENT_GUESSES, statuses
    assert await row_counts(engine, tenant.org_id) == NOTHING


async def test_a_verified_burst_wider_than_the_budget_is_never_refused(
    processes: list[ApiProcess], session: AsyncSession, engine: AsyncEngine
):
    tenant = await create_tenant(session)
    wpp = tenant.instance("wppconnect")
    burst = WEBHOOK_AUTH_LIMIT * 8  # all in flight at once: more reservations than the budget has slots
    async with from_address("127.0.0.31") as gateway:

        async def deliver(i: int) -> httpx.Response:
            body = text_body("wppconnect", wpp, f"BURST{i:04d}")
            url = f"{processes[i % 2].base_url}/api/webhooks/wppconnect/{wpp.name}"
            return await gateway.post(url, content=body, headers=signed_headers("wppconnect", body, wpp))

        answers = await asyncio.gather(*(deliver(i) for i in range(burst)))
    refused = [a.text for a in answers if a.status_code != 200]
    assert not refused, refused
    assert (await row_counts(engine, tenant.org_id))["messages"] == burst


async def test_a_shared_gateway_host_failing_for_one_instance_never_refuses_another(
    processes: list[ApiProcess], session: AsyncSession, engine: AsyncEngine
):
    org_a, org_b = await create_tenant(session), await create_tenant(session)
    stale = org_b.instance("wppconnect")  # org B's instance, whose secret the shared host has wrong
    base = [process.base_url for process in processes]
    sent = 0

    async def a_delivers_everything(host: httpx.AsyncClient, tag: str) -> None:
        nonlocal sent
        for i, kind in enumerate(("wppconnect", "evolution", "cloudapi")):
            instance = org_a.instance(kind)
            body = text_body(kind, instance, f"{tag}-{kind}")
            response = await host.post(
                f"{base[i % 2]}/api/webhooks/{kind}/{instance.name}",
                content=body,
                headers=signed_headers(kind, body, instance),
            )
            assert response.status_code == 200, (tag, kind, response.text)
            sent += 1
        cloud = org_a.instance("cloudapi")
        handshake = {"hub.mode": "subscribe", "hub.verify_token": cloud.verify_token, "hub.challenge": "7"}
        answer = await host.get(f"{base[1]}/api/webhooks/cloudapi/{cloud.name}", params=handshake)
        assert answer.status_code == 200 and answer.text == "7", (tag, answer.text)

    async with from_address("127.0.0.32") as host:
        stale_body = text_body("wppconnect", stale, "STALE")
        for attempt in range(WEBHOOK_AUTH_LIMIT + 1):  # org B's deliveries with a stale secret
            response = await host.post(
                f"{base[attempt % 2]}/api/webhooks/wppconnect/{stale.name}",
                content=stale_body,
                headers={"content-type": "application/json", "x-webhook-secret": "rotated-away"},
            )
            assert response.status_code == (401 if attempt < WEBHOOK_AUTH_LIMIT else 429), response.text
        await a_delivers_everything(host, "after-b-failed")

        # Probing names: past the budget an unknown name answers 429 (existence is no longer told), and
        # the known instances' verified webhooks from the same host still go through.
        probes: list[int] = []
        for attempt in range(WEBHOOK_AUTH_LIMIT + 2):
            name = f"probe-{secrets.token_hex(4)}"
            if attempt % 2:
                answer = await host.get(
                    f"{base[attempt % 2]}/api/webhooks/cloudapi/{name}",
                    params={"hub.mode": "subscribe", "hub.verify_token": "x", "hub.challenge": "1"},
                )
            else:
                answer = await host.post(
                    f"{base[attempt % 2]}/api/webhooks/wppconnect/{name}",
                    content=b"{}",
                    headers={"content-type": "application/json", "x-webhook-secret": "x"},
                )
            probes.append(answer.status_code)
        assert probes == [404] * WEBHOOK_AUTH_LIMIT + [429, 429], probes
        await a_delivers_everything(host, "after-probes")

        # Guessing org B's secret stopped at its budget: even the right one is refused from this host.
        for url in base:
            right = await host.post(
                f"{url}/api/webhooks/wppconnect/{stale.name}",
                content=stale_body,
                headers=signed_headers("wppconnect", stale_body, stale),
            )
            assert_throttled(right)
    assert (await row_counts(engine, org_a.org_id))["messages"] == sent
    assert await row_counts(engine, org_b.org_id) == NOTHING
