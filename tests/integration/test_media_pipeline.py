"""Media end to end with real Postgres, Redis, Pillow and a local storage directory: ingest stores the
pending row and enqueues, `process_media` stores content-addressed originals and thumbnails once, and the
API serves them."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from arq import Retry
from litestar import Litestar
from litestar.testing import AsyncTestClient
from PIL import Image
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from app.config import Settings
from app.db.models import Media, MediaState, Message
from app.domain.media import processing
from app.domain.media.storage import MediaStorage, original_key, thumbnail_key
from app.workers.media import process_media
from tests.fake_gateway import FakeGateway, status
from tests.kit.api import login
from tests.kit.data import env_for, image_webhook, jpeg, post_webhook
from tests.kit.factories import Tenant, create_tenant
from tests.kit.ingested import downloadable_image
from tests.kit.media import stored_files
from tests.kit.processes import ROOT

Client = AsyncTestClient[Litestar]
GATEWAY = "evolution"


async def media_of(session: AsyncSession, tenant: Tenant) -> list[Media]:
    session.expire_all()
    return list((await session.scalars(select(Media).where(Media.org_id == tenant.org_id))).all())


async def test_an_inline_image_is_stored_once_with_a_thumbnail_and_served(
    client: Client,
    session: AsyncSession,
    worker_ctx: dict[str, Any],
    settings: Settings,
    media_dir: Path,
    redis: Redis,
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    image = jpeg()
    assert (
        await post_webhook(client, GATEWAY, instance, image_webhook(instance, "IMG00001", image))
    ).status_code == 200
    [media] = await media_of(session, tenant)
    assert media.state is MediaState.PENDING and media.processings == 0
    sha = processing.sha256_hex(image)
    assert stored_files(media_dir, sha) == []  # the handler stored nothing: that is the worker's job
    queue = f"{settings.redis.key_prefix}:media"
    assert await redis.zscore(queue, f"process_media:{media.id}") is not None  # enqueued after commit

    auth = await login(client, tenant.agent.email)
    pending = await client.get(f"/api/whatsapp-optimized/media/{media.id}", headers=auth)
    assert pending.status_code == 202 and pending.json()["state"] == "pending"

    assert await process_media(worker_ctx, str(media.id)) == "ready"
    assert await process_media(worker_ctx, str(media.id)) == "nothing to do: ready"
    [media] = await media_of(session, tenant)
    assert (media.state, media.processings, media.content_sha256) == (MediaState.READY, 1, sha)
    assert (media.width, media.height, media.content_type, media.has_thumbnail) == (
        800,
        600,
        "image/jpeg",
        True,
    )
    media_id = media.id
    session.expire_all()
    assert (await session.scalar(select(Media.inline_base64).where(Media.id == media_id))) is None
    [media] = await media_of(session, tenant)
    storage: MediaStorage = worker_ctx["media_storage"]
    assert await storage.read(original_key(sha)) == image
    with Image.open(io.BytesIO(await storage.read(thumbnail_key(sha)))) as thumb:
        assert thumb.format == "WEBP" and max(thumb.size) == 320

    served = await client.get(f"/api/whatsapp-optimized/media/{media.id}", headers=auth)
    assert served.status_code == 200 and served.content == image
    assert served.headers["content-type"] == "image/jpeg"
    assert served.headers["etag"] == f'"{sha}"'
    assert "immutable" in served.headers["cache-control"] and "private" in served.headers["cache-control"]
    assert served.headers["x-content-type-options"] == "nosniff"
    again = await client.get(
        f"/api/whatsapp-optimized/media/{media.id}", headers={**auth, "If-None-Match": f'"{sha}"'}
    )
    assert again.status_code == 304 and again.content == b""
    thumbnail = await client.get(f"/api/whatsapp-optimized/media/{media.id}/thumbnail", headers=auth)
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/webp"

    conversation_id = await session.scalar(
        select(Message.conversation_id).where(Message.id == media.message_id)
    )
    history = (await client.get(f"/api/whatsapp-optimized/messages/{conversation_id}", headers=auth)).json()
    [item] = history["items"]
    assert item["media"]["state"] == "ready"
    assert item["media"]["url"] == f"/api/whatsapp-optimized/media/{media.id}"
    assert item["media"]["thumbnail_url"] == f"/api/whatsapp-optimized/media/{media.id}/thumbnail"

    other = await create_tenant(session)
    foreign = await client.get(
        f"/api/whatsapp-optimized/media/{media.id}", headers=await login(client, other.agent.email)
    )
    assert foreign.status_code == 404


async def test_duplicates_and_concurrent_jobs_end_with_one_object_and_one_processing(
    client: Client, session: AsyncSession, worker_ctx: dict[str, Any], media_dir: Path
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    image = jpeg(color=(10, 200, 90))
    same_message = image_webhook(instance, "IMGDUP0001", image)
    answers = await asyncio.gather(
        *(post_webhook(client, GATEWAY, instance, same_message) for _ in range(100))
    )
    assert {answer.status_code for answer in answers} == {200}
    # Two more messages carrying the very same file.
    for message_id in ("IMGDUP0002", "IMGDUP0003"):
        await post_webhook(client, GATEWAY, instance, image_webhook(instance, message_id, image))
    rows = await media_of(session, tenant)
    assert len(rows) == 3  # one row per message, whatever the redeliveries

    outcomes = await asyncio.gather(
        *(process_media(worker_ctx, str(row.id)) for row in rows for _ in range(4))
    )
    assert outcomes.count("ready") == 3
    rows = await media_of(session, tenant)
    assert [row.processings for row in rows] == [1, 1, 1]
    sha = processing.sha256_hex(image)
    assert {row.content_sha256 for row in rows} == {sha}
    assert len(stored_files(media_dir / "originals", sha)) == 1
    assert len(stored_files(media_dir / "thumbnails", sha)) == 1


async def test_corrupt_bytes_fail_with_a_reason_keep_the_inline_copy_and_answer_410(
    client: Client, session: AsyncSession, worker_ctx: dict[str, Any]
):
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    broken = jpeg()[:200]  # a JPEG header and little else
    await post_webhook(client, GATEWAY, instance, image_webhook(instance, "IMGBROKEN1", broken))
    [media] = await media_of(session, tenant)
    assert await process_media(worker_ctx, str(media.id)) == "failed"
    assert await process_media(worker_ctx, str(media.id)) == "nothing to do: failed"  # no crash loop
    [media] = await media_of(session, tenant)
    assert media.state is MediaState.FAILED and media.error and "image" in media.error
    media_id = media.id
    session.expire_all()
    assert await session.scalar(select(Media.inline_base64).where(Media.id == media_id))  # nothing lost
    [media] = await media_of(session, tenant)
    auth = await login(client, tenant.agent.email)
    gone = await client.get(f"/api/whatsapp-optimized/media/{media.id}", headers=auth)
    assert gone.status_code == 410 and media.error in gone.json()["detail"]


async def test_request_handlers_never_process_media(
    client: Client, session: AsyncSession, settings: Settings, monkeypatch: pytest.MonkeyPatch
):
    calls: list[str] = []
    for name in ("inspect", "thumbnail_webp", "sha256_hex"):
        original = getattr(processing, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(processing, name, counting)
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    await post_webhook(client, GATEWAY, instance, image_webhook(instance, "IMGNOPROC1", jpeg()))
    [media] = await media_of(session, tenant)
    auth = await login(client, tenant.agent.email)
    await client.get(f"/api/whatsapp-optimized/media/{media.id}", headers=auth)
    assert calls == []
    # And the API process does not even load the processing module (nor Pillow).
    probe = "import sys, app.asgi; print('app.domain.media.processing' in sys.modules, 'PIL' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env=env_for(settings),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout.split() == ["False", "False"]


async def test_a_file_not_inline_is_downloaded_retried_when_transient_and_failed_when_final(
    session: AsyncSession, engine: AsyncEngine, worker_ctx: dict[str, Any]
):
    image = jpeg(color=(1, 2, 3))
    body = {"base64": base64.b64encode(image).decode(), "mimetype": "image/jpeg"}
    async with FakeGateway() as gateway:
        gateway.respond(r"/get-media-by-message/", status(503, {"message": "phone offline"}))
        tenant, media_id = await downloadable_image(session, engine, gateway.base_url)
        with pytest.raises(Retry):  # transient: the claim is released and arq retries later
            await process_media(worker_ctx, str(media_id))
        [media] = await media_of(session, tenant)
        assert (media.state, media.attempts, media.processing_since) == (MediaState.PENDING, 1, None)

        gateway.respond(r"/get-media-by-message/", status(200, body))
        assert await process_media(worker_ctx, str(media_id)) == "ready"
        [media] = await media_of(session, tenant)
        assert (media.state, media.attempts, media.processings) == (MediaState.READY, 2, 1)
        assert media.content_sha256 == processing.sha256_hex(image)

        gateway.respond(r"/get-media-by-message/", status(404, {"message": "not found"}))
        tenant, missing = await downloadable_image(session, engine, gateway.base_url)
        assert await process_media(worker_ctx, str(missing)) == "failed"  # final: no retry loop
        [media] = await media_of(session, tenant)
        assert media.state is MediaState.FAILED and media.error
        assert "gateway-token" not in media.error
