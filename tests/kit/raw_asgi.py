"""The raw ASGI baseline of the suite: `uvicorn tests.kit.raw_asgi:app` answers every request with the
bytes of a file, chosen by exact path (else the default), and nothing else: no routing, auth, cache or
database. Standard library only, so it starts in a fraction of a second.

SUITE_RAW_ROUTES is a JSON object {path: file, "": default file}; each file is read at its first request
(so the bench may write it after starting the process) and kept.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

ROUTES_ENV = "SUITE_RAW_ROUTES"

_routes: dict[str, str] = {}
_answers: dict[str, list[dict[str, Any]]] = {}


def _answer(path: str) -> list[dict[str, Any]]:
    key = path if path in _routes else ""
    answer = _answers.get(key)
    if answer is None:
        body = Path(_routes[key]).read_bytes()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        answer = _answers[key] = [
            {"type": "http.response.start", "status": 200, "headers": headers},
            {"type": "http.response.body", "body": body},
        ]
    return answer


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] == "http":
        for message in _answer(scope["path"]):
            await send(message)
        return
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                _routes.update(json.loads(os.environ[ROUTES_ENV]))
                await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
