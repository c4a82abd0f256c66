"""`just bench`: every benchmark, and the seed's table measured, in one report under bench/results/ —
`report.md` (tables), `report.png` (matplotlib) and `report.json` (the same figures, machine-readable).

    uv run python -m tests.bench.suite [--quick | --smoke] [--out bench/results] [--skip NAME,...]

Sections (each figure next to a baseline from the same run; see each module's docstring):
  polling     requests/min and server CPU at 10 / 100 / 1,000 agents: 3 s polling vs WebSocket, same message
              traffic (tests.bench.polling), vs a raw ASGI app and the minimal Redis→WebSocket relay
  history     the history route's p50/p99, cached (L1, L2) and uncached (tests.bench.history), vs raw ASGI,
              raw Redis and raw asyncpg
  rss         the API process's RSS at 10 / 100 / 1,000 connected users (tests.bench.rss), vs the relay
  ingest, realtime, read, media
              the earlier benchmarks, each run in this process through its `main(argv)` (tests.bench.harness:
              a scratch database of its own, its own servers; with its own quick mode when the suite is
              quick); their printed blocks go into the report verbatim. One that is missing, fails or times
              out is recorded as such and the suite goes on.

Set up once: one interpreter and one import of the app for the whole run; one API process shared by polling
and history (history reads from it warm); rss's fresh API process started alongside history's servers. The
report opens with the run's total wall time and the seconds of each section, adding up to it.

Modes: full (under 10 minutes on 2 cores), --quick (under 2 minutes: 10 / 100 / 300 agents, short windows,
the earlier benchmarks in their quick modes), --smoke (seconds: tiny sizes, for the test; only bench-ingest,
tiny, of the earlier ones). Prints figures; passes or fails nothing, and exits 0 unless the report could not
be written. DATABASE_URL and REDIS_URL come from the environment (`just bench` starts throw-away servers
when they are unset); the run works in scratch databases and Redis key prefixes of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import gc
import importlib
import io
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from tests.bench import history, polling, rss
from tests.bench.suite_report import write_plot, write_text
from tests.bench.world import World, build_world
from tests.kit.databases import drop_redis_keys, scratch_database
from tests.kit.processes import ROOT, api_server, spawned, wait_ready

SECTIONS = ("polling", "history", "rss")
SECTION_NAMES = {"polling_vs_websocket": "polling vs websocket", "history": "history", "rss": "rss"}
BENCHES = ("ingest", "realtime", "read", "media")
# In quick mode each earlier bench runs with its own --quick if it has one, plus these sizes (smaller still,
# for the 2-minute budget; the report prints each command line). Smoke runs only a tiny ingest.
QUICK = {
    "ingest": ["--requests", "1000"],
    "realtime": [
        *("--seconds", "2", "--warmup", "0.5", "--rate", "200"),
        # Its idle-memory part is the rss section's figure (RSS per socket, fresh API process): not twice.
        *("--rooms", "30", "--orgs", "10", "--idle", "0"),
    ],
    "read": ["--conversations", "1000", "--seconds", "1"],
    "media": ["--seconds", "2", "--images", "40", "--drain-limit", "3", "--warmup", "0.5"],
}
SMOKE = {"ingest": ["--requests", "300", "--senders", "4", "--conversations", "20"]}


@dataclass(frozen=True)
class Mode:
    name: str
    agents: list[int]
    window: float
    baseline_window: float
    history_seconds: float
    history_cold: int
    rss_users: list[int]
    settle: float
    bench_timeout: float
    spread: float = polling.POLL_S
    ws_window: float | None = None  # default: window
    setup_messages: int = 50  # the latest page an agent reads is full (50)


MODES = {
    "full": Mode("full", [10, 100, 1000], 12.0, 5.0, 2.0, 5000, [10, 100, 1000], 1.0, 420.0),
    "quick": Mode(
        "quick", [10, 100, 300], 4.5, 1.0, 0.4, 1000, [10, 100, 1000], 0.3, 120.0, spread=0.5, ws_window=2.5
    ),
    "smoke": Mode("smoke", [4, 12], 3.0, 1.0, 0.3, 200, [4, 12], 0.3, 120.0, spread=0.5),
}


def _process_age() -> float:
    """Seconds since this process started (the interpreter and the imports before main()), from /proc."""
    try:
        with open("/proc/self/stat") as stat:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            return max(0.0, float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return 0.0


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# -- the earlier benchmarks, in this process -----------------------------------------------------------


def bench_args(name: str, mode: str) -> list[str] | None:
    """The arguments for an earlier bench in this mode; None to skip it."""
    source = (ROOT / "tests" / "bench" / f"{name}.py").read_text()
    if mode == "full":
        return []
    if mode == "smoke":
        return SMOKE.get(name)
    return (["--quick"] if '"--quick"' in source else []) + QUICK.get(name, [])


class _Tee(io.TextIOBase):
    """What a bench prints: echoed, indented, as it comes, and kept line by line for the report."""

    def __init__(self, echo: TextIO) -> None:
        self.echo, self.lines, self._partial = echo, [], ""

    def write(self, text: str) -> int:
        self._partial += text
        *done, self._partial = self._partial.split("\n")
        for line in done:
            self.lines.append(line)
            self.echo.write(f"   {line}\n")
        self.echo.flush()
        return len(text)

    def close_line(self) -> None:
        if self._partial:
            self.write("\n")


def run_bench(name: str, mode: str, timeout: float) -> dict[str, Any]:
    """One earlier benchmark, in this process (its `main(argv)`, as `python -m` would run it): no fresh
    interpreter and no second import of the app before it measures. A failure or a timeout is recorded
    with the tail of its output, and the suite goes on."""
    module_name = f"tests.bench.{name}"
    if not (ROOT / "tests" / "bench" / f"{name}.py").exists():
        print(f"== bench-{name}: missing ({module_name} does not exist)", flush=True)
        return {"status": "missing", "command": None, "seconds": None, "output": ""}
    args = bench_args(name, mode)
    if args is None:
        return {"status": f"skipped (--{mode})", "command": None, "seconds": None, "output": ""}
    args = [*args, "--timeout", f"{timeout:g}"]
    command = ["python", "-m", module_name, *args]
    print(f"== bench-{name}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    tee = _Tee(sys.stdout)
    status = "ok"
    try:
        with contextlib.redirect_stdout(tee):
            importlib.import_module(module_name).main(args)
    except TimeoutError:
        status = f"timed out after {timeout:.0f} s"
    except (Exception, SystemExit) as exc:  # argparse exits; anything else is the bench's own failure
        tee.close_line()
        for line in traceback.format_exception(exc)[-12:]:
            tee.write(line)
        status = f"failed ({type(exc).__name__})"
    tee.close_line()
    gc.collect()  # what the bench left behind is not the next one's collector work
    seconds = time.perf_counter() - started
    print(f"   bench-{name}: {status} in {seconds:.0f} s", flush=True)
    lines = tee.lines if status == "ok" else tee.lines[-40:]
    return {"status": status, "command": command, "seconds": seconds, "output": "\n".join(lines)}


# -- the suite's own scenarios ---------------------------------------------------------------------------


async def _section(name: str, work: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    try:
        result = await work()
    except Exception as exc:
        traceback.print_exc()
        tail = traceback.format_exception_only(exc)[-1].strip()
        return {"error": f"{type(exc).__name__}: {tail}", "seconds": round(time.perf_counter() - started, 1)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(f"   done in {result['seconds']:.0f} s", flush=True)
    return result


async def own_scenarios(
    args: argparse.Namespace, mode: Mode, database_url: str, durations: dict[str, float]
) -> dict[str, Any]:
    agents = max([*args.agents, *args.rss_users])
    world: World
    world, built = await build_world(database_url, agents, args.conversations, args.setup_messages)
    print(f"   {agents} agents and tokens in {built:.1f} s", flush=True)
    durations["world (agents, tokens)"] = built
    scenarios: dict[str, Any] = {}
    shared = {"polling", "history"} - args.skip
    try:
        # One API process for polling and history, started once (history reads from it warm, as from a
        # server in production); the team's admin is a deployment admin on it (its own figures in /stats).
        api_env = {**world.env, "DEPLOYMENT_ADMINS": world.team.admin.email}
        with spawned(*([api_server(api_env)] if shared else [])) as servers:
            if "polling" not in args.skip:
                scenarios["polling_vs_websocket"] = await _section(
                    "polling vs websocket",
                    lambda: polling.run(
                        world,
                        servers[0],
                        args.agents,
                        args.window,
                        args.baseline_window,
                        args.rate,
                        mode.spread,
                        None if args.window != mode.window else mode.ws_window,
                    ),
                )
            # rss's API process starts now, with history's servers (their start-ups overlap), and
            # serves nothing until rss: fresh, as that section needs it.
            with spawned(*([api_server(world.env)] if "rss" not in args.skip else [])) as fresh:
                if "history" not in args.skip:
                    scenarios["history"] = await _section(
                        "history",
                        lambda: history.run(
                            world,
                            wait_ready(servers[0]),
                            mode.history_seconds,
                            args.history_connections,
                            mode.history_cold,
                        ),
                    )
                if "rss" not in args.skip:
                    scenarios["rss"] = await _section(
                        "rss", lambda: rss.run(world, fresh[0], args.rss_users, mode.settle)
                    )
    finally:
        await drop_redis_keys(world.settings.redis.url, world.settings.redis.key_prefix)
    return scenarios


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, Mode]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="under 2 minutes: smaller sizes, short windows")
    group.add_argument("--smoke", action="store_true", help="seconds: tiny sizes (for the test)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="report directory")
    parser.add_argument("--skip", default="", help=f"comma-separated, of {', '.join(SECTIONS + BENCHES)}")
    parser.add_argument("--agents", type=_ints, default=None, help="agent counts, e.g. 10,100,1000")
    parser.add_argument("--window", type=float, default=None, help="seconds measured per polling/WS run")
    parser.add_argument("--baseline-window", type=float, default=None, help="seconds per baseline run")
    parser.add_argument("--rate", type=float, default=2.0, help="message traffic, webhooks per second")
    parser.add_argument("--conversations", type=int, default=50, help="the team's inbox")
    parser.add_argument("--setup-messages", type=int, default=None, help="messages per conversation first")
    parser.add_argument("--history-connections", type=int, default=4)
    parser.add_argument("--rss-users", type=_ints, default=None, help="connected users, e.g. 10,100,1000")
    args = parser.parse_args(argv)
    mode = MODES["quick" if args.quick else "smoke" if args.smoke else "full"]
    args.agents = args.agents or mode.agents
    args.rss_users = args.rss_users or mode.rss_users
    args.window = args.window or mode.window
    args.setup_messages = args.setup_messages or mode.setup_messages
    args.baseline_window = args.baseline_window or mode.baseline_window
    args.skip = {part.strip() for part in args.skip.split(",") if part.strip()}
    unknown = args.skip - set(SECTIONS + BENCHES)
    if unknown:
        parser.error(f"unknown in --skip: {', '.join(sorted(unknown))}")
    return args, mode


def main(argv: list[str] | None = None) -> int:
    args, mode = parse_args(argv)
    started, wall = dt.datetime.now(dt.UTC), time.perf_counter()
    startup = _process_age()
    durations: dict[str, float] = {"interpreter start, imports": startup}
    print(f"benchmark suite ({mode.name}) -> {args.out}", flush=True)
    results: dict[str, Any] = {
        "suite": {
            "mode": mode.name,
            "started": started.strftime("%Y-%m-%d %H:%M UTC"),
            "commit": _commit(),
            "cpus": os.cpu_count(),
            "machine": f"{platform.system()} {platform.machine()}, Python {platform.python_version()}",
            "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()},
            "load_start": os.getloadavg()[0],  # other work on the machine skews every figure
        }
    }
    if mode.name != "full":
        results["suite"]["note"] = (
            f"**{mode.name} mode:** {', '.join(f'{n:,}' for n in args.agents)} agents, {args.window:g} s "
            f"polling windows ({mode.ws_window or args.window:g} s WebSocket, {args.baseline_window:g} s "
            f"baselines), history runs of {mode.history_seconds:g} s, "
            f"{', '.join(f'{n:,}' for n in args.rss_users)} connected users; the earlier benchmarks "
            + (
                "in their quick modes, smaller still (command lines below)."
                if mode.name == "quick"
                else "skipped but ingest, tiny."
            )
            + " Figures from short windows are rougher than the full run's."
        )
    started_at = time.perf_counter()
    with scratch_database(os.environ["DATABASE_URL"], "crm_bench_suite") as url:
        durations["scratch database"] = time.perf_counter() - started_at
        results["scenarios"] = asyncio.run(own_scenarios(args, mode, url, durations))
        for key, name in SECTION_NAMES.items():
            if "seconds" in results["scenarios"].get(key, {}):
                durations[name] = results["scenarios"][key]["seconds"]
    results["benchmarks"] = {}
    for name in BENCHES:
        if name in args.skip:
            results["benchmarks"][name] = {"status": "skipped (--skip)", "command": None, "seconds": None}
            continue
        results["benchmarks"][name] = run_bench(name, mode.name, mode.bench_timeout)
        if results["benchmarks"][name]["seconds"] is not None:
            durations[f"bench-{name}"] = results["benchmarks"][name]["seconds"]
    written = time.perf_counter()
    results["suite"]["load_end"] = os.getloadavg()[0]
    png = write_plot(results, args.out)
    durations["report (plot)"] = time.perf_counter() - written
    results["suite"]["seconds"] = total = time.perf_counter() - wall + startup
    # Cleanups (scratch database, Redis keys, servers stopping) between the sections: the rows add up.
    durations["other (cleanups between sections)"] = total - sum(durations.values())
    results["suite"]["durations"] = {name: round(seconds, 1) for name, seconds in durations.items()}
    paths = {**write_text(results, args.out), "png": png}
    print(f"report: {paths['md']}  ({results['suite']['seconds']:.0f} s)", flush=True)
    print(paths["md"].read_text().split("## Polling vs WebSocket")[0], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
