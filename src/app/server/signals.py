"""SIGTERM: close every WebSocket with 1001 (going away) at once, then let uvicorn shut down as usual.

Uvicorn's own shutdown closes open sockets with 1012 only after it stops accepting; agents' browsers
should hear "going away" first so they reconnect to another process straight away.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

from app.domain.realtime.connection import CLOSE_GOING_AWAY
from app.domain.realtime.hub import Hub


def close_sockets_on_sigterm(hub: Hub) -> Callable[[], None]:
    """Chain in front of the current SIGTERM handler; returns the function that restores it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers (test clients run apps elsewhere)
    loop = asyncio.get_running_loop()
    previous: Any = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        loop.call_soon_threadsafe(hub.close_all, CLOSE_GOING_AWAY, "server shutting down")
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_sigterm)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore
