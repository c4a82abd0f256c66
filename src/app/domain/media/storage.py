"""Where processed media lives: an object store (local directory, S3 and friends, memory), content-addressed.

An object's key is derived from the SHA-256 of the original bytes and nothing else, so no user input ever
reaches a path, the same file sent twice is stored once, and an object, once written, never changes: a
second writer of a key can only be writing the same bytes.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import AlreadyExistsError, NotSupportedError
from obstore.store import LocalStore, MemoryStore
from obstore.store import from_url as store_from_url

if TYPE_CHECKING:
    from obstore.store import ObjectStore

STREAM_CHUNK_BYTES = 256 * 1024

_SHA256 = re.compile(r"[0-9a-f]{64}")
# Defence in depth for keys handed to MediaStorage directly: lowercase segments, one optional extension,
# no empty, "." or ".." segment and no leading slash.
_KEY = re.compile(r"[a-z0-9_-]+(/[a-z0-9_-]+)*(\.[a-z0-9]+)?")


def original_key(sha256: str) -> str:
    _check_sha256(sha256)
    return f"originals/{sha256[:2]}/{sha256[2:4]}/{sha256}"


def thumbnail_key(sha256: str) -> str:
    """The thumbnail's key is derived from the hash of the ORIGINAL, so it is found without a lookup."""
    _check_sha256(sha256)
    return f"thumbnails/{sha256[:2]}/{sha256[2:4]}/{sha256}.webp"


def local_url(directory: str | Path) -> str:
    return Path(directory).expanduser().resolve().as_uri()


class MediaStorage:
    """Async access to one object store. A missing key raises FileNotFoundError (as obstore does)."""

    def __init__(self, store: ObjectStore) -> None:
        self._store = store

    @classmethod
    def from_url(cls, url: str) -> MediaStorage:
        """`file:///abs/dir` (created if missing), `memory://` (tests), or any URL obstore knows
        (`s3://bucket/prefix`, `gs://`, `az://`...), whose credentials obstore reads from the environment
        (AWS_ACCESS_KEY_ID, AWS_ENDPOINT, AWS_REGION, ...)."""
        if url.startswith("file://"):
            return cls(LocalStore.from_url(url, mkdir=True))
        if url.startswith("memory://"):
            return cls(MemoryStore())
        return cls(store_from_url(url))

    async def exists(self, key: str) -> bool:
        try:
            await obstore.head_async(self._store, _check_key(key))
        except FileNotFoundError:
            return False
        return True

    async def put_if_absent(self, key: str, data: bytes) -> bool:
        """Store `data` under `key` unless something is already there; True if this call wrote it.

        Never leaves a partial object. mode="create" is a conditional put: on S3 an `If-None-Match: *`
        request, which the store applies whole or not at all; on a LocalStore (object_store's
        LocalFileSystem) the bytes go to a staging file `<key>#<n>` in the same directory, which is then
        hard-linked to the final name (fails if the name exists, so the first complete file wins) and
        removed. A reader therefore sees no file or a complete one. Staging files are not fsynced, and a
        crash mid-write can leave one behind; it is never at a key's path, so never read.
        """
        key = _check_key(key)
        if await self.exists(key):  # the common case for a re-sent file: skip the upload entirely
            return False
        try:
            await obstore.put_async(self._store, key, data, mode="create", use_multipart=False)
        except AlreadyExistsError:
            return False  # a concurrent writer got there first, with the same bytes
        except NotSupportedError:
            # An S3-compatible store without conditional puts: a plain put is still atomic, and
            # last-writer-wins is harmless because every writer of a content-addressed key writes the same
            # bytes.
            await obstore.put_async(self._store, key, data, use_multipart=False)
        return True

    async def read(self, key: str) -> bytes:
        result = await obstore.get_async(self._store, _check_key(key))
        return bytes(await result.bytes_async())

    async def stream(self, key: str) -> AsyncIterator[bytes]:
        """Chunks of the object, for an HTTP response. Awaiting this already fetches the object's head,
        so a missing key raises FileNotFoundError here, before a response has started."""
        result = await obstore.get_async(self._store, _check_key(key))
        return result.stream(min_chunk_size=STREAM_CHUNK_BYTES)  # yields `bytes` already

    async def size(self, key: str) -> int:
        meta = await obstore.head_async(self._store, _check_key(key))
        return meta["size"]


def _check_sha256(sha256: str) -> None:
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError("expected a SHA-256 as 64 lowercase hex characters")


def _check_key(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError(f"unsafe storage key: {key!r}")
    return key
