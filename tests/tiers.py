"""Test tiers, given to every test at collection by where it lives and by what it (or a fixture of it) runs.

Issue 14: `just test` ran all ~950 tests every time (9 min on a fresh clone), with no fast subset. Marking
hundreds of tests by hand would rot, so the tiers are derived here:

- the folder: tests/unit -> `unit`, tests/integration -> `integration`, tests/security -> `security`,
  tests/faults -> `faults`, tests/fuzz -> `fuzz`;
- `process`: the test, or a fixture it uses, starts OS processes (API or worker subprocesses, a private
  Postgres or Redis, a load generator). Found by reading the code the test can reach — the test function,
  its fixtures, and every function, class and module of tests/ or app/ they name, transitively — for
  `subprocess`, `asyncio.create_subprocess_*`, `os.fork`, `multiprocessing`. So a new helper that starts a
  process is noticed without a list to keep up to date. The one exception is the run's own services
  (`service_urls`: embedded Postgres/Redis only when no URLs are set), which every test shares;
- `bench_smoke`: the test runs a benchmark module (`tests.bench.*`);
- `xdist_group`: a test using a session-scoped fixture that starts processes (`api_pair`, the security
  suite's `processes`) is grouped by that fixture, so `--dist loadgroup` starts those processes once, on one
  worker, instead of once per worker;
- `serial`: timing-sensitive, so `just test` runs it alone after the parallel part (SERIAL below says why
  each is there). A flaky test is a defect, and a second xdist worker competing for the 2 cores is exactly
  what these assert against.
"""

from __future__ import annotations

import asyncio
import inspect
import multiprocessing
import os
import subprocess
import types
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

FOLDER_TIERS = ("unit", "integration", "security", "faults", "fuzz")

# Timing-sensitive tests beyond the faults tier, and the assertion that makes them so.
SERIAL = {
    "tests/security/test_login_flood.py": "webhook acks < 1 s while logins flood the API process",
    "tests/security/test_slow_clients.py": "/health < 1 s while slow clients hold connections",
    "tests/security/test_socket_shares.py": "one agent's replay overtakes another's flood (< 1 s)",
}
# Faults time their kills and outages against sub-second windows (a request waiting in a 0.5 s publish, a
# batch in flight): beside another worker those windows move. The bench smoke asserts no figure, so it is
# not here.
SERIAL_TIERS = ("faults",)

# The run's shared services, not a test's own: they start processes only when no URLs are set.
SHARED_FIXTURES = frozenset({"service_urls"})

ROOT = Path(__file__).resolve().parent.parent
BENCH = "tests.bench"
_SCOPES = ("tests", "app")  # packages whose code is read; libraries are not
_SPAWNING_OBJECTS: tuple[Any, ...] = (
    subprocess,
    multiprocessing,
    subprocess.Popen,
    subprocess.run,
    subprocess.call,
    subprocess.check_call,
    subprocess.check_output,
    asyncio.create_subprocess_exec,
    asyncio.create_subprocess_shell,
    os.fork,
    os.posix_spawn,
    os.system,
)
_SPAWNING_ATTRIBUTES = frozenset({"create_subprocess_exec", "create_subprocess_shell", "posix_spawn"})


def _in_scope(name: str) -> bool:
    return name.split(".", 1)[0] in _SCOPES


