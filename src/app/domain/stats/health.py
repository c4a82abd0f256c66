"""Liveness and readiness, unauthenticated so load balancers and orchestrators can call them.

Readiness includes the workers: an API whose sends and media would never be processed is not ready.
"""

from __future__ import annotations

from litestar import Controller, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from sqlalchemy import text

from app.config import Settings
from app.lib.deps import DbSession, RedisClient
from app.lib.jobs import media_queue_name, queue_name
from app.lib.schema import Schema


class Health(Schema):
    status: str
    database: str | None = None
    redis: str | None = None
    workers: dict[str, str] | None = None  # per worker kind: "ok" if it reported within its interval


class HealthController(Controller):
    tags = ["health"]

    @get("/health", summary="The process is up")
    async def health(self) -> Health:
        return Health(status="ok")

    @get(
        "/ready",
        summary="Postgres and Redis answer and both workers reported recently; 503 otherwise",
        responses={503: ResponseSpec(Health, description="Not ready: the fields say which part is missing")},
    )
    async def ready(
        self, db_session: DbSession, redis: RedisClient, settings: NamedDependency[Settings]
    ) -> Response[Health]:
        database = redis_state = "ok"
        workers: dict[str, str] = {}
        try:
            await db_session.execute(text("SELECT 1"))
        except Exception:  # any failure means not ready; the reason is in the database's own logs
            database = "unavailable"
        try:
            await redis.ping()
            # arq writes this key every health-check interval with a slightly longer TTL: present = recent.
            prefix = settings.redis.key_prefix
            for kind, queue in (("default", queue_name(prefix)), ("media", media_queue_name(prefix))):
                workers[kind] = (
                    "ok" if await redis.exists(f"{queue}:health-check") else "no recent health check"
                )
        except Exception:
            redis_state = "unavailable"
        ok = database == redis_state == "ok" and all(state == "ok" for state in workers.values())
        return Response(
            Health(
                status="ok" if ok else "unavailable",
                database=database,
                redis=redis_state,
                workers=workers or None,
            ),
            status_code=200 if ok else 503,
        )
