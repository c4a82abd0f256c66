"""Real embedded PostgreSQL and Redis: started, used, and gone afterwards."""

from __future__ import annotations

import asyncio
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis

from app.lib.embedded import dev_services, redact


def _port_refuses(url: str) -> bool:
    port = urlsplit(url).port
    assert port is not None
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


async def _select_one(url: str) -> int:
    conn = await asyncpg.connect(url.replace("+asyncpg", ""))
    try:
        return int(await conn.fetchval("SELECT 1"))
    finally:
        await conn.close()


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Not pytest's tmp_path: the server's own OS user must traverse to it, and every pytest session on the
    machine resets /tmp/pytest-of-<user> to mode 0700."""
    with tempfile.TemporaryDirectory(prefix="crm-embedded-test-") as tmp:
        yield Path(tmp)


def test_embedded_servers_start_serve_and_vanish(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)

    with dev_services(state_dir, ephemeral=True) as urls:
        assert (urls.embedded_postgres, urls.embedded_redis) == (True, True)
        assert urls.database_url.startswith("postgresql+asyncpg://postgres@127.0.0.1:")
        assert urls.database_url.endswith("/crm")
        assert urls.redis_url.startswith("redis://127.0.0.1:")
        assert urls.redis_url.endswith("/0")
        assert {urlsplit(urls.database_url).port, urlsplit(urls.redis_url).port}.isdisjoint({5432, 6379})

        assert asyncio.run(_select_one(urls.database_url)) == 1
        client = redis.Redis.from_url(urls.redis_url)
        try:
            assert client.ping()
            client.set("greeting", "hello")
            assert client.get("greeting") == b"hello"
        finally:
            client.close()

    assert _port_refuses(urls.database_url)
    assert _port_refuses(urls.redis_url)
    assert list(state_dir.iterdir()) == []


def test_urls_from_environment_pass_through(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database_url = "postgresql+asyncpg://app:secret@db.example:5432/crm"
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", "redis://cache.example:6379/2")

    with dev_services(tmp_path / "state", ephemeral=True) as urls:
        assert urls.database_url == database_url
        assert urls.redis_url == "redis://cache.example:6379/2"
        assert (urls.embedded_postgres, urls.embedded_redis) == (False, False)

    assert not (tmp_path / "state").exists()
    assert redact(database_url) == "postgresql+asyncpg://app:***@db.example:5432/crm"
