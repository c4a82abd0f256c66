from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime

import pytest

from app.domain.gateways.base import WebhookRejected
from app.domain.gateways.webhook_helpers import base64_decoded_size, sha256_hex, utc_from_epoch, utc_from_iso


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1718901986, datetime(2024, 6, 20, 16, 46, 26, tzinfo=UTC)),
        ("1718901986", datetime(2024, 6, 20, 16, 46, 26, tzinfo=UTC)),
        (1718901986000, datetime(2024, 6, 20, 16, 46, 26, tzinfo=UTC)),
        ("1718901986500", datetime(2024, 6, 20, 16, 46, 26, 500000, tzinfo=UTC)),
        (1718901986.25, datetime(2024, 6, 20, 16, 46, 26, 250000, tzinfo=UTC)),
        (None, None),
        ("", None),
    ],
)
def test_utc_from_epoch(value: int | float | str | None, expected: datetime | None) -> None:
    assert utc_from_epoch(value) == expected


@pytest.mark.parametrize("value", ["yesterday", "1e400", "nan"])
def test_utc_from_epoch_rejects_garbage(value: str) -> None:
    with pytest.raises(WebhookRejected) as caught:
        utc_from_epoch(value)
    assert caught.value.status_code == 422


def test_utc_from_iso() -> None:
    assert utc_from_iso("2024-06-05T14:10:20.494Z") == datetime(2024, 6, 5, 14, 10, 20, 494000, tzinfo=UTC)
    assert utc_from_iso("2024-06-05T11:10:20-03:00") == datetime(2024, 6, 5, 14, 10, 20, tzinfo=UTC)
    assert utc_from_iso("not a date") is None
    assert utc_from_iso(None) is None


def test_sha256_hex_accepts_hex_and_base64() -> None:
    digest = hashlib.sha256(b"file").digest()

    assert sha256_hex(digest.hex().upper()) == digest.hex()
    assert sha256_hex(base64.b64encode(digest).decode()) == digest.hex()
    assert sha256_hex(base64.urlsafe_b64encode(digest).decode()) == digest.hex()
    assert sha256_hex("IMAGE_HASH") is None
    assert sha256_hex(base64.b64encode(b"short").decode()) is None
    assert sha256_hex(None) is None


@pytest.mark.parametrize("data", [b"", b"a", b"ab", b"abc", bytes(range(256))])
def test_base64_decoded_size(data: bytes) -> None:
    encoded = base64.b64encode(data).decode()
    assert base64_decoded_size(encoded) == (len(data) if data else None)


@pytest.mark.parametrize("text", ["caption with spaces", "abc", "a===", "data:image/png;base64,iVBO"])
def test_base64_decoded_size_rejects_text(text: str) -> None:
    assert base64_decoded_size(text) is None
