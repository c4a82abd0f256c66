"""`just dev`: Postgres and Redis (embedded unless configured), migrations, then the API and the worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from app.config import dev_state_dir, load_dotenv
from app.lib.embedded import EmbeddedServiceError, describe, dev_run_environment, dev_services

STOP_TIMEOUT = 10.0


def _migrate(env: dict[str, str]) -> None:
    if not Path("alembic.ini").is_file():
        print("warning: no alembic.ini here, skipping migrations", file=sys.stderr)
        return
    done = subprocess.run([sys.executable, "-m", "alembic", "upgrade", "head"], env=env, check=False)
    if done.returncode:
        raise SystemExit(f"alembic upgrade head failed (exit {done.returncode})")


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own process group: a terminal Ctrl-C reaches only us, so each child gets exactly one SIGTERM
    # (a second SIGINT makes uvicorn skip its graceful shutdown).
    return subprocess.Popen([sys.executable, "-m", *args], env=env, process_group=0)  # noqa: S603


def _stop(children: dict[str, subprocess.Popen[bytes]]) -> None:
    for child in children.values():
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, child in children.items():
        try:
            child.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in {STOP_TIMEOUT:.0f}s, killing it", file=sys.stderr)
            child.kill()
            child.wait()


def main() -> None:
    load_dotenv()
    try:
        _serve()
    except EmbeddedServiceError as exc:
        sys.exit(f"error: {exc}")


def _serve() -> None:
    host, port = os.environ.get("HOST", "127.0.0.1"), os.environ.get("PORT", "3001")
    stopping: list[int] = []

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    state_dir = dev_state_dir().resolve()
    with dev_services(state_dir, ephemeral=False) as urls:
        env = dev_run_environment(urls, state_dir, app_env="dev")
        env["APP_ENV"] = env.get("APP_ENV") or "dev"  # a dev run by name, embedded servers or not
        env.setdefault("MEDIA_STORAGE_URL", (state_dir / "media").resolve().as_uri())
        print("\n".join(describe(urls)), flush=True)
        _migrate(env)
        print(f"API: http://{host}:{port}", flush=True)
        previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
        children: dict[str, subprocess.Popen[bytes]] = {}
        try:
            children["api"] = _spawn(["app.server.run"], {**env, "HOST": host, "PORT": port})
            children["arq"] = _spawn(["arq", "app.workers.WorkerSettings"], env)
            children["arq-media"] = _spawn(["arq", "app.workers.MediaWorkerSettings"], env)
            while not stopping and all(child.poll() is None for child in children.values()):
                time.sleep(0.1)
            crashed = {name: child.returncode for name, child in children.items() if child.poll() is not None}
        finally:
            _stop(children)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if crashed and not stopping:
        # One of them died on its own (import error, port taken): the dev run failed.
        sys.exit(f"stopped because {', '.join(f'{n} exited with {rc}' for n, rc in crashed.items())}")


if __name__ == "__main__":
    main()
