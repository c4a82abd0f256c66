"""What tests and benchmarks measure, written once (issue 14: percentile, CPU, RSS and free-port readers
stood three times each in tests/ and the benches imported each other's private copies): a process's memory
and CPU from /proc, the machine's CPU, percentiles, a free loopback port, the open-files limit, and the
collector held still while a bench client measures."""

from __future__ import annotations

import contextlib
import gc
import math
import os
import resource
import socket
import statistics
import threading
from collections.abc import Iterator
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


def rss_kib(pid: int) -> int:
    return rss_bytes(pid) // 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU the process has used (counted in clock ticks, 10 ms each)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_seconds_fine(pid: int) -> float:
    """CPU time of a process so far, in ns resolution: the sum of its threads' run time from
    /proc/PID/task/*/schedstat (ticks are too coarse for a few seconds of a lightly loaded server).
    Falls back to the ticks where schedstat is missing."""
    try:
        total = 0
        for task in os.listdir(f"/proc/{pid}/task"):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        return cpu_seconds(pid)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs of the host since boot, this run's processes and any neighbour's
    (only their ratio means anything)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


def percentile_ms(samples: list[float], q: float) -> float:
    """The q-th percentile (q in 0..100, tenths honoured) of samples in seconds, in milliseconds; NaN for
    no sample, the sample itself for one."""
    if len(samples) < 2:
        return samples[0] * 1000 if samples else math.nan
    return statistics.quantiles(samples, n=1000, method="inclusive")[int(q * 10) - 1] * 1000


def free_port() -> int:
    """A loopback TCP port nothing listens on right now (bound as servers bind: TIME_WAIT is free)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit(needed: int) -> int:
    """Raise the soft open-files limit towards the hard one; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, needed))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def quiet_gc() -> Iterator[None]:
    """No collector pauses in the bench process while it measures: they would show up as latency that
    is the client's. What exists is frozen (out of every later collection); the window is seconds long."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


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
