"""The CLI's failures, run as an operator runs it (a subprocess): missing configuration is one line on
stderr and exit 2, and a database error is named as the driver names it, a uniqueness error only when
Postgres reported one (issue 14: a prepared-statement clash read "already exists or conflicts")."""

from __future__ import annotations

import subprocess
import sys
from uuid import uuid4

import pytest

from app.config import Settings
from tests.kit.data import env_for
from tests.kit.databases import ROOT, scratch_database


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL and REDIS_URL must be set"),
        ({"REDIS_URL": ""}, "DATABASE_URL and REDIS_URL must be set"),
        ({"DATABASE_URL": "", "REDIS_URL": ""}, "DATABASE_URL and REDIS_URL must be set"),
        ({"APP_ENV": "production", "JWT_SECRET": ""}, "JWT_SECRET must be set"),
        ({"DB_POOL_SIZE": "lots"}, "DB_POOL_SIZE must be an integer"),
    ],
)
def test_missing_or_unreadable_configuration_is_one_line_and_exit_2(
    settings: Settings, unset: dict[str, str], named: str
) -> None:
    result = cli(
        env_for(settings, **unset), "admin", "create-org", "Nobody", "--slug", f"none-{uuid4().hex[:8]}"
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("app: ") and named in line


def test_help_needs_no_configuration(settings: Settings) -> None:
    result = cli(env_for(settings, DATABASE_URL="", REDIS_URL=""), "admin", "--help")
    assert result.returncode == 0 and "create-org" in result.stdout


def test_a_database_error_is_named_as_the_driver_names_it(
    service_urls: tuple[str, str], settings: Settings
) -> None:
    # A database without the schema: the driver says the table does not exist, and so must the CLI.
    with scratch_database(service_urls[0], "crm_cli_bare", migrate=False) as bare:
        result = cli(env_for(settings, DATABASE_URL=bare), "admin", "create-org", "Bare", "--slug", "bare")
    assert result.returncode == 1
    [line] = result.stderr.splitlines()
    assert "already exists" not in line
    assert "42P01" in line and "UndefinedTableError" in line and "organizations" in line, line


def test_a_real_uniqueness_error_names_its_constraint(settings: Settings) -> None:
    env, slug = env_for(settings), f"twice-{uuid4().hex[:8]}"
    assert cli(env, "admin", "create-org", "Twice", "--slug", slug).returncode == 0
    again = cli(env, "admin", "create-org", "Twice", "--slug", slug)
    assert again.returncode == 1
    [line] = again.stderr.splitlines()
    assert "already exists or conflicts with existing data" in line and "organizations" in line, line
