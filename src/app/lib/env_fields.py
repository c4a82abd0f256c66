"""Settings whose environment variable is named beside the field, read and written back by one loader.

Why (issue 14): the variable names were written twice, in `Settings.from_env` and by hand in the test rig,
so a setting could be read by one and not the other. Now a field says `pool_size: int = env_int(
"DB_POOL_SIZE", 20)`, `load_section` reads every such field of a frozen dataclass, and `section_env`
renders the values back into variables (how tests start child processes with the settings they hold).
A missing or unreadable value raises ConfigurationError naming the variable, never its value (secrets).
This module knows no setting of the application's: app.config declares them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, TypeVar

_ENV = "env"  # the key of a field's EnvVar in its dataclass metadata
T = TypeVar("T")


class ConfigurationError(RuntimeError):
    """A setting is missing or unreadable; the message names the variable (never a secret's value)."""


def env_value(name: str, default: str | None = None) -> str | None:
    """The variable's value; an empty one counts as unset."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def split_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True, slots=True)
class EnvVar:
    """How one setting is read from its environment variable, and written back (None and "" read as unset)."""

    name: str
    parse: Callable[[str], Any]
    render: Callable[[Any], str]
    expected: str  # for the error message: "an integer", "a number", ...


def _setting(var: EnvVar, default: Any, *, repr: bool = True) -> Any:
    metadata = {_ENV: var}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), repr=repr, metadata=metadata)
    return field(default=default, repr=repr, metadata=metadata)


def env_int(name: str, default: int | None) -> Any:
    return _setting(EnvVar(name, int, str, "an integer"), default)


def env_float(name: str, default: float) -> Any:
    return _setting(EnvVar(name, float, str, "a number"), default)


def env_flag(name: str, default: bool) -> Any:
    """A switch that is on when the variable is exactly `1`."""
    return _setting(
        EnvVar(name, lambda value: value == "1", lambda on: "1" if on else "", "1 or unset"), default
    )


def env_list(
    name: str, default: list[str] | None = None, *, parse: Callable[[str], list[str]] = split_list
) -> Any:
    return _setting(EnvVar(name, parse, ",".join, "a comma-separated list"), default or [])


def env_text(
    name: str,
    default: Any = MISSING,
    *,
    parse: Callable[[str], Any] = str,
    render: Callable[[Any], str] = str,
    repr: bool = True,
) -> Any:
    return _setting(EnvVar(name, parse, render, "a text"), default, repr=repr)


def env_var(section: type, field_name: str) -> EnvVar | None:
    """The variable a section's field is read from, if it has one."""
    for item in fields(section):
        if item.name == field_name:
            var: EnvVar | None = item.metadata.get(_ENV)
            return var
    raise AttributeError(field_name)


def load_section(section: type[T], **given: Any) -> T:
    """`section` with each field from its variable when set, else its default; `given` wins over both."""
    values: dict[str, Any] = {}
    for item in fields(section):  # type: ignore[arg-type]
        var: EnvVar | None = item.metadata.get(_ENV)
        if item.name in given or var is None:
            continue
        raw = env_value(var.name)
        if raw is None:
            if item.default is MISSING and item.default_factory is MISSING:
                raise ConfigurationError(f"{var.name} must be set")
            continue
        try:
            values[item.name] = var.parse(raw)
        except ValueError:
            raise ConfigurationError(f"{var.name} must be {var.expected}") from None
    return section(**values, **given)


def section_env(section: Any) -> dict[str, str]:
    """The variables that make `load_section` give back `section`."""
    env: dict[str, str] = {}
    for item in fields(section):
        var: EnvVar | None = item.metadata.get(_ENV)
        if var is not None:
            value = getattr(section, item.name)
            env[var.name] = "" if value is None else var.render(value)
    return env
