"""A reconnect storm: every socket of one API process dropped at the same instant while messages flow, and
all of them coming straight back with `after_seq` = the last seq each one has.

1,000 sockets (10 organisations x 5 conversations x 20 sockets per conversation) on one API process; a
gateway keeps posting across all 50 conversations. The sockets are cut without a close frame (RST, as a
network blip or a load balancer restart would) and reconnect at once, no jitter. Every socket must end with
its conversation's messages 1..last_seq, each once, in order; and the server must hold exactly the new
sockets afterwards (none of the dropped ones left behind).

A storm makes replays slow (every socket queries Postgres at once, through one pool). The second test holds
a replay on purpose to show, deterministically, what a slow replay does to a socket that subscribes again.
The third holds every replay of a storm, to show that they wait their turn (WS_REPLAY_CONCURRENCY) instead
of taking the pool the webhooks commit through.
"""

from __future__ import annotations

import asyncio
import os
import time

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.domain.conversations.ingest import IngestService
from tests.faults.harness import (
    GATEWAY,
    Follower,
    Gateway,
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
    text_webhooks,
    wait_caught_up,
)
from tests.kit.api import login_token
from tests.kit.data import env_for, text_message
from tests.kit.databases import plain_dsn
from tests.kit.factories import PASSWORD, Tenant, create_tenant
from tests.kit.measure import MiB, cpu_seconds, raise_fd_limit, rss_bytes
from tests.kit.processes import ApiProcess, api_processes

TENANTS = 10
CONVERSATIONS_PER_TENANT = 5
SOCKETS_PER_CONVERSATION = 20  # 10 x 5 x 20 = 1,000 sockets
MESSAGES = 240
RATE = 30.0  # webhooks per second: 8 s of load; each one is 20 room frames + 100 inbox frames
DROP_AFTER = 60  # acks: the sockets are dropped 2 s into the load


async def _sockets_on_server(api: ApiProcess, tokens: list[str]) -> list[int]:
    """Each organisation's open sockets on the process, as /websocket/info reports them to its agents."""
    async with httpx.AsyncClient(base_url=api.base_url, timeout=10.0, trust_env=False) as http:
        counts = []
        for token in tokens:
            info = await http.get(
                "/api/whatsapp-optimized/websocket/info", headers={"Authorization": f"Bearer {token}"}
            )
            counts.append(int(info.json()["process"]["connections"]))
        return counts


