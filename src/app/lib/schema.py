"""Base for API schemas: msgspec Structs, encoded by Litestar without a detour through dicts."""

from __future__ import annotations

import msgspec


class Schema(msgspec.Struct, kw_only=True, omit_defaults=False):
    """Response and request bodies. Field names are the JSON names (snake_case)."""
