"""Group commit: the webhooks that arrive together in one process are applied in one transaction (issue 13).

Before, each webhook was its own transaction: a session, BEGIN, one function call per message, COMMIT —
three round trips and SQLAlchemy's per-statement work for one row, so ingest ran at ~0.05x raw asyncpg
INSERTs. Now each verified, parsed webhook is prepared in its own request (batch_rows.prepare) and queued
here. A flight takes whatever is queued (at most `max_requests` webhooks and `max_bytes` of text; a
webhook larger than that goes alone) and sends it as one statement, crm_ingest_batch() (ingest_batch.sql),
on a raw asyncpg connection from the engine's pool. The statement runs in its own implicit transaction:
one round trip, committed before asyncpg returns. While a flight is out the next webhooks gather, so an
idle process adds no wait: a lone webhook is a batch of one.

What each request is told (the guarantees of README "Guarantees"):
- 200 only after the commit that holds its events: every future is resolved after the statement returned;
- its own refusal if Postgres refused its events (the function's per-webhook subtransaction rolled it
  back alone): RequestFailed, which the webhook service maps (deleted instance: 404);
- 503 + Retry-After for every request of a batch whose statement or commit failed (connection lost,
  Postgres down): nothing of it is half-written, the gateway retries and dedupe makes it once;
- a deadlock or serialisation failure is applied again (same order), up to _MAX_ATTEMPTS.

After the commit, and before its requests are answered: one Redis pipeline publishes the whole batch's
envelopes, version bumps and cache invalidations (EventPublisher.publish_batch), then its media jobs are
enqueued. That runs beside the flight, which takes the next batch at once (the connection is what is
scarce), and each batch's publish waits for its predecessor's, so envelopes leave in commit order.

Up to `max_flights` batches (INGEST_BATCH_FLIGHTS) are in flight at once, each on its own connection:
one flight's latency (its statement, Postgres's WAL flush) would otherwise bound a process's throughput.
But a flight beside the one under way takes off only once `extra_flight_at` webhooks are queued: every
batch costs a checkout, a round trip, a commit and a publish whatever its size, so a new flight for each
webhook that found the others busy made batches of one or two and cost ~25% more CPU per webhook, in the
API and in Postgres alike, than batches of what queued meanwhile (measured on compare.sh's load, issue 13).
Concurrent batches, here or in other processes, lock in one order (ingest_batch.sql); a deadlock left
despite it (a webhook naming several chats) is applied again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

import asyncpg
import structlog
from litestar.plugins.problem_details import ProblemDetailsException
from sqlalchemy.ext.asyncio import AsyncEngine

from app.domain.conversations.ingest import IngestResult
from app.domain.gateways.events import GatewayEvent
from app.domain.ingest import batch_rows
from app.domain.ingest.batch_rows import PreparedWebhook, RequestFailed
from app.domain.realtime.events import Envelope, envelopes_for_ingest
from app.domain.realtime.publisher import EventPublisher
from app.lib.errors import DATABASE_RETRY_AFTER_S, is_database_unavailable, problem
from app.lib.jobs import PROCESS_MEDIA, JobQueue, media_job_id

log = structlog.get_logger()

_RETRYABLE_SQLSTATES = {"40P01", "40001"}
_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Applied:
    """A request's committed outcome, and whether its envelopes reached Redis."""

    result: IngestResult
    published: bool


@dataclass(slots=True)
class BatchStats:
    """What this batcher has done since start (the group-commit tests read it to see batches form)."""

    batches: int = 0
    webhooks: int = 0
    largest: int = 0
    retries: int = 0
    failed_batches: int = 0
    execute_s: float = 0.0
    publish_s: float = 0.0


@dataclass(slots=True)
class _Waiting:
    webhook: PreparedWebhook
    future: asyncio.Future[Applied | RequestFailed]


class ConnectionLost(ConnectionError):
    """The batch's connection closed under its statement (Postgres stopped or the network cut): like every
    OSError, the database is unavailable (app.lib.errors), so its requests get 503, not 500."""


