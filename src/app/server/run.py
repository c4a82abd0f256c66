"""Serve the API with the socket settings the real-time protocol relies on: `python -m app.server.run`.

uvicorn does the WebSocket keepalive: it pings every WS_HEARTBEAT_SECONDS and closes a connection whose
pong has not come back within two intervals (two missed pings). Per-message deflate is off: frames are
small JSON, and compressing them cost latency and memory per connection for little gain.
"""

from __future__ import annotations

import os

import uvicorn

from app.config import get_settings


def main() -> None:
    settings = get_settings()
    heartbeat = settings.realtime.heartbeat_s
    uvicorn.run(
        "app.asgi:app",
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "3001")),
        workers=int(os.environ.get("WEB_CONCURRENCY", "1")),
        ws_ping_interval=heartbeat,
        ws_ping_timeout=2 * heartbeat,
        ws_per_message_deflate=False,
        timeout_graceful_shutdown=int(os.environ.get("GRACEFUL_SHUTDOWN_SECONDS", "20")),
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        access_log=os.environ.get("ACCESS_LOG", "1") == "1",
    )


if __name__ == "__main__":
    main()
