"""Media as the tests hand it to the worker and find it again: one file's reference on each gateway and the
path its API serves it at (for an instance named "loja-centro"), the Cloud API's media-info answer, the
context the media worker's startup builds, and the files it stored. Issue 14 item 2: these stood in
test_gateway_media and test_media_pipeline, which other test modules imported (a fixture among them).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

from app.config import Settings
from app.domain.conversations.cache import CacheKeys, PageCache
from app.domain.media.decode_budget import DecodeBudget
from app.domain.media.storage import MediaStorage
from app.domain.realtime.publisher import EventPublisher
from tests.fake_gateway import Reply, status

DATA = bytes(range(256)) * 20  # 5120 bytes, not text
WPP_REF = "false_5511999990000@c.us_3EB0C431C2A6F1D2E3"
EVO_REF = "3EB0A1B2C3D4E5F6"
MEDIA_ID = "1234567890123456"
REFS = {"wppconnect": WPP_REF, "evolution": EVO_REF, "cloudapi": MEDIA_ID}
PATHS = {
    "wppconnect": rf"^/api/loja-centro/get-media-by-message/{re.escape(quote(WPP_REF, safe=''))}$",
    "evolution": r"^/chat/getBase64FromMediaMessage/loja-centro$",
    "cloudapi": rf"^/v21\.0/{MEDIA_ID}$",
}


def media_info(url: str, *, sha256: str | None = None, file_size: int | str = len(DATA)) -> Reply:
    """The Cloud API's answer for MEDIA_ID: where to download DATA from."""
    body = {
        "messaging_product": "whatsapp",
        "url": url,
        "mime_type": "image/jpeg",
        "sha256": sha256 or hashlib.sha256(DATA).hexdigest(),
        "file_size": file_size,
        "id": MEDIA_ID,
    }
    return status(200, body)


@asynccontextmanager
async def media_worker_context(engine: AsyncEngine, settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """What the media worker's startup builds, on the test's database, Redis and storage directory."""
    redis = Redis.from_url(settings.redis.url)
    cache = PageCache(redis, CacheKeys(settings.redis.key_prefix), settings.cache)
    try:
        async with httpx.AsyncClient(trust_env=False) as http:
            yield {
                "settings": settings,
                "sessionmaker": async_sessionmaker(engine, expire_on_commit=False),
                "http": http,
                "publisher": EventPublisher(redis, settings.redis.key_prefix, cache),
                "media_storage": MediaStorage.from_url(settings.media.storage_url),
                "decode_budget": DecodeBudget(settings.media.decode_budget_bytes),
            }
    finally:
        await redis.aclose()


def stored_files(media_dir: Path, sha: str) -> list[Path]:
    """The files under `media_dir` stored for content `sha` (original and thumbnail)."""
    return [path for path in media_dir.rglob(f"{sha}*") if path.is_file()]
