"""Redis restarted under load: it comes back empty (no persistence), with every subscription and every
cached page gone, while webhooks keep arriving and agents' sockets stay open on both API processes.

Ingest must keep committing (Redis is an accelerator, README "Read cache"), sockets must get delivery back
without a server restart and end with every message once and in order, and a cached page read afterwards
must be the current one — with a memory TTL of 10 minutes, only invalidations can make it so.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from tests.faults.harness import (
    GATEWAY,
    INBOX,
    Follower,
    Gateway,
    Reader,
    assert_exactly_once_in_order,
    assert_persisted_exactly_once,
    close_followers,
    eventually,
    follower_counts,
    gateway_counts,
    history_matches,
    history_path,
    inbox_matches,
    postgres_counts,
    read_truth,
    report,
    start_followers,
    text_webhooks,
    wait_caught_up,
)
from tests.kit.api import login_token
from tests.kit.data import env_for
from tests.kit.factories import PASSWORD, create_tenant
from tests.kit.processes import api_processes, private_redis

CONVERSATIONS = 6
MESSAGES = 360
RATE = 60.0  # about 6 s of load; Redis goes away a third of the way in, for 1.5 s
DOWN_S = 1.5


async def test_redis_restart_under_load_costs_no_webhook_no_message_and_no_stale_page(
    settings: Settings, session: AsyncSession
) -> None:
    started = time.monotonic()
    with private_redis() as redis:
        env = env_for(settings, REDIS_URL=redis.url, WS_CATCH_UP_SECONDS="1", CACHE_MEMORY_TTL_SECONDS="600")
        with api_processes(2, env) as (a, b):
            tenant = await create_tenant(session)
            instance = tenant.instance(GATEWAY)
            chats = [f"55219{n:07d}" for n in range(CONVERSATIONS)]
            seeds = text_webhooks(instance, chats, CONVERSATIONS, "seed")
            await Gateway(a).deliver(seeds)
            truth = await read_truth(settings.db.url, [instance.id])
            conversations = [truth.conversation_of_chat[c] for c in chats]
            watched = conversations[0]

            token = await login_token(a.base_url, tenant.agent.email, PASSWORD)
            admin = await login_token(a.base_url, tenant.admin.email, PASSWORD)
            readers = [Reader(a, token, admin), Reader(b, token, admin)]
            followers = [Follower(p, token, conversations) for p in (a, b, a, b)]
            try:
                await start_followers(followers)
                for reader in readers:  # both processes hold the pages in memory before the restart
                    await reader.wait_memory_live()
                    await reader.page_from_memory(history_path(watched))
                    await reader.page_from_memory(INBOX)

                load = text_webhooks(instance, chats, MESSAGES, "load")
                gateway = Gateway(a, senders=6, rate=RATE)
                window: dict[str, float] = {}

                async def restart_redis() -> None:
                    await eventually(lambda: gateway.acked >= MESSAGES // 3, lambda: "a third acked", 30)
                    window["acked_before"] = gateway.acked
                    window["stopping"] = time.monotonic()
                    await asyncio.to_thread(redis.stop)
                    window["down"] = time.monotonic()
                    await asyncio.sleep(DOWN_S)
                    window["starting"] = time.monotonic()
                    await asyncio.to_thread(redis.start)
                    window["up"] = time.monotonic()
                    window["acked_during"] = gateway.acked - window["acked_before"]

                watched_hooks = [h for h in load if h.chat == chats[0]]
                done = asyncio.Event()

                async def read_during_load(reader: Reader) -> Counter[str]:
                    """The watched history, over and over: a page whose last_seq is below the number of
                    its messages already acked when the GET was sent is stale."""
                    seen: Counter[str] = Counter()
                    while not done.is_set():
                        floor = 1 + sum(h.acked for h in watched_hooks)
                        response = await reader.get(history_path(watched))
                        if response.status_code != 200:
                            seen[str(response.status_code)] += 1
                        else:
                            seen["stale" if response.json()["last_seq"] < floor else "current"] += 1
                        await asyncio.sleep(0.02)
                    return seen

                async def load_then_done() -> None:
                    try:
                        await gateway.deliver(load)
                    finally:
                        done.set()

                _, _, reads_a, reads_b = await asyncio.gather(
                    load_then_done(),
                    restart_redis(),
                    read_during_load(readers[0]),
                    read_during_load(readers[1]),
                )

                truth = await read_truth(settings.db.url, [instance.id])
                sent = gateway_counts(load, gateway)
                while_down = gateway.outcomes_between(window["down"], window["starting"])
                stored = postgres_counts(truth, seeds + load)
                await wait_caught_up(followers, truth, timeout=20)
                await asyncio.sleep(1.0)
                delivered = follower_counts(followers, truth)

                # Cached reads after the restart, from memory again, against Postgres.
                pages = {}
                for name, reader in zip("ab", readers, strict=True):
                    await reader.wait_memory_live()
                    history = await reader.page_from_memory(history_path(watched))
                    inbox = await reader.page_from_memory(INBOX)
                    pages[name] = {
                        "history_last_seq": history["last_seq"],
                        "history_current": history_matches(history, truth, watched),
                        "inbox_current": inbox_matches(inbox, truth),
                    }
                report(
                    "redis_restart",
                    fault=f"private Redis stopped {DOWN_S} s and started empty after "
                    f"{int(window['acked_before'])}/{MESSAGES} acks; "
                    f"{int(window['acked_during'])} acked meanwhile",
                    webhooks=sent,
                    webhook_outcomes_while_down=dict(while_down),
                    reads_during_load={"a_writer": dict(reads_a), "b": dict(reads_b)},
                    postgres=stored,
                    clients_on_a_and_b=delivered,
                    cached_pages_after_restart={**pages, "postgres_last_seq": truth.last_seq[watched]},
                    runtime_s=round(time.monotonic() - started, 1),
                )

                assert sent["acked"] == MESSAGES
                # Redis down is no reason for a webhook to fail: every answer was a 200 (a client-side timeout
                # on this busy machine would be retried, but the server never refused one).
                assert {k for k in sent["outcomes"] if k.isdigit()} == {"200"}, sent
                assert sum(while_down.values()) > 0, "no webhook was posted while Redis was down"
                # Reads never fail because of the cache; the writing process reads its own writes.
                assert set(reads_a) <= {"current"} and set(reads_b) <= {"current", "stale"}, (
                    reads_a,
                    reads_b,
                )
                assert_persisted_exactly_once(stored, sent=CONVERSATIONS + MESSAGES)
                assert_exactly_once_in_order(delivered)
                for name, page in pages.items():
                    assert page["history_current"] and page["inbox_current"], (name, pages)
            finally:
                await close_followers(followers)
                for reader in readers:
                    await reader.close()
