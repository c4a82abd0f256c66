"""A flood of concurrent POSTs from one loopback address, in a process of its own:
`python -m tests.security.flooder PORT ADDRESS PATH COUNT BODY_TEMPLATE`; prints the statuses as JSON
(`{i}` in the template becomes the request's number).

The test that times webhook acks must not share its event loop with 600 connections being opened (the
client's own loop would then be what is late, not the server), and on a 2-core machine the flood's own CPU
is taken from the server under test: so each POST has a connection of its own driven by plain non-blocking
sockets and one selector — a few tens of microseconds each, where asyncio streams cost hundreds and httpx
milliseconds.
"""

from __future__ import annotations

import json
import selectors
import socket
import sys
import time
from collections import Counter

DEADLINE_S = 30.0


def flood(port: int, address: str, path: str, count: int, template: str) -> Counter[int]:
    selector = selectors.DefaultSelector()
    requests: dict[socket.socket, bytes] = {}
    for i in range(count):
        body = template.replace("{i}", str(i)).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind((address, 0))
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        requests[sock] = head.encode() + body
        selector.register(sock, selectors.EVENT_WRITE, sock)
    statuses: Counter[int] = Counter()
    answers: dict[socket.socket, bytes] = {}
    deadline = time.monotonic() + DEADLINE_S
    while requests.keys() - answers.keys() and time.monotonic() < deadline:
        for key, events in selector.select(timeout=1.0):
            sock = key.data
            if events & selectors.EVENT_WRITE:
                sock.send(requests[sock])  # small: one send fits a fresh socket's buffer
                selector.modify(sock, selectors.EVENT_READ, sock)
                continue
            try:
                chunk = sock.recv(4096)
            except ConnectionError:
                chunk = b""
            if not chunk or b"\r\n" in chunk:
                line = chunk.split(b"\r\n", 1)[0].split()
                statuses[int(line[1]) if len(line) > 1 else 0] += 1
                answers[sock] = chunk
                selector.unregister(sock)
                sock.close()
    for sock in requests.keys() - answers.keys():
        statuses[0] += 1  # no answer within the deadline
        sock.close()
    return statuses


def main() -> None:
    port, address, path, count, template = sys.argv[1:6]
    statuses = flood(int(port), address, path, int(count), template)
    print(json.dumps({str(status): n for status, n in statuses.items()}))


if __name__ == "__main__":
    main()
