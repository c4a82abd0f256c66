"""uvicorn's access log follows LOG_LEVEL unless ACCESS_LOG forces it (issue 13: at WARNING each request still
built and filtered an INFO record, ~5% of a webhook's CPU)."""

from __future__ import annotations

import pytest

from app.server.run import access_log_enabled


@pytest.mark.parametrize(
    ("level", "forced", "expected"),
    [
        ("INFO", None, True),
        ("debug", None, True),
        ("WARNING", None, False),
        ("ERROR", "", False),
        ("WARNING", "1", True),
        ("INFO", "0", False),
    ],
)
def test_the_access_log_follows_the_level_unless_forced(
    level: str, forced: str | None, expected: bool
) -> None:
    assert access_log_enabled(level, forced) is expected
