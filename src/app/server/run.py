"""Serve the API with the socket settings the real-time protocol relies on: `python -m app.server.run`.

uvicorn does the WebSocket keepalive: it pings every WS_HEARTBEAT_SECONDS and closes a connection whose
pong has not come back within two intervals (two missed pings). Per-message deflate is off: frames are
small JSON, and compressing them cost latency and memory per connection for little gain.

The WebSocket implementation is named (websockets' sans-I/O protocol: no task or buffer of its own per
connection) rather than left to uvicorn's `auto`, which would pick another if the installed packages
changed. It is uvicorn's, with a way to write a frame without awaiting (app.server.ws_protocol, issue 13).
uvicorn buffers a whole message before the app sees it, 16 MiB by default; client frames are commands of
at most WS_MAX_FRAME_BYTES, so it buffers that plus a margin: a frame a little too big still gets the
app's `frame_too_large` answer on a socket that stays open, a bigger one closes it with 1009.

Forwarding headers are trusted from nobody by default (issue 12, finding 8): the throttles count the
client's address, and with uvicorn's own default (trust 127.0.0.1) anything on the host, or a proxy that
appends rather than replaces X-Forwarded-For, could give every request an address, and a budget, of its
own. Behind a reverse proxy set FORWARDED_ALLOW_IPS to the proxy's address(es).

HTTP is uvicorn's httptools protocol with a request head timeout, body timeouts and a cap on open
connections (app.server.http_protocol, issue 12); its limits come from the environment (HTTP_*), so
`http_options()` only names the class. The soft file limit is raised to the hard one first: the default
connection cap derives from it.

The benchmarks start uvicorn with `cli_args()`, the same options on its command line; the test process rig
passes `http_cli_args()`, `ws_cli_args()` and `proxy_cli_args()`.
"""

from __future__ import annotations

import logging
import os

import uvicorn

from app.config import RealtimeSettings, get_settings
from app.server.http_protocol import raise_open_files_limit

FRAME_MARGIN_BYTES = 64 * 1024
HTTP_PROTOCOL = "app.server.http_protocol:GuardedHttpToolsProtocol"
WS_PROTOCOL = "app.server.ws_protocol:FramesWebSocketProtocol"


def http_options() -> dict[str, object]:
    return {"http": HTTP_PROTOCOL}


def http_cli_args() -> list[str]:
    return ["--http", HTTP_PROTOCOL]


def ws_cli_args() -> list[str]:
    """The WebSocket protocol class alone (the test process rig's servers use it too)."""
    return ["--ws", WS_PROTOCOL]


def websocket_options(realtime: RealtimeSettings) -> dict[str, object]:
    return {
        "ws": WS_PROTOCOL,
        "ws_max_size": realtime.max_frame_bytes + FRAME_MARGIN_BYTES,
        "ws_ping_interval": realtime.heartbeat_s,
        "ws_ping_timeout": 2 * realtime.heartbeat_s,
        "ws_per_message_deflate": False,
    }


def proxy_options(forwarded_allow_ips: str | None) -> dict[str, object]:
    """Proxy headers only from the addresses FORWARDED_ALLOW_IPS names; unset or empty: from nobody."""
    if not forwarded_allow_ips:
        return {"proxy_headers": False}
    return {"proxy_headers": True, "forwarded_allow_ips": forwarded_allow_ips}


def cli_args(realtime: RealtimeSettings, forwarded_allow_ips: str | None = None) -> list[str]:
    """`http_options`, `websocket_options` and `proxy_options` as `uvicorn` command-line arguments."""
    args = http_cli_args()
    for name, value in websocket_options(realtime).items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args + proxy_cli_args(forwarded_allow_ips)


def proxy_cli_args(forwarded_allow_ips: str | None) -> list[str]:
    """`proxy_options` as `uvicorn` command-line arguments (its own default trusts 127.0.0.1)."""
    if not forwarded_allow_ips:
        return ["--no-proxy-headers"]
    return ["--proxy-headers", "--forwarded-allow-ips", forwarded_allow_ips]


def access_log_enabled(log_level: str, access_log: str | None) -> bool:
    """uvicorn's access log (one INFO line per request) follows LOG_LEVEL unless ACCESS_LOG says otherwise.

    At WARNING and above its lines would be dropped anyway, but only after uvicorn built and filtered each
    record: on the webhook path that was ~5% of the API's CPU per request (issue 13's profile). ACCESS_LOG=1
    or 0 forces it on or off whatever the level.
    """
    if access_log is not None and access_log != "":
        return access_log == "1"
    level: int = logging.getLevelName(log_level.upper())
    return level <= logging.INFO


def main() -> None:
    settings = get_settings()
    raise_open_files_limit()
    level = settings.app.log_level
    uvicorn.run(
        "app.asgi:app",
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ.get("PORT", "3001")),
        workers=int(os.environ.get("WEB_CONCURRENCY", "1")),
        timeout_graceful_shutdown=int(os.environ.get("GRACEFUL_SHUTDOWN_SECONDS", "20")),
        log_level=logging.getLevelName(level.upper()),
        access_log=access_log_enabled(level, os.environ.get("ACCESS_LOG")),
        **http_options(),  # type: ignore[arg-type]
        **proxy_options(os.environ.get("FORWARDED_ALLOW_IPS")),  # type: ignore[arg-type]
        **websocket_options(settings.realtime),  # type: ignore[arg-type]
    )


if __name__ == "__main__":
    main()
