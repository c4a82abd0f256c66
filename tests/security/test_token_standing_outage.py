"""A process that cannot ask Postgres about a token it has never verified refuses it (issue 12, finding 4).

The attack: an agent is deleted (the running API refuses the token at once), then a fresh API process is
started while Postgres is unreachable. That process has heard no revocation, so deciding "with the
revocations heard" let the deleted agent's unexpired token read the inbox (200, the page was in Redis) and
`websocket/info`, and open /ws. Now a token whose standing cannot be read is answered 503 + Retry-After on
REST (through Litestar and the fast path alike) and its socket closed with 1013 (try again later): not 401,
since the token may well be fine once Postgres answers.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.config import Settings
from app.db.models import Agent
from tests.kit.data import env_for
from tests.kit.processes import ApiProcess, api_processes
from tests.security.support import API, INBOX, Orgs, bearer, history, valid_token, ws_outcome

CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_UNAUTHORIZED = 4401


@pytest.fixture
def dead_postgres_url() -> Iterator[str]:
    """A loopback port bound but never listening: every connection to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{sock.getsockname()[1]}/postgres"


def _get(process: ApiProcess, path: str, token: str) -> httpx.Response:
    with httpx.Client(base_url=process.base_url, timeout=10.0, trust_env=False) as http:
        return http.get(path, headers=bearer(token))


async def test_a_process_without_postgres_refuses_tokens_it_never_verified(
    world: Orgs, settings: Settings, engine: AsyncEngine, dead_postgres_url: str
) -> None:
    deleted = valid_token(settings, world.a.tenant)  # an agent about to be deleted
    bystander = valid_token(settings, world.b.tenant)  # an agent in good standing
    paths = [INBOX, history(world.a.conversation_id), f"{API}/websocket/info"]

    with api_processes(1, env_for(settings)) as (running,):
        for path in paths[:2]:  # the pages are now in Redis, where a fresh process would find them
            assert _get(running, path, deleted).status_code == 200
        async with async_sessionmaker(engine)() as session:
            await session.execute(Agent.__table__.delete().where(Agent.id == world.a.tenant.agent.id))
            await session.commit()
        assert _get(running, INBOX, deleted).status_code == 401  # Postgres up: refused at once

    with api_processes(1, env_for(settings, DATABASE_URL=dead_postgres_url, DB_LISTEN_URL="")) as (fresh,):
        answers = []
        for token in (deleted, bystander):
            for path in paths * 2:  # twice: the second would be the fast path's, had the first verified it
                started = time.perf_counter()
                response = _get(fresh, path, token)
                answers.append((path, response.status_code, time.perf_counter() - started))
                assert response.status_code == 503, (path, response.status_code, response.text[:300])
                assert response.headers["retry-after"].isdigit()
                assert response.headers["content-type"].startswith("application/problem+json")
                assert world.a.marker not in response.text and world.b.marker not in response.text
        deleted_ws = await ws_outcome(fresh.ws_url, deleted)
        bystander_ws = await ws_outcome(fresh.ws_url, bystander)
        slowest_ms = max(t for *_, t in answers) * 1000
        print(
            f"fresh process, Postgres unreachable: {len(answers)} REST answers "
            f"{sorted({code for _, code, _ in answers})}, slowest {slowest_ms:.0f} ms; "
            f"/ws close codes {deleted_ws[1]} (deleted agent), {bystander_ws[1]} (agent in good standing)"
        )
        assert deleted_ws == ([], CLOSE_TRY_AGAIN_LATER)
        assert bystander_ws == ([], CLOSE_TRY_AGAIN_LATER)
        assert slowest_ms < 5000  # a refused connection fails fast, it does not hang
        logs = fresh.logs()
        assert deleted not in logs and bystander not in logs
