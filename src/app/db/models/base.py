"""Shared model base: UUIDv7 primary key (index-friendly, time-ordered) with created_at/updated_at."""

from __future__ import annotations

import enum

from advanced_alchemy.base import UUIDv7AuditBase, orm_registry
from sqlalchemy import Enum

Base = UUIDv7AuditBase
metadata = orm_registry.metadata


def str_enum(enum_cls: type[enum.Enum], name: str) -> Enum:
    """A VARCHAR + CHECK column holding the enum's *values* (lower-case strings the API also speaks)."""
    return Enum(
        enum_cls,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
        values_callable=lambda members: [member.value for member in members],
    )


__all__ = ["Base", "metadata", "str_enum"]
