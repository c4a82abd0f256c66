"""Postgres stopped under a running API process and started again, with webhooks arriving throughout.

The API runs on a private embedded Postgres (migrated by the real Alembic scripts) that the test stops with
`pg_ctl stop -m fast` and starts again on the same port. While it is down: a webhook is answered 503 with
Retry-After and never a 2xx (README Guarantees 1), a page already in the read cache is still served, an
uncached read is 503, a socket subscribing is told `unavailable` and stays open. Once it is back, without
touching the API: webhooks commit again (the gateway's retries land exactly once), reads are current, and
every socket ends with every message once, in order.

Postgres answers `57P03 cannot connect now` for a moment while it shuts down and starts up; the first test
holds that answer for as long as it needs, with a listener that speaks just enough of the protocol.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Iterator
from uuid import uuid4

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.pool import NullPool

from app.config import Settings
from app.db.models import AgentRole
from app.domain.accounts.auth import TokenIssuer
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
from tests.kit.factories import PASSWORD, AgentFactory, create_tenant
from tests.kit.processes import PrivatePostgres, api_processes, private_postgres

MESSAGES = 150
RATE = 30.0  # about 5 s of load: Postgres stops after 40 acks and stays down DOWN_S
DOWN_S = 2.5


def answer(response: httpx.Response) -> str:
    return described(str(response.status_code), response.headers.get("retry-after"))


def described(status: str, retry_after: str | None) -> str:
    """`503 with Retry-After`, `500 without Retry-After`: what a gateway can act on."""
    return f"{status} {'with' if retry_after else 'without'} Retry-After"


UNAVAILABLE = "503 with Retry-After"


class StartingUpPostgres:
    """A listener that answers every connection as PostgreSQL does while it starts up, shuts down or runs
    crash recovery: SSL refused, then `FATAL 57P03 the database system is starting up`. The real server
    does this only for a moment around a restart; this one does it for as long as a test needs."""

    MESSAGE = b"the database system is starting up"

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self.connections = 0

    async def __aenter__(self) -> StartingUpPostgres:
        self._server = await asyncio.start_server(self._answer, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self._server.sockets[0].getsockname()[1]}/crm"

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                length, code = struct.unpack("!ii", await reader.readexactly(8))
                await reader.readexactly(length - 8)
                if code not in (80877103, 80877104):  # anything but SSLRequest / GSSENCRequest: startup
                    break
                writer.write(b"N")
            fields = b"SFATAL\0VFATAL\0C57P03\0M" + self.MESSAGE + b"\0\0"
            writer.write(b"E" + struct.pack("!i", len(fields) + 4) + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def test_a_database_starting_up_is_503_with_retry_after_not_500(settings: Settings) -> None:
    """What a webhook or an uncached read gets in the moment Postgres answers 57P03 (cannot connect now):
    the database is unavailable, not broken — 503 with Retry-After, so the gateway retries later."""
    async with StartingUpPostgres() as postgres:
        with api_processes(1, env_for(settings, DATABASE_URL=postgres.url)) as (api,):
            agent = AgentFactory.build(org_id=uuid4(), role=AgentRole.AGENT)
            token = TokenIssuer(settings.auth, 600).issue(agent)
            answers: Counter[str] = Counter()
            async with httpx.AsyncClient(base_url=api.base_url, timeout=10, trust_env=False) as http:
                for _ in range(3):
                    webhook = await http.post(f"/api/webhooks/{GATEWAY}/inst-any", content=b"{}")
                    read = await http.get(
                        f"/api/whatsapp-optimized/conversations/{uuid4()}",
                        headers={"Authorization": f"Bearer {token}"},
                    )
                    for kind, response in (("webhook", webhook), ("uncached read", read)):
                        answers[f"{kind}: {answer(response)}"] += 1
            report(
                "postgres_starting_up",
                fault="Postgres answering FATAL 57P03 to every connection",
                connections_answered=postgres.connections,
                answers=dict(answers),
            )
            assert postgres.connections > 0
            assert answers == {f"webhook: {UNAVAILABLE}": 3, f"uncached read: {UNAVAILABLE}": 3}, answers


@pytest.fixture
def postgres() -> Iterator[PrivatePostgres]:
    with private_postgres() as server:
        yield server


async def test_postgres_down_answers_503_serves_cached_pages_and_recovers_by_itself(
    settings: Settings, postgres: PrivatePostgres
) -> None:
    started = time.monotonic()
    engine = create_async_engine(postgres.url, poolclass=NullPool)
    async with async_sessionmaker(engine, expire_on_commit=False)() as session:
        tenant = await create_tenant(session)
    await engine.dispose()
    instance = tenant.instance(GATEWAY)

    env = env_for(
        settings, DATABASE_URL=postgres.url, WS_CATCH_UP_SECONDS="1", CACHE_MEMORY_TTL_SECONDS="600"
    )
    with api_processes(1, env) as (api,):
        quiet, *busy = [f"55319{n:07d}" for n in range(3)]  # the load never writes to `quiet`
        seeds = text_webhooks(instance, [quiet, *busy], 3, "seed")
        await Gateway(api).deliver(seeds)
        truth = await read_truth(postgres.url, [instance.id])
        quiet_id = truth.conversation_of_chat[quiet]
        conversations = list(truth.last_seq)

        token = await login_token(api.base_url, tenant.agent.email, PASSWORD)
        admin = await login_token(api.base_url, tenant.admin.email, PASSWORD)
        reader = Reader(api, token, admin)
        first = Follower(api, token, conversations)  # subscribed before the outage
        late = Follower(api, token, conversations)  # subscribes while Postgres is down
        try:
            await start_followers([first])
            await reader.wait_memory_live()
            await reader.page_from_memory(history_path(quiet_id))
            cached = (await reader.get(history_path(quiet_id))).content

            load = text_webhooks(instance, busy, MESSAGES, "load")
            gateway = Gateway(api, senders=4, rate=RATE)
            window: dict[str, float] = {}
            during: dict[str, object] = {}
            transitions: Counter[str] = Counter()  # uncached reads while Postgres stops and starts

            async def probing(work: Awaitable[None]) -> None:
                """Run `work`, sending uncached reads back to back until it is done: the moments when
                Postgres is shutting down or starting up are short, and these reads land in them."""
                task = asyncio.ensure_future(work)
                while not task.done():
                    transitions[
                        answer(await reader.get(f"/api/whatsapp-optimized/conversations/{quiet_id}"))
                    ] += 1
                await task

            async def stop_postgres_a_while() -> None:
                await eventually(lambda: gateway.acked >= 40, lambda: "40 acked", 30)
                window["acked_before"] = gateway.acked
                window["stopping"] = time.monotonic()
                await probing(asyncio.to_thread(postgres.stop))
                window["down"] = time.monotonic()

                # What the API answers while the database is away (all inside the down window).
                cached_now = await reader.get(history_path(quiet_id))
                during["cached_page"] = (cached_now.status_code, cached_now.content == cached)
                uncached: Counter[str] = Counter()
                for path in (
                    f"/api/whatsapp-optimized/conversations/{quiet_id}",
                    f"{history_path(quiet_id)}?before_seq=2",
                    f"{INBOX}?limit=7",
                ):
                    response = await reader.get(path)
                    uncached[answer(response)] += 1
                during["uncached_reads"] = dict(uncached)
                await start_followers([late])
                await eventually(lambda: late.stats.unavailable > 0, lambda: "late subscribe refused", 10)
                during["late_subscriber_connected"] = late.stats.connects == 1 and late.stats.reconnects == 0

                await asyncio.sleep(max(0.0, window["down"] + DOWN_S - time.monotonic()))
                window["starting"] = time.monotonic()
                await probing(asyncio.to_thread(postgres.start))
                window["up"] = time.monotonic()

            await asyncio.gather(gateway.deliver(load), stop_postgres_a_while())
            while_down = [
                a for a in gateway.attempts if a.started >= window["down"] and a.ended <= window["starting"]
            ]

            truth = await read_truth(postgres.url, [instance.id])
            sent = gateway_counts(load, gateway)
            stored = postgres_counts(truth, seeds + load)
            followers = [first, late]
            await wait_caught_up(followers, truth, timeout=20)
            await asyncio.sleep(1.0)
            delivered = follower_counts(followers, truth)
            after = {
                "busy_history_current": history_matches(
                    await reader.page(history_path(truth.conversation_of_chat[busy[0]])),
                    truth,
                    truth.conversation_of_chat[busy[0]],
                ),
                "quiet_history_current": history_matches(
                    await reader.page(history_path(quiet_id)), truth, quiet_id
                ),
                "inbox_current": inbox_matches(await reader.page(INBOX), truth),
                "uncached_read": (
                    await reader.get(f"/api/whatsapp-optimized/conversations/{quiet_id}")
                ).status_code,
            }
            report(
                "postgres_down",
                fault=f"private Postgres stopped (pg_ctl -m fast) after {int(window['acked_before'])}/"
                f"{MESSAGES} acks, down {window['starting'] - window['down']:.1f} s, "
                "started again on the same port",
                webhooks=sent,
                webhook_answers_while_down=dict(
                    Counter(described(a.outcome, a.retry_after) for a in while_down)
                ),
                while_down=during,
                reads_while_stopping_and_starting=dict(transitions),
                postgres=stored,
                sockets=delivered,
                after_recovery=after,
                runtime_s=round(time.monotonic() - started, 1),
            )

            # While down: 503 + Retry-After to every webhook, never a 2xx.
            assert while_down and all(described(a.outcome, a.retry_after) == UNAVAILABLE for a in while_down)
            assert during["cached_page"] == (200, True), during
            assert during["uncached_reads"] == {UNAVAILABLE: 3}, during
            assert during["late_subscriber_connected"], during
            # Back by itself: every webhook committed once, sockets complete, reads current.
            assert sent["acked"] == MESSAGES
            assert_persisted_exactly_once(stored, sent=3 + MESSAGES)
            assert_exactly_once_in_order(delivered)
            assert after == {
                "busy_history_current": True,
                "quiet_history_current": True,
                "inbox_current": True,
                "uncached_read": 200,
            }, after
            # At any time, also in the moments Postgres was shutting down and starting up (when it answers
            # 57P03 "cannot connect now"): 200, or 503 with Retry-After — never a 500.
            assert set(transitions) <= {"200 without Retry-After", UNAVAILABLE}, transitions
            assert set(sent["outcomes"]) <= {"200", "503"}, sent["outcomes"]
            assert all(a.retry_after for a in gateway.attempts if a.outcome == "503")
        finally:
            await close_followers([first, late])
            await reader.close()
