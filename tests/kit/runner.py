"""How a benchmark module runs, the same from the shell (`python -m tests.bench.NAME ...`) and in the suite's
own process (tests.bench.suite calls `main(argv)` and keeps the printed block): its command line parsed from
`argv`, a scratch database migrated for it and dropped after, an event loop (uvloop where the bench wants its
client on one), and a hard time limit on the whole run.

The suite runs the benchmarks in its own process so each one does not pay a fresh interpreter and the
imports of the app (seconds of CPU on 2 cores) before it measures anything.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from tests.kit.databases import scratch_database

Bench = Callable[[argparse.Namespace, str], Awaitable[None]]


def add_timeout(parser: argparse.ArgumentParser, default: float) -> None:
    parser.add_argument("--timeout", type=float, default=default, help="hard limit on the whole run (s)")


def _loop_factory(uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    if not uvloop:
        return None
    try:
        import uvloop as module  # the bench client too: it shares 2 cores with what it measures
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = module.new_event_loop
    return factory


def run(bench: Bench, args: Any, db_prefix: str, *, uvloop: bool = False) -> None:
    """`bench(args, database_url)` in a scratch database, within `args.timeout` seconds."""

    async def bounded(url: str) -> None:
        async with asyncio.timeout(args.timeout):
            await bench(args, url)

    with (
        scratch_database(os.environ["DATABASE_URL"], db_prefix) as url,
        asyncio.Runner(loop_factory=_loop_factory(uvloop)) as runner,
    ):
        runner.run(bounded(url))
