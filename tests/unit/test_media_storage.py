"""MediaStorage on a real local directory (and in memory): write-once puts, concurrent writers leave one
complete file and no staging files, round trips, missing keys, and keys that only ever come from hashes."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from app.domain.media.storage import MediaStorage, local_url, original_key, thumbnail_key

SHA = hashlib.sha256(b"hello").hexdigest()


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "media"  # does not exist yet: from_url creates it


@pytest.fixture
def storage(root: Path) -> MediaStorage:
    return MediaStorage.from_url(local_url(root))


def test_keys_are_sharded_by_hash() -> None:
    assert original_key(SHA) == f"originals/{SHA[:2]}/{SHA[2:4]}/{SHA}"
    assert thumbnail_key(SHA) == f"thumbnails/{SHA[:2]}/{SHA[2:4]}/{SHA}.webp"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        SHA.upper(),
        SHA[:-1],
        SHA + "0",
        SHA[:-1] + "g",
        " " + SHA[1:],
        SHA[:-1] + "\n",
        "../../etc/passwd",
        "../" + SHA[3:],
        "/" + SHA[1:],
        SHA[:32] + "/" + SHA[33:],
        "." * 64,
    ],
)
def test_key_functions_reject_anything_but_a_sha256(bad: str) -> None:
    with pytest.raises(ValueError, match="SHA-256"):
        original_key(bad)
    with pytest.raises(ValueError, match="SHA-256"):
        thumbnail_key(bad)


def test_local_url_is_an_absolute_file_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_url("var/media") == (tmp_path / "var" / "media").resolve().as_uri()
    assert local_url(tmp_path).startswith("file:///")


async def test_from_url_creates_the_directory(storage: MediaStorage, root: Path) -> None:
    assert root.is_dir()


async def test_put_if_absent_writes_once(storage: MediaStorage, root: Path) -> None:
    key = original_key(SHA)
    assert not await storage.exists(key)
    assert await storage.put_if_absent(key, b"hello") is True
    assert await storage.exists(key)
    assert await storage.put_if_absent(key, b"hello") is False
    assert files_under(root) == [root / key]
    assert (root / key).read_bytes() == b"hello"


async def test_read_stream_and_size_round_trip(storage: MediaStorage) -> None:
    data = os.urandom(1_000_000)
    key = original_key(hashlib.sha256(data).hexdigest())
    await storage.put_if_absent(key, data)
    assert await storage.read(key) == data
    assert await storage.size(key) == len(data)
    chunks = [chunk async for chunk in await storage.stream(key)]
    assert all(isinstance(chunk, bytes) for chunk in chunks)
    assert b"".join(chunks) == data


async def test_concurrent_writers_leave_one_complete_file(storage: MediaStorage, root: Path) -> None:
    data = os.urandom(4 * 1024 * 1024)
    key = original_key(hashlib.sha256(data).hexdigest())
    wrote = await asyncio.gather(*(storage.put_if_absent(key, data) for _ in range(20)))
    assert wrote.count(True) == 1
    assert files_under(root) == [root / key]  # no `<key>#<n>` staging file left behind
    assert (root / key).read_bytes() == data


async def test_missing_key_is_file_not_found(storage: MediaStorage) -> None:
    key = thumbnail_key(SHA)
    assert not await storage.exists(key)
    with pytest.raises(FileNotFoundError):
        await storage.read(key)
    with pytest.raises(FileNotFoundError):
        await storage.stream(key)  # before any chunk: an HTTP handler can still answer 404
    with pytest.raises(FileNotFoundError):
        await storage.size(key)


@pytest.mark.parametrize("bad", ["../outside", "/etc/passwd", "originals//x", "originals/./x", "A/b", ""])
async def test_storage_refuses_unsafe_keys(storage: MediaStorage, root: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="unsafe storage key"):
        await storage.put_if_absent(bad, b"x")
    with pytest.raises(ValueError, match="unsafe storage key"):
        await storage.read(bad)
    assert not (root.parent / "outside").exists()


async def test_memory_store() -> None:
    storage = MediaStorage.from_url("memory://")
    key = thumbnail_key(SHA)
    assert await storage.put_if_absent(key, b"thumb") is True
    assert await storage.put_if_absent(key, b"thumb") is False
    assert await storage.read(key) == b"thumb"
    assert await storage.size(key) == 5
    with pytest.raises(FileNotFoundError):
        await storage.read(original_key(SHA))
