"""`process_media`: turn a pending media row into a stored file (and, for images, a thumbnail), once.

The database decides what is done (arq may run a job twice, or again after a worker died):
  claim   — pending, and nobody holds a fresh claim: set `processing_since`, count the attempt; commit.
  work    — bytes from the inline copy the webhook carried, else from the gateway (size-limited, SSRF-safe);
            verify the sha256 the gateway stated; detect the real type from the bytes; store the original
            under its own sha256 and the thumbnail under the same hash. Keys come from content alone, so a
            rerun after a crash rewrites the same objects: one object per content, however many times.
  settle  — ready (counting one processing) or failed with a reason, in one UPDATE guarded by `pending`;
            then `media.ready` to the conversation's room (the same frame carries `failed`).
A transient gateway error releases the claim and retries with backoff up to MediaSettings.max_attempts.
Decoding and Pillow run in a thread: a large image must not stall the worker's other jobs. A thumbnail's
decode waits for room in the process's DecodeBudget (MEDIA_DECODE_BUDGET_BYTES, issue 12 finding 9); an
image whose decode alone exceeds it is stored as its original without a thumbnail: the bytes are a valid
image within the size limits, so failing it would take the file from the agent, and a preview is all that
is skipped. The bytes decide, not the message type: a PNG sent as a document gets the same preview, under
the same budget.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import structlog
from arq import Retry
from sqlalchemy import or_, select, update
from sqlalchemy.orm import undefer

from app.db.models import Conversation, GatewayKind, Media, MediaState, Message, WhatsAppInstance
from app.domain.conversations.services import media_out
from app.domain.gateways.media import FetchFailed, FetchTarget, decode_base64_file, fetch_media
from app.domain.media.decode_budget import DecodeBudget
from app.domain.media.processing import (
    Inspected,
    MediaRejected,
    inspect,
    sha256_hex,
    thumbnail_cost,
    thumbnail_webp,
)
from app.domain.media.storage import MediaStorage, original_key, thumbnail_key
from app.domain.realtime.events import media_ready_envelope
from app.lib import metrics
from app.lib.jobs import PROCESS_MEDIA, media_job_id, media_queue_name

log = structlog.get_logger()

# Longer than the job timeout: a claim this old belongs to a worker that died mid-job.
CLAIM_LEASE = timedelta(minutes=5)
_BACKOFF_S = (5, 30, 120, 600)


@dataclass(frozen=True)
class _Claimed:
    media: Media
    instance: WhatsAppInstance
    conversation_id: UUID
    seq: int


async def process_media(ctx: dict[str, Any], media_id: str) -> str:
    claimed = await _claim(ctx, UUID(media_id))
    if isinstance(claimed, str):
        return claimed
    settings = ctx["settings"].media
    try:
        data, expected_sha = await _bytes_of(ctx, claimed, settings.max_bytes)
        sha = await asyncio.to_thread(sha256_hex, data)
        if expected_sha and expected_sha.lower() != sha:
            raise MediaRejected("sha256 does not match what the gateway stated")
        inspected = await asyncio.to_thread(inspect, data, claimed.media.mime_type)
        has_thumbnail = await _store(ctx, sha, data, inspected, settings.thumbnail_px)
    except FetchFailed as exc:
        if exc.retryable and claimed.media.attempts < settings.max_attempts:
            await _release(ctx, claimed.media.id)
            delay = _BACKOFF_S[min(claimed.media.attempts - 1, len(_BACKOFF_S) - 1)]
            log.warning("media fetch failed; retrying", media_id=media_id, reason=exc.reason, in_s=delay)
            raise Retry(defer=delay) from exc
        return await _settle_failed(ctx, claimed, exc.reason)
    except MediaRejected as exc:
        return await _settle_failed(ctx, claimed, exc.reason)
    return await _settle_ready(ctx, claimed, sha, inspected, len(data), has_thumbnail)


async def _claim(ctx: dict[str, Any], media_id: UUID) -> _Claimed | str:
    now = datetime.now(UTC)
    async with ctx["sessionmaker"]() as session:
        claimed = (
            await session.execute(
                update(Media)
                .where(
                    Media.id == media_id,
                    Media.state == MediaState.PENDING,
                    or_(Media.processing_since.is_(None), Media.processing_since < now - CLAIM_LEASE),
                )
                .values(processing_since=now, attempts=Media.attempts + 1)
                .returning(Media.id)
            )
        ).scalar_one_or_none()
        if claimed is None:
            state = await session.scalar(select(Media.state).where(Media.id == media_id))
            await session.rollback()
            return "missing" if state is None else f"nothing to do: {state.value}"
        await session.commit()
        row = (
            await session.execute(
                select(Media, WhatsAppInstance, Message.conversation_id, Message.seq)
                .join(Message, Message.id == Media.message_id)
                .join(Conversation, Conversation.id == Message.conversation_id)
                .join(WhatsAppInstance, WhatsAppInstance.id == Conversation.instance_id)
                .where(Media.id == media_id)
                .options(undefer(Media.inline_base64))
                .execution_options(populate_existing=True)
            )
        ).one()
        return _Claimed(row.Media, row.WhatsAppInstance, row.conversation_id, row.seq)


async def _bytes_of(ctx: dict[str, Any], claimed: _Claimed, max_bytes: int) -> tuple[bytes, str | None]:
    """The file, and the sha256 it must have when the gateway vouches for the bytes we got.

    Cloud API states the hash of exactly what its media URL serves. WPPConnect's and Evolution's hashes
    describe WhatsApp's original, which these gateways may re-encode (Evolution's convertToMp4), so a
    mismatch there would fail good files: their bytes are checked by content (inspect) only.
    """
    inline = claimed.media.inline_base64
    if inline:
        return await asyncio.to_thread(_decode_inline, inline, max_bytes), None
    instance = claimed.instance
    target = FetchTarget(
        gateway=instance.gateway.value,
        instance_name=instance.name,
        api_base_url=instance.api_base_url,
        api_token=instance.api_token,
        gateway_ref=claimed.media.gateway_ref,
    )
    fetched = await fetch_media(ctx["http"], target, max_bytes=max_bytes)
    vouched = claimed.media.sha256 if instance.gateway is GatewayKind.CLOUDAPI else None
    return fetched.data, fetched.sha256 or vouched


def _decode_inline(inline: str, max_bytes: int) -> bytes:
    # Webhooks may wrap their base64 in lines (MIME style); gateway answers are held to the strict form.
    try:
        data, _ = decode_base64_file("".join(inline.split()), max_bytes=max_bytes, gateway="inline copy")
    except FetchFailed as exc:
        raise MediaRejected(exc.reason) from None
    return data


async def _store(ctx: dict[str, Any], sha: str, data: bytes, inspected: Inspected, max_side: int) -> bool:
    """Store the original and, for an image whose decode fits the budget, a thumbnail: whether one exists."""
    # The thumbnail first: decoding the whole image is what finds a truncated JPEG, and a file that fails
    # it must not leave an orphan original behind.
    storage: MediaStorage = ctx["media_storage"]
    thumbnail, has_thumbnail = None, False
    if inspected.kind == "image":
        has_thumbnail = await storage.exists(thumbnail_key(sha))
        if not has_thumbnail:
            thumbnail = await _thumbnail_within(ctx["decode_budget"], sha, data, max_side)
            has_thumbnail = thumbnail is not None
    await storage.put_if_absent(original_key(sha), data)
    if thumbnail is not None:
        await storage.put_if_absent(thumbnail_key(sha), thumbnail)
    return has_thumbnail


async def _thumbnail_within(budget: DecodeBudget, sha: str, data: bytes, max_side: int) -> bytes | None:
    cost = await asyncio.to_thread(thumbnail_cost, data, max_side)
    if not budget.admits(cost):
        log.info("image over the decode budget; stored without thumbnail", sha256=sha, cost=cost)
        return None
    return await budget.run(cost, thumbnail_webp, data, max_side)


async def _release(ctx: dict[str, Any], media_id: UUID) -> None:
    async with ctx["sessionmaker"]() as session:
        await session.execute(update(Media).where(Media.id == media_id).values(processing_since=None))
        await session.commit()


async def _settle_ready(
    ctx: dict[str, Any], claimed: _Claimed, sha: str, inspected: Inspected, size: int, has_thumbnail: bool
) -> str:
    values = {
        "state": MediaState.READY,
        "content_sha256": sha,
        "content_type": inspected.content_type,
        "width": inspected.width,
        "height": inspected.height,
        "has_thumbnail": has_thumbnail,
        "size_bytes": size,
        "inline_base64": None,  # the stored original replaces it
        "error": None,
        "processings": Media.processings + 1,
        "processed_at": datetime.now(UTC),
    }
    return await _settle(ctx, claimed, values, "ready")


async def _settle_failed(ctx: dict[str, Any], claimed: _Claimed, reason: str) -> str:
    log.warning("media failed", media_id=str(claimed.media.id), reason=reason)
    # The inline copy stays: nothing the gateway gave us is thrown away.
    return await _settle(ctx, claimed, {"state": MediaState.FAILED, "error": reason[:500]}, "failed")


async def _settle(ctx: dict[str, Any], claimed: _Claimed, values: dict[str, Any], outcome: str) -> str:
    media_id = claimed.media.id
    async with ctx["sessionmaker"]() as session:
        settled = (
            await session.execute(
                update(Media)
                .where(Media.id == media_id, Media.state == MediaState.PENDING)
                .values(processing_since=None, **values)
                .returning(Media)
            )
        ).scalar_one_or_none()
        await session.commit()
    if settled is None:  # another run settled it first
        return "nothing to do: settled elsewhere"
    envelope = media_ready_envelope(
        claimed.conversation_id, claimed.seq, settled.message_id, media_out(settled)
    )
    await ctx["publisher"].publish(settled.org_id, [envelope])
    metrics.JOBS.labels(PROCESS_MEDIA, outcome).inc()
    log.info("media processed", media_id=str(media_id), outcome=outcome)
    return outcome


async def sweep_pending_media(ctx: dict[str, Any]) -> int:
    """Enqueue media whose job was never enqueued (Redis was down at ingest) or died with its worker."""
    now = datetime.now(UTC)
    async with ctx["sessionmaker"]() as session:
        ids = (
            await session.scalars(
                select(Media.id).where(
                    Media.state == MediaState.PENDING,
                    Media.created_at < now - timedelta(seconds=60),
                    or_(Media.processing_since.is_(None), Media.processing_since < now - CLAIM_LEASE),
                )
            )
        ).all()
    queue = media_queue_name(ctx["settings"].redis.key_prefix)
    for media_id in ids:
        await ctx["redis"].enqueue_job(
            PROCESS_MEDIA, str(media_id), _job_id=media_job_id(media_id), _queue_name=queue
        )
    return len(ids)