async def test_a_thousand_sockets_dropped_at_once_all_catch_up_without_duplicates_or_gaps(
    settings: Settings, session: AsyncSession
) -> None:
    started = time.monotonic()
    sockets = TENANTS * CONVERSATIONS_PER_TENANT * SOCKETS_PER_CONVERSATION
    raise_fd_limit(2 * sockets + 1000)
    # 100 sockets share each organisation's token here (20 per conversation): above the per-agent cap.
    env = env_for(settings, WS_CATCH_UP_SECONDS="1", WS_MAX_SOCKETS_PER_AGENT=str(sockets))
    with api_processes(1, env) as (api,):
        tenants: list[Tenant] = [await create_tenant(session) for _ in range(TENANTS)]
        instances = [t.instance(GATEWAY) for t in tenants]
        chats = [[f"5541{t:02d}{c:06d}" for c in range(CONVERSATIONS_PER_TENANT)] for t in range(TENANTS)]
        seeds = [
            h
            for t in range(TENANTS)
            for h in text_webhooks(instances[t], chats[t], len(chats[t]), f"seed{t}")
        ]
        await Gateway(api).deliver(seeds)
        truth = await read_truth(settings.db.url, [i.id for i in instances])
        tokens = [await login_token(api.base_url, t.agent.email, PASSWORD) for t in tenants]

        followers = [
            Follower(api, tokens[t], [truth.conversation_of_chat[chat]])
            for t in range(TENANTS)
            for chat in chats[t]
            for _ in range(SOCKETS_PER_CONVERSATION)
        ]
        try:
            connecting, cpu = time.monotonic(), (cpu_seconds(api.pid), cpu_seconds(os.getpid()))
            await start_followers(followers, concurrency=100)
            await wait_caught_up(followers, truth, timeout=30)  # each has replayed its seed (seq 1)
            first_connect = {
                "s": round(time.monotonic() - connecting, 1),
                "server_cpu_s": round(cpu_seconds(api.pid) - cpu[0], 1),
                "clients_cpu_s": round(cpu_seconds(os.getpid()) - cpu[1], 1),
            }

            per_tenant = [
                text_webhooks(instances[t], chats[t], MESSAGES // TENANTS, f"load{t}") for t in range(TENANTS)
            ]
            load = [hook for group in zip(*per_tenant, strict=True) for hook in group]  # interleaved
            gateway = Gateway(api, senders=4, rate=RATE)
            storm: dict[str, float] = {}

            async def drop_everyone() -> None:
                await eventually(lambda: gateway.acked >= DROP_AFTER, lambda: "load under way", 30)
                storm["acked_before"] = gateway.acked
                storm["dropped_at"] = time.monotonic()
                storm["server_cpu_s"], storm["clients_cpu_s"] = cpu_seconds(api.pid), cpu_seconds(os.getpid())
                for follower in followers:  # all in one go: nothing runs in between
                    follower.drop()
                await eventually(
                    lambda: (
                        all(f.stats.connects == 2 for f in followers)
                        and all(r.replays_done >= 2 for f in followers for r in f.rooms.values())
                    ),
                    lambda: f"{sum(f.stats.connects == 2 for f in followers)}/{sockets} back",
                    timeout=40,
                )
                storm["back_s"] = time.monotonic() - storm["dropped_at"]
                storm["server_cpu_s"] = cpu_seconds(api.pid) - storm["server_cpu_s"]
                storm["clients_cpu_s"] = cpu_seconds(os.getpid()) - storm["clients_cpu_s"]
                storm["acked_during"] = gateway.acked - storm["acked_before"]

            await asyncio.gather(gateway.deliver(load), drop_everyone())

            truth = await read_truth(settings.db.url, [i.id for i in instances])
            sent = gateway_counts(load, gateway)
            stored = postgres_counts(truth, seeds + load)
            await wait_caught_up(followers, truth, timeout=30)
            await asyncio.sleep(1.0)
            delivered = follower_counts(followers, truth)
            deadline = time.monotonic() + 10
            while (server_sockets := await _sockets_on_server(api, tokens)) != [sockets // TENANTS] * TENANTS:
                assert time.monotonic() < deadline, f"sockets on the server: {server_sockets}"
                await asyncio.sleep(0.2)
            report(
                "reconnect_storm",
                fault=f"{sockets} sockets cut (RST) at once after {int(storm['acked_before'])}/{MESSAGES} "
                "acks, all reconnecting at once with after_seq",
                first_connect=first_connect,
                storm={
                    "all_back_and_replayed_s": round(storm["back_s"], 1),
                    "server_cpu_s": round(storm["server_cpu_s"], 1),
                    "clients_and_gateway_cpu_s": round(storm["clients_cpu_s"], 1),
                    "webhooks_acked_meanwhile": int(storm["acked_during"]),
                },
                webhooks=sent,
                postgres=stored,
                sockets=delivered,
                sockets_on_server_after=sum(server_sockets),
                api_rss_mib=round(rss_bytes(api.pid) / MiB, 1),
                runtime_s=round(time.monotonic() - started, 1),
            )

            assert sent["acked"] == MESSAGES
            assert_persisted_exactly_once(stored, sent=len(seeds) + MESSAGES)
            assert_exactly_once_in_order(delivered)
            assert delivered["reconnects"] == delivered["clients"] == sockets, delivered  # each dropped once
        finally:
            await close_followers(followers)


async def _queries_waiting_for_media(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval(
        "SELECT count(*) FROM pg_locks WHERE relation = 'media'::regclass AND NOT granted"
    )
    return count


async def test_a_resubscribe_while_a_catch_up_fill_runs_gets_each_message_once(
    settings: Settings, session: AsyncSession, engine: AsyncEngine
) -> None:
    """The storm's duplicates, one at a time and deterministically. Replays are slow when the database is
    busy; here a lock on `media` (which every replay query joins and text ingest never touches) holds them.
    A message is committed without a publish (a process killed after its commit), the periodic catch-up
    starts filling the socket's room and waits on the lock; the client then subscribes to the room again
    with after_seq = the last seq it has (1) — the same thing a reconnecting or resyncing client does.
    When the lock goes, the room must get seq 2 once, then replay.done."""
    with api_processes(1, env_for(settings, WS_CATCH_UP_SECONDS="1")) as (api,):
        tenant = await create_tenant(session)
        instance = tenant.instance(GATEWAY)
        seeds = text_webhooks(instance, ["5542000000001"], 1, "seed")
        await Gateway(api).deliver(seeds)
        cid = (await read_truth(settings.db.url, [instance.id])).conversation_of_chat["5542000000001"]
        token = await login_token(api.base_url, tenant.agent.email, PASSWORD)
        follower = Follower(api, token, [cid])
        locker = await asyncpg.connect(plain_dsn(settings.db.url))
        try:
            await start_followers([follower])
            room = follower.rooms[cid]
            await eventually(lambda: room.replays_done == 1, lambda: str(room.trail), 10)

            locking = locker.transaction()
            await locking.start()
            await locker.execute("LOCK TABLE media IN ACCESS EXCLUSIVE MODE")
            async with async_sessionmaker(engine, expire_on_commit=False)() as writer:
                await IngestService(writer).apply(
                    org_id=tenant.org_id,
                    instance_id=instance.id,
                    events=[
                        text_message("5542000000001", "committed, not published", gateway_message_id="M2")
                    ],
                )
                await writer.commit()
            waiting = 0

            async def waiting_is(n: int) -> bool:
                nonlocal waiting
                waiting = await _queries_waiting_for_media(locker)
                return waiting == n

            deadline = time.monotonic() + 10
            while not await waiting_is(1):  # the catch-up fill, held by the lock
                assert time.monotonic() < deadline, f"{waiting} API queries waiting for the lock"
                await asyncio.sleep(0.05)
            follower.resubscribe(cid)
            while not await waiting_is(2):  # and the new subscription's replay
                assert time.monotonic() < deadline, f"{waiting} API queries waiting for the lock"
                await asyncio.sleep(0.05)
            await locking.rollback()

            await eventually(
                lambda: room.last == 2 and room.trail[-1] == "done2", lambda: str(room.trail), 10
            )
            await asyncio.sleep(1.0)  # a duplicate would arrive now
            report(
                "resubscribe_during_fill",
                fault="catch-up fill held by a lock on media while the client subscribes again (after_seq=1)",
                trail=" ".join(room.trail),
                duplicates=room.duplicates,
            )
            assert room.trail == ["s0", "1", "done1", "s1", "2", "done2"], room.trail
        finally:
            await locker.close()
            await close_followers([follower])


@pytest.mark.parametrize("replay_reads", [1, 2])
async def test_a_storm_of_held_replays_waits_its_turn_and_every_webhook_still_commits(
    settings: Settings, session: AsyncSession, replay_reads: int
) -> None:
    """A pool of 4 connections and 24 sockets reconnecting at once with after_seq, their replays held by a
    lock on `media` (every replay query joins it; text ingest never touches it). Without the limit the
    held replays would take all 4 connections and every webhook would wait out the pool timeout (503).
    With it, exactly `replay_reads` replays hold a connection and wait on the lock, the others wait in
    line in the process, and webhooks posted meanwhile are answered 200 on their first attempt. When the
    lock goes, every socket gets every message once and in order, those posted during the storm too."""
    # One agent's 24 sockets: the per-agent socket cap and share of the reads are lifted to the process's.
    env = env_for(
        settings,
        DB_POOL_SIZE="4",
        DB_MAX_OVERFLOW="0",
        WS_REPLAY_CONCURRENCY=str(replay_reads),
        WS_REPLAY_CONCURRENCY_PER_AGENT=str(replay_reads),
        WS_MAX_SOCKETS_PER_AGENT="24",
    )
    with api_processes(1, env) as (api,):
        tenant = await create_tenant(session)
        instance = tenant.instance(GATEWAY)
        chats = [f"55430000000{c:02d}" for c in range(4)]
        seeds = text_webhooks(instance, chats, len(chats), "seed")
        await Gateway(api).deliver(seeds)
        truth = await read_truth(settings.db.url, [instance.id])
        token = await login_token(api.base_url, tenant.agent.email, PASSWORD)
        followers = [
            Follower(api, token, [truth.conversation_of_chat[chat]]) for chat in chats for _ in range(6)
        ]
        locker = await asyncpg.connect(plain_dsn(settings.db.url))
        try:
            await start_followers(followers)
            await wait_caught_up(followers, truth, timeout=30)
            locking = locker.transaction()
            await locking.start()
            await locker.execute("LOCK TABLE media IN ACCESS EXCLUSIVE MODE")

            for follower in followers:
                follower.drop()
            await eventually(
                lambda: all(f.stats.connects == 2 for f in followers),
                lambda: f"{sum(f.stats.connects == 2 for f in followers)}/{len(followers)} back",
                timeout=30,
            )
            deadline = time.monotonic() + 15
            while await _queries_waiting_for_media(locker) < replay_reads:  # the storm's replays, held
                assert time.monotonic() < deadline, "the replays never reached the lock"
                await asyncio.sleep(0.05)

            load = text_webhooks(instance, chats, 12, "storm")
            async with httpx.AsyncClient(base_url=api.base_url, timeout=30.0, trust_env=False) as http:
                answers = await asyncio.gather(
                    *(http.post(hook.path, content=hook.body, headers=hook.headers) for hook in load)
                )
            held = await _queries_waiting_for_media(locker)  # still the storm: nothing was released
            await locking.rollback()

            truth = await read_truth(settings.db.url, [instance.id])
            await wait_caught_up(followers, truth, timeout=60)
            await asyncio.sleep(1.0)  # a duplicate would arrive now
            delivered = follower_counts(followers, truth)
            report(
                "replay_storm_bounded",
                fault=f"{len(followers)} sockets reconnecting with after_seq while every replay is held "
                f"(pool 4, WS_REPLAY_CONCURRENCY={replay_reads})",
                replays_holding_a_connection=held,
                webhook_statuses=sorted({r.status_code for r in answers}),
                sockets=delivered,
            )
            assert [r.status_code for r in answers] == [200] * len(load), [r.text for r in answers]
            assert held == replay_reads
            assert_persisted_exactly_once(postgres_counts(truth, seeds + load), sent=len(seeds) + len(load))
            assert_exactly_once_in_order(delivered)
            assert delivered["reconnects"] == delivered["clients"] == len(followers), delivered
        finally:
            await locker.close()
            await close_followers(followers)
