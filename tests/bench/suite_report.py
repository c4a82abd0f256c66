"""The suite's report: `report.json` (every figure), `report.md` (tables), `report.png` (matplotlib)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SUMMARY_HEADER = ("scenario", "our figure", "baseline (same run)", "ratio", "seed's claim")
SEED_REDUCTION = "95-99% fewer"


def _n(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _ms(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"


def _ratio(ours: float | None, baseline: float | None) -> str:
    if not ours or not baseline:
        return "—"
    return f"{ours / baseline:.2f}x"


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}%"


# -- the summary rows ------------------------------------------------------------------------------------


def summary_rows(results: dict[str, Any]) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []

    def add(scenario: str, ours: str, baseline: str, ratio: str, seed: str) -> None:
        rows.append(dict(zip(SUMMARY_HEADER, (scenario, ours, baseline, ratio, seed), strict=True)))

    scenarios = results.get("scenarios", {})
    pw = scenarios.get("polling_vs_websocket", {})
    if alone := pw.get("traffic_alone"):
        add(
            f"message traffic alone ({pw['rate_per_s']:g} webhooks/s, no agent)",
            f"API CPU {_n(alone['cpu_s_per_min'], 2)} s/min; ack p50 {_ms(alone['ack_p50_ms'])} ms",
            "—",
            "—",
            "—",
        )
    for row in pw.get("rows", []):
        n, poll, ws = row["agents"], row["polling"], row["websocket"]
        raw, relay, seed = row["polling_raw_asgi"], row["relay"], row["seed"]
        scaled = " (scaled: no claim at this N)" if seed["scaled"] else ""
        add(
            f"{n:,} agents, polling every 3 s",
            f"{_n(poll['requests_per_min'])} req/min; API CPU {_n(poll['cpu_s_per_min'], 2)} s/min",
            f"raw ASGI, same polls: CPU {_n(raw['cpu_s_per_min'], 2)} s/min",
            f"CPU {_ratio(poll['cpu_s_per_min'], raw['cpu_s_per_min'])}",
            f"{_n(seed['polling_requests_per_min'])} req/min{scaled}",
        )
        seed_ws = seed["websocket_requests_per_min"]
        add(
            f"{n:,} agents, WebSocket",
            f"{_n(ws['first_minute_requests'])} req in the first minute, {_n(ws['steady_requests_per_min'])}"
            f"/min after ({_pct(row['reduction_first_minute_pct'])} / {_pct(row['reduction_steady_pct'])} "
            f"fewer); {_n(ws['frames_per_min'])} frames/min; API CPU {_n(ws['cpu_s_per_min'], 2)} s/min "
            f"(+{_n(ws['setup_cpu_s'], 2)} s to connect all)",
            f"Redis→WS relay, same frames: CPU {_n(relay['cpu_s_per_min'], 2)} s/min",
            f"CPU {_ratio(ws['cpu_s_per_min'], relay['cpu_s_per_min'])}",
            f"{_n(seed_ws)} req/min ({SEED_REDUCTION})" if seed_ws else "—",
        )
        add(
            f"{n:,} agents, new message in the inbox",
            f"polling p50 {_ms(poll['seen_p50_ms'])} / p99 {_ms(poll['seen_p99_ms'])} ms; WebSocket p50 "
            f"{_ms(ws['seen_p50_ms'])} / p99 {_ms(ws['seen_p99_ms'])} ms",
            f"relay p50 {_ms(relay['seen_p50_ms'])} / p99 {_ms(relay['seen_p99_ms'])} ms",
            f"WS p99 {_ratio(ws['seen_p99_ms'], relay['seen_p99_ms'])}",
            "—",
        )
    history = scenarios.get("history", {})
    for row in history.get("rows", []):
        ours, base = row["ours"], row["baseline"]
        add(
            f"history, {row['tier']}: {row['what']}",
            f"p50 {_ms(ours['p50_ms'])} / p99 {_ms(ours['p99_ms'])} ms ({_n(ours['per_s'])}/s)",
            f"{base['what']}: p50 {_ms(base['p50_ms'])} / p99 {_ms(base['p99_ms'])} ms",
            f"p50 {_n(row['ratio_p50'], 2)}x / p99 {_n(row['ratio_p99'], 2)}x",
            "50-100 ms (from 200-500 ms)" if row["tier"].startswith("cached") else "200-500 ms (before)",
        )
    rss = scenarios.get("rss", {})
    for row in rss.get("rows", []):
        add(
            f"RSS, {row['users']:,} connected users",
            f"{_n(row['rss_mib'], 1)} MiB ({row['growth_vs_first_pct']:+.1f}% vs {rss['rows'][0]['users']}; "
            f"{_n(row['kb_per_user'], 1)} KB/user)",
            f"relay: {_n(row['relay_rss_mib'], 1)} MiB ({_n(row['relay_kb_per_user'], 1)} KB/user)",
            f"{_n(row['ratio'], 2)}x",
            "constant",
        )
    for name, bench in results.get("benchmarks", {}).items():
        add(f"bench-{name}", bench["status"], "its own, printed below", "printed below", "—")
    return rows


# -- Markdown --------------------------------------------------------------------------------------------


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def _failed(section: dict[str, Any]) -> list[str]:
    return ["", f"**Not measured:** {section['error']}", ""] if "error" in section else []


def markdown(results: dict[str, Any]) -> str:
    suite = results["suite"]
    load = f"load average {suite['load_start']:.1f} at the start, {suite['load_end']:.1f} at the end"
    out = [
        "# Benchmark suite report",
        "",
        f"Mode **{suite['mode']}**, {suite['started']}, commit `{suite['commit']}`, {suite['cpus']} CPUs "
        f"({suite['machine']}; {load}), finished in {suite['seconds']:.0f} s. Figures only: nothing here "
        "passes or fails, and the machine may be shared and noisy. Each baseline ran in the same run, on the "
        "same machine, just before or after the figure it stands next to; a ratio is ours / baseline.",
    ]
    if suite.get("note"):
        out += ["", suite["note"]]
    if suite.get("durations"):
        out += [
            "",
            f"Run time: **{suite['seconds']:.0f} s** wall in all (mode {suite['mode']}), by section:",
            "",
        ]
        rows = [(name, f"{seconds:.1f}") for name, seconds in suite["durations"].items()]
        out += _table(("section", "seconds"), [*rows, ("total", f"{suite['seconds']:.1f}")])
    out += ["", "![report](report.png)", "", "## Summary", ""]
    out += _table(SUMMARY_HEADER, [tuple(r.values()) for r in results["summary"]])

    scenarios = results.get("scenarios", {})
    pw = scenarios.get("polling_vs_websocket", {})
    out += ["", "## Polling vs WebSocket", ""]
    out += _failed(pw)
    if pw.get("rows"):
        ws_window = pw.get("ws_window_s", pw["window_s"])
        alone = _n(pw["traffic_alone"]["cpu_s_per_min"], 2)
        raw_bytes = pw["raw_bytes"]
        method = [
            f"One API process; message traffic {pw['rate_per_s']:g} webhooks/s round robin over",
            f"{pw['conversations']} conversations of one team, the same in both designs.",
            "Polling agents GET the inbox and their open conversation every",
            f"{pw['poll_interval_s']:g} s (start times spread over one interval) for {pw['window_s']:g} s;",
            "WebSocket agents load both once, connect, subscribe, then read frames for",
            f"{ws_window:g} s once all are connected (connect moments spread over",
            f"{pw['connect_spread_s']:g} s).",
            "Requests are what the server answered, counted by the clients; per minute = count x 60 /",
            "window.",
            "WebSocket requests: the first minute counts each agent's session start once (2 GETs, the",
            "upgrade, `subscribe`) plus a minute of steady state: frames the clients sent and one pong per",
            f"{pw['heartbeat_s']:g} s server ping per socket.",
            "CPU: the API process's own (/proc, per thread), per minute of the window, including the ingest",
            f"of the traffic (alone: {alone} s/min); SQL statements: the API's own count, from /stats.",
            f"Baselines ran {pw['baseline_window_s']:g} s each: the same polls against a raw ASGI app",
            f"answering the API's bytes ({raw_bytes['inbox']:,} B inbox, {raw_bytes['page']:,} B page),",
            "and the same sockets against the minimal Redis→WebSocket relay fed the API's frames at the",
            "same rate. Inbox freshness: webhook POST start → the poll response / `conversation.updated`",
            "frame showing it, per agent and message.",
        ]
        out += [" ".join(method), ""]
        header = (
            "agents",
            "polling req/min",
            "WS req first min / after",
            "fewer (first / after)",
            "WS frames/min",
            "API CPU s/min polling / WS (+connect s)",
            "raw ASGI / relay CPU s/min",
            "GET p50 / p99 ms (polling)",
            "SQL statements/min polling / WS (server's count)",
            "inbox freshness p50 / p99 ms: polling · WS · relay",
            "webhook ack p50 ms (polling / WS)",
            "seed: polling / WS req/min",
        )
        rows = []
        for row in pw["rows"]:
            poll, ws, raw, relay, seed = (
                row["polling"],
                row["websocket"],
                row["polling_raw_asgi"],
                row["relay"],
                row["seed"],
            )
            rows.append(
                (
                    f"{row['agents']:,}",
                    _n(poll["requests_per_min"]),
                    f"{_n(ws['first_minute_requests'])} / {_n(ws['steady_requests_per_min'])}",
                    f"{_pct(row['reduction_first_minute_pct'])} / {_pct(row['reduction_steady_pct'])}",
                    _n(ws["frames_per_min"]),
                    f"{_n(poll['cpu_s_per_min'], 2)} / {_n(ws['cpu_s_per_min'], 2)} "
                    f"(+{_n(ws['setup_cpu_s'], 2)})",
                    f"{_n(raw['cpu_s_per_min'], 2)} / {_n(relay['cpu_s_per_min'], 2)}",
                    f"{_ms(poll['get_p50_ms'])} / {_ms(poll['get_p99_ms'])}",
                    f"{_n(poll.get('server_database_statements_per_min'))} / "
                    f"{_n(ws.get('server_database_statements_per_min'))}",
                    f"{_ms(poll['seen_p50_ms'])} / {_ms(poll['seen_p99_ms'])} · {_ms(ws['seen_p50_ms'])} / "
                    f"{_ms(ws['seen_p99_ms'])} · {_ms(relay['seen_p50_ms'])} / {_ms(relay['seen_p99_ms'])}",
                    f"{_ms(poll.get('ack_p50_ms'))} / {_ms(ws.get('ack_p50_ms'))}",
                    f"{_n(seed['polling_requests_per_min'])} / {_n(seed['websocket_requests_per_min'])}",
                )
            )
        out += _table(header, rows)
        checks = []
        for row in pw["rows"]:
            poll, ws = row["polling"], row["websocket"]
            checks.append(
                f"{row['agents']:,} agents: polling statuses {poll['statuses']}, errors {poll['errors']}, "
                f"reconnects {poll['reconnects']}; WebSocket {ws['subscribed']} subscribed, {ws['failed']} "
                f"failed, {ws['closed_by_server']} closed by the server, connect phase {ws['setup_s']:g} s, "
                f"pings counted {ws['pings_counted']}, frames/min by type {ws['frames_by_type_per_min']}; "
                f"webhooks {poll.get('webhook_statuses')} / {ws.get('webhook_statuses')}"
            )
        out += ["", "Checks: " + "; ".join(checks) + "."]

    history = scenarios.get("history", {})
    out += ["", "## History response time", ""]
    out += _failed(history)
    if history.get("rows"):
        out += [
            f"GET /api/whatsapp-optimized/messages/{{id}}: {history['connections']} keep-alive connections "
            f"in a closed loop, {history['seconds_per_run']:g} s per run (L1 and its baseline alternate, "
            "ABBA). "
            f"Latest page {history['page_bytes']:,} B; L1 live: {history['l1_live']}. The seed's claim: "
            f"{history['seed_claim']}.",
            "",
        ]
        header = ("tier", "what", "p50 ms", "p99 ms", "req/s", "baseline", "p50 ms", "p99 ms", "/s", "ratio")
        rows = [
            (
                r["tier"],
                r["what"],
                _ms(r["ours"]["p50_ms"]),
                _ms(r["ours"]["p99_ms"]),
                _n(r["ours"]["per_s"]),
                r["baseline"]["what"],
                _ms(r["baseline"]["p50_ms"]),
                _ms(r["baseline"]["p99_ms"]),
                _n(r["baseline"]["per_s"]),
                f"p50 {_n(r['ratio_p50'], 2)}x / p99 {_n(r['ratio_p99'], 2)}x",
            )
            for r in history["rows"]
        ]
        out += _table(header, rows)
        statuses = "; ".join(
            f"{r['tier']} {r['what']}: {r['ours']['statuses']}, wrong bodies {r['ours']['wrong_bodies']}"
            for r in history["rows"]
        )
        out += ["", f"Checks: {statuses}."]

    rss = scenarios.get("rss", {})
    out += ["", "## Memory with connected users", ""]
    out += _failed(rss)
    if rss.get("rows"):
        out += [
            "A fresh API process; each user an agent with its own token and one WebSocket subscribed to its "
            f"open conversation, idle; RSS {rss['settle_s']:g} s after each step. Before any socket: API "
            f"{rss['api_rss_before_mib']} MiB, relay {rss['relay_rss_before_mib']} MiB. Sockets the server "
            f"counted at the last step: {rss['server_counted_connections']}; failed: {rss['failed']} "
            f"(relay {rss['relay_failed']}).",
            "",
        ]
        header = (
            "users",
            "held",
            "API RSS MiB",
            "vs first step",
            "KB/user",
            "relay RSS MiB",
            "KB/user",
            "ratio",
        )
        rows = [
            (
                f"{r['users']:,}",
                f"{r['held']:,}",
                _n(r["rss_mib"], 1),
                f"{r['growth_vs_first_pct']:+.1f}%",
                _n(r["kb_per_user"], 1),
                _n(r["relay_rss_mib"], 1),
                _n(r["relay_kb_per_user"], 1),
                f"{_n(r['ratio'], 2)}x",
            )
            for r in rss["rows"]
        ]
        out += _table(header, rows)

    out += ["", "## Earlier benchmarks", ""]
    for name, bench in results.get("benchmarks", {}).items():
        command = " ".join(bench["command"]) if bench.get("command") else "—"
        took = f" in {bench['seconds']:.0f} s" if bench.get("seconds") is not None else ""
        out += [f"### bench-{name}: {bench['status']}{took}", "", f"`{command}`", ""]
        if bench.get("output"):
            out += ["```text", bench["output"].rstrip(), "```", ""]
    return "\n".join(out).rstrip() + "\n"


# -- the plot --------------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    def log_x(ax: Any, ticks: list[int]) -> None:
        ax.set_xscale("log")
        ax.set_xticks(ticks)
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())

    scenarios = results.get("scenarios", {})
    fig, axes = plt.subplots(2, 2, figsize=(13, 9))
    (req_ax, cpu_ax), (rss_ax, hist_ax) = axes
    pw = scenarios.get("polling_vs_websocket", {}).get("rows", [])
    if pw:
        ns = [r["agents"] for r in pw]
        req_ax.plot(ns, [r["polling"]["requests_per_min"] for r in pw], "o-", label="polling every 3 s")
        req_ax.plot(
            ns, [r["websocket"]["first_minute_requests"] for r in pw], "s-", label="WebSocket, 1st minute"
        )
        req_ax.plot(
            ns, [r["websocket"]["steady_requests_per_min"] for r in pw], "^-", label="WebSocket, after"
        )
        seed_ns = [r["agents"] for r in pw if r["seed"]["websocket_requests_per_min"]]
        req_ax.plot(
            ns, [r["seed"]["polling_requests_per_min"] for r in pw], "o--", alpha=0.5, label="seed: polling"
        )
        req_ax.plot(
            seed_ns,
            [r["seed"]["websocket_requests_per_min"] for r in pw if r["seed"]["websocket_requests_per_min"]],
            "s--",
            alpha=0.5,
            label="seed: WebSocket",
        )
        log_x(req_ax, ns)
        req_ax.set_yscale("log")
        req_ax.set_xlabel("agents")
        req_ax.set_ylabel("requests / min")
        req_ax.set_title("Requests per minute, same message traffic")
        req_ax.legend(fontsize=8)

        cpu_ax.plot(ns, [r["polling"]["cpu_s_per_min"] for r in pw], "o-", label="API, polling")
        cpu_ax.plot(ns, [r["websocket"]["cpu_s_per_min"] for r in pw], "s-", label="API, WebSocket")
        cpu_ax.plot(
            ns, [r["polling_raw_asgi"]["cpu_s_per_min"] for r in pw], "o:", label="raw ASGI, same polls"
        )
        cpu_ax.plot(ns, [r["relay"]["cpu_s_per_min"] for r in pw], "s:", label="relay, same frames")
        alone = scenarios["polling_vs_websocket"]["traffic_alone"]["cpu_s_per_min"]
        cpu_ax.axhline(alone, color="grey", linestyle="--", linewidth=1, label="API, traffic alone")
        log_x(cpu_ax, ns)
        cpu_ax.set_xlabel("agents")
        cpu_ax.set_ylabel("CPU seconds / min")
        cpu_ax.set_title("Server CPU")
        cpu_ax.legend(fontsize=8)
    else:
        for ax in (req_ax, cpu_ax):
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)

    rss = scenarios.get("rss", {}).get("rows", [])
    if rss:
        users = [r["users"] for r in rss]
        rss_ax.plot(users, [r["rss_mib"] for r in rss], "o-", label="API process")
        rss_ax.plot(users, [r["relay_rss_mib"] for r in rss], "s:", label="minimal relay")
        log_x(rss_ax, users)
        rss_ax.set_ylim(bottom=0)
        rss_ax.set_xlabel("connected users")
        rss_ax.set_ylabel("RSS (MiB)")
        rss_ax.set_title("Server memory with idle connected users")
        rss_ax.legend(fontsize=8)
    else:
        rss_ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=rss_ax.transAxes)

    history = scenarios.get("history", {}).get("rows", [])
    if history:
        labels = [f"{r['tier']}\n{r['what']}" for r in history]
        xs = range(len(history))
        width = 0.2
        series = [
            ("ours p50", [r["ours"]["p50_ms"] or 0 for r in history], -1.5),
            ("ours p99", [r["ours"]["p99_ms"] or 0 for r in history], -0.5),
            ("baseline p50", [r["baseline"]["p50_ms"] or 0 for r in history], 0.5),
            ("baseline p99", [r["baseline"]["p99_ms"] or 0 for r in history], 1.5),
        ]
        for label, values, shift in series:
            hist_ax.bar([x + shift * width for x in xs], values, width, label=label)
        hist_ax.set_xticks(list(xs))
        hist_ax.set_xticklabels(labels, fontsize=7)
        hist_ax.set_yscale("log")
        hist_ax.set_ylabel("ms")
        hist_ax.set_title("History route response time")
        hist_ax.legend(fontsize=8)
    else:
        hist_ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=hist_ax.transAxes)

    suite = results["suite"]
    fig.suptitle(f"Benchmark suite ({suite['mode']}, {suite['started']}, {suite['cpus']} CPUs)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_plot(results: dict[str, Any], out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    plot(results, out / "report.png")
    return out / "report.png"


def write_text(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """`report.json` and `report.md` (after the plot: they carry the run's total time, the plot's too)."""
    out.mkdir(parents=True, exist_ok=True)
    results["summary"] = summary_rows(results)
    paths = {"json": out / "report.json", "md": out / "report.md"}
    paths["json"].write_text(json.dumps(results, indent=2, default=str) + "\n")
    paths["md"].write_text(markdown(results))
    return paths
