"""A ready media whose stored file was removed answers a 500 of its own, through a real API process
(issue 14: it answered "503 database unavailable, retry later" with Postgres up, because the store's
FileNotFoundError is an OSError and every OSError was taken for a lost database connection)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from app.db.models import Media, MediaState
from app.workers.media import process_media
from tests.kit.api import login_token, post_signed
from tests.kit.data import image_webhook, jpeg
from tests.kit.factories import PASSWORD, create_tenant
from tests.kit.media import stored_files
from tests.kit.processes import ApiProcess

GATEWAY = "evolution"


async def test_a_ready_media_whose_file_was_removed_answers_its_own_500_not_a_database_503(
    api_pair: list[ApiProcess],
    session: AsyncSession,
    worker_ctx: dict[str, Any],
    media_dir: Path,
) -> None:
    api = api_pair[0]
    tenant = await create_tenant(session)
    instance = tenant.instance(GATEWAY)
    # Bytes of this test's own: the run's storage is shared, and this test deletes what it stored.
    image = jpeg(331, 217, color=tuple(secrets.token_bytes(3)))  # type: ignore[arg-type]
    body = json.dumps(image_webhook(instance, f"3EB0GONE{secrets.token_hex(4)}", image)).encode()
    posted = await post_signed(api.base_url, GATEWAY, instance, body)
    assert posted.status_code == 200, posted.text
    async with httpx.AsyncClient(base_url=api.base_url, trust_env=False) as http:
        media = await session.scalar(select(Media).where(Media.org_id == tenant.org_id))
        assert media is not None
        media_id = media.id
        assert await process_media(worker_ctx, str(media_id)) == "ready"
        session.expire_all()
        media = await session.get_one(Media, media_id)
        assert media.state is MediaState.READY and media.content_sha256 is not None

        auth = {"Authorization": f"Bearer {await login_token(api.base_url, tenant.agent.email, PASSWORD)}"}
        url = f"/api/whatsapp-optimized/media/{media.id}"
        assert (await http.get(url, headers=auth)).content == image  # served while the file is there

        [original] = stored_files(media_dir / "originals", media.content_sha256)
        original.unlink()
        missing = await http.get(url, headers=auth)
        assert missing.status_code == 500, missing.text
        assert missing.headers["content-type"].startswith("application/problem+json")
        assert missing.json()["detail"] == "media file missing from storage"
        assert "retry-after" not in missing.headers  # no "come back later": an operator must mend it
        # The thumbnail is still stored and still served; the database was never the problem.
        assert (await http.get(f"{url}/thumbnail", headers=auth)).status_code == 200
        conversations = await http.get("/api/whatsapp-optimized/conversations", headers=auth)
        assert conversations.status_code == 200
    # The operator's log names the media and the key that is missing.
    assert str(media.id) in api.logs() and f"originals/{media.content_sha256[:2]}" in api.logs()
