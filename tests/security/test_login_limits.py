"""Who a login is counted as, and how many guesses one account takes (issue 12, finding 8).

A rotating X-Forwarded-For gave every request its own budget while FORWARDED_ALLOW_IPS trusted 127.0.0.1
by default; and with no per-account limit, addresses that rotate for real (or a trusted proxy in front of
many clients) could guess one account's password without end. Real API processes; loopback only.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import Counter

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from tests.kit.data import env_for
from tests.kit.factories import PASSWORD, create_tenant
from tests.kit.processes import api_processes

ADDRESS_LIMIT = 3
ACCOUNT_LIMIT = 5


def forwarded(i: int) -> dict[str, str]:
    return {"x-forwarded-for": f"198.51.100.{i % 250 + 1}"}


async def test_a_rotating_forwarded_for_from_loopback_counts_as_one_address_by_default(
    settings: Settings, session: AsyncSession
):
    tenant = await create_tenant(session)
    env = env_for(
        settings,
        LOGIN_ATTEMPTS_PER_MINUTE=str(ADDRESS_LIMIT),
        REDIS_KEY_PREFIX=f"crm-login-forwarded-{secrets.token_hex(4)}",
    )
    env.pop("FORWARDED_ALLOW_IPS", None)  # the production entry point's default
    with api_processes(1, env, production=True) as [api]:
        async with httpx.AsyncClient(base_url=api.base_url, timeout=10.0, trust_env=False) as http:
            statuses = [
                (
                    await http.post(
                        "/api/auth/login",
                        json={"email": tenant.agent.email, "password": f"guess {i}"},
                        headers=forwarded(i),
                    )
                ).status_code
                for i in range(ADDRESS_LIMIT * 3)
            ]
    print(f"\nrotating X-Forwarded-For, address limit {ADDRESS_LIMIT}: {statuses}")
    assert statuses == [401] * ADDRESS_LIMIT + [429] * (ADDRESS_LIMIT * 2), statuses


async def test_guesses_on_one_account_from_many_addresses_are_refused(
    settings: Settings, session: AsyncSession
):
    victim, bystander, raced = [await create_tenant(session) for _ in range(3)]
    env = env_for(
        settings,
        LOGIN_ATTEMPTS_PER_MINUTE=str(ADDRESS_LIMIT),
        LOGIN_FAILURES_PER_ACCOUNT=str(ACCOUNT_LIMIT),
        REDIS_KEY_PREFIX=f"crm-login-account-{secrets.token_hex(4)}",
        FORWARDED_ALLOW_IPS="127.0.0.1",  # trust loopback here, so every guess comes from another address
    )
    with api_processes(2, env) as processes:
        async with httpx.AsyncClient(timeout=30.0, trust_env=False) as http:
            addresses = iter(range(10_000))

            async def attempt(email: str, password: str) -> httpx.Response:
                i = next(addresses)
                return await http.post(
                    f"{processes[i % 2].base_url}/api/auth/login",
                    json={"email": email, "password": password},
                    headers=forwarded(i),
                )

            email = victim.agent.email
            guesses = [(await attempt(email, f"guess {i}")).status_code for i in range(ACCOUNT_LIMIT + 2)]
            right = await attempt(email, PASSWORD)  # the right password, from yet another address
            other = await attempt(bystander.agent.email, PASSWORD)
            # Concurrent guesses on a fresh account cannot outrun its budget either.
            concurrent = Counter(
                r.status_code
                for r in await asyncio.gather(*(attempt(raced.agent.email, f"g{i}") for i in range(30)))
            )
    print(
        f"\naccount limit {ACCOUNT_LIMIT}: sequential {guesses}, then right password {right.status_code}; "
        f"30 concurrent on another account {dict(concurrent)}"
    )
    assert guesses == [401] * ACCOUNT_LIMIT + [429, 429], guesses
    assert right.status_code == 429 and "access_token" not in right.text, right.text
    assert int(right.headers["retry-after"]) > 0
    assert right.headers["content-type"].startswith("application/problem+json")
    assert other.status_code == 200, other.text  # other accounts are not locked
    assert concurrent[401] <= ACCOUNT_LIMIT and concurrent[401] + concurrent[429] == 30, concurrent
