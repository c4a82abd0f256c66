# WhatsApp CRM backend. Prerequisite on a fresh machine: `pip install uv rust-just` (Python >= 3.11).
# With DATABASE_URL / REDIS_URL unset, recipes start embedded Postgres and Redis (data in .dev/).

set dotenv-load := false

embedded := "uv run python -m app.lib.embedded exec"
# xdist workers of `just test`: 2 for the 2-core machines it runs on
test_workers := env("TEST_WORKERS", "2")

default:
    @just --list

# Install the locked dependencies into .venv
install:
    uv sync --frozen

# Run the API (port 3001) and the arq worker; embedded Postgres/Redis when no URLs are set
dev: install
    exec uv run python -m app.devserver

# What the tests need besides Python: pgbouncer (tests/integration/test_pgbouncer.py), via apt-get when there is one
test-deps:
    @command -v pgbouncer >/dev/null 2>&1 || test -x /usr/sbin/pgbouncer || \
        { command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] && s= || s="sudo -n"; \
          $s apt-get install -y -qq pgbouncer >/dev/null 2>&1 || { $s apt-get update -qq && $s apt-get install -y -qq pgbouncer; }; }; } || \
        echo "test-deps: could not install pgbouncer; install it (Debian: apt-get install pgbouncer)" >&2

# Against real Postgres/Redis (embedded throw-away ones when no URLs are set). Without arguments: the
# parallel-safe tests on TEST_WORKERS xdist workers, then the timing-sensitive ones (marker `serial`) alone.
# With arguments it is exactly `pytest ARGS` in one process: `just test -m security`, `just test tests/unit`.
[doc("Every test (2 xdist workers, then the `serial` ones alone); with ARGS just `pytest ARGS`")]
[positional-arguments]
test *args: install test-deps
    #!/usr/bin/env bash
    set -uo pipefail
    if [ $# -gt 0 ]; then exec {{embedded}} --ephemeral -- uv run pytest "$@"; fi
    exec {{embedded}} --ephemeral -- bash -c '
        uv run pytest -n {{test_workers}} --dist loadgroup -m "not serial"; parallel=$?
        uv run pytest -m serial; serial=$?
        if [ $parallel -ne 0 ] || [ $serial -ne 0 ]; then
            echo "just test: the parallel part exited $parallel, the serial part $serial" >&2
            exit 1
        fi'

# The fast tier (~1 min here): unit and integration tests that start no process of their own
[positional-arguments]
test-fast *args: install
    {{embedded}} --ephemeral -- uv run pytest -m "(unit or integration) and not process" "$@"

# Apply database migrations (alembic upgrade head)
migrate: install
    {{embedded}} -- uv run alembic upgrade head

# Run only the API (production-style: uvicorn with the WebSocket keepalive settings)
serve: install
    {{embedded}} -- uv run python -m app.server.run

# Run only the arq worker
worker: install
    {{embedded}} -- uv run arq app.workers.WorkerSettings

# Run only the media worker (downloads and processing, on a queue of its own)
worker-media: install
    {{embedded}} -- uv run arq app.workers.MediaWorkerSettings

# Exit 0 if a worker reported its health check within the last interval (for probes)
worker-check: install
    {{embedded}} -- uv run arq app.workers.WorkerSettings --check

# ruff + mypy
lint: install
    uv run ruff check src tests alembic
    uv run ruff format --check src tests alembic
    uv run mypy

# Create an org, an admin, one instance per gateway and a few chats; prints logins and webhook URLs (JSON)
demo-data: install
    {{embedded}} -- sh -c 'uv run alembic upgrade head >&2 && uv run app demo-data'

# Ingest benchmark: webhooks/s and p50/p99 ack at 16 senders vs raw asyncpg INSERTs
bench-ingest: install
    {{embedded}} --ephemeral -- uv run python -m tests.bench.ingest

# Real-time benchmark: webhook -> WebSocket frame latency across 2 API processes, idle memory per socket
bench-realtime: install
    {{embedded}} --ephemeral -- uv run python -m tests.bench.realtime

# Read benchmark: cached page GET req/s and p50/p99 vs raw ASGI, SQL per cached GET, RSS 1k vs 100k (--quick)
bench-read *args: install
    {{embedded}} --ephemeral -- uv run python -m tests.bench.read {{args}}

# Media benchmark: ingest p50/p99 ack with vs without a saturated media worker (goal <= 1.2x), images/s (--quick)
bench-media *args: install
    {{embedded}} --ephemeral -- uv run python -m tests.bench.media {{args}}

# Every benchmark + the seed's table (polling vs WebSocket, history p50/p99, RSS per user) vs baselines: bench/results/report.{md,png,json} (--quick)
bench *args: install
    {{embedded}} --ephemeral -- uv run python -m tests.bench.suite {{args}}

# The suite in its quick mode (under 2 minutes; rougher figures)
bench-quick: (bench "--quick")

# The `app` CLI (admin commands) with the dev services' URLs
app *args: install
    {{embedded}} -- uv run app {{args}}
