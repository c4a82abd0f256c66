"""The figures behind /stats: an org's own from Postgres, and the deployment's from every process's snapshot,
the worker queues and Postgres. Org admins get the first; deployment admins (DEPLOYMENT_ADMINS) both."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, cast
from uuid import UUID

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Media, MediaState, Message
from app.domain.conversations.cache import CacheKeys
from app.lib.jobs import media_queue_name, queue_name

_NUMBERS = (int, float)


def _sum_numbers(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise sum of numeric leaves (nested dicts summed recursively; other values dropped)."""
    total: dict[str, Any] = {}
    for item in items:
        for key, value in item.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, _NUMBERS):
                total[key] = total.get(key, 0) + value
            elif isinstance(value, dict):
                total[key] = _sum_numbers([total.get(key, {}), value])
    return total


def deployment_figures(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    sockets = [{k: v for k, v in s["websocket"].items() if k != "by_organisation"} for s in snapshots]
    websocket = _sum_numbers(sockets)
    # Every process hears every message; the notifications are what all of them handed to sockets.
    routed = max((s["messages_routed"] for s in sockets), default=0)
    websocket["messages_routed"] = routed
    websocket["notifications_per_message"] = (
        round(websocket.get("notifications", 0) / routed, 2) if routed else None
    )
    cache = _sum_numbers([s["cache"] for s in snapshots])
    for layer in ("memory", "redis"):
        figures = cache.get(layer, {})
        lookups = figures.get("hits", 0) + figures.get("misses", 0)
        figures["hit_ratio"] = round(figures.get("hits", 0) / lookups, 4) if lookups else None
    cache.get("memory", {}).pop("max_bytes", None)
    ingest = _sum_numbers(
        [{k: v for k, v in s["ingest"].items() if k != "transaction_ms"} for s in snapshots]
    )
    ingest["transaction_ms_per_process"] = {s["process"]: s["ingest"]["transaction_ms"] for s in snapshots}
    return {
        "processes": [s["process"] for s in snapshots],
        "websocket": websocket,
        "cache": cache,
        "ingest": ingest,
        "database_statements": sum(s["database_statements"] for s in snapshots),
    }


async def message_and_media_figures(session: AsyncSession, org_id: UUID | None) -> dict[str, Any]:
    """Outbound by status, messages by direction, media by state with bytes stored; one org or all."""
    messages = select(Message.direction, Message.status, func.count()).group_by(
        Message.direction, Message.status
    )
    media = select(Media.state, func.count(), func.coalesce(func.sum(Media.size_bytes), 0)).group_by(
        Media.state
    )
    if org_id is not None:
        messages = messages.where(Message.org_id == org_id)
        media = media.where(Media.org_id == org_id)
    by_direction: dict[str, int] = {}
    outbound: dict[str, int] = {}
    for direction, status, count in (await session.execute(messages)).all():
        by_direction[direction.value] = by_direction.get(direction.value, 0) + count
        if direction.value == "outbound":
            outbound[status.value] = count
    media_counts = {state.value: 0 for state in MediaState}
    bytes_stored = 0
    for state, count, size in (await session.execute(media)).all():
        media_counts[state.value] = count
        if state is MediaState.READY:
            bytes_stored = int(size or 0)
    return {
        "messages": {"persisted": sum(by_direction.values()), **by_direction},
        "outbound": outbound,
        "media": {**media_counts, "bytes_stored": bytes_stored},
    }


async def queue_figures(redis: Redis, key_prefix: str) -> dict[str, Any]:
    """Jobs waiting per worker queue and each worker kind's last health check (arq's own key)."""
    figures: dict[str, Any] = {}
    for name, queue in (("default", queue_name(key_prefix)), ("media", media_queue_name(key_prefix))):
        try:
            async with asyncio.timeout(0.5):
                depth = await redis.zcard(queue)
                health = await cast(Awaitable[bytes | None], redis.get(f"{queue}:health-check"))
        except (RedisError, OSError, TimeoutError):
            figures[name] = {"depth": None, "last_health_check": None}
            continue
        figures[name] = {"depth": depth, "last_health_check": health.decode() if health else None}
    return figures


async def redis_layer_report(redis: Redis, keys: CacheKeys) -> dict[str, int]:
    try:
        async with asyncio.timeout(0.5):
            report = await cast(Awaitable[dict[bytes, bytes]], redis.hgetall(keys.l2_report_key()))
    except (RedisError, OSError, TimeoutError):
        return {}
    return {key.decode(): int(value) for key, value in report.items()}
