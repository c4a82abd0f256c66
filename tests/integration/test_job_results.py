"""A failed job's result is stored (issue 14): arq stores the exception a job raised as its result, which
msgpack cannot encode (`TypeError: Encoding objects of type ProgrammingError is unsupported`), so no
result was kept at all. Run by a real arq worker on the test's Redis, with a real Postgres error."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import msgspec
import pytest
from arq import ArqRedis, Worker, create_pool, func
from arq.connections import RedisSettings
from arq.jobs import SerializationError
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app.lib.jobs import deserialize_job, serialize_job
from app.workers.settings import MediaWorkerSettings, WorkerSettings


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[tuple[ArqRedis, str]]:
    name = f"crm-test-results-{uuid4().hex[:8]}"
    pool = await create_pool(
        RedisSettings.from_dsn(redis_url),
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        default_queue_name=name,
    )
    yield pool, name
    keys = [key async for key in pool.scan_iter(match="arq:*")]
    mine = [key for key in keys if b"query-missing-table" in key]
    if mine:
        await pool.delete(*mine)
    await pool.delete(name)
    await pool.aclose()


async def test_a_job_failing_with_a_database_error_has_its_failure_stored_as_text(
    queue: tuple[ArqRedis, str], engine: AsyncEngine, redis_url: str
) -> None:
    async def query_missing_table(ctx: dict[str, Any]) -> None:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT * FROM no_such_table_for_job_results"))

    pool, name = queue
    worker = Worker(
        functions=[func(query_missing_table, name="query_missing_table", max_tries=1)],
        redis_settings=RedisSettings.from_dsn(redis_url),
        queue_name=name,
        burst=True,
        poll_delay=0.05,
        job_serializer=serialize_job,
        job_deserializer=deserialize_job,
        handle_signals=False,
    )
    job = await pool.enqueue_job("query_missing_table", _job_id=f"query-missing-table-{uuid4()}")
    assert job is not None
    try:
        await worker.main()
    finally:
        await worker.close()
    assert (worker.jobs_complete, worker.jobs_failed) == (0, 1)

    info = await job.result_info()
    assert info is not None and info.success is False  # stored: before, arq logged and kept nothing
    assert isinstance(info.result, str)
    assert info.result.startswith("sqlalchemy.exc.ProgrammingError:")
    assert 'relation "no_such_table_for_job_results" does not exist' in info.result
    with pytest.raises(SerializationError, match="ProgrammingError"):
        await job.result(timeout=5)


def test_anything_else_msgpack_cannot_encode_still_fails_loudly() -> None:
    with pytest.raises(TypeError):
        serialize_job({"r": object()})


def test_both_workers_store_results_with_this_serializer() -> None:
    assert WorkerSettings.job_serializer is serialize_job
    assert MediaWorkerSettings.job_serializer is serialize_job
    assert deserialize_job(serialize_job({"r": ValueError("bad id")}))["r"] == "ValueError: bad id"
    assert msgspec.msgpack.decode(serialize_job({"a": [1, "x"]})) == {"a": [1, "x"]}
