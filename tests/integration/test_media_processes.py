"""The media pipeline with real processes: API servers, a real `arq` media worker process (started, killed
with SIGKILL, replaced), real Postgres, Redis, Pillow and the run's storage directory, and a fake gateway
that is a real local HTTP server. What is pinned is what an agent and the operator see: the thumbnail
arrives on the agent's socket, a worker killed mid-download leaves one object and one processing, the sweep
finds media whose job was never enqueued, and an oversize file fails with a reason and stores nothing."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
from arq import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job
from PIL import Image
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.config import Settings
from app.db.models import Media, MediaState
from app.domain.conversations.ingest import IngestService
from app.domain.media import processing
from app.lib.jobs import deserialize_job, media_job_id, media_queue_name
from app.workers.media import CLAIM_LEASE, process_media, sweep_pending_media
from tests.fake_gateway import FakeGateway, hang, status
from tests.kit.api import eventually, first_conversation, login_token, open_room, post_text
from tests.kit.data import image_message, image_webhook, jpeg, signed_headers
from tests.kit.factories import PASSWORD, Tenant, create_tenant
from tests.kit.ingested import downloadable_image
from tests.kit.media import stored_files
from tests.kit.processes import ApiProcess, arq_worker

GATEWAY = "evolution"
MEDIA_PATH = "/api/whatsapp-optimized/media"


async def media_row(session: AsyncSession, media_id: UUID) -> Media:
    session.expire_all()
    return await session.get_one(Media, media_id)


async def ingest_images(engine: AsyncEngine, tenant: Tenant, images: list[bytes | None]) -> list[UUID]:
    """Image messages stored as the webhook stores them, but with no job enqueued (Redis was down)."""
    instance = tenant.instance(GATEWAY)
    events = [
        image_message(inline_base64=None if data is None else base64.b64encode(data).decode())
        for data in images
    ]
    async with async_sessionmaker(engine, expire_on_commit=False)() as writer:
        result = await IngestService(writer).apply(
            org_id=tenant.org_id, instance_id=instance.id, events=events
        )
        await writer.commit()
    ids = [stored.media_id for stored in result.created]
    assert None not in ids and len(ids) == len(images)
    return [media_id for media_id in ids if media_id is not None]


def noisy_jpeg(width: int, height: int, seed: int) -> bytes:
    """A JPEG that compresses badly (random pixels): large for its size, and unique per seed."""
    pixels = random.Random(seed).randbytes(width * height * 3)
    buffer = io.BytesIO()
    Image.frombytes("RGB", (width, height), pixels).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


async def test_an_image_posted_to_one_process_reaches_the_agent_as_a_thumbnail_from_the_worker(
    api_pair: list[ApiProcess], session: AsyncSession, settings: Settings, media_dir: Path
):
    a, b = api_pair
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    await post_text(a, instance, "MEDIA-SEED-1", "posso mandar a foto?")  # the conversation, seq 1
    token = await login_token(a.base_url, tenant.agent.email, PASSWORD)
    conversation_id = await first_conversation(a, token)
    socket = await open_room(b, token, conversation_id, after_seq=1)
    await socket.recv_until(lambda f: f["type"] == "replay.done")

    # 640x480 while the webhook declares 1200x1600: the frame must carry what the bytes say.
    image = jpeg(640, 480, color=(17, 99, 201))
    sha = processing.sha256_hex(image)
    payload = image_webhook(instance, "3EB0PROCIMG0001", image)
    body = json.dumps(payload).encode()
    with arq_worker(settings, "MediaWorkerSettings"):
        async with httpx.AsyncClient(base_url=a.base_url, trust_env=False) as http:
            response = await http.post(
                f"/api/webhooks/{GATEWAY}/{instance.name}",
                content=body,
                headers=signed_headers(GATEWAY, body, instance),
            )
            assert response.status_code == 200, response.text

            # The API publishes message.created before it enqueues the job, so the socket gets it first.
            frames: list[dict[str, Any]] = []

            def collect(frame: dict[str, Any]) -> bool:
                frames.append(frame)
                return frame["type"] == "media.ready"

            ready = await socket.recv_until(collect, timeout=60)
            [created] = [f for f in frames if f["type"] == "message.created"]
            assert frames.index(created) < frames.index(ready)
            assert (created["conversation_id"], created["seq"]) == (conversation_id, 2)
            pending = created["message"]["media"]
            media_id = pending["id"]
            assert pending["state"] == "pending"
            assert pending["url"] == f"{MEDIA_PATH}/{media_id}"
            assert pending["thumbnail_url"] is None

            assert (ready["conversation_id"], ready["seq"]) == (conversation_id, 2)
            assert ready["message_id"] == created["message"]["id"]
            media = ready["media"]
            assert (media["id"], media["state"], media["error"]) == (media_id, "ready", None)
            assert media["url"] == f"{MEDIA_PATH}/{media_id}"
            assert media["thumbnail_url"] == f"{MEDIA_PATH}/{media_id}/thumbnail"
            assert (media["width"], media["height"]) == (640, 480)
            assert (media["mime_type"], media["size_bytes"]) == ("image/jpeg", len(image))

            # Both files through the API process, from the storage the worker wrote to.
            auth = {"Authorization": f"Bearer {token}"}
            thumbnail = await http.get(media["thumbnail_url"], headers=auth)
            assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/webp"
            with Image.open(io.BytesIO(thumbnail.content)) as thumb:
                assert (thumb.format, thumb.size) == ("WEBP", (320, 240))
            original = await http.get(media["url"], headers=auth)
            assert original.status_code == 200 and original.headers["content-type"] == "image/jpeg"
            assert original.content == image
    await socket.close()

    row = await media_row(session, UUID(media_id))
    assert (row.state, row.processings, row.attempts, row.content_sha256) == (MediaState.READY, 1, 1, sha)
    assert row.processing_since is None
    assert len(stored_files(media_dir / "originals", sha)) == 1
    assert len(stored_files(media_dir / "thumbnails", sha)) == 1


async def test_a_worker_killed_mid_download_is_replaced_and_the_media_is_processed_once(
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    redis: Redis,
    arq_pool: ArqRedis,
    media_dir: Path,
):
    image = jpeg(400, 300, color=(222, 111, 3))
    sha = processing.sha256_hex(image)
    download = r"/get-media-by-message/"
    async with FakeGateway() as gateway:
        gateway.respond(download, hang(120))  # holds the download until the worker is gone
        tenant, media_id = await downloadable_image(session, engine, gateway.base_url)
        job_id = media_job_id(media_id)
        queue = media_queue_name(settings.redis.key_prefix)
        # What the webhook does after its commit.
        assert await arq_pool.enqueue_job("process_media", str(media_id), _job_id=job_id, _queue_name=queue)

        def downloads() -> int:
            return sum(1 for request in gateway.requests if download in request.path)

        with arq_worker(settings, "MediaWorkerSettings") as first:

            async def gateway_has_it() -> bool:
                return downloads() == 1

            await eventually(gateway_has_it, "the worker's download reaches the gateway")
            claimed = await media_row(session, media_id)  # the claim is committed before the download
            assert (claimed.state, claimed.attempts, claimed.processings) == (MediaState.PENDING, 1, 0)
            assert claimed.processing_since is not None
            first.kill()

        # The dead worker left the job queued and "in progress" in arq, and its claim in the row.
        assert await redis.zscore(queue, job_id) is not None
        in_progress = in_progress_key_prefix + job_id
        assert await redis.pttl(in_progress) > 0  # arq's lease ends by itself: the job is not stuck
        await redis.pexpire(in_progress, 1)  # ... after the longest job timeout + 10 s; the test ends it now
        # Simulates the claim lease (CLAIM_LEASE, 5 min) running out: a claim this old belongs to a dead
        # worker, so the next run may take the media over.
        await session.execute(
            update(Media)
            .where(Media.id == media_id)
            .values(processing_since=datetime.now(UTC) - CLAIM_LEASE - timedelta(minutes=1))
        )
        await session.commit()
        assert (await media_row(session, media_id)).state is MediaState.PENDING
        assert stored_files(media_dir, sha) == []

        # The phone is back: the gateway now answers with the file.
        body = {"base64": base64.b64encode(image).decode(), "mimetype": "image/jpeg"}
        gateway.respond(download, status(200, body))
        with arq_worker(settings, "MediaWorkerSettings"):

            async def job_over() -> bool:
                settled = (await media_row(session, media_id)).state is not MediaState.PENDING
                return settled and await redis.zscore(queue, job_id) is None

            await eventually(job_over, "the new worker runs the job to its end", timeout=60)
            # Nothing left to pick up or retry: not queued, no job, retry counter or lease; and no result
            # kept (MediaWorkerSettings: keep_result=0), so a later sweep may enqueue the media again.
            keys = (job_key_prefix, retry_key_prefix, in_progress_key_prefix, result_key_prefix)
            assert await redis.exists(*(prefix + job_id for prefix in keys)) == 0

        media = await media_row(session, media_id)
        assert (media.state, media.processings, media.attempts) == (MediaState.READY, 1, 2)
        assert (media.content_sha256, media.processing_since, media.error) == (sha, None, None)
        assert (media.width, media.height, media.has_thumbnail) == (400, 300, True)
        assert [path.name for path in stored_files(media_dir / "originals", sha)] == [sha]
        assert [path.name for path in stored_files(media_dir / "thumbnails", sha)] == [f"{sha}.webp"]
        assert len(stored_files(media_dir, sha)) == 2  # and no staging file left behind
        assert downloads() == 2  # one per worker run
        assert tenant.org_id == media.org_id


async def test_the_sweep_enqueues_media_whose_job_was_never_enqueued_once(
    session: AsyncSession, engine: AsyncEngine, settings: Settings, arq_pool: ArqRedis
):
    tenant = await create_tenant(session)
    forgotten, fresh, claimed, abandoned = await ingest_images(
        engine, tenant, [jpeg(color=(5, 6, 7)), None, None, None]
    )
    now = datetime.now(UTC)
    # Ingested two minutes ago and never enqueued (Redis was down at ingest): due.
    # `fresh` was ingested just now: its job may still be on the way, so not due yet.
    await session.execute(
        update(Media)
        .where(Media.id.in_([forgotten, claimed, abandoned]))
        .values(created_at=now - timedelta(minutes=2))
    )
    # Claimed a moment ago by a live worker: not due. Claimed longer ago than the lease: its worker died.
    await session.execute(update(Media).where(Media.id == claimed).values(processing_since=now))
    await session.execute(
        update(Media)
        .where(Media.id == abandoned)
        .values(processing_since=now - CLAIM_LEASE - timedelta(minutes=1))
    )
    await session.commit()

    ctx = {
        "settings": settings,
        "sessionmaker": async_sessionmaker(engine, expire_on_commit=False),
        "redis": arq_pool,
    }
    queue = media_queue_name(settings.redis.key_prefix)
    ids = {
        name: media_job_id(media_id)
        for name, media_id in zip(
            ("forgotten", "fresh", "claimed", "abandoned"),
            (forgotten, fresh, claimed, abandoned),
            strict=True,
        )
    }
    try:
        assert all([await arq_pool.zscore(queue, job_id) is None for job_id in ids.values()])
        assert await sweep_pending_media(ctx) >= 2  # the run's other pending media count too

        due = {name for name, job_id in ids.items() if await arq_pool.zscore(queue, job_id) is not None}
        assert due == {"forgotten", "abandoned"}
        jobs = {
            name: Job(ids[name], arq_pool, _queue_name=queue, _deserializer=deserialize_job) for name in due
        }
        first = {name: await job.info() for name, job in jobs.items()}
        for name, media_id in (("forgotten", forgotten), ("abandoned", abandoned)):
            info = first[name]
            assert info is not None
            assert (info.function, list(info.args)) == ("process_media", [str(media_id)])
        scores = {name: await arq_pool.zscore(queue, ids[name]) for name in due}

        # A second sweep (the next minute's cron) finds the same rows; arq keeps the one job per media.
        assert await sweep_pending_media(ctx) >= 2
        for name, job in jobs.items():
            again = await job.info()
            assert again is not None and again.enqueue_time == first[name].enqueue_time  # type: ignore[union-attr]
            assert await arq_pool.zscore(queue, ids[name]) == scores[name]
        assert await arq_pool.zscore(queue, ids["fresh"]) is None
        assert await arq_pool.zscore(queue, ids["claimed"]) is None
    finally:
        # No media worker of this run should pick these up later.
        for job_id in ids.values():
            await arq_pool.zrem(queue, job_id)
            await arq_pool.delete(job_key_prefix + job_id)


async def test_an_inline_file_over_the_limit_fails_with_a_reason_and_stores_nothing(
    session: AsyncSession,
    engine: AsyncEngine,
    settings: Settings,
    worker_ctx: dict[str, Any],
    media_dir: Path,
):
    image = noisy_jpeg(96, 96, seed=4)
    max_bytes = 1024
    assert len(image) > 2 * max_bytes
    sha = processing.sha256_hex(image)
    small = dataclasses.replace(settings, media=dataclasses.replace(settings.media, max_bytes=max_bytes))
    ctx = {**worker_ctx, "settings": small}
    tenant = await create_tenant(session)
    [media_id] = await ingest_images(engine, tenant, [image])

    assert await process_media(ctx, str(media_id)) == "failed"
    assert await process_media(ctx, str(media_id)) == "nothing to do: failed"  # final: no retry loop
    media = await media_row(session, media_id)
    assert media.state is MediaState.FAILED and media.error is not None
    assert str(max_bytes) in media.error and "larger" in media.error
    assert (media.processings, media.attempts, media.processing_since) == (0, 1, None)
    assert media.content_sha256 is None
    assert await session.scalar(select(Media.inline_base64).where(Media.id == media_id))  # nothing lost
    assert stored_files(media_dir, sha) == []
