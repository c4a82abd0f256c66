"""JWT_SECRET at startup (issue 12, finding 12): missing or short is refused unless APP_ENV is exactly `dev`
or `test`; the dev secret lives in DEV_STATE_DIR, not in ./.dev of whatever directory a process runs in."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from app.config import Settings

SHORT = "short-but-secret-value-31-bytes"  # 31 bytes
assert len(SHORT.encode()) == 31


@pytest.fixture(autouse=True)
def clean_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without .env or .dev, and only the variables a test sets."""
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    for name in ("APP_ENV", "JWT_SECRET", "DEV_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql+asyncpg://postgres@127.0.0.1:1/none")
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    return workdir


@pytest.mark.parametrize("app_env", [None, "production", "prod", "Dev", "dev ", "development", "staging"])
@pytest.mark.parametrize("secret", [None, SHORT, "x"])
def test_a_missing_or_short_secret_is_refused_outside_dev_and_test(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path, app_env: str | None, secret: str | None
) -> None:
    if app_env is not None:
        monkeypatch.setenv("APP_ENV", app_env)
    if secret is not None:
        monkeypatch.setenv("JWT_SECRET", secret)
    with pytest.raises(RuntimeError) as refused:
        Settings.from_env()
    message = str(refused.value)
    assert "JWT_SECRET" in message
    assert secret is None or secret not in message  # never its value
    assert not (clean_environment / ".dev").exists()  # and nothing generated


@pytest.mark.parametrize("app_env", [None, "production", "staging"])
def test_a_full_length_secret_is_accepted_anywhere(
    monkeypatch: pytest.MonkeyPatch, app_env: str | None
) -> None:
    if app_env is not None:
        monkeypatch.setenv("APP_ENV", app_env)
    monkeypatch.setenv("JWT_SECRET", SHORT + "!")  # 32 bytes
    assert Settings.from_env().auth.jwt_secret == SHORT + "!"


def test_length_counts_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APP_ENV", "production")
    monkeypatch.setenv("JWT_SECRET", "é" * 16)  # 16 characters, 32 bytes
    assert Settings.from_env().auth.jwt_secret == "é" * 16


@pytest.mark.parametrize("app_env", ["dev", "test"])
def test_dev_and_test_accept_a_short_secret(monkeypatch: pytest.MonkeyPatch, app_env: str) -> None:
    monkeypatch.setenv("APP_ENV", app_env)
    monkeypatch.setenv("JWT_SECRET", "x")
    assert Settings.from_env().auth.jwt_secret == "x"


@pytest.mark.parametrize("app_env", ["dev", "test"])
def test_the_generated_dev_secret_lives_in_dev_state_dir(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path, tmp_path: Path, app_env: str
) -> None:
    state = tmp_path / "state" / "nested"
    monkeypatch.setenv("APP_ENV", app_env)
    monkeypatch.setenv("DEV_STATE_DIR", str(state))
    secret = Settings.from_env().auth.jwt_secret
    assert len(secret.encode()) >= 32
    stored = state / "jwt-secret"
    assert stored.read_text() == secret and stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert sorted(p.name for p in state.iterdir()) == ["jwt-secret"]  # no draft left behind
    assert not (clean_environment / ".dev").exists()  # not in the working directory
    assert Settings.from_env().auth.jwt_secret == secret  # the same one next time


def test_without_dev_state_dir_the_secret_goes_to_dot_dev(
    monkeypatch: pytest.MonkeyPatch, clean_environment: Path
) -> None:
    monkeypatch.setenv("APP_ENV", "dev")
    secret = Settings.from_env().auth.jwt_secret
    assert (clean_environment / ".dev" / "jwt-secret").read_text() == secret
