"""A PostgreSQL of a test's own (the embedded one `just test` uses), which the test can stop and start again
on the same port and data directory, so an API process that keeps running finds it where it was."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

from alembic import command

from app.lib.embedded import _postgres
from tests.databases import alembic_config


class PrivatePostgres:
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


@contextlib.contextmanager
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