class _Reader:
    """What code can reach: {"process"} and/or {"bench"}. A result is kept per code object once it is
    complete, that is when its walk met no code still being walked (a cycle is finished by its first)."""

    def __init__(self) -> None:
        self._facts: dict[types.CodeType, frozenset[str]] = {}
        self._walking: set[types.CodeType] = set()

    def of_object(self, obj: Any) -> frozenset[str]:
        return self._object(obj)[0]

    def _object(self, obj: Any) -> tuple[frozenset[str], bool]:
        """(facts, complete) of a module, class, function or method."""
        if isinstance(obj, types.ModuleType):
            bench = obj.__name__ == BENCH or obj.__name__.startswith(f"{BENCH}.")
            return (frozenset({"bench"}) if bench else frozenset()), True
        if isinstance(obj, staticmethod | classmethod):
            obj = obj.__func__
        if isinstance(obj, property):
            return self._all(self._object(f) for f in (obj.fget, obj.fset) if f is not None)
        if isinstance(obj, type):
            if not _in_scope(obj.__module__):
                return frozenset(), True
            return self._all(self._object(member) for member in vars(obj).values())
        func = inspect.unwrap(obj) if callable(obj) else obj
        code = getattr(func, "__code__", None)
        if not isinstance(code, types.CodeType) or not _in_scope(getattr(func, "__module__", None) or ""):
            return frozenset(), True
        return self._code(code, func.__globals__)

    def _code(self, code: types.CodeType, namespace: dict[str, Any]) -> tuple[frozenset[str], bool]:
        if code in self._facts:
            return self._facts[code], True
        if code in self._walking:
            return frozenset(), False
        self._walking.add(code)
        try:
            found: list[tuple[frozenset[str], bool]] = []
            if _SPAWNING_ATTRIBUTES & set(code.co_names):
                found.append((frozenset({"process"}), True))
            for name in code.co_names:
                obj = namespace.get(name)
                if obj is None:
                    continue
                if any(obj is spawner for spawner in _SPAWNING_OBJECTS):
                    found.append((frozenset({"process"}), True))
                elif isinstance(obj, types.ModuleType) and _in_scope(obj.__name__):
                    found.append(self._object(obj))  # `module.attribute`: read what the code names of it
                    attributes = (getattr(obj, attr, None) for attr in code.co_names)
                    found.extend(self._object(a) for a in attributes if a is not None)
                else:
                    found.append(self._object(obj))
            for const in code.co_consts:
                if isinstance(const, types.CodeType):  # nested functions, comprehensions, lambdas
                    found.append(self._code(const, namespace))
                elif isinstance(const, str) and const.startswith(f"{BENCH}."):  # `python -m tests.bench.x`
                    found.append((frozenset({"bench"}), True))
        finally:
            self._walking.discard(code)
        facts, complete = self._all(found)
        if complete or not self._walking:  # the first of a cycle has seen all of it
            self._facts[code] = facts
        return facts, complete or not self._walking

    @staticmethod
    def _all(results: Iterable[tuple[frozenset[str], bool]]) -> tuple[frozenset[str], bool]:
        facts: frozenset[str] = frozenset()
        complete = True
        for found, done in results:
            facts, complete = facts | found, complete and done
        return facts, complete


def _fixture_defs(item: pytest.Item) -> Iterable[Any]:
    """The FixtureDefs `item` uses (the closure: fixtures of fixtures too), but the run's shared ones."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return
    for name in item.fixturenames:
        if name not in SHARED_FIXTURES:
            yield from info.name2fixturedefs.get(name, ())


def tiers_of(item: pytest.Item, reader: _Reader) -> set[str]:
    """The markers `item` gets."""
    relative = item.path.resolve()
    relative = relative.relative_to(ROOT) if relative.is_relative_to(ROOT) else relative
    parts = relative.parts
    tiers = {parts[1]} if len(parts) > 2 and parts[0] == "tests" and parts[1] in FOLDER_TIERS else set()
    function = getattr(item, "function", None)
    facts = reader.of_object(function) if function is not None else frozenset()
    for fixturedef in _fixture_defs(item):
        facts |= reader.of_object(fixturedef.func)
    if "process" in facts:
        tiers.add("process")
    if "bench" in facts:
        tiers.add("bench_smoke")
    if relative.as_posix() in SERIAL or tiers & set(SERIAL_TIERS):
        tiers.add("serial")
    return tiers


def process_group(item: pytest.Item, reader: _Reader) -> str | None:
    """The first session-scoped process-starting fixture `item` uses, by name: its xdist group."""
    names = sorted(
        d.argname
        for d in _fixture_defs(item)
        if d.scope == "session" and "process" in reader.of_object(d.func)
    )
    return names[0] if names else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reader = _Reader()
    for item in items:
        for tier in sorted(tiers_of(item, reader)):
            item.add_marker(tier)
        group = process_group(item, reader)
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))
