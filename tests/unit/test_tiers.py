"""The tiers tests/tiers.py derives (issue 14): `process` is found through helpers, classes, modules and
cycles, a test that really starts a process is marked so, and a plain one gets its folder's tier only."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests import tiers
from tests.tiers import _Reader


def _spawns() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)


def _calls_a_spawner() -> None:
    _spawns()


def _ping(n: int) -> None:  # a cycle: _ping -> _pong -> _ping, and only _ping spawns
    if n:
        _pong(n - 1)
    _spawns()


def _pong(n: int) -> None:
    _ping(n)


def _pure(n: int) -> int:
    return sum(range(n))


class _Launcher:
    def start(self) -> None:
        subprocess.Popen([sys.executable, "-c", "pass"]).wait()


def _uses_the_class() -> None:
    _Launcher().start()


def _through_a_module() -> None:
    tiers.subprocess.run([sys.executable, "-c", "pass"], check=True)


def _runs_a_bench() -> None:
    subprocess.run([sys.executable, "-m", "tests.bench.suite", "--smoke"], check=True)


def _in_a_closure() -> None:
    def inner() -> None:
        _spawns()

    inner()


@pytest.mark.parametrize(
    ("function", "facts"),
    [
        (_spawns, {"process"}),
        (_calls_a_spawner, {"process"}),
        (_ping, {"process"}),
        (_pong, {"process"}),
        (_pure, set()),
        (_uses_the_class, {"process"}),
        (_through_a_module, {"process"}),
        (_runs_a_bench, {"process", "bench"}),
        (_in_a_closure, {"process"}),
    ],
)
def test_what_a_function_reaches(request: pytest.FixtureRequest, function: object, facts: set[str]) -> None:
    assert _Reader().of_object(function) == facts
    # Reading code is neither running a bench nor starting a process: tiers.py's own names don't count.
    assert {marker.name for marker in request.node.iter_markers()}.isdisjoint({"bench_smoke", "process"})


def test_a_cycle_is_complete_whichever_end_is_read_first() -> None:
    reader = _Reader()
    assert reader.of_object(_ping) == {"process"}
    # _pong was walked inside _ping's walk, before _ping's result was known: it must not be kept empty.
    assert reader.of_object(_pong) == {"process"}


def test_library_code_is_not_read() -> None:
    assert _Reader().of_object(pytest.main) == set()


@pytest.fixture
def child_process() -> Iterator[int]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    yield process.pid
    process.kill()
    process.wait()


def test_a_test_whose_fixture_starts_a_process_is_marked_process(
    request: pytest.FixtureRequest, child_process: int
) -> None:
    assert child_process > 0
    markers = {marker.name for marker in request.node.iter_markers()}
    assert {"unit", "process"} <= markers
    assert markers.isdisjoint({"integration", "serial", "bench_smoke"})


def test_a_plain_test_gets_its_folder_tier_only(request: pytest.FixtureRequest) -> None:
    markers = {marker.name for marker in request.node.iter_markers()}
    assert "unit" in markers
    assert markers.isdisjoint({"process", "serial", "integration", "bench_smoke"})
