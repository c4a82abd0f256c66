"""The request's database session is closed as the answer starts (advanced-alchemy's before-send hook). If
Postgres dropped the connection after the handler had its data — shutting down, `pg_terminate_backend` —
that close fails; the answer must still go out as it was, not as a 500 (found by the Postgres-down fault
test, where about one run in four answered a read with 500 while Postgres was stopping)."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar, get
from litestar.di import NamedDependency
from litestar.plugins.problem_details import ProblemDetailsPlugin
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from app.config import Settings
from app.lib.errors import problem_details_config, server_error_handlers
from app.server.core import sqlalchemy_config


async def test_a_connection_dropped_after_the_handler_read_does_not_turn_its_answer_into_a_500(
    settings: Settings,
):
    @get("/probe")
    async def probe(db_session: NamedDependency[AsyncSession]) -> dict[str, int]:
        pid = (await db_session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        # What Postgres does to every backend when it shuts down. An engine of this loop's own: the test
        # client runs the app on another event loop than the fixtures'.
        killer = create_async_engine(settings.db.url)
        try:
            async with killer.connect() as other:
                await other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            await killer.dispose()
        return {"pid": pid}

    plugins = [
        SQLAlchemyPlugin(config=sqlalchemy_config(settings)),
        ProblemDetailsPlugin(problem_details_config),
    ]
    app = Litestar([probe], plugins=plugins, exception_handlers=server_error_handlers)  # type: ignore[arg-type]
    async with AsyncTestClient(app=app) as client:
        first = await client.get("/probe")
        assert first.status_code == 200, first.text
        # The pool threw the dead connection away: the next request gets a live one.
        second = await client.get("/probe")
        assert second.status_code == 200 and second.json()["pid"] != first.json()["pid"]