def unavailable() -> ProblemDetailsException:
    busy = problem(503, "database unavailable, retry later")
    busy.headers = {"Retry-After": DATABASE_RETRY_AFTER_S}
    return busy


@dataclass
class IngestBatcher:
    engine: AsyncEngine
    publisher: EventPublisher | None = None
    jobs: JobQueue | None = None
    max_requests: int = 64
    max_bytes: int = 8 * 1024 * 1024
    max_flights: int = 4  # batches in flight at once, each on its own connection (INGEST_BATCH_FLIGHTS)
    extra_flight_at: int = 32  # webhooks queued before a flight beside the one under way takes off
    stats: BatchStats = field(default_factory=BatchStats)
    _queue: deque[_Waiting] = field(default_factory=deque, repr=False)
    _flights: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    _after: set[asyncio.Future[None]] = field(default_factory=set, repr=False)
    _publishing: asyncio.Future[None] | None = field(default=None, repr=False)

    async def apply(
        self, org_id: UUID, instance_id: UUID, events: Sequence[GatewayEvent]
    ) -> Applied | RequestFailed:
        """Queue one webhook's events and wait for its batch's commit (and publish)."""
        webhook = batch_rows.prepare(org_id, instance_id, events, datetime.now(UTC))
        if not webhook.rows:  # only ignored events or statuses that never apply: nothing to write
            return Applied(IngestResult(stale_statuses=webhook.stale, ignored=webhook.ignored), True)
        future: asyncio.Future[Applied | RequestFailed] = asyncio.get_running_loop().create_future()
        self._queue.append(_Waiting(webhook, future))
        # Count flights by their state, not the set: a flight that found the queue empty is done at once (no
        # await between its last look and its end), while its done-callback leaves the set only later.
        flying = sum(1 for flight in self._flights if not flight.done())
        if flying == 0 or (flying < self.max_flights and len(self._queue) >= self.extra_flight_at):
            task = asyncio.create_task(self._fly())
            self._flights.add(task)
            task.add_done_callback(self._flights.discard)
        # Not shielded: a request cancelled meanwhile cancels its future, which the flight then leaves alone
        # (it resolves only futures not done); the batch goes on without it.
        return await future

    def _take(self) -> list[_Waiting]:
        batch: list[_Waiting] = []
        size = 0
        while self._queue and len(batch) < self.max_requests:
            nxt = self._queue[0].webhook.size
            if batch and size + nxt > self.max_bytes:
                break
            batch.append(self._queue.popleft())
            size += nxt
        return batch

    async def _fly(self) -> None:
        while self._queue:
            batch = self._take()
            try:
                await self._run(batch)
            except BaseException as exc:  # never leave a request waiting
                for waiting in batch:
                    if not waiting.future.done():
                        waiting.future.set_exception(
                            unavailable() if is_database_unavailable(exc) else problem(500, "internal error")
                        )
                if not isinstance(exc, Exception):
                    raise
                if is_database_unavailable(exc):
                    log.warning("ingest batch failed", error=type(exc).__name__, webhooks=len(batch))
                else:
                    log.error(
                        "ingest batch failed", error=type(exc).__name__, webhooks=len(batch), exc_info=exc
                    )

    async def _run(self, batch: list[_Waiting]) -> None:
        # One lock order for every batch of every process (ingest_batch.sql).
        batch.sort(key=lambda waiting: waiting.webhook.lock_key)
        webhooks = [waiting.webhook for waiting in batch]
        now = datetime.now(UTC)
        arrays = batch_rows.columns(webhooks)
        self.stats.batches += 1
        self.stats.webhooks += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        t0 = time.perf_counter()
        rows = await self._execute(now, arrays)
        self.stats.execute_s += time.perf_counter() - t0
        answers = batch_rows.results(webhooks, rows, now)
        # Committed. The flight takes the next batch at once; publishing and answering go on beside it,
        # each batch's after its predecessor's, so envelopes leave in commit order.
        previous, self._publishing = self._publishing, None
        task = asyncio.ensure_future(self._after_commit(batch, webhooks, answers, previous))
        self._publishing = task
        self._after.add(task)
        task.add_done_callback(self._after.discard)

    async def _after_commit(
        self,
        batch: list[_Waiting],
        webhooks: list[PreparedWebhook],
        answers: list[IngestResult | RequestFailed],
        previous: asyncio.Future[None] | None,
    ) -> None:
        published = False
        try:
            if previous is not None and not previous.done():
                await asyncio.wait([previous])
            started = time.perf_counter()
            published = await self._publish(webhooks, answers)
            await self._enqueue_media(answers)
            self.stats.publish_s += time.perf_counter() - started
        except Exception:  # committed whatever happens here: the requests are answered as stored
            log.exception("ingest batch publish failed; catch-up will deliver")
        finally:
            for waiting, answer in zip(batch, answers, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(
                        answer if isinstance(answer, RequestFailed) else Applied(answer, published)
                    )

    async def _execute(self, now: datetime, arrays: list[list[object]]) -> list[asyncpg.Record]:
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            # The pool's connection record itself (app.lib.driver_sql): one checkout, a no-op checkin, no
            # Connection object around it — a third of engine.connect() + get_raw_connection()'s CPU.
            pooled = await self.engine.raw_connection()
            try:
                driver = pooled.driver_connection
                assert isinstance(driver, asyncpg.Connection)
                try:
                    # No BEGIN: the one statement is its own transaction, committed before this returns.
                    rows: list[asyncpg.Record] = await driver.fetch(batch_rows.INGEST_BATCH, now, *arrays)
                    return rows
                except asyncpg.PostgresError as exc:
                    if exc.sqlstate in _RETRYABLE_SQLSTATES and attempt < _MAX_ATTEMPTS:
                        self.stats.retries += 1
                        log.warning("ingest batch retried", sqlstate=exc.sqlstate, attempt=attempt)
                        continue
                    self.stats.failed_batches += 1
                    if is_database_unavailable(exc):
                        pooled.invalidate(exc)
                    raise
                except BaseException as exc:
                    self.stats.failed_batches += 1
                    closed = driver.is_closed()
                    # Lost mid-statement: the pool must not hand it out again.
                    pooled.invalidate(exc if isinstance(exc, Exception) else None)
                    if closed and isinstance(exc, Exception):
                        # asyncpg's "connection is closed" (an InterfaceError, no SQLSTATE): unavailable
                        raise ConnectionLost(str(exc)) from exc
                    raise
            finally:
                pooled.close()
        raise AssertionError("unreachable")  # pragma: no cover

    async def _publish(
        self, webhooks: list[PreparedWebhook], answers: list[IngestResult | RequestFailed]
    ) -> bool:
        if self.publisher is None:
            return False
        by_org: dict[UUID, list[Envelope]] = {}
        for webhook, answer in zip(webhooks, answers, strict=True):
            if isinstance(answer, IngestResult):
                envelopes = envelopes_for_ingest(answer)
                if envelopes:
                    by_org.setdefault(webhook.org_id, []).extend(envelopes)
        return await self.publisher.publish_batch(by_org)

    async def _enqueue_media(self, answers: list[IngestResult | RequestFailed]) -> None:
        # Media is fetched by the media worker, never here; a job not enqueued is found by its sweep.
        if self.jobs is None:
            return
        for answer in answers:
            if isinstance(answer, IngestResult):
                for stored in answer.created:
                    if stored.media_id is not None:
                        await self.jobs.enqueue(
                            PROCESS_MEDIA,
                            str(stored.media_id),
                            job_id=media_job_id(stored.media_id),
                            queue=self.jobs.media_queue_name,
                        )

    async def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the flights under way (shutdown)."""
        deadline = time.monotonic() + timeout_s
        while (self._flights or self._after) and time.monotonic() < deadline:
            pending = set(self._flights) | set(self._after)
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))
