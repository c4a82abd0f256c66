"""A flood of concurrent POSTs from one loopback address, in a process of its own:
`python -m tests.security.flooder PORT ADDRESS PATH COUNT BODY_JSON_TEMPLATE`; prints the statuses as JSON.

The test that times webhook acks must not share its event loop with 600 connections being opened (the
client's own loop would then be what is late, not the server). Each POST has a connection of its own,
written by hand: httpx would cost seconds of CPU for 600.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter


async def post(port: int, address: str, path: str, body: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(address, 0))
    try:
        head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        writer.write(f"{head}content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body)
        status_line = await asyncio.wait_for(reader.readline(), 30)
        return int(status_line.split()[1])
    finally:
        writer.close()


async def flood(port: int, address: str, path: str, count: int, template: str) -> Counter[int]:
    bodies = [template.replace("{i}", str(i)).encode() for i in range(count)]
    return Counter(await asyncio.gather(*(post(port, address, path, body) for body in bodies)))


def main() -> None:
    port, address, path, count, template = sys.argv[1:6]
    statuses = asyncio.run(flood(int(port), address, path, int(count), template))
    print(json.dumps({str(status): n for status, n in statuses.items()}))


if __name__ == "__main__":
    main()
