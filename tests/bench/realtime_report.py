"""The printed block of the real-time benchmark."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, field

from tests.bench.realtime_clients import Recorder
from tests.bench.realtime_idle import IdleResult
from tests.kit.measure import percentile_ms


@dataclass
class ApiStats:
    achieved: float = math.nan  # webhooks/s actually started over the measured part
    failures: int = 0  # POSTs that raised (connection errors)
    statuses: dict[int, int] = field(default_factory=dict)
    lost: int = 0  # sockets the server closed during the run
    api_cpu: list[float] = field(default_factory=list)  # share of one CPU, per API process
    bench_cpu: float = math.nan
    machine_busy: float = math.nan  # CPUs busy, whole machine (Postgres, Redis and the kernel too)
    connections: int = 0  # keep-alive connections the webhook sender needed


def _figures(samples: list[float]) -> str:
    return f"p50 {percentile_ms(samples, 50):6.2f} ms  p99 {percentile_ms(samples, 99):6.2f} ms"


def _peak(samples: list[float]) -> str:
    return f"max {max(samples, default=math.nan) * 1000:5.0f} ms"


def print_report(
    args: argparse.Namespace,
    api: Recorder,
    relay: Recorder,
    stats: ApiStats,
    relay_rate: float,
    idle: IdleResult | None,
) -> None:
    agents = args.agents_per_room
    expected = len(api.measured()) * agents
    p99, relay_p99 = percentile_ms(api.latencies, 99), percentile_ms(relay.latencies, 99)
    orgs = args.orgs or args.rooms
    cpu = " + ".join(f"{share:.0%}" for share in stats.api_cpu)
    print(
        f"realtime benchmark: 2 API processes, {args.rooms} rooms x {agents} agents "
        f"({orgs} orgs of ~{args.rooms * agents // orgs} sockets), {args.rate:g} webhooks/s "
        f"for {args.seconds:g} s ({os.cpu_count()} CPUs)"
    )
    print(
        f"  webhook -> frame   {_figures(api.latencies)}  {_peak(api.latencies)}   "
        f"({len(api.measured())} messages, {api.deliveries()}/{expected} deliveries, "
        f"{expected - api.deliveries()} missing)"
    )
    every = api.every_agent_latencies(agents)
    print(f"    every agent      {_figures(every)}             (until the last socket of the room had it)")
    acks = api.acks()
    print(f"    webhook 200      {_figures(acks)}  {_peak(acks)}   (POST start -> response)")
    print(f"    frame after 200  {_figures(api.after_response())}   (response -> frame; < 0: frame first)")
    print(
        f"    offered {stats.achieved:.0f} webhooks/s, statuses {stats.statuses}, failed posts "
        f"{stats.failures}, sockets closed by server {stats.lost}; other frames {api.other_frames}"
    )
    print(
        f"    CPU under load: {stats.machine_busy:.2f} of {os.cpu_count()} busy: API {cpu}, bench client "
        f"{stats.bench_cpu:.0%}, the rest Postgres, Redis, kernel; {stats.connections} HTTP connections"
    )
    print(
        f"  redis relay        {_figures(relay.latencies)}  {_peak(relay.latencies)}   "
        f"({relay.deliveries()}/{expected} deliveries, {relay_rate:.0f}/s, same rooms, no HTTP/DB)"
    )
    print(f"  p99 ratio = {p99 / relay_p99:.2f}        goal (issue 13): p99 <= 15 ms")
    if idle is None:
        print("  idle connections   not measured (--idle 0)")
        return
    print(
        f"  idle connections   {idle.held} held ({idle.failed} failed), RSS "
        f"{(idle.after_kb - idle.before_kb) / 1024:+.1f} MB -> {idle.kb_per_connection:.1f} KB per connection"
        f"   goal: <= 30 KB"
    )
