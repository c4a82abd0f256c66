"""Refusing the tokens of agents deactivated, demoted, moved, renamed, given a new password or deleted.

A token carries its agent's `token_generation` (claim `gen`); migration 0005's triggers raise the agent's
generation whenever what a token claims stops being true, record it in `agent_revocations` and NOTIFY
`crm_token_revocations` — whatever made the change (CLI, API, an UPDATE in psql). A token whose generation
is below its agent's is refused. Each API process:

- keeps the revocations of the last token lifetime in memory (agent → generation), so every request and
  socket is checked with a dict lookup (`refuses`): loaded at start, again every
  `TOKEN_REVOCATION_CHECK_SECONDS` and on every reconnect, and updated at once by the notifications (one
  LISTEN connection per process, outside the pool);
- asks Postgres for the agent's standing the first time it sees a token (`admits`: one indexed read, after
  which VerifiedTokens remembers the token), so a revocation committed a moment ago counts even if its
  notification is still on its way;
- on hearing a revocation, calls back (the Hub closes that agent's sockets with 4401).

With Postgres unreachable, `admits` raises StandingUnavailable: a token this process has never verified is
refused for now (503 / close 1013 — it may be fine), while the tokens it verified before keep working with the
revocations heard. Deciding a new token "with the revocations heard" failed open (issue 12, finding 4): a
process started during an outage has heard none, so a deleted agent's unexpired token read the inbox from the
Redis page cache. Sharing revocations in Redis instead would only move the question — a Redis restart or
flush forgets them, and a process that cannot reach Postgres cannot know Redis is complete — whereas
refusing costs little: uncached reads need Postgres anyway, and a client retries after Retry-After.
Rows older than the token lifetime are not loaded: every token issued before them has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import asyncpg
import structlog
from sqlalchemy import select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from app.db.models import DELETED_GENERATION, Agent

log = structlog.get_logger()

CHANNEL = "crm_token_revocations"
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)
_RECENT = (
    "SELECT agent_id, generation FROM agent_revocations WHERE revoked_at > now() - make_interval(secs => $1)"
)

Revoked = Callable[[UUID, int], None]


class StandingUnavailable(Exception):
    """Postgres could not say whether the agent still stands: the token is neither admitted nor refused."""


def asyncpg_dsn(sqlalchemy_url: str) -> str:
    """The same database as a plain libpq URL, for a connection of asyncpg's own."""
    return make_url(sqlalchemy_url).set(drivername="postgresql").render_as_string(hide_password=False)


class TokenRevocations:
    def __init__(
        self,
        engine: AsyncEngine,
        listen_dsn: str,
        *,
        token_ttl_s: float,
        check_interval_s: float,
        standing_reads: int = 1,
        statement_cache_size: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._dsn = listen_dsn
        self._ttl_s = token_ttl_s
        self._check_interval_s = check_interval_s
        self._statement_cache_size = statement_cache_size
        self._clock = clock
        self._generations: dict[UUID, tuple[int, float]] = {}  # agent → (lowest valid generation, noted at)
        self._callbacks: list[Revoked] = []
        # After a deploy every reconnecting socket brings a token the new process has not seen: those
        # standing reads wait their turn here instead of taking the pool webhooks commit through.
        self._standing_reads = asyncio.Semaphore(max(1, standing_reads))
        self.loaded = asyncio.Event()

    def on_revoked(self, callback: Revoked) -> None:
        self._callbacks.append(callback)

    def refuses(self, agent_id: UUID, generation: int) -> bool:
        """True if a token of this generation was revoked (as far as this process has heard)."""
        known = self._generations.get(agent_id)
        return known is not None and known[0] > generation

    async def admits(self, agent_id: UUID, generation: int) -> bool:
        """The authoritative check for a token seen for the first time: the agent exists, is active and has
        not moved past this generation. StandingUnavailable when the database cannot be asked."""
        try:
            async with self._standing_reads, self._engine.connect() as connection:
                standing = (
                    await connection.execute(
                        select(Agent.token_generation, Agent.is_active).where(Agent.id == agent_id)
                    )
                ).one_or_none()
        except (SQLAlchemyError, OSError, TimeoutError) as exc:
            log.warning(
                "token standing unavailable, refusing a token not verified before", error=type(exc).__name__
            )
            raise StandingUnavailable from exc
        if standing is None:
            self.note(agent_id, DELETED_GENERATION)
            return False
        self.note(agent_id, standing.token_generation)
        return bool(standing.is_active) and not self.refuses(agent_id, generation)

    def note(self, agent_id: UUID, generation: int) -> None:
        """Record what the database says; a generation higher than known is a revocation to act on."""
        known = self._generations.get(agent_id)
        if (known[0] if known is not None else 0) >= generation:
            return  # nothing new (an agent never revoked is not even stored)
        self._generations[agent_id] = (generation, self._clock())
        for callback in self._callbacks:
            try:
                callback(agent_id, generation)
            except Exception:  # one failing callback must not keep the others from closing sockets
                log.exception("token revocation callback failed", agent_id=str(agent_id))

    # -- listening ------------------------------------------------------------------------------
    async def run(self) -> None:
        """Listen for revocations for the life of the process, reconnecting with backoff."""
        attempt = 0
        while True:
            try:
                connection: asyncpg.Connection[Any] = await asyncpg.connect(
                    self._dsn, timeout=5, **self._connect_options()
                )
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                attempt = await self._back_off(attempt, exc)
                continue
            try:
                await self._listen(connection)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                attempt = await self._back_off(attempt, exc)
            else:
                attempt = 0
            finally:
                connection.terminate()

    async def _listen(self, connection: asyncpg.Connection[Any]) -> None:
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        await connection.add_listener(CHANNEL, self._on_notification)
        while not lost.is_set():
            # After LISTEN, so a revocation committed from here on is either in this read or notified.
            await self._reload(connection)
            self.loaded.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(lost.wait(), self._check_interval_s)

    async def _reload(self, connection: asyncpg.Connection[Any]) -> None:
        rows = await connection.fetch(_RECENT, self._ttl_s)
        current = {row["agent_id"]: row["generation"] for row in rows}
        for agent_id, generation in current.items():
            self.note(agent_id, generation)
        # Forget what is neither in the table's recent rows nor learnt within a token lifetime.
        horizon = self._clock() - self._ttl_s
        for agent_id in [a for a, (_, at) in self._generations.items() if a not in current and at < horizon]:
            del self._generations[agent_id]

    def _on_notification(self, _connection: object, _pid: int, _channel: str, payload: object) -> None:
        try:
            raw_id, raw_generation = str(payload).split(" ")
            self.note(UUID(raw_id), int(raw_generation))
        except ValueError:
            log.warning("malformed token revocation notification ignored")

    def _connect_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"server_settings": {"application_name": "whatsapp-crm-revocations"}}
        if self._statement_cache_size is not None:
            options["statement_cache_size"] = self._statement_cache_size
        return options

    async def _back_off(self, attempt: int, exc: BaseException) -> int:
        delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
        log.warning("token revocation listener lost", error=type(exc).__name__, retry_in_s=delay)
        await asyncio.sleep(delay)
        return attempt + 1
