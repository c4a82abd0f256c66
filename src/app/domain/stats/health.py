"""Liveness and readiness, unauthenticated so load balancers and orchestrators can call them."""

from __future__ import annotations

from litestar import Controller, Response, get
from sqlalchemy import text

from app.lib.deps import DbSession, RedisClient
from app.lib.schema import Schema


class Health(Schema):
    status: str
    database: str | None = None
    redis: str | None = None


class HealthController(Controller):
    tags = ["health"]

    @get("/health", summary="The process is up")
    async def health(self) -> Health:
        return Health(status="ok")

    @get("/ready", summary="Postgres and Redis answer; 503 otherwise")
    async def ready(self, db_session: DbSession, redis: RedisClient) -> Response[Health]:
        database = redis_state = "ok"
        try:
            await db_session.execute(text("SELECT 1"))
        except Exception:  # any failure means not ready; the reason is in the database's own logs
            database = "unavailable"
        try:
            await redis.ping()
        except Exception:
            redis_state = "unavailable"
        ok = database == redis_state == "ok"
        return Response(
            Health(status="ok" if ok else "unavailable", database=database, redis=redis_state),
            status_code=200 if ok else 503,
        )
