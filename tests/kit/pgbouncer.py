"""A real pgbouncer in transaction mode in front of the test's Postgres, as Supabase's pooler (port 6543)
behaves: each transaction may run on another server connection, and server connections are shared by
every client, so prepared statements neither persist nor may share names (issue 14).

The binary is Debian's `pgbouncer` package (`just test-deps` installs it). Without it the fixture fails
with one message naming that recipe: a test that cannot run must not pass by being skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from app.config import normalise_database_url
from tests.kit.measure import free_port

MISSING = "pgbouncer is not installed: run `just test-deps` (apt-get install -y pgbouncer)"
START_TIMEOUT = 20.0
# Few server connections for many clients: what one client prepared, the next one finds on its server.
SERVER_POOL_SIZE = 3


def _binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )
    if found is None:
        raise RuntimeError(MISSING)
    return found


class PgBouncer:
    """One pgbouncer on a free loopback port; `url(database_url)` is that URL through it."""

    def __init__(self, server_url: str, workdir: Path) -> None:
        server = make_url(normalise_database_url(server_url))
        self.port = free_port()
        self.log_path = workdir / "pgbouncer.log"
        target = f"host={server.host or '127.0.0.1'} port={server.port or 5432}"
        if server.password:
            target += f" user={server.username} password={server.password}"
        user = server.username or "postgres"
        (workdir / "userlist.txt").write_text(f'"{user}" ""\n')
        (workdir / "pgbouncer.ini").write_text(
            "\n".join(
                [
                    "[databases]",
                    f"* = {target}",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {self.port}",
                    "unix_socket_dir =",
                    "auth_type = trust",
                    f"auth_file = {workdir / 'userlist.txt'}",
                    "pool_mode = transaction",
                    f"default_pool_size = {SERVER_POOL_SIZE}",
                    "max_client_conn = 500",
                    "ignore_startup_parameters = extra_float_digits",
                    "query_wait_timeout = 30",
                    "",
                ]
            )
        )
        for path in workdir.iterdir():
            path.chmod(0o644)
        workdir.chmod(0o755)  # pgbouncer refuses to run as root: it drops to `nobody`, who must read these
        command = [_binary(), str(workdir / "pgbouncer.ini")]
        if os.geteuid() == 0:
            command[1:1] = ["-u", "nobody"]
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if self._proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self._proc.returncode}:\n{self.logs()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"pgbouncer did not listen on {self.port}:\n{self.logs()}")
            time.sleep(0.02)

    def url(self, database_url: str) -> str:
        """`database_url`'s database, reached through this pgbouncer."""
        url = make_url(normalise_database_url(database_url)).set(host="127.0.0.1", port=self.port)
        return url.set(password=None).render_as_string(hide_password=False)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


@contextmanager
def pgbouncer(server_url: str) -> Iterator[PgBouncer]:
    """A pgbouncer in transaction mode in front of `server_url`'s server, stopped on exit."""
    with tempfile.TemporaryDirectory(prefix="pgbouncer-") as tmp:
        bouncer = PgBouncer(server_url, Path(tmp))
        try:
            yield bouncer
        finally:
            bouncer.stop()
