"""Every setting's environment variable is named beside its field (issue 14): what `to_env` writes,
`from_env` reads back, for every field that has a variable, and a bad value names its variable."""

from __future__ import annotations

import dataclasses
import os
from typing import Any
from unittest import mock

import pytest

from app.config import (
    AppSettings,
    AuthSettings,
    ConfigurationError,
    DatabaseSettings,
    RedisSettings,
    Settings,
)
from app.lib.env_fields import EnvVar


def _other_value(value: Any, name: str) -> Any:
    """A value unlike the default, of the field's kind."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 7
    if isinstance(value, float):
        return value + 0.5
    if isinstance(value, list):
        return [f"{name.lower()}-a", f"{name.lower()}-b"]
    return None  # text: chosen per field below


TEXTS = {
    "APP_ENV": "test",
    "PUBLIC_BASE_URL": "https://crm.example.org",
    "DATABASE_URL": "postgresql+asyncpg://crm@db.example.org:6543/crm",
    "DB_LISTEN_URL": "postgresql+asyncpg://crm@db.example.org:5432/crm",
    "REDIS_URL": "redis://cache.example.org:6379/3",
    "REDIS_KEY_PREFIX": "crm-other",
    "JWT_SECRET": "x" * 40,
    "LOG_LEVEL": "DEBUG",
    "METRICS_TOKEN": "metrics-token-value",
    "MEDIA_STORAGE_URL": "s3://bucket/media",
    "DB_STATEMENT_CACHE_SIZE": 0,
}


def _non_default(section: Any) -> Any:
    changes = {}
    for item in dataclasses.fields(section):
        var: EnvVar | None = item.metadata.get("env")
        if var is None:
            continue
        if var.name in TEXTS:
            changes[item.name] = TEXTS[var.name]
        else:
            changed = _other_value(getattr(section, item.name), var.name)
            assert changed is not None, f"{var.name}: give the test a value for it"
            changes[item.name] = changed
    if isinstance(section, AppSettings):
        changes["log_json"] = False
    if isinstance(section, AuthSettings):
        changes["deployment_admins"] = ["ops@example.org", "@example.org"]  # read back in lower case
    return dataclasses.replace(section, **changes)


def _base() -> Settings:
    return Settings(
        app=AppSettings(),
        db=DatabaseSettings(url="postgresql+asyncpg://crm@localhost/crm"),
        redis=RedisSettings(url="redis://localhost:6379/0"),
        auth=AuthSettings(jwt_secret="y" * 40),
    )


def test_every_variable_written_is_read_back_with_a_value_unlike_its_default() -> None:
    base = _base()
    changed = dataclasses.replace(
        base, **{item.name: _non_default(getattr(base, item.name)) for item in dataclasses.fields(base)}
    )
    for item in dataclasses.fields(changed):  # the test covers what it claims: every variable moved
        section, default = getattr(changed, item.name), getattr(base, item.name)
        for field in dataclasses.fields(section):
            if "env" in field.metadata:
                assert getattr(section, field.name) != getattr(default, field.name), field.name
    env = changed.to_env()
    with mock.patch.dict(os.environ, env, clear=True):
        assert Settings.from_env() == changed


def test_variable_names_are_unique_and_cover_the_documented_ones() -> None:
    names = list(_base().to_env())
    assert len(names) == len(set(names))
    documented = {
        "DATABASE_URL",
        "DB_STATEMENT_CACHE_SIZE",
        "DB_POOL_SIZE",
        "DB_MAX_OVERFLOW",
        "DB_LISTEN_URL",
    }
    assert documented <= set(names)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [("DB_POOL_SIZE", "twenty", "an integer"), ("WS_FRAMES_PER_SECOND", "fast", "a number")],
)
def test_an_unreadable_value_names_its_variable_and_not_its_value(
    name: str, value: str, expected: str
) -> None:
    env = {**_base().to_env(), name: value}
    with mock.patch.dict(os.environ, env, clear=True), pytest.raises(ConfigurationError) as caught:
        Settings.from_env()
    assert str(caught.value) == f"{name} must be {expected}"


def test_missing_urls_are_a_configuration_error() -> None:
    env = {**_base().to_env(), "DATABASE_URL": ""}
    with (
        mock.patch.dict(os.environ, env, clear=True),
        pytest.raises(ConfigurationError, match="DATABASE_URL"),
    ):
        Settings.from_env()
