"""Concurrent lookups of one instance name share one query (issue 13: a burst of 200 requests for one
instance on a cold process was 200 pool connections, and 503s)."""

from __future__ import annotations

import asyncio
from uuid import uuid4

from app.db.models import GatewayKind
from app.domain.gateways.instances import ReceivingInstance
from app.domain.ingest.recent_instances import RecentInstances


def _instance(name: str) -> ReceivingInstance:
    return ReceivingInstance(
        id=uuid4(),
        org_id=uuid4(),
        gateway=GatewayKind.EVOLUTION,
        name=name,
        webhook_secret="s",
        verify_token=None,
        phone_number_id=None,
    )


async def test_concurrent_lookups_of_one_name_run_one_query_and_the_answer_is_kept() -> None:
    recent = RecentInstances(ttl_s=5)
    queries = 0
    found = _instance("shop")

    async def look_up() -> ReceivingInstance | None:
        nonlocal queries
        queries += 1
        await asyncio.sleep(0.05)
        return found

    answers = await asyncio.gather(
        *(recent.look_up_once(GatewayKind.EVOLUTION, "shop", look_up) for _ in range(50))
    )
    assert queries == 1 and all(answer is found for answer in answers)
    assert recent.get(GatewayKind.EVOLUTION, "shop") is found
    # A caller that goes away does not cancel the query the others wait for.
    first = asyncio.ensure_future(recent.look_up_once(GatewayKind.EVOLUTION, "other", look_up))
    second = asyncio.ensure_future(recent.look_up_once(GatewayKind.EVOLUTION, "other", look_up))
    await asyncio.sleep(0.01)
    first.cancel()
    assert await second is found and queries == 2


async def test_an_unknown_name_is_shared_but_never_kept() -> None:
    recent = RecentInstances(ttl_s=5)
    queries = 0

    async def look_up() -> ReceivingInstance | None:
        nonlocal queries
        queries += 1
        await asyncio.sleep(0.01)
        return None

    answers = await asyncio.gather(
        *(recent.look_up_once(GatewayKind.WPPCONNECT, "x", look_up) for _ in range(5))
    )
    assert answers == [None] * 5 and queries == 1
    assert await recent.look_up_once(GatewayKind.WPPCONNECT, "x", look_up) is None and queries == 2
