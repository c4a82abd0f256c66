"""An API process SIGKILLed in the middle of a webhook load, and started again.

Two API processes share Postgres and a private Redis. Agents' sockets are on B; a gateway posts to A,
retrying like a real gateway (non-2xx, refused or dropped connection, timeout: the same body again, with
backoff). A dies with requests on it that have committed and not been answered: just before the kill Redis
is frozen (SIGSTOP), so each request A has committed waits in its after-commit publish (which gives up after
0.5 s), and A is killed while requests have been waiting there (STUCK_S). Those publishes are lost too.
A new A takes over the gateway's URL. Nothing may be lost or stored twice — the retried webhooks that had
committed must be acknowledged as duplicates — and every socket on B must see every message once, in seq
order (the lost publishes come from the periodic catch-up).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.lib.throttle_calls import PATIENCE_S, PROBE_S
from tests.faults.harness import (
    GATEWAY,
    Follower,
    Gateway,
    Webhook,
    assert_exactly_once_in_order,
    assert_persisted_exactly_once,
    close_followers,
    eventually,
    follower_counts,
    gateway_counts,
    postgres_counts,
    read_truth,
    report,
    start_followers,
    stored_gateway_ids,
    text_webhooks,
    wait_caught_up,
)
from tests.kit.api import login_token
from tests.kit.data import env_for
from tests.kit.factories import PASSWORD, create_tenant
from tests.kit.processes import ApiProcess, PrivateRedis, api_processes, private_redis

CONVERSATIONS = 8
CLIENTS = 4
ROOMS_PER_CLIENT = 6
MESSAGES = 480
RATE = 80.0  # webhooks per second offered: about 6 s of load, A dies a third of the way in
# In flight this long with Redis frozen: committed, waiting in the publish (0.5 s timeout). Longer than the
# webhook throttle's one stall on a frozen Redis before it rests (app.lib.throttle_calls: patience, then a
# probe), which comes before the commit: a request still waiting there has committed nothing.
STUCK_S = PATIENCE_S + PROBE_S + 0.1


def _freeze(redis: PrivateRedis, sig: signal.Signals) -> None:
    assert redis._proc is not None
    os.kill(redis._proc.pid, sig)


async def test_api_killed_mid_load_loses_nothing_and_stores_nothing_twice(
    settings: Settings, session: AsyncSession
) -> None:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fault-api-killed-") as tmp, private_redis() as redis:
        env = env_for(settings, REDIS_URL=redis.url, WS_CATCH_UP_SECONDS="1")
        with api_processes(2, env) as (a, b):
            restarted: list[ApiProcess] = []
            followers: list[Follower] = []
            try:
                tenant = await create_tenant(session)
                instance = tenant.instance(GATEWAY)
                chats = [f"55119{n:07d}" for n in range(CONVERSATIONS)]
                seeds = text_webhooks(instance, chats, CONVERSATIONS, "seed")
                await Gateway(a).deliver(seeds)  # one message opens each conversation
                truth = await read_truth(settings.db.url, [instance.id])
                conversations = [truth.conversation_of_chat[c] for c in chats]

                token = await login_token(b.base_url, tenant.agent.email, PASSWORD)
                followers = [
                    Follower(b, token, (conversations[k:] + conversations[:k])[:ROOMS_PER_CLIENT])
                    for k in range(CLIENTS)
                ]
                await start_followers(followers)

                load = text_webhooks(instance, chats, MESSAGES, "load")
                gateway = Gateway(a, senders=6, rate=RATE)
                at_kill: dict[str, int] = {}
                cut: list[Webhook] = []  # in flight when A died
                committed_when_cut: set[str] = set()  # of those, the ones Postgres had

                async def kill_and_restart_a() -> None:
                    await eventually(lambda: gateway.acked >= MESSAGES // 3, lambda: "a third acked", 30)
                    at_kill["acked"] = gateway.acked
                    _freeze(redis, signal.SIGSTOP)
                    try:
                        deadline = time.monotonic() + 10
                        while not gateway.in_flight_longer_than(STUCK_S):
                            assert time.monotonic() < deadline, "no request waited in A's publish"
                            await asyncio.sleep(0.005)
                        cut.extend(gateway.in_flight_longer_than(0))
                        await asyncio.to_thread(a.kill)  # SIGKILL, those requests on it
                    finally:
                        _freeze(redis, signal.SIGCONT)
                    ids = [h.message_id for h in cut]
                    committed_when_cut.update(await stored_gateway_ids(settings.db.url, ids))
                    new_a = ApiProcess(Path(tmp) / "api-a-restarted.log", env, ())
                    restarted.append(new_a)
                    await asyncio.to_thread(new_a.wait_healthy, 20)
                    gateway.target = new_a  # the gateway's URL now reaches the new process

                await asyncio.gather(gateway.deliver(load), kill_and_restart_a())

                truth = await read_truth(settings.db.url, [instance.id])
                sent = gateway_counts(load, gateway)
                stored = postgres_counts(truth, seeds + load)
                await wait_caught_up(followers, truth, timeout=20)
                await asyncio.sleep(1.0)  # a late duplicate would arrive now
                delivered = follower_counts(followers, truth)
                report(
                    "api_killed",
                    fault=f"Redis frozen, then SIGKILL API A after {at_kill['acked']}/{MESSAGES} acks with "
                    f"{len(cut)} request(s) on it; a new A started on the same env",
                    cut_requests={
                        "in_flight": len(cut),
                        "committed": len(committed_when_cut),
                        "retried_and_acked_as_duplicate": sum(h.deduplicated for h in cut),
                    },
                    webhooks=sent,
                    postgres=stored,
                    clients_on_b=delivered,
                    runtime_s=round(time.monotonic() - started, 1),
                )

                assert sent["acked"] == MESSAGES
                # The kill landed after commits; exactly those retries were answered as duplicates.
                assert committed_when_cut, [(h.message_id, h.attempts) for h in cut]
                assert {h.message_id for h in load if h.deduplicated} == committed_when_cut, sent
                assert_persisted_exactly_once(stored, sent=CONVERSATIONS + MESSAGES)
                assert_exactly_once_in_order(delivered)
                assert delivered["reconnects"] == delivered["resyncs"] == 0, delivered  # B was not touched
            except BaseException:
                for proc in restarted:
                    print(f"--- restarted A pid {proc.pid} ---\n{proc.logs()[-4000:]}", file=sys.stderr)
                raise
            finally:
                await close_followers(followers)
                for proc in restarted:
                    proc.terminate()
