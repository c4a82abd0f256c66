"""The benchmark suite end to end, in its smoke mode (tiny sizes, the earlier benchmarks skipped but a tiny
bench-ingest): it runs as `just bench` would run it, against this run's Postgres and Redis, and writes the
three report files. Figures are not asserted (machines are shared and noisy); the report's shape is, and
that its per-section durations add up to the run's total."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

from tests.kit.processes import ROOT

SCENARIOS = {"polling_vs_websocket", "history", "rss"}
BENCHES = {"ingest", "realtime", "read", "media"}


def test_smoke_run_writes_markdown_json_and_png(service_urls: tuple[str, str], tmp_path: Path) -> None:
    database_url, redis_url = service_urls
    out = tmp_path / "results"
    env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
    run = subprocess.run(
        [sys.executable, "-m", "tests.bench.suite", "--smoke", "--out", str(out)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, f"{run.stdout[-4000:]}\n{run.stderr[-4000:]}"

    report = json.loads((out / "report.json").read_text())
    assert {"suite", "scenarios", "benchmarks", "summary"} <= report.keys()
    assert report["suite"]["mode"] == "smoke"
    scenarios = report["scenarios"]
    assert scenarios.keys() == SCENARIOS
    for name, section in scenarios.items():
        assert "error" not in section, (
            f"{name}: {section['error']}\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
        )

    polling = scenarios["polling_vs_websocket"]
    assert [row["agents"] for row in polling["rows"]] == [4, 12]
    for row in polling["rows"]:
        assert {"polling", "polling_raw_asgi", "websocket", "relay", "seed"} <= row.keys()
        assert {"requests_per_min", "cpu_s_per_min", "seen_p50_ms", "statuses"} <= row["polling"].keys()
        assert {"first_minute_requests", "steady_requests_per_min", "frames_per_min", "cpu_s_per_min"} <= row[
            "websocket"
        ].keys()
        assert row["websocket"]["subscribed"] == row["agents"]
        assert "reduction_first_minute_pct" in row and "reduction_steady_pct" in row
    assert {"cpu_s_per_min", "webhooks"} <= polling["traffic_alone"].keys()

    history = scenarios["history"]
    assert [(row["tier"], row["what"]) for row in history["rows"]] == [
        ("cached (L1)", "latest page, repeated"),
        ("cached (L2)", "latest page, L1 off"),
        ("uncached", "`?before_seq=` window"),
        ("uncached", "first read (L1 and L2 miss)"),
        ("uncached", "inbox page (`?cursor=`)"),
    ]
    for row in history["rows"]:
        assert {"p50_ms", "p99_ms", "per_s"} <= row["ours"].keys() and "ratio_p99" in row
        assert row["ours"]["wrong_bodies"] == 0 and set(row["ours"]["statuses"]) == {"200"}

    rss = scenarios["rss"]
    assert [row["users"] for row in rss["rows"]] == [4, 12]
    assert {"rss_mib", "relay_rss_mib", "kb_per_user", "ratio"} <= rss["rows"][0].keys()

    benches = report["benchmarks"]
    assert benches.keys() == BENCHES
    assert benches["ingest"]["status"] == "ok", benches["ingest"]
    assert "ingest benchmark" in benches["ingest"]["output"]
    for name in BENCHES - {"ingest"}:
        assert benches[name]["status"] in {"skipped (--smoke)", "missing"}
    assert all(
        set(row) == {"scenario", "our figure", "baseline (same run)", "ratio", "seed's claim"}
        for row in report["summary"]
    )

    # Where the run's time went: every section and bench that ran, rows adding up to the printed total.
    durations = report["suite"]["durations"]
    assert {"polling vs websocket", "history", "rss", "bench-ingest"} <= durations.keys()
    assert not {"bench-realtime", "bench-read", "bench-media"} & durations.keys()  # skipped: no row
    assert all(seconds >= 0 for seconds in durations.values())
    assert abs(sum(durations.values()) - report["suite"]["seconds"]) < 1.0

    markdown = (out / "report.md").read_text()
    assert f"Run time: **{report['suite']['seconds']:.0f} s** wall in all" in markdown
    assert "| section | seconds |" in markdown and "| bench-ingest |" in markdown
    assert "| scenario | our figure | baseline (same run) | ratio | seed's claim |" in markdown
    for heading in ("## Polling vs WebSocket", "## History response time", "## Memory with connected users"):
        assert heading in markdown
    assert "ingest benchmark" in markdown and "![report](report.png)" in markdown

    png = (out / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 800 and height >= 600
