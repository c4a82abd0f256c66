"""Reading a process's memory and CPU from /proc, and sampling its memory while a load runs."""

from __future__ import annotations

import os
import threading
from pathlib import Path

MiB = 1024 * 1024


def status_bytes(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/PID/status (VmRSS, VmHWM…) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def rss_bytes(pid: int) -> int:
    return status_bytes(pid, "VmRSS")


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssSampler:
    """The process's resident memory every few milliseconds while a load runs, from a thread of its own
    (the test's event loop is busy sending or polling); keeps the peak, in bytes."""

    def __init__(self, pid: int, interval_s: float = 0.005) -> None:
        self.pid, self.peak, self.samples = pid, rss_bytes(pid), 0
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self.peak = max(self.peak, rss_bytes(self.pid))
            self.samples += 1

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.peak = max(self.peak, rss_bytes(self.pid))
