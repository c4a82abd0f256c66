"""`GET /api/whatsapp-optimized/stats`: an org admin sees their organisation's figures; a deployment admin
(DEPLOYMENT_ADMINS) also the deployment's — every API process's sockets, cache layers and ingest, the worker
queues — and the answering process's own. Agents get 403, anonymous callers 401."""

from __future__ import annotations

from typing import Any

from litestar import Controller, get
from litestar.di import NamedDependency

from app.config import Settings
from app.domain.accounts.auth import AgentRequest, requires_admin
from app.domain.stats.process import ProcessSnapshots
from app.domain.stats.service import (
    deployment_figures,
    message_and_media_figures,
    queue_figures,
    redis_layer_report,
)
from app.lib.deps import DbSession, RedisClient
from app.lib.openapi import problems
from app.lib.schema import Schema


class Stats(Schema):
    scope: str  # "organisation" or "deployment"
    organisation: dict[str, Any]
    deployment: dict[str, Any] | None = None
    process: dict[str, Any] | None = None  # the process that answered
    cache_redis: dict[str, int] | None = None  # the last expire_cache report: pages kept/removed, bytes


def is_deployment_admin(email: str, settings: Settings) -> bool:
    """An entry is an email, or `@domain` for every admin of that domain."""
    email = email.lower()
    domain = "@" + email.rpartition("@")[2]
    return any(entry in (email, domain) for entry in settings.auth.deployment_admins)


class StatsController(Controller):
    path = "/api/whatsapp-optimized"
    tags = ["stats"]
    guards = [requires_admin]

    @get(
        "/stats",
        summary="Your organisation's figures; the deployment's for deployment admins",
        responses=problems((403, "Only admins see figures"), 503),
    )
    async def stats(
        self,
        request: AgentRequest,
        db_session: DbSession,
        redis: RedisClient,
        settings: NamedDependency[Settings],
        snapshots: NamedDependency[ProcessSnapshots],
    ) -> Stats:
        org_id = request.user.org_id
        processes = await snapshots.collect()
        organisation = await message_and_media_figures(db_session, org_id)
        sockets = [p["websocket"]["by_organisation"].get(str(org_id), {}) for p in processes]
        organisation["websocket"] = {
            "connections": sum(s.get("connections", 0) for s in sockets),
            "users": sum(s.get("users", 0) for s in sockets),
        }
        if not is_deployment_admin(request.user.email, settings):
            return Stats(scope="organisation", organisation=organisation)
        deployment = deployment_figures(processes)
        deployment.update(await message_and_media_figures(db_session, None))
        deployment["queues"] = await queue_figures(redis, settings.redis.key_prefix)
        return Stats(
            scope="deployment",
            organisation=organisation,
            deployment=deployment,
            process=processes[0],
            cache_redis=await redis_layer_report(redis, snapshots.cache_keys),
        )
