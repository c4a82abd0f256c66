"""The collector is settled when the application starts (app.server.gc_tuning, issue 13): what startup
made is frozen out of later collections and the young generation is larger than CPython's 700."""

from __future__ import annotations

import gc

from litestar import Litestar
from litestar.testing import AsyncTestClient

from app.server.gc_tuning import YOUNG_THRESHOLD


async def test_starting_the_app_freezes_what_startup_made_and_raises_the_young_threshold(app: Litestar):
    async with AsyncTestClient(app=app) as client:
        response = await client.get("/health")
        assert response.status_code < 500
        assert gc.get_freeze_count() > 10_000  # the imported application, at least
        assert gc.get_threshold()[0] == YOUNG_THRESHOLD > 700
    print(f"frozen objects: {gc.get_freeze_count()}, thresholds {gc.get_threshold()}")
