"""Fixtures several integration modules share (issue 14 item 2: they were imported from a test module)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from app.config import Settings
from tests.kit.media import media_worker_context


@pytest.fixture
async def worker_ctx(engine: AsyncEngine, settings: Settings) -> AsyncIterator[dict[str, Any]]:
    """What the media worker's startup builds (test_outbound has a sender's of its own)."""
    async with media_worker_context(engine, settings) as ctx:
        yield ctx
