"""Every response names its request id; a sane caller-supplied one is kept, anything else replaced."""

from __future__ import annotations

from litestar import Litestar
from litestar.testing import AsyncTestClient

Client = AsyncTestClient[Litestar]


async def test_request_id_is_echoed_or_made(client: Client):
    kept = await client.get("/health", headers={"X-Request-ID": "trace-42.a:b"})
    assert kept.headers["x-request-id"] == "trace-42.a:b"
    made = await client.get("/health")
    assert len(made.headers["x-request-id"]) == 32
    hostile = await client.get("/health", headers={"X-Request-ID": "x" * 65})
    assert hostile.headers["x-request-id"] != "x" * 65
    injected = await client.get("/health", headers={"X-Request-ID": "a\\nlevel=error"})
    assert injected.headers["x-request-id"] != "a\\nlevel=error"
    assert (await client.get("/api/whatsapp-optimized/conversations")).headers["x-request-id"]  # on a 401 too
