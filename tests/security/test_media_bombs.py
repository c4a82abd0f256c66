"""Decompression bombs against a real media worker (issue 12, finding 9): a 150 KB PNG can decode to 159 MB.

Four highly compressible 6300 x 6300 RGBA PNGs (under the 40 MP limit, made here with Pillow), two sent as
images and two as documents, reach a real `arq app.workers.MediaWorkerSettings` process at once (its
default MEDIA_CONCURRENCY of 4). Before the fix the worker went 693 -> 1,503 MiB peak and kept 1,048 MiB.
What is pinned is what the operator sees in /proc: the worker's peak RSS rises by a bounded amount (the
decode budget lets one such image decode at a time, and no full-size copy is made), it gives the memory
back afterwards, and every file is still stored, thumbnailed within the budget, its message losing nothing.
An image whose decode alone would cost more than the budget is stored as its original, without thumbnail.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import secrets
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from uuid import UUID

from arq import ArqRedis
from PIL import Image
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Direction, Media, MediaState, MessageStatus, MessageType
from app.domain.conversations.ingest import IngestService
from app.domain.gateways.events import InboundMessage, MediaRef
from app.domain.media import processing
from app.domain.media.decode_budget import DecodeBudget
from app.lib.jobs import media_job_id, media_queue_name
from app.workers.media import process_media
from tests.kit.api import eventually
from tests.kit.factories import Tenant, create_tenant
from tests.kit.measure import MiB, RssSampler, cpu_seconds, status_bytes
from tests.kit.media import stored_files
from tests.kit.processes import arq_worker

SIDE = 6300  # 39.7 MP: under MAX_PIXELS, 159 MB as decoded RGBA
PEAK_RISE_LIMIT_MB = 300  # the fix peaks near one decode (~170 MB); before it, ~800 MB and more
KEPT_LIMIT_MB = 64


def bomb_png(color: tuple[int, int, int, int], side: int = SIDE) -> bytes:
    """One flat colour compresses ~1000:1: about 170 KB of PNG for 159 MB of pixels."""
    im = Image.new("RGBA", (side, side), color)
    out = io.BytesIO()
    im.save(out, "PNG", compress_level=9)
    im.close()
    return out.getvalue()


def media_message(data: bytes, kind: MessageType) -> InboundMessage:
    encoded = base64.b64encode(data).decode()
    return InboundMessage(
        gateway_message_id=f"BOMB{secrets.token_hex(8).upper()}",
        chat_id="5511999990000",
        contact_name="Customer",
        direction=Direction.INBOUND,
        type=kind,
        body=None,
        sent_at=datetime.now(UTC),
        status=MessageStatus.RECEIVED,
        media=MediaRef(
            gateway_ref="media-ref",
            mime_type="image/png" if kind is MessageType.IMAGE else "application/octet-stream",
            filename=None if kind is MessageType.IMAGE else "scan.png",
            inline_base64=encoded,
        ),
        raw={},
    )


async def ingest(engine: AsyncEngine, tenant: Tenant, events: list[InboundMessage]) -> list[UUID]:
    """Stored as the webhook stores them; the test enqueues the jobs itself, all at once."""
    instance = tenant.instance("evolution")
    async with async_sessionmaker(engine, expire_on_commit=False)() as writer:
        result = await IngestService(writer).apply(
            org_id=tenant.org_id, instance_id=instance.id, events=events
        )
        await writer.commit()
    ids = [stored.media_id for stored in result.created]
    assert None not in ids and len(ids) == len(events)
    return [media_id for media_id in ids if media_id is not None]


async def enqueue(pool: ArqRedis, settings: Settings, ids: list[UUID]) -> None:
    queue = media_queue_name(settings.redis.key_prefix)
    for media_id in ids:
        await pool.enqueue_job(
            "process_media", str(media_id), _job_id=media_job_id(media_id), _queue_name=queue
        )


async def settled(session: AsyncSession, ids: list[UUID]) -> list[Media]:
    session.expire_all()
    rows = (await session.scalars(select(Media).where(Media.id.in_(ids)))).all()
    return [row for row in rows if row.state is not MediaState.PENDING]


def status_mb(pid: int, field: str) -> float:
    return status_bytes(pid, field) / MiB


async def test_four_png_bombs_as_images_and_documents_stay_within_the_decode_budget(
    session: AsyncSession, engine: AsyncEngine, settings: Settings, arq_pool: ArqRedis, media_dir: Path
):
    assert settings.media.concurrency == 4  # all four at once, as in the finding
    tenant = await create_tenant(session)
    bombs = [bomb_png((40 * i, 200, 255 - 40 * i, 128)) for i in range(4)]
    assert all(len(data) < 200_000 for data in bombs), [len(data) for data in bombs]
    kinds = [MessageType.IMAGE, MessageType.DOCUMENT, MessageType.IMAGE, MessageType.DOCUMENT]
    warm_up = bomb_png((1, 2, 3, 4), side=64)
    [warm_id] = await ingest(engine, tenant, [media_message(warm_up, MessageType.IMAGE)])
    ids = await ingest(
        engine, tenant, [media_message(data, kind) for data, kind in zip(bombs, kinds, strict=True)]
    )

    with arq_worker(settings, "MediaWorkerSettings") as worker:
        pid = worker.process.pid
        # A small image first: Pillow's plugins, the thread pool and the storage are then all loaded.
        await enqueue(arq_pool, settings, [warm_id])

        async def warm() -> bool:
            return len(await settled(session, [warm_id])) == 1

        await eventually(warm, "the warm-up image is processed", timeout=60)
        time.sleep(0.5)
        start = status_mb(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
        cpu_before = time.monotonic(), cpu_seconds(pid)

        with RssSampler(pid, interval_s=0.01) as sampler:
            await enqueue(arq_pool, settings, ids)

            async def done() -> bool:
                return len(await settled(session, ids)) == len(ids)

            await eventually(done, "the four bombs are processed", timeout=120)
            time.sleep(1.0)  # whatever the worker gives back, it gives back at once
        peak = max(status_mb(pid, "VmHWM"), sampler.peak / MiB)
        after = status_mb(pid, "VmRSS")
        wall, cpu = time.monotonic() - cpu_before[0], cpu_seconds(pid) - cpu_before[1]
        print(
            f"\nmedia worker RSS: start {start:.0f} MiB, peak {peak:.0f} MiB (+{peak - start:.0f}), "
            f"after {after:.0f} MiB (+{after - start:.0f}); CPU {cpu / len(ids):.2f} s per image, "
            f"{wall:.1f} s for all four"
        )

    rows = {row.id: row for row in await settled(session, ids)}
    for media_id, data in zip(ids, bombs, strict=True):
        row = rows[media_id]
        # Nothing lost: each message keeps its file, and the budget admits one such decode at a time.
        assert (row.state, row.error, row.content_type) == (MediaState.READY, None, "image/png")
        assert (row.width, row.height, row.size_bytes) == (SIDE, SIDE, len(data))
        assert row.has_thumbnail, "a 159 MB decode fits the default budget: the preview is made"
        sha = processing.sha256_hex(data)
        [thumb] = stored_files(media_dir / "thumbnails", sha)
        with Image.open(thumb) as im:
            assert (im.format, im.size) == ("WEBP", (320, 320))
        assert [path.read_bytes() for path in stored_files(media_dir / "originals", sha)] == [data]
    assert peak - start <= PEAK_RISE_LIMIT_MB, f"peak rose {peak - start:.0f} MiB"
    assert after - start <= KEPT_LIMIT_MB, f"kept {after - start:.0f} MiB after the decodes"


async def test_an_image_whose_decode_alone_exceeds_the_budget_is_stored_without_a_thumbnail(
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    worker_ctx: dict[str, Any],
    media_dir: Path,
):
    data = bomb_png((7, 8, 9, 10), side=4000)  # 61 MiB decoded: over a 32 MiB budget
    assert processing.thumbnail_cost(data) > 32 * 1024 * 1024
    small = dataclasses.replace(
        settings, media=dataclasses.replace(settings.media, decode_budget_bytes=32 << 20)
    )
    ctx = {**worker_ctx, "settings": small, "decode_budget": DecodeBudget(32 << 20)}
    tenant = await create_tenant(session)
    [media_id] = await ingest(engine, tenant, [media_message(data, MessageType.DOCUMENT)])

    assert await process_media(ctx, str(media_id)) == "ready"
    [row] = await settled(session, [media_id])
    # Nothing lost: the file is stored and served as it came; only the preview is skipped, never decoded.
    assert (row.state, row.error, row.content_type, row.width, row.height) == (
        MediaState.READY,
        None,
        "image/png",
        4000,
        4000,
    )
    assert row.has_thumbnail is False
    sha = processing.sha256_hex(data)
    assert [path.read_bytes() for path in stored_files(media_dir / "originals", sha)] == [data]
    assert stored_files(media_dir / "thumbnails", sha) == []
    assert ctx["decode_budget"].in_use == 0
