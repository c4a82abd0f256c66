from __future__ import annotations

import pytest

from app.domain.gateways.registry import GATEWAY_KINDS, get_adapter


@pytest.mark.parametrize("kind", GATEWAY_KINDS)
def test_every_kind_has_its_adapter(kind: str) -> None:
    adapter = get_adapter(kind)

    assert adapter is not None
    assert adapter.kind == kind


@pytest.mark.parametrize("kind", ["", "WPPCONNECT", "waha", "cloud"])
def test_unknown_kind_has_none(kind: str) -> None:
    assert get_adapter(kind) is None
